//! The journal on real files (`FileDevice`, each engine), laid out as a
//! PV is: label area, journal region, extents. Logged entries whose
//! in-place writes never happened are replayed at the next start; after a
//! checkpoint nothing is.

use std::path::Path;
use std::sync::Arc;

use blockvirt::leaf::{EngineChoice, FileDevice, FileOptions};
use blockvirt::volume::{PvHandle, PvSet};
use blockvirt::{BlockDevice, ByteRange, IoBuf, IoBufMut, WriteFlags};
use metadata::model::{pv_data_offset, pv_journal_bytes, PV_LABEL_AREA_BYTES};
use metadata::PeAddr;
use raid::journal::{JournalEntry, JournalOptions, JournalSet, JournalWrite, RowKey};

const PV_BYTES: u64 = 8 << 20;
const BLOCK: u64 = 4096;

fn options(engine: EngineChoice) -> FileOptions {
    FileOptions {
        engine,
        ..FileOptions::default()
    }
}

/// Opens PVs 1 and 2 from `dir` as a server would at start.
fn open_pvs(dir: &Path, engine: EngineChoice) -> (PvSet, Vec<(u64, ByteRange)>) {
    let pvs = PvSet::default();
    let mut regions = Vec::new();
    for id in [1u64, 2] {
        let path = dir.join(format!("pv{id}"));
        if !path.exists() {
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(PV_BYTES))
                .expect("create PV file");
        }
        let device = FileDevice::open(&path, options(engine)).expect("open PV");
        pvs.insert(
            id,
            PvHandle {
                device: Arc::new(device),
                data_offset_bytes: pv_data_offset(PV_BYTES),
            },
            false,
        );
        regions.push((
            id,
            ByteRange::new(PV_LABEL_AREA_BYTES, pv_journal_bytes(PV_BYTES)),
        ));
    }
    (pvs, regions)
}

async fn start(
    dir: &Path,
    engine: EngineChoice,
) -> (PvSet, JournalSet, raid::journal::RecoveryReport) {
    let (pvs, regions) = open_pvs(dir, engine);
    // No periodic checkpoint: the test decides what is retired.
    let options = JournalOptions {
        checkpoint_interval: None,
    };
    let set = JournalSet::open_with(pvs.clone(), regions, options)
        .await
        .expect("open journals");
    let report = set.recover().await.expect("recover");
    (pvs, set, report)
}

/// Row `i`: a data block on PV 2 and its "parity" block on PV 1.
fn row_entry(i: u64, version: u64) -> JournalEntry {
    let data = |pv: u64| {
        let tag = (i << 32) | (version << 8) | pv;
        let bytes: Vec<u8> = (0..BLOCK * 2)
            .map(|b| (tag.wrapping_mul(31).wrapping_add(b) % 251) as u8)
            .collect();
        JournalWrite {
            pv,
            offset_bytes: pv_data_offset(PV_BYTES) + i * 2 * BLOCK,
            data: IoBuf::copy_from(&bytes),
        }
    };
    JournalEntry {
        row: RowKey {
            pe: PeAddr { pv: 2, pe: 0 },
            row: i,
        },
        writes: vec![data(2), data(1)],
        intent: None,
    }
}

async fn holds(pvs: &PvSet, w: &JournalWrite) -> bool {
    let device = pvs.get(w.pv).expect("PV").device;
    let (result, buf) = device
        .read_at(w.offset_bytes, IoBufMut::zeroed(w.data.len()))
        .await;
    result.expect("read");
    buf[..] == w.data[..]
}

async fn round_trip(engine: EngineChoice) {
    let dir = tempfile::tempdir().expect("temp dir");

    // First start: the regions hold nothing, so they are formatted.
    let (_, set, report) = start(dir.path(), engine).await;
    assert_eq!(report.entries_replayed, 0);
    let logged: Vec<JournalEntry> = (0..20).map(|i| row_entry(i, 1)).collect();
    let logs = logged.iter().map(|e| {
        let set = set.clone();
        async move { set.log(&[1], e).await.expect("log") }
    });
    // Logged, and the server stops before any in-place write.
    let tickets = futures::future::join_all(logs).await;
    drop(tickets);
    drop(set);

    // Second start: every entry comes back.
    let (pvs, set, report) = start(dir.path(), engine).await;
    assert_eq!(report.entries_replayed, 20, "{report:?}");
    assert_eq!(report.bytes_replayed, 20 * 4 * BLOCK);
    for e in &logged {
        for w in &e.writes {
            assert!(holds(&pvs, w).await, "replayed {w:?}");
        }
    }
    // Now the normal path, ending with a checkpoint.
    let newer: Vec<JournalEntry> = (0..20).map(|i| row_entry(i, 2)).collect();
    for e in &newer {
        let tickets = set.log(&[1], e).await.expect("log");
        for w in &e.writes {
            let device = pvs.get(w.pv).expect("PV").device;
            let (result, _) = device
                .write_at(w.offset_bytes, w.data.clone(), WriteFlags::empty())
                .await;
            result.expect("in-place write");
        }
        set.completed(tickets);
    }
    set.checkpoint_all().await.expect("checkpoint");
    drop(set);

    // Third start: nothing to replay, and the newer data stays.
    let (pvs, _set, report) = start(dir.path(), engine).await;
    assert_eq!(report.entries_replayed, 0, "{report:?}");
    for e in &newer {
        for w in &e.writes {
            assert!(holds(&pvs, w).await);
        }
    }
}

#[tokio::test]
async fn round_trip_with_io_uring_or_its_fallback() {
    round_trip(EngineChoice::Auto).await;
}

#[tokio::test]
async fn round_trip_with_threads() {
    round_trip(EngineChoice::Threads).await;
}
