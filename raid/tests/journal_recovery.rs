//! Recovery, scenario by scenario: which entries it replays, in which
//! order, and which it must leave alone.

mod common;

use std::sync::Arc;
use std::time::Duration;

use blockvirt::testing::SimFaults;
use blockvirt::volume::{PvHandle, PvSet};
use blockvirt::{BlockDevice, ByteRange, ErrorKind, WriteFlags};
use common::{entry, no_periodic, runtime, Counting, World, BLOCK};
use raid::journal::JournalSet;

const DISK_BYTES: u64 = 1 << 20;
const REGION_BYTES: u64 = 64 << 10;

fn world(pvs: u64) -> World {
    World::new(1, pvs, DISK_BYTES, REGION_BYTES, SimFaults::default())
}

/// The world's PVs, with PV `id` behind `device`.
fn pv_set_with(world: &World, id: u64, device: Arc<dyn BlockDevice>) -> PvSet {
    let set = world.pv_set();
    set.insert(
        id,
        PvHandle {
            device,
            data_offset_bytes: world.pv(id).data_offset_bytes,
        },
        false,
    );
    set
}

async fn recovered(world: &World) -> JournalSet {
    let set = world.open(world.pv_set()).await;
    set.recover().await.expect("recover");
    set
}

/// A row with two parity PVs (1 and 2) whose newest entry is durable on
/// PV 1's journal only (its copy on PV 2 was torn by the crash; here it is
/// simply never written there). e1 writes data block 0 of PV 3 and the
/// parity block; e2 writes data block 1 and the parity block again.
/// Returns (e1, e2).
async fn row_newest_on_one_copy(
    world: &World,
) -> (raid::journal::JournalEntry, raid::journal::JournalEntry) {
    let set = recovered(world).await;
    let e1 = entry(0, vec![world.write(3, 0, 11, 1), world.write(1, 0, 12, 1)]);
    let e2 = entry(0, vec![world.write(3, 1, 21, 1), world.write(1, 0, 22, 1)]);
    let tickets = set.log(&[1, 2], &e1).await.expect("log e1");
    set.completed(tickets);
    let tickets = set.log(&[1], &e2).await.expect("log e2");
    set.completed(tickets);
    (e1, e2)
}

#[test]
fn copies_of_a_row_are_replayed_in_log_order_across_journals() {
    let world = world(3);
    let (e1, e2) = runtime().block_on(row_newest_on_one_copy(&world));
    world.crash();
    let report = runtime().block_on(recovered_report(&world));
    assert_eq!(report.entries_replayed, 2, "{report:?}");
    // Replaying PV 1's journal and then PV 2's would end with e1's parity
    // next to e2's data: the row's parity would match neither version.
    assert!(world.holds(&e1.writes[0]));
    assert!(world.holds(&e2.writes[0]));
    assert!(world.holds(&e2.writes[1]), "the parity is e2's, the newest");
}

#[test]
fn an_interrupted_recovery_is_not_undone_by_the_next() {
    let world = world(3);
    let (e1, e2) = runtime().block_on(row_newest_on_one_copy(&world));
    world.crash();
    // Recovery replays both entries and empties PV 1's journal, then the
    // power fails while it writes PV 2's header.
    let held = Counting::new(world.pv(2).disk.clone());
    held.hold_fua_writes();
    let pvs = pv_set_with(&world, 2, held.clone());
    let rt = runtime();
    let interrupted = rt.block_on(async {
        let set = world.open(pvs).await;
        tokio::time::timeout(Duration::from_secs(10), set.recover()).await
    });
    assert!(
        interrupted.is_err(),
        "recovery waits on PV 2's header write"
    );
    drop(rt);
    world.crash();
    assert!(
        world.holds(&e2.writes[1]),
        "the replay was flushed before any header write"
    );
    // PV 2's journal still holds e1 from the old epoch. Replaying it again
    // would put e1's parity back next to e2's data.
    let report = runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(report.entries_replayed, 0, "{report:?}");
    assert_eq!(report.journals[&2].entries_stale, 1, "{report:?}");
    assert!(world.holds(&e1.writes[0]) && world.holds(&e2.writes[0]));
    assert!(world.holds(&e2.writes[1]));
}

