//! Calls the codecs refuse, and that a refusal writes nothing.

use super::{codecs, encoded, random_shards, refs};
use crate::codec::{codec_for, CodecError, ErasureCodec, ReedSolomon, Xor};
use crate::layout::Layout;

#[test]
fn too_many_missing_is_refused_and_writes_nothing() {
    for codec in codecs() {
        let n = codec.data_shards() + codec.parity_shards();
        if codec.parity_shards() + 1 > n {
            continue;
        }
        let original = encoded(&*codec, &random_shards(codec.data_shards(), 64, 1));
        let mut shards = original.clone();
        let present: Vec<bool> = (0..n).map(|i| i > codec.parity_shards()).collect();
        let want = CodecError::TooManyMissing {
            missing: codec.parity_shards() + 1,
            parity: codec.parity_shards(),
        };
        assert_eq!(
            codec.reconstruct(&mut refs(&mut shards), &present),
            Err(want.clone())
        );
        assert_eq!(
            codec.reconstruct_data(&mut refs(&mut shards), &present),
            Err(want)
        );
        assert_eq!(shards, original, "{codec:?}");
    }
}

#[test]
fn mismatched_lengths_are_refused() {
    for codec in codecs() {
        let (k, m) = (codec.data_shards(), codec.parity_shards());
        let mut data = random_shards(k, 64, 2);
        data[k - 1].truncate(32);
        let data_refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let mut parity = vec![vec![0u8; 64]; m];
        let got = codec.encode(&data_refs, &mut refs(&mut parity));
        let expected = if k == 1 { 32 } else { 64 };
        let got_len = if k == 1 { 64 } else { 32 };
        assert_eq!(
            got,
            Err(CodecError::ShardLength {
                expected,
                got: got_len
            }),
            "{codec:?}"
        );

        let mut shards = encoded(&*codec, &random_shards(k, 64, 3));
        shards[k].truncate(63);
        let mut present = vec![true; k + m];
        present[0] = false;
        let before = shards.clone();
        assert_eq!(
            codec.reconstruct(&mut refs(&mut shards), &present),
            Err(CodecError::ShardLength {
                expected: 64,
                got: 63
            })
        );
        assert_eq!(shards, before);

        let mut parity = vec![vec![0u8; 64]; m];
        assert_eq!(
            codec.update_parity(0, &[1u8; 65], &mut refs(&mut parity)),
            Err(CodecError::ShardLength {
                expected: 65,
                got: 64
            })
        );
    }
}

#[test]
fn wrong_counts_and_indexes_are_refused() {
    let codec = ReedSolomon::new(4, 2).expect("rs");
    let data = random_shards(3, 16, 4);
    let data_refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    let mut parity = vec![vec![0u8; 16]; 2];
    assert_eq!(
        codec.encode(&data_refs, &mut refs(&mut parity)),
        Err(CodecError::ShardCount {
            what: "data shards",
            expected: 4,
            got: 3
        })
    );
    let mut shards = random_shards(6, 16, 5);
    assert_eq!(
        codec.reconstruct(&mut refs(&mut shards), &[true; 5]),
        Err(CodecError::ShardCount {
            what: "present flags",
            expected: 6,
            got: 5
        })
    );
    assert_eq!(
        codec.update_parity(4, &[0u8; 16], &mut refs(&mut parity)),
        Err(CodecError::ShardIndex {
            index: 4,
            data_shards: 4
        })
    );
    let mut one = vec![vec![0u8; 16]; 1];
    assert_eq!(
        codec.update_parity(0, &[0u8; 16], &mut refs(&mut one)),
        Err(CodecError::ShardCount {
            what: "parity shards",
            expected: 2,
            got: 1
        })
    );
}

#[test]
fn impossible_shapes_are_refused() {
    for (k, m) in [(0, 1), (1, 0), (200, 57)] {
        assert!(
            matches!(ReedSolomon::new(k, m), Err(CodecError::Shape { .. })),
            "{k}+{m}"
        );
    }
    assert!(matches!(Xor::new(0), Err(CodecError::Shape { .. })));
    assert_eq!(ReedSolomon::new(200, 56).map(|c| c.parity_shards()), Ok(56));
    let err = ReedSolomon::new(200, 57).expect_err("too wide");
    assert_eq!(
        err.to_string(),
        "cannot build a 200+57 code: GF(2^8) allows at most 256 shards"
    );
}

#[test]
fn layouts_pick_their_codec() {
    let unit_bytes = 64 * 1024;
    let raid5 = codec_for(&Layout::Raid5 {
        stripes: 4,
        unit_bytes,
    })
    .expect("raid5");
    let raid5 = raid5.expect("raid5 has parity");
    assert_eq!((raid5.data_shards(), raid5.parity_shards()), (4, 1));
    assert!(format!("{raid5:?}").starts_with("Xor"));
    let ec = Layout::Erasure {
        data: 8,
        parity: 3,
        unit_bytes,
    };
    let ec = codec_for(&ec).expect("ec").expect("ec has parity");
    assert_eq!((ec.data_shards(), ec.parity_shards()), (8, 3));
    assert!(format!("{ec:?}").starts_with("ReedSolomon"));
    // ec:K+1 stays Reed-Solomon: its parity is not the XOR of raid5.
    let ec1 = Layout::Erasure {
        data: 4,
        parity: 1,
        unit_bytes,
    };
    let ec1 = codec_for(&ec1).expect("ec").expect("parity");
    assert!(format!("{ec1:?}").starts_with("ReedSolomon"));
    for layout in [Layout::Linear, Layout::Raid1 { copies: 2 }] {
        assert!(codec_for(&layout).expect("no codec").is_none());
    }
}
