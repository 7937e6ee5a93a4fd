//! Records (checksums of mirror writes) in the journal's record ring:
//! they stay while pinned, a full ring waits for pins, and recovery
//! settles the copies of a recorded block on the recorded version, rot
//! on the other copy notwithstanding.

mod common;

use std::time::Duration;

use blockvirt::testing::SimFaults;
use blockvirt::{BlockDevice, ErrorKind, WriteFlags};
use common::{pattern, runtime, World, BLOCK};
use raid::journal::{ExtentLegs, JournalSet, RecordEntry, RecordWrite, RecoveryReport};

const DISK_BYTES: u64 = 4 << 20;
/// Large enough for a record ring (a sixteenth: 15 blocks).
const REGION_BYTES: u64 = 1 << 20;

fn world() -> World {
    World::new(7, 2, DISK_BYTES, REGION_BYTES, SimFaults::default())
}

async fn recovered(world: &World) -> JournalSet {
    let set = world.open(world.pv_set()).await;
    set.recover().await.expect("recover");
    set
}

/// Device offset of data block `block` of PV `pv`.
fn at(world: &World, pv: u64, block: u64) -> u64 {
    world.pv(pv).data_offset_bytes + block * BLOCK
}

/// The metadata's say on where extents are: LV 1's extent 0 has a leg
/// on each PV, over its whole data area; nothing else exists.
struct Placed<'a>(&'a World);

impl ExtentLegs for Placed<'_> {
    fn legs(&self, lv: u64, le: u64) -> Option<Vec<(u64, u64, u64)>> {
        ((lv, le) == (1, 0)).then(|| {
            self.0
                .pvs
                .iter()
                .map(|pv| {
                    (
                        pv.id,
                        pv.data_offset_bytes,
                        DISK_BYTES - pv.data_offset_bytes,
                    )
                })
                .collect()
        })
    }
}

/// A start after a crash: the journals recovered, records settled where
/// `Placed` says their extents are.
fn restart(world: &World) -> RecoveryReport {
    runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover_with(Some(&Placed(world)))
            .await
            .expect("recover")
    })
}

/// The record of writing `tag` to data block `block` of both PVs, in
/// extent 0 of LV 1.
fn record(world: &World, block: u64, tag: u64) -> RecordEntry {
    record_of(world, 1, block, tag)
}

fn record_of(world: &World, lv: u64, block: u64, tag: u64) -> RecordEntry {
    RecordEntry {
        writes: vec![RecordWrite {
            lv,
            le: 0,
            copies: vec![(1, at(world, 1, block)), (2, at(world, 2, block))],
            crcs: vec![crc32c::crc32c(&pattern(tag, BLOCK))],
        }],
    }
}

/// Puts `tag` durably at data block `block` of PV `pv`.
async fn put(world: &World, pv: u64, block: u64, tag: u64) {
    let (result, _) = world
        .pv(pv)
        .disk
        .write_at(at(world, pv, block), pattern(tag, BLOCK), WriteFlags::FUA)
        .await;
    result.expect("write");
}

fn holds(world: &World, pv: u64, block: u64, tag: u64) -> bool {
    world.pv(pv).disk.stored(at(world, pv, block), BLOCK) == pattern(tag, BLOCK)[..]
}

/// Block 0 holds version 1 on both copies; version 2 is recorded and
/// reaches copy `written` only; the other copy rots; the power fails.
fn unfinished_write_beside_rot(written: u64) -> World {
    let world = world();
    let rotten = 3 - written;
    let rt = runtime();
    rt.block_on(async {
        let set = recovered(&world).await;
        put(&world, 1, 0, 1).await;
        put(&world, 2, 0, 1).await;
        let pins = set
            .log_records(&[1, 2], &record(&world, 0, 2))
            .await
            .expect("log records");
        put(&world, written, 0, 2).await;
        world.pv(rotten).disk.corrupt_block(at(&world, rotten, 0));
        // The volume would hold the pins until its commit; the power fails first.
        std::mem::forget(pins);
    });
    drop(rt);
    world.crash();
    world
}

#[test]
fn recovery_settles_an_unfinished_write_over_rot_in_either_order() {
    for written in [1, 2] {
        let world = unfinished_write_beside_rot(written);
        let report = restart(&world);
        assert_eq!(report.records_found, 1, "{report:?}");
        assert_eq!(report.record_blocks_settled, 1, "{report:?}");
        assert!(
            holds(&world, 1, 0, 2) && holds(&world, 2, 0, 2),
            "written on copy {written}: both copies hold the recorded version"
        );
    }
}

