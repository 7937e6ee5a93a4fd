//! `bv-bench`: Blockvirt measured side by side with its peers, in one run,
//! on the same data and the same disk.
//!
//! `convert`: `qemu-img convert` of one raw image (random data, so nothing is
//! skipped as zero) into each target, ending with a flush:
//! - a plain file (the ceiling: no network, no server);
//! - `qemu-nbd` and `nbdkit file` exporting a plain file;
//! - Blockvirt: a fresh thin LV in a VG of sparse PV files.
//!
//! Targets take turns within each round so drift in the machine hits all
//! alike; the table gives the median of the rounds and the ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::{free_port, random_file, run_ok, Server};

const MIB: u64 = 1 << 20;

struct Options {
    size_mib: u64,
    rounds: usize,
    json: Option<PathBuf>,
}

fn parse_options() -> Result<(String, Options), String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "convert".into());
    let mut options = Options {
        size_mib: 1024,
        rounds: 3,
        json: None,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--size-mib" => {
                options.size_mib = value()?.parse().map_err(|e| format!("--size-mib: {e}"))?
            }
            "--rounds" => {
                options.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?
            }
            "--json" => options.json = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if command != "convert" {
        return Err(format!("unknown benchmark {command}; available: convert"));
    }
    Ok((command, options))
}

fn main() {
    let (_, options) = parse_options().unwrap_or_else(|e| {
        eprintln!(
            "bv-bench: {e}\nusage: bv-bench convert [--size-mib N] [--rounds N] [--json FILE]"
        );
        std::process::exit(3);
    });
    convert(&options);
}

/// A peer NBD server on a plain file, killed on drop.
struct Peer {
    child: Child,
    uri: String,
}

impl Peer {
    fn start(program: &str, file: &Path) -> Peer {
        let port = free_port();
        let file = file.to_str().expect("UTF-8 path");
        let mut command = Command::new(program);
        match program {
            "qemu-nbd" => command.args([
                "-f",
                "raw",
                "-b",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "--shared=16",
                file,
            ]),
            "nbdkit" => command.args([
                "-f",
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "file",
                file,
            ]),
            other => panic!("unknown peer {other}"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {program}: {e} (scripts/install-deps bench installs the peers)")
            });
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{program} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Peer {
            child,
            uri: format!("nbd://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fresh_file(path: &Path, size: u64) {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// Seconds for `qemu-img convert` of `source` to `target` (flushed at the end).
fn time_convert(source: &Path, target: &str) -> f64 {
    let started = Instant::now();
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-t", "writeback", "-f", "raw", "-O", "raw"])
            .arg(source)
            .arg(target),
        Duration::from_secs(1800),
    );
    started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

fn convert(options: &Options) {
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
                    fresh_file(&plain, size);
                    time_convert(&source, plain.to_str().unwrap())
                }
                "qemu-nbd" | "nbdkit" => {
                    fresh_file(&plain, size);
                    let program = if targets[t] == "qemu-nbd" {
                        "qemu-nbd"
                    } else {
                        "nbdkit"
                    };
                    let peer = Peer::start(program, &plain);
                    time_convert(&source, &peer.uri)
                }
                _ => {
                    let _ = server.bv(&["lvremove", "vg/bench"]);
                    server.bv_ok(&[
                        "lvcreate",
                        "-V",
                        &format!("{}m", options.size_mib),
                        "-n",
                        "bench",
                        "vg",
                    ]);
                    time_convert(&source, &server.uri("vg/bench"))
                }
            };
            seconds[t].push(elapsed);
            eprintln!("round {}: {:<18} {:6.2} s", round + 1, targets[t], elapsed);
        }
    }
    let medians: Vec<f64> = seconds.iter_mut().map(|s| median(s)).collect();
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
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap())
            .expect("writing the JSON report");
    }
}
