//! The data path's view of the metadata service: leases, reservations and
//! batched map commits (pNFS layouts, Ceph's exclusive lock).
//!
//! ```text
//!  data server                         metadata service
//!  acquire(vg, lv) ──────────────────▶ epoch += 1, fence older holders
//!        ◀──────── LeaseGrant: token, records, extent map
//!  reserve(token, n) ────────────────▶ n placements, durably reserved
//!  ... I/O straight to the PVs ...
//!  commit(token, changes) ───────────▶ rejected if the epoch is stale
//!  renew(token) (well before expiry) ▶ current LV record (size may grow)
//!  release(token, unused) ───────────▶ reservations returned
//! ```
//!
//! A holder calls `commit` only after the data its changes point at is
//! durable on the PVs; the service makes the commit durable before
//! answering. A holder whose lease lapsed must stop writing: any commit it
//! sends afterwards is refused with [`MetaError::Fenced`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{MetaError, MetaResult};
use crate::model::{ExtentEntry, LvId, LvRecord, Placement, VgRecord};
use crate::service::Service;

/// Proof of a write lease: the LV and the epoch it was granted at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken {
    pub lv: LvId,
    pub epoch: u64,
}

#[derive(Debug, Clone)]
pub struct LeaseGrant {
    pub token: LeaseToken,
    pub lv: LvRecord,
    pub vg: VgRecord,
    /// Every mapped logical extent, in order.
    pub map: Vec<(u64, ExtentEntry)>,
    /// Renew well before this runs out.
    pub duration: Duration,
}

/// The new state of one logical extent; `None` unmaps it (thin LVs only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapChange {
    pub le: u64,
    pub entry: Option<ExtentEntry>,
}

/// What a data server may ask of the metadata service.
#[async_trait]
pub trait MapService: Send + Sync + 'static {
    /// Takes the exclusive write lease on `vg/lv`; fails with `Busy` while
    /// another holder's lease is live.
    async fn acquire(&self, vg: &str, lv: &str, holder: &str) -> MetaResult<LeaseGrant>;
    /// Extends the lease; returns the LV's current record.
    async fn renew(&self, token: LeaseToken) -> MetaResult<LvRecord>;
    /// Mapped extents from `first_le` on (to pick up extents that a live
    /// `lvextend` of a thick LV allocated).
    async fn extents(
        &self,
        token: LeaseToken,
        first_le: u64,
    ) -> MetaResult<Vec<(u64, ExtentEntry)>>;
    /// Reserves up to `extents` placements for new extents. Fewer (possibly
    /// none) come back when the VG is nearly full.
    async fn reserve(&self, token: LeaseToken, extents: usize) -> MetaResult<Vec<Placement>>;
    /// Applies map changes atomically and durably. A placement that is new
    /// must have been reserved under this lease; placements no longer
    /// referenced return to the free pool.
    async fn commit(&self, token: LeaseToken, changes: Vec<MapChange>) -> MetaResult<()>;
    /// Returns unused reservations and ends the lease.
    async fn release(&self, token: LeaseToken, unused: Vec<Placement>) -> MetaResult<()>;
}

/// The embedded mode: the service in this process, called on tokio's
/// blocking pool (RocksDB's synced writes block).
#[derive(Clone)]
pub struct LocalMapService {
    service: Arc<Service>,
}

impl LocalMapService {
    pub fn new(service: Arc<Service>) -> Self {
        LocalMapService { service }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> MetaResult<T> + Send + 'static,
) -> MetaResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MetaError::Store(format!("metadata task failed: {e}")))?
}

#[async_trait]
impl MapService for LocalMapService {
    async fn acquire(&self, vg: &str, lv: &str, holder: &str) -> MetaResult<LeaseGrant> {
        let (service, vg, lv, holder) = (
            self.service.clone(),
            vg.to_string(),
            lv.to_string(),
            holder.to_string(),
        );
        blocking(move || service.acquire(&vg, &lv, &holder)).await
    }

    async fn renew(&self, token: LeaseToken) -> MetaResult<LvRecord> {
        let service = self.service.clone();
        blocking(move || service.renew(token)).await
    }

    async fn extents(
        &self,
        token: LeaseToken,
        first_le: u64,
    ) -> MetaResult<Vec<(u64, ExtentEntry)>> {
        let service = self.service.clone();
        blocking(move || service.extents(token, first_le)).await
    }

    async fn reserve(&self, token: LeaseToken, extents: usize) -> MetaResult<Vec<Placement>> {
        let service = self.service.clone();
        blocking(move || service.reserve(token, extents)).await
    }

    async fn commit(&self, token: LeaseToken, changes: Vec<MapChange>) -> MetaResult<()> {
        let service = self.service.clone();
        blocking(move || service.commit(token, changes)).await
    }

    async fn release(&self, token: LeaseToken, unused: Vec<Placement>) -> MetaResult<()> {
        let service = self.service.clone();
        blocking(move || service.release(token, unused)).await
    }
}
