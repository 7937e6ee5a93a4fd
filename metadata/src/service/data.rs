//! Data-path operations: leases, reservations, map commits.
//!
//! Invariants the checks below keep:
//! - a PE is in exactly one of: free, reserved (for one LV), mapped (by one
//!   logical extent);
//! - only the current lease holder (matching epoch, unexpired) reserves or
//!   commits;
//! - a newly mapped PE must come from the committing LV's reservations, so a
//!   holder can never map another LV's extent into its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{extents_for, unreserve, Lease, Service, State};
use crate::error::{MetaError, MetaResult};
use crate::lease::{CommitBatch, LeaseGrant, LeaseToken};
use crate::model::{
    checksum_key, decode, decode_checksums, encode, encode_checksums, id_key, pair_key,
    split_pair_key, ChunkChecksums, ExtentEntry, LvId, LvRecord, PeAddr, Placement, PvId,
    CHUNKS_PER_EXTENT,
};

/// The I/O block, the unit of a checksum.
const BLOCK_BYTES: u64 = 4096;
use crate::store::{Change, Table};

impl Service {
    pub fn acquire(&self, vg_name: &str, lv_name: &str, holder: &str) -> MetaResult<LeaseGrant> {
        let mut st = self.state.lock();
        let lv = st.lv_by_name(vg_name, lv_name)?.record.clone();
        let vg = st.vg_by_name(vg_name)?.clone();
        if let Some(lease) = st.live_lease(lv.id) {
            return Err(MetaError::Busy(format!(
                "logical volume \"{vg_name}/{lv_name}\" is in use by {}",
                lease.holder
            )));
        }
        // Everything that can fail comes before the grant takes effect.
        let map = self.read_extents(lv.id, 0)?;
        let checksums = self.read_checksums(lv.id)?;
        let unclean = self.store.get(Table::Open, &id_key(lv.id))?.is_some();
        // A new epoch fences any earlier holder; its reservations come back.
        let orphaned = st.reservations_of(lv.id);
        let granted = LvRecord {
            epoch: lv.epoch + 1,
            ..lv
        };
        let mut changes = vec![Change::Put(
            Table::Lvs,
            id_key(granted.id),
            encode(&granted),
        )];
        changes.push(Change::Put(
            Table::Open,
            id_key(granted.id),
            holder.as_bytes().to_vec(),
        ));
        changes.extend(orphaned.iter().map(unreserve));
        self.store.write(changes)?;
        st.return_reservations(&orphaned);
        st.lvs.get_mut(&granted.id).expect("LV exists").record = granted.clone();
        st.leases.insert(
            granted.id,
            Lease {
                epoch: granted.epoch,
                holder: holder.to_string(),
                expires: Instant::now() + self.lease_duration,
            },
        );
        Ok(LeaseGrant {
            token: LeaseToken {
                lv: granted.id,
                epoch: granted.epoch,
            },
            lv: granted,
            vg,
            map,
            checksums,
            duration: self.lease_duration,
            unclean,
        })
    }

    fn read_checksums(&self, lv: LvId) -> MetaResult<Vec<ChunkChecksums>> {
        let mut checksums = Vec::new();
        for (key, value) in self.store.scan_prefix(Table::Checksums, &id_key(lv))? {
            let (_, le) = split_pair_key(&key[..16.min(key.len())])?;
            let chunk = *key
                .get(16)
                .ok_or_else(|| MetaError::Corrupt("checksum key without a chunk".into()))?;
            let (values, known_bad) = decode_checksums(&value)?;
            checksums.push(ChunkChecksums {
                le,
                chunk,
                values,
                known_bad,
            });
        }
        Ok(checksums)
    }

    pub fn extents(&self, token: LeaseToken, first_le: u64) -> MetaResult<Vec<(u64, ExtentEntry)>> {
        check_lease(&self.state.lock(), token)?;
        self.read_extents(token.lv, first_le)
    }

