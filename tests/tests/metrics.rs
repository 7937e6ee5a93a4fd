//! Prometheus metrics of a running `bv serve`: scraped over
//! `--metrics-listen` and over the API socket, before, during and after
//! real NBD traffic (libnbd), checked number by number, linted by
//! `promtool check metrics`; then a PV made to fail with
//! `pvchange --fault eio:1` shows in the PV and LV metrics.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tests::{run_with_limit, Server, PYTHON};

const LIMIT: Duration = Duration::from_secs(60);
const KIB: f64 = 1024.0;

/// One scrape: every sample, by name, with its labels.
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
                let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
                let (name, labels) = match series.split_once('{') {
                    None => (series, BTreeMap::new()),
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                };
                (name.to_string(), labels, value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of the one sample of `name` carrying every label given;
    /// `None` when there is none.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches {} samples",
            matching.len()
        );
        matching.first().copied()
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }

    /// An LV series, 0 when the LV has none yet (never opened).
    fn lv(&self, name: &str, op: &str) -> f64 {
        self.find(name, &[("vg", "vg"), ("lv", "a"), ("op", op)])
            .unwrap_or(0.0)
    }
}

/// `k="v",k2="v2"` (values in this test never hold quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
            (key.to_string(), value.trim_end_matches('"').to_string())
        })
        .collect()
}

