//! The scan, on entries placed by hand: it follows sequence numbers from
//! the tail, wraps to the ring start, and stops at the first block that is
//! not the valid next entry (saying whether that block was a torn entry).

use std::sync::Arc;

use blockvirt::testing::SimDisk;
use blockvirt::{BlockDevice, ByteRange, IoBuf, WriteFlags};
use metadata::PeAddr;

use crate::journal::entry::RowKey;
use crate::journal::format::*;
use crate::journal::pv_journal::PvJournal;
use crate::journal::scan::{Lane, Scan};

const B: u64 = BLOCK_BYTES;
/// A 14-block ring after the two header slots.
const REGION: ByteRange = ByteRange {
    offset_bytes: 0,
    len_bytes: 16 * B,
};

fn header(tail_seq: u64, tail_offset_bytes: u64) -> JournalHeader {
    JournalHeader {
        pv: 1,
        region_bytes: REGION.len_bytes,
        generation: 77,
        epoch: 4,
        header_seq: 1,
        tail_seq,
        tail_offset_bytes,
        records_bytes: 0,
        records_tail_seq: 0,
        records_tail_offset_bytes: 0,
    }
}

struct Placed {
    offset: u64,
    seq: u64,
    generation: u64,
    epoch: u64,
    payload_blocks: u64,
}

impl Placed {
    fn at(offset_blocks: u64, seq: u64, payload_blocks: u64) -> Placed {
        Placed {
            offset: offset_blocks * B,
            seq,
            generation: 77,
            epoch: 4,
            payload_blocks,
        }
    }
}

/// Writes an entry into the ring of a journal on `disk`, as an append would.
async fn put(disk: &SimDisk, p: &Placed) {
    let payload = vec![p.seq as u8; (p.payload_blocks * B) as usize];
    let entry = EntryHeader {
        generation: p.generation,
        epoch: p.epoch,
        seq: p.seq,
        id: p.seq,
        row: RowKey {
            pe: PeAddr { pv: 2, pe: 0 },
            row: p.seq,
        },
        payload_crc: payload_crc([&payload[..]]),
        kind: EntryKind::Writes,
        targets: vec![Target {
            pv: 2,
            offset_bytes: 0,
            len_bytes: p.payload_blocks * B,
        }],
    };
    let mut bytes = vec![0u8; B as usize];
    entry.encode_into(&mut bytes);
    bytes.extend_from_slice(&payload);
    let at = REGION.offset_bytes + HEADER_AREA_BYTES + p.offset;
    let (result, _) = disk
        .write_at(at, IoBuf::copy_from(&bytes), WriteFlags::empty())
        .await;
    result.expect("write");
}

fn scan(placed: &[Placed], header: JournalHeader, damage: Option<u64>) -> Scan {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let disk = Arc::new(SimDisk::new(REGION.len_bytes, 1));
        for p in placed {
            put(&disk, p).await;
        }
        if let Some(ring_offset) = damage {
            disk.corrupt_block(HEADER_AREA_BYTES + ring_offset);
        }
        let journal = PvJournal::new(1, disk, REGION, header, false);
        journal.scan(&header, Lane::Stripes).await.expect("scan")
    })
}

fn seqs(scan: &Scan) -> Vec<u64> {
    scan.entries.iter().map(|f| f.header.seq).collect()
}

#[test]
fn the_scan_follows_sequence_numbers_from_the_tail() {
    let placed = [
        Placed::at(0, 10, 1),
        Placed::at(2, 11, 2),
        Placed::at(5, 13, 1),
    ];
    let found = scan(&placed, header(10, 0), None);
    assert_eq!(seqs(&found), vec![10, 11], "seq 13 is not the next one");
    assert_eq!(found.next_seq, 12);
    assert!(!found.torn);
    // From a later tail, the older entry is not read.
    let found = scan(&placed, header(11, 2 * B), None);
    assert_eq!(seqs(&found), vec![11]);
}

#[test]
fn an_entry_of_an_older_lap_ends_the_scan_cleanly() {
    // Where seq 12 would be lies seq 4 from an earlier pass over the ring.
    let placed = [
        Placed::at(0, 10, 1),
        Placed::at(2, 11, 1),
        Placed::at(4, 4, 1),
    ];
    let found = scan(&placed, header(10, 0), None);
    assert_eq!(seqs(&found), vec![10, 11]);
    assert!(!found.torn);
}

#[test]
fn other_generations_and_epochs_are_not_read() {
    let mut other_generation = Placed::at(2, 11, 1);
    other_generation.generation = 78;
    let found = scan(
        &[Placed::at(0, 10, 1), other_generation],
        header(10, 0),
        None,
    );
    assert_eq!(seqs(&found), vec![10]);
    let mut older_epoch = Placed::at(2, 11, 1);
    older_epoch.epoch = 3;
    let found = scan(&[Placed::at(0, 10, 1), older_epoch], header(10, 0), None);
    assert_eq!(seqs(&found), vec![10]);
}

#[test]
fn the_scan_wraps_to_the_ring_start() {
    // Ring of 14 blocks: seq 10 fills 9..12; seq 11 (3 blocks) did not fit
    // in 12..14 and went to 0; seq 12 follows it.
    let placed = [
        Placed::at(9, 10, 2),
        Placed::at(0, 11, 2),
        Placed::at(3, 12, 1),
    ];
    let found = scan(&placed, header(10, 9 * B), None);
    assert_eq!(seqs(&found), vec![10, 11, 12]);
    let offsets: Vec<u64> = found.entries.iter().map(|f| f.offset_bytes / B).collect();
    assert_eq!(offsets, vec![9, 0, 3]);
    // An entry ending exactly at the ring's end is followed at 0.
    let placed = [Placed::at(11, 10, 2), Placed::at(0, 11, 1)];
    assert_eq!(seqs(&scan(&placed, header(10, 11 * B), None)), vec![10, 11]);
}

#[test]
fn a_damaged_payload_is_passed_and_a_damaged_header_ends_the_scan() {
    let placed = [
        Placed::at(0, 10, 1),
        Placed::at(2, 11, 2),
        Placed::at(5, 12, 1),
    ];
    // The payload of seq 11 does not match its checksum: found damaged,
    // and its header says where seq 12 starts.
    let found = scan(&placed, header(10, 0), Some(4 * B));
    assert_eq!(seqs(&found), vec![10, 11, 12]);
    let sound: Vec<bool> = found.entries.iter().map(|f| f.payload_sound).collect();
    assert_eq!(sound, vec![true, false, true]);
    assert!(!found.torn);
    // Its header block is damaged.
    let found = scan(&placed, header(10, 0), Some(2 * B));
    assert_eq!(seqs(&found), vec![10]);
    assert!(found.torn);
}

#[test]
fn an_empty_ring_scans_to_nothing() {
    let found = scan(&[], header(10, 6 * B), None);
    assert!(found.entries.is_empty() && !found.torn);
    assert_eq!(found.next_seq, 10);
}
