//! Checkpoints: retiring entries whose in-place writes are durable.
//!
//! ```text
//!  1. choose entries: the completed prefix, or everything logged so far
//!     (after waiting for it to complete); and the record entries nobody
//!     pins any more (`records.rs`)
//!  2. flush every PV those entries wrote in place
//!  3. write the header with the new tail, FUA, into the other slot
//!  4. free their ring space and forget their rows
//! ```
//!
//! Crash-ordering rule: the header that moves the tail past an entry is
//! written only after the entry's in-place writes completed and their
//! devices were flushed; the ring space and the row are released only
//! after that header is durable. So recovery never misses an entry whose
//! in-place bytes could still be lost, and an entry is never overwritten
//! while a durable header still points at it.
//!
//! A target PV whose flush fails is marked failed in the `PvSet`: its
//! bytes are lost either way and will be rebuilt from the other legs, whose
//! writes are durable, so retiring the entry stays safe. The journal's own
//! header write failing poisons the journal and is returned.

use blockvirt::volume::PvSet;
use blockvirt::BlockResult;
use futures::future::join_all;
use metadata::PvId;

use super::pv_journal::PvJournal;
use super::region::write_header;

/// Which entries a checkpoint retires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retire {
    /// Those at the front whose in-place writes completed; never waits.
    /// Used when the ring fills up and in the background.
    CompletedPrefix,
    /// Every entry logged before the call, after waiting for their in-place
    /// writes to complete. Used by barriers: afterwards no entry logged
    /// before can be replayed.
    AllLogged,
}

impl PvJournal {
    /// Retires what `retire` asks for; returns how many entries it retired.
    pub async fn checkpoint(&self, pvs: &PvSet, retire: Retire) -> BlockResult<u64> {
        let _turn = self.checkpoint_lock.lock().await;
        let upto = match retire {
            Retire::CompletedPrefix => {
                let state = self.lock();
                state.usable(self.pv)?;
                state.completed_end()
            }
            Retire::AllLogged => self.wait_all_completed().await?,
        };
        let (targets, header) = {
            let state = self.lock();
            state.usable(self.pv)?;
            let records_upto = state.records.retirable_end();
            if upto <= state.header.tail_seq && records_upto <= state.header.records_tail_seq {
                return Ok(0);
            }
            let upto = upto.max(state.header.tail_seq);
            (
                state.targets_before(upto),
                state.header_retiring(upto, records_upto),
            )
        };
        flush_targets(pvs, &targets).await;
        if let Err(e) = write_header(&self.device, self.region, &header).await {
            self.poison(&e);
            return Err(e);
        }
        let retired = self.lock().retire(header);
        self.bump();
        Ok(retired)
    }

    /// Waits until every entry logged before the call has completed;
    /// returns the sequence after the last of them.
    async fn wait_all_completed(&self) -> BlockResult<u64> {
        let mut changes = self.subscribe();
        let upto = {
            let state = self.lock();
            state.usable(self.pv)?;
            state.next_seq
        };
        loop {
            {
                let state = self.lock();
                state.usable(self.pv)?;
                if state.completed_end() >= upto {
                    return Ok(upto);
                }
            }
            // The sender lives as long as `self`: this cannot fail.
            let _ = changes.changed().await;
        }
    }
}

/// Flushes the PVs in `targets` that are online; one that fails is marked
/// failed (see the module doc).
pub(super) async fn flush_targets(pvs: &PvSet, targets: &[PvId]) {
    let flushes = targets
        .iter()
        .filter(|&&pv| !pvs.is_failed(pv))
        .filter_map(|&pv| {
            let device = pvs.get(pv).ok()?.device;
            Some(async move { (pv, device.flush().await) })
        });
    for (pv, result) in join_all(flushes).await {
        if let Err(e) = result {
            pvs.fail(pv, &format!("flush of journaled writes: {e}"));
        }
    }
}
