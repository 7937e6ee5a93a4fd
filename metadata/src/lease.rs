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
use crate::model::{
    ChunkChecksums, ExtentEntry, LvId, LvRecord, PeAddr, Placement, PvId, VgRecord,
};
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
    /// Block checksums of mapped extents (redundant layouts).
    pub checksums: Vec<ChunkChecksums>,
    /// Renew well before this runs out.
    pub duration: Duration,
    /// The previous lease was never released (its holder crashed or lost
    /// power): copies of a block may disagree where writes were in flight,
    /// so the new holder resyncs them.
    pub unclean: bool,
}

/// The new state of one logical extent; `None` unmaps it (thin LVs only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapChange {
    pub le: u64,
    pub entry: Option<ExtentEntry>,
}

/// One atomic commit: extent map changes and checksum updates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitBatch {
    pub extents: Vec<MapChange>,
    /// Checksums of chunks of extents that are mapped after `extents`
    /// applies; an unmapped extent loses its checksums.
    pub checksums: Vec<ChunkChecksums>,
    /// PEs reserved for this holder that it no longer needs (an extent
    /// allocated and discarded again before any commit): back to the pool.
    pub returned: Vec<PeAddr>,
}

/// Map changes alone, without checksums.
impl From<Vec<MapChange>> for CommitBatch {
    fn from(extents: Vec<MapChange>) -> Self {
        CommitBatch {
            extents,
            ..CommitBatch::default()
        }
    }
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty() && self.checksums.is_empty() && self.returned.is_empty()
    }
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
    /// Reserves one PE on an online PV outside `exclude`, to replace a leg
    /// of a placed extent (rebuild, pvmove). `None` when there is none.
    async fn reserve_pe(&self, token: LeaseToken, exclude: Vec<PvId>)
        -> MetaResult<Option<PeAddr>>;
    /// Applies map changes atomically and durably. A PE that is new in a
    /// placement must have been reserved under this lease; PEs no longer
    /// referenced return to the free pool.
    async fn commit(&self, token: LeaseToken, batch: CommitBatch) -> MetaResult<()>;
    /// Returns unused reservations (whole placements or single PEs) and
    /// ends the lease. `clean`: every extent the holder was to resync after
    /// an unclean stop has been; if not, the next grant is unclean too.
    async fn release(&self, token: LeaseToken, unused: Vec<PeAddr>, clean: bool) -> MetaResult<()>;
    /// Records that a PV failed (I/O errors, gone), durably.
    async fn report_failed_pv(&self, pv: PvId, reason: String) -> MetaResult<()>;
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

    async fn reserve_pe(
        &self,
        token: LeaseToken,
        exclude: Vec<PvId>,
    ) -> MetaResult<Option<PeAddr>> {
        let service = self.service.clone();
        blocking(move || service.reserve_pe(token, &exclude)).await
    }

    async fn commit(&self, token: LeaseToken, batch: CommitBatch) -> MetaResult<()> {
        let service = self.service.clone();
        blocking(move || service.commit(token, batch)).await
    }

    async fn release(&self, token: LeaseToken, unused: Vec<PeAddr>, clean: bool) -> MetaResult<()> {
        let service = self.service.clone();
        blocking(move || service.release(token, unused, clean)).await
    }

    async fn report_failed_pv(&self, pv: PvId, reason: String) -> MetaResult<()> {
        let service = self.service.clone();
        blocking(move || service.set_pv_failed(pv, &reason)).await
    }
}
