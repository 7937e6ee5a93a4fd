//! Control-path operations: the LVM verbs. Each validates everything first,
//! then writes one batch, then updates memory; a refused operation changes
//! nothing.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{extents_for, unreserve, LvState, Service, State};
use crate::error::{MetaError, MetaResult};
use crate::layout::Layout;
use crate::model::{
    encode, id_key, pair_key, pv_data_offset, validate_name, ExtentEntry, FaultPolicy, LvOptions,
    LvRecord, Placement, PvId, PvRecord, VgRecord, MAX_EXTENT_BYTES, MIN_EXTENT_BYTES,
};
use crate::store::{Change, Table};

impl Service {
    /// Records a labelled device as a PV (the caller wrote the label).
    pub fn create_pv(&self, path: &Path, uuid: Uuid, size_bytes: u64) -> MetaResult<PvRecord> {
        let mut st = self.state.lock();
        if st.pvs.values().any(|pv| pv.path == path) {
            return Err(MetaError::AlreadyExists(format!(
                "physical volume \"{}\" already exists",
                path.display()
            )));
        }
        let data_offset_bytes = pv_data_offset(size_bytes);
        if size_bytes < data_offset_bytes + MIN_EXTENT_BYTES {
            return Err(MetaError::InvalidArgument(format!(
                "\"{}\" is too small for a physical volume ({size_bytes} bytes; at least {} needed)",
                path.display(),
                data_offset_bytes + MIN_EXTENT_BYTES
            )));
        }
        let pv = PvRecord {
            id: st.take_id(),
            uuid,
            path: path.to_path_buf(),
            size_bytes,
            data_offset_bytes,
            vg: None,
            pe_count: 0,
            failed: None,
        };
        let result = self.store.write(vec![
            Change::Put(Table::Pvs, id_key(pv.id), encode(&pv)),
            st.next_id_change(),
        ]);
        if let Err(e) = result {
            st.next_id -= 1;
            return Err(e);
        }
        st.pvs.insert(pv.id, pv.clone());
        Ok(pv)
    }

    pub fn remove_pv(&self, path: &Path) -> MetaResult<PvRecord> {
        let mut st = self.state.lock();
        let pv = st.pv_by_path(path)?.clone();
        if let Some(vg) = pv.vg {
            return Err(MetaError::Busy(format!(
                "physical volume \"{}\" belongs to volume group \"{}\"; remove it with vgreduce first",
                path.display(),
                st.vgs[&vg].name
            )));
        }
        self.store
            .write(vec![Change::Delete(Table::Pvs, id_key(pv.id))])?;
        st.pvs.remove(&pv.id);
        Ok(pv)
    }

    pub fn create_vg(
        &self,
        name: &str,
        pv_paths: &[PathBuf],
        extent_bytes: u64,
    ) -> MetaResult<VgRecord> {
        validate_name("volume group", name)?;
        if !extent_bytes.is_power_of_two()
            || !(MIN_EXTENT_BYTES..=MAX_EXTENT_BYTES).contains(&extent_bytes)
        {
            return Err(MetaError::InvalidArgument(format!(
                "extent size {extent_bytes} must be a power of two between {} KiB and {} MiB",
                MIN_EXTENT_BYTES >> 10,
                MAX_EXTENT_BYTES >> 20
            )));
        }
        let mut st = self.state.lock();
        if st.vgs.values().any(|vg| vg.name == name) {
            return Err(MetaError::AlreadyExists(format!(
                "volume group \"{name}\" already exists"
            )));
        }
        if pv_paths.is_empty() {
            return Err(MetaError::InvalidArgument(
                "a volume group needs at least one physical volume".into(),
            ));
        }
        let vg = VgRecord {
            id: st.next_id,
            uuid: Uuid::new_v4(),
            name: name.to_string(),
            extent_bytes,
            fault_policy: FaultPolicy::default(),
        };
        let joining = joining_pvs(&st, pv_paths, &vg)?;
        st.next_id += 1;
        let mut changes = vec![
            Change::Put(Table::Vgs, id_key(vg.id), encode(&vg)),
            st.next_id_change(),
        ];
        changes.extend(
            joining
                .iter()
                .map(|pv| Change::Put(Table::Pvs, id_key(pv.id), encode(pv))),
        );
        if let Err(e) = self.store.write(changes) {
            st.next_id -= 1;
            return Err(e);
        }
        st.vgs.insert(vg.id, vg.clone());
        add_pvs(&mut st, joining);
        Ok(vg)
    }

