//! Encode, lose, reconstruct; update parity, compare with re-encoding.

use proptest::prelude::*;

use super::{codecs, encoded, erasure_sets, random_shards, refs};
use crate::codec::{ErasureCodec, ReedSolomon};

const GARBAGE: u8 = 0xA5;

fn lose_and_rebuild(codec: &dyn ErasureCodec, original: &[Vec<u8>], lost: u32, data_only: bool) {
    let k = codec.data_shards();
    let mut shards = original.to_vec();
    let present: Vec<bool> = (0..shards.len()).map(|i| lost & (1 << i) == 0).collect();
    for (shard, _) in shards.iter_mut().zip(&present).filter(|(_, &p)| !p) {
        shard.fill(GARBAGE);
    }
    let result = if data_only {
        codec.reconstruct_data(&mut refs(&mut shards), &present)
    } else {
        codec.reconstruct(&mut refs(&mut shards), &present)
    };
    result.unwrap_or_else(|e| panic!("{codec:?} lost {lost:b}: {e}"));
    for (i, shard) in shards.iter().enumerate() {
        if data_only && i >= k && !present[i] {
            assert!(
                shard.iter().all(|&b| b == GARBAGE),
                "{codec:?}: lost parity {i} written"
            );
        } else {
            assert_eq!(shard, &original[i], "{codec:?} lost {lost:b}: shard {i}");
        }
    }
}

/// Every set of up to M lost shards, data or parity, comes back exactly.
#[test]
fn every_erasure_pattern_reconstructs() {
    for codec in codecs() {
        let n = codec.data_shards() + codec.parity_shards();
        for (seed, len) in [1, 3, 64, 4096].into_iter().enumerate() {
            let original = encoded(
                &*codec,
                &random_shards(codec.data_shards(), len, seed as u64),
            );
            for lost in erasure_sets(n, codec.parity_shards()) {
                lose_and_rebuild(&*codec, &original, lost, false);
                lose_and_rebuild(&*codec, &original, lost, true);
            }
        }
    }
}

/// Patching parity with a delta equals encoding the new data, for a
/// whole shard and for a sub-range of it.
#[test]
fn update_parity_equals_reencoding() {
    for codec in codecs() {
        let len = 1000;
        let old = random_shards(codec.data_shards(), len, 7);
        let old_encoded = encoded(&*codec, &old);
        for index in 0..codec.data_shards() {
            for (start, end) in [(0, len), (0, 1), (123, 456), (len - 1, len)] {
                let mut new = old.clone();
                let fresh = random_shards(1, end - start, index as u64).remove(0);
                new[index][start..end].copy_from_slice(&fresh);
                let delta: Vec<u8> = old[index][start..end]
                    .iter()
                    .zip(&fresh)
                    .map(|(a, b)| a ^ b)
                    .collect();

                let mut parity: Vec<Vec<u8>> = old_encoded[codec.data_shards()..].to_vec();
                let mut ranges: Vec<&mut [u8]> =
                    parity.iter_mut().map(|p| &mut p[start..end]).collect();
                codec
                    .update_parity(index, &delta, &mut ranges)
                    .expect("update");

                let want = &encoded(&*codec, &new)[codec.data_shards()..];
                assert_eq!(parity, want, "{codec:?} index {index} range {start}..{end}");
            }
        }
    }
}

/// Parity of a byte range depends on that range of the data only.
#[test]
fn encoding_works_byte_by_byte() {
    for codec in codecs() {
        let data = random_shards(codec.data_shards(), 300, 3);
        let whole = encoded(&*codec, &data);
        let (start, end) = (17, 250);
        let part: Vec<Vec<u8>> = data.iter().map(|d| d[start..end].to_vec()).collect();
        let part_encoded = encoded(&*codec, &part);
        for (p, w) in part_encoded.iter().zip(&whole) {
            assert_eq!(p[..], w[start..end], "{codec:?}");
        }
    }
}

#[test]
fn empty_shards_are_a_no_op() {
    for codec in codecs() {
        let shards = encoded(&*codec, &vec![Vec::new(); codec.data_shards()]);
        assert!(shards.iter().all(Vec::is_empty));
        let mut shards = shards;
        let mut present = vec![true; shards.len()];
        present[0] = false;
        codec
            .reconstruct(&mut refs(&mut shards), &present)
            .expect("empty reconstruct");
        let mut parity = vec![Vec::new(); codec.parity_shards()];
        codec
            .update_parity(0, &[], &mut refs(&mut parity))
            .expect("empty update");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Wider codes than the exhaustive test, random losses of up to M.
    #[test]
    fn wide_codes_reconstruct(
        k in 2usize..=24,
        m in 1usize..=8,
        len in 1usize..=2048,
        seed: u64,
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..=8),
    ) {
        let codec = ReedSolomon::new(k, m).expect("rs");
        let original = encoded(&codec, &random_shards(k, len, seed));
        let mut lost = 0u32;
        for pick in picks.iter().take(m) {
            lost |= 1 << pick.index(k + m);
        }
        lose_and_rebuild(&codec, &original, lost, false);
    }
}
