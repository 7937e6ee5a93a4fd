//! QEMU's NBD client: qemu-io for every I/O operation, qemu-img for bulk
//! copies and the allocation map. Content is checked through the backing
//! file too, so a server that answered "ok" without writing would fail.

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::harness::*;

/// Runs qemu-io commands against `uri`; every command must succeed.
async fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.push("-c");
        args.push(command);
    }
    args.push(uri);
    let output = run_tool("qemu-io", &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // qemu-io reports failed commands in its output, not always its status.
    let failed = !output.status.success()
        || stdout.contains("failed")
        || stdout.contains("error")
        || !stderr.trim().is_empty();
    assert!(
        !failed,
        "qemu-io {commands:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_reads_zeroes_discards_and_flushes() {
    let fixture = Fixture::start(vec![ExportSpec::new("vg0/lv0", 16 * MIB)]).await;
    let uri = fixture.uri("vg0/lv0");
    // Prefill so zeroing and discarding visibly change something.
    write_file_bytes(fixture.file("vg0/lv0"), 0, &vec![0xee; 8 * MIB as usize]);
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -z 1M 1M",
            "read -P 0 1M 1M",
            "write -z -u 2M 1M",
            "read -P 0 2M 1M",
            "discard 3M 1M",
            "write -f -P 0xcd 4M 64k",
            "read -P 0xcd 4M 64k",
            "write -z -f 5M 64k",
            "aio_write -P 0x11 6M 64k",
            "aio_write -P 0x12 6208k 64k",
            "aio_write -P 0x13 6272k 64k",
            "aio_write -f -P 0x14 6336k 64k",
            "aio_flush",
            "flush",
            "read -P 0x12 6208k 64k",
            "read -P 0xee 7M 1M",
        ],
    )
    .await;
    let file = fixture.file("vg0/lv0");
    assert!(file_bytes(file, 0, MIB as usize).iter().all(|&b| b == 0xab));
    assert!(file_bytes(file, MIB, 2 * MIB as usize)
        .iter()
        .all(|&b| b == 0));
    assert!(file_bytes(file, 4 * MIB, 65536).iter().all(|&b| b == 0xcd));
    assert!(file_bytes(file, 5 * MIB, 65536).iter().all(|&b| b == 0));
    for (index, pattern) in [0x11u8, 0x12, 0x13, 0x14].into_iter().enumerate() {
        let offset = 6 * MIB + index as u64 * 65536;
        assert!(
            file_bytes(file, offset, 65536)
                .iter()
                .all(|&b| b == pattern),
            "aio_write {pattern:#x}"
        );
    }
    assert!(file_bytes(file, 7 * MIB, MIB as usize)
        .iter()
        .all(|&b| b == 0xee));
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_sub_block_writes_are_merged_by_the_client() {
    // The advertised 4096-byte minimum block makes QEMU do read-modify-write
    // itself: a 512-byte write lands intact, neighbours untouched.
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    write_file_bytes(fixture.file("lv"), 0, &vec![0x77; 8192]);
    qemu_io(
        &fixture.uri("lv"),
        &[
            "write -P 0x05 512 512",
            "read -P 0x05 512 512",
            "read -P 0x77 0 512",
        ],
    )
    .await;
    let bytes = file_bytes(fixture.file("lv"), 0, 8192);
    assert!(bytes[..512].iter().all(|&b| b == 0x77));
    assert!(bytes[512..1024].iter().all(|&b| b == 0x05));
    assert!(bytes[1024..].iter().all(|&b| b == 0x77));
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_fast_zero_is_refused_by_a_device_that_cannot_promise_it() {
    let fixture = Fixture::start(vec![ExportSpec::new("nofast", 4 * MIB).knobs(Knobs {
        refuse_fast_zero: true,
        ..Knobs::default()
    })])
    .await;
    let uri = fixture.uri("nofast");
    // `-n`: no slow fallback, i.e. NBD_CMD_FLAG_FAST_ZERO.
    let output = run_tool("qemu-io", &["-f", "raw", "-c", "write -z -n 0 64k", &uri]).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("Operation not supported"), "{text}");
    // Without the flag the same request succeeds.
    qemu_io(&uri, &["write -z 0 64k", "read -P 0 0 64k"]).await;
    fixture.stop().await;
}

/// A 24 MiB image: random data with zero runs, so copies meet both.
fn random_image(path: &std::path::Path) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6e62_6400);
    let mut image = vec![0u8; 24 * MIB as usize];
    for (index, chunk) in image.chunks_mut(MIB as usize).enumerate() {
        if index % 3 != 1 {
            rng.fill(chunk);
        }
    }
    std::fs::write(path, &image).expect("write source image");
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_round_trips_an_image_byte_for_byte() {
    let fixture = Fixture::start(vec![ExportSpec::new("vg0/lv0", 24 * MIB)]).await;
    let source = fixture.dir.path().join("source.img");
    let back = fixture.dir.path().join("back.img");
    let image = random_image(&source);
    let uri = fixture.uri("vg0/lv0");
    let (source_arg, back_arg) = (source.to_string_lossy(), back.to_string_lossy());
    run_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", &source_arg, &uri],
    )
    .await;
    assert!(
        file_bytes(fixture.file("vg0/lv0"), 0, image.len()) == image,
        "backing file differs from the source image"
    );
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &uri, &back_arg],
    )
    .await;
    run_ok("cmp", &[&source_arg, &back_arg]).await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_map_reports_data_and_zeroes() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 8 * MIB)]).await;
    write_file_bytes(fixture.file("lv"), 2 * MIB, &vec![0x42; MIB as usize]);
    let json = run_ok(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &fixture.uri("lv")],
    )
    .await;
    let map: Value = serde_json::from_str(&json).expect("qemu-img prints JSON");
    let extents: Vec<(u64, u64, bool, bool)> = map
        .as_array()
        .expect("map array")
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap_or(u64::MAX),
                e["length"].as_u64().unwrap_or(u64::MAX),
                e["data"].as_bool().unwrap_or_default(),
                e["zero"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        extents,
        vec![
            (0, 2 * MIB, false, true),
            (2 * MIB, MIB, true, false),
            (3 * MIB, 5 * MIB, false, true),
        ],
        "{json}"
    );
    fixture.stop().await;
}