    pub fn extend_vg(&self, name: &str, pv_paths: &[PathBuf]) -> MetaResult<VgRecord> {
        let mut st = self.state.lock();
        let vg = st.vg_by_name(name)?.clone();
        if pv_paths.is_empty() {
            return Err(MetaError::InvalidArgument(
                "no physical volumes given".into(),
            ));
        }
        let joining = joining_pvs(&st, pv_paths, &vg)?;
        self.store.write(
            joining
                .iter()
                .map(|pv| Change::Put(Table::Pvs, id_key(pv.id), encode(pv)))
                .collect(),
        )?;
        add_pvs(&mut st, joining);
        Ok(vg)
    }

    /// Removes unused PVs from a VG (LVM's `vgreduce VG PV...`).
    pub fn reduce_vg(&self, name: &str, pv_paths: &[PathBuf]) -> MetaResult<VgRecord> {
        let mut st = self.state.lock();
        let vg = st.vg_by_name(name)?.clone();
        let mut leaving = Vec::new();
        for path in pv_paths {
            let pv = st.pv_by_path(path)?.clone();
            if pv.vg != Some(vg.id) {
                return Err(MetaError::InvalidArgument(format!(
                    "physical volume \"{}\" is not in volume group \"{name}\"",
                    path.display()
                )));
            }
            if st.alloc.free_pes(pv.id) != pv.pe_count {
                return Err(MetaError::Busy(format!(
                    "physical volume \"{}\" still holds allocated extents",
                    path.display()
                )));
            }
            leaving.push(pv);
        }
        if leaving.len() >= st.vg_pvs(vg.id).len() {
            return Err(MetaError::InvalidArgument(format!(
                "cannot remove the last physical volume of \"{name}\"; use vgremove"
            )));
        }
        let updated: Vec<PvRecord> = leaving
            .into_iter()
            .map(|pv| PvRecord {
                vg: None,
                pe_count: 0,
                ..pv
            })
            .collect();
        self.store.write(
            updated
                .iter()
                .map(|pv| Change::Put(Table::Pvs, id_key(pv.id), encode(pv)))
                .collect(),
        )?;
        for pv in updated {
            st.alloc.remove_pv(pv.id);
            st.pvs.insert(pv.id, pv);
        }
        Ok(vg)
    }

    /// Removes a VG; with `force`, its LVs too, in the same batch (refused
    /// as a whole if any of them is open).
    pub fn remove_vg(&self, name: &str, force: bool) -> MetaResult<VgRecord> {
        let mut st = self.state.lock();
        let vg = st.vg_by_name(name)?.clone();
        let lvs: Vec<LvRecord> = st
            .lvs
            .values()
            .map(|s| s.record.clone())
            .filter(|lv| lv.vg == vg.id)
            .collect();
        if !lvs.is_empty() && !force {
            return Err(MetaError::Busy(format!(
                "volume group \"{name}\" still contains {} logical volume(s); remove them first",
                lvs.len()
            )));
        }
        let mut changes = vec![Change::Delete(Table::Vgs, id_key(vg.id))];
        let mut removals = Vec::new();
        for lv in &lvs {
            let removal = self.lv_removal(&st, lv, name)?;
            changes.extend(removal.changes.iter().cloned());
            removals.push(removal);
        }
        let freed: Vec<PvRecord> = st
            .pvs
            .values()
            .filter(|pv| pv.vg == Some(vg.id))
            .map(|pv| PvRecord {
                vg: None,
                pe_count: 0,
                ..pv.clone()
            })
            .collect();
        changes.extend(
            freed
                .iter()
                .map(|pv| Change::Put(Table::Pvs, id_key(pv.id), encode(pv))),
        );
        self.store.write(changes)?;
        for (lv, removal) in lvs.iter().zip(removals) {
            forget_lv(&mut st, lv, removal);
        }
        for pv in freed {
            st.alloc.remove_pv(pv.id);
            st.legs_on_pv.remove(&pv.id);
            st.pvs.insert(pv.id, pv);
        }
        st.vgs.remove(&vg.id);
        Ok(vg)
    }

