//! The on-disk format: round trips, and every kind of damage rejected.

use metadata::PeAddr;
use proptest::prelude::*;

use crate::journal::entry::RowKey;
use crate::journal::format::*;

fn header() -> JournalHeader {
    JournalHeader {
        pv: 7,
        region_bytes: 4 << 20,
        generation: 0x1234_5678_9abc_def0,
        epoch: 3,
        header_seq: 11,
        tail_seq: 400,
        tail_offset_bytes: 81920,
        // As a version 1 or 2 header reads: no record ring.
        records_bytes: 0,
        records_tail_seq: 0,
        records_tail_offset_bytes: 0,
    }
}

fn entry(targets: Vec<Target>) -> EntryHeader {
    EntryHeader {
        generation: 99,
        epoch: 2,
        seq: 17,
        id: 5,
        row: RowKey {
            pe: PeAddr { pv: 3, pe: 12 },
            row: 9,
        },
        payload_crc: 0xdead_beef,
        kind: EntryKind::Writes,
        targets,
    }
}

fn target(pv: u64, block: u64, blocks: u64) -> Target {
    Target {
        pv,
        offset_bytes: block * BLOCK_BYTES,
        len_bytes: blocks * BLOCK_BYTES,
    }
}

/// Stores a little-endian field and recomputes the block's checksum, as a
/// writer with a bug would: the damage that only field checks can catch.
fn rewrite(block: &mut [u8], at: usize, bytes: &[u8]) {
    block[at..at + bytes.len()].copy_from_slice(bytes);
    let crc = crc32c::crc32c(&block[..4092]);
    block[4092..].copy_from_slice(&crc.to_le_bytes());
}

fn encoded(entry: &EntryHeader) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_BYTES as usize];
    entry.encode_into(&mut block);
    block
}

#[test]
fn header_round_trips_and_alternates_slots() {
    let h = header();
    assert_eq!(JournalHeader::decode(&h.encode()), Ok(h));
    assert_eq!(h.slot(), 1);
    let next = JournalHeader {
        header_seq: 12,
        ..h
    };
    assert_eq!(next.slot(), 0);
}

