//! The volume's I/O: requests split into per-extent pieces, each piece
//! served under its slot's lock (see the module doc of `volume`) through
//! the layout's `Redundancy`.

use std::sync::atomic::Ordering;

use futures::future::join_all;
use metadata::Placement;
use parking_lot::Mutex;

use super::commit::{Dirty, KeptFor};
use super::geometry::Piece;
use super::layout::{BlockCheck, Kept, Legs, ReadReport};
use super::{block_checksum, Inner, Slot};
use crate::buf::{IoBuf, IoBufMut, IO_ALIGN};
use crate::device::{
    push_status, BlockStatus, BufResult, ByteRange, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// Checks blocks of one extent against the checksums in its slot. Blocks
/// of chunks never written match anything.
pub(super) struct SlotCheck<'a> {
    pub slot: &'a Slot,
    pub le: u64,
    pub chunk_bytes: u64,
    /// Where a block marked known bad is queued for the next commit.
    pub dirty: &'a Mutex<Dirty>,
    /// The write in progress, if any: its extent offset and the checksums
    /// of its blocks.
    pub writing: Option<(u64, &'a [u32])>,
    pub lv: u64,
    /// What the layout logged ahead of the write in progress, kept until
    /// its checksums are committed (moved to the dirty set with them).
    pub kept: Mutex<Vec<Kept>>,
}

impl SlotCheck<'_> {
    /// What the layout asked to keep; see `kept`.
    pub fn take_kept(&self) -> Vec<Kept> {
        std::mem::take(&mut *self.kept.lock())
    }
}

impl BlockCheck for SlotCheck<'_> {
    fn covers(&self, offset_bytes: u64) -> bool {
        self.slot.written() & (1 << (offset_bytes / self.chunk_bytes)) != 0
    }

    fn matches(&self, offset_bytes: u64, block: &[u8]) -> bool {
        if !self.covers(offset_bytes) {
            return true;
        }
        let expected = self.slot.checksums.lock()[(offset_bytes / IO_ALIGN as u64) as usize];
        block_checksum(block) == expected
    }

    fn expected(&self, offset_bytes: u64) -> Option<u32> {
        let block = (offset_bytes / IO_ALIGN as u64) as usize;
        if !self.covers(offset_bytes) || self.slot.known_bad.lock().contains(&block) {
            return None;
        }
        Some(self.slot.checksums.lock()[block])
    }

    fn written(&self, offset_bytes: u64) -> Option<u32> {
        let (start, sums) = self.writing?;
        let block = offset_bytes.checked_sub(start)? / IO_ALIGN as u64;
        sums.get(block as usize).copied()
    }

    fn known_bad(&self, offset_bytes: u64) -> bool {
        self.slot
            .known_bad
            .lock()
            .contains(&((offset_bytes / IO_ALIGN as u64) as usize))
    }

    fn extent(&self) -> Option<(u64, u64)> {
        Some((self.lv, self.le))
    }

    fn keep_until_committed(&self, kept: Kept) {
        self.kept.lock().push(kept);
    }

    fn mark_known_bad(&self, offset_bytes: u64) {
        if !self.covers(offset_bytes) {
            return;
        }
        self.slot
            .known_bad
            .lock()
            .insert((offset_bytes / IO_ALIGN as u64) as usize);
        let chunk = (offset_bytes / self.chunk_bytes) as u8;
        self.dirty.lock().checksum_chunks.insert((self.le, chunk));
    }
}

impl Inner {
    /// The checks of the extent's blocks, on a checksummed layout.
    pub(super) fn check<'a>(&'a self, slot: &'a Slot, le: u64) -> Option<SlotCheck<'a>> {
        self.checksummed.then_some(SlotCheck {
            slot,
            le,
            chunk_bytes: self.geometry.chunk_bytes,
            dirty: &self.dirty,
            writing: None,
            lv: self.token.lv,
            kept: Mutex::new(Vec::new()),
        })
    }

