//! Checkpoints and room in the ring: what is retired, when, and what is
//! kept; `has_unretired`; a full ring waits instead of failing; entries
//! that cannot be journaled are refused.

mod common;

use std::time::Duration;

use blockvirt::testing::SimFaults;
use blockvirt::volume::PvHandle;
use blockvirt::{ErrorKind, IoBuf};
use common::{entry, row, runtime, sleep_ms, Counting, World, BLOCK};
use raid::journal::{JournalEntry, JournalOptions, JournalSet, JournalWrite};

const DISK_BYTES: u64 = 1 << 20;
/// A ring of 14 blocks: entries of up to 7 blocks.
const REGION_BYTES: u64 = 64 << 10;

fn world(pvs: u64) -> World {
    World::new(2, pvs, DISK_BYTES, REGION_BYTES, SimFaults::default())
}

async fn recovered(world: &World) -> JournalSet {
    let set = world.open(world.pv_set()).await;
    set.recover().await.expect("recover");
    set
}

fn recover_after_crash(world: &World) -> raid::journal::RecoveryReport {
    world.crash();
    runtime().block_on(async {
        let set = world.open(world.pv_set()).await;
        set.recover().await.expect("recover")
    })
}

/// Whether `w`'s bytes are durable on its disk (would survive a crash).
fn durable(world: &World, w: &JournalWrite) -> bool {
    world
        .pv(w.pv)
        .disk
        .truth_durable(w.offset_bytes, w.data.len() as u64)
        == w.data[..]
}

#[test]
fn after_a_checkpoint_nothing_is_replayed_and_the_writes_are_durable() {
    let world = world(3);
    let entries: Vec<_> = (0..4)
        .map(|i| {
            entry(
                i,
                vec![
                    world.write(2, i, 100 + i, 1),
                    world.write(3, 2 * i, 200 + i, 2),
                ],
            )
        })
        .collect();
    runtime().block_on(async {
        let set = recovered(&world).await;
        for e in &entries {
            let tickets = set.log(&[1], e).await.expect("log");
            world.in_place(e).await;
            set.completed(tickets);
        }
        // (Earlier ones may have been retired by a background checkpoint.)
        assert!(
            !durable(&world, &entries[3].writes[0]),
            "in-place writes are not flushed yet"
        );
        set.checkpoint_all().await.expect("checkpoint");
        for (i, e) in entries.iter().enumerate() {
            assert!(!set.has_unretired(&[1], row(i as u64)));
            for w in &e.writes {
                assert!(
                    durable(&world, w),
                    "entry {i} write {w:?}: retired only once durable"
                );
            }
        }
    });
    let report = recover_after_crash(&world);
    assert_eq!(report.entries_replayed, 0, "{report:?}");
    assert_eq!(report.journals[&1].entries_found, 0);
    assert!(entries
        .iter()
        .flat_map(|e| &e.writes)
        .all(|w| world.holds(w)));
}

#[test]
fn entries_logged_after_a_checkpoint_are_replayed() {
    let world = world(2);
    let before = entry(0, vec![world.write(2, 0, 1, 1)]);
    let after = entry(1, vec![world.write(2, 1, 2, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[1], &before).await.expect("log");
        world.in_place(&before).await;
        set.completed(tickets);
        set.checkpoint_all().await.expect("checkpoint");
        // Logged, and the power fails before any in-place write.
        let _tickets = set.log(&[1], &after).await.expect("log");
    });
    let report = recover_after_crash(&world);
    assert_eq!(report.entries_replayed, 1, "{report:?}");
    assert!(world.holds(&before.writes[0]) && world.holds(&after.writes[0]));
}

#[test]
fn a_completed_entry_is_kept_until_a_checkpoint() {
    let world = world(2);
    let e = entry(0, vec![world.write(2, 0, 1, 2)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[1], &e).await.expect("log");
        world.in_place(&e).await;
        set.completed(tickets);
        assert!(set.has_unretired(&[1], row(0)));
    });
    // The in-place write was not flushed: the crash may drop or tear it.
    let report = recover_after_crash(&world);
    assert_eq!(report.entries_replayed, 1, "{report:?}");
    assert!(world.holds(&e.writes[0]));
}