    /// Creates an LV of `size_bytes` (rounded up to whole extents). A thick
    /// LV gets all its extents now; a thin one on first write.
    pub fn create_lv(
        &self,
        vg_name: &str,
        name: &str,
        size_bytes: u64,
        thin: bool,
        layout: Layout,
    ) -> MetaResult<LvRecord> {
        self.create_lv_with(
            vg_name,
            name,
            size_bytes,
            thin,
            layout,
            LvOptions::default(),
        )
    }

    /// [`create_lv`](Self::create_lv) with options: a maximum recovery
    /// rate (bytes per second; 0: unlimited), which only a redundant layout
    /// takes, and integrity, which only a mirror takes.
    pub fn create_lv_with(
        &self,
        vg_name: &str,
        name: &str,
        size_bytes: u64,
        thin: bool,
        layout: Layout,
        options: LvOptions,
    ) -> MetaResult<LvRecord> {
        validate_name("logical volume", name)?;
        let lv_name = format!("{vg_name}/{name}");
        check_recovery_rate(&lv_name, layout, options.max_recovery_rate)?;
        check_integrity(&lv_name, layout, options.raid_integrity)?;
        let mut st = self.state.lock();
        let vg = st.vg_by_name(vg_name)?.clone();
        if st
            .lvs
            .values()
            .any(|lv| lv.record.vg == vg.id && lv.record.name == name)
        {
            return Err(MetaError::AlreadyExists(format!(
                "logical volume \"{vg_name}/{name}\" already exists"
            )));
        }
        if size_bytes == 0 {
            return Err(MetaError::InvalidArgument(
                "logical volume size must be greater than zero".into(),
            ));
        }
        layout.validate(vg.extent_bytes)?;
        let usable = st.allocatable_pvs(vg.id).len();
        if usable < layout.legs() {
            return Err(MetaError::InvalidArgument(format!(
                "{} needs {} physical volumes for each extent, but volume group \"{vg_name}\" has {usable} usable",
                layout.describe(),
                layout.legs()
            )));
        }
        let le_bytes = layout.extent_bytes(vg.extent_bytes);
        let extents = extents_for(size_bytes, le_bytes);
        let lv = LvRecord {
            id: st.next_id,
            uuid: Uuid::new_v4(),
            vg: vg.id,
            name: name.to_string(),
            size_bytes: extents * le_bytes,
            thin,
            layout,
            epoch: 0,
            max_recovery_rate: options.max_recovery_rate,
            raid_integrity: options.raid_integrity,
        };
        let placements = if thin {
            Vec::new()
        } else {
            allocate_all(&mut st, &vg, lv.layout, extents, vg_name)?
        };
        st.next_id += 1;
        let mut changes = vec![
            Change::Put(Table::Lvs, id_key(lv.id), encode(&lv)),
            st.next_id_change(),
        ];
        changes.extend(extent_puts(lv.id, 0, &placements));
        if let Err(e) = self.store.write(changes) {
            st.next_id -= 1;
            free_all(&mut st, &placements);
            return Err(e);
        }
        for (le, placement) in placements.iter().enumerate() {
            st.index_placement(lv.id, le as u64, placement);
        }
        st.lvs.insert(
            lv.id,
            LvState {
                record: lv.clone(),
                mapped_extents: placements.len() as u64,
            },
        );
        Ok(lv)
    }

    /// Grows an LV to `new_size_bytes` (rounded up to whole extents), live
    /// or not. Shrinking is refused.
    pub fn extend_lv(
        &self,
        vg_name: &str,
        name: &str,
        new_size_bytes: u64,
    ) -> MetaResult<LvRecord> {
        let mut st = self.state.lock();
        let vg = st.vg_by_name(vg_name)?.clone();
        let lv = st.lv_by_name(vg_name, name)?.record.clone();
        let le_bytes = st.le_bytes(&lv);
        let old_extents = extents_for(lv.size_bytes, le_bytes);
        let new_extents = extents_for(new_size_bytes, le_bytes);
        if new_extents <= old_extents {
            return Err(MetaError::InvalidArgument(format!(
                "new size ({new_size_bytes} bytes, {new_extents} extents) is not larger than the current size ({} bytes)",
                lv.size_bytes
            )));
        }
        let placements = if lv.thin {
            Vec::new()
        } else {
            allocate_all(&mut st, &vg, lv.layout, new_extents - old_extents, vg_name)?
        };
        let grown = LvRecord {
            size_bytes: new_extents * le_bytes,
            ..lv
        };
        let mut changes = vec![Change::Put(Table::Lvs, id_key(grown.id), encode(&grown))];
        changes.extend(extent_puts(grown.id, old_extents, &placements));
        if let Err(e) = self.store.write(changes) {
            free_all(&mut st, &placements);
            return Err(e);
        }
        for (i, placement) in placements.iter().enumerate() {
            st.index_placement(grown.id, old_extents + i as u64, placement);
        }
        let state = st.lvs.get_mut(&grown.id).expect("LV exists");
        state.record = grown.clone();
        state.mapped_extents += placements.len() as u64;
        Ok(grown)
    }

