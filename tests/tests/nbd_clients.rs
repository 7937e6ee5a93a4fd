//! Real NBD clients against a real `bv serve`: qemu-img, qemu-io, nbdinfo,
//! nbdcopy; several connections at once; a full pool; live growth; and a
//! malformed peer that must not disturb anyone else.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{random_bytes, random_file, run_ok, run_with_limit, Server};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;

fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw"]);
    for c in commands {
        command.args(["-c", c]);
    }
    command.arg(uri);
    let out = run_ok(&mut command, LIMIT);
    assert!(!out.contains("failed"), "qemu-io {commands:?}: {out}");
    out
}

fn map(uri: &str) -> Vec<(u64, u64, String)> {
    let out = run_ok(Command::new("nbdinfo").args(["--map", uri]), LIMIT);
    out.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (
                fields[0].parse().unwrap(),
                fields[1].parse().unwrap(),
                fields[3].to_string(),
            )
        })
        .collect()
}

fn data_percent(server: &Server, vg: &str, lv: &str) -> f64 {
    server.lv_report(vg, lv)["data_percent"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn qemu_img_convert_round_trip_keeps_holes() {
    let server = Server::start();
    server.make_vg("vg", 2, "256m");
    server.bv_ok(&["lvcreate", "-V", "128m", "-n", "disk", "vg"]);
    // 128 MiB image: 24 MiB of data at 40 MiB, zeroes elsewhere.
    let source = server.path("source.img");
    let mut image = vec![0u8; 128 * MIB];
    image[40 * MIB..64 * MIB].copy_from_slice(&random_bytes(24 * MIB, 7));
    std::fs::write(&source, &image).unwrap();

    let uri = server.uri("vg/disk");
    let source_arg = source.to_str().unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw", source_arg, &uri]),
        LIMIT,
    );
    let copy = server.path("copy.img");
    run_ok(
        Command::new("qemu-img").args([
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            copy.to_str().unwrap(),
        ]),
        LIMIT,
    );
    assert!(
        std::fs::read(&copy).unwrap() == image,
        "image differs after the round trip"
    );
    run_ok(
        Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", source_arg, &uri]),
        LIMIT,
    );

    // Only the data was allocated: 6 of 32 extents.
    assert_eq!(data_percent(&server, "vg", "disk"), 18.75);
    let holes_and_data: Vec<(u64, u64, String)> = map(&uri);
    assert_eq!(
        holes_and_data,
        vec![
            (0, 40 << 20, "hole,zero".to_string()),
            (40 << 20, 24 << 20, "data".to_string()),
            (64 << 20, 64 << 20, "hole,zero".to_string()),
        ]
    );
    let qemu_map = run_ok(
        Command::new("qemu-img").args(["map", "-f", "raw", "--output=json", &uri]),
        LIMIT,
    );
    let qemu_map: Value = serde_json::from_str(&qemu_map).unwrap();
    assert_eq!(qemu_map[1]["data"], true);
    assert_eq!(qemu_map[1]["start"], 40 << 20);
}

#[test]
fn qemu_io_reads_writes_discards_and_zeroes() {
    let server = Server::start();
    server.make_vg("vg", 1, "128m");
    server.bv_ok(&["lvcreate", "-V", "64m", "-n", "disk", "vg"]);
    let uri = server.uri("vg/disk");
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "write -f -P 0xcd 1M 64k",
            "write -P 0x11 4M 4M",
            "aio_write -P 0x21 12M 512k",
            "aio_write -P 0x22 13M 512k",
            "aio_write -P 0x23 14M 512k",
            "aio_flush",
            "flush",
        ],
    );
    qemu_io(
        &uri,
        &[
            "read -P 0xab 0 1M",
            "read -P 0xcd 1M 64k",
            "read -P 0x22 13M 512k",
        ],
    );
    // Zeroes: partial chunk (4 KiB), whole chunks, with and without unmap, with FUA.
    qemu_io(
        &uri,
        &[
            "write -z 8k 4k",
            "read -P 0 8k 4k",
            "read -P 0xab 0 8k",
            "read -P 0xab 12k 1012k",
        ],
    );
    qemu_io(
        &uri,
        &[
            "write -z -u 4M 4M",
            "read -P 0 4M 4M",
            "write -z -f 1M 64k",
            "read -P 0 1M 64k",
        ],
    );
    qemu_io(
        &uri,
        &[
            "discard 12M 2M",
            "write -P 0x44 12M 4k",
            "read -P 0x44 12M 4k",
            "flush",
        ],
    );
    let status = map(&uri);
    assert!(
        status.iter().any(|(start, len, kind)| *start <= 4 << 20
            && start + len >= 8 << 20
            && kind == "hole,zero"),
        "write -z -u gave extent 1 back: {status:?}"
    );
    // Reads of never-written space are zeroes.
    qemu_io(&uri, &["read -P 0 32M 32M"]);
}