#[test]
fn a_journal_missing_at_one_start_is_ignored_when_it_returns() {
    let world = world(3);
    let old = entry(0, vec![world.write(3, 0, 1, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[1], &old).await.expect("log");
        set.completed(tickets);
    });
    world.crash();
    // PV 1 is missing at this start; the volume writes the block anew
    // (degraded, nothing to journal on) and makes it durable.
    let newer = world.write(3, 0, 2, 1);
    runtime().block_on(async {
        let pvs = world.pv_set();
        pvs.remove(1);
        let set = world.open(pvs).await;
        let report = set.recover().await.expect("recover");
        assert!(!report.journals.contains_key(&1));
        let disk = &world.pv(3).disk;
        let (result, _) = disk
            .write_at(newer.offset_bytes, newer.data.clone(), WriteFlags::FUA)
            .await;
        result.expect("write");
    });
    world.crash();
    // PV 1 is back with its old entry: replaying it would roll the block back.
    let report = runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(report.entries_replayed, 0, "{report:?}");
    assert_eq!(report.journals[&1].entries_stale, 1);
    assert!(world.holds(&newer));
}

#[test]
fn a_journal_unreadable_at_recovery_fails_its_pv_and_its_copy_is_not_needed() {
    let world = world(3);
    let e = entry(0, vec![world.write(3, 0, 1, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[1, 2], &e).await.expect("log");
        set.completed(tickets);
    });
    world.crash();
    runtime().block_on(async {
        let pvs = world.pv_set();
        let set = world.open(pvs.clone()).await;
        world.pv(1).disk.fail();
        let report = set.recover().await.expect("recovery goes on");
        assert!(pvs.is_failed(1), "an unreadable journal fails its PV");
        assert!(!report.journals[&1].read, "{report:?}");
        assert_eq!(report.entries_replayed, 1, "replayed from PV 2's copy");
        assert!(world.holds(&e.writes[0]));
        let tickets = set.log(&[2], &e).await.expect("the set works on");
        set.completed(tickets);
    });
    world.crash();
    // PV 1 answers again with its entry, in an epoch now superseded.
    world.pv(1).disk.recover();
    let report = runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(report.journals[&1].entries_stale, 1, "{report:?}");
}

