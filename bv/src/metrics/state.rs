//! Metrics made at scrape time from a [`Snapshot`]: PV, VG and LV state,
//! jobs, NBD counts. They live in a registry made for the one scrape, so a
//! removed PV or a finished job simply stops appearing.
//!
//! Counters here (`*_total`) are read from atomics that only grow (device
//! wrappers, NBD stats, job totals); they restart from zero with the
//! server, which Prometheus's `rate()` handles as a counter reset.

use blockvirt::counted::DeviceOp;
use blockvirt::leaf::FaultMode;
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry, Result};

use super::snapshot::{JobTotals, NbdCounts, PvSample, Snapshot};
use crate::api::{JobKind, JobState, JobStatus, LvStatus};
use metadata::VgReport;

const PV_STATES: [&str; 3] = ["online", "failed", "missing"];
const FAULT_MODES: [&str; 5] = ["none", "fail", "eio", "slow", "corrupt"];

/// A registry for one scrape, and shorthands to add families to it.
struct Fresh {
    registry: Registry,
}

impl Fresh {
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
        let vec = GaugeVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(vec.clone()))?;
        Ok(vec)
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
        let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(vec.clone()))?;
        Ok(vec)
    }

    /// A gauge without labels.
    fn single_gauge(&self, name: &str, help: &str, value: f64) -> Result<()> {
        let gauge = Gauge::new(name, help)?;
        gauge.set(value);
        self.registry.register(Box::new(gauge))
    }

    /// A counter without labels, at `value`.
    fn single_counter(&self, name: &str, help: &str, value: u64) -> Result<()> {
        let counter = IntCounter::new(name, help)?;
        counter.inc_by(value);
        self.registry.register(Box::new(counter))
    }
}

/// Every scrape-time family, sorted by name.
pub fn families(snapshot: &Snapshot) -> Result<Vec<MetricFamily>> {
    let fresh = Fresh {
        registry: Registry::new(),
    };
    pvs(&fresh, &snapshot.pvs)?;
    vgs(&fresh, &snapshot.vgs)?;
    lvs(&fresh, &snapshot.lvs)?;
    jobs(&fresh, &snapshot.jobs, &snapshot.job_totals)?;
    nbd(&fresh, &snapshot.nbd)?;
    fresh
        .gauge(
            "blockvirt_build_info",
            "The running bv (value 1), with its version.",
            &["version"],
        )?
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
    Ok(fresh.registry.gather())
}

fn fault_mode_name(mode: FaultMode) -> &'static str {
    match mode {
        FaultMode::None => "none",
        FaultMode::Fail => "fail",
        FaultMode::Eio { .. } => "eio",
        FaultMode::Slow { .. } => "slow",
        FaultMode::Corrupt { .. } => "corrupt",
    }
}

