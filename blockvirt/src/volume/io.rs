//! The volume's I/O: requests split into per-extent pieces, each piece
//! served under its slot's lock (see the module doc of `volume`).

use std::sync::atomic::Ordering;

use futures::future::join_all;
use metadata::Placement;

use super::geometry::Piece;
use super::{Inner, Slot};
use crate::buf::{IoBuf, IoBufMut};
use crate::device::{
    push_status, BlockStatus, BufResult, ByteRange, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};

impl Inner {
    pub(super) async fn read(&self, offset_bytes: u64, mut buf: IoBufMut) -> BufResult<IoBufMut> {
        let pieces = self.geometry.pieces(offset_bytes, buf.len() as u64);
        let parts: Vec<IoBufMut> = pieces
            .iter()
            .map(|p| buf.split_to(p.len_bytes as usize))
            .collect();
        let results = join_all(
            pieces
                .iter()
                .zip(parts)
                .map(|(p, part)| self.read_piece(*p, part)),
        )
        .await;
        rejoin(results, buf)
    }

    async fn read_piece(&self, piece: Piece, mut buf: IoBufMut) -> BufResult<IoBufMut> {
        let slot = self.slot(piece.le);
        let guard = slot.placement.read().await;
        let Some(placement) = guard.as_ref() else {
            buf.fill(0);
            return (Ok(()), buf);
        };
        let runs = self
            .geometry
            .runs(&piece, slot.written.load(Ordering::Acquire));
        let parts: Vec<IoBufMut> = runs.iter().map(|r| buf.split_to(r.1 as usize)).collect();
        let reads = runs
            .iter()
            .zip(parts)
            .map(|(&(start, _, written), mut part)| async move {
                if !written {
                    part.fill(0);
                    return (Ok(()), part);
                }
                match self.pvs.locate(placement[0], self.geometry.extent_bytes) {
                    Ok((device, base)) => {
                        device
                            .read_at(base + piece.offset_bytes + start, part)
                            .await
                    }
                    Err(e) => (Err(e), part),
                }
            });
        let results = join_all(reads).await;
        rejoin(results, buf)
    }

    pub(super) async fn write(
        &self,
        offset_bytes: u64,
        buf: &IoBuf,
        flags: WriteFlags,
    ) -> BlockResult<()> {
        let pieces = self.geometry.pieces(offset_bytes, buf.len() as u64);
        let writes = pieces.iter().map(|p| {
            let data = buf.slice(
                p.request_offset_bytes as usize..(p.request_offset_bytes + p.len_bytes) as usize,
            );
            self.write_piece(*p, data, flags)
        });
        for result in join_all(writes).await {
            result?;
        }
        // FUA covers the map entries that lead to the data, too: commit if
        // any of them (by this write or an earlier one) is not durable yet.
        if flags.contains(WriteFlags::FUA) && pieces.iter().any(|p| !self.slot(p.le).is_durable()) {
            self.sync().await?;
        }
        Ok(())
    }

    async fn write_piece(&self, piece: Piece, data: IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let slot = self.slot(piece.le);
        let touched = self.geometry.touched(&piece);
        let covered = self.geometry.covered(&piece);
        {
            let guard = slot.placement.read().await;
            if let Some(placement) = guard.as_ref() {
                let written = slot.written.load(Ordering::Acquire);
                if touched & !covered & !written == 0 {
                    self.write_pv(placement, piece.offset_bytes, data, flags)
                        .await?;
                    self.mark_written(&slot, piece.le, placement, touched);
                    return Ok(());
                }
            }
        }
        // Allocation or a partial first write into a chunk: alone in the extent.
        let mut guard = slot.placement.write().await;
        let newly_mapped = guard.is_none();
        if newly_mapped {
            *guard = Some(self.allocate().await?);
        }
        let placement = guard.as_ref().expect("mapped above");
        let init = touched & !covered & !slot.written.load(Ordering::Acquire);
        let (start, stop) = self.geometry.widen(&piece, init);
        let data = if (start, stop) == (piece.offset_bytes, piece.offset_bytes + piece.len_bytes) {
            data
        } else {
            let mut wide = IoBufMut::zeroed((stop - start) as usize);
            let at = (piece.offset_bytes - start) as usize;
            wide[at..at + data.len()].copy_from_slice(&data);
            wide.freeze()
        };
        if let Err(e) = self.write_pv(placement, start, data, flags).await {
            if newly_mapped {
                // Nothing references the new extent: hand it back unused.
                let unused = guard.take().expect("mapped above");
                self.reservation.lock().push(unused);
            }
            return Err(e);
        }
        if newly_mapped {
            self.map_changed(&slot, piece.le);
        }
        self.mark_written(&slot, piece.le, placement, touched);
        Ok(())
    }

    async fn write_pv(
        &self,
        placement: &Placement,
        offset_in_extent: u64,
        data: IoBuf,
        flags: WriteFlags,
    ) -> BlockResult<()> {
        let (device, base) = self.pvs.locate(placement[0], self.geometry.extent_bytes)?;
        device
            .write_at(base + offset_in_extent, data, flags)
            .await
            .0
    }

