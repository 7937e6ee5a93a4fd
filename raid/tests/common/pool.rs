//! A volume group of simulated PVs as a server holds it: the metadata
//! service over an in-memory store, the open PVs, and the stripe journals,
//! with thin volumes opened over them. It restarts as a server does after a
//! power loss: service reopened from its store, a new set of open PVs,
//! journals recovered before any volume opens.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blockvirt::testing::{SimDisk, SimFaults, SimSession};
use blockvirt::volume::{PvHandle, PvSet, ThinVolume, VolumeOptions};
use blockvirt::{BlockResult, ByteRange, Checked};
use metadata::model::{pv_bytes_for, pv_journal_bytes, PV_LABEL_AREA_BYTES};
use metadata::store::MemStore;
use metadata::{
    CommitBatch, ExtentEntry, Layout, LeaseGrant, LeaseToken, LvRecord, MapService, MetaResult,
    PeAddr, Placement, PvId, Service,
};
use raid::io::RaidLayouts;
use raid::journal::JournalSet;
use raid::StripeGeometry;
use uuid::Uuid;

pub const MIB: u64 = 1 << 20;
/// The PE size of the pool's VG.
pub const PE: u64 = 1 << 20;

pub struct Pool {
    pub store: Arc<MemStore>,
    pub service: Arc<Service>,
    pub pvs: PvSet,
    pub ids: Vec<PvId>,
    pub disks: Vec<Arc<SimDisk>>,
    pub regions: Vec<(PvId, ByteRange)>,
    pub journals: Arc<JournalSet>,
    data_offsets: Vec<u64>,
}

impl Pool {
    /// `count` fault-free simulated PVs of `pes` extents in VG "vg".
    pub async fn new(count: usize, pes: u64, seed: u64) -> Pool {
        Pool::with_faults(count, pes, seed, SimFaults::default()).await
    }

    /// Like [`new`](Self::new), every disk injecting `faults`.
    pub async fn with_faults(count: usize, pes: u64, seed: u64, faults: SimFaults) -> Pool {
        let store = Arc::new(MemStore::new());
        let service = open_service(&store);
        let size = pv_bytes_for(pes, PE);
        let (mut ids, mut disks, mut regions, mut paths, mut data_offsets) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..count {
            let path = std::path::PathBuf::from(format!("/sim/pv{i}"));
            let record = service.create_pv(&path, Uuid::new_v4(), size).unwrap();
            let disk_seed = seed.wrapping_mul(100).wrapping_add(i as u64);
            disks.push(Arc::new(SimDisk::with_faults(size, disk_seed, faults)));
            regions.push((
                record.id,
                ByteRange::new(PV_LABEL_AREA_BYTES, pv_journal_bytes(size)),
            ));
            ids.push(record.id);
            paths.push(path);
            data_offsets.push(record.data_offset_bytes);
        }
        service.create_vg("vg", &paths, PE).unwrap();
        let (service, pvs, journals) = boot(&store, &ids, &disks, &data_offsets, &regions)
            .await
            .expect("a fresh pool starts");
        Pool {
            store,
            service,
            pvs,
            ids,
            disks,
            regions,
            journals,
            data_offsets,
        }
    }

    /// Opens `lv`, panicking on failure.
    pub async fn open(&self, lv: &str) -> ThinVolume {
        self.try_open(lv).await.unwrap()
    }

    pub async fn try_open(&self, lv: &str) -> BlockResult<ThinVolume> {
        let options = VolumeOptions {
            commit_interval: Duration::from_secs(3600),
            layouts: Arc::new(RaidLayouts::new(self.journals.clone())),
            ..VolumeOptions::default()
        };
        self.open_with(lv, options).await
    }

    /// Opens `lv` with `options` (their layouts replaced by the pool's).
    pub async fn open_with(&self, lv: &str, options: VolumeOptions) -> BlockResult<ThinVolume> {
        let options = VolumeOptions {
            layouts: Arc::new(RaidLayouts::new(self.journals.clone())),
            ..options
        };
        let map = Arc::new(InlineMapService(self.service.clone()));
        ThinVolume::open(map, self.pvs.clone(), "vg", lv, options).await
    }

    /// Power loss on every disk at once.
    pub fn crash(&self) {
        for disk in &self.disks {
            disk.crash();
        }
    }

    /// Power loss and restart.
    pub async fn power_loss(&mut self) {
        self.crash();
        self.restart().await.expect("restart after a power loss");
    }

    /// Restarts as a server does (see [`boot`]).
    pub async fn restart(&mut self) -> BlockResult<()> {
        let (service, pvs, journals) = boot(
            &self.store,
            &self.ids,
            &self.disks,
            &self.data_offsets,
            &self.regions,
        )
        .await?;
        (self.service, self.pvs, self.journals) = (service, pvs, journals);
        Ok(())
    }

    /// The disk behind PV `pv`.
    pub fn disk_of(&self, pv: PvId) -> usize {
        self.ids.iter().position(|&id| id == pv).unwrap()
    }

