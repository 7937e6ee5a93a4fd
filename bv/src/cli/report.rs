//! `pvs`, `vgs`, `lvs` and the `*display` commands: LVM's columns, LVM's
//! JSON shape (`{"report": [{"lv": [{"lv_name": ...}]}]}`, every value a
//! string), and LVM's display layout.

use serde_json::{json, Map, Value};

use crate::api::{LvStatus, PvStatus, Reports};
use crate::size::Units;
use metadata::VgReport;

/// One report: a JSON key ("pv"), and per row the (field, column heading,
/// value) triples. A heading of `None` keeps the field out of the table.
pub struct Report {
    key: &'static str,
    rows: Vec<Vec<(&'static str, Option<&'static str>, String)>>,
}

impl Report {
    pub fn pvs(pvs: &[PvStatus], units: Units) -> Report {
        let rows = pvs
            .iter()
            .map(|pv| {
                let r = &pv.report;
                let extent = r.extent_bytes.unwrap_or(0);
                let (size, free) = match r.vg_name {
                    Some(_) => (r.pe_count * extent, (r.pe_count - r.pe_alloc) * extent),
                    None => (r.record.size_bytes, r.record.size_bytes),
                };
                let attr = format!(
                    "{}-{}",
                    if r.allocatable { 'a' } else { '-' },
                    if pv.state == "online" { '-' } else { 'm' }
                );
                vec![
                    ("pv_name", Some("PV"), r.record.path.display().to_string()),
                    ("vg_name", Some("VG"), r.vg_name.clone().unwrap_or_default()),
                    ("pv_fmt", Some("Fmt"), "bv1".into()),
                    ("pv_attr", Some("Attr"), attr),
                    ("pv_size", Some("PSize"), units.format(size)),
                    ("pv_free", Some("PFree"), units.format(free)),
                    ("pv_fault", Some("Fault"), pv.fault.clone()),
                    ("pv_state", None, pv.state.clone()),
                    ("pv_problem", None, pv.problem.clone().unwrap_or_default()),
                    (
                        "pv_allocatable",
                        None,
                        if r.allocatable { "allocatable" } else { "" }.into(),
                    ),
                    ("dev_size", None, units.format(r.record.size_bytes)),
                    ("pv_uuid", None, r.record.uuid.to_string()),
                    ("pe_start", None, units.format(r.record.data_offset_bytes)),
                    ("pv_pe_count", None, r.pe_count.to_string()),
                    ("pv_pe_alloc_count", None, r.pe_alloc.to_string()),
                    (
                        "pv_missing",
                        None,
                        if pv.state == "online" { "" } else { "missing" }.into(),
                    ),
                ]
            })
            .collect();
        Report { key: "pv", rows }
    }

    pub fn vgs(vgs: &[VgReport], units: Units) -> Report {
        let rows = vgs
            .iter()
            .map(|vg| {
                vec![
                    ("vg_name", Some("VG"), vg.record.name.clone()),
                    ("pv_count", Some("#PV"), vg.pv_count.to_string()),
                    ("lv_count", Some("#LV"), vg.lv_count.to_string()),
                    ("snap_count", Some("#SN"), "0".into()),
                    ("vg_attr", Some("Attr"), "wz--n-".into()),
                    ("vg_size", Some("VSize"), units.format(vg.size_bytes())),
                    ("vg_free", Some("VFree"), units.format(vg.free_bytes())),
                    (
                        "data_percent",
                        Some("Data%"),
                        format!("{:.2}", vg.data_percent()),
                    ),
                    ("vg_uuid", None, vg.record.uuid.to_string()),
                    ("vg_extent_size", None, units.format(vg.record.extent_bytes)),
                    ("vg_extent_count", None, vg.pe_count.to_string()),
                    ("vg_free_count", None, vg.pe_free.to_string()),
                    ("lv_size_total", None, units.format(vg.lv_size_bytes)),
                    (
                        "raid_fault_policy",
                        None,
                        vg.record.fault_policy.name().into(),
                    ),
                ]
            })
            .collect();
        Report { key: "vg", rows }
    }