    /// Records completed writes: chunk bits, and what the next commit must
    /// flush and persist.
    fn mark_written(&self, slot: &Slot, le: u64, placement: &Placement, touched: u64) {
        let before = slot.written.fetch_or(touched, Ordering::AcqRel);
        if before & touched != touched {
            self.map_changed(slot, le);
        }
        self.dirty
            .lock()
            .pvs
            .extend(placement.iter().map(|pe| pe.pv));
    }

    /// Discard (`discard` true: advisory, partial chunks untouched) or
    /// write-zeroes (exact).
    pub(super) async fn zero(
        &self,
        range: ByteRange,
        flags: ZeroFlags,
        discard: bool,
    ) -> BlockResult<()> {
        let pieces = self.geometry.pieces(range.offset_bytes, range.len_bytes);
        if flags.contains(ZeroFlags::FAST) && !discard {
            // Fast only if no partial chunk holds data (those need a write);
            // refuse before changing anything.
            for piece in &pieces {
                let slot = self.slot(piece.le);
                let guard = slot.placement.read().await;
                let partial = self.geometry.touched(piece) & !self.geometry.covered(piece);
                if guard.is_some() && partial & slot.written.load(Ordering::Acquire) != 0 {
                    return Err(BlockError::new(
                        ErrorKind::Unsupported,
                        format!(
                            "{}: zeroing part of a written chunk is not faster than writing",
                            self.name
                        ),
                    ));
                }
            }
        }
        for result in join_all(pieces.iter().map(|p| self.zero_piece(*p, flags, discard))).await {
            result?;
        }
        Ok(())
    }

    async fn zero_piece(&self, piece: Piece, flags: ZeroFlags, discard: bool) -> BlockResult<()> {
        let keep_allocated = flags.contains(ZeroFlags::NO_HOLE) && !discard;
        let slot = self.slot(piece.le);
        let mut guard = slot.placement.write().await;
        if guard.is_none() {
            if !keep_allocated {
                return Ok(()); // unallocated already reads as zeroes
            }
            *guard = Some(self.allocate().await?);
            self.map_changed(&slot, piece.le);
        }
        let placement = guard.clone().expect("mapped above");
        let (device, base) = self.pvs.locate(placement[0], self.geometry.extent_bytes)?;
        let covered = self.geometry.covered(&piece);
        let written = slot.written.load(Ordering::Acquire);
        if !discard {
            // Partial chunks holding data get real zeroes over the range.
            let partial = self.geometry.touched(&piece) & !covered & written;
            for (start, len, set) in self.geometry.runs(&piece, partial) {
                if set {
                    let range = ByteRange::new(base + piece.offset_bytes + start, len);
                    device.write_zeroes(range, ZeroFlags::NO_HOLE).await?;
                    self.dirty
                        .lock()
                        .pvs
                        .extend(placement.iter().map(|pe| pe.pv));
                }
            }
        }
        let cleared = covered & written;
        let remaining = written & !cleared;
        if self.thin && !keep_allocated && remaining == 0 {
            // Nothing written is left: give the extent back to the VG. Punch
            // it first, while no one else can reach the PE.
            device
                .discard(ByteRange::new(base, self.geometry.extent_bytes))
                .await?;
            slot.written.store(0, Ordering::Release);
            *guard = None;
            self.map_changed(&slot, piece.le);
            return Ok(());
        }
        if cleared != 0 {
            if !keep_allocated {
                let whole = Piece {
                    offset_bytes: 0,
                    len_bytes: self.geometry.extent_bytes,
                    ..piece
                };
                for (start, len, set) in self.geometry.runs(&whole, cleared) {
                    if set {
                        device.discard(ByteRange::new(base + start, len)).await?;
                    }
                }
            }
            slot.written.fetch_and(!cleared, Ordering::AcqRel);
            self.map_changed(&slot, piece.le);
        }
        Ok(())
    }

    pub(super) async fn status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        let mut extents = Vec::new();
        for piece in self.geometry.pieces(range.offset_bytes, range.len_bytes) {
            let slot = self.slot(piece.le);
            let guard = slot.placement.read().await;
            if guard.is_none() {
                push_status(
                    &mut extents,
                    piece.len_bytes,
                    BlockStatus::HOLE | BlockStatus::ZERO,
                );
                continue;
            }
            for (_, len, written) in self
                .geometry
                .runs(&piece, slot.written.load(Ordering::Acquire))
            {
                let status = if written {
                    BlockStatus::empty()
                } else {
                    BlockStatus::ZERO
                };
                push_status(&mut extents, len, status);
            }
        }
        Ok(extents)
    }
}

/// Joins the pieces of a split buffer back in order; the first error wins.
fn rejoin(results: Vec<BufResult<IoBufMut>>, rest: IoBufMut) -> BufResult<IoBufMut> {
    let mut outcome = Ok(());
    let mut whole: Option<IoBufMut> = None;
    for (result, part) in results {
        if outcome.is_ok() {
            outcome = result;
        }
        match whole.as_mut() {
            Some(joined) => joined.unsplit(part),
            None => whole = Some(part),
        }
    }
    match whole {
        Some(mut joined) => {
            joined.unsplit(rest);
            (outcome, joined)
        }
        None => (outcome, rest),
    }
}