    /// Removes an LV and frees its extents. Refused while a lease is held.
    pub fn remove_lv(&self, vg_name: &str, name: &str) -> MetaResult<LvRecord> {
        let mut st = self.state.lock();
        let lv = st.lv_by_name(vg_name, name)?.record.clone();
        let removal = self.lv_removal(&st, &lv, vg_name)?;
        self.store.write(removal.changes.clone())?;
        forget_lv(&mut st, &lv, removal);
        Ok(lv)
    }

    /// What removing `lv` takes: refused while a lease is held.
    fn lv_removal(&self, st: &State, lv: &LvRecord, vg_name: &str) -> MetaResult<LvRemoval> {
        if let Some(lease) = st.live_lease(lv.id) {
            return Err(MetaError::Busy(format!(
                "logical volume \"{vg_name}/{}\" is in use by {}",
                lv.name, lease.holder
            )));
        }
        let reserved = st.reservations_of(lv.id);
        let mut changes = vec![
            Change::Delete(Table::Lvs, id_key(lv.id)),
            Change::Delete(Table::Open, id_key(lv.id)),
        ];
        let mut mapped = Vec::new();
        for (key, value) in self.store.scan_prefix(Table::Extents, &id_key(lv.id))? {
            let (_, le) = crate::model::split_pair_key(&key)?;
            let entry: ExtentEntry = crate::model::decode(&value, "extent entry")?;
            mapped.push((le, entry.placement));
            changes.push(Change::Delete(Table::Extents, key));
        }
        for (key, _) in self.store.scan_prefix(Table::Checksums, &id_key(lv.id))? {
            changes.push(Change::Delete(Table::Checksums, key));
        }
        changes.extend(reserved.iter().map(unreserve));
        Ok(LvRemoval {
            changes,
            mapped,
            reserved,
        })
    }

    /// Marks a PV failed, durably: nothing new is allocated on it and the
    /// LVs with extents on it report degraded. Idempotent.
    pub fn set_pv_failed(&self, pv: PvId, reason: &str) -> MetaResult<()> {
        let mut st = self.state.lock();
        let record = st
            .pvs
            .get(&pv)
            .ok_or_else(|| MetaError::NotFound(format!("physical volume id {pv} not found")))?;
        if record.failed.is_some() {
            return Ok(());
        }
        let failed = PvRecord {
            failed: Some(reason.to_string()),
            ..record.clone()
        };
        self.store
            .write(vec![Change::Put(Table::Pvs, id_key(pv), encode(&failed))])?;
        tracing::warn!("PV {} failed: {reason}", failed.path.display());
        st.pvs.insert(pv, failed);
        Ok(())
    }

    /// Stops (or resumes) placing new extents on a PV, while pvmove
    /// empties it.
    pub fn set_evacuating(&self, pv: PvId, evacuating: bool) -> MetaResult<()> {
        let mut st = self.state.lock();
        if !st.pvs.contains_key(&pv) {
            return Err(MetaError::NotFound(format!(
                "physical volume id {pv} not found"
            )));
        }
        if evacuating {
            st.evacuating.insert(pv);
        } else {
            st.evacuating.remove(&pv);
        }
        Ok(())
    }