    fn read_extents(&self, lv: LvId, first_le: u64) -> MetaResult<Vec<(u64, ExtentEntry)>> {
        let mut map = Vec::new();
        for (key, value) in self.store.scan_prefix(Table::Extents, &id_key(lv))? {
            let (_, le) = split_pair_key(&key)?;
            if le >= first_le {
                map.push((le, decode(&value, "extent entry")?));
            }
        }
        Ok(map)
    }

    /// Where the legs of extent `le` of LV `lv` lie now: (PV, device
    /// offset of the PE, PE bytes) per leg; `None` when the LV is gone or
    /// the extent unmapped. Journal recovery asks, so that it never
    /// settles the records of an extent moved or freed since.
    pub fn extent_legs(&self, lv: LvId, le: u64) -> MetaResult<Option<Vec<(PvId, u64, u64)>>> {
        let Some(bytes) = self.store.get(Table::Extents, &pair_key(lv, le))? else {
            return Ok(None);
        };
        let entry: ExtentEntry = decode(&bytes, "extent entry")?;
        let st = self.state.lock();
        let Some(state) = st.lvs.get(&lv) else {
            return Ok(None);
        };
        let pe_bytes = st.vgs[&state.record.vg].extent_bytes;
        let mut legs = Vec::with_capacity(entry.placement.len());
        for pe in &entry.placement {
            let Some(pv) = st.pvs.get(&pe.pv) else {
                return Ok(None);
            };
            legs.push((pe.pv, pv.data_offset_bytes + pe.pe * pe_bytes, pe_bytes));
        }
        Ok(Some(legs))
    }

    pub fn renew(&self, token: LeaseToken) -> MetaResult<LvRecord> {
        let mut st = self.state.lock();
        check_lease(&st, token)?;
        let expires = Instant::now() + self.lease_duration;
        st.leases.get_mut(&token.lv).expect("checked").expires = expires;
        Ok(st.lvs[&token.lv].record.clone())
    }

    pub fn reserve(&self, token: LeaseToken, extents: usize) -> MetaResult<Vec<Placement>> {
        let mut st = self.state.lock();
        check_lease(&st, token)?;
        let lv = st.lvs[&token.lv].record.clone();
        let pvs = st.allocatable_pvs(lv.vg);
        // Reservations are speculative; as the VG fills, grant fewer so one
        // holder's spares cannot starve another LV: at most 1/16 of what is
        // left, and always at least one.
        let placeable = st.alloc.placeable(&pvs, lv.layout.legs());
        let extents = extents.min((placeable / 16).max(1) as usize);
        let placements: Vec<Placement> = (0..extents)
            .map_while(|_| st.alloc.allocate(&pvs, lv.layout.legs()))
            .collect();
        let changes: Vec<Change> = placements
            .iter()
            .flatten()
            .map(|a| Change::Put(Table::Reservations, pair_key(a.pv, a.pe), encode(&lv.id)))
            .collect();
        if changes.is_empty() {
            return Ok(placements);
        }
        if let Err(e) = self.store.write(changes) {
            for addr in placements.iter().flatten() {
                st.alloc.free(*addr);
            }
            return Err(e);
        }
        for addr in placements.iter().flatten() {
            st.reservations.insert(*addr, lv.id);
        }
        Ok(placements)
    }

    /// Reserves one PE on an allocatable PV of the LV's VG outside
    /// `exclude` (a replacement leg).
    pub fn reserve_pe(&self, token: LeaseToken, exclude: &[PvId]) -> MetaResult<Option<PeAddr>> {
        let mut st = self.state.lock();
        check_lease(&st, token)?;
        let lv = st.lvs[&token.lv].record.clone();
        let candidates: Vec<PvId> = st
            .allocatable_pvs(lv.vg)
            .into_iter()
            .filter(|pv| !exclude.contains(pv))
            .collect();
        let Some(placement) = st.alloc.allocate(&candidates, 1) else {
            return Ok(None);
        };
        let addr = placement[0];
        let change = Change::Put(
            Table::Reservations,
            pair_key(addr.pv, addr.pe),
            encode(&lv.id),
        );
        if let Err(e) = self.store.write(vec![change]) {
            st.alloc.free(addr);
            return Err(e);
        }
        st.reservations.insert(addr, lv.id);
        Ok(Some(addr))
    }

