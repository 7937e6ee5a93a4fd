//! The open PVs a data server does I/O to, shared by all its volumes.
//!
//! The set grows while volumes are open (`pvcreate` + `vgextend` on a live
//! server), so lookups go through a lock held only for the map access.
//! Each PV carries a failed flag: the first I/O error that a layout reports
//! on a PV marks it failed for every extent at once, and the owner of the
//! set (the server) is told, so it can record the failure and repair.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metadata::{PeAddr, PvId};
use parking_lot::RwLock;

use super::layout::{Leg, Legs};
use crate::device::BlockDevice;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// An open PV: its device and where its extents start.
#[derive(Debug, Clone)]
pub struct PvHandle {
    pub device: Arc<dyn BlockDevice>,
    pub data_offset_bytes: u64,
}

#[derive(Debug)]
struct PvEntry {
    handle: PvHandle,
    failed: AtomicBool,
}

type FailureHook = Arc<dyn Fn(PvId, &str) + Send + Sync>;

#[derive(Default)]
struct Inner {
    pvs: RwLock<HashMap<PvId, Arc<PvEntry>>>,
    on_failure: RwLock<Option<FailureHook>>,
}

#[derive(Clone, Default)]
pub struct PvSet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PvSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<PvId> = self.inner.pvs.read().keys().copied().collect();
        write!(f, "PvSet({ids:?})")
    }
}

impl PvSet {
    /// Adds an open PV; `failed` for one recorded as failed earlier.
    pub fn insert(&self, id: PvId, handle: PvHandle, failed: bool) {
        let entry = PvEntry {
            handle,
            failed: AtomicBool::new(failed),
        };
        self.inner.pvs.write().insert(id, Arc::new(entry));
    }

    pub fn remove(&self, id: PvId) -> Option<PvHandle> {
        self.inner.pvs.write().remove(&id).map(|e| e.handle.clone())
    }

    /// Calls `hook` once for each PV that fails from now on.
    pub fn on_failure(&self, hook: impl Fn(PvId, &str) + Send + Sync + 'static) {
        *self.inner.on_failure.write() = Some(Arc::new(hook));
    }

    /// The PV, online or not.
    pub fn get(&self, id: PvId) -> BlockResult<PvHandle> {
        self.inner
            .pvs
            .read()
            .get(&id)
            .map(|e| e.handle.clone())
            .ok_or_else(|| {
                BlockError::new(ErrorKind::Io, format!("PV id {id} is not open (missing)"))
            })
    }

    pub fn is_failed(&self, id: PvId) -> bool {
        self.inner
            .pvs
            .read()
            .get(&id)
            .is_none_or(|e| e.failed.load(Ordering::Acquire))
    }

    /// Marks a PV failed; the first call for a PV runs the failure hook.
    pub fn fail(&self, id: PvId, reason: &str) {
        let newly = match self.inner.pvs.read().get(&id) {
            Some(entry) => !entry.failed.swap(true, Ordering::AcqRel),
            None => false,
        };
        if newly {
            tracing::error!("PV id {id} failed: {reason}");
            let hook = self.inner.on_failure.read().clone();
            if let Some(hook) = hook {
                hook(id, reason);
            }
        }
    }

    /// The legs of a placement on PEs of `pe_bytes`; a failed or missing
    /// PV gives a leg without a device.
    pub fn legs(&self, placement: &[PeAddr], pe_bytes: u64) -> Legs {
        let pvs = self.inner.pvs.read();
        let legs = placement
            .iter()
            .map(|pe| {
                let entry = pvs.get(&pe.pv);
                let base = entry.map_or(0, |e| e.handle.data_offset_bytes) + pe.pe * pe_bytes;
                Leg {
                    pv: pe.pv,
                    pe: pe.pe,
                    device: entry
                        .filter(|e| !e.failed.load(Ordering::Acquire))
                        .map(|e| e.handle.device.clone()),
                    base_bytes: base,
                }
            })
            .collect();
        Legs::new(legs, self.clone())
    }
}