    pub fn lvs(lvs: &[LvStatus], units: Units) -> Report {
        let rows = lvs
            .iter()
            .map(|lv| {
                let r = &lv.report;
                let data_percent = if r.record.thin {
                    format!("{:.2}", r.data_percent())
                } else {
                    String::new()
                };
                let layout = r.layout();
                let sync_percent = lv
                    .sync_percent
                    .map(|p| format!("{p:.2}"))
                    .unwrap_or_default();
                vec![
                    ("lv_name", Some("LV"), r.record.name.clone()),
                    ("vg_name", Some("VG"), r.vg_name.clone()),
                    ("lv_attr", Some("Attr"), lv_attr(lv)),
                    ("lv_size", Some("LSize"), units.format(r.record.size_bytes)),
                    ("data_percent", Some("Data%"), data_percent),
                    ("copy_percent", Some("Cpy%Sync"), sync_percent.clone()),
                    ("lv_layout", Some("Layout"), lv_layout(lv)),
                    ("segtype", None, segtype(lv)),
                    ("stripes", None, layout.legs().to_string()),
                    ("data_stripes", None, layout.data_legs().to_string()),
                    (
                        "stripe_size",
                        None,
                        units.format(layout.unit_bytes().unwrap_or(0)),
                    ),
                    ("sync_percent", None, sync_percent),
                    (
                        "raid_sync_action",
                        None,
                        if layout.is_redundant() {
                            lv.sync_action.clone()
                        } else {
                            String::new()
                        },
                    ),
                    ("raid_mismatch_count", None, lv.mismatches.to_string()),
                    (
                        "raid_max_recovery_rate",
                        None,
                        units.format(r.record.max_recovery_rate),
                    ),
                    (
                        "raid_integrity",
                        None,
                        if r.record.raid_integrity { "y" } else { "n" }.into(),
                    ),
                    ("lv_degraded_extents", None, r.degraded_extents.to_string()),
                    ("lv_lost_extents", None, r.lost_extents.to_string()),
                    ("lv_uuid", None, r.record.uuid.to_string()),
                    ("lv_active", None, "active".into()),
                    (
                        "lv_device_open",
                        None,
                        if r.open_by.is_some() { "open" } else { "" }.into(),
                    ),
                    ("lv_health_status", None, health(lv).into()),
                    (
                        "lv_allocated_size",
                        None,
                        units.format(r.mapped_extents * r.extent_bytes),
                    ),
                    ("lv_export", None, lv.export_uri.clone()),
                ]
            })
            .collect();
        Report { key: "lv", rows }
    }

    /// LVM's `-o`: `FIELD,...` shows exactly those fields (in the table
    /// and in JSON); `+FIELD,...` adds them to the default columns.
    pub fn select(self, options: &str) -> Result<Report, String> {
        let (defaults, list) = match options.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, options),
        };
        let wanted: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        if let Some(first) = self.rows.first() {
            for field in &wanted {
                if !first.iter().any(|(f, _, _)| f == field) {
                    let known: Vec<&str> = first.iter().map(|(f, _, _)| *f).collect();
                    return Err(format!(
                        "unknown field \"{field}\"; {} fields: {}",
                        self.key,
                        known.join(",")
                    ));
                }
            }
        }
        let rows = self
            .rows
            .into_iter()
            .map(|row| {
                let mut picked: Vec<_> = if defaults {
                    row.iter()
                        .filter(|(_, h, _)| h.is_some())
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                for field in &wanted {
                    if picked.iter().any(|(f, _, _)| f == field) {
                        continue;
                    }
                    if let Some((f, heading, value)) = row.iter().find(|(f, _, _)| f == field) {
                        let heading = heading.unwrap_or_else(|| heading_of(f));
                        picked.push((f, Some(heading), value.clone()));
                    }
                }
                picked
            })
            .collect();
        Ok(Report {
            key: self.key,
            rows,
        })
    }

    pub fn json(&self) -> String {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let fields: Map<String, Value> = row
                    .iter()
                    .map(|(field, _, value)| (field.to_string(), Value::String(value.clone())))
                    .collect();
                Value::Object(fields)
            })
            .collect();
        let report = json!({ "report": [ { self.key: rows } ] });
        serde_json::to_string_pretty(&report).expect("reports serialize")
    }

    pub fn table(&self, headings: bool) -> String {
        let Some(first) = self.rows.first() else {
            return String::new();
        };
        let columns: Vec<(usize, &str)> = first
            .iter()
            .enumerate()
            .filter_map(|(i, (_, heading, _))| heading.map(|h| (i, h)))
            .collect();
        let mut lines: Vec<Vec<&str>> = Vec::new();
        if headings {
            lines.push(columns.iter().map(|(_, h)| *h).collect());
        }
        for row in &self.rows {
            lines.push(columns.iter().map(|(i, _)| row[*i].2.as_str()).collect());
        }
        let widths: Vec<usize> = (0..columns.len())
            .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
            .collect();
        lines
            .iter()
            .map(|line| {
                let cells: Vec<String> = line
                    .iter()
                    .zip(&widths)
                    .map(|(cell, width)| format!("{cell:<width$}"))
                    .collect();
                format!("  {}\n", cells.join(" ").trim_end())
            })
            .collect()
    }
}