    pub fn commit(&self, token: LeaseToken, batch: impl Into<CommitBatch>) -> MetaResult<()> {
        let batch = batch.into();
        let mut st = self.state.lock();
        check_lease(&st, token)?;
        let lv = st.lvs[&token.lv].record.clone();
        let le_bytes = st.le_bytes(&lv);
        let extents = extents_for(lv.size_bytes, le_bytes);
        let invalid =
            |why: String| MetaError::InvalidArgument(format!("commit for LV id {}: {why}", lv.id));
        let mut changes = Vec::new();
        let mut claimed: BTreeSet<PeAddr> = BTreeSet::new();
        let mut freed: Vec<PeAddr> = Vec::new();
        // (le, placement before, placement after) for the leg index.
        let mut moved: Vec<(u64, Vec<PeAddr>, Vec<PeAddr>)> = Vec::new();
        let mut mapped_delta: i64 = 0;
        let mut mapped_after: BTreeMap<u64, bool> = BTreeMap::new();
        for change in batch.extents {
            if change.le >= extents || mapped_after.contains_key(&change.le) {
                return Err(invalid(format!(
                    "extent {} is out of range or repeated",
                    change.le
                )));
            }
            let key = pair_key(lv.id, change.le);
            let old: Option<ExtentEntry> = match self.store.get(Table::Extents, &key)? {
                Some(bytes) => Some(decode(&bytes, "extent entry")?),
                None => None,
            };
            let old_pes: Vec<PeAddr> = old
                .as_ref()
                .map(|e| e.placement.clone())
                .unwrap_or_default();
            mapped_after.insert(change.le, change.entry.is_some());
            match &change.entry {
                None if !lv.thin => {
                    return Err(invalid("extents of a thick LV cannot be unmapped".into()))
                }
                None => {
                    if old.is_some() {
                        mapped_delta -= 1;
                        changes.push(Change::Delete(Table::Extents, key));
                        for (key, _) in self
                            .store
                            .scan_prefix(Table::Checksums, &pair_key(lv.id, change.le))?
                        {
                            changes.push(Change::Delete(Table::Checksums, key));
                        }
                    }
                    freed.extend(&old_pes);
                    moved.push((change.le, old_pes, Vec::new()));
                }
                Some(entry) => {
                    let distinct: BTreeSet<u64> = entry.placement.iter().map(|a| a.pv).collect();
                    if entry.placement.len() != lv.layout.legs()
                        || distinct.len() != entry.placement.len()
                    {
                        return Err(invalid(format!(
                            "extent {} needs {} PEs on distinct PVs",
                            change.le,
                            lv.layout.legs()
                        )));
                    }
                    for addr in &entry.placement {
                        if old_pes.contains(addr) {
                            continue;
                        }
                        if st.reservations.get(addr) != Some(&lv.id) || !claimed.insert(*addr) {
                            return Err(invalid(format!(
                                "PE {} of PV id {} was not reserved for it",
                                addr.pe, addr.pv
                            )));
                        }
                        changes.push(unreserve(addr));
                    }
                    freed.extend(old_pes.iter().filter(|a| !entry.placement.contains(a)));
                    if old.is_none() {
                        mapped_delta += 1;
                    }
                    changes.push(Change::Put(Table::Extents, key, encode(entry)));
                    moved.push((change.le, old_pes, entry.placement.clone()));
                }
            }
        }
        let blocks_per_chunk = (le_bytes / CHUNKS_PER_EXTENT / BLOCK_BYTES) as usize;
        for sums in batch.checksums {
            let mapped = match mapped_after.get(&sums.le) {
                Some(mapped) => *mapped,
                None => {
                    sums.le < extents
                        && self
                            .store
                            .get(Table::Extents, &pair_key(lv.id, sums.le))?
                            .is_some()
                }
            };
            if !mapped
                || u64::from(sums.chunk) >= CHUNKS_PER_EXTENT
                || sums.values.len() != blocks_per_chunk
                || sums
                    .known_bad
                    .iter()
                    .any(|&b| b as usize >= blocks_per_chunk)
            {
                return Err(invalid(format!(
                    "checksums for chunk {} of extent {} do not fit a mapped extent",
                    sums.chunk, sums.le
                )));
            }
            changes.push(Change::Put(
                Table::Checksums,
                checksum_key(lv.id, sums.le, sums.chunk),
                encode_checksums(&sums.values, &sums.known_bad),
            ));
        }
        let returned: Vec<PeAddr> = batch
            .returned
            .into_iter()
            .filter(|a| st.reservations.get(a) == Some(&lv.id) && !claimed.contains(a))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        changes.extend(returned.iter().map(unreserve));
        if changes.is_empty() {
            return Ok(());
        }
        self.store.write(changes)?;
        st.return_reservations(&returned);
        for addr in claimed {
            st.reservations.remove(&addr);
        }
        for addr in freed {
            st.alloc.free(addr);
        }
        for (le, before, after) in moved {
            st.unindex_placement(lv.id, le, &before);
            st.index_placement(lv.id, le, &after);
        }
        let state = st.lvs.get_mut(&lv.id).expect("LV exists");
        state.mapped_extents = state
            .mapped_extents
            .checked_add_signed(mapped_delta)
            .expect("mapped count stays positive");
        Ok(())
    }

