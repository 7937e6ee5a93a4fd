//! Control-path operations: the LVM verbs. Each validates everything first,
//! then writes one batch, then updates memory; a refused operation changes
//! nothing.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::{extents_for, unreserve, LvState, Service, State};
use crate::error::{MetaError, MetaResult};
use crate::model::{
    encode, id_key, pair_key, validate_name, ExtentEntry, Layout, LvRecord, Placement, PvRecord,
    VgRecord, MAX_EXTENT_BYTES, MIN_EXTENT_BYTES, PV_DATA_OFFSET_BYTES,
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
        if size_bytes < PV_DATA_OFFSET_BYTES + MIN_EXTENT_BYTES {
            return Err(MetaError::InvalidArgument(format!(
                "\"{}\" is too small for a physical volume ({size_bytes} bytes; at least {} needed)",
                path.display(),
                PV_DATA_OFFSET_BYTES + MIN_EXTENT_BYTES
            )));
        }
        let pv = PvRecord {
            id: st.take_id(),
            uuid,
            path: path.to_path_buf(),
            size_bytes,
            data_offset_bytes: PV_DATA_OFFSET_BYTES,
            vg: None,
            pe_count: 0,
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

    pub fn remove_vg(&self, name: &str) -> MetaResult<VgRecord> {
        let mut st = self.state.lock();
        let vg = st.vg_by_name(name)?.clone();
        let lv_count = st.lvs.values().filter(|lv| lv.record.vg == vg.id).count();
        if lv_count > 0 {
            return Err(MetaError::Busy(format!(
                "volume group \"{name}\" still contains {lv_count} logical volume(s); remove them first"
            )));
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
        let mut changes = vec![Change::Delete(Table::Vgs, id_key(vg.id))];
        changes.extend(
            freed
                .iter()
                .map(|pv| Change::Put(Table::Pvs, id_key(pv.id), encode(pv))),
        );
        self.store.write(changes)?;
        for pv in freed {
            st.alloc.remove_pv(pv.id);
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
    ) -> MetaResult<LvRecord> {
        validate_name("logical volume", name)?;
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
        let extents = extents_for(size_bytes, vg.extent_bytes);
        let lv = LvRecord {
            id: st.next_id,
            uuid: Uuid::new_v4(),
            vg: vg.id,
            name: name.to_string(),
            size_bytes: extents * vg.extent_bytes,
            thin,
            layout: Layout::Linear,
            epoch: 0,
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
        let old_extents = extents_for(lv.size_bytes, vg.extent_bytes);
        let new_extents = extents_for(new_size_bytes, vg.extent_bytes);
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
            size_bytes: new_extents * vg.extent_bytes,
            ..lv
        };
        let mut changes = vec![Change::Put(Table::Lvs, id_key(grown.id), encode(&grown))];
        changes.extend(extent_puts(grown.id, old_extents, &placements));
        if let Err(e) = self.store.write(changes) {
            free_all(&mut st, &placements);
            return Err(e);
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
        if let Some(lease) = st.live_lease(lv.id) {
            return Err(MetaError::Busy(format!(
                "logical volume \"{vg_name}/{name}\" is in use by {}",
                lease.holder
            )));
        }
        let extents = self.store.scan_prefix(Table::Extents, &id_key(lv.id))?;
        let reserved = st.reservations_of(lv.id);
        let mut changes = vec![Change::Delete(Table::Lvs, id_key(lv.id))];
        let mut mapped = Vec::new();
        for (key, value) in extents {
            let entry: ExtentEntry = crate::model::decode(&value, "extent entry")?;
            mapped.extend(entry.placement);
            changes.push(Change::Delete(Table::Extents, key));
        }
        changes.extend(reserved.iter().map(unreserve));
        self.store.write(changes)?;
        st.return_reservations(&reserved);
        for addr in mapped {
            st.alloc.free(addr);
        }
        st.lvs.remove(&lv.id);
        st.leases.remove(&lv.id);
        Ok(lv)
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
    let pvs = st.vg_pvs(vg.id);
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
