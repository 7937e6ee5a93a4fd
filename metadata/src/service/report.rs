//! Reports for `pvs`, `vgs` and `lvs`: records plus derived usage.

use serde::{Deserialize, Serialize};

use super::{extents_for, Service};
use crate::layout::Layout;
use crate::model::{LvRecord, PvRecord, VgRecord};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PvReport {
    pub record: PvRecord,
    pub vg_name: Option<String>,
    pub pe_count: u64,
    /// PEs mapped or reserved.
    pub pe_alloc: u64,
    pub extent_bytes: Option<u64>,
    /// New extents may be placed on it (in a VG, not failed, not being
    /// emptied by pvmove).
    pub allocatable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VgReport {
    pub record: VgRecord,
    pub pv_count: usize,
    pub lv_count: usize,
    pub pe_count: u64,
    pub pe_free: u64,
    /// Sum of LV sizes, which may exceed the VG's size (thin overcommit).
    pub lv_size_bytes: u64,
}

impl VgReport {
    pub fn size_bytes(&self) -> u64 {
        self.pe_count * self.record.extent_bytes
    }

    pub fn free_bytes(&self) -> u64 {
        self.pe_free * self.record.extent_bytes
    }

    /// How full the pool is: allocated extents over all extents.
    pub fn data_percent(&self) -> f64 {
        percent(self.pe_count - self.pe_free, self.pe_count)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LvReport {
    pub record: LvRecord,
    pub vg_name: String,
    /// User bytes per logical extent (PE size × data legs).
    pub extent_bytes: u64,
    pub extent_count: u64,
    pub mapped_extents: u64,
    /// A data server holds the lease (the LV is open).
    pub open_by: Option<String>,
    /// Extents with at least one leg on a failed PV (redundancy reduced).
    pub degraded_extents: u64,
    /// Extents with more failed legs than the layout tolerates (data lost).
    pub lost_extents: u64,
}

impl LvReport {
    /// Share of the LV's extents that are allocated (100 for thick LVs).
    pub fn data_percent(&self) -> f64 {
        percent(self.mapped_extents, self.extent_count)
    }

    pub fn layout(&self) -> Layout {
        self.record.layout
    }

    /// LVM's `lv_health_status`: "" when healthy, "partial" when data is
    /// lost, "degraded" when redundancy is reduced.
    pub fn health(&self) -> &'static str {
        if self.lost_extents > 0 {
            "partial"
        } else if self.degraded_extents > 0 {
            "degraded"
        } else {
            ""
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Service {
    pub fn pv_reports(&self) -> Vec<PvReport> {
        let st = self.state.lock();
        st.pvs
            .values()
            .map(|pv| {
                let vg = pv.vg.map(|id| &st.vgs[&id]);
                PvReport {
                    record: pv.clone(),
                    vg_name: vg.map(|v| v.name.clone()),
                    pe_count: pv.pe_count,
                    pe_alloc: pv.pe_count - st.alloc.free_pes(pv.id),
                    extent_bytes: vg.map(|v| v.extent_bytes),
                    allocatable: vg.is_some() && st.is_allocatable(pv),
                }
            })
            .collect()
    }

    pub fn vg_reports(&self) -> Vec<VgReport> {
        let st = self.state.lock();
        st.vgs
            .values()
            .map(|vg| {
                let pvs = st.vg_pvs(vg.id);
                let lvs: Vec<&LvRecord> = st
                    .lvs
                    .values()
                    .map(|s| &s.record)
                    .filter(|lv| lv.vg == vg.id)
                    .collect();
                VgReport {
                    record: vg.clone(),
                    pv_count: pvs.len(),
                    lv_count: lvs.len(),
                    pe_count: pvs.iter().map(|pv| st.alloc.pe_count(*pv)).sum(),
                    // Free space on failed PVs cannot be used.
                    pe_free: st
                        .allocatable_pvs(vg.id)
                        .iter()
                        .map(|pv| st.alloc.free_pes(*pv))
                        .sum(),
                    lv_size_bytes: lvs.iter().map(|lv| lv.size_bytes).sum(),
                }
            })
            .collect()
    }

    pub fn lv_reports(&self) -> Vec<LvReport> {
        let st = self.state.lock();
        // Failed legs per extent.
        let mut failed_legs: std::collections::HashMap<(u64, u64), usize> = Default::default();
        for pv in st.pvs.values().filter(|pv| pv.failed.is_some()) {
            for key in st.legs_on_pv.get(&pv.id).into_iter().flatten() {
                *failed_legs.entry(*key).or_default() += 1;
            }
        }
        st.lvs
            .values()
            .map(|lv| {
                let vg = &st.vgs[&lv.record.vg];
                LvReport {
                    record: lv.record.clone(),
                    vg_name: vg.name.clone(),
                    extent_bytes: st.le_bytes(&lv.record),
                    extent_count: extents_for(lv.record.size_bytes, st.le_bytes(&lv.record)),
                    mapped_extents: lv.mapped_extents,
                    open_by: st.live_lease(lv.record.id).map(|l| l.holder.clone()),
                    degraded_extents: failed_legs
                        .iter()
                        .filter(|((id, _), _)| *id == lv.record.id)
                        .count() as u64,
                    lost_extents: failed_legs
                        .iter()
                        .filter(|((id, _), n)| {
                            *id == lv.record.id && **n > lv.record.layout.tolerance()
                        })
                        .count() as u64,
                }
            })
            .collect()
    }
}
