//! Codec throughput: XOR (raid5) and Reed-Solomon encode, reconstruct and
//! parity update, on 4 KiB and 64 KiB shards. Throughput counts user
//! bytes: the K data shards for encode and reconstruct, the changed shard
//! for update.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raid::{ErasureCodec, ReedSolomon, Xor};
use std::hint::black_box;

const SHARD_BYTES: [usize; 2] = [4096, 65536];

fn codecs() -> Vec<(String, Box<dyn ErasureCodec>)> {
    let mut all: Vec<(String, Box<dyn ErasureCodec>)> = vec![
        // raid5 -i 3, the layout `bv-bench fio` measures end to end.
        ("xor/3+1".into(), Box::new(Xor::new(3).expect("xor"))),
        ("xor/4+1".into(), Box::new(Xor::new(4).expect("xor"))),
        ("xor/8+1".into(), Box::new(Xor::new(8).expect("xor"))),
    ];
    for (k, m) in [(2, 1), (4, 2), (8, 3)] {
        all.push((
            format!("rs/{k}+{m}"),
            Box::new(ReedSolomon::new(k, m).expect("rs")),
        ));
    }
    all
}

fn shards(count: usize, len: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            (0..len)
                .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(7) ^ seed)
                .collect()
        })
        .collect()
}

fn size(len: usize) -> String {
    format!("{}K", len / 1024)
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, codec) in codecs() {
        for len in SHARD_BYTES {
            let k = codec.data_shards();
            group.throughput(Throughput::Bytes((k * len) as u64));
            let data = shards(k, len, 1);
            let data: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let mut parity = shards(codec.parity_shards(), len, 2);
            group.bench_function(BenchmarkId::new(&name, size(len)), |b| {
                b.iter(|| {
                    let mut parity: Vec<&mut [u8]> =
                        parity.iter_mut().map(Vec::as_mut_slice).collect();
                    codec.encode(black_box(&data), &mut parity).expect("encode")
                })
            });
        }
    }
    group.finish();
}

/// The worst case: the first M data shards are lost.
fn reconstruct(c: &mut Criterion) {
    let mut group = c.benchmark_group("reconstruct");
    for (name, codec) in codecs() {
        for len in SHARD_BYTES {
            let (k, m) = (codec.data_shards(), codec.parity_shards());
            group.throughput(Throughput::Bytes((k * len) as u64));
            let mut all = shards(k + m, len, 1);
            {
                let (data, parity) = all.split_at_mut(k);
                let data: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                let mut parity: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
                codec.encode(&data, &mut parity).expect("encode");
            }
            let present: Vec<bool> = (0..k + m).map(|i| i >= m).collect();
            let mut work = all.clone();
            group.bench_function(BenchmarkId::new(&name, size(len)), |b| {
                b.iter(|| {
                    let mut slots: Vec<&mut [u8]> =
                        work.iter_mut().map(Vec::as_mut_slice).collect();
                    codec
                        .reconstruct_data(&mut slots, black_box(&present))
                        .expect("reconstruct")
                })
            });
            assert_eq!(work, all);
        }
    }
    group.finish();
}

/// Read-modify-write of one whole data shard.
fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    for (name, codec) in codecs() {
        for len in SHARD_BYTES {
            group.throughput(Throughput::Bytes(len as u64));
            let delta = shards(1, len, 9).remove(0);
            let mut parity = shards(codec.parity_shards(), len, 2);
            let index = codec.data_shards() / 2;
            group.bench_function(BenchmarkId::new(&name, size(len)), |b| {
                b.iter(|| {
                    let mut parity: Vec<&mut [u8]> =
                        parity.iter_mut().map(Vec::as_mut_slice).collect();
                    codec
                        .update_parity(index, black_box(&delta), &mut parity)
                        .expect("update")
                })
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
    targets = encode, reconstruct, update
}
criterion_main!(benches);