    /// Returns unused reservations and ends the lease. With `clean` false
    /// the LV stays marked open, so the next grant is unclean again: its
    /// holder stopped before every extent written ahead of the last unclean
    /// stop was resynced.
    pub fn release(&self, token: LeaseToken, unused: Vec<PeAddr>, clean: bool) -> MetaResult<()> {
        let mut st = self.state.lock();
        check_lease(&st, token)?;
        // A set: a PE named twice is returned once.
        let returned: Vec<PeAddr> = unused
            .into_iter()
            .filter(|a| st.reservations.get(a) == Some(&token.lv))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut changes: Vec<Change> = returned.iter().map(unreserve).collect();
        if clean {
            changes.push(Change::Delete(Table::Open, id_key(token.lv)));
        }
        self.store.write(changes)?;
        st.return_reservations(&returned);
        st.leases.remove(&token.lv);
        Ok(())
    }

    /// Returns every reservation to the free pool. Only safe when no data
    /// server can still hold a lease: the embedded server calls it at start.
    pub fn reclaim_all_reservations(&self) -> MetaResult<usize> {
        let mut st = self.state.lock();
        let all: Vec<PeAddr> = st.reservations.keys().copied().collect();
        if all.is_empty() {
            return Ok(0);
        }
        self.store.write(all.iter().map(unreserve).collect())?;
        st.return_reservations(&all);
        Ok(all.len())
    }
}

fn check_lease(st: &State, token: LeaseToken) -> MetaResult<()> {
    let current = st.lvs.get(&token.lv).map(|lv| lv.record.epoch);
    match (st.leases.get(&token.lv), current) {
        (Some(lease), Some(epoch)) if lease.epoch == token.epoch && epoch == token.epoch => {
            if lease.expires > Instant::now() {
                Ok(())
            } else {
                Err(MetaError::Fenced(format!(
                    "lease on LV id {} (epoch {}) expired",
                    token.lv, token.epoch
                )))
            }
        }
        _ => Err(MetaError::Fenced(format!(
            "lease on LV id {} (epoch {}) is not current",
            token.lv, token.epoch
        ))),
    }
}