#[test]
fn nbdinfo_reports_the_export() {
    let server = Server::start();
    server.make_vg("vg", 1, "128m");
    server.bv_ok(&["lvcreate", "-V", "100m", "-n", "disk", "vg"]);
    let uri = server.uri("vg/disk");
    let out = run_ok(Command::new("nbdinfo").args(["--json", &uri]), LIMIT);
    let info: Value = serde_json::from_str(&out).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-name"], "vg/disk");
    assert_eq!(export["export-size"], 100 << 20);
    assert_eq!(export["block_size_minimum"], 4096);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
        "can_df",
        "can_cache",
    ] {
        assert_eq!(export[flag], true, "{flag}: {out}");
    }
    assert_eq!(export["is_read_only"], false);
    assert!(export["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "base:allocation"));
    let list = run_ok(
        Command::new("nbdinfo").args(["--list", "--json", &server.uri("")]),
        LIMIT,
    );
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["exports"].as_array().unwrap().len(), 1);
    // An unknown export is refused cleanly.
    let output = run_with_limit(Command::new("nbdinfo").arg(server.uri("vg/nope")), LIMIT);
    assert!(!output.status.success());
}

#[test]
fn nbdcopy_over_several_connections() {
    let server = Server::start();
    server.make_vg("vg", 3, "128m");
    server.bv_ok(&["lvcreate", "-V", "96m", "-n", "a", "vg"]);
    server.bv_ok(&["lvcreate", "-V", "96m", "-n", "b", "vg"]);
    let source = server.path("source.img");
    random_file(&source, 96 * MIB, 11);
    let source_arg = source.to_str().unwrap();
    run_ok(
        Command::new("nbdcopy").args([
            "--connections=4",
            "--requests=64",
            "--flush",
            source_arg,
            &server.uri("vg/a"),
        ]),
        LIMIT,
    );
    // LV to LV, then out to a file.
    run_ok(
        Command::new("nbdcopy").args(["--connections=4", &server.uri("vg/a"), &server.uri("vg/b")]),
        LIMIT,
    );
    let copy = server.path("copy.img");
    run_ok(
        Command::new("nbdcopy").args([&server.uri("vg/b"), copy.to_str().unwrap()]),
        LIMIT,
    );
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&source).unwrap());
    assert_eq!(data_percent(&server, "vg", "b"), 100.0);
}

