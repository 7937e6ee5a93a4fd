//! `convert`: `qemu-img convert` of one raw image (random data, so nothing
//! is skipped as zero) into each target, ending with a flush:
//! - a plain file (the ceiling: no network, no server);
//! - `qemu-nbd` and `nbdkit file` exporting a plain file (the tools'
//!   default caching: through the host's page cache);
//! - Blockvirt: a fresh thin LV in a VG of sparse PV files.
//!
//! Targets take turns within each round so drift in the machine hits all
//! alike; the table gives the median of the rounds and the ratios.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tests::{random_file, Server};

use crate::options::ConvertOptions;
use crate::process::run_ok;
use crate::report::median;
use crate::servers::{Cache, Peer};

const MIB: u64 = 1 << 20;

fn fresh_file(path: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)?.set_len(size)?;
    Ok(())
}

/// Seconds for `qemu-img convert` of `source` to `target` (flushed at the end).
fn time_convert(source: &Path, target: &str) -> Result<f64> {
    let started = Instant::now();
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-t", "writeback", "-f", "raw", "-O", "raw"])
            .arg(source)
            .arg(target),
        Duration::from_secs(1800),
    )?;
    Ok(started.elapsed().as_secs_f64())
}

pub fn run(options: &ConvertOptions) -> Result<()> {
    let size = options.size_mib * MIB;
    let server = Server::start_with(&[]);
    let pv_size = format!("{}m", options.size_mib + 64);
    server.make_vg("vg", 2, &pv_size);
    let source = server.path("source.img");
    random_file(&source, size as usize, 1);
    let plain = server.path("plain.img");

    let targets = ["plain file", "qemu-nbd", "nbdkit", "blockvirt thin LV"];
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..options.rounds {
        for i in 0..targets.len() {
            // Rotate the order each round.
            let t = (i + round) % targets.len();
            let elapsed = match targets[t] {
                "plain file" => {
                    fresh_file(&plain, size)?;
                    time_convert(&source, plain.to_str().unwrap())?
                }
                "qemu-nbd" => {
                    fresh_file(&plain, size)?;
                    let peer = Peer::qemu_nbd(&plain, Cache::Host)?;
                    time_convert(&source, &peer.uri)?
                }
                "nbdkit" => {
                    fresh_file(&plain, size)?;
                    let peer = Peer::nbdkit(&plain, Cache::Host)?;
                    time_convert(&source, &peer.uri)?
                }
                _ => {
                    let _ = server.bv(&["lvremove", "vg/bench"]);
                    let size = format!("{}m", options.size_mib);
                    server.bv_ok(&["lvcreate", "-V", &size, "-n", "bench", "vg"]);
                    time_convert(&source, &server.uri("vg/bench"))?
                }
            };
            seconds[t].push(elapsed);
            eprintln!("round {}: {:<18} {:6.2} s", round + 1, targets[t], elapsed);
        }
    }
    let medians: Vec<f64> = seconds
        .iter()
        .map(|s| median(s).expect("rounds >= 1"))
        .collect();
    let mib_per_s: Vec<f64> = medians
        .iter()
        .map(|s| options.size_mib as f64 / s)
        .collect();
    let ours = mib_per_s[3];
    println!(
        "\n`qemu-img convert` of a {} MiB random raw image, median of {} rounds\n",
        options.size_mib, options.rounds
    );
    println!("| target | seconds | MiB/s | Blockvirt / target |");
    println!("| --- | ---: | ---: | ---: |");
    for (i, target) in targets.iter().enumerate() {
        println!(
            "| {target} | {:.2} | {:.0} | {:.2} |",
            medians[i],
            mib_per_s[i],
            ours / mib_per_s[i]
        );
    }
    if let Some(path) = &options.json {
        let results: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"target": t, "seconds": seconds[i], "median_seconds": medians[i], "mib_per_s": mib_per_s[i]}))
            .collect();
        let report = json!({"benchmark": "convert", "size_mib": options.size_mib, "rounds": options.rounds, "results": results});
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
