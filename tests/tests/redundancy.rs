//! Redundant layouts through a real NBD client (libnbd) against a real
//! `bv serve`, with faults injected into live PVs (`bv pvchange --fault`):
//! PVs failing up to each layout's tolerance and beyond, repair, a second
//! failure after it, automatic repair, silent corruption found and repaired
//! by scrub, pvmove, `vgreduce --removemissing` across a restart, and a
//! `qemu-img convert` into a raid5 LV while one of its PVs dies.

use std::io::{Seek, SeekFrom, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{random_bytes, random_file, run_ok, run_with_limit, Server, PYTHON};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;
/// The size of blocks.py's reads when it checks an export.
const CHECK_BLOCK: usize = 256 << 10;

fn script() -> String {
    format!("{}/scripts/blocks.py", env!("CARGO_MANIFEST_DIR"))
}

/// A server that checks idle PVs often, so a failed PV no read touched
/// is noticed within a test.
fn server() -> Server {
    Server::start_with(&["--commit-interval", "0.2", "--pv-check-interval", "0.3"])
}

/// Writes `data` at `offset` of the export through libnbd, and flushes.
fn write(server: &Server, export: &str, offset: usize, data: &[u8]) {
    let file = server.path("write.tmp");
    std::fs::write(&file, data).unwrap();
    run_ok(
        Command::new(PYTHON).args([
            &script(),
            "write",
            &server.uri(export),
            file.to_str().unwrap(),
            &offset.to_string(),
        ]),
        LIMIT,
    );
}

/// Reads the export back against `expected`: (good, failed, wrong) blocks.
fn check(server: &Server, export: &str, expected: &[u8]) -> Value {
    let file = server.path("expected.tmp");
    std::fs::write(&file, expected).unwrap();
    let out = run_ok(
        Command::new(PYTHON).args([
            &script(),
            "check",
            &server.uri(export),
            file.to_str().unwrap(),
        ]),
        LIMIT,
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every byte reads back as expected, and no read fails.
fn assert_intact(server: &Server, export: &str, expected: &[u8], when: &str) {
    let counts = check(server, export, expected);
    assert!(
        counts["failed"] == 0 && counts["wrong"] == 0,
        "{export} {when}: {counts}\nserver log:\n{}",
        server.log_text()
    );
}

fn fail_pv(server: &Server, pv: &str) {
    server.bv_ok(&["pvchange", "--fault", "fail", pv]);
}

fn pv_state(server: &Server, pv: &str) -> String {
    server.pv_report(pv)["pv_state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_failed(server: &Server, pv: &str) {
    server.wait_until(&format!("{pv} is failed"), LIMIT, || {
        pv_state(server, pv) == "failed"
    });
}

fn health(server: &Server, vg: &str, lv: &str) -> String {
    server.lv_report(vg, lv)["lv_health_status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// One redundant layout: lvcreate's options, and how many PVs it survives.
struct Case {
    vg: &'static str,
    options: &'static [&'static str],
    tolerance: usize,
    thin: bool,
}

const CASES: &[Case] = &[
    Case {
        vg: "raid1",
        options: &["--type", "raid1", "-m", "1"],
        tolerance: 1,
        thin: false,
    },
    Case {
        vg: "raid10",
        options: &["--type", "raid10", "-i", "2", "-m", "1"],
        tolerance: 1,
        thin: true,
    },
    Case {
        vg: "raid1int",
        options: &["--type", "raid1", "-m", "1", "--raidintegrity", "y"],
        tolerance: 1,
        thin: true,
    },
    Case {
        vg: "raid5",
        options: &["--type", "raid5", "-i", "3"],
        tolerance: 1,
        thin: true,
    },
    Case {
        vg: "ec",
        options: &["--type", "ec", "--ec", "4+2"],
        tolerance: 2,
        thin: true,
    },
];

/// Each layout: write, lose up to its tolerance, read every byte, keep
/// writing, repair onto the other PVs, read again, lose another PV, read
/// again.
#[test]
fn every_layout_survives_failures_repair_and_another_failure() {
    let server = server();
    for (n, case) in CASES.iter().enumerate() {
        let vg = case.vg;
        server.make_vg(vg, 8, "64m");
        let mut args = vec!["lvcreate", if case.thin { "-V" } else { "-L" }, "48m"];
        args.extend(case.options);
        args.extend(["-n", "lv", vg]);
        server.bv_ok(&args);
        let export = format!("{vg}/lv");
        let mut expected = random_bytes(40 * MIB, n as u64);
        write(&server, &export, 0, &expected);
        assert_intact(&server, &export, &expected, "healthy");

        let pv = |i: usize| format!("{vg}-pv{i}.img");
        for i in 0..case.tolerance {
            fail_pv(&server, &pv(i));
        }
        assert_intact(&server, &export, &expected, "with PVs failed");
        for i in 0..case.tolerance {
            wait_failed(&server, &pv(i));
        }
        assert_eq!(health(&server, vg, "lv"), "degraded");

        // Writes go on, degraded.
        let more = random_bytes(8 * MIB, 100 + n as u64);
        write(&server, &export, 12 * MIB, &more);
        expected[12 * MIB..20 * MIB].copy_from_slice(&more);
        assert_intact(&server, &export, &expected, "after degraded writes");

        let out = server.bv_ok(&["lvconvert", "--repair", &export]);
        assert!(out.contains("rebuilt"), "{out}");
        let report = server.lv_report(vg, "lv");
        assert_eq!(report["lv_health_status"], "", "{report}");
        assert_eq!(report["copy_percent"], "100.00", "{report}");
        for i in 0..case.tolerance {
            assert_eq!(server.pv_report(&pv(i))["pv_pe_alloc_count"], "0");
        }
        assert_intact(&server, &export, &expected, "after repair");

        fail_pv(&server, &pv(case.tolerance));
        assert_intact(&server, &export, &expected, "with another PV failed");
    }
}

/// More failures than a layout tolerates: reads fail with errors, and
/// none returns wrong bytes.
#[test]
fn beyond_tolerance_reads_fail_and_never_return_wrong_bytes() {
    let server = server();
    for (vg, options, failures) in [
        ("raid5", &["--type", "raid5", "-i", "3"][..], 2),
        ("raid1", &["--type", "raid1", "-m", "1"][..], 2),
        ("raid0", &["--type", "raid0", "-i", "2"][..], 1),
    ] {
        // As many PVs as legs: every extent has a leg on each.
        let legs = match vg {
            "raid5" => 4,
            _ => 2,
        };
        server.make_vg(vg, legs, "64m");
        let mut args = vec!["lvcreate", "-V", "32m"];
        args.extend(options);
        args.extend(["-n", "lv", vg]);
        server.bv_ok(&args);
        let export = format!("{vg}/lv");
        let expected = random_bytes(24 * MIB, 7);
        write(&server, &export, 0, &expected);
        for i in 0..failures {
            fail_pv(&server, &format!("{vg}-pv{i}.img"));
        }
        let counts = check(&server, &export, &expected);
        assert_eq!(counts["wrong"], 0, "{vg}: {counts}");
        assert!(counts["failed"].as_u64().unwrap() > 0, "{vg}: {counts}");
        // Reads whose bytes all sit on surviving PVs still succeed (in a
        // raid5 row, the two lost legs may be its parity and one unit).
        let total = counts["good"].as_u64().unwrap() + counts["failed"].as_u64().unwrap();
        assert_eq!(
            total as usize,
            expected.len() / CHECK_BLOCK,
            "{vg}: {counts}"
        );
        server.wait_until("the LV reports lost data", LIMIT, || {
            health(&server, vg, "lv") == "partial"
        });
    }
}

/// Overwrites 4 KiB in each of the first four 64 KiB units of every PE of
/// a PV file, behind the server's back: in a raid5 extent one of the four
/// is parity, whichever leg the PV is.
fn corrupt_every_pe(server: &Server, pv: &str, extent_bytes: u64) {
    let report = server.pv_report(pv);
    let start: u64 = report["pe_start"].as_str().unwrap().parse().unwrap();
    let count: u64 = report["pv_pe_count"].as_str().unwrap().parse().unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(server.path(pv))
        .unwrap();
    for pe in 0..count {
        for unit in 0..4 {
            let at = start + pe * extent_bytes + unit * (64 << 10) + (8 << 10);
            file.seek(SeekFrom::Start(at)).unwrap();
            file.write_all(&random_bytes(4096, 1000 + pe * 4 + unit))
                .unwrap();
        }
    }
    file.sync_all().unwrap();
}

/// Silent corruption on one PV: a check counts it, reads never serve it
/// (they rewrite what they find), a repair rewrites the rest, and the
/// rewritten copies are good enough to survive the loss of another PV.
#[test]
fn scrub_finds_and_repairs_silent_corruption() {
    let server = server();
    for (vg, options) in [
        ("raid1", &["--type", "raid1", "-m", "1"][..]),
        ("raid5", &["--type", "raid5", "-i", "3"][..]),
    ] {
        server.make_vg(vg, 4, "64m");
        let mut args = vec!["lvcreate", "-V", "32m"];
        args.extend(options);
        args.extend(["-n", "lv", vg]);
        server.bv_ok(&args);
        let export = format!("{vg}/lv");
        let expected = random_bytes(30 * MIB, 3);
        write(&server, &export, 0, &expected);

        corrupt_every_pe(&server, &format!("{vg}-pv0.img"), 4 * MIB as u64);
        server.bv_ok(&["lvchange", "--syncaction", "check", &export]);
        let report = server.lv_report(vg, "lv");
        let found: u64 = report["raid_mismatch_count"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(found > 0, "{vg}: check found nothing: {report}");
        assert_eq!(report["lv_health_status"], "mismatches exist");
        assert_intact(&server, &export, &expected, "corrupt on disk");

        let out = server.bv_ok(&["lvchange", "--syncaction", "repair", &export]);
        assert!(out.contains(" repaired"), "{vg}: {out}");
        server.bv_ok(&["lvchange", "--syncaction", "check", &export]);
        let report = server.lv_report(vg, "lv");
        assert_eq!(report["raid_mismatch_count"], "0", "{vg}: {report}");
        assert_eq!(report["lv_health_status"], "");

        fail_pv(&server, &format!("{vg}-pv1.img"));
        assert_intact(&server, &export, &expected, "repaired, then a PV lost");
    }
}

/// With raid_fault_policy=allocate, a failed PV's legs are rebuilt on the
/// others without anyone asking.
#[test]
fn allocate_policy_repairs_on_its_own() {
    let server = server();
    server.make_vg("vg", 5, "64m");
    server.bv_ok(&["vgchange", "--raid-fault-policy", "allocate", "vg"]);
    server.bv_ok(&[
        "lvcreate", "--type", "raid5", "-i", "3", "-V", "48m", "-n", "lv", "vg",
    ]);
    let expected = random_bytes(40 * MIB, 5);
    write(&server, "vg/lv", 0, &expected);
    fail_pv(&server, "vg-pv2.img");
    server.wait_until("the LV is whole again", LIMIT, || {
        pv_state(&server, "vg-pv2.img") == "failed"
            && health(&server, "vg", "lv").is_empty()
            && server.pv_report("vg-pv2.img")["pv_pe_alloc_count"] == "0"
    });
    assert_intact(&server, "vg/lv", &expected, "after automatic repair");
}

/// A failed PV holding legs cannot be dropped; a restart remembers it
/// failed; once repaired, `vgreduce --removemissing` drops it.
#[test]
fn failed_pvs_persist_until_repaired_and_removed() {
    let mut server = server();
    server.make_vg("vg", 3, "64m");
    server.bv_ok(&[
        "lvcreate", "--type", "raid1", "-m", "1", "-L", "32m", "-n", "lv", "vg",
    ]);
    let expected = random_bytes(32 * MIB, 9);
    write(&server, "vg/lv", 0, &expected);
    fail_pv(&server, "vg-pv0.img");
    wait_failed(&server, "vg-pv0.img");

    let (code, _, err) = server.bv(&["vgreduce", "--removemissing", "vg"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("lvconvert --repair"), "{err}");

    server.restart();
    assert_eq!(pv_state(&server, "vg-pv0.img"), "failed");
    assert_eq!(health(&server, "vg", "lv"), "degraded");
    assert_intact(&server, "vg/lv", &expected, "after a restart, degraded");

    server.bv_ok(&["lvconvert", "--repair", "vg/lv"]);
    let out = server.bv_ok(&["vgreduce", "--removemissing", "vg"]);
    assert!(out.contains("vg-pv0.img"), "{out}");
    assert_eq!(server.pv_report("vg-pv0.img")["vg_name"], "");
    assert_intact(&server, "vg/lv", &expected, "after removemissing");
    server.bv_ok(&["pvremove", "vg-pv0.img"]);
}

/// A repair keeps to the LV's `--maxrecoveryrate`: it starts each extent
/// once the ones before have had their time at that rate, and loses
/// nothing. (A lower bound on the time taken: a slow machine only makes
/// it longer.)
#[test]
fn repair_keeps_to_the_recovery_rate() {
    let server = server();
    server.make_vg("vg", 3, "64m");
    server.bv_ok(&[
        "lvcreate", "--type", "raid1", "-m", "1", "-L", "32m", "-n", "lv", "vg",
    ]);
    let expected = random_bytes(32 * MIB, 13);
    write(&server, "vg/lv", 0, &expected);
    let rate = 4 * MIB;
    server.bv_ok(&["lvchange", "--maxrecoveryrate", "4m", "vg/lv"]);
    assert_eq!(
        server.lv_report("vg", "lv")["raid_max_recovery_rate"],
        rate.to_string()
    );
    fail_pv(&server, "vg-pv0.img");
    wait_failed(&server, "vg-pv0.img");
    let degraded: usize = server.lv_report("vg", "lv")["lv_degraded_extents"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(degraded >= 2, "{degraded} extents to rebuild");
    let extent_bytes: usize = server.vg_report("vg", "vg_extent_size")["vg_extent_size"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let started = Instant::now();
    server.bv_ok(&["lvconvert", "--repair", "vg/lv"]);
    let took = started.elapsed();
    // The last extent starts once the others had their time.
    let least = Duration::from_secs_f64(((degraded - 1) * extent_bytes) as f64 / rate as f64);
    assert!(
        took >= least,
        "{degraded} extents of {extent_bytes} bytes at {rate} B/s took {took:?}"
    );
    assert_eq!(health(&server, "vg", "lv"), "");
    assert_intact(&server, "vg/lv", &expected, "after a paced repair");

    // Unlimited again: 0 clears it.
    server.bv_ok(&["lvchange", "--maxrecoveryrate", "0", "vg/lv"]);
    assert_eq!(server.lv_report("vg", "lv")["raid_max_recovery_rate"], "0");
}

/// pvmove empties a PV while clients read, for a linear and a raid5 LV.
#[test]
fn pvmove_empties_a_pv_online() {
    let server = server();
    server.make_vg("vg", 5, "64m");
    server.bv_ok(&["lvcreate", "-L", "24m", "-n", "plain", "vg"]);
    server.bv_ok(&[
        "lvcreate", "--type", "raid5", "-i", "3", "-V", "48m", "-n", "r5", "vg",
    ]);
    let plain = random_bytes(24 * MIB, 11);
    let r5 = random_bytes(40 * MIB, 12);
    write(&server, "vg/plain", 0, &plain);
    write(&server, "vg/r5", 0, &r5);
    let busy = server.pv_report("vg-pv0.img");
    assert_ne!(busy["pv_pe_alloc_count"], "0", "{busy}");

    // A reader keeps going while the extents move.
    let reader = {
        let uri = server.uri("vg/r5");
        let file = server.path("r5-expected.img");
        std::fs::write(&file, &r5).unwrap();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut passes = 0;
            while passes < 2 || started.elapsed() < Duration::from_secs(1) {
                let out = run_ok(
                    Command::new(PYTHON).args([&script(), "check", &uri, file.to_str().unwrap()]),
                    LIMIT,
                );
                let counts: Value = serde_json::from_str(out.trim()).unwrap();
                assert!(counts["failed"] == 0 && counts["wrong"] == 0, "{counts}");
                passes += 1;
            }
        })
    };
    let out = server.bv_ok(&["pvmove", "vg-pv0.img"]);
    assert!(out.contains("Moved: 100.00%"), "{out}");
    reader.join().expect("reads during pvmove");
    assert_eq!(server.pv_report("vg-pv0.img")["pv_pe_alloc_count"], "0");
    assert_intact(&server, "vg/plain", &plain, "after pvmove");
    assert_intact(&server, "vg/r5", &r5, "after pvmove");
    server.bv_ok(&["vgreduce", "vg", "vg-pv0.img"]);
}

/// A VM-style copy: `qemu-img convert` into a raid5 LV, with one of its PVs
/// failing partway through, ends with an identical image.
#[test]
fn convert_into_raid5_survives_a_pv_failing_midway() {
    let server = server();
    server.make_vg("vg", 5, "128m");
    server.bv_ok(&[
        "lvcreate", "--type", "raid5", "-i", "3", "-V", "192m", "-n", "disk", "vg",
    ]);
    let image = server.path("image.raw");
    random_file(&image, 192 * MIB, 21);
    let uri = server.uri("vg/disk");
    let mut convert = Command::new("qemu-img");
    convert.args(["convert", "-n", "-f", "raw", "-O", "raw", "-r", "96M"]);
    convert.arg(&image).arg(&uri);
    let copying = std::thread::spawn(move || run_with_limit(&mut convert, LIMIT));

    // Fail a PV once a quarter of the LV is written.
    let mut failed_at = None;
    server.wait_until("the copy is a quarter done", LIMIT, || {
        let percent: f64 = server.lv_report("vg", "disk")["data_percent"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        if percent >= 25.0 {
            failed_at = Some(percent);
        }
        failed_at.is_some() || copying.is_finished()
    });
    let failed_at = failed_at.expect("the copy ended before a quarter was written");
    fail_pv(&server, "vg-pv1.img");
    let output = copying.join().unwrap();
    assert!(
        output.status.success(),
        "qemu-img convert: {}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log_text()
    );
    let percent: f64 = server.lv_report("vg", "disk")["data_percent"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(percent > failed_at, "the copy went on after the failure");
    let out = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&image)
            .arg(&uri),
        LIMIT,
    );
    assert!(out.contains("Images are identical"), "{out}");
    wait_failed(&server, "vg-pv1.img");
    assert_eq!(health(&server, "vg", "disk"), "degraded");
}
