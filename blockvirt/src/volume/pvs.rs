//! The open PVs a data server does I/O to, shared by all its volumes.
//!
//! The set grows while volumes are open (`pvcreate` + `vgextend` on a live
//! server), so lookups go through a lock; each lookup hands out a clone of
//! the device handle and holds the lock only for the map access.

use std::collections::HashMap;
use std::sync::Arc;

use metadata::{PeAddr, PvId};
use parking_lot::RwLock;

use crate::device::BlockDevice;
use crate::error::{BlockError, BlockResult, ErrorKind};

/// An open PV: its device and where its extents start.
#[derive(Debug, Clone)]
pub struct PvHandle {
    pub device: Arc<dyn BlockDevice>,
    pub data_offset_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct PvSet {
    pvs: Arc<RwLock<HashMap<PvId, PvHandle>>>,
}

impl PvSet {
    pub fn insert(&self, id: PvId, handle: PvHandle) {
        self.pvs.write().insert(id, handle);
    }

    pub fn remove(&self, id: PvId) -> Option<PvHandle> {
        self.pvs.write().remove(&id)
    }

    pub fn get(&self, id: PvId) -> BlockResult<PvHandle> {
        self.pvs.read().get(&id).cloned().ok_or_else(|| {
            BlockError::new(
                ErrorKind::Io,
                format!("PV id {id} is not open (missing or failed)"),
            )
        })
    }

    /// The device holding `pe` and the byte offset of the PE's start on it.
    pub fn locate(
        &self,
        pe: PeAddr,
        extent_bytes: u64,
    ) -> BlockResult<(Arc<dyn BlockDevice>, u64)> {
        let handle = self.get(pe.pv)?;
        Ok((
            handle.device,
            handle.data_offset_bytes + pe.pe * extent_bytes,
        ))
    }
}