fn pvs(f: &Fresh, pvs: &[PvSample]) -> Result<()> {
    let info = f.gauge(
        "blockvirt_pv_info",
        "A PV on record (value 1), with its UUID and VG (empty outside one).",
        &["pv", "uuid", "vg"],
    )?;
    let state = f.gauge(
        "blockvirt_pv_state",
        "1 for the PV's state (online, failed or missing), 0 for the others.",
        &["pv", "state"],
    )?;
    let size = f.gauge("blockvirt_pv_size_bytes", "Size of the PV.", &["pv"])?;
    let extents = f.gauge(
        "blockvirt_pv_extents",
        "Physical extents of the PV (0 outside a VG).",
        &["pv"],
    )?;
    let allocated = f.gauge(
        "blockvirt_pv_allocated_extents",
        "Physical extents of the PV mapped to LVs or reserved for them.",
        &["pv"],
    )?;
    let errors = f.counter(
        "blockvirt_pv_io_errors_total",
        "I/O errors the PV returned since the server opened it, injected faults included, by operation.",
        &["pv", "op"],
    )?;
    let fault = f.gauge(
        "blockvirt_pv_fault_injected",
        "1 for the fault mode set with pvchange --fault (none, fail, eio, slow, corrupt), 0 for the others.",
        &["pv", "mode"],
    )?;
    let injected = f.counter(
        "blockvirt_pv_injected_faults_total",
        "Faults injected into the PV since the server opened it: failed operations, corrupted reads, delays.",
        &["pv", "fault"],
    )?;
    for sample in pvs {
        let report = &sample.status.report;
        let pv = report.record.path.display().to_string();
        let pv = pv.as_str();
        let uuid = report.record.uuid.to_string();
        info.with_label_values(&[pv, &uuid, report.vg_name.as_deref().unwrap_or("")])
            .set(1.0);
        for name in PV_STATES {
            let on = sample.status.state == name;
            state.with_label_values(&[pv, name]).set(f64::from(on));
        }
        size.with_label_values(&[pv])
            .set(report.record.size_bytes as f64);
        extents.with_label_values(&[pv]).set(report.pe_count as f64);
        allocated
            .with_label_values(&[pv])
            .set(report.pe_alloc as f64);
        let Some(device) = &sample.device else {
            continue;
        };
        for op in DeviceOp::ALL {
            errors
                .with_label_values(&[pv, op.name()])
                .inc_by(device.errors.get(op));
        }
        let mode = fault_mode_name(device.mode);
        for name in FAULT_MODES {
            fault
                .with_label_values(&[pv, name])
                .set(f64::from(mode == name));
        }
        for (name, count) in [
            ("error", device.injected.errors),
            ("corruption", device.injected.corruptions),
            ("delay", device.injected.delays),
        ] {
            injected.with_label_values(&[pv, name]).inc_by(count);
        }
    }
    Ok(())
}

fn vgs(f: &Fresh, vgs: &[VgReport]) -> Result<()> {
    let labels = &["vg"];
    let extent = f.gauge(
        "blockvirt_vg_extent_bytes",
        "Size of the VG's physical extents.",
        labels,
    )?;
    let extents = f.gauge(
        "blockvirt_vg_extents",
        "Physical extents in the VG.",
        labels,
    )?;
    let allocated = f.gauge(
        "blockvirt_vg_allocated_extents",
        "Physical extents of the VG mapped to LVs or reserved for them.",
        labels,
    )?;
    let free = f.gauge(
        "blockvirt_vg_free_extents",
        "Physical extents of the VG free for new allocations.",
        labels,
    )?;
    let size = f.gauge("blockvirt_vg_size_bytes", "Size of the VG.", labels)?;
    let lv_size = f.gauge(
        "blockvirt_vg_lv_size_bytes",
        "Sum of the sizes of the VG's LVs (more than the VG's size when thin LVs overcommit it).",
        labels,
    )?;
    for vg in vgs {
        let name = [vg.record.name.as_str()];
        extent
            .with_label_values(&name)
            .set(vg.record.extent_bytes as f64);
        extents.with_label_values(&name).set(vg.pe_count as f64);
        allocated
            .with_label_values(&name)
            .set(vg.pe_count.saturating_sub(vg.pe_free) as f64);
        free.with_label_values(&name).set(vg.pe_free as f64);
        size.with_label_values(&name).set(vg.size_bytes() as f64);
        lv_size
            .with_label_values(&name)
            .set(vg.lv_size_bytes as f64);
    }
    Ok(())
}