    /// Device offset on its disk of byte `offset` of PE `pe`.
    pub fn pe_offset(&self, pe: PeAddr, offset: u64) -> (usize, u64) {
        let disk = self.disk_of(pe.pv);
        (disk, self.data_offsets[disk] + pe.pe * PE + offset)
    }

    /// Disks holding the legs of extent `le`, in leg order.
    pub async fn leg_disks(&self, lv: &ThinVolume, le: u64) -> Vec<usize> {
        let placement = lv.placement(le).await.expect("extent is mapped");
        placement.iter().map(|pe| self.disk_of(pe.pv)).collect()
    }

    /// Device offset on its disk of user byte `offset` of extent `le`.
    pub async fn device_offset(
        &self,
        lv: &ThinVolume,
        layout: Layout,
        le: u64,
        offset: u64,
    ) -> (usize, u64) {
        let placement = lv.placement(le).await.unwrap();
        let span = StripeGeometry::new(layout, PE)
            .unwrap()
            .spans(offset, 4096)
            .next()
            .unwrap();
        self.pe_offset(placement[span.leg], span.pe_offset_bytes)
    }
}

/// What a server does at start: the service opens from its store (no
/// leases) and takes back every reservation; every PV opens, failed if
/// recorded so or dead; the journals are replayed before anything else.
/// The disks are reached through sessions of this power-on, so nothing
/// the previous server left running touches them after a crash, nor
/// records a PV failed.
async fn boot(
    store: &Arc<MemStore>,
    ids: &[PvId],
    disks: &[Arc<SimDisk>],
    data_offsets: &[u64],
    regions: &[(PvId, ByteRange)],
) -> BlockResult<(Arc<Service>, PvSet, Arc<JournalSet>)> {
    let service = open_service(store);
    service.reclaim_all_reservations().unwrap();
    let recorded_failed: Vec<PvId> = service
        .pv_records()
        .into_iter()
        .filter(|pv| pv.failed.is_some())
        .map(|pv| pv.id)
        .collect();
    let pvs = PvSet::default();
    let sessions: Vec<SimSession> = disks.iter().map(SimDisk::session).collect();
    for (i, &id) in ids.iter().enumerate() {
        pvs.insert(
            id,
            PvHandle {
                device: Arc::new(Checked::new(sessions[i].clone())),
                data_offset_bytes: data_offsets[i],
            },
            recorded_failed.contains(&id) || disks[i].is_failed(),
        );
    }
    // Recorded durably, as the server does, so the allocator avoids the PV
    // and a restart remembers it; not by a server that has lost power.
    let recorder = Arc::downgrade(&service);
    let ids = ids.to_vec();
    pvs.on_failure(move |pv, reason| {
        let powered = ids
            .iter()
            .position(|&id| id == pv)
            .is_some_and(|i| sessions[i].is_current());
        if let Some(service) = recorder.upgrade().filter(|_| powered) {
            service.set_pv_failed(pv, reason).unwrap();
        }
    });
    let journals = Arc::new(JournalSet::open(pvs.clone(), regions.to_vec()).await?);
    journals.recover_with(Some(&*service)).await?;
    Ok((service, pvs, journals))
}

/// Leases outlive any test: they are measured in real time, and a slow
/// machine must not fence a volume mid-test.
fn open_service(store: &Arc<MemStore>) -> Arc<Service> {
    Arc::new(
        Service::open(Box::new(store.clone()))
            .unwrap()
            .with_lease_duration(Duration::from_secs(24 * 3600)),
    )
}

/// The metadata service called in line. `LocalMapService` runs each call
/// on tokio's blocking pool, whose threads finish in real time and so
/// decide when the caller resumes; in line, a seeded simulation on a
/// current-thread runtime interleaves the same way every run.
pub struct InlineMapService(pub Arc<Service>);

#[async_trait]
impl MapService for InlineMapService {
    async fn acquire(&self, vg: &str, lv: &str, holder: &str) -> MetaResult<LeaseGrant> {
        self.0.acquire(vg, lv, holder)
    }

    async fn renew(&self, token: LeaseToken) -> MetaResult<LvRecord> {
        self.0.renew(token)
    }

    async fn extents(
        &self,
        token: LeaseToken,
        first_le: u64,
    ) -> MetaResult<Vec<(u64, ExtentEntry)>> {
        self.0.extents(token, first_le)
    }

    async fn reserve(&self, token: LeaseToken, extents: usize) -> MetaResult<Vec<Placement>> {
        self.0.reserve(token, extents)
    }

    async fn reserve_pe(
        &self,
        token: LeaseToken,
        exclude: Vec<PvId>,
    ) -> MetaResult<Option<PeAddr>> {
        self.0.reserve_pe(token, &exclude)
    }

    async fn commit(&self, token: LeaseToken, batch: CommitBatch) -> MetaResult<()> {
        self.0.commit(token, batch)
    }

    async fn release(&self, token: LeaseToken, unused: Vec<PeAddr>, clean: bool) -> MetaResult<()> {
        self.0.release(token, unused, clean)
    }

    async fn report_failed_pv(&self, pv: PvId, reason: String) -> MetaResult<()> {
        self.0.set_pv_failed(pv, &reason)
    }
}
