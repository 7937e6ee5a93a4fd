//! The metadata service: the one owner of the truth about PVs, VGs, LVs,
//! extent maps and PE allocation.
//!
//! ```text
//!   control path (bv CLI, API)          data path (volumes, via MapService)
//!   create/remove pv vg lv, extend      acquire lease, reserve, commit, release
//!                 \                         /
//!                  Service (one mutex over State)
//!                          │ atomic, synced batches
//!                       KvStore (RocksDB)
//! ```
//!
//! Every mutation builds one batch, writes it (durable on return), and only
//! then changes the in-memory state, so memory never runs ahead of the store.
//! The in-memory state (catalog, allocator, leases) is rebuilt from the store
//! at open and checked for consistency: a PE claimed twice stops the service
//! from starting rather than handing the PE out a third time.
//!
//! Leases live in memory only: after a restart no lease exists, and the
//! epoch stored with each LV (bumped at every grant) fences any holder from
//! before the restart.

mod control;
mod data;
mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::alloc::PeAllocator;
use crate::error::{MetaError, MetaResult};
use crate::model::{
    decode, decode_lv, split_pair_key, ExtentEntry, LvId, LvRecord, PeAddr, PvId, PvRecord, VgId,
    VgRecord,
};
use crate::store::{KvStore, Table};

pub use report::{LvReport, PvReport, VgReport};

/// Default lease duration; holders renew well before it runs out.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

const NEXT_ID_KEY: &[u8] = b"next_id";

pub struct Service {
    store: Box<dyn KvStore>,
    state: Mutex<State>,
    lease_duration: Duration,
}

struct LvState {
    record: LvRecord,
    mapped_extents: u64,
}

struct Lease {
    epoch: u64,
    holder: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    next_id: u64,
    pvs: BTreeMap<PvId, PvRecord>,
    vgs: BTreeMap<VgId, VgRecord>,
    lvs: BTreeMap<LvId, LvState>,
    alloc: PeAllocator,
    /// PEs handed to a lease holder and not yet mapped, by owning LV.
    reservations: BTreeMap<PeAddr, LvId>,
    leases: HashMap<LvId, Lease>,
    /// Which logical extents have a leg on each PV (for health reports,
    /// repair and pvmove).
    legs_on_pv: HashMap<PvId, BTreeSet<(LvId, u64)>>,
    /// PVs being emptied by pvmove: nothing new is placed on them. Kept in
    /// memory only; a move interrupted by a restart is simply run again.
    evacuating: BTreeSet<PvId>,
}

impl Service {
    /// Opens (or creates) the RocksDB store at `path`.
    #[cfg(feature = "rocksdb")]
    pub fn open_rocksdb(path: &Path) -> MetaResult<Service> {
        Service::open(Box::new(crate::store::RocksStore::open(path)?))
    }

    pub fn open(store: Box<dyn KvStore>) -> MetaResult<Service> {
        let state = load(&*store)?;
        Ok(Service {
            store,
            state: Mutex::new(state),
            lease_duration: DEFAULT_LEASE,
        })
    }

    pub fn with_lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }
}

fn load(store: &dyn KvStore) -> MetaResult<State> {
    let mut state = State {
        next_id: match store.get(Table::Meta, NEXT_ID_KEY)? {
            Some(bytes) => decode(&bytes, "next id")?,
            None => 1,
        },
        ..State::default()
    };
    for (_, value) in store.scan_prefix(Table::Pvs, &[])? {
        let pv: PvRecord = decode(&value, "PV record")?;
        state.pvs.insert(pv.id, pv);
    }
    for (_, value) in store.scan_prefix(Table::Vgs, &[])? {
        let vg: VgRecord = decode(&value, "VG record")?;
        state.vgs.insert(vg.id, vg);
    }
    for pv in state.pvs.values() {
        if let Some(vg) = pv.vg {
            if !state.vgs.contains_key(&vg) {
                return Err(MetaError::Corrupt(format!(
                    "PV {} belongs to unknown VG id {vg}",
                    pv.path.display()
                )));
            }
            state.alloc.add_pv(pv.id, pv.pe_count);
        }
    }
    for (_, value) in store.scan_prefix(Table::Lvs, &[])? {
        let lv = decode_lv(&value)?;
        if !state.vgs.contains_key(&lv.vg) {
            return Err(MetaError::Corrupt(format!(
                "LV {} in unknown VG id {}",
                lv.name, lv.vg
            )));
        }
        state.lvs.insert(
            lv.id,
            LvState {
                record: lv,
                mapped_extents: 0,
            },
        );
    }
    for (key, value) in store.scan_prefix(Table::Extents, &[])? {
        let (lv, le) = split_pair_key(&key)?;
        let entry: ExtentEntry = decode(&value, "extent entry")?;
        let Some(lv_state) = state.lvs.get_mut(&lv) else {
            return Err(MetaError::Corrupt(format!(
                "extent {le} of unknown LV id {lv}"
            )));
        };
        lv_state.mapped_extents += 1;
        state.index_placement(lv, le, &entry.placement);
        for addr in entry.placement {
            if !state.alloc.mark_used(addr) {
                return Err(MetaError::Corrupt(format!(
                    "PE {} of PV id {} is mapped twice or does not exist (LV id {lv}, extent {le})",
                    addr.pe, addr.pv
                )));
            }
        }
    }
    for (key, value) in store.scan_prefix(Table::Reservations, &[])? {
        let (pv, pe) = split_pair_key(&key)?;
        let lv: LvId = decode(&value, "reservation")?;
        let addr = PeAddr { pv, pe };
        if !state.lvs.contains_key(&lv) || !state.alloc.mark_used(addr) {
            return Err(MetaError::Corrupt(format!(
                "reservation of PE {pe} on PV id {pv} conflicts or names an unknown LV"
            )));
        }
        state.reservations.insert(addr, lv);
    }
    Ok(state)
}

