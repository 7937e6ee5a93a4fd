//! Online maintenance of a volume's placed extents: replacing legs (repair
//! after a PV failed, pvmove off a PV) and scrubbing.
//!
//! Each operation works on one extent with the extent to itself
//! (its placement lock held exclusively), so I/O to every other extent
//! goes on; I/O to that extent waits for one extent's copy.
//!
//! Crash rule for a leg replacement: the new PE is written and flushed,
//! the layout's barrier retires anything that could still write to the old
//! PE, and only then is the new placement committed; until that commit the
//! durable placement is the old one, whose surviving legs hold everything.

use std::sync::atomic::Ordering;

use metadata::{PeAddr, Placement, PvId};

use super::io::SlotCheck;
use super::layout::{ScrubMode, ScrubReport};
use super::{meta_error, Inner, Slot, ThinVolume};
use crate::buf::IoBufMut;
use crate::device::WriteFlags;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// Bytes copied per step when a leg is rebuilt.
const COPY_BYTES: u64 = 1 << 20;

impl ThinVolume {
    /// Logical extents of the volume.
    pub fn extent_count(&self) -> u64 {
        self.inner.slots.read().len() as u64
    }

    /// Where extent `le` lives, if it is mapped.
    pub async fn placement(&self, le: u64) -> Option<metadata::Placement> {
        self.inner.slot(le).placement.read().await.clone()
    }

    /// Mapped extents with a leg that `select` picks (e.g. on a failed PV,
    /// or on the PV being emptied).
    pub async fn extents_with_legs(&self, select: impl Fn(PeAddr) -> bool) -> Vec<u64> {
        let mut found = Vec::new();
        for le in 0..self.extent_count() {
            let slot = self.inner.slot(le);
            let guard = slot.placement.read().await;
            if guard
                .as_ref()
                .is_some_and(|p| p.iter().any(|pe| select(*pe)))
            {
                found.push(le);
            }
        }
        found
    }

    /// Mapped extents with a leg on a failed PV.
    pub async fn degraded_extents(&self) -> Vec<u64> {
        let pvs = self.inner.pvs.clone();
        self.extents_with_legs(move |pe| pvs.is_failed(pe.pv)).await
    }

    /// Replaces the legs of extent `le` that `select` picks with new PEs on
    /// other PVs, copying what each leg should hold (read from the leg if
    /// it is sound, rebuilt from the others if not), and commits the new
    /// placement. Returns how many legs moved.
    pub async fn replace_legs(
        &self,
        le: u64,
        select: impl Fn(PeAddr) -> bool,
    ) -> BlockResult<usize> {
        let inner = &self.inner;
        inner.check_usable()?;
        let slot = inner.slot(le);
        // The copy must not pick a side of a disagreement reads settled on
        // another way.
        inner.ensure_synced(le, &slot).await;
        let mut guard = slot.placement.write().await;
        let Some(old) = guard.clone() else {
            return Ok(0);
        };
        let targets: Vec<usize> = (0..old.len()).filter(|&i| select(old[i])).collect();
        if targets.is_empty() {
            return Ok(0);
        }
        let legs = inner.legs(&old);
        let check = inner.check(&slot, le);
        let mut new = old.clone();
        for &leg in &targets {
            let mut exclude: Vec<PvId> = new.iter().map(|pe| pe.pv).collect();
            new[leg] = loop {
                let pe = inner
                    .map
                    .reserve_pe(inner.token, exclude.clone())
                    .await
                    .map_err(|e| meta_error(&inner.name, e))?
                    .ok_or_else(|| {
                        BlockError::new(
                            ErrorKind::NoSpace,
                            format!(
                                "{}: no free extent on a PV outside extent {le}'s other legs",
                                inner.name
                            ),
                        )
                    })?;
                let copied = inner
                    .copy_leg(
                        &legs,
                        leg,
                        pe,
                        check.as_ref().map(|c| c as &dyn super::BlockCheck),
                    )
                    .await;
                match copied {
                    Ok(()) => break pe,
                    // The new PE's PV failed under the copy: it is recorded
                    // failed and another PV takes the leg.
                    Err(CopyFailure::Target(e)) => {
                        inner.dirty.lock().returned.push(pe);
                        inner.lose_pv(pe.pv, &e).await?;
                        exclude.push(pe.pv);
                    }
                    Err(CopyFailure::Source(e)) => {
                        inner.dirty.lock().returned.push(pe);
                        return Err(e.context_prefix(format!("{}: extent {le}", inner.name)));
                    }
                }
            };
        }
        *guard = Some(new.clone());
        inner.placement_changed(&slot, le);
        {
            let mut dirty = inner.dirty.lock();
            dirty.placements_released = true;
            dirty.pvs.extend(
                new.iter()
                    .map(|pe| pe.pv)
                    .filter(|pv| !inner.pvs.is_failed(*pv)),
            );
        }
        drop(guard);
        inner.sync().await?;
        Ok(targets.len())
    }

