//! Making a volume durable: dirty tracking, group commit, and the
//! background tasks (periodic commit, lease renewal).
//!
//! Crash ordering of one commit:
//! 0. if anything was written, let the layout retire its stripe journal's
//!    entries (their in-place writes complete and flushed) before the
//!    dirty set is taken, so the checksums taken next cover the writes
//!    whose entries are gone. An entry kept past the flush that made its
//!    writes durable could only roll its row back, replayed over newer
//!    data whose own entry was lost (a journal append gone astray);
//! 1. take the dirty set: extents whose map entry changed, chunks whose
//!    checksums changed, PVs written since the last commit;
//! 2. snapshot those extents (placement, chunk bits, change count, under
//!    the extent's placement lock, so the pieces belong together) and the
//!    changed checksums;
//! 3. flush those PVs, and the PVs of every snapshotted placement: a chunk
//!    bit is set only after its data write completed, so this flush covers
//!    the data behind every bit in the snapshot;
//! 4. if a placement was released, let the layout retire anything that
//!    could still write to it after a restart (its stripe journal);
//! 5. commit the snapshot to the metadata service (synced there);
//! 6. drop what layouts kept until those checksums were committed (the
//!    records of mirror writes); keep the rest for a later commit;
//! 7. only then acknowledge the FLUSH / FUA that asked for it.
//!
//! Group commit: a flush that arrives while a commit runs waits for the
//! next one; a flush that finds that a commit started after it arrived has
//! finished returns at once. Concurrent flushes share one PV flush and one
//! metadata write.
//!
//! A failed commit (lost lease, store error, a PV flush failing on a layout
//! without redundancy) stops the volume: what is durable is no longer
//! known, so every later operation fails rather than acknowledge something
//! that may not survive. On a redundant layout a PV whose flush fails is
//! marked failed instead, and the volume carries on degraded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::join_all;
use metadata::{CommitBatch, ExtentEntry, MapChange, PeAddr, Placement, PvId};

use super::layout::Kept;
use super::{chunk_checksums, meta_error, Inner, Slot};

/// Bits of an extent's chunk mask.
const CHUNK_BITS: u8 = 64;
use crate::error::{BlockResult, ErrorKind};

/// What changed since the last commit.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    pub extents: BTreeSet<u64>,
    pub pvs: BTreeSet<PvId>,
    /// (extent, chunk) whose block checksums changed.
    pub checksum_chunks: BTreeSet<(u64, u8)>,
    /// PEs of extents unmapped since the last commit; the service takes
    /// back those that were never committed.
    pub returned: Vec<PeAddr>,
    /// A placement was unmapped or replaced: the layout's barrier runs
    /// before the commit even if nothing was written.
    pub placements_released: bool,
    /// What layouts logged ahead of writes, kept until a commit records
    /// the checksums of those writes' chunks.
    pub kept: Vec<KeptFor>,
}

/// What a layout logged ahead of a write of chunks `chunks` (bits) of
/// extent `le`, numbered in the order it reached the dirty set.
pub(super) struct KeptFor {
    pub le: u64,
    pub chunks: u64,
    pub kept: Vec<Kept>,
    pub seq: u64,
}

