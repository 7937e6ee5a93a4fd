//! I/O errors: a journal device that fails is reported to the caller, and
//! its PV marked failed, never trusted again; a target that fails its flush is marked failed;
//! bad regions are refused before anything is written.

mod common;

use blockvirt::testing::SimFaults;
use blockvirt::volume::PvSet;
use blockvirt::{ByteRange, ErrorKind};
use common::{entry, no_periodic, row, runtime, World, BLOCK};
use raid::journal::JournalSet;

const DISK_BYTES: u64 = 1 << 20;
const REGION_BYTES: u64 = 64 << 10;

fn world(pvs: u64) -> World {
    World::new(3, pvs, DISK_BYTES, REGION_BYTES, SimFaults::default())
}

#[test]
fn a_journal_write_error_is_returned_and_fails_the_pv() {
    let world = world(2);
    runtime().block_on(async {
        let pvs = world.pv_set();
        let set = world.open(pvs.clone()).await;
        set.recover().await.expect("recover");
        let e = entry(0, vec![world.write(2, 0, 1, 1)]);
        world.pv(1).disk.fail();
        let err = set.log(&[1], &e).await.expect_err("dead journal device");
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("PV id 1"), "{err}");
        assert!(pvs.is_failed(1), "the journal's PV is marked failed");
        // The disk answers again, but what is durable on it is unknown:
        // the PV stays failed, and the rest of the set goes on.
        world.pv(1).disk.recover();
        set.checkpoint_all().await.expect("checkpoint without PV 1");
        assert!(!set.has_unretired(&[1], row(0)));
        let err = set.log(&[1], &e).await.expect_err("failed PV");
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        let tickets = set.log(&[2], &e).await.expect("other journals work");
        set.completed(tickets);
    });
}

#[test]
fn a_journal_flush_error_is_returned() {
    // Entries go out with FUA where the disk has it; this one has not, so
    // every entry waits for a flush.
    let world = World::with_fua(3, 2, DISK_BYTES, REGION_BYTES, SimFaults::default(), false);
    runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover");
        world.pv(1).disk.set_faults(SimFaults {
            flush_error_probability: 1.0,
            ..SimFaults::default()
        });
        let e = entry(0, vec![world.write(2, 0, 1, 1)]);
        let err = set.log(&[1], &e).await.expect_err("flush fails");
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("journal flush"), "{err}");
    });
}

#[test]
fn when_one_copy_fails_the_log_fails_and_the_other_copy_is_retired() {
    let world = world(3);
    runtime().block_on(async {
        let pvs = world.pv_set();
        let set = world.open(pvs.clone()).await;
        set.recover().await.expect("recover");
        let e = entry(4, vec![world.write(3, 0, 1, 1)]);
        world.pv(2).disk.fail();
        set.log(&[1, 2], &e).await.expect_err("one copy fails");
        pvs.fail(2, "journal write failed");
        // The copy on PV 1 was handed back with the failed log.
        set.checkpoint_all().await.expect("checkpoint");
        assert!(!set.has_unretired(&[1, 2], row(4)));
    });
}

#[test]
fn a_target_failing_its_flush_is_marked_failed_and_the_entry_retired() {
    let world = world(3);
    runtime().block_on(async {
        let pvs = world.pv_set();
        let set = world.open(pvs.clone()).await;
        set.recover().await.expect("recover");
        let e = entry(0, vec![world.write(2, 0, 1, 1), world.write(3, 0, 2, 1)]);
        let tickets = set.log(&[1], &e).await.expect("log");
        world.in_place(&e).await;
        set.completed(tickets);
        world.pv(2).disk.set_faults(SimFaults {
            flush_error_probability: 1.0,
            ..SimFaults::default()
        });
        set.checkpoint_all().await.expect("checkpoint");
        assert!(
            pvs.is_failed(2),
            "its bytes are lost; the other legs rebuild them"
        );
        assert!(!pvs.is_failed(3));
        assert!(!set.has_unretired(&[1], row(0)));
    });
}

