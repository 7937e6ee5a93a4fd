//! What the server does when a PV fails.
//!
//! ```text
//!  layout I/O error ─┐
//!  health check ─────┼─▶ PvSet::fail ─▶ channel ─▶ record it (metadata, durable)
//!  journal recovery ─┘                           ─▶ return spare extents placed on it
//!                                                ─▶ raid_fault_policy=allocate: start repairs
//! ```
//!
//! The first I/O error a PV returns marks it failed for every extent at
//! once (in the data path, without waiting); this module does the slower
//! work off the I/O path. A failed PV stays failed across restarts: its
//! legs may miss writes made while it was out, so it is never trusted
//! again. `lvconvert --repair` moves its legs elsewhere and
//! `vgreduce --removemissing` then drops it from the VG.
//!
//! A PV idle at the time it breaks would only be noticed by the next I/O
//! to it, so a health check reads every open PV's label block now and
//! then.

use std::sync::{Arc, Weak};
use std::time::Duration;

use blockvirt::{BlockDevice, IoBufMut, IO_ALIGN};
use metadata::{FaultPolicy, PvId, Service};
use tokio::sync::mpsc;

use super::pvs::PvState;
use super::Server;

pub type FailureReceiver = mpsc::UnboundedReceiver<(PvId, String)>;

/// Handles failures one at a time, as they arrive, for as long as the
/// server lives.
pub async fn handle_failures(server: Weak<Server>, mut failures: FailureReceiver) {
    while let Some((pv, reason)) = failures.recv().await {
        let Some(server) = server.upgrade() else {
            return;
        };
        server.pv_failed(pv, &reason).await;
    }
}

impl Server {
    async fn pv_failed(&self, pv: PvId, reason: &str) {
        let service = self.service.clone();
        let why = reason.to_string();
        let recorded = tokio::task::spawn_blocking(move || service.set_pv_failed(pv, &why)).await;
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("recording the failure of PV id {pv}: {e}"),
            Err(e) => tracing::error!("recording the failure of PV id {pv}: {e}"),
        }
        let pvs = self.pvs.clone();
        for volume in self.volumes.open_volumes().await {
            if let Err(e) = volume.return_reserved(|pe| pvs.is_failed(pe.pv)).await {
                tracing::warn!("{}: returning spare extents: {e}", volume.name());
            }
        }
        for (vg, lv) in self.service.lvs_on_pv(pv) {
            let policy = self
                .service
                .lookup_lv(&vg, &lv)
                .map(|(record, vg)| (record.layout.tolerance() > 0, vg.fault_policy));
            if let Ok((true, FaultPolicy::Allocate)) = policy {
                tracing::info!("{vg}/{lv}: raid_fault_policy=allocate, repairing");
                if let Err(e) = self.start_recover(&vg, &lv) {
                    tracing::warn!("{vg}/{lv}: automatic repair not started: {e}");
                }
            }
        }
    }

    /// Reads each open, healthy PV's first block every `interval`; a PV
    /// that cannot answer is failed.
    pub async fn check_pv_health(self: Arc<Self>, interval: Duration) {
        let me = Arc::downgrade(&self);
        drop(self);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(server) = me.upgrade() else {
                return;
            };
            let online: Vec<PvId> = server
                .pv_states
                .lock()
                .iter()
                .filter(|(_, state)| matches!(state, PvState::Online(_)))
                .map(|(id, _)| *id)
                .collect();
            for pv in online {
                server.probe_pv(pv).await;
            }
        }
    }

    /// Reads a healthy PV's first block; a PV that cannot answer is failed.
    pub async fn probe_pv(&self, pv: PvId) {
        if self.pvs.is_failed(pv) {
            return;
        }
        let Ok(handle) = self.pvs.get(pv) else {
            return;
        };
        let (result, _) = handle.device.read_at(0, IoBufMut::zeroed(IO_ALIGN)).await;
        if let Err(e) = result {
            self.pvs.fail(pv, &format!("health check: {e}"));
        }
    }
}

/// A PV missing at start that holds legs of a redundant LV is recorded
/// failed: its LVs will write around it, so its legs go stale and must
/// never be read again, even if it comes back. A PV holding only
/// non-redundant legs is left missing (I/O to those extents fails until it
/// returns).
pub fn fail_missing_redundant(service: &Service, pv: PvId, problem: &str) {
    let redundant = service.lvs_on_pv(pv).iter().any(|(vg, lv)| {
        service
            .lookup_lv(vg, lv)
            .is_ok_and(|(record, _)| record.layout.tolerance() > 0)
    });
    if redundant {
        if let Err(e) = service.set_pv_failed(pv, &format!("missing at start: {problem}")) {
            tracing::error!("recording PV id {pv} as failed: {e}");
        }
    }
}
