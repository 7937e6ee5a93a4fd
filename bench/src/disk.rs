//! The disk alone: fio's io_uring engine with O_DIRECT on plain files
//! beside the PVs, no server in between. It gives each workload's ceiling:
//! what the disk itself does at the client's queue depth, on one file
//! (what a linear LV's I/O becomes) and on two files at once (a 2-copy
//! mirror write: twice the disk I/O for the same client queue depth).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::fio::{both_directions, timing_args, Unit, Workload, PREWRITE};
use crate::process;

/// Files written at once: one for a single copy, two for a mirror.
pub const FILE_COUNTS: [usize; 2] = [1, 2];

/// Plain files of `size_mib` each, written whole once so that reads hit
/// data and writes overwrite allocated blocks (as on the exports).
pub struct DiskFiles {
    paths: Vec<PathBuf>,
    size_mib: u64,
}

impl DiskFiles {
    pub fn create(dir: &Path, size_mib: u64) -> Result<DiskFiles> {
        let count = FILE_COUNTS.into_iter().max().unwrap_or(1);
        let files = DiskFiles {
            paths: (0..count)
                .map(|i| dir.join(format!("disk-{i}.img")))
                .collect(),
            size_mib,
        };
        for path in &files.paths {
            files.fio(&PREWRITE, std::slice::from_ref(path), None)?;
        }
        Ok(files)
    }

    /// The figure (in the workload's unit, summed over the files) of
    /// `workload` run on the first `count` files at once, each at the
    /// workload's queue depth.
    pub fn measure(
        &self,
        workload: &Workload,
        count: usize,
        runtime_s: u64,
        ramp_s: u64,
    ) -> Result<f64> {
        self.fio(workload, &self.paths[..count], Some((runtime_s, ramp_s)))
    }

    fn fio(
        &self,
        workload: &Workload,
        paths: &[PathBuf],
        timed: Option<(u64, u64)>,
    ) -> Result<f64> {
        let mut args = vec![
            "--ioengine=io_uring".to_string(),
            "--direct=1".into(),
            format!("--size={}m", self.size_mib),
            "--group_reporting".into(),
        ];
        args.extend(workload.args());
        args.extend(timing_args(timed));
        for (i, path) in paths.iter().enumerate() {
            args.push(format!("--name=disk{i}"));
            args.push(format!("--filename={}", path.display()));
        }
        let limit = Duration::from_secs(timed.map_or(3600, |(run, ramp)| run + ramp + 120));
        let finished = process::run_ok(Command::new("fio").args(&args), limit)?;
        let report: Value = serde_json::from_str(&finished.stdout).context("fio's JSON report")?;
        let job = &report["jobs"][0];
        if job["error"].as_i64() != Some(0) {
            bail!("fio on plain files: error {}", job["error"]);
        }
        Ok(match workload.unit {
            Unit::Iops => both_directions(job, "iops"),
            Unit::MibPerS => both_directions(job, "bw_bytes") / (1u64 << 20) as f64,
        })
    }
}

impl Drop for DiskFiles {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}