/// The column heading of a field outside the default columns (LVM's,
/// where LVM has the field).
fn heading_of(field: &'static str) -> &'static str {
    match field {
        "dev_size" => "DevSize",
        "pv_uuid" => "PV UUID",
        "pe_start" => "1st PE",
        "pv_pe_count" => "PE",
        "pv_pe_alloc_count" => "Alloc",
        "pv_missing" => "Missing",
        "pv_allocatable" => "Allocatable",
        "pv_state" => "State",
        "pv_problem" => "Problem",
        "vg_uuid" => "VG UUID",
        "vg_extent_size" => "Ext",
        "vg_extent_count" => "#Ext",
        "vg_free_count" => "Free",
        "lv_size_total" => "LVSize",
        "raid_fault_policy" => "FaultPolicy",
        "lv_uuid" => "LV UUID",
        "lv_active" => "Active",
        "lv_device_open" => "DevOpen",
        "lv_health_status" => "Health",
        "lv_allocated_size" => "Allocated",
        "lv_export" => "Export",
        "segtype" => "Type",
        "stripes" => "#Str",
        "data_stripes" => "#DStr",
        "stripe_size" => "Stripe",
        "sync_percent" => "Cpy%Sync",
        "raid_sync_action" => "SyncAction",
        "raid_mismatch_count" => "Mismatches",
        "raid_max_recovery_rate" => "MaxSync",
        "raid_integrity" => "Integrity",
        "lv_degraded_extents" => "Degraded",
        "lv_lost_extents" => "Lost",
        other => other,
    }
}

/// LVM's ten attribute characters, as far as they apply.
fn lv_attr(lv: &LvStatus) -> String {
    let r = &lv.report;
    let (volume_type, target, zero) = match (r.record.thin, r.layout().is_redundant()) {
        (true, _) => ('V', 't', 'z'),
        (false, true) => ('r', 'r', '-'),
        (false, false) => ('-', '-', '-'),
    };
    let open = if r.open_by.is_some() { 'o' } else { '-' };
    let health = match health(lv) {
        "partial" => 'p',
        "degraded" => 'r',
        "mismatches exist" => 'm',
        _ => '-',
    };
    format!("{volume_type}wi-a{open}{target}{zero}{health}-")
}

/// LVM's `lv_health_status`: "partial" (data lost), "degraded" (a leg on a
/// failed PV: LVM says "refresh needed"), "mismatches exist" (the last
/// scrub found bad copies), or "" when healthy.
fn health(lv: &LvStatus) -> &'static str {
    match lv.report.health() {
        "" if lv.mismatches > 0 => "mismatches exist",
        other => other,
    }
}

/// LVM's `segtype` (`striped` for raid0, as LVM names it).
fn segtype(lv: &LvStatus) -> String {
    match lv.report.layout() {
        metadata::Layout::Raid0 { .. } => "striped".into(),
        layout => layout.name().into(),
    }
}

fn lv_layout(lv: &LvStatus) -> String {
    let layout = lv.report.layout().name();
    if lv.report.record.thin {
        format!("thin,{layout}")
    } else {
        layout.to_string()
    }
}

pub fn pvdisplay(pv: &PvStatus) -> String {
    let units = Units::default();
    let r = &pv.report;
    let extent = r.extent_bytes.unwrap_or(0);
    let mut out = String::from("  --- Physical volume ---\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<22}{v}\n"));
    line("PV Name", r.record.path.display().to_string());
    line("VG Name", r.vg_name.clone().unwrap_or_default());
    line("PV Size", units.format(r.record.size_bytes));
    line(
        "Allocatable",
        if r.vg_name.is_some() { "yes" } else { "NO" }.into(),
    );
    line(
        "PE Size",
        if extent > 0 {
            units.format(extent)
        } else {
            "0".into()
        },
    );
    line("Total PE", r.pe_count.to_string());
    line("Free PE", (r.pe_count - r.pe_alloc).to_string());
    line("Allocated PE", r.pe_alloc.to_string());
    line(
        "PV State",
        pv.state.clone()
            + &pv
                .problem
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
    );
    line("Injected fault", pv.fault.clone());
    line("PV UUID", r.record.uuid.to_string());
    out
}