    /// Sets how fast repair, pvmove and scrub may copy or check each leg
    /// of a redundant LV (bytes per second; 0: unlimited). Takes effect
    /// for the extents a running job starts after the change.
    pub fn set_max_recovery_rate(
        &self,
        vg_name: &str,
        name: &str,
        max_recovery_rate: u64,
    ) -> MetaResult<LvRecord> {
        let mut st = self.state.lock();
        let record = st.lv_by_name(vg_name, name)?.record.clone();
        check_recovery_rate(
            &format!("{vg_name}/{name}"),
            record.layout,
            max_recovery_rate,
        )?;
        let changed = LvRecord {
            max_recovery_rate,
            ..record
        };
        self.store.write(vec![Change::Put(
            Table::Lvs,
            id_key(changed.id),
            encode(&changed),
        )])?;
        st.lvs.get_mut(&changed.id).expect("LV exists").record = changed.clone();
        Ok(changed)
    }

    /// Sets what happens when a PV of the VG fails.
    pub fn set_fault_policy(&self, vg_name: &str, policy: FaultPolicy) -> MetaResult<VgRecord> {
        let mut st = self.state.lock();
        let vg = VgRecord {
            fault_policy: policy,
            ..st.vg_by_name(vg_name)?.clone()
        };
        self.store
            .write(vec![Change::Put(Table::Vgs, id_key(vg.id), encode(&vg))])?;
        st.vgs.insert(vg.id, vg.clone());
        Ok(vg)
    }

    /// Drops failed PVs from a VG (`vgreduce --removemissing`). Refused
    /// while any extent still has a leg on one of them.
    pub fn remove_missing(&self, vg_name: &str) -> MetaResult<Vec<PvRecord>> {
        let mut st = self.state.lock();
        let vg = st.vg_by_name(vg_name)?.clone();
        let failed: Vec<PvRecord> = st
            .pvs
            .values()
            .filter(|pv| pv.vg == Some(vg.id) && pv.failed.is_some())
            .cloned()
            .collect();
        for pv in &failed {
            let users = st.legs_on_pv.get(&pv.id).map_or(0, |set| set.len());
            if users > 0 || st.reservations.keys().any(|a| a.pv == pv.id) {
                return Err(MetaError::Busy(format!(
                    "failed physical volume \"{}\" still holds {users} extent legs; run lvconvert --repair on its logical volumes first",
                    pv.path.display()
                )));
            }
        }
        let removed: Vec<PvRecord> = failed
            .into_iter()
            .map(|pv| PvRecord {
                vg: None,
                pe_count: 0,
                ..pv
            })
            .collect();
        if !removed.is_empty() {
            self.store.write(
                removed
                    .iter()
                    .map(|pv| Change::Put(Table::Pvs, id_key(pv.id), encode(pv)))
                    .collect(),
            )?;
        }
        for pv in &removed {
            st.alloc.remove_pv(pv.id);
            st.legs_on_pv.remove(&pv.id);
            st.pvs.insert(pv.id, pv.clone());
        }
        Ok(removed)
    }

    /// The LVs (vg name, lv name) with a leg on `pv`.
    pub fn lvs_on_pv(&self, pv: PvId) -> Vec<(String, String)> {
        let st = self.state.lock();
        let mut lvs: Vec<(String, String)> = st
            .legs_on_pv
            .get(&pv)
            .into_iter()
            .flatten()
            .map(|(lv, _)| *lv)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|lv| st.lvs.get(&lv))
            .map(|lv| (st.vgs[&lv.record.vg].name.clone(), lv.record.name.clone()))
            .collect();
        lvs.dedup();
        lvs
    }

    /// The LV and its VG, by name.
    pub fn lookup_lv(&self, vg_name: &str, name: &str) -> MetaResult<(LvRecord, VgRecord)> {
        let st = self.state.lock();
        let lv = st.lv_by_name(vg_name, name)?.record.clone();
        Ok((lv, st.vg_by_name(vg_name)?.clone()))
    }

    /// Every PV record (the server opens them all at start).
    pub fn pv_records(&self) -> Vec<PvRecord> {
        self.state.lock().pvs.values().cloned().collect()
    }
}

/// The store changes and in-memory effects of removing one LV.
struct LvRemoval {
    changes: Vec<Change>,
    mapped: Vec<(u64, Placement)>,
    reserved: Vec<crate::model::PeAddr>,
}

