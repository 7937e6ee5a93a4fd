//! Making a volume durable: dirty tracking, group commit, and the
//! background upkeep (periodic commit, lease renewal).
//!
//! Crash ordering of one commit:
//! 1. snapshot the dirty extents' slots (placement + written bits) and the
//!    PVs written since the last commit;
//! 2. flush those PVs, and the PVs of every snapshotted placement: a bit is
//!    set only after its data write completed, so this flush covers it;
//! 3. commit the snapshot to the metadata service (synced there);
//! 4. only then acknowledge the FLUSH / FUA that asked for it.
//!
//! Group commit: a flush that arrives while a commit runs waits for the
//! next one; a flush that finds that a commit started after it arrived has
//! finished returns at once. Concurrent flushes share one PV flush and one
//! metadata write.
//!
//! A failed commit (PV flush error, lost lease, store error) stops the
//! volume: what is durable is no longer known, so every later operation
//! fails rather than acknowledge something that may not survive.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use metadata::{ExtentEntry, MapChange, PvId};

use super::{meta_error, Inner};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// What changed since the last commit.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    pub extents: BTreeSet<u64>,
    pub pvs: BTreeSet<PvId>,
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
        let Dirty { extents, mut pvs } = std::mem::take(&mut *self.dirty.lock());
        let mut changes = Vec::with_capacity(extents.len());
        let mut snapshotted = Vec::with_capacity(extents.len());
        for le in extents {
            let slot = self.slot(le);
            // Read the change count first: the state read after it holds at
            // least those changes.
            let version = slot.changes.load(Ordering::Acquire);
            let placement = slot.placement.read().await.clone();
            if let Some(placement) = &placement {
                pvs.extend(placement.iter().map(|pe| pe.pv));
            }
            changes.push(MapChange {
                le,
                entry: placement.map(|placement| ExtentEntry {
                    placement,
                    written: slot.written.load(Ordering::Acquire),
                }),
            });
            snapshotted.push((slot, version));
        }
        let flushes = pvs
            .iter()
            .map(|pv| async move { self.pvs.get(*pv)?.device.flush().await });
        try_join_all(flushes).await?;
        if !changes.is_empty() {
            self.map
                .commit(self.token, changes)
                .await
                .map_err(|e| meta_error(&self.name, e))?;
        }
        for (slot, version) in snapshotted {
            slot.committed.fetch_max(version, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// Commits dirty map changes every `interval` and renews the lease well
/// before it runs out. Ends when the volume is dropped.
pub(super) async fn upkeep(volume: Weak<Inner>, interval: Duration) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = volume.upgrade() else {
            return;
        };
        if inner.check_usable().is_err() {
            return;
        }
        if !inner.dirty.lock().extents.is_empty() {
            if let Err(e) = inner.sync().await {
                tracing::error!("{}: background commit failed: {e}", inner.name);
            }
        }
        if renewed.elapsed() >= inner.lease_duration / 3 {
            match inner.refresh().await {
                Ok(()) => renewed = Instant::now(),
                Err(e) => {
                    tracing::error!("{}: lease renewal failed: {e}", inner.name);
                    if e.kind() == ErrorKind::Fenced {
                        inner.fail(&e);
                    } else if renewed.elapsed() >= inner.lease_duration {
                        // The lease has run out: another holder may own the LV now.
                        inner.fail(&BlockError::new(
                            ErrorKind::Fenced,
                            format!("{}: lease expired", inner.name),
                        ));
                    }
                }
            }
        }
        drop(inner);
    }
}