#[test]
fn concurrent_clients_on_one_and_several_lvs() {
    let server = Server::start();
    server.make_vg("vg", 2, "128m");
    server.bv_ok(&["lvcreate", "-V", "64m", "-n", "shared", "vg"]);
    server.bv_ok(&["lvcreate", "-V", "64m", "-n", "other", "vg"]);
    let writers: Vec<std::thread::JoinHandle<()>> = (0..6u8)
        .map(|i| {
            let uri = server.uri(if i % 2 == 0 { "vg/shared" } else { "vg/other" });
            std::thread::spawn(move || {
                let offset = format!("{}M", u32::from(i) * 8);
                qemu_io(
                    &uri,
                    &[&format!("write -P {} {offset} 6M", 0x30 + i), "flush"],
                );
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    for i in 0..6u8 {
        let uri = server.uri(if i % 2 == 0 { "vg/shared" } else { "vg/other" });
        qemu_io(
            &uri,
            &[&format!("read -P {} {}M 6M", 0x30 + i, u32::from(i) * 8)],
        );
    }
}

#[test]
fn lvextend_is_seen_by_new_connections() {
    let server = Server::start();
    server.make_vg("vg", 1, "128m");
    server.bv_ok(&["lvcreate", "-V", "32m", "-n", "disk", "vg"]);
    let uri = server.uri("vg/disk");
    // Keep a connection open across the resize.
    let holder = {
        let uri = uri.clone();
        std::thread::spawn(move || {
            qemu_io(
                &uri,
                &["write -P 0x5a 0 1M", "sleep 1500", "read -P 0x5a 0 1M"],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    server.bv_ok(&["lvextend", "-L", "+32m", "vg/disk"]);
    let size = run_ok(Command::new("nbdinfo").args(["--size", &uri]), LIMIT);
    assert_eq!(size.trim(), (64u64 << 20).to_string());
    qemu_io(&uri, &["write -P 0x6b 60M 1M", "read -P 0x6b 60M 1M"]);
    holder.join().unwrap();
}

#[test]
fn a_full_pool_fails_fast_without_harming_other_lvs() {
    let server = Server::start();
    // 2 PVs of 7 extents each: 14 extents in all.
    server.make_vg("vg", 2, "29m");
    server.bv_ok(&["lvcreate", "-V", "64m", "-n", "a", "vg"]);
    server.bv_ok(&["lvcreate", "-V", "64m", "-n", "b", "vg"]);
    qemu_io(&server.uri("vg/b"), &["write -P 0xbb 0 8M", "flush"]);
    let uri_a = server.uri("vg/a");
    let output = run_with_limit(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 0xaa 0 56M",
            "-c",
            "flush",
            &uri_a,
        ]),
        LIMIT,
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("No space left on device"), "{text}");
    let vg: Value =
        serde_json::from_str(&server.bv_ok(&["vgs", "--reportformat", "json"])).unwrap();
    assert_eq!(vg["report"][0]["vg"][0]["data_percent"], "100.00");
    // B's allocated data is intact and still writable.
    qemu_io(
        &server.uri("vg/b"),
        &[
            "read -P 0xbb 0 8M",
            "write -P 0xbc 4M 1M",
            "read -P 0xbc 4M 1M",
        ],
    );
    // A new extent for B fails at once too.
    let output = run_with_limit(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 32M 4k", &server.uri("vg/b")]),
        LIMIT,
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("No space left on device"));
    // Discarding A gives the space back.
    qemu_io(&uri_a, &["discard 0 64M", "flush"]);
    assert_eq!(data_percent(&server, "vg", "a"), 0.0);
    qemu_io(
        &server.uri("vg/b"),
        &[
            "write -P 0xb2 32M 4M",
            "read -P 0xb2 32M 4M",
            "read -P 0xbb 0 4M",
        ],
    );
}

#[test]
fn a_malformed_peer_does_not_disturb_others() {
    let server = Server::start();
    server.make_vg("vg", 1, "64m");
    server.bv_ok(&["lvcreate", "-V", "16m", "-n", "disk", "vg"]);
    let address = ("127.0.0.1", server.nbd_port);
    // Garbage instead of client flags: the server hangs up on that peer.
    let mut bad = std::net::TcpStream::connect(address).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    bad.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    bad.write_all(&[0xff; 64]).unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    // A peer that connects and vanishes mid-handshake.
    drop(std::net::TcpStream::connect(address).unwrap());
    // Everyone else is served as before.
    qemu_io(
        &server.uri("vg/disk"),
        &["write -P 0x42 0 64k", "read -P 0x42 0 64k"],
    );
}
