//! Rendering a scrape from a made-up server state: every family has help
//! and a type, counters and only counters end in `_total`, and the values
//! come from the snapshot.

use std::collections::HashMap;
use std::time::Duration;

use blockvirt::counted::ErrorCounts;
use blockvirt::leaf::{FaultCounters, FaultMode};
use gateways::observe::{IoObserver, IoOp};
use metadata::{Layout, LvRecord, LvReport, PvRecord, PvReport, VgRecord, VgReport};

use super::snapshot::{JobTotals, NbdCounts, PvDeviceSample, PvSample};
use super::*;
use crate::api::{JobKind, JobState, JobStatus, LvStatus, PvStatus};

fn pv(path: &str, state: &str, device: Option<PvDeviceSample>) -> PvSample {
    PvSample {
        status: PvStatus {
            report: PvReport {
                record: PvRecord {
                    id: 1,
                    uuid: uuid::Uuid::nil(),
                    path: path.into(),
                    size_bytes: 64 << 20,
                    data_offset_bytes: 2 << 20,
                    vg: Some(1),
                    pe_count: 15,
                    failed: None,
                },
                vg_name: Some("vg0".into()),
                pe_count: 15,
                pe_alloc: 4,
                extent_bytes: Some(4 << 20),
                allocatable: true,
            },
            state: state.into(),
            problem: None,
            fault: String::new(),
        },
        device,
    }
}

fn snapshot() -> Snapshot {
    let vg = VgRecord {
        id: 1,
        uuid: uuid::Uuid::nil(),
        name: "vg0".into(),
        extent_bytes: 4 << 20,
        fault_policy: Default::default(),
    };
    let lv = LvReport {
        record: LvRecord {
            id: 1,
            uuid: uuid::Uuid::nil(),
            vg: 1,
            name: "web".into(),
            size_bytes: 32 << 20,
            thin: true,
            layout: Layout::Linear,
            epoch: 3,
            max_recovery_rate: 0,
            raid_integrity: false,
        },
        vg_name: "vg0".into(),
        extent_bytes: 4 << 20,
        extent_count: 8,
        mapped_extents: 2,
        open_by: Some("here".into()),
        degraded_extents: 0,
        lost_extents: 0,
    };
    let mut errors = ErrorCounts::default();
    errors.by_op[0] = 3;
    Snapshot {
        pvs: vec![
            pv(
                "/srv/pv0.img",
                "failed",
                Some(PvDeviceSample {
                    errors,
                    mode: FaultMode::Eio { rate: 1.0 },
                    injected: FaultCounters {
                        errors: 3,
                        corruptions: 0,
                        delays: 0,
                    },
                }),
            ),
            pv("/srv/pv1.img", "missing", None),
        ],
        vgs: vec![VgReport {
            record: vg,
            pv_count: 2,
            lv_count: 1,
            pe_count: 30,
            pe_free: 26,
            lv_size_bytes: 32 << 20,
        }],
        lvs: vec![LvStatus {
            report: lv,
            export_uri: String::new(),
            sync_action: "idle".into(),
            sync_percent: None,
            mismatches: 0,
        }],
        jobs: vec![JobStatus {
            id: 7,
            kind: JobKind::Recover,
            target: "vg0/web".into(),
            state: JobState::Running,
            done: 1,
            total: 4,
            bytes_copied: 4 << 20,
            blocks_checked: 0,
            mismatches: 0,
            repaired: 0,
            unrecoverable: 0,
            elapsed_seconds: 1.0,
            message: None,
        }],
        job_totals: vec![JobTotals {
            kind: JobKind::Recover,
            copied_bytes: 4 << 20,
            checked_blocks: 0,
        }],
        nbd: NbdCounts {
            connections_open: 1,
            connections_accepted: 5,
            requests_in_flight: 0,
        },
    }
}

/// Sample lines by their name and labels as written.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn a_scrape_shows_the_snapshot_and_the_data_path_series() {
    let metrics = Metrics::new().unwrap();
    let io = metrics.lv_io.observer("vg0", "web");
    io.completed(IoOp::Read, 65536, Duration::from_micros(80), true);
    let text = metrics.render(&snapshot()).unwrap();
    let samples = samples(&text);
    let get = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(
        get(r#"blockvirt_lv_bytes_total{lv="web",op="read",vg="vg0"}"#),
        65536.0
    );
    assert_eq!(
        get(
            r#"blockvirt_lv_operation_duration_seconds_bucket{lv="web",op="read",vg="vg0",le="0.0001"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            r#"blockvirt_lv_operation_duration_seconds_bucket{lv="web",op="read",vg="vg0",le="0.00005"}"#
        ),
        0.0
    );
    assert_eq!(
        get(r#"blockvirt_pv_state{pv="/srv/pv0.img",state="failed"}"#),
        1.0
    );
    assert_eq!(
        get(r#"blockvirt_pv_state{pv="/srv/pv0.img",state="online"}"#),
        0.0
    );
    assert_eq!(
        get(r#"blockvirt_pv_io_errors_total{op="read",pv="/srv/pv0.img"}"#),
        3.0
    );
    assert_eq!(
        get(r#"blockvirt_pv_fault_injected{mode="eio",pv="/srv/pv0.img"}"#),
        1.0
    );
    assert!(
        !text.contains(r#"blockvirt_pv_io_errors_total{op="read",pv="/srv/pv1.img"}"#),
        "a PV not open here has no device counters"
    );
    assert_eq!(get(r#"blockvirt_vg_allocated_extents{vg="vg0"}"#), 4.0);
    assert_eq!(
        get(r#"blockvirt_vg_size_bytes{vg="vg0"}"#),
        30.0 * 4.0 * 1048576.0
    );
    assert_eq!(get(r#"blockvirt_lv_open{lv="web",vg="vg0"}"#), 1.0);
    assert_eq!(
        get(r#"blockvirt_job_progress_ratio{id="7",kind="recover",target="vg0/web"}"#),
        0.25
    );
    assert_eq!(get(r#"blockvirt_jobs_running{kind="check"}"#), 0.0);
    assert_eq!(get("blockvirt_nbd_connections_total"), 5.0);
    assert_eq!(get("blockvirt_nbd_connections"), 1.0);
}

#[test]
fn every_family_has_help_and_type_and_counters_end_in_total() {
    let metrics = Metrics::new().unwrap();
    metrics.lv_io.observer("vg0", "web");
    let text = metrics.render(&snapshot()).unwrap();
    let mut families = 0;
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families += 1;
            assert!(helped.contains(name), "{name} has no help");
            assert!(name.starts_with("blockvirt_"), "{name}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
        }
    }
    assert!(families >= 30, "{families} families:\n{text}");
}