impl State {
    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn vg_by_name(&self, name: &str) -> MetaResult<&VgRecord> {
        self.vgs
            .values()
            .find(|vg| vg.name == name)
            .ok_or_else(|| MetaError::NotFound(format!("volume group \"{name}\" not found")))
    }

    fn lv_by_name(&self, vg: &str, lv: &str) -> MetaResult<&LvState> {
        let vg_id = self.vg_by_name(vg)?.id;
        self.lvs
            .values()
            .find(|s| s.record.vg == vg_id && s.record.name == lv)
            .ok_or_else(|| MetaError::NotFound(format!("logical volume \"{vg}/{lv}\" not found")))
    }

    fn pv_by_path(&self, path: &Path) -> MetaResult<&PvRecord> {
        self.pvs.values().find(|pv| pv.path == path).ok_or_else(|| {
            MetaError::NotFound(format!("physical volume \"{}\" not found", path.display()))
        })
    }

    fn vg_pvs(&self, vg: VgId) -> Vec<PvId> {
        self.pvs
            .values()
            .filter(|pv| pv.vg == Some(vg))
            .map(|pv| pv.id)
            .collect()
    }

    /// The VG's PVs that new extents may go to (not failed, not being
    /// emptied).
    fn allocatable_pvs(&self, vg: VgId) -> Vec<PvId> {
        self.pvs
            .values()
            .filter(|pv| pv.vg == Some(vg) && self.is_allocatable(pv))
            .map(|pv| pv.id)
            .collect()
    }

    fn is_allocatable(&self, pv: &PvRecord) -> bool {
        pv.failed.is_none() && !self.evacuating.contains(&pv.id)
    }

    /// User bytes of one logical extent of `lv`.
    fn le_bytes(&self, lv: &LvRecord) -> u64 {
        lv.layout.extent_bytes(self.vgs[&lv.vg].extent_bytes)
    }

    fn index_placement(&mut self, lv: LvId, le: u64, placement: &[PeAddr]) {
        for addr in placement {
            self.legs_on_pv.entry(addr.pv).or_default().insert((lv, le));
        }
    }

    fn unindex_placement(&mut self, lv: LvId, le: u64, placement: &[PeAddr]) {
        for addr in placement {
            if let Some(set) = self.legs_on_pv.get_mut(&addr.pv) {
                set.remove(&(lv, le));
            }
        }
    }

    fn live_lease(&self, lv: LvId) -> Option<&Lease> {
        self.leases.get(&lv).filter(|l| l.expires > Instant::now())
    }

    fn reservations_of(&self, lv: LvId) -> Vec<PeAddr> {
        self.reservations
            .iter()
            .filter(|(_, &owner)| owner == lv)
            .map(|(addr, _)| *addr)
            .collect()
    }

    /// Returns reserved PEs to the free pool, once the batch that deleted
    /// their reservations is durable.
    fn return_reservations(&mut self, addrs: &[PeAddr]) {
        for addr in addrs {
            self.reservations.remove(addr);
            self.alloc.free(*addr);
        }
    }

    fn next_id_change(&self) -> crate::store::Change {
        crate::store::Change::Put(
            Table::Meta,
            NEXT_ID_KEY.to_vec(),
            crate::model::encode(&self.next_id),
        )
    }
}

/// The store change that deletes the reservation of `addr`.
fn unreserve(addr: &PeAddr) -> crate::store::Change {
    crate::store::Change::Delete(
        Table::Reservations,
        crate::model::pair_key(addr.pv, addr.pe),
    )
}

/// Extents needed for `size_bytes` (the last one may be partly used).
fn extents_for(size_bytes: u64, extent_bytes: u64) -> u64 {
    size_bytes.div_ceil(extent_bytes)
}
