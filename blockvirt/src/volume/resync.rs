//! Bringing copies back into agreement after an unclean shutdown.
//!
//! Writes in flight when the power failed may have reached some copies of
//! a block and not others, and none of their checksums was committed. A
//! block's copies may then disagree with each other and with its checksum,
//! and which copy a read picks would decide what it returns; if the copy a
//! read returned is later lost, another read could return something else.
//! md resyncs a mirror after an unclean shutdown for the same reason.
//!
//! - At open, every written extent of a redundant LV whose previous lease
//!   was never released (`LeaseGrant::unclean`) is marked unsynced.
//! - Before anything reads or writes an unsynced extent (a read, a write,
//!   a scrub, a leg copy), it is resynced with the extent to itself: every copy is read; a
//!   copy that matches the block's checksum wins, otherwise the copies
//!   settle on the one most of them hold, whose checksum is adopted
//!   (`ScrubMode::Resync`). Every later read sees that one.
//! - The copies it rewrote are flushed before the extent counts as synced.
//!   A read decides a block for good: were the rewrites lost to another
//!   power failure, stale copies could outvote the one that held the
//!   decided version (overwritten since by a write that power failure
//!   tore), and a later read would bring back what the first ruled out.
//! - A background task resyncs the rest, one extent at a time, so full
//!   redundancy returns without waiting for reads.
//!
//! Writes wait for it too: a parity layout's partial-row write reads the
//! old data to update parity, and verifies it first; an unfinished write
//! from before the crash would fail that check until the resync adopts it.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::layout::ScrubMode;
use super::{Inner, Slot};

impl Inner {
    /// Extents still waiting for their resync.
    pub(super) fn unsynced_extents(&self) -> usize {
        self.slots
            .read()
            .iter()
            .filter(|slot| slot.unsynced.load(Ordering::Acquire))
            .count()
    }

    /// Resyncs extent `le` if it is still unsynced. A resync that fails
    /// (no copy readable) leaves it unsynced; the caller's own I/O then
    /// reports what is wrong.
    pub(super) async fn ensure_synced(&self, le: u64, slot: &Slot) {
        if !slot.unsynced.load(Ordering::Acquire) {
            return;
        }
        let guard = slot.placement.write().await;
        if !slot.unsynced.load(Ordering::Acquire) {
            return;
        }
        let Some(placement) = guard.as_ref() else {
            slot.unsynced.store(false, Ordering::Release);
            return;
        };
        match self
            .scrub_placed(slot, le, placement, ScrubMode::Resync)
            .await
        {
            Ok(report) => {
                if report.repaired > 0 || !report.adopted.is_empty() {
                    let pvs = placement.iter().map(|pe| pe.pv).collect();
                    if let Err(e) = self.flush_pvs(&pvs).await {
                        tracing::warn!("{}: resync of extent {le}: {e}", self.name);
                        return;
                    }
                }
                if report.unrecoverable > 0 {
                    tracing::warn!(
                        "{}: resync of extent {le}: {} blocks no copy vouches for",
                        self.name,
                        report.unrecoverable
                    );
                }
                slot.unsynced.store(false, Ordering::Release);
            }
            Err(e) => tracing::warn!("{}: resync of extent {le}: {e}", self.name),
        }
    }
}

/// Resyncs every unsynced extent, in order. Ends when done, or when the
/// volume is dropped or stops.
pub(super) async fn background_resync(volume: Weak<Inner>) {
    if let Some(inner) = volume.upgrade() {
        tracing::info!(
            "{}: resyncing {} extents after an unclean shutdown",
            inner.name,
            inner.unsynced_extents()
        );
    }
    let mut le = 0;
    loop {
        let Some(inner) = volume.upgrade() else {
            return;
        };
        if inner.check_usable().is_err() || le >= inner.slots.read().len() as u64 {
            return;
        }
        let slot = inner.slot(le);
        inner.ensure_synced(le, &slot).await;
        le += 1;
    }
}