#[test]
fn a_checkpoint_writes_no_header_before_the_targets_are_flushed() {
    let world = world(2);
    let e = entry(0, vec![world.write(2, 0, 1, 2)]);
    let target = Counting::new(world.pv(2).disk.clone());
    let rt = runtime();
    rt.block_on(async {
        let pvs = world.pv_set();
        pvs.insert(
            2,
            PvHandle {
                device: target.clone(),
                data_offset_bytes: world.pv(2).data_offset_bytes,
            },
            false,
        );
        let set = world.open(pvs).await;
        set.recover().await.expect("recover");
        let tickets = set.log(&[1], &e).await.expect("log");
        world.in_place(&e).await;
        set.completed(tickets);
        target.hold_flushes();
        let stalled = tokio::time::timeout(Duration::from_secs(10), set.checkpoint_all()).await;
        assert!(
            stalled.is_err(),
            "the checkpoint waits for the target's flush"
        );
        assert!(set.has_unretired(&[1], row(0)));
    });
    drop(rt);
    let report = recover_after_crash(&world);
    assert_eq!(report.entries_replayed, 1, "{report:?}");
    assert!(world.holds(&e.writes[0]));
}

#[test]
fn a_checkpoint_waits_for_tickets_not_handed_back() {
    let world = world(2);
    let e = entry(0, vec![world.write(2, 0, 1, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let tickets = set.log(&[1], &e).await.expect("log");
        let checkpoint = tokio::spawn({
            let set = set.clone();
            async move { set.checkpoint_all().await }
        });
        sleep_ms(1000).await;
        assert!(!checkpoint.is_finished(), "in-place writes still running");
        assert!(set.has_unretired(&[1], row(0)));
        world.in_place(&e).await;
        set.completed(tickets);
        checkpoint.await.expect("task").expect("checkpoint");
        assert!(!set.has_unretired(&[1], row(0)));
        assert!(durable(&world, &e.writes[0]));
    });
}

#[test]
fn has_unretired_is_per_row_and_per_journal() {
    let world = world(4);
    runtime().block_on(async {
        let pvs = world.pv_set();
        let set = world.open(pvs.clone()).await;
        set.recover().await.expect("recover");
        let e = entry(5, vec![world.write(3, 0, 1, 1)]);
        let tickets = set.log(&[1, 2], &e).await.expect("log");
        assert_eq!(tickets.len(), 2);
        assert!(set.has_unretired(&[1], row(5)));
        assert!(set.has_unretired(&[2, 4], row(5)));
        assert!(!set.has_unretired(&[3, 4], row(5)));
        assert!(!set.has_unretired(&[1, 2], row(6)));
        // A failed PV's journal is never replayed: it does not count.
        pvs.fail(1, "test");
        assert!(!set.has_unretired(&[1], row(5)));
        assert!(set.has_unretired(&[1, 2], row(5)));
        set.completed(tickets);
        set.checkpoint_all().await.expect("checkpoint");
        assert!(!set.has_unretired(&[2], row(5)));
    });
}

#[test]
fn a_full_ring_waits_for_room_and_never_fails() {
    let world = world(2);
    runtime().block_on(async {
        let set = recovered(&world).await;
        // 300 entries of 7 blocks through a 14-block ring, no explicit checkpoint.
        for i in 0..300 {
            let e = entry(i % 8, vec![world.write(2, (i % 8) * 6, i, 6)]);
            let tickets = set.log(&[1], &e).await.expect("log");
            world.in_place(&e).await;
            set.completed(tickets);
        }
        // With the ring full of entries whose tickets are held, a log waits
        // until one is handed back.
        let first = set
            .log(&[1], &entry(0, vec![world.write(2, 0, 1, 6)]))
            .await
            .expect("log");
        let second = set
            .log(&[1], &entry(1, vec![world.write(2, 6, 2, 6)]))
            .await
            .expect("log");
        let third = tokio::spawn({
            let set = set.clone();
            let e = entry(2, vec![world.write(2, 12, 3, 6)]);
            async move { set.log(&[1], &e).await.map(|t| set.completed(t)) }
        });
        sleep_ms(1000).await;
        assert!(!third.is_finished(), "no room until a ticket comes back");
        set.completed(first);
        third.await.expect("task").expect("log after room was made");
        set.completed(second);
    });
}

#[test]
fn a_ring_over_half_full_is_checkpointed_in_the_background() {
    let world = world(2);
    runtime().block_on(async {
        let set = recovered(&world).await;
        for i in 0..3 {
            let e = entry(i, vec![world.write(2, i * 4, i, 3)]);
            let tickets = set.log(&[1], &e).await.expect("log");
            world.in_place(&e).await;
            set.completed(tickets);
        }
        // The third log found 12 of 14 blocks used and started a checkpoint,
        // which retired the entries completed by then.
        sleep_ms(100).await;
        assert!(!set.has_unretired(&[1], row(0)) && !set.has_unretired(&[1], row(1)));
    });
}

#[test]
fn periodic_checkpoints_retire_an_idle_journal() {
    let world = world(2);
    runtime().block_on(async {
        let options = JournalOptions {
            checkpoint_interval: Some(Duration::from_secs(1)),
        };
        let set = JournalSet::open_with(world.pv_set(), world.regions(), options)
            .await
            .expect("open");
        set.recover().await.expect("recover");
        let e = entry(0, vec![world.write(2, 0, 1, 1)]);
        let tickets = set.log(&[1], &e).await.expect("log");
        world.in_place(&e).await;
        set.completed(tickets);
        assert!(set.has_unretired(&[1], row(0)));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!set.has_unretired(&[1], row(0)));
        assert!(durable(&world, &e.writes[0]));
    });
}

