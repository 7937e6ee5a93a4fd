//! `kill -9` crash test: two libnbd writers (one per LV, both LVs on the
//! same PVs) write, zero, flush and FUA-write at random; the server is
//! killed at a random moment, restarted, and every block is checked against
//! what the acknowledgements allow: everything acknowledged by a FLUSH (or
//! written with FUA) is back, and nothing else shows up.
//!
//! `BV_CRASH_ITERATIONS` sets the number of kills (default 10);
//! `BV_CRASH_SEED` replays a run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tests::{run_with_limit, Server, PYTHON};

fn script() -> String {
    format!("{}/scripts/crash_writer.py", env!("CARGO_MANIFEST_DIR"))
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let iterations = env_number("BV_CRASH_ITERATIONS", 10);
    let seed = env_number("BV_CRASH_SEED", rand::random::<u32>() as u64);
    println!("crash test: {iterations} iterations, BV_CRASH_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut server = Server::start();
    server.make_vg("vg", 2, "80m");
    // A linear LV, and a mirror whose writes log their checksums first.
    server.bv_ok(&["lvcreate", "-V", "48m", "-n", "a", "vg"]);
    server.bv_ok(&[
        "lvcreate",
        "--type",
        "raid1",
        "-m",
        "1",
        "--raidintegrity",
        "y",
        "-V",
        "48m",
        "-n",
        "b",
        "vg",
    ]);
    let (mut acked_ops, mut acked_flushes) = (0u64, 0u64);
    for iteration in 0..iterations {
        let writers: Vec<(std::process::Child, String)> = ["a", "b"]
            .iter()
            .map(|lv| {
                let log = server.path(&format!("{lv}.log")).display().to_string();
                let state = server.path(&format!("{lv}.state")).display().to_string();
                let child = Command::new(PYTHON)
                    .args([script().as_str(), "write", &server.uri(&format!("vg/{lv}"))])
                    .arg((seed * 1000 + iteration * 2 + u64::from(*lv == "b")).to_string())
                    .args([&log, &state])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("starting the writer");
                (child, lv.to_string())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        server.kill9();
        for (mut child, lv) in writers {
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "writer for {lv} did not stop"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server.restart();
        for lv in ["a", "b"] {
            let log = server.path(&format!("{lv}.log"));
            let state = server.path(&format!("{lv}.state"));
            let output = run_with_limit(
                Command::new(PYTHON)
                    .args([
                        script().as_str(),
                        "verify",
                        &server.uri(&format!("vg/{lv}")),
                    ])
                    .args([&log, &state]),
                Duration::from_secs(120),
            );
            assert!(
                output.status.success(),
                "seed {seed}, iteration {iteration}, LV {lv}: {}\nserver log:\n{}",
                String::from_utf8_lossy(&output.stderr),
                server.log_text()
            );
            let stats: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("verifier stats");
            acked_ops += stats["acked_ops"].as_u64().unwrap();
            acked_flushes += stats["acked_flushes"].as_u64().unwrap();
        }
    }
    println!("crash test: {acked_ops} acknowledged ops and {acked_flushes} flushes verified");
    let waits = server
        .log_text()
        .matches("for another process to let go of it")
        .count();
    println!("crash test: {waits} PV opens waited for the killed server to let go");
    assert!(
        acked_ops > 0 && acked_flushes > 0,
        "the writers never got going"
    );
}

/// A server killed a moment ago may still hold its PVs' locks while the
/// kernel tears its io_uring ring down: a restart waits for them instead
/// of starting with every PV missing. Here another process holds a PV's
/// lock for a second and a half across the restart.
#[test]
fn a_restart_waits_for_a_dying_server_to_let_go_of_its_pvs() {
    let mut server = Server::start();
    server.make_vg("vg", 1, "64m");
    server.kill9();
    let pv = server.path("vg-pv0.img").display().to_string();
    let mut holder = Command::new(PYTHON)
        .args([
            "-c",
            "import fcntl, sys, time\n\
             f = open(sys.argv[1], 'rb')\n\
             fcntl.flock(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             time.sleep(1.5)\n",
            &pv,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the lock holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    server.restart();
    assert!(holder.wait().unwrap().success());
    let report = server.pv_report("vg-pv0.img");
    assert_eq!(report["pv_state"], "online", "{report}");
    assert!(
        server
            .log_text()
            .contains("for another process to let go of it"),
        "{}",
        server.log_text()
    );
}
