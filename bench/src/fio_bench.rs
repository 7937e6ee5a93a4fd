//! `fio`: fio's nbd engine against every target (`targets`): 4k random
//! reads and writes at QD32, 1M sequential reads and writes at QD8.
//!
//! 1. Set up the servers and exports; write every export whole once
//!    (1M, QD8, flushed), so reads measure data and writes overwrite it.
//! 2. Fail one PV under each "1 PV failed" row.
//! 3. Rounds: each workload runs on every target in turn, starting one
//!    target later each round, so drift in the machine hits all alike.
//!    After each workload's targets, the disk alone runs it too (`disk`):
//!    on one plain file, and on two at once, a mirror's ceiling.
//! 4. Report the medians, the ratios to the peers, what each server spent
//!    (peak RSS, CPU seconds per GiB moved), and the disk's figures, in
//!    markdown and JSON.

use anyhow::Result;
use serde_json::json;

use crate::disk::{DiskFiles, FILE_COUNTS};
use crate::fio::{self, Job, PREWRITE, WORKLOADS};
use crate::options::FioOptions;
use crate::process::check_interrupted;
use crate::report::{Report, Runs};
use crate::servers::bv_command_line;
use crate::targets::Lab;

const MIB: u64 = 1 << 20;

pub fn run(options: &FioOptions) -> Result<()> {
    let fio_version = fio::check_installed()?;
    let load_at_start = loadavg();
    let mut lab = Lab::start(options)?;
    let size_bytes = options.size_mib * MIB;
    let scratch = lab.server.dir.path().to_path_buf();
    let mut runs: Vec<Runs> = lab
        .targets
        .iter()
        .map(|_| Runs {
            prewrite: None,
            by_workload: WORKLOADS.iter().map(|_| Vec::new()).collect(),
        })
        .collect();

    for (target, runs) in lab.targets.iter_mut().zip(&mut runs) {
        if target.unavailable.is_some() {
            continue;
        }
        eprintln!("writing {} MiB to {}", options.size_mib, target.name);
        let job = Job {
            workload: &PREWRITE,
            uri: &target.uri,
            size_bytes,
            timed: None,
        };
        match fio::run(&job, target.pid, &scratch) {
            Ok(measured) => runs.prewrite = Some(measured),
            Err(e) => {
                check_interrupted()?;
                target.unavailable = Some(format!("{e:#}"));
            }
        }
    }
    lab.fail_pvs();
    eprintln!(
        "writing {} MiB to each of the disk's plain files",
        options.size_mib
    );
    let disk_files = DiskFiles::create(&scratch, options.size_mib)?;
    // disk[w][c][round]: workload w on FILE_COUNTS[c] files at once.
    let mut disk: Vec<Vec<Vec<f64>>> = WORKLOADS
        .iter()
        .map(|_| FILE_COUNTS.iter().map(|_| Vec::new()).collect())
        .collect();

    let live = lab
        .targets
        .iter()
        .filter(|t| t.unavailable.is_none())
        .count();
    let runs_per_round = (live + FILE_COUNTS.len()) as u64 * WORKLOADS.len() as u64;
    let seconds = runs_per_round * (options.runtime_s + options.ramp_s + 1);
    eprintln!(
        "{} rounds of {live} targets and {} disk runs x {} workloads: about {} min",
        options.rounds,
        FILE_COUNTS.len(),
        WORKLOADS.len(),
        (seconds * options.rounds as u64).div_ceil(60)
    );
    let count = lab.targets.len();
    for round in 0..options.rounds {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            for k in 0..count {
                let i = (k + round) % count;
                let target = &mut lab.targets[i];
                if target.unavailable.is_some() {
                    continue;
                }
                let job = Job {
                    workload,
                    uri: &target.uri,
                    size_bytes,
                    timed: Some((options.runtime_s, options.ramp_s)),
                };
                match fio::run(&job, target.pid, &scratch) {
                    Ok(measured) => {
                        eprintln!(
                            "round {}: {:<18} {:<32} {:>9.0} {}",
                            round + 1,
                            workload.label,
                            target.name,
                            measured.figure(workload.unit),
                            workload.unit.label()
                        );
                        runs[i].by_workload[w].push(measured);
                    }
                    Err(e) => {
                        check_interrupted()?;
                        eprintln!("round {}: {}: {e:#}", round + 1, target.name);
                        target.unavailable = Some(format!("{e:#}"));
                    }
                }
            }
            for (c, &files) in FILE_COUNTS.iter().enumerate() {
                let figure =
                    disk_files.measure(workload, files, options.runtime_s, options.ramp_s)?;
                eprintln!(
                    "round {}: {:<18} {:<32} {:>9.0} {}",
                    round + 1,
                    workload.label,
                    format!("the disk alone, {files} file(s)"),
                    figure,
                    workload.unit.label()
                );
                disk[w][c].push(figure);
            }
        }
    }

    let example_job = Job {
        workload: &WORKLOADS[0],
        uri: "URI",
        size_bytes,
        timed: Some((options.runtime_s, options.ramp_s)),
    };
    let context = json!({
        "benchmark": "fio",
        "size_mib": options.size_mib,
        "rounds": options.rounds,
        "runtime_s": options.runtime_s,
        "ramp_s": options.ramp_s,
        "fio_version": fio_version,
        "host": {
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": loadavg(),
        },
        "commands": {
            "nbdkit": lab.nbdkit.command_line,
            "qemu-nbd": lab.qemu_nbd.command_line,
            "blockvirt": bv_command_line(&lab.server),
            "fio": format!("fio {}", example_job.args().join(" ")),
        },
        "workloads": WORKLOADS.iter().map(|w| json!({
            "name": w.name, "rw": w.rw, "bs": w.block, "iodepth": w.iodepth, "unit": w.unit.label(),
        })).collect::<Vec<_>>(),
    });
    let report = Report {
        targets: &lab.targets,
        runs: &runs,
        disk: &disk,
        context,
    };
    let title = format!(
        "fio over NBD: {} MiB per export, {} s measured after {} s of ramp, median of {} rounds",
        options.size_mib, options.runtime_s, options.ramp_s, options.rounds
    );
    println!("\n{}", report.markdown(&title));
    println!("Servers (127.0.0.1; files in one directory of one filesystem):\n");
    println!("- nbdkit: `{}`", lab.nbdkit.command_line);
    println!("- qemu-nbd: `{}`", lab.qemu_nbd.command_line);
    println!("- Blockvirt: `{}`", bv_command_line(&lab.server));
    println!("- fio (per run): `fio {}`", example_job.args().join(" "));
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
    }
    Ok(())
}

/// The host's load averages, to judge how busy the machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}