#[test]
fn header_damage_is_rejected() {
    let good = header().encode();
    assert_eq!(
        JournalHeader::decode(&[0u8; 4096]),
        Err(DecodeError::NoMagic)
    );
    assert_eq!(
        JournalHeader::decode(&good[..4095]),
        Err(DecodeError::Invalid("not a 4 KiB block"))
    );
    // Any flipped bit past the magic is caught by the checksum.
    for at in (8..4096).step_by(97).chain([4092, 4095]) {
        let mut bad = good;
        bad[at] ^= 0x10;
        assert_eq!(
            JournalHeader::decode(&bad),
            Err(DecodeError::BadChecksum),
            "byte {at}"
        );
    }
    let mut bad = good;
    bad[0] ^= 1;
    assert_eq!(JournalHeader::decode(&bad), Err(DecodeError::NoMagic));
    // A well-formed header of a newer format is recognized, not misread.
    let mut newer = good;
    rewrite(&mut newer, 8, &(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(
        JournalHeader::decode(&newer),
        Err(DecodeError::UnsupportedVersion(FORMAT_VERSION + 1))
    );
    // Version 1 (before intents) is still read.
    let mut older = good;
    rewrite(&mut older, 8, &1u32.to_le_bytes());
    assert_eq!(JournalHeader::decode(&older), Ok(header()));
}

#[test]
fn a_header_keeps_its_record_ring_and_older_ones_have_none() {
    let with_records = JournalHeader {
        records_bytes: 64 << 10,
        records_tail_seq: 12,
        records_tail_offset_bytes: 8192,
        ..header()
    };
    let block = with_records.encode();
    assert_eq!(JournalHeader::decode(&block), Ok(with_records));
    // Version 2 wrote zeroes where the record ring is now described.
    let mut v2 = header().encode();
    rewrite(&mut v2, 8, &2u32.to_le_bytes());
    assert_eq!(JournalHeader::decode(&v2).map(|h| h.records_bytes), Ok(0));
}

#[test]
fn a_records_entry_round_trips_and_needs_version_3() {
    let mut e = entry(vec![target(1, 10, 1), target(2, 30, 1)]);
    e.kind = EntryKind::Records {
        payload_bytes: BLOCK_BYTES,
    };
    let block = encoded(&e);
    assert_eq!(EntryHeader::decode(&block), Ok(e));
    let mut v2 = block;
    rewrite(&mut v2, 8, &2u32.to_le_bytes());
    assert_eq!(
        EntryHeader::decode(&v2),
        Err(DecodeError::Invalid("unknown entry kind"))
    );
}

#[test]
fn an_entry_header_is_not_a_journal_header_and_back() {
    let e = encoded(&entry(vec![target(1, 10, 2)]));
    assert_eq!(JournalHeader::decode(&e), Err(DecodeError::NoMagic));
    assert_eq!(
        EntryHeader::decode(&header().encode()),
        Err(DecodeError::NoMagic)
    );
}

#[test]
fn entry_round_trips_with_one_and_most_writes() {
    for count in [1, 2, MAX_WRITES] {
        let targets = (0..count as u64)
            .map(|i| target(i % 5, i * 16, 1 + i % 3))
            .collect();
        let e = entry(targets);
        let block = encoded(&e);
        let back = EntryHeader::decode(&block).expect("decodes");
        assert_eq!(back, e);
        assert_eq!(back.entry_bytes(), BLOCK_BYTES + e.payload_bytes());
    }
}

#[test]
fn an_intent_entry_round_trips_and_needs_version_2() {
    let mut e = entry(vec![target(1, 10, 16), target(2, 10, 16)]);
    e.kind = EntryKind::Intent {
        payload_bytes: BLOCK_BYTES,
    };
    let block = encoded(&e);
    let back = EntryHeader::decode(&block).expect("decodes");
    assert_eq!(back, e);
    assert_eq!(
        back.entry_bytes(),
        2 * BLOCK_BYTES,
        "the table, not the targets"
    );
    // Version 1 had no kinds: an intent there is a writer's bug.
    let mut old = block.clone();
    rewrite(&mut old, 8, &1u32.to_le_bytes());
    assert_eq!(
        EntryHeader::decode(&old),
        Err(DecodeError::Invalid("unknown entry kind"))
    );
    // A writes entry of version 1 still reads.
    let mut v1 = encoded(&entry(vec![target(1, 10, 2)]));
    rewrite(&mut v1, 8, &1u32.to_le_bytes());
    assert_eq!(EntryHeader::decode(&v1), Ok(entry(vec![target(1, 10, 2)])));
    // An intent's size is whole blocks; an unknown kind is refused.
    let mut ragged = block.clone();
    rewrite(&mut ragged, 48, &(BLOCK_BYTES + 100).to_le_bytes());
    assert!(EntryHeader::decode(&ragged).is_err());
    let mut unknown = block;
    rewrite(&mut unknown, 84, &7u32.to_le_bytes());
    assert_eq!(
        EntryHeader::decode(&unknown),
        Err(DecodeError::Invalid("unknown entry kind"))
    );
}

#[test]
fn an_intent_table_round_trips_and_is_checked() {
    use crate::journal::intent::{RowCodec, RowIntent};
    let intent = RowIntent {
        codec: RowCodec::ReedSolomon,
        data_shards: 4,
        parity_shards: 2,
        writes: vec![Some(0), Some(1), None, Some(2), Some(3), Some(4)],
        new: (0..6)
            .map(|s| (0..16).map(|b| s * 100 + b).collect())
            .collect(),
        old: (0..4)
            .map(|s| (0..16).map(|b| (b % 3 != 0).then_some(s * 7 + b)).collect())
            .collect(),
    };
    let table = intent.encode();
    assert_eq!(table.len() % BLOCK_BYTES as usize, 0);
    assert_eq!(table.len(), intent.encoded_len());
    assert_eq!(RowIntent::decode(&table, 5), Ok(intent.clone()));
    assert!(RowIntent::decode(&table, 6).is_err(), "writes disagree");
    assert!(RowIntent::decode(&table[..40], 5).is_err(), "truncated");
    let mut xor = intent;
    xor.codec = RowCodec::Xor;
    assert!(xor.validate(5).is_err(), "xor has one parity shard");
}

#[test]
fn entry_damage_is_rejected() {
    let good = encoded(&entry(vec![target(1, 10, 2), target(2, 10, 2)]));
    for at in (8..4096).step_by(61).chain([4092, 4095]) {
        let mut bad = good.clone();
        bad[at] ^= 0x80;
        assert_eq!(
            EntryHeader::decode(&bad),
            Err(DecodeError::BadChecksum),
            "byte {at}"
        );
    }
    let mut bad = good.clone();
    bad[3] ^= 1;
    assert_eq!(EntryHeader::decode(&bad), Err(DecodeError::NoMagic));
}

#[test]
fn entry_fields_that_contradict_each_other_are_rejected() {
    let good = encoded(&entry(vec![target(1, 10, 2), target(2, 10, 2)]));
    let cases: [(usize, Vec<u8>, &str); 6] = [
        (12, 0u32.to_le_bytes().to_vec(), "write count out of range"),
        (
            12,
            (MAX_WRITES as u32 + 1).to_le_bytes().to_vec(),
            "write count out of range",
        ),
        // The entry size must be the header block plus the targets.
        (
            48,
            (6 * BLOCK_BYTES).to_le_bytes().to_vec(),
            "entry size disagrees with targets",
        ),
        // Target 0's offset, then its length, made unaligned; then empty.
        (
            88 + 8,
            4097u64.to_le_bytes().to_vec(),
            "target not block-aligned",
        ),
        (
            88 + 16,
            100u64.to_le_bytes().to_vec(),
            "target not block-aligned",
        ),
        (
            88 + 16,
            0u64.to_le_bytes().to_vec(),
            "target not block-aligned",
        ),
    ];
    for (at, bytes, why) in cases {
        let mut bad = good.clone();
        rewrite(&mut bad, at, &bytes);
        assert_eq!(
            EntryHeader::decode(&bad),
            Err(DecodeError::Invalid(why)),
            "field at {at}"
        );
    }
    // A target reaching past the end of the address space.
    let mut bad = good.clone();
    rewrite(&mut bad, 88 + 8, &(u64::MAX - 4095).to_le_bytes());
    assert_eq!(
        EntryHeader::decode(&bad),
        Err(DecodeError::Invalid("target not block-aligned"))
    );
    let mut newer = good;
    rewrite(&mut newer, 8, &7u32.to_le_bytes());
    assert_eq!(
        EntryHeader::decode(&newer),
        Err(DecodeError::UnsupportedVersion(7))
    );
}

#[test]
fn payload_checksum_of_pieces_is_that_of_the_whole() {
    let whole: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let (a, rest) = whole.split_at(4096);
    let (b, c) = rest.split_at(4096);
    assert_eq!(payload_crc([a, b, c]), crc32c::crc32c(&whole));
    assert_eq!(payload_crc([&whole[..]]), crc32c::crc32c(&whole));
}

fn arb_target() -> impl Strategy<Value = Target> {
    (any::<u64>(), 0u64..(1 << 40), 1u64..4096)
        .prop_map(|(pv, block, blocks)| target(pv, block, blocks))
}

fn arb_entry() -> impl Strategy<Value = EntryHeader> {
    (
        any::<[u64; 4]>(),
        any::<(u64, u64, u64)>(),
        any::<u32>(),
        prop::collection::vec(arb_target(), 1..=MAX_WRITES),
    )
        .prop_map(
            |([generation, epoch, seq, id], (pv, pe, row), payload_crc, targets)| EntryHeader {
                generation,
                epoch,
                seq,
                id,
                row: RowKey {
                    pe: PeAddr { pv, pe },
                    row,
                },
                payload_crc,
                kind: EntryKind::Writes,
                targets,
            },
        )
}

proptest! {
    #[test]
    fn random_entries_round_trip(e in arb_entry()) {
        prop_assert_eq!(EntryHeader::decode(&encoded(&e)), Ok(e));
    }

    #[test]
    fn random_damage_never_decodes(e in arb_entry(), at in 8usize..4096, bit in 0u8..8) {
        let mut block = encoded(&e);
        block[at] ^= 1 << bit;
        prop_assert_eq!(EntryHeader::decode(&block), Err(DecodeError::BadChecksum));
    }

    #[test]
    fn random_blocks_never_panic(block in prop::collection::vec(any::<u8>(), 4096), magic in any::<bool>()) {
        let mut block = block;
        if magic {
            block[..8].copy_from_slice(b"BVJRNLEN");
        }
        let _ = EntryHeader::decode(&block);
        let _ = JournalHeader::decode(&block);
    }

    #[test]
    fn random_headers_round_trip(fields in any::<[u64; 10]>()) {
        let [pv, region_bytes, generation, epoch, header_seq, tail_seq, tail_offset_bytes, records_bytes, records_tail_seq, records_tail_offset_bytes] = fields;
        let h = JournalHeader { pv, region_bytes, generation, epoch, header_seq, tail_seq, tail_offset_bytes, records_bytes, records_tail_seq, records_tail_offset_bytes };
        prop_assert_eq!(JournalHeader::decode(&h.encode()), Ok(h));
    }
}
