//! Group commit: on a journal device without FUA, concurrent `log` calls
//! share flushes of the device, and each still returns only once its entry
//! is durable. With FUA, entries need no flush at all. Flushes are counted
//! by a wrapper around the journal device.

mod common;

use std::sync::Arc;

use blockvirt::volume::{PvHandle, PvSet};
use common::{entry, runtime, with_latency, Counting, World};
use futures::future::join_all;
use raid::journal::JournalSet;

const DISK_BYTES: u64 = 4 << 20;
/// Room for every entry of a test without a checkpoint.
const REGION_BYTES: u64 = 1 << 20;

/// The world's PVs with the journal devices of `pvs` counted.
fn counted(world: &World, pvs: &[u64]) -> (PvSet, Vec<Arc<Counting>>) {
    let set = world.pv_set();
    let counters = pvs
        .iter()
        .map(|&pv| {
            let counting = Counting::new(world.pv(pv).disk.clone());
            set.insert(
                pv,
                PvHandle {
                    device: counting.clone(),
                    data_offset_bytes: world.pv(pv).data_offset_bytes,
                },
                false,
            );
            counting
        })
        .collect();
    (set, counters)
}

/// Logs `entries` entries on `journal_pvs`, `concurrency` at a time, on
/// disks with or without FUA, and returns the flushes each journal device
/// saw, after a crash proving every returned entry durable.
fn run(seed: u64, journal_pvs: &[u64], entries: u64, concurrency: usize, fua: bool) -> Vec<u64> {
    let world = World::with_fua(seed, 3, DISK_BYTES, REGION_BYTES, with_latency(2), fua);
    let (pvs, counters) = counted(&world, journal_pvs);
    let flushes = runtime().block_on(async {
        let set = world.open(pvs).await;
        set.recover().await.expect("recover");
        let before: Vec<u64> = counters.iter().map(|c| c.flushes()).collect();
        let all: Vec<u64> = (0..entries).collect();
        for batch in all.chunks(concurrency) {
            let logs = batch.iter().map(|&i| {
                let set: JournalSet = set.clone();
                let e = entry(i, vec![world.write(3, i, i, 1)]);
                let journal_pvs = journal_pvs.to_vec();
                tokio::spawn(async move { set.log(&journal_pvs, &e).await.map(drop) })
            });
            for result in join_all(logs).await {
                result.expect("task").expect("log");
            }
        }
        counters
            .iter()
            .zip(before)
            .map(|(c, before)| c.flushes() - before)
            .collect()
    });
    // Every log returned, and no in-place write happened: all must replay.
    world.crash();
    let report = runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(report.entries_replayed, entries, "{report:?}");
    flushes
}

#[test]
fn concurrent_logs_share_flushes() {
    let flushes = run(1, &[1], 64, 64, false)[0];
    eprintln!("64 concurrent logs: {flushes} flushes of the journal device");
    assert!(
        flushes * 8 <= 64,
        "{flushes} flushes for 64 concurrent entries"
    );
    assert!(flushes >= 1);
}

#[test]
fn sequential_logs_flush_once_each() {
    // The baseline that shows the counter counts what it should.
    assert_eq!(run(2, &[1], 16, 1, false), vec![16]);
}

#[test]
fn with_fua_entries_are_durable_without_flushes() {
    assert_eq!(run(4, &[1, 2], 16, 16, true), vec![0, 0]);
}

#[test]
fn each_copy_groups_its_flushes() {
    let flushes = run(3, &[1, 2], 64, 64, false);
    eprintln!("64 concurrent logs on two journals: {flushes:?} flushes");
    for f in flushes {
        assert!(f * 8 <= 64, "{f} flushes for 64 concurrent entries");
    }
}