pub fn vgdisplay(vg: &VgReport, reports: &Reports) -> String {
    let units = Units::default();
    let open = reports
        .lvs
        .iter()
        .filter(|lv| lv.report.vg_name == vg.record.name && lv.report.open_by.is_some())
        .count();
    let allocated = vg.pe_count - vg.pe_free;
    let mut out = String::from("  --- Volume group ---\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<22}{v}\n"));
    line("VG Name", vg.record.name.clone());
    line("Format", "bv1".into());
    line("VG Access", "read/write".into());
    line("VG Status", "resizable".into());
    line("Cur LV", vg.lv_count.to_string());
    line("Open LV", open.to_string());
    line("Cur PV", vg.pv_count.to_string());
    line("VG Size", units.format(vg.size_bytes()));
    line("PE Size", units.format(vg.record.extent_bytes));
    line("Total PE", vg.pe_count.to_string());
    line(
        "Alloc PE / Size",
        format!(
            "{allocated} / {}",
            units.format(allocated * vg.record.extent_bytes)
        ),
    );
    line(
        "Free  PE / Size",
        format!("{} / {}", vg.pe_free, units.format(vg.free_bytes())),
    );
    line("Data%", format!("{:.2}", vg.data_percent()));
    line("LV Size (total)", units.format(vg.lv_size_bytes));
    line("RAID fault policy", vg.record.fault_policy.name().into());
    line("VG UUID", vg.record.uuid.to_string());
    out
}

pub fn lvdisplay(lv: &LvStatus) -> String {
    let units = Units::default();
    let r = &lv.report;
    let mut out = String::from("  --- Logical volume ---\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<22}{v}\n"));
    line("LV Path", format!("{}/{}", r.vg_name, r.record.name));
    line("LV Name", r.record.name.clone());
    line("VG Name", r.vg_name.clone());
    line("LV UUID", r.record.uuid.to_string());
    line("LV Write Access", "read/write".into());
    line("LV Status", "available".into());
    line(
        "# open",
        r.open_by
            .as_ref()
            .map_or("0".into(), |holder| format!("1 ({holder})")),
    );
    line("LV Size", units.format(r.record.size_bytes));
    line("Current LE", r.extent_count.to_string());
    line(
        "Allocation",
        if r.record.thin { "thin" } else { "thick" }.into(),
    );
    line("Mapped LE", r.mapped_extents.to_string());
    line("Mapped size", format!("{:.2}%", r.data_percent()));
    line("Layout", lv_layout(lv));
    if let Some(percent) = lv.sync_percent {
        line("Health", health(lv).to_string());
        line("Cpy%Sync", format!("{percent:.2}%"));
        line("Sync action", lv.sync_action.clone());
        line("Mismatches", lv.mismatches.to_string());
        line(
            "Max recovery rate",
            match r.record.max_recovery_rate {
                0 => "unlimited".into(),
                rate => format!("{}/s", units.format(rate)),
            },
        );
        line(
            "Integrity",
            match r.record.raid_integrity {
                true => "checksums of writes logged ahead (--raidintegrity y)".into(),
                false => "no".into(),
            },
        );
    }
    line("NBD export", lv.export_uri.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            key: "lv",
            rows: vec![
                vec![
                    ("lv_name", Some("LV"), "a".into()),
                    ("lv_uuid", None, "u1".into()),
                ],
                vec![
                    ("lv_name", Some("LV"), "longer".into()),
                    ("lv_uuid", None, "u2".into()),
                ],
            ],
        }
    }

    #[test]
    fn json_has_lvm_shape() {
        let parsed: Value = serde_json::from_str(&report().json()).unwrap();
        assert_eq!(parsed["report"][0]["lv"][1]["lv_name"], "longer");
        assert_eq!(parsed["report"][0]["lv"][0]["lv_uuid"], "u1");
    }

    #[test]
    fn options_pick_or_add_fields() {
        let added = report().select("+lv_uuid").unwrap();
        assert_eq!(
            added.table(true),
            "  LV     LV UUID\n  a      u1\n  longer u2\n"
        );
        let only = report().select("lv_uuid").unwrap();
        assert_eq!(only.table(false), "  u1\n  u2\n");
        let parsed: Value = serde_json::from_str(&only.json()).unwrap();
        assert_eq!(parsed["report"][0]["lv"][0], json!({ "lv_uuid": "u1" }));
        let err = report().select("lv_nope").err().unwrap();
        assert!(err.contains("unknown field \"lv_nope\""), "{err}");
    }

    #[test]
    fn table_aligns_and_hides_detail_fields() {
        let table = report().table(true);
        assert_eq!(table, "  LV\n  a\n  longer\n");
        assert_eq!(report().table(false), "  a\n  longer\n");
    }
}
