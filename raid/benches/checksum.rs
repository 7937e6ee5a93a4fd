//! Block checksum throughput: CRC-32C (the choice, `blockvirt::volume::block_checksum`)
//! against BLAKE3, per 4 KiB block, over 4 KiB and 64 KiB of blocks, and
//! BLAKE3 over a whole 64 KiB buffer (its best case: wide SIMD over many
//! 1 KiB chunks at once).

use blockvirt::volume::{block_checksum, CHECKSUM_BLOCK_BYTES};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

fn checksums(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    for len in [4096usize, 65536] {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ 3).collect();
        group.throughput(Throughput::Bytes(len as u64));
        let id = format!("{}K", len / 1024);
        group.bench_function(BenchmarkId::new("crc32c-per-block", &id), |b| {
            b.iter(|| {
                black_box(&data)
                    .chunks(CHECKSUM_BLOCK_BYTES)
                    .fold(0u32, |a, block| a ^ block_checksum(block))
            })
        });
        group.bench_function(BenchmarkId::new("blake3-per-block", &id), |b| {
            b.iter(|| {
                black_box(&data)
                    .chunks(CHECKSUM_BLOCK_BYTES)
                    .fold(0u8, |a, block| a ^ blake3::hash(block).as_bytes()[0])
            })
        });
        if len > CHECKSUM_BLOCK_BYTES {
            group.bench_function(BenchmarkId::new("blake3-whole", &id), |b| {
                b.iter(|| blake3::hash(black_box(&data)))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = checksums
}
criterion_main!(benches);
