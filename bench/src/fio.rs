//! fio over NBD (its `nbd` engine, through libnbd): the workloads, one run
//! against one export, and what the serving process spent meanwhile.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::{self, cpu_seconds, peak_rss_bytes, reset_peak_rss};

/// What a workload's figure counts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Iops,
    MibPerS,
}

impl Unit {
    pub fn label(self) -> &'static str {
        match self {
            Unit::Iops => "IOPS",
            Unit::MibPerS => "MiB/s",
        }
    }
}

pub struct Workload {
    /// Key in the JSON report.
    pub name: &'static str,
    /// Column heading.
    pub label: &'static str,
    pub rw: &'static str,
    pub block: &'static str,
    pub iodepth: u32,
    pub unit: Unit,
}

pub const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "randread-4k",
        label: "4k randread QD32",
        rw: "randread",
        block: "4k",
        iodepth: 32,
        unit: Unit::Iops,
    },
    Workload {
        name: "randwrite-4k",
        label: "4k randwrite QD32",
        rw: "randwrite",
        block: "4k",
        iodepth: 32,
        unit: Unit::Iops,
    },
    Workload {
        name: "read-1m",
        label: "1M read QD8",
        rw: "read",
        block: "1M",
        iodepth: 8,
        unit: Unit::MibPerS,
    },
    Workload {
        name: "write-1m",
        label: "1M write QD8",
        rw: "write",
        block: "1M",
        iodepth: 8,
        unit: Unit::MibPerS,
    },
];

/// The pass that writes every byte of an export before anything is
/// measured, so reads hit written data (a thin LV reads unwritten ranges
/// as zeroes without touching a disk) and writes overwrite it.
pub const PREWRITE: Workload = Workload {
    name: "prewrite-1m",
    label: "1M write QD8, once over the whole export",
    rw: "write",
    block: "1M",
    iodepth: 8,
    unit: Unit::MibPerS,
};

/// One fio run.
pub struct Job<'a> {
    pub workload: &'a Workload,
    pub uri: &'a str,
    pub size_bytes: u64,
    /// Measured seconds and unmeasured ramp before them; `None` runs once
    /// over the whole size and flushes at the end.
    pub timed: Option<(u64, u64)>,
}

impl Workload {
    /// fio's options for this workload on any engine, with its report in
    /// JSON: every offset equally likely each time, not a fixed sequence.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--rw={}", self.rw),
            format!("--bs={}", self.block),
            format!("--iodepth={}", self.iodepth),
            "--norandommap".into(),
            "--randrepeat=0".into(),
            "--output-format=json".into(),
        ]
    }
}

impl Job<'_> {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--name={}", self.workload.name),
            "--ioengine=nbd".into(),
            format!("--uri={}", self.uri),
            format!("--size={}", self.size_bytes),
        ];
        args.extend(self.workload.args());
        args.extend(timing_args(self.timed));
        args
    }
}

/// fio's options for a run of `runtime_s` measured seconds after `ramp_s`
/// unmeasured ones, or (`None`) once over the whole size, flushed at the end.
pub fn timing_args(timed: Option<(u64, u64)>) -> Vec<String> {
    match timed {
        Some((runtime_s, ramp_s)) => vec![
            "--time_based".into(),
            format!("--runtime={runtime_s}"),
            format!("--ramp_time={ramp_s}"),
        ],
        None => vec!["--end_fsync=1".into()],
    }
}

/// A field of a fio job's report, summed over reads and writes.
pub fn both_directions(job: &Value, key: &str) -> f64 {
    ["read", "write"]
        .iter()
        .map(|dir| job[dir][key].as_f64().unwrap_or(0.0))
        .sum()
}

/// A run's figures; bytes and rates count only the measured time.
pub struct Measured {
    pub bytes: u64,
    pub iops: f64,
    pub mib_per_s: f64,
    /// CPU the server used from the end of the ramp until fio exited.
    pub server_cpu_s: f64,
    /// The server's peak RSS during the run.
    pub server_peak_rss_bytes: u64,
}

impl Measured {
    pub fn figure(&self, unit: Unit) -> f64 {
        match unit {
            Unit::Iops => self.iops,
            Unit::MibPerS => self.mib_per_s,
        }
    }

    pub fn cpu_s_per_gib(&self) -> f64 {
        self.server_cpu_s / (self.bytes as f64 / (1u64 << 30) as f64)
    }
}

/// Runs `job` against the server process `server_pid`; `scratch` is a
/// directory for fio's report. An error carries fio's own complaint.
pub fn run(job: &Job, server_pid: u32, scratch: &Path) -> Result<Measured> {
    let output = scratch.join("fio.json");
    let _ = std::fs::remove_file(&output);
    let ramp = Duration::from_secs(job.timed.map_or(0, |(_, ramp)| ramp));
    let limit = match job.timed {
        Some((runtime, ramp)) => Duration::from_secs(runtime + ramp + 120),
        None => Duration::from_secs(3600),
    };
    reset_peak_rss(server_pid)?;
    let mut cpu_at_ramp_end = None;
    let finished = process::run(
        Command::new("fio")
            .args(job.args())
            .arg(format!("--output={}", output.display())),
        limit,
        |elapsed| {
            if cpu_at_ramp_end.is_none() && elapsed >= ramp {
                cpu_at_ramp_end = cpu_seconds(server_pid).ok();
            }
        },
    )?;
    let cpu_end = cpu_seconds(server_pid)?;
    let report = std::fs::read_to_string(&output).unwrap_or_default();
    if !finished.status.success() {
        bail!("fio {}: {}", job.workload.name, finished.reason());
    }
    let report: Value = serde_json::from_str(&report).context("parsing fio's JSON report")?;
    let fio_job = &report["jobs"][0];
    if fio_job["error"].as_i64() != Some(0) {
        bail!("fio {}: error {}", job.workload.name, fio_job["error"]);
    }
    let sum = |key: &str| both_directions(fio_job, key);
    Ok(Measured {
        bytes: sum("io_bytes") as u64,
        iops: sum("iops"),
        mib_per_s: sum("bw_bytes") / (1u64 << 20) as f64,
        server_cpu_s: cpu_end - cpu_at_ramp_end.unwrap_or(cpu_end),
        server_peak_rss_bytes: peak_rss_bytes(server_pid)?,
    })
}

/// fio's version, after checking that it has the nbd engine.
pub fn check_installed() -> Result<String> {
    let limit = Duration::from_secs(30);
    let version = process::run_ok(Command::new("fio").arg("--version"), limit)
        .context("fio is needed (scripts/install-deps bench installs it)")?;
    process::run_ok(Command::new("fio").arg("--enghelp=nbd"), limit)
        .context("this fio has no nbd engine (Debian's fio 3.33 has it)")?;
    Ok(version.stdout.trim().to_string())
}