impl KeptFor {
    pub fn new(le: u64, chunks: u64, kept: Vec<Kept>) -> KeptFor {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        KeptFor {
            le,
            chunks,
            kept,
            seq: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for KeptFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeptFor(LE {}, chunks {:#x}, {} kept, seq {})",
            self.le,
            self.chunks,
            self.kept.len(),
            self.seq
        )
    }
}

#[derive(Debug, Default)]
pub(super) struct Committer {
    turn: tokio::sync::Mutex<()>,
    started: AtomicU64,
    finished: AtomicU64,
}

impl Inner {
    /// Makes every write completed before this call durable.
    pub(super) async fn sync(&self) -> BlockResult<()> {
        self.check_usable()?;
        let arrived = self.committer.started.load(Ordering::Acquire);
        let _turn = self.committer.turn.lock().await;
        if self.committer.finished.load(Ordering::Acquire) > arrived {
            // A commit that started after we arrived has covered us.
            return self.check_usable();
        }
        self.check_usable()?;
        let number = self.committer.started.fetch_add(1, Ordering::AcqRel) + 1;
        let result = self.commit_once().await;
        if let Err(e) = &result {
            self.fail(e);
        }
        self.committer.finished.store(number, Ordering::Release);
        result
    }

    async fn commit_once(&self) -> BlockResult<()> {
        if !self.dirty.lock().pvs.is_empty() {
            self.redundancy.barrier().await?;
        }
        // What layouts kept stays in the dirty set until this commit is
        // durable (a failed commit drops nothing).
        let Dirty {
            extents,
            mut pvs,
            checksum_chunks,
            returned,
            placements_released,
            kept: _,
        } = {
            let mut dirty = self.dirty.lock();
            let kept = std::mem::take(&mut dirty.kept);
            let taken = std::mem::take(&mut *dirty);
            dirty.kept = kept;
            taken
        };
        let mut batch = CommitBatch {
            returned,
            ..CommitBatch::default()
        };
        let mut snapshotted: Vec<(Arc<Slot>, u64)> = Vec::with_capacity(extents.len());
        for le in extents {
            let slot = self.slot(le);
            let guard = slot.placement.read().await;
            let bits = *slot.bits.lock();
            if let Some(placement) = guard.as_ref() {
                pvs.extend(placement.iter().map(|pe| pe.pv));
            }
            batch.extents.push(MapChange {
                le,
                entry: guard.as_ref().map(|placement| ExtentEntry {
                    placement: placement.clone(),
                    written: bits.written,
                }),
            });
            drop(guard);
            snapshotted.push((slot, bits.changes));
        }
        // A discard that unmapped an extent before its snapshot above
        // handed its PEs back after the dirty set was taken: they go with
        // the commit that records the unmapping. A later one would hand
        // back PEs the service has freed since, and may have reserved for
        // this LV again, taking them from under the write that holds them.
        batch
            .returned
            .extend(std::mem::take(&mut self.dirty.lock().returned));
        // A write that held an extent alone may have finished while the
        // loop above waited for it: its chunk bits are in the snapshot, and
        // its checksums, recorded before those bits, must be committed with
        // them. So the checksums are taken again once every bit is read,
        // with the PVs holding their data flushed below.
        let mut checksum_chunks = checksum_chunks;
        let written: BTreeMap<u64, u64> = batch
            .extents
            .iter()
            .filter_map(|change| Some((change.le, change.entry.as_ref()?.written)))
            .collect();
        let in_snapshot = |&(le, chunk): &(u64, u8)| {
            written
                .get(&le)
                .is_some_and(|bits| bits & (1 << chunk) != 0)
        };
        // Of what layouts kept, what was there by now had its chunks marked
        // dirty by now (`keep_until_committed`): this commit covers them.
        let kept_before = {
            let mut dirty = self.dirty.lock();
            let kept_before = dirty.kept.iter().map(|k| k.seq + 1).max().unwrap_or(0);
            let (now, later): (BTreeSet<_>, BTreeSet<_>) =
                std::mem::take(&mut dirty.checksum_chunks)
                    .into_iter()
                    .partition(in_snapshot);
            checksum_chunks.extend(now);
            dirty.checksum_chunks = later;
            kept_before
        };
        // An extent unmapped, or mapped anew, since its snapshot: its
        // checksums belong to what the next commit records.
        let recorded: BTreeMap<u64, Option<&Placement>> = batch
            .extents
            .iter()
            .map(|change| (change.le, change.entry.as_ref().map(|e| &e.placement)))
            .collect();
        let mut deferred = Vec::new();
        // Chunks whose checksums this commit records, or that have none to
        // record any more (unmapped): what was kept for them can go.
        let mut settled_chunks: BTreeSet<(u64, u8)> = BTreeSet::new();
        for (le, chunk) in checksum_chunks {
            let slot = self.slot(le);
            let guard = slot.placement.read().await;
            if recorded.get(&le).is_some_and(|&at| at != guard.as_ref()) {
                deferred.push((le, chunk));
                continue;
            }
            if let Some(placement) = guard.as_ref() {
                if !slot.checksums.lock().is_empty() {
                    pvs.extend(placement.iter().map(|pe| pe.pv));
                    batch
                        .checksums
                        .push(chunk_checksums(&slot, le, chunk, &self.geometry));
                }
            }
            settled_chunks.insert((le, chunk));
        }
        self.dirty.lock().checksum_chunks.extend(deferred);
        self.flush_pvs(&pvs).await?;
        if placements_released {
            self.redundancy.barrier().await?;
        }
        if !batch.is_empty() {
            self.map
                .commit(self.token, batch)
                .await
                .map_err(|e| meta_error(&self.name, e))?;
        }
        for (slot, version) in snapshotted {
            let mut bits = slot.bits.lock();
            bits.committed = bits.committed.max(version);
        }
        // Kept for chunks whose checksums went out in this commit: dropped
        // now that the commit is durable. The rest waits for a later one.
        // A write's chunks may settle over more than one commit (one in
        // the snapshot, one not yet): each commit strikes off its own.
        let done: Vec<KeptFor> = {
            let mut dirty = self.dirty.lock();
            let mut kept = std::mem::take(&mut dirty.kept);
            for k in kept.iter_mut().filter(|k| k.seq < kept_before) {
                for chunk in 0..CHUNK_BITS {
                    if settled_chunks.contains(&(k.le, chunk)) {
                        k.chunks &= !(1 << chunk);
                    }
                }
            }
            let (done, waiting) = kept.into_iter().partition(|k| k.chunks == 0);
            dirty.kept = waiting;
            done
        };
        drop(done);
        Ok(())
    }

    /// Flushes the PVs. On a redundant layout a PV that fails its flush is
    /// marked failed (its legs are no longer trusted); otherwise the
    /// failure is the commit's.
    pub(super) async fn flush_pvs(&self, pvs: &BTreeSet<PvId>) -> BlockResult<()> {
        let flushes = pvs
            .iter()
            .filter(|pv| !self.pvs.is_failed(**pv))
            .map(|pv| async move {
                let result = match self.pvs.get(*pv) {
                    Ok(handle) => handle.device.flush().await,
                    Err(e) => Err(e),
                };
                (*pv, result)
            });
        for (pv, result) in join_all(flushes).await {
            if let Err(e) = result {
                if self.checksummed {
                    self.pvs.fail(pv, &e.to_string());
                } else {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Commits dirty changes every `interval`. Ends when the volume is dropped
/// or stops.
pub(super) async fn background_commits(volume: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = volume.upgrade() else {
            return;
        };
        if inner.check_usable().is_err() {
            return;
        }
        let dirty = {
            let dirty = inner.dirty.lock();
            !dirty.extents.is_empty()
                || !dirty.checksum_chunks.is_empty()
                || !dirty.returned.is_empty()
        };
        if dirty {
            if let Err(e) = inner.sync().await {
                tracing::error!("{}: background commit failed: {e}", inner.name);
            }
        }
    }
}

/// Renews the lease every third of its duration, on its own: a slow commit
/// must not let it lapse. I/O stops at the local deadline if renewals fail.
pub(super) async fn lease_renewal(volume: Weak<Inner>) {
    loop {
        let Some(period) = volume.upgrade().map(|inner| inner.lease_duration / 3) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(inner) = volume.upgrade() else {
            return;
        };
        if inner.check_usable().is_err() {
            return;
        }
        if let Err(e) = inner.refresh().await {
            tracing::error!("{}: lease renewal failed: {e}", inner.name);
            if e.kind() == ErrorKind::Fenced {
                inner.fail(&e);
                return;
            }
        }
    }
}
