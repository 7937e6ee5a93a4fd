//! The `bv` CLI against a running server: every verb, LVM's JSON report
//! shape, and the error paths (one clear line, a non-zero exit code, and
//! nothing half-done).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Server, PYTHON};

const FAILED: i32 = 5;
const USAGE: i32 = 3;

fn json(server: &Server, verb: &str) -> Value {
    let out = server.bv_ok(&[verb, "--reportformat", "json", "--units", "b", "--nosuffix"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{verb} json: {e}\n{out}"))
}

fn rows(report: &Value, key: &str) -> Vec<Value> {
    report["report"][0][key].as_array().unwrap().clone()
}

fn num(value: &Value) -> u64 {
    value.as_str().unwrap().parse().unwrap()
}

/// Asserts a failed command: the exit code, and one error line that says `needle`.
fn assert_fails(server: &Server, args: &[&str], code: i32, needle: &str) {
    let (got, stdout, stderr) = server.bv(args);
    assert_eq!(
        got, code,
        "bv {args:?}: exit code\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "bv {args:?}: expected {needle:?} in stderr: {stderr}"
    );
    if code == FAILED {
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one error line: {stderr}"
        );
    }
}

#[test]
fn every_verb_and_its_errors() {
    let server = Server::start();

    // pvcreate: sparse files, errors leave nothing behind.
    let out = server.bv_ok(&["pvcreate", "--size", "256m", "a.img", "b.img", "c.img"]);
    assert!(out.contains("Physical volume"), "{out}");
    let meta = std::fs::metadata(server.path("a.img")).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20,
        "created sparse"
    );
    assert_fails(
        &server,
        &["pvcreate", "--size", "256m", "a.img"],
        FAILED,
        "already exists",
    );
    assert_fails(
        &server,
        &["pvcreate", "missing.img"],
        FAILED,
        "does not exist",
    );
    assert!(!server.path("missing.img").exists());
    assert_fails(
        &server,
        &["pvcreate", "--size", "512k", "tiny.img"],
        FAILED,
        "too small",
    );
    assert!(
        !server.path("tiny.img").exists(),
        "a refused pvcreate removes the file it created"
    );
    assert_fails(
        &server,
        &["pvcreate", "--size", "10x", "d.img"],
        USAGE,
        "invalid size",
    );
    let pvs = json(&server, "pvs");
    assert_eq!(rows(&pvs, "pv").len(), 3);
    assert_eq!(rows(&pvs, "pv")[0]["pv_attr"], "---", "not in a VG yet");
    assert!(server
        .bv_ok(&["pvdisplay"])
        .contains("--- Physical volume ---"));
    assert!(server.bv_ok(&["pvs"]).contains("PFree"));

    // vgcreate / vgextend / vgreduce.
    assert_fails(
        &server,
        &["vgcreate", "vg", "a.img", "-s", "3m"],
        FAILED,
        "power of two",
    );
    assert_fails(
        &server,
        &["vgcreate", "bad/name", "a.img"],
        FAILED,
        "invalid volume group name",
    );
    assert!(server
        .bv_ok(&["vgcreate", "vg", "a.img", "b.img"])
        .contains("successfully created"));
    assert_fails(
        &server,
        &["vgcreate", "vg2", "c.img", "a.img"],
        FAILED,
        "already belongs",
    );
    assert_eq!(
        rows(&json(&server, "pvs"), "pv")[2]["vg_name"],
        "",
        "c.img stayed free"
    );
    assert_fails(
        &server,
        &["vgcreate", "vg", "c.img"],
        FAILED,
        "already exists",
    );
    server.bv_ok(&["vgextend", "vg", "c.img"]);
    let vg = &rows(&json(&server, "vgs"), "vg")[0];
    assert_eq!(vg["pv_count"], "3");
    assert_eq!(num(&vg["vg_extent_size"]), 4 << 20);
    assert_eq!(
        num(&vg["vg_extent_count"]),
        3 * 62,
        "per 256 MiB PV: 1 MiB label area and a 4 MiB stripe journal"
    );
    server.bv_ok(&["vgreduce", "vg", "c.img"]);
    assert_eq!(rows(&json(&server, "vgs"), "vg")[0]["pv_count"], "2");
    assert!(server.bv_ok(&["vgdisplay", "vg"]).contains("VG Name"));
    assert_fails(&server, &["vgdisplay", "nope"], FAILED, "not found");

    // lvcreate: thin, thick, and refusals that allocate nothing.
    server.bv_ok(&["lvcreate", "-V", "1G", "-n", "thin", "vg"]);
    server.bv_ok(&["lvcreate", "-L", "100m", "-n", "thick", "vg"]);
    let free_before = num(&rows(&json(&server, "vgs"), "vg")[0]["vg_free"]);
    assert_fails(
        &server,
        &["lvcreate", "-L", "10g", "-n", "huge", "vg"],
        FAILED,
        "insufficient free space",
    );
    assert_fails(
        &server,
        &["lvcreate", "-V", "1g", "-n", "thin", "vg"],
        FAILED,
        "already exists",
    );
    assert_fails(
        &server,
        &["lvcreate", "-V", "1g", "-n", "-bad", "vg"],
        USAGE,
        "",
    );
    assert_fails(
        &server,
        &["lvcreate", "-V", "1g", "-n", "sp ace", "vg"],
        FAILED,
        "invalid logical volume name",
    );
    assert_fails(
        &server,
        &["lvcreate", "-V", "1g", "-n", "x", "nope"],
        FAILED,
        "not found",
    );
    assert_fails(
        &server,
        &["lvcreate", "-L", "1g", "-V", "1g", "-n", "x", "vg"],
        USAGE,
        "cannot be used",
    );
    assert_fails(&server, &["lvcreate", "-V", "1g", "vg"], USAGE, "--name");
    let lvs = json(&server, "lvs");
    assert_eq!(rows(&lvs, "lv").len(), 2, "refused lvcreates left no LV");
    assert_eq!(
        num(&rows(&json(&server, "vgs"), "vg")[0]["vg_free"]),
        free_before,
        "and allocated nothing"
    );
    let thin = server.lv_report("vg", "thin");
    assert_eq!(num(&thin["lv_size"]), 1 << 30);
    assert_eq!(thin["data_percent"], "0.00");
    assert_eq!(thin["lv_attr"], "Vwi-a-tz--");
    assert_eq!(thin["lv_layout"], "thin,linear");
    let thick = server.lv_report("vg", "thick");
    assert_eq!(num(&thick["lv_size"]), 100 << 20);
    assert_eq!(thick["data_percent"], "");
    assert_eq!(num(&thick["lv_allocated_size"]), 100 << 20);
    assert!(server.bv_ok(&["lvs"]).contains("LSize"));
    assert!(server
        .bv_ok(&["lvdisplay", "vg/thin"])
        .contains(&server.uri("vg/thin")));

    // lvextend.
    assert!(server
        .bv_ok(&["lvextend", "-L", "+1G", "vg/thin"])
        .contains("successfully resized"));
    assert_eq!(num(&server.lv_report("vg", "thin")["lv_size"]), 2 << 30);
    server.bv_ok(&["lvextend", "-L", "200m", "vg/thick"]);
    assert_eq!(
        num(&server.lv_report("vg", "thick")["lv_allocated_size"]),
        200 << 20
    );
    assert_fails(
        &server,
        &["lvextend", "-L", "1G", "vg/thin"],
        FAILED,
        "not larger",
    );
    assert_fails(&server, &["lvextend", "-L", "+1G", "thin"], USAGE, "VG/LV");
    assert_fails(
        &server,
        &["lvextend", "-L", "-1G", "vg/thin"],
        USAGE,
        "shrinking",
    );

    // An LV in use cannot be removed.
    let uri = server.uri("vg/thin");
    let mut holder = Command::new(PYTHON)
        .args(["-c", &format!("import nbd,time\nh=nbd.NBD()\nh.connect_uri('{uri}')\nprint('open',flush=True)\ntime.sleep(30)")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.lv_report("vg", "thin")["lv_device_open"] != "open" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "LV never showed as open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.lv_report("vg", "thin")["lv_attr"], "Vwi-aotz--");
    assert_fails(&server, &["lvremove", "vg/thin"], FAILED, "in use");
    assert_fails(&server, &["vgremove", "-f", "vg"], FAILED, "in use");
    let _ = holder.kill();
    let _ = holder.wait();
    let started = Instant::now();
    while server.lv_report("vg", "thin")["lv_device_open"] == "open" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "LV stayed open after the client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Removal.
    assert_fails(&server, &["lvremove", "vg/nope"], FAILED, "not found");
    assert!(server
        .bv_ok(&["lvremove", "vg/thick"])
        .contains("successfully removed"));
    assert_fails(&server, &["vgremove", "vg"], FAILED, "still contains");
    assert_fails(
        &server,
        &["pvremove", "a.img"],
        FAILED,
        "belongs to volume group",
    );
    server.bv_ok(&["vgremove", "-f", "vg"]);
    assert!(rows(&json(&server, "lvs"), "lv").is_empty());
    assert!(server
        .bv_ok(&["pvremove", "a.img"])
        .contains("successfully wiped"));
    let label = std::fs::read(server.path("a.img")).unwrap();
    assert!(label[..4096].iter().all(|&b| b == 0), "label wiped");
    assert_eq!(rows(&json(&server, "pvs"), "pv").len(), 2);
    assert_fails(&server, &["pvremove", "a.img"], FAILED, "not found");
    // pvcreate -f is needed to take over a device labelled elsewhere.
    let other = Server::start();
    other.bv_ok(&["pvcreate", "--size", "64m", "foreign.img"]);
    std::fs::copy(other.path("foreign.img"), server.path("foreign.img")).unwrap();
    drop(other);
    assert_fails(&server, &["pvcreate", "foreign.img"], FAILED, "use -f");
    assert_eq!(rows(&json(&server, "pvs"), "pv").len(), 2);
    server.bv_ok(&["pvcreate", "-f", "foreign.img"]);
    assert_eq!(rows(&json(&server, "pvs"), "pv").len(), 3);
}

#[test]
fn a_missing_server_is_a_clear_error() {
    let server = Server::start();
    let output = tests::run_with_limit(
        Command::new(tests::bv_binary()).args(["--data-dir", "/nonexistent-bv", "lvs"]),
        Duration::from_secs(30),
    );
    let (code, stderr) = (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(code, Some(FAILED));
    assert!(stderr.contains("is `bv serve` running"), "{stderr}");
    let (code, _, stderr) = server.bv(&["frobnicate"]);
    assert_eq!(code, USAGE, "{stderr}");
}

#[test]
fn metadata_and_labels_survive_restart() {
    let mut server = Server::start();
    server.make_vg("vg", 2, "128m");
    server.bv_ok(&["lvcreate", "-V", "300m", "-n", "a", "vg"]);
    server.restart();
    assert_eq!(num(&server.lv_report("vg", "a")["lv_size"]), 300 << 20);
    let pvs = rows(&json(&server, "pvs"), "pv");
    assert!(pvs.iter().all(|pv| pv["pv_attr"] == "a--"), "{pvs:?}");
    // A PV replaced behind the server's back is reported missing, not used.
    let status = server.stop();
    assert!(status.success(), "clean shutdown exits 0");
    let path = server.path("vg-pv1.img");
    std::fs::remove_file(&path).unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    server.restart();
    let pvs = rows(&json(&server, "pvs"), "pv");
    let replaced = pvs
        .iter()
        .find(|pv| pv["pv_name"] == path.to_str().unwrap())
        .unwrap();
    assert_eq!(replaced["pv_attr"], "a-m");
    assert_eq!(replaced["pv_missing"], "missing");
    assert!(server
        .bv_ok(&["pvdisplay", path.to_str().unwrap()])
        .contains("no PV label"));
}

#[test]
fn redundancy_verbs_and_their_errors() {
    let server = Server::start();
    server.bv_ok(&["pvcreate", "--size", "64m", "a.img", "b.img", "c.img"]);
    server.bv_ok(&["vgcreate", "vg", "a.img", "b.img", "c.img"]);
    server.bv_ok(&["pvcreate", "--size", "64m", "loose.img"]);
    fn lvcreate(options: &str) -> Vec<&str> {
        let mut args = vec!["lvcreate"];
        args.extend(options.split(' '));
        args
    }

    // Layouts the VG cannot place, or that make no sense, are refused, and
    // nothing is left.
    for (options, code, needle) in [
        (
            "--type raid5 -i 3 -V 16m -n r vg",
            FAILED,
            "needs 4 physical volumes",
        ),
        (
            "--type ec --ec 4+0 -V 16m -n r vg",
            FAILED,
            "at least 1 parity shard",
        ),
        ("--type raid7 -V 16m -n r vg", USAGE, "unknown --type raid7"),
        (
            "--raidintegrity y -V 16m -n r vg",
            FAILED,
            "--raidintegrity needs a mirror",
        ),
        (
            "--type raid5 -i 2 --raidintegrity y -V 16m -n r vg",
            FAILED,
            "--raidintegrity needs a mirror",
        ),
        (
            "--type raid1 -m 1 --raidintegrity yes -V 16m -n r vg",
            USAGE,
            "'yes'",
        ),
    ] {
        assert_fails(&server, &lvcreate(options), code, needle);
    }
    assert!(rows(&json(&server, "lvs"), "lv").is_empty());

    server.bv_ok(&lvcreate("-V 16m -n plain vg"));
    server.bv_ok(&lvcreate(
        "--type raid1 -m 1 --maxrecoveryrate 512 -V 16m -n mirror vg",
    ));
    let mirror = server.lv_report("vg", "mirror");
    assert_eq!(mirror["segtype"], "raid1", "{mirror}");
    assert_eq!(mirror["lv_health_status"], "", "{mirror}");
    // LVM's default unit for a rate is KiB.
    assert_eq!(mirror["raid_max_recovery_rate"], "524288", "{mirror}");
    let out = server.bv_ok(&["lvchange", "--maxrecoveryrate", "2m", "vg/mirror"]);
    assert!(out.contains("vg/mirror changed"), "{out}");
    let mirror = server.lv_report("vg", "mirror");
    assert_eq!(mirror["raid_max_recovery_rate"], "2097152", "{mirror}");
    assert_eq!(mirror["raid_integrity"], "n", "{mirror}");
    server.bv_ok(&lvcreate(
        "--type raid1 -m 1 --raidintegrity y -V 16m -n checked vg",
    ));
    let checked = server.lv_report("vg", "checked");
    assert_eq!(checked["raid_integrity"], "y", "{checked}");
    let shown = server.bv_ok(&["lvdisplay", "vg/checked"]);
    assert!(shown.contains("--raidintegrity y"), "{shown}");

    let refused: &[(&[&str], i32, &str)] = &[
        // Repair and scrub are for redundant LVs.
        (&["lvconvert", "--repair", "vg/plain"], FAILED, "is linear"),
        (
            &["lvchange", "--syncaction", "check", "vg/plain"],
            FAILED,
            "needs a redundant layout",
        ),
        (
            &["lvchange", "--syncaction", "fix", "vg/mirror"],
            USAGE,
            "'fix'",
        ),
        (&["lvconvert", "--repair", "vg/nope"], FAILED, "not found"),
        // Recovery rates are for redundant LVs, and are sizes per second.
        (
            &["lvchange", "--maxrecoveryrate", "1m", "vg/plain"],
            FAILED,
            "needs a redundant layout",
        ),
        (
            &["lvchange", "--maxrecoveryrate", "fast", "vg/mirror"],
            USAGE,
            "invalid size \"fast\"",
        ),
        (&["lvchange", "vg/mirror"], USAGE, "--syncaction"),
        (
            &[
                "lvcreate",
                "--maxrecoveryrate",
                "1m",
                "-V",
                "16m",
                "-n",
                "r",
                "vg",
            ],
            FAILED,
            "needs a redundant layout",
        ),
        // Fault modes.
        (
            &["pvchange", "--fault", "melt", "c.img"],
            FAILED,
            "invalid fault mode 'melt'",
        ),
        (
            &["pvchange", "--fault", "eio:2", "c.img"],
            FAILED,
            "in (0, 1]",
        ),
        (
            &["pvchange", "--fault", "fail", "nope.img"],
            FAILED,
            "not found",
        ),
        // pvmove needs a PV of a VG.
        (&["pvmove", "loose.img"], FAILED, "not in a volume group"),
        (&["pvmove", "nope.img"], FAILED, "not found"),
        // VG policies.
        (
            &["vgchange", "--raid-fault-policy", "explode", "vg"],
            USAGE,
            "'explode'",
        ),
        (
            &["vgchange", "--raid-fault-policy", "warn", "nope"],
            FAILED,
            "not found",
        ),
        // Report fields are named.
        (
            &["lvs", "-o", "lv_name,lv_colour"],
            FAILED,
            "unknown field \"lv_colour\"",
        ),
    ];
    for (args, code, needle) in refused {
        assert_fails(&server, args, *code, needle);
    }

    // Every fault mode shows in pvs.
    for mode in ["eio:0.5", "slow:20", "corrupt:0.01", "fail", "none"] {
        server.bv_ok(&["pvchange", "--fault", mode, "loose.img"]);
        assert_eq!(server.pv_report("loose.img")["pv_fault"], mode);
    }

    server.bv_ok(&["vgchange", "--raid-fault-policy", "allocate", "vg"]);
    let vgs = json(&server, "vgs");
    assert_eq!(rows(&vgs, "vg")[0]["raid_fault_policy"], "allocate");
    let out = server.bv_ok(&["vgreduce", "--removemissing", "vg"]);
    assert!(out.contains("no failed physical volume"), "{out}");
    let out = server.bv_ok(&[
        "lvs",
        "-o",
        "+raid_mismatch_count",
        "--reportformat",
        "json",
    ]);
    assert!(
        out.contains("raid_mismatch_count") && out.contains("lv_size"),
        "{out}"
    );
}
