//! The record ring's place in the region: a journal formatted before it
//! existed gets one when recovery empties it, and the stripe ring gives
//! up the room.

use std::sync::Arc;

use blockvirt::testing::SimDisk;
use blockvirt::volume::{PvHandle, PvSet};
use blockvirt::{BlockDevice, ByteRange};

use crate::journal::format::{BLOCK_BYTES, HEADER_AREA_BYTES};
use crate::journal::records::records_ring_bytes;
use crate::journal::region::{format_region, write_header};
use crate::journal::{JournalOptions, JournalSet};

const REGION: ByteRange = ByteRange {
    offset_bytes: 0,
    len_bytes: 1 << 20,
};

#[test]
fn a_record_ring_is_a_sixteenth_and_none_in_tiny_regions() {
    assert_eq!(records_ring_bytes(1 << 20), 15 * BLOCK_BYTES);
    assert_eq!(records_ring_bytes(64 << 20), 1023 * BLOCK_BYTES);
    assert_eq!(records_ring_bytes(64 << 10), 0);
}

#[test]
fn recovery_gives_an_older_journal_its_record_ring() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let disk: Arc<dyn BlockDevice> = Arc::new(SimDisk::new(4 << 20, 1));
        let formatted = format_region(1, &disk, REGION, 0).await.expect("format");
        assert_eq!(formatted.records_bytes, 15 * BLOCK_BYTES);
        // As a journal of format version 2 reads: no record ring.
        let older = crate::journal::format::JournalHeader {
            header_seq: 1,
            records_bytes: 0,
            ..formatted
        };
        write_header(&disk, REGION, &older).await.expect("header");

        let pvs = PvSet::default();
        pvs.insert(
            1,
            PvHandle {
                device: disk.clone(),
                data_offset_bytes: 2 << 20,
            },
            false,
        );
        let options = JournalOptions {
            checkpoint_interval: None,
        };
        let set = JournalSet::open_with(pvs.clone(), vec![(1, REGION)], options)
            .await
            .expect("open");
        let journal = set.inner.journals.read()[&1].clone();
        assert_eq!(journal.lock().header.records_bytes, 0);
        assert_eq!(
            journal.lock().ring.capacity_bytes(),
            (1 << 20) - HEADER_AREA_BYTES
        );
        set.recover().await.expect("recover");
        let header = journal.lock().header;
        assert_eq!(header.records_bytes, 15 * BLOCK_BYTES);
        assert_eq!(
            journal.lock().ring.capacity_bytes(),
            (1 << 20) - HEADER_AREA_BYTES - 15 * BLOCK_BYTES
        );
        drop(set);
        // And it stays, on disk.
        let set = JournalSet::open_with(pvs, vec![(1, REGION)], options)
            .await
            .expect("reopen");
        let journal = set.inner.journals.read()[&1].clone();
        assert_eq!(journal.lock().header.records_bytes, 15 * BLOCK_BYTES);
    });
}

fn entry() -> crate::journal::RecordEntry {
    use crate::journal::RecordWrite;
    crate::journal::RecordEntry {
        writes: vec![
            RecordWrite {
                lv: 7,
                le: 3,
                copies: vec![(1, 1 << 20), (2, 2 << 20)],
                crcs: vec![11, 12, 13],
            },
            RecordWrite {
                lv: 8,
                le: u64::MAX,
                copies: vec![(3, 4096), (1, 8192), (2, 12288)],
                crcs: vec![u32::MAX],
            },
        ],
    }
}

#[test]
fn a_record_payload_round_trips_and_damage_is_refused() {
    use crate::journal::records::RecordEntry;
    let e = entry();
    let targets = e.targets();
    let payload = e.encode_payload();
    assert_eq!(payload.len() as u64, BLOCK_BYTES);
    assert_eq!(RecordEntry::decode(&targets, &payload), Ok(e.clone()));
    // A target too many, or one whose length disagrees with its checksums.
    let mut more = targets.clone();
    more.push(targets[0]);
    assert!(RecordEntry::decode(&more, &payload).is_err());
    let mut longer = targets.clone();
    longer[1].len_bytes += BLOCK_BYTES;
    assert!(RecordEntry::decode(&longer, &payload).is_err());
    // A table cut short, or claiming more copies than there are targets.
    assert!(RecordEntry::decode(&targets, &payload[..40]).is_err());
    let mut bad = payload.clone();
    bad[0..4].copy_from_slice(&9u32.to_le_bytes());
    assert!(RecordEntry::decode(&targets, &bad).is_err());
}
