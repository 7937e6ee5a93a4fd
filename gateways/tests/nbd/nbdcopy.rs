//! nbdcopy: bulk copies in and out, over one connection and over four
//! (multi-conn), with many requests in flight.

use rand::{Rng, SeedableRng};

use crate::harness::*;

/// 32 MiB of random data with some zero megabytes, written to `path`.
fn source_image(path: &std::path::Path, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut image = vec![0u8; 32 * MIB as usize];
    for (index, chunk) in image.chunks_mut(MIB as usize).enumerate() {
        if index % 4 != 2 {
            rng.fill(chunk);
        }
    }
    std::fs::write(path, &image).expect("write source image");
    image
}

async fn round_trip(extra_args: &[&str], seed: u64) {
    let fixture = Fixture::start(vec![ExportSpec::new("vg0/lv0", 32 * MIB)]).await;
    let source = fixture.dir.path().join("source.img");
    let back = fixture.dir.path().join("back.img");
    let image = source_image(&source, seed);
    let uri = fixture.uri("vg0/lv0");
    let (source_arg, back_arg) = (source.to_string_lossy(), back.to_string_lossy());

    let mut into = extra_args.to_vec();
    into.extend_from_slice(&["--flush", &source_arg, &uri]);
    run_ok("nbdcopy", &into).await;
    assert!(
        file_bytes(fixture.file("vg0/lv0"), 0, image.len()) == image,
        "backing file differs from the source after nbdcopy {extra_args:?}"
    );

    std::fs::File::create(&back).expect("create destination");
    let mut out = extra_args.to_vec();
    out.extend_from_slice(&[&uri, &back_arg]);
    run_ok("nbdcopy", &out).await;
    run_ok("cmp", &[&source_arg, &back_arg]).await;
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trips_over_one_connection() {
    round_trip(&["--connections=1"], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trips_over_four_connections_with_64_requests_each() {
    round_trip(&["--connections=4", "--requests=64"], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_between_two_exports_of_one_server() {
    let fixture = Fixture::start(vec![
        ExportSpec::new("vg0/a", 16 * MIB),
        ExportSpec::new("vg0/b", 16 * MIB),
    ])
    .await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let mut data = vec![0u8; 4 * MIB as usize];
    rng.fill(&mut data[..]);
    write_file_bytes(fixture.file("vg0/a"), 8 * MIB, &data);
    run_ok(
        "nbdcopy",
        &[
            "--requests=64",
            &fixture.uri("vg0/a"),
            &fixture.uri("vg0/b"),
        ],
    )
    .await;
    assert!(file_bytes(fixture.file("vg0/b"), 8 * MIB, data.len()) == data);
    assert!(file_bytes(fixture.file("vg0/b"), 0, 8 * MIB as usize)
        .iter()
        .all(|&b| b == 0));
    fixture.stop().await;
}