    /// The checks of a write of blocks with checksums `sums` at extent
    /// offset `offset_bytes`, on a checksummed layout.
    fn write_check<'a>(
        &'a self,
        slot: &'a Slot,
        le: u64,
        offset_bytes: u64,
        sums: &'a [u32],
    ) -> Option<SlotCheck<'a>> {
        let check = self.check(slot, le)?;
        Some(SlotCheck {
            writing: Some((offset_bytes, sums)),
            ..check
        })
    }

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

    async fn read_piece(&self, piece: Piece, buf: IoBufMut) -> BufResult<IoBufMut> {
        let slot = self.slot(piece.le);
        self.ensure_synced(piece.le, &slot).await;
        let (result, buf, clean) = {
            let guard = slot.placement.read().await;
            self.read_runs(&slot, piece, guard.as_ref(), buf, false)
                .await
        };
        let corrupt = matches!(&result, Err(e) if e.kind() == ErrorKind::Corrupt);
        if (clean && result.is_ok()) || (result.is_err() && !corrupt) {
            return (result, buf);
        }
        // A copy failed its checksum, or every copy did. Read again with
        // the extent to ourselves: a write in flight to the same blocks
        // (whose checksums are recorded when it completes) is done then,
        // and rewriting a bad copy cannot race a write.
        let guard = slot.placement.write().await;
        let (result, buf, _) = self
            .read_runs(&slot, piece, guard.as_ref(), buf, true)
            .await;
        (result, buf)
    }

    /// Reads the piece's written runs (zeroes for the rest). Returns
    /// whether verification found nothing to act on.
    async fn read_runs(
        &self,
        slot: &Slot,
        piece: Piece,
        placement: Option<&Placement>,
        mut buf: IoBufMut,
        repair: bool,
    ) -> (BlockResult<()>, IoBufMut, bool) {
        let Some(placement) = placement else {
            buf.fill(0);
            return (Ok(()), buf, true);
        };
        let legs = self.legs(placement);
        let check = self.check(slot, piece.le);
        let check = check.as_ref().map(|c| c as &dyn BlockCheck);
        let runs = self.geometry.runs(&piece, slot.written());
        let parts: Vec<IoBufMut> = runs.iter().map(|r| buf.split_to(r.1 as usize)).collect();
        let reads = runs
            .iter()
            .zip(parts)
            .map(|(&(start, _, written), mut part)| {
                let legs = &legs;
                async move {
                    if !written {
                        part.fill(0);
                        return (Ok(ReadReport::default()), part);
                    }
                    self.redundancy
                        .read(legs, piece.offset_bytes + start, part, check, repair)
                        .await
                }
            });
        let mut outcome = Ok(());
        let mut clean = true;
        let mut whole: Option<IoBufMut> = None;
        for (result, part) in join_all(reads).await {
            match result {
                Ok(report) => {
                    clean &= report.mismatches == 0;
                    if repair {
                        self.mismatches
                            .fetch_add(report.mismatches, Ordering::Relaxed);
                    }
                }
                Err(e) if outcome.is_ok() => outcome = Err(e),
                Err(_) => {}
            }
            match whole.as_mut() {
                Some(joined) => joined.unsplit(part),
                None => whole = Some(part),
            }
        }
        let buf = match whole {
            Some(mut joined) => {
                joined.unsplit(buf);
                joined
            }
            None => buf,
        };
        (outcome, buf, clean)
    }

    pub(super) async fn write(
        &self,
        offset_bytes: u64,
        buf: &IoBuf,
        flags: WriteFlags,
    ) -> BlockResult<()> {
        let pieces = self.geometry.pieces(offset_bytes, buf.len() as u64);
        let writes = pieces.iter().map(|p| {
            let range =
                p.request_offset_bytes as usize..(p.request_offset_bytes + p.len_bytes) as usize;
            self.write_piece(*p, buf.slice(range), flags)
        });
        for result in join_all(writes).await {
            result?;
        }
        // FUA covers the map entries that lead to the data, too: commit if
        // any of them (by this write or an earlier one) is not durable yet.
        // And the checksums that vouch for it: a redundant layout serves
        // data its durable checksums do not match only while another copy
        // agrees with it, which a failed disk can take away.
        if flags.contains(WriteFlags::FUA)
            && (self.checksummed || pieces.iter().any(|p| !self.slot(p.le).is_durable()))
        {
            self.sync().await?;
        }
        Ok(())
    }

    /// Writes one piece; when the layout needs a commit first (see
    /// `ErrorKind::NeedsCommit`), commits with the extent let go, and tries
    /// again.
    async fn write_piece(&self, piece: Piece, data: IoBuf, flags: WriteFlags) -> BlockResult<()> {
        loop {
            match self.write_piece_once(piece, data.clone(), flags).await {
                Err(e) if e.kind() == ErrorKind::NeedsCommit => self.sync().await?,
                done => return done,
            }
        }
    }

    async fn write_piece_once(
        &self,
        piece: Piece,
        data: IoBuf,
        flags: WriteFlags,
    ) -> BlockResult<()> {
        let slot = self.slot(piece.le);
        self.ensure_synced(piece.le, &slot).await;
        let touched = self.geometry.touched(&piece);
        let covered = self.geometry.covered(&piece);
        {
            let guard = slot.placement.read().await;
            if let Some(placement) = guard.as_ref() {
                if slot.is_ready() && touched & !covered & !slot.written() == 0 {
                    // Only copies can end up disagreeing (see `ranges`).
                    let _range = match self.checksummed {
                        true => Some(
                            slot.writing
                                .lock(piece.offset_bytes, piece.offset_bytes + piece.len_bytes)
                                .await,
                        ),
                        false => None,
                    };
                    let legs = self.legs(placement);
                    let sums = self.block_checksums(&data);
                    let check = self.write_check(&slot, piece.le, piece.offset_bytes, &sums);
                    let written = self
                        .redundancy
                        .write(
                            &legs,
                            piece.offset_bytes,
                            data.clone(),
                            flags,
                            check.as_ref().map(|c| c as &dyn BlockCheck),
                        )
                        .await;
                    let kept = check.as_ref().map_or_else(Vec::new, SlotCheck::take_kept);
                    if let Err(e) = written {
                        self.keep_until_committed(piece.le, touched, kept);
                        if e.kind() != ErrorKind::NeedsCommit {
                            self.write_failed(&slot, &legs);
                        }
                        return Err(e);
                    }
                    self.completed_write(
                        &slot,
                        piece.le,
                        &legs,
                        piece.offset_bytes,
                        &sums,
                        touched,
                    );
                    self.keep_until_committed(piece.le, touched, kept);
                    return Ok(());
                }
            }
        }
        // Allocation or a partial first write into a chunk: alone in the extent.
        let mut guard = slot.placement.write().await;
        let newly_mapped = guard.is_none();
        if newly_mapped {
            *guard = Some(self.allocate().await?);
            if self.checksummed {
                slot.reset_checksums(self.geometry.blocks_per_extent());
            }
        }
        let placement = guard.as_ref().expect("mapped above");
        let legs = self.legs(placement);
        if !slot.is_ready() {
            if let Err(e) = self.redundancy.initialize(&legs).await {
                if newly_mapped {
                    let unused = guard.take().expect("mapped above");
                    self.reservation.lock().push(unused);
                }
                return Err(e);
            }
            slot.ready.store(true, Ordering::Release);
        }
        let init = touched & !covered & !slot.written();
        let (start, stop) = self.geometry.widen(&piece, init);
        let data = if (start, stop) == (piece.offset_bytes, piece.offset_bytes + piece.len_bytes) {
            data
        } else {
            let mut wide = IoBufMut::zeroed((stop - start) as usize);
            let at = (piece.offset_bytes - start) as usize;
            wide[at..at + data.len()].copy_from_slice(&data);
            wide.freeze()
        };
        let legs = self.legs(placement);
        let sums = self.block_checksums(&data);
        let check = self.write_check(&slot, piece.le, start, &sums);
        let written = self
            .redundancy
            .write(
                &legs,
                start,
                data.clone(),
                flags,
                check.as_ref().map(|c| c as &dyn BlockCheck),
            )
            .await;
        let kept = check.as_ref().map_or_else(Vec::new, SlotCheck::take_kept);
        if let Err(e) = written {
            if newly_mapped {
                // No commit could see it (we held the extent): reuse it.
                let unused = guard.take().expect("mapped above");
                slot.ready.store(false, Ordering::Release);
                self.reservation.lock().push(unused);
            } else {
                self.keep_until_committed(piece.le, touched, kept);
                if e.kind() != ErrorKind::NeedsCommit {
                    self.write_failed(&slot, &legs);
                }
            }
            return Err(e);
        }
        if newly_mapped {
            self.placement_changed(&slot, piece.le);
        }
        self.completed_write(&slot, piece.le, &legs, start, &sums, touched);
        self.keep_until_committed(piece.le, touched, kept);
        Ok(())
    }

    /// Records a completed write (`sums`: its blocks' checksums): checksums,
    /// chunk bits, and the PVs the next commit must flush.
    fn completed_write(
        &self,
        slot: &Slot,
        le: u64,
        legs: &Legs,
        offset_bytes: u64,
        sums: &[u32],
        touched: u64,
    ) {
        self.record_block_checksums(slot, le, offset_bytes, sums);
        self.update_bits(slot, le, |written| written | touched);
        self.wrote_to(legs);
    }

    /// Hands what the layout logged ahead of a write of chunks `chunks` of
    /// extent `le` to the next commit that records their checksums (see
    /// `commit.rs`). Called after the checksums are recorded, never before:
    /// a commit in between would drop it with the checksums still out. The
    /// chunks are marked dirty again with it, in one step: a commit that
    /// took them in between has recorded the checksums without it, and
    /// none would come for it otherwise.
    fn keep_until_committed(&self, le: u64, chunks: u64, kept: Vec<Kept>) {
        if kept.is_empty() {
            return;
        }
        let mut dirty = self.dirty.lock();
        for chunk in (0..64u8).filter(|chunk| chunks & (1 << chunk) != 0) {
            dirty.checksum_chunks.insert((le, chunk));
        }
        dirty.kept.push(KeptFor::new(le, chunks, kept));
    }

    /// After a write into a placed extent failed: some of it may have
    /// landed, on some copies, without its checksums. The extent is
    /// resynced before its next read (see `resync`), and a later flush
    /// must make what that read returns durable.
    fn write_failed(&self, slot: &Slot, legs: &Legs) {
        if self.checksummed {
            slot.unsynced.store(true, Ordering::Release);
        }
        self.wrote_to(legs);
    }

    /// Marks the legs' PVs for the next commit's flush.
    fn wrote_to(&self, legs: &Legs) {
        self.dirty
            .lock()
            .pvs
            .extend(legs.legs.iter().map(|leg| leg.pv));
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
                if guard.is_some() && partial & slot.written() != 0 {
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

    /// Zeroes one piece, committing and trying again where the layout
    /// needs a commit first (as `write_piece`).
    async fn zero_piece(&self, piece: Piece, flags: ZeroFlags, discard: bool) -> BlockResult<()> {
        loop {
            match self.zero_piece_once(piece, flags, discard).await {
                Err(e) if e.kind() == ErrorKind::NeedsCommit => self.sync().await?,
                done => return done,
            }
        }
    }

    async fn zero_piece_once(
        &self,
        piece: Piece,
        flags: ZeroFlags,
        discard: bool,
    ) -> BlockResult<()> {
        let keep_allocated = flags.contains(ZeroFlags::NO_HOLE) && !discard;
        let slot = self.slot(piece.le);
        self.ensure_synced(piece.le, &slot).await;
        let mut guard = slot.placement.write().await;
        if guard.is_none() {
            if !keep_allocated {
                return Ok(()); // unallocated already reads as zeroes
            }
            let placement = self.allocate().await?;
            if let Err(e) = self.redundancy.initialize(&self.legs(&placement)).await {
                self.reservation.lock().push(placement);
                return Err(e);
            }
            *guard = Some(placement);
            slot.ready.store(true, Ordering::Release);
            if self.checksummed {
                slot.reset_checksums(self.geometry.blocks_per_extent());
            }
            self.placement_changed(&slot, piece.le);
        }
        let placement = guard.clone().expect("mapped above");
        let legs = self.legs(&placement);
        let covered = self.geometry.covered(&piece);
        let written = slot.written();
        if !discard {
            // Partial chunks holding data get real zeroes over the range.
            let partial = self.geometry.touched(&piece) & !covered & written;
            for (start, len, set) in self.geometry.runs(&piece, partial) {
                if set {
                    let offset = piece.offset_bytes + start;
                    let check = self.check(&slot, piece.le);
                    let zeroed = self
                        .redundancy
                        .write_zeroes(&legs, offset, len, check.as_ref().map(|c| c as _))
                        .await;
                    let kept = check.as_ref().map_or_else(Vec::new, SlotCheck::take_kept);
                    let chunks = self.geometry.touched(&piece) & partial;
                    if let Err(e) = zeroed {
                        self.keep_until_committed(piece.le, chunks, kept);
                        if e.kind() != ErrorKind::NeedsCommit {
                            self.write_failed(&slot, &legs);
                        }
                        return Err(e);
                    }
                    self.record_checksums(&slot, piece.le, offset, &vec![0; len as usize]);
                    self.keep_until_committed(piece.le, chunks, kept);
                    self.wrote_to(&legs);
                }
            }
        }
        let cleared = covered & written;
        let remaining = written & !cleared;
        if self.thin && !keep_allocated && remaining == 0 {
            // Nothing written is left: give the extent back to the VG.
            // Release its space first, while no one else can reach it.
            self.redundancy
                .release(&legs, 0, self.geometry.extent_bytes)
                .await?;
            self.update_bits(&slot, piece.le, |_| 0);
            *guard = None;
            slot.ready.store(false, Ordering::Release);
            slot.reset_checksums(0);
            self.placement_changed(&slot, piece.le);
            let mut dirty = self.dirty.lock();
            dirty.placements_released = true;
            // If it was never committed, the service takes it back.
            dirty.returned.extend(placement);
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
                        self.redundancy.release(&legs, start, len).await?;
                    }
                }
            }
            self.update_bits(&slot, piece.le, |written| written & !cleared);
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
            for (_, len, written) in self.geometry.runs(&piece, slot.written()) {
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