/// `GET /metrics` over a connected stream; the body of a 200 answer.
fn get_metrics(mut stream: impl Read + Write) -> String {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("sending the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP head and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// Scrapes the `--metrics-listen` address (loopback).
fn scrape_tcp(address: &str) -> Scrape {
    let stream = std::net::TcpStream::connect(address).expect("connecting to /metrics");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    Scrape::parse(get_metrics(stream))
}

/// Scrapes the management API's Unix socket.
fn scrape_socket(socket: &Path) -> Scrape {
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connecting to bv.sock");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    Scrape::parse(get_metrics(stream))
}

/// The address `bv serve --metrics-listen 127.0.0.1:0` bound, from its log.
fn metrics_address(server: &Server) -> String {
    let log = server.log_text();
    log.split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
        .to_string()
}

/// `promtool check metrics` must accept the text.
fn promtool_accepts(server: &Server, scrape: &Scrape) {
    let file = server.path("scrape.txt");
    std::fs::write(&file, &scrape.text).unwrap();
    let output = run_with_limit(
        Command::new("sh").args([
            "-c",
            "promtool check metrics < \"$1\"",
            "sh",
            file.to_str().unwrap(),
        ]),
        LIMIT,
    );
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}; is Debian's prometheus package installed? scripts/install-deps does it):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// traffic.py holding its connection open; killed if the test fails.
struct Traffic {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Traffic {
    /// Runs the request mix and waits for the script's report.
    fn start(uri: &str) -> (Traffic, Value) {
        let script = format!("{}/scripts/traffic.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(PYTHON)
            .args([&script, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting traffic.py");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let traffic = Traffic { child, stdin };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(LIMIT)
            .expect("traffic.py reports within the limit");
        let report = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("traffic.py said {line:?}: {e}"));
        (traffic, report)
    }

    /// Closes stdin: the script disconnects and exits.
    fn finish(mut self) {
        drop(self.stdin.take());
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for traffic.py") {
                assert!(status.success(), "traffic.py: {status}");
                return;
            }
            assert!(started.elapsed() < LIMIT, "traffic.py did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_follow_real_nbd_traffic_and_pass_promtool() {
    let server = Server::start_with(&[
        "--commit-interval",
        "0.2",
        "--pv-check-interval",
        "0.3",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let address = metrics_address(&server);
    // One PV, so the LV's extents and the injected fault share a disk.
    server.make_vg("vg", 1, "64m");
    server.bv_ok(&["lvcreate", "-V", "32m", "-n", "a", "vg"]);
    let pv = server.path("vg-pv0.img").display().to_string();
    let before = scrape_tcp(&address);
    assert_eq!(before.get("blockvirt_nbd_connections", &[]), 0.0);
    let accepted_before = before.get("blockvirt_nbd_connections_total", &[]);

    // During: one connection open, nothing in flight, the LV open.
    let (traffic, report) = Traffic::start(&server.uri("vg/a"));
    assert_eq!(report["refused"], true, "{report}");
    let during = scrape_tcp(&address);
    assert_eq!(during.get("blockvirt_nbd_connections", &[]), 1.0);
    // A reply's slot is given back just after the reply is flushed.
    server.wait_until("nothing is in flight", LIMIT, || {
        scrape_tcp(&address).get("blockvirt_nbd_requests_in_flight", &[]) == 0.0
    });
    assert_eq!(
        during.get("blockvirt_lv_open", &[("vg", "vg"), ("lv", "a")]),
        1.0
    );
    traffic.finish();
    server.wait_until("the connection is closed", LIMIT, || {
        scrape_tcp(&address).get("blockvirt_nbd_connections", &[]) == 0.0
    });

    // After: every request counted once, by kind, with its bytes.
    let after = scrape_tcp(&address);
    assert_eq!(
        after.get("blockvirt_nbd_connections_total", &[]) - accepted_before,
        1.0
    );
    let moved = |name: &str, op: &str| after.lv(name, op) - before.lv(name, op);
    let expected = [
        // op, requests, errors, bytes counted
        ("write", 4.0, 0.0, Some(4.0 * 64.0 * KIB)),
        ("read", 4.0, 1.0, Some(3.0 * 128.0 * KIB)),
        ("flush", 1.0, 0.0, None),
        ("trim", 1.0, 0.0, Some(64.0 * KIB)),
        ("write_zeroes", 1.0, 0.0, Some(64.0 * KIB)),
        ("cache", 1.0, 0.0, None),
        ("block_status", 1.0, 0.0, None),
    ];
    for (op, requests, errors, bytes) in expected {
        assert_eq!(moved("blockvirt_lv_operations_total", op), requests, "{op}");
        assert_eq!(moved("blockvirt_lv_errors_total", op), errors, "{op}");
        assert_eq!(
            moved("blockvirt_lv_operation_duration_seconds_count", op),
            requests,
            "{op}: one latency sample per request"
        );
        match bytes {
            Some(bytes) => assert_eq!(moved("blockvirt_lv_bytes_total", op), bytes, "{op}"),
            None => assert_eq!(after.find("blockvirt_lv_bytes_total", &[("op", op)]), None),
        }
    }
    let write_sum = moved("blockvirt_lv_operation_duration_seconds_sum", "write");
    assert!(write_sum > 0.0 && write_sum < 60.0, "{write_sum}");
    let inf = after.get(
        "blockvirt_lv_operation_duration_seconds_bucket",
        &[("lv", "a"), ("op", "write"), ("le", "+Inf")],
    );
    assert_eq!(
        inf,
        after.lv("blockvirt_lv_operation_duration_seconds_count", "write")
    );

    // The VG and PV numbers are those `vgs` and `pvs` report.
    let row = &server.vg_report(
        "vg",
        "vg_name,vg_size,vg_extent_size,vg_extent_count,vg_free_count",
    );
    let number = |key: &str| -> f64 { row[key].as_str().unwrap().parse().unwrap() };
    let vg = [("vg", "vg")];
    assert_eq!(
        after.get("blockvirt_vg_extents", &vg),
        number("vg_extent_count")
    );
    assert_eq!(
        after.get("blockvirt_vg_free_extents", &vg),
        number("vg_free_count")
    );
    assert_eq!(
        after.get("blockvirt_vg_allocated_extents", &vg),
        number("vg_extent_count") - number("vg_free_count")
    );
    assert!(after.get("blockvirt_vg_allocated_extents", &vg) >= 1.0);
    assert_eq!(
        after.get("blockvirt_vg_extent_bytes", &vg),
        number("vg_extent_size")
    );
    assert_eq!(after.get("blockvirt_vg_size_bytes", &vg), number("vg_size"));
    let pv_labels = [("pv", pv.as_str())];
    assert_eq!(
        after.get(
            "blockvirt_pv_state",
            &[("pv", pv.as_str()), ("state", "online")]
        ),
        1.0
    );
    assert_eq!(
        after.get("blockvirt_pv_extents", &pv_labels),
        number("vg_extent_count")
    );
    assert_eq!(
        after.get(
            "blockvirt_pv_io_errors_total",
            &[("pv", pv.as_str()), ("op", "read")]
        ),
        0.0
    );
    promtool_accepts(&server, &after);

    // The API socket serves the same families.
    let over_socket = scrape_socket(&server.data_dir().join("bv.sock"));
    assert_eq!(
        over_socket.lv("blockvirt_lv_operations_total", "write"),
        after.lv("blockvirt_lv_operations_total", "write")
    );
    promtool_accepts(&server, &over_socket);

    // A PV that returns errors: counted on the PV and on the LV, the
    // fault shown, and the PV failed (by the read or the health check).
    server.bv_ok(&["pvchange", "--fault", "eio:1", &pv]);
    let output = run_with_limit(
        Command::new("qemu-io").args(["-f", "raw", "-c", "read 0 64k", &server.uri("vg/a")]),
        LIMIT,
    );
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("Input/output error"), "{said}");
    server.wait_until("the PV is failed in the metrics", LIMIT, || {
        scrape_tcp(&address).get(
            "blockvirt_pv_state",
            &[("pv", pv.as_str()), ("state", "failed")],
        ) == 1.0
    });
    let failed = scrape_tcp(&address);
    assert_eq!(
        failed.get(
            "blockvirt_pv_state",
            &[("pv", pv.as_str()), ("state", "online")]
        ),
        0.0
    );
    assert_eq!(
        failed.get(
            "blockvirt_pv_fault_injected",
            &[("pv", pv.as_str()), ("mode", "eio")]
        ),
        1.0
    );
    assert_eq!(
        failed.get(
            "blockvirt_pv_fault_injected",
            &[("pv", pv.as_str()), ("mode", "none")]
        ),
        0.0
    );
    let pv_read_errors = failed.get(
        "blockvirt_pv_io_errors_total",
        &[("pv", pv.as_str()), ("op", "read")],
    );
    assert!(pv_read_errors >= 1.0, "{pv_read_errors}");
    assert!(
        failed.get(
            "blockvirt_pv_injected_faults_total",
            &[("pv", pv.as_str()), ("fault", "error")]
        ) >= pv_read_errors
    );
    assert_eq!(
        failed.lv("blockvirt_lv_errors_total", "read")
            - after.lv("blockvirt_lv_errors_total", "read"),
        1.0
    );
    assert_eq!(failed.get("blockvirt_nbd_connections", &[]), 0.0);
    promtool_accepts(&server, &failed);

    // An LV removed takes its series with it (once the last client's
    // close has released it).
    server.wait_until("vg/a is removed", LIMIT, || {
        server.bv(&["lvremove", "vg/a"]).0 == 0
    });
    let removed = scrape_tcp(&address);
    assert_eq!(
        removed.find("blockvirt_lv_operations_total", &[("lv", "a")]),
        None
    );
    assert_eq!(
        removed.find("blockvirt_lv_size_bytes", &[("lv", "a")]),
        None
    );
}

/// A scrub of a raid1 LV: its progress shows while it runs (a slow PV
/// keeps it running long enough to look), then its blocks in the totals.
#[test]
fn job_progress_and_totals_show_in_metrics() {
    let server = Server::start_with(&[
        "--commit-interval",
        "0.2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let address = metrics_address(&server);
    server.make_vg("vg", 2, "64m");
    server.bv_ok(&[
        "lvcreate", "--type", "raid1", "-m", "1", "-L", "16m", "-n", "m", "vg",
    ]);
    let output = run_with_limit(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 7 0 16M", &server.uri("vg/m")]),
        LIMIT,
    );
    assert!(output.status.success(), "{output:?}");
    let before = scrape_tcp(&address);
    assert_eq!(
        before.get("blockvirt_jobs_running", &[("kind", "check")]),
        0.0
    );
    assert_eq!(
        before.get("blockvirt_job_checked_blocks_total", &[("kind", "check")]),
        0.0
    );

    let slow_pv = server.path("vg-pv0.img").display().to_string();
    server.bv_ok(&["pvchange", "--fault", "slow:300", &slow_pv]);
    server.bv_ok(&["lvchange", "--syncaction", "check", "-b", "vg/m"]);
    let running = scrape_tcp(&address);
    assert_eq!(
        running.get("blockvirt_jobs_running", &[("kind", "check")]),
        1.0
    );
    let ratio = running.get(
        "blockvirt_job_progress_ratio",
        &[("kind", "check"), ("target", "vg/m")],
    );
    assert!((0.0..1.0).contains(&ratio), "{ratio}");
    promtool_accepts(&server, &running);

    server.bv_ok(&["pvchange", "--fault", "none", &slow_pv]);
    server.wait_until("the check is done", LIMIT, || {
        scrape_tcp(&address).get("blockvirt_jobs_running", &[("kind", "check")]) == 0.0
    });
    let done = scrape_tcp(&address);
    assert_eq!(
        done.find("blockvirt_job_progress_ratio", &[("target", "vg/m")]),
        None,
        "only running jobs have a progress"
    );
    // 16 MiB written on 2 copies, checked block by block (4 KiB).
    let checked = done.get("blockvirt_job_checked_blocks_total", &[("kind", "check")]);
    assert!(checked >= 4096.0, "{checked}");
    assert_eq!(
        done.get("blockvirt_lv_mismatches", &[("vg", "vg"), ("lv", "m")]),
        0.0
    );
    assert_eq!(
        done.get(
            "blockvirt_lv_info",
            &[("lv", "m"), ("layout", "raid1"), ("provisioning", "thick")]
        ),
        1.0
    );
    promtool_accepts(&server, &done);
}