#[test]
fn entries_that_cannot_be_journaled_are_refused() {
    let world = world(3);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let refuse = |e: JournalEntry, pvs: Vec<u64>, kind: ErrorKind| {
            let set = set.clone();
            async move {
                let err = set.log(&pvs, &e).await.expect_err("refused");
                assert_eq!(err.kind(), kind, "{err}");
            }
        };
        let w = |block, blocks| world.write(2, block, 1, blocks);
        // 8 blocks with the header: over half of a 14-block ring.
        refuse(entry(0, vec![w(0, 7)]), vec![1], ErrorKind::InvalidArgument).await;
        refuse(entry(0, vec![]), vec![1], ErrorKind::InvalidArgument).await;
        let unaligned = JournalWrite {
            pv: 2,
            offset_bytes: world.pv(2).data_offset_bytes + 512,
            data: IoBuf::zeroed(BLOCK as usize),
        };
        refuse(
            entry(0, vec![unaligned]),
            vec![1],
            ErrorKind::InvalidArgument,
        )
        .await;
        let short = JournalWrite {
            data: IoBuf::zeroed(100),
            ..w(0, 1)
        };
        refuse(entry(0, vec![short]), vec![1], ErrorKind::InvalidArgument).await;
        refuse(
            entry(0, vec![w(0, 2), w(1, 1)]),
            vec![1],
            ErrorKind::InvalidArgument,
        )
        .await;
        refuse(entry(0, vec![w(0, 1)]), vec![], ErrorKind::InvalidArgument).await;
        refuse(
            entry(0, vec![w(0, 1)]),
            vec![1, 1],
            ErrorKind::InvalidArgument,
        )
        .await;
        refuse(entry(0, vec![w(0, 1)]), vec![1, 9], ErrorKind::NotFound).await;
        // In-place writes go to data areas only: not a journal, not a label,
        // not an unknown PV.
        let into_journal = JournalWrite {
            offset_bytes: world.pv(2).region.offset_bytes,
            ..w(0, 1)
        };
        refuse(
            entry(0, vec![into_journal]),
            vec![1],
            ErrorKind::InvalidArgument,
        )
        .await;
        let past_end = JournalWrite {
            offset_bytes: DISK_BYTES - BLOCK,
            ..w(0, 2)
        };
        refuse(
            entry(0, vec![past_end]),
            vec![1],
            ErrorKind::InvalidArgument,
        )
        .await;
        let unknown = JournalWrite { pv: 9, ..w(0, 1) };
        refuse(entry(0, vec![unknown]), vec![1], ErrorKind::InvalidArgument).await;
        // The largest entry fits, and nothing above left a trace.
        let tickets = set
            .log(&[1, 3], &entry(0, vec![w(0, 6)]))
            .await
            .expect("log");
        set.completed(tickets);
        assert!(!set.has_unretired(&[1], row(1)));
    });
}

/// Several journals of one set hold their rows apart: an entry on PV 1's
/// journal never shows on PV 2's.
#[test]
fn journals_are_independent() {
    let world = world(3);
    let a = entry(0, vec![world.write(3, 0, 1, 1)]);
    let b = entry(1, vec![world.write(3, 1, 2, 1)]);
    runtime().block_on(async {
        let set = recovered(&world).await;
        let ta = set.log(&[1], &a).await.expect("log");
        let tb = set.log(&[2], &b).await.expect("log");
        assert!(set.has_unretired(&[1], row(0)) && !set.has_unretired(&[2], row(0)));
        assert!(set.has_unretired(&[2], row(1)) && !set.has_unretired(&[1], row(1)));
        drop((ta, tb));
    });
    let report = recover_after_crash(&world);
    assert_eq!(report.entries_replayed, 2);
    assert_eq!(report.journals[&1].entries_found, 1);
    assert_eq!(report.journals[&2].entries_found, 1);
}
