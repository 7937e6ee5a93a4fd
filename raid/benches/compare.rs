//! Side-by-side figures for choosing the Reed-Solomon crate: the same
//! encode, reconstruct and parity-update work done with
//! `reed-solomon-erasure` (GF(2^8) matrix code, C SIMD kernels) and
//! `reed-solomon-simd` (GF(2^16) Leopard FFT code, Rust SIMD).
//! Throughput counts user (data-shard) bytes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use reed_solomon_erasure::galois_8::ReedSolomon;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use std::hint::black_box;

const SHAPES: [(usize, usize); 3] = [(2, 1), (4, 2), (8, 3)];
const SHARD_BYTES: [usize; 2] = [4096, 65536];

fn shards(count: usize, len: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            (0..len)
                .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ seed)
                .collect()
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("rs_encode");
    for (k, m) in SHAPES {
        for len in SHARD_BYTES {
            let id = format!("{k}+{m}/{}K", len / 1024);
            group.throughput(Throughput::Bytes((k * len) as u64));
            let data = shards(k, len, 1);
            let mut parity = shards(m, len, 2);

            let rse = ReedSolomon::new(k, m).expect("shape");
            group.bench_function(BenchmarkId::new("erasure", &id), |b| {
                b.iter(|| {
                    rse.encode_sep(black_box(&data), &mut parity)
                        .expect("encode")
                })
            });

            let mut enc = ReedSolomonEncoder::new(k, m, len).expect("shape");
            group.bench_function(BenchmarkId::new("simd", &id), |b| {
                b.iter(|| {
                    enc.reset(k, m, len).expect("reset");
                    for d in &data {
                        enc.add_original_shard(black_box(d)).expect("add");
                    }
                    let out = enc.encode().expect("encode");
                    for (p, r) in parity.iter_mut().zip(out.recovery_iter()) {
                        p.copy_from_slice(r);
                    }
                })
            });
            group.bench_function(BenchmarkId::new("simd-new-encoder", &id), |b| {
                b.iter(|| {
                    let mut enc = ReedSolomonEncoder::new(k, m, len).expect("shape");
                    for d in &data {
                        enc.add_original_shard(black_box(d)).expect("add");
                    }
                    let out = enc.encode().expect("encode");
                    for (p, r) in parity.iter_mut().zip(out.recovery_iter()) {
                        p.copy_from_slice(r);
                    }
                })
            });
        }
    }
    group.finish();
}

/// The worst case: the first `m` data shards are lost and rebuilt from the
/// rest plus every parity shard.
fn reconstruct(c: &mut Criterion) {
    let mut group = c.benchmark_group("rs_reconstruct");
    for (k, m) in SHAPES {
        for len in SHARD_BYTES {
            let id = format!("{k}+{m}/{}K", len / 1024);
            group.throughput(Throughput::Bytes((k * len) as u64));
            let data = shards(k, len, 1);

            let rse = ReedSolomon::new(k, m).expect("shape");
            let mut all = data.clone();
            all.extend(shards(m, len, 0));
            {
                let (d, p) = all.split_at_mut(k);
                rse.encode_sep(d, p).expect("encode");
            }
            let mut work = all.clone();
            group.bench_function(BenchmarkId::new("erasure", &id), |b| {
                b.iter(|| {
                    let mut slots: Vec<(&mut [u8], bool)> = work
                        .iter_mut()
                        .enumerate()
                        .map(|(i, s)| (s.as_mut_slice(), i >= m))
                        .collect();
                    rse.reconstruct_data(&mut slots).expect("reconstruct");
                })
            });
            assert_eq!(work, all);

            let mut dec = ReedSolomonDecoder::new(k, m, len).expect("shape");
            group.bench_function(BenchmarkId::new("simd", &id), |b| {
                b.iter(|| {
                    dec.reset(k, m, len).expect("reset");
                    for (i, d) in data.iter().enumerate().skip(m) {
                        dec.add_original_shard(i, black_box(d)).expect("add");
                    }
                    for j in 0..m {
                        dec.add_recovery_shard(j, black_box(&all[k + j]))
                            .expect("add");
                    }
                    let out = dec.decode().expect("decode");
                    for (i, restored) in out.restored_original_iter() {
                        work[i].copy_from_slice(restored);
                    }
                })
            });
        }
    }
    group.finish();
}

/// Read-modify-write of one data shard: parity ^= f(delta).
fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("rs_update");
    for (k, m) in SHAPES {
        for len in SHARD_BYTES {
            let id = format!("{k}+{m}/{}K", len / 1024);
            group.throughput(Throughput::Bytes(len as u64));
            let delta = shards(1, len, 9).remove(0);
            let mut parity = shards(m, len, 2);
            let index = k / 2;

            let rse = ReedSolomon::new(k, m).expect("shape");
            let mut scratch = shards(m, len, 0);
            group.bench_function(BenchmarkId::new("erasure", &id), |b| {
                b.iter(|| {
                    rse.encode_single_sep(index, black_box(&delta), &mut scratch)
                        .expect("encode");
                    for (p, s) in parity.iter_mut().zip(&scratch) {
                        p.iter_mut().zip(s).for_each(|(p, s)| *p ^= s);
                    }
                })
            });

            let zero = vec![0u8; len];
            let mut enc = ReedSolomonEncoder::new(k, m, len).expect("shape");
            group.bench_function(BenchmarkId::new("simd", &id), |b| {
                b.iter(|| {
                    enc.reset(k, m, len).expect("reset");
                    for i in 0..k {
                        let shard = if i == index { &delta } else { &zero };
                        enc.add_original_shard(black_box(shard)).expect("add");
                    }
                    let out = enc.encode().expect("encode");
                    for (p, r) in parity.iter_mut().zip(out.recovery_iter()) {
                        p.iter_mut().zip(r).for_each(|(p, r)| *p ^= r);
                    }
                })
            });
        }
    }
    group.finish();
}

fn checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    for len in SHARD_BYTES {
        let block = shards(1, len, 3).remove(0);
        group.throughput(Throughput::Bytes(len as u64));
        let id = format!("{}K", len / 1024);
        group.bench_function(BenchmarkId::new("crc32c", &id), |b| {
            b.iter(|| crc32c::crc32c(black_box(&block)))
        });
        group.bench_function(BenchmarkId::new("blake3", &id), |b| {
            b.iter(|| blake3::hash(black_box(&block)))
        });
        group.bench_function(BenchmarkId::new("crc32c-per-4K", &id), |b| {
            b.iter(|| {
                block
                    .chunks(4096)
                    .map(|c| crc32c::crc32c(black_box(c)))
                    .fold(0u32, |a, x| a ^ x)
            })
        });
        group.bench_function(BenchmarkId::new("blake3-per-4K", &id), |b| {
            b.iter(|| {
                block
                    .chunks(4096)
                    .map(|c| blake3::hash(black_box(c)).as_bytes()[0])
                    .fold(0u8, |a, x| a ^ x)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = encode, reconstruct, update, checksum
}
criterion_main!(benches);