#[test]
fn a_record_whose_extent_is_gone_settles_nothing() {
    // LV 2 wrote the block once; its extent was freed since, and the PEs
    // went to LV 1, whose unfinished write reached one copy. LV 2's record
    // matches the other copy, still LV 2's old bytes: settling it would
    // hand LV 1 another LV's data.
    let world = world();
    runtime().block_on(async {
        let set = recovered(&world).await;
        put(&world, 1, 0, 1).await;
        put(&world, 2, 0, 1).await;
        let pins = set
            .log_records(&[1, 2], &record_of(&world, 2, 0, 1))
            .await
            .expect("log records");
        put(&world, 1, 0, 2).await;
        std::mem::forget(pins);
    });
    world.crash();
    let report = restart(&world);
    assert_eq!(report.record_writes_stale, 1, "{report:?}");
    assert_eq!(report.record_blocks_settled, 0, "{report:?}");
    assert!(holds(&world, 1, 0, 2) && holds(&world, 2, 0, 1));
}

#[test]
fn records_settle_nothing_without_the_metadata_say() {
    let world = unfinished_write_beside_rot(1);
    let report = runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(report.records_found, 1, "{report:?}");
    assert_eq!(report.record_blocks_settled, 0, "{report:?}");
}

#[test]
fn copies_matching_no_record_are_left_to_the_resync() {
    let world = world();
    runtime().block_on(async {
        let set = recovered(&world).await;
        put(&world, 1, 0, 1).await;
        put(&world, 2, 0, 1).await;
        let pins = set
            .log_records(&[1, 2], &record(&world, 0, 2))
            .await
            .expect("log records");
        // The write reached neither copy; one copy rots.
        world.pv(2).disk.corrupt_block(at(&world, 2, 0));
        std::mem::forget(pins);
    });
    world.crash();
    let report = restart(&world);
    assert_eq!(report.record_blocks_unsettled, 1, "{report:?}");
    assert_eq!(report.record_blocks_settled, 0, "{report:?}");
    assert!(holds(&world, 1, 0, 1), "the good old copy is not touched");
}

/// Logs records of writing `tags` to blocks 0 and 1, drops the pins of
/// the second (`keep_first`) or the first, checkpoints, and loses power
/// with the other still pinned; returns what the restart found.
fn pin_one_of_two(world: &World, tags: (u64, u64), keep_first: bool) -> RecoveryReport {
    runtime().block_on(async {
        let set = recovered(world).await;
        let first = set
            .log_records(&[1, 2], &record(world, 0, tags.0))
            .await
            .expect("log records");
        let second = set
            .log_records(&[1, 2], &record(world, 1, tags.1))
            .await
            .expect("log records");
        let (kept, dropped) = match keep_first {
            true => (first, second),
            false => (second, first),
        };
        drop(dropped);
        set.checkpoint_all().await.expect("checkpoint");
        std::mem::forget(kept);
    });
    world.crash();
    restart(world)
}

#[test]
fn a_pinned_record_outlives_checkpoints_and_an_unpinned_one_retires() {
    let world = world();
    let report = pin_one_of_two(&world, (2, 3), true);
    // The unpinned record is behind the pinned one: a prefix retires.
    assert_eq!(report.records_found, 2, "{report:?}");
    let report = pin_one_of_two(&world, (4, 5), false);
    assert_eq!(report.records_found, 1, "only the pinned one: {report:?}");
}

#[test]
fn a_full_record_ring_waits_until_pins_drop() {
    let world = world();
    runtime().block_on(async {
        let set = recovered(&world).await;
        let mut held = Vec::new();
        // 8 KiB entries in a 15-block ring: the eighth finds no room.
        for block in 0..7 {
            let pins = set
                .log_records(&[1, 2], &record(&world, block, block + 10))
                .await
                .expect("log records");
            held.push(pins);
        }
        let waiting = tokio::time::timeout(
            Duration::from_secs(60),
            set.log_records(&[1, 2], &record(&world, 7, 17)),
        )
        .await;
        assert!(waiting.is_err(), "a full ring waits for pins");
        drop(held.remove(0));
        let _pins = tokio::time::timeout(
            Duration::from_secs(60),
            set.log_records(&[1, 2], &record(&world, 7, 17)),
        )
        .await
        .expect("room once a pin dropped")
        .expect("log records");
    });
}

#[test]
fn bad_records_are_refused() {
    let world = world();
    runtime().block_on(async {
        let set = recovered(&world).await;
        let crc = crc32c::crc32c(&pattern(1, BLOCK));
        let one_pv = RecordEntry {
            writes: vec![RecordWrite {
                lv: 1,
                le: 0,
                copies: vec![(1, at(&world, 1, 0)), (1, at(&world, 1, 1))],
                crcs: vec![crc],
            }],
        };
        let in_journal = RecordEntry {
            writes: vec![RecordWrite {
                lv: 1,
                le: 0,
                copies: vec![(1, world.pv(1).region.offset_bytes), (2, at(&world, 2, 0))],
                crcs: vec![crc],
            }],
        };
        let unaligned = RecordEntry {
            writes: vec![RecordWrite {
                lv: 1,
                le: 0,
                copies: vec![(1, at(&world, 1, 0) + 512), (2, at(&world, 2, 0))],
                crcs: vec![crc],
            }],
        };
        let empty = RecordEntry { writes: vec![] };
        for entry in [one_pv, in_journal, unaligned, empty] {
            let err = set.log_records(&[1, 2], &entry).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{entry:?}: {err}");
        }
    });
}
