//! Tests of the codecs: every erasure pattern of small codes, parity
//! updates against re-encoding, refusals, and the pinned parity format.

mod errors;
mod format;
mod roundtrip;

use rand::{rngs::SmallRng, RngCore, SeedableRng};

use super::{ErasureCodec, ReedSolomon, Xor};

/// Every codec shape the exhaustive tests cover.
fn codecs() -> Vec<Box<dyn ErasureCodec>> {
    let mut all: Vec<Box<dyn ErasureCodec>> = Vec::new();
    for k in 1..=8 {
        all.push(Box::new(Xor::new(k).expect("xor")));
    }
    for k in 1..=6 {
        for m in 1..=4 {
            all.push(Box::new(ReedSolomon::new(k, m).expect("rs")));
        }
    }
    all.push(Box::new(ReedSolomon::new(8, 3).expect("rs")));
    all
}

fn random_shards(count: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut shard = vec![0u8; len];
            rng.fill_bytes(&mut shard);
            shard
        })
        .collect()
}

/// Data shards followed by the parity the codec computes for them.
fn encoded(codec: &dyn ErasureCodec, data: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let len = data.first().map_or(0, Vec::len);
    let mut parity = vec![vec![0u8; len]; codec.parity_shards()];
    let data_refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let mut parity_refs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
    codec.encode(&data_refs, &mut parity_refs).expect("encode");
    data.iter().cloned().chain(parity).collect()
}

fn refs(shards: &mut [Vec<u8>]) -> Vec<&mut [u8]> {
    shards.iter_mut().map(Vec::as_mut_slice).collect()
}

/// Every subset of `0..n` with 1..=max members, as bitmasks.
fn erasure_sets(n: usize, max: usize) -> impl Iterator<Item = u32> {
    (1u32..1 << n).filter(move |set| set.count_ones() as usize <= max)
}