fn lvs(f: &Fresh, lvs: &[LvStatus]) -> Result<()> {
    let labels = &["vg", "lv"];
    let info = f.gauge(
        "blockvirt_lv_info",
        "An LV (value 1), with its layout and provisioning (thin or thick).",
        &["vg", "lv", "layout", "provisioning"],
    )?;
    let size = f.gauge("blockvirt_lv_size_bytes", "Size of the LV.", labels)?;
    let extents = f.gauge("blockvirt_lv_extents", "Logical extents of the LV.", labels)?;
    let mapped = f.gauge(
        "blockvirt_lv_mapped_extents",
        "Logical extents of the LV with storage allocated (all of them for thick LVs).",
        labels,
    )?;
    let degraded = f.gauge(
        "blockvirt_lv_degraded_extents",
        "Extents of the LV with a leg on a failed PV (redundancy reduced).",
        labels,
    )?;
    let lost = f.gauge(
        "blockvirt_lv_lost_extents",
        "Extents of the LV with more failed legs than the layout tolerates (data lost).",
        labels,
    )?;
    let open = f.gauge(
        "blockvirt_lv_open",
        "1 when the LV is open (a client or a job uses it), else 0.",
        labels,
    )?;
    let mismatches = f.gauge(
        "blockvirt_lv_mismatches",
        "Bad copies found by the LV's last check or repair since the server started.",
        labels,
    )?;
    for lv in lvs {
        let report = &lv.report;
        let name = [report.vg_name.as_str(), report.record.name.as_str()];
        let provisioning = if report.record.thin { "thin" } else { "thick" };
        info.with_label_values(&[name[0], name[1], report.layout().name(), provisioning])
            .set(1.0);
        size.with_label_values(&name)
            .set(report.record.size_bytes as f64);
        extents
            .with_label_values(&name)
            .set(report.extent_count as f64);
        mapped
            .with_label_values(&name)
            .set(report.mapped_extents as f64);
        degraded
            .with_label_values(&name)
            .set(report.degraded_extents as f64);
        lost.with_label_values(&name)
            .set(report.lost_extents as f64);
        open.with_label_values(&name)
            .set(f64::from(report.open_by.is_some()));
        mismatches
            .with_label_values(&name)
            .set(lv.mismatches as f64);
    }
    Ok(())
}

fn jobs(f: &Fresh, jobs: &[JobStatus], totals: &[JobTotals]) -> Result<()> {
    let progress = f.gauge(
        "blockvirt_job_progress_ratio",
        "Share of a running job's extents done (0 to 1); target is VG/LV, or the PV of a pvmove.",
        &["id", "kind", "target"],
    )?;
    let running = f.gauge(
        "blockvirt_jobs_running",
        "Jobs running now, by kind (recover, check, repair, move).",
        &["kind"],
    )?;
    let copied = f.counter(
        "blockvirt_job_copied_bytes_total",
        "Bytes written to new extent legs by recover (lvconvert --repair) and move (pvmove) jobs.",
        &["kind"],
    )?;
    let checked = f.counter(
        "blockvirt_job_checked_blocks_total",
        "Blocks verified by check and repair jobs (lvchange --syncaction).",
        &["kind"],
    )?;
    for kind in JobKind::ALL {
        let count = jobs
            .iter()
            .filter(|job| job.kind == kind && job.state == JobState::Running)
            .count();
        running.with_label_values(&[kind.name()]).set(count as f64);
    }
    for job in jobs.iter().filter(|job| job.state == JobState::Running) {
        let ratio = if job.total == 0 {
            0.0
        } else {
            job.done as f64 / job.total as f64
        };
        progress
            .with_label_values(&[&job.id.to_string(), job.kind.name(), &job.target])
            .set(ratio);
    }
    for total in totals {
        let kind = [total.kind.name()];
        copied.with_label_values(&kind).inc_by(total.copied_bytes);
        checked
            .with_label_values(&kind)
            .inc_by(total.checked_blocks);
    }
    Ok(())
}

fn nbd(f: &Fresh, nbd: &NbdCounts) -> Result<()> {
    f.single_gauge(
        "blockvirt_nbd_connections",
        "NBD connections open now (in the handshake or transmitting).",
        nbd.connections_open as f64,
    )?;
    f.single_counter(
        "blockvirt_nbd_connections_total",
        "NBD connections accepted since the server started.",
        nbd.connections_accepted,
    )?;
    f.single_gauge(
        "blockvirt_nbd_requests_in_flight",
        "NBD requests read and not yet answered, over all connections.",
        nbd.requests_in_flight as f64,
    )
}