/// Applies a durable LV removal to memory.
fn forget_lv(st: &mut State, lv: &LvRecord, removal: LvRemoval) {
    st.return_reservations(&removal.reserved);
    for (le, placement) in removal.mapped {
        st.unindex_placement(lv.id, le, &placement);
        for addr in placement {
            st.alloc.free(addr);
        }
    }
    st.lvs.remove(&lv.id);
    st.leases.remove(&lv.id);
}

/// Checks that every path is a PV outside any VG, and returns the records
/// as they will be once they join `vg`.
fn joining_pvs(st: &State, pv_paths: &[PathBuf], vg: &VgRecord) -> MetaResult<Vec<PvRecord>> {
    let mut joining: Vec<PvRecord> = Vec::new();
    for path in pv_paths {
        let pv = st.pv_by_path(path)?;
        if let Some(other) = pv.vg {
            return Err(MetaError::Busy(format!(
                "physical volume \"{}\" already belongs to volume group \"{}\"",
                path.display(),
                st.vgs[&other].name
            )));
        }
        if joining.iter().any(|j| j.id == pv.id) {
            return Err(MetaError::InvalidArgument(format!(
                "physical volume \"{}\" is listed twice",
                path.display()
            )));
        }
        let pe_count = (pv.size_bytes - pv.data_offset_bytes) / vg.extent_bytes;
        if pe_count == 0 {
            return Err(MetaError::InvalidArgument(format!(
                "physical volume \"{}\" is smaller than one {}-byte extent",
                path.display(),
                vg.extent_bytes
            )));
        }
        joining.push(PvRecord {
            vg: Some(vg.id),
            pe_count,
            ..pv.clone()
        });
    }
    Ok(joining)
}

fn add_pvs(st: &mut State, joining: Vec<PvRecord>) {
    for pv in joining {
        st.alloc.add_pv(pv.id, pv.pe_count);
        st.pvs.insert(pv.id, pv);
    }
}

/// Allocates `extents` placements or none at all.
fn allocate_all(
    st: &mut State,
    vg: &VgRecord,
    layout: Layout,
    extents: u64,
    vg_name: &str,
) -> MetaResult<Vec<Placement>> {
    let pvs = st.allocatable_pvs(vg.id);
    let placeable = st.alloc.placeable(&pvs, layout.legs());
    if placeable < extents {
        return Err(MetaError::NoSpace(format!(
            "volume group \"{vg_name}\" has insufficient free space ({placeable} extents): {extents} required"
        )));
    }
    Ok((0..extents)
        .map(|_| {
            st.alloc
                .allocate(&pvs, layout.legs())
                .expect("placeable said there is room")
        })
        .collect())
}

fn free_all(st: &mut State, placements: &[Placement]) {
    for addr in placements.iter().flatten() {
        st.alloc.free(*addr);
    }
}

fn extent_puts(
    lv: u64,
    first_le: u64,
    placements: &[Placement],
) -> impl Iterator<Item = Change> + '_ {
    placements.iter().enumerate().map(move |(i, placement)| {
        let entry = ExtentEntry {
            placement: placement.clone(),
            written: 0,
        };
        Change::Put(
            Table::Extents,
            pair_key(lv, first_le + i as u64),
            encode(&entry),
        )
    })
}

/// A recovery rate only means something where there is redundancy to
/// rebuild or check (LVM refuses it on non-RAID LVs too).
/// Integrity records the checksums of mirror writes; parity layouts have
/// their stripe journal, and a single copy has nothing to tell apart.
fn check_integrity(lv: &str, layout: Layout, integrity: bool) -> MetaResult<()> {
    let mirror = match layout {
        Layout::Raid1 { copies } | Layout::Raid10 { copies, .. } => copies >= 2,
        _ => false,
    };
    if integrity && !mirror {
        return Err(MetaError::InvalidArgument(format!(
            "{lv} is {}: --raidintegrity needs a mirror (raid1, raid10)",
            layout.describe()
        )));
    }
    Ok(())
}

fn check_recovery_rate(lv: &str, layout: Layout, rate: u64) -> MetaResult<()> {
    if rate > 0 && !layout.is_redundant() {
        return Err(MetaError::InvalidArgument(format!(
            "{lv} is {}: a recovery rate needs a redundant layout (raid1, raid5, raid10, ec)",
            layout.describe()
        )));
    }
    Ok(())
}