#[test]
fn targets_on_failed_or_absent_pvs_are_skipped() {
    let world = world(4);
    let e = entry(
        0,
        vec![
            world.write(2, 0, 1, 1),
            world.write(3, 0, 2, 1),
            world.write(4, 0, 3, 2),
        ],
    );
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[1], &e).await.expect("log");
        set.completed(tickets);
    });
    world.crash();
    let report = runtime().block_on(async {
        let pvs = world.pv_set();
        pvs.fail(3, "test");
        pvs.remove(4);
        let set = world.open(pvs).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(
        (report.entries_replayed, report.writes_skipped),
        (1, 2),
        "{report:?}"
    );
    assert_eq!(report.bytes_replayed, BLOCK);
    assert!(world.holds(&e.writes[0]));
    assert!(world.untouched(&e.writes[1]) && world.untouched(&e.writes[2]));
}

#[test]
fn a_damaged_entry_not_in_place_is_skipped_and_the_entries_after_it_replayed() {
    let world = world(2);
    let entries: Vec<_> = (0..3)
        .map(|i| entry(i, vec![world.write(2, i, 10 + i, 1)]))
        .collect();
    runtime().block_on(async {
        let set = recovered(&world).await;
        for e in &entries {
            let tickets = set.log(&[1], e).await.expect("log");
            set.completed(tickets);
        }
    });
    world.crash();
    // Entries are two blocks each from ring offset 0 (the ring starts after
    // the two header slots): damage the second entry's payload.
    let region = world.pv(1).region;
    world
        .pv(1)
        .disk
        .corrupt_block(region.offset_bytes + 2 * BLOCK + 2 * BLOCK + BLOCK);
    let report = runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(
        (report.entries_replayed, report.entries_damaged),
        (2, 1),
        "{report:?}"
    );
    assert_eq!(report.journals[&1].damaged_entries, 1, "{report:?}");
    assert!(world.holds(&entries[0].writes[0]));
    assert!(
        world.untouched(&entries[1].writes[0]),
        "a damaged entry is never written in place"
    );
    assert!(
        world.holds(&entries[2].writes[0]),
        "its header says where the next entry starts; that one was acknowledged"
    );
}

/// A row's newest entry went in place, then the disk spoiled its only
/// journal copy. Replaying the row's older entry would roll acknowledged
/// data back; the damaged entry's targets hold its payload, so the older
/// entry leaves them alone and replays the rest.
#[test]
fn an_older_entry_is_not_replayed_over_a_damaged_one_found_in_place() {
    let world = world(3);
    let older = entry(0, vec![world.write(3, 0, 11, 2), world.write(2, 0, 12, 1)]);
    let newer = entry(0, vec![world.write(3, 1, 21, 1), world.write(2, 0, 22, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        for e in [&older, &newer] {
            let tickets = set.log(&[1], e).await.expect("log");
            world.in_place(e).await;
            set.completed(tickets);
        }
        for pv in [2, 3] {
            world.pv(pv).disk.flush().await.expect("flush");
        }
    });
    world.crash();
    // `older` is a header and three payload blocks from ring offset 0; damage
    // `newer`'s payload.
    let region = world.pv(1).region;
    world
        .pv(1)
        .disk
        .corrupt_block(region.offset_bytes + 2 * BLOCK + 4 * BLOCK + BLOCK);
    let report = runtime().block_on(recovered_report(&world));
    assert_eq!(
        (
            report.entries_replayed,
            report.entries_in_place,
            report.writes_superseded
        ),
        (1, 1, 2),
        "{report:?}"
    );
    assert!(world.holds(&newer.writes[0]) && world.holds(&newer.writes[1]));
    let first = &older.writes[0];
    assert_eq!(
        world.pv(3).disk.stored(first.offset_bytes, BLOCK),
        first.data[..BLOCK as usize],
        "the older entry's block that the newer did not write"
    );
}

#[test]
fn a_damaged_header_slot_falls_back_to_the_other() {
    let world = world(2);
    let before = entry(0, vec![world.write(2, 0, 1, 1)]);
    let after = entry(1, vec![world.write(2, 1, 2, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[1], &before).await.expect("log");
        world.in_place(&before).await;
        set.completed(tickets);
        // Recovery wrote the header to slot 1; this checkpoint writes slot 0.
        set.checkpoint_all().await.expect("checkpoint");
        let tickets = set.log(&[1], &after).await.expect("log");
        set.completed(tickets);
    });
    world.crash();
    // Slot 0 is the newest; damage it. Slot 1 still points before `before`.
    world
        .pv(1)
        .disk
        .corrupt_block(world.pv(1).region.offset_bytes);
    let report = runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(report.entries_replayed, 2, "{report:?}");
    assert!(world.holds(&before.writes[0]) && world.holds(&after.writes[0]));
}

#[test]
fn a_region_holding_another_pvs_journal_is_refused() {
    let world = world(2);
    let rt = runtime();
    rt.block_on(recovered(&world));
    let err = rt
        .block_on(async {
            // PV 2's region now given as PV 1's.
            let pvs = pv_set_with(&world, 1, world.pv(2).disk.clone());
            JournalSet::open_with(pvs, world.regions(), no_periodic()).await
        })
        .expect_err("foreign journal");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let err = rt
        .block_on(async {
            let region = ByteRange::new(world.pv(1).region.offset_bytes, REGION_BYTES + BLOCK);
            JournalSet::open_with(world.pv_set(), vec![(1, region)], no_periodic()).await
        })
        .expect_err("resized region");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

#[test]
fn a_newer_format_is_refused_and_left_as_it_is() {
    let world = world(1);
    let rt = runtime();
    rt.block_on(recovered(&world));
    // Recovery wrote slot 1. Make it a header of the next version, with a
    // valid checksum.
    let disk = &world.pv(1).disk;
    let at = world.pv(1).region.offset_bytes + BLOCK;
    let mut block = disk.stored(at, BLOCK);
    block[8..12].copy_from_slice(&(raid::journal::FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32c::crc32c(&block[..4092]);
    block[4092..].copy_from_slice(&crc.to_le_bytes());
    rt.block_on(async {
        let (result, _) = disk
            .write_at(at, blockvirt::IoBuf::copy_from(&block), WriteFlags::FUA)
            .await;
        result.expect("write");
    });
    let err = rt
        .block_on(JournalSet::open_with(
            world.pv_set(),
            world.regions(),
            no_periodic(),
        ))
        .expect_err("newer format");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert_eq!(disk.stored(at, BLOCK), block);
}

#[test]
fn an_entry_with_a_target_outside_its_data_area_is_not_replayed_at_all() {
    let world = world(3);
    let e = entry(0, vec![world.write(2, 0, 1, 1), world.write(3, 0, 2, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let _tickets = set.log(&[1], &e).await.expect("log");
    });
    world.crash();
    // PV 3 comes back with its data area starting later (a journal that does
    // not match the PVs it names).
    let report = runtime().block_on(async {
        let pvs = world.pv_set();
        pvs.insert(
            3,
            PvHandle {
                device: world.pv(3).disk.clone(),
                data_offset_bytes: world.pv(3).data_offset_bytes + BLOCK,
            },
            false,
        );
        let set = world.open(pvs).await;
        set.recover().await.expect("recover")
    });
    assert_eq!(
        (report.entries_replayed, report.entries_invalid),
        (0, 1),
        "{report:?}"
    );
    assert!(world.untouched(&e.writes[0]) && world.untouched(&e.writes[1]));
}

#[test]
fn a_header_whose_tail_is_outside_the_ring_is_refused() {
    let world = world(1);
    let rt = runtime();
    rt.block_on(recovered(&world));
    let disk = &world.pv(1).disk;
    let at = world.pv(1).region.offset_bytes + BLOCK;
    let mut block = disk.stored(at, BLOCK);
    block[64..72].copy_from_slice(&REGION_BYTES.to_le_bytes());
    let crc = crc32c::crc32c(&block[..4092]);
    block[4092..].copy_from_slice(&crc.to_le_bytes());
    rt.block_on(async {
        let (result, _) = disk
            .write_at(at, blockvirt::IoBuf::copy_from(&block), WriteFlags::FUA)
            .await;
        result.expect("write");
    });
    let err = rt
        .block_on(JournalSet::open_with(
            world.pv_set(),
            world.regions(),
            no_periodic(),
        ))
        .expect_err("bad tail");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

#[test]
fn recovery_runs_once_and_logging_waits_for_it() {
    let world = world(2);
    runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        let e = entry(0, vec![world.write(2, 0, 1, 1)]);
        let err = set.log(&[1], &e).await.expect_err("not recovered");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        set.recover().await.expect("recover");
        let err = set.recover().await.expect_err("second recovery");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let tickets = set.log(&[1], &e).await.expect("log");
        assert_eq!(tickets.len(), 1);
    });
}

#[test]
fn a_pv_added_at_run_time_gets_an_empty_journal_in_the_current_epoch() {
    let world = world(3);
    let e = entry(0, vec![world.write(1, 0, 5, 1)]);
    runtime().block_on(async {
        let regions: Vec<_> = world
            .regions()
            .into_iter()
            .filter(|(pv, _)| *pv != 3)
            .collect();
        let set = JournalSet::open_with(world.pv_set(), regions, no_periodic())
            .await
            .expect("open");
        set.recover().await.expect("recover");
        set.add(3, world.pv(3).region).await.expect("add");
        let err = set
            .add(3, world.pv(3).region)
            .await
            .expect_err("added twice");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let tickets = set.log(&[3], &e).await.expect("log");
        set.completed(tickets);
    });
    world.crash();
    let report = runtime().block_on(recovered_report(&world));
    assert_eq!(report.entries_replayed, 1, "{report:?}");
    assert!(world.holds(&e.writes[0]));
}

#[test]
fn a_removed_journal_retires_its_entries_first() {
    let world = world(3);
    let e = entry(0, vec![world.write(1, 0, 5, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[3], &e).await.expect("log");
        world.in_place(&e).await;
        set.completed(tickets);
        set.remove(3).await.expect("remove");
        let err = set.log(&[3], &e).await.expect_err("no journal on PV 3");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = set.remove(3).await.expect_err("removed twice");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    });
    world.crash();
    assert!(world.holds(&e.writes[0]), "its target was flushed");
    let report = runtime().block_on(recovered_report(&world));
    assert_eq!(report.entries_replayed, 0, "{report:?}");
}

async fn recovered_report(world: &World) -> raid::journal::RecoveryReport {
    let set = world.open(world.pv_set()).await;
    set.recover().await.expect("recover")
}