    /// Gives back the spare extents reserved for new writes that have a leg
    /// `select` picks (pvmove empties a PV of those too), and commits.
    pub async fn return_reserved(&self, select: impl Fn(PeAddr) -> bool) -> BlockResult<()> {
        let inner = &self.inner;
        let returned: Vec<PeAddr> = {
            let mut reservation = inner.reservation.lock();
            let (drop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *reservation)
                .into_iter()
                .partition(|p| p.iter().any(|pe| select(*pe)));
            *reservation = keep;
            drop.into_iter().flatten().collect()
        };
        if returned.is_empty() {
            return Ok(());
        }
        inner.dirty.lock().returned.extend(returned);
        inner.sync().await
    }

    /// Verifies every written block of extent `le` on every copy (and its
    /// parity), rewriting bad ones when `repair` is set.
    pub async fn scrub_extent(&self, le: u64, repair: bool) -> BlockResult<ScrubReport> {
        let inner = &self.inner;
        inner.check_usable()?;
        if !inner.checksummed {
            return Err(BlockError::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: a layout without redundancy has nothing to scrub",
                    inner.name
                ),
            ));
        }
        let slot = inner.slot(le);
        inner.ensure_synced(le, &slot).await;
        let guard = slot.placement.write().await;
        let Some(placement) = guard.as_ref() else {
            return Ok(ScrubReport::default());
        };
        let mode = if repair {
            ScrubMode::Repair
        } else {
            ScrubMode::Check
        };
        inner.scrub_placed(&slot, le, placement, mode).await
    }
}

impl Inner {
    /// Scrubs the written chunks of extent `le`, placed at `placement`;
    /// the caller holds its placement lock exclusively.
    pub(super) async fn scrub_placed(
        &self,
        slot: &Slot,
        le: u64,
        placement: &Placement,
        mode: ScrubMode,
    ) -> BlockResult<ScrubReport> {
        let legs = self.legs(placement);
        let check = SlotCheck {
            slot,
            le,
            chunk_bytes: self.geometry.chunk_bytes,
            dirty: &self.dirty,
            writing: None,
            lv: self.token.lv,
            kept: parking_lot::Mutex::new(Vec::new()),
        };
        let whole = super::geometry::Piece {
            le,
            offset_bytes: 0,
            len_bytes: self.geometry.extent_bytes,
            request_offset_bytes: 0,
        };
        let mut report = ScrubReport::default();
        for (start, len, written) in self.geometry.runs(&whole, slot.written()) {
            if written {
                report.add(
                    self.redundancy
                        .scrub(&legs, start, len, &check, mode)
                        .await?,
                );
            }
        }
        self.mismatches
            .fetch_add(report.mismatches, Ordering::Relaxed);
        if mode != ScrubMode::Check {
            for (offset, block) in &report.adopted {
                self.record_checksums(slot, le, *offset, block);
            }
        }
        Ok(report)
    }

    /// Writes what leg `leg` of `legs` should hold onto `target`, then
    /// flushes it. Each step's write overlaps the next step's rebuild,
    /// which reads other PVs.
    async fn copy_leg(
        &self,
        legs: &super::Legs,
        leg: usize,
        target: PeAddr,
        check: Option<&dyn super::BlockCheck>,
    ) -> Result<(), CopyFailure> {
        let handle = self.pvs.get(target.pv).map_err(CopyFailure::Target)?;
        let base = handle.data_offset_bytes + target.pe * self.pe_bytes;
        let rebuild = |offset: u64| async move {
            let len = COPY_BYTES.min(self.pe_bytes - offset) as usize;
            let (result, buf) = self
                .redundancy
                .rebuild_leg(legs, leg, offset, IoBufMut::zeroed(len), check)
                .await;
            result.map(|()| buf).map_err(CopyFailure::Source)
        };
        let write = |offset: u64, buf: IoBufMut| {
            let device = &handle.device;
            async move {
                let (result, _) = device
                    .write_at(base + offset, buf.freeze(), WriteFlags::empty())
                    .await;
                result.map_err(CopyFailure::Target)
            }
        };
        let mut offset = 0;
        let mut rebuilt = rebuild(offset).await?;
        loop {
            let next = offset + rebuilt.len() as u64;
            if next >= self.pe_bytes {
                write(offset, rebuilt).await?;
                break;
            }
            let (written, following) = tokio::join!(write(offset, rebuilt), rebuild(next));
            written?;
            rebuilt = following?;
            offset = next;
        }
        handle.device.flush().await.map_err(CopyFailure::Target)
    }

    /// Records a PV failed that this volume found unusable: in the PV set
    /// (whose owner records it in the VG) or, for a PV missing from the
    /// set, in the VG directly. The VG places nothing new on it.
    async fn lose_pv(&self, pv: PvId, error: &BlockError) -> BlockResult<()> {
        if self.pvs.is_failed(pv) {
            self.map
                .report_failed_pv(pv, error.to_string())
                .await
                .map_err(|e| meta_error(&self.name, e))
        } else {
            self.pvs.fail(pv, &error.to_string());
            Ok(())
        }
    }
}

/// Why copying a leg failed: reading what it should hold, or writing the
/// new PE.
enum CopyFailure {
    Source(BlockError),
    Target(BlockError),
}