#[test]
fn bad_regions_are_refused() {
    let world = world(2);
    let rt = runtime();
    let open = |regions: Vec<(u64, ByteRange)>| {
        rt.block_on(JournalSet::open_with(
            world.pv_set(),
            regions,
            no_periodic(),
        ))
        .expect_err("refused")
        .kind()
    };
    let at = 64 << 10;
    assert_eq!(
        open(vec![(1, ByteRange::new(at + 512, REGION_BYTES))]),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        open(vec![(1, ByteRange::new(at, 8 * BLOCK))]),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        open(vec![(1, ByteRange::new(DISK_BYTES - BLOCK, REGION_BYTES))]),
        ErrorKind::InvalidArgument
    );
    let region = world.pv(1).region;
    assert_eq!(
        open(vec![(1, region), (1, region)]),
        ErrorKind::InvalidArgument
    );
    // Nothing was written: the first open after all that formats the region.
    assert!(world
        .pv(1)
        .disk
        .stored(region.offset_bytes, 2 * BLOCK)
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn the_journals_of_failed_pvs_are_not_opened() {
    let world = world(2);
    runtime().block_on(async {
        let pvs = world.pv_set();
        pvs.fail(2, "failed earlier");
        let set = world.open(pvs).await;
        let report = set.recover().await.expect("recover");
        assert_eq!(report.journals.keys().copied().collect::<Vec<_>>(), vec![1]);
        let e = entry(0, vec![world.write(1, 0, 1, 1)]);
        let err = set.log(&[2], &e).await.expect_err("no journal");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    });
}

/// A recovered set with a completed entry of row 0 on PV 1's journal and
/// one of row 1 on PV 2's, both writing PV 3.
async fn with_one_completed_entry_on_pvs_1_and_2(world: &World, pvs: &PvSet) -> JournalSet {
    let set = world.open(pvs.clone()).await;
    set.recover().await.expect("recover");
    let on_1 = entry(0, vec![world.write(3, 0, 1, 1)]);
    let on_2 = entry(1, vec![world.write(3, 1, 1, 2)]);
    for (pv, e) in [(1, &on_1), (2, &on_2)] {
        let tickets = set.log(&[pv], e).await.expect("log");
        set.completed(tickets);
    }
    set
}

#[test]
fn a_barrier_fails_the_pv_whose_journal_header_cannot_be_written_and_holds_for_the_rest() {
    let world = world(3);
    runtime().block_on(async {
        let pvs = world.pv_set();
        let set = with_one_completed_entry_on_pvs_1_and_2(&world, &pvs).await;
        // PV 2's disk dies before the barrier writes its journal's header.
        world.pv(2).disk.fail();
        set.checkpoint_all()
            .await
            .expect("a dead PV degrades the pool; the barrier holds for the others");
        assert!(
            pvs.is_failed(2),
            "the PV whose header write failed is failed"
        );
        assert!(!pvs.is_failed(1) && !pvs.is_failed(3));
        assert!(!set.has_unretired(&[1], row(0)), "PV 1's entry is retired");
        // A failed PV's journal is never replayed, so nothing is left to retire.
        assert!(!set.has_unretired(&[1, 2], row(1)));
    });
}

#[test]
fn a_journal_header_that_does_not_read_back_fails_the_pv() {
    let world = world(3);
    runtime().block_on(async {
        let pvs = world.pv_set();
        let set = with_one_completed_entry_on_pvs_1_and_2(&world, &pvs).await;
        // PV 1's disk now spoils every write silently: its header would
        // read back as the older slot's after a restart.
        world.pv(1).disk.set_faults(SimFaults {
            write_corruption_probability: 1.0,
            ..SimFaults::default()
        });
        set.checkpoint_all()
            .await
            .expect("a failed PV degrades the pool; the barrier holds for the others");
        assert!(
            pvs.is_failed(1),
            "a journal whose header does not read back cannot be trusted"
        );
        assert!(!pvs.is_failed(2) && !pvs.is_failed(3));
        assert!(!set.has_unretired(&[2], row(1)), "PV 2's entry is retired");
        assert!(
            world.pv(1).disk.counters().write_corruptions >= 3,
            "retried"
        );
    });
}
