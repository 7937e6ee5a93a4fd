//! Crash simulation: several simulated PVs, each with a journal, and
//! workers that update rows the way a parity layout does (log the row's new
//! bytes on its parity PVs' journals, write them in place, hand the tickets
//! back), with checkpoints and data flushes in between. Every disk loses
//! power at a random moment (unflushed writes lost, torn or kept, as the
//! seed decides), sometimes again in the middle of recovery; then the
//! journals are recovered and every row is checked.
//!
//! The check, per row: its bytes are exactly the state after every entry
//! whose `log` returned, or that state plus the one entry that was being
//! logged when power went. Never a mix of versions (the write hole), never
//! an older state (a lost acknowledged entry), never bytes no entry wrote
//! (garbage from a torn entry), and nothing outside the rows changes.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use blockvirt::testing::run_seeds;
use blockvirt::{BlockDevice, WriteFlags};
use common::{pattern, runtime, sleep_ms, with_latency, World, BLOCK};
use futures::future::join_all;
use metadata::{PeAddr, PvId};
use raid::journal::{JournalEntry, JournalSet, JournalWrite, RecoveryReport, RowKey};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PVS: u64 = 4;
const DISK_BYTES: u64 = 1 << 20;
/// A ring of 14 blocks: entries of up to 7, so it wraps and fills all the time.
const REGION_BYTES: u64 = 64 << 10;
const ROWS: u64 = 10;
const ROW_STRIDE_BYTES: u64 = 16 << 10;
const WORKERS: u64 = 4;
const LIVES: u64 = 3;

/// Where a row lives: three legs on distinct PVs, the first one or two of
/// them parity (their journals get the row's entries), one range per leg.
struct RowPlan {
    key: RowKey,
    journal_pvs: Vec<PvId>,
    /// (PV, device offset, length) per leg.
    ranges: Vec<(PvId, u64, u64)>,
}

fn plans(world: &World) -> Vec<RowPlan> {
    (0..ROWS)
        .map(|r| {
            let legs: Vec<PvId> = (0..3).map(|i| (r + i) % PVS + 1).collect();
            let parity = if r % 3 == 0 { 2 } else { 1 };
            let ranges = legs
                .iter()
                .enumerate()
                .map(|(i, &pv)| {
                    let offset = world.pv(pv).data_offset_bytes + r * ROW_STRIDE_BYTES;
                    (pv, offset, (1 + (r + i as u64) % 2) * BLOCK)
                })
                .collect();
            RowPlan {
                key: RowKey {
                    pe: PeAddr { pv: legs[0], pe: 0 },
                    row: r,
                },
                journal_pvs: legs[..parity].to_vec(),
                ranges,
            }
        })
        .collect()
}

/// Contents of range `range` of row `row` at `version` (0: never written).
fn contents(row: u64, range: usize, version: u64, len: u64) -> Vec<u8> {
    if version == 0 {
        return vec![0; len as usize];
    }
    pattern((row << 40) | ((range as u64) << 32) | version, len).to_vec()
}

#[derive(Debug, Clone, Default)]
struct RowModel {
    /// Version of each range after every entry whose log returned.
    acked: Vec<u64>,
    /// The entry being logged when the power went: (range, version).
    pending: Option<Vec<(usize, u64)>>,
    next_version: u64,
    busy: bool,
}

struct Model {
    rows: Vec<RowModel>,
    logged: u64,
    replayed: u64,
    torn: u64,
    pending_applied: u64,
    pending_dropped: u64,
}

type Shared = Rc<RefCell<Model>>;

async fn worker(
    set: JournalSet,
    world: Rc<World>,
    plans: Rc<Vec<RowPlan>>,
    model: Shared,
    seed: u64,
    ops: Option<u64>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut done = 0;
    while ops.is_none_or(|ops| done < ops) {
        match rng.random_range(0..24) {
            0 => {
                set.checkpoint_all().await.expect("checkpoint");
                continue;
            }
            1 => {
                let pv = rng.random_range(1..=PVS);
                world.pv(pv).disk.flush().await.expect("data flush");
                continue;
            }
            _ => {}
        }
        let row = rng.random_range(0..ROWS) as usize;
        let version = {
            let mut m = model.borrow_mut();
            let r = &mut m.rows[row];
            if r.busy {
                None
            } else {
                r.busy = true;
                r.next_version += 1;
                Some(r.next_version)
            }
        };
        let Some(version) = version else {
            // Another worker has this row: a layout serializes a row's updates.
            sleep_ms(1).await;
            continue;
        };
        let plan = &plans[row];
        let mut subset: Vec<usize> = (0..plan.ranges.len())
            .filter(|_| rng.random_bool(0.6))
            .collect();
        if subset.is_empty() {
            subset.push(rng.random_range(0..plan.ranges.len()));
        }
        let writes: Vec<JournalWrite> = subset
            .iter()
            .map(|&i| {
                let (pv, offset, len) = plan.ranges[i];
                JournalWrite {
                    pv,
                    offset_bytes: offset,
                    data: blockvirt::IoBuf::copy_from(&contents(row as u64, i, version, len)),
                }
            })
            .collect();
        let entry = JournalEntry {
            row: plan.key,
            writes: writes.clone(),
            intent: None,
        };
        model.borrow_mut().rows[row].pending = Some(subset.iter().map(|&i| (i, version)).collect());
        let tickets = set.log(&plan.journal_pvs, &entry).await.expect("log");
        {
            let mut m = model.borrow_mut();
            m.logged += 1;
            let r = &mut m.rows[row];
            for (i, v) in r.pending.take().expect("pending entry") {
                r.acked[i] = v;
            }
        }
        let in_place = writes.into_iter().map(|w| {
            let disk = world.pv(w.pv).disk.clone();
            async move {
                let (result, _) = disk
                    .write_at(w.offset_bytes, w.data, WriteFlags::empty())
                    .await;
                result.expect("in-place write");
            }
        });
        join_all(in_place).await;
        set.completed(tickets);
        model.borrow_mut().rows[row].busy = false;
        done += 1;
    }
}

/// Opens and recovers the journals; `None` if `limit` ran out first.
async fn recover(world: &World, limit: Option<Duration>) -> Option<(JournalSet, RecoveryReport)> {
    let run = async {
        let set = world.open(world.pv_set()).await;
        let report = set.recover().await.expect("recover");
        (set, report)
    };
    match limit {
        Some(limit) => tokio::time::timeout(limit, run).await.ok(),
        None => Some(run.await),
    }
}

/// Checks every row against the model and settles each pending entry.
fn check(world: &World, plans: &[RowPlan], model: &mut Model, report: &RecoveryReport) {
    assert_eq!(report.entries_invalid, 0, "{report:?}");
    assert_eq!(report.writes_skipped, 0, "{report:?}");
    for part in report.journals.values() {
        assert!(part.read && part.torn_entries <= 1, "{report:?}");
        model.torn += part.torn_entries + part.damaged_entries;
    }
    model.replayed += report.entries_replayed;
    for (row, plan) in plans.iter().enumerate() {
        let actual: Vec<Vec<u8>> = plan
            .ranges
            .iter()
            .map(|&(pv, offset, len)| world.pv(pv).disk.stored(offset, len))
            .collect();
        let state = |versions: &[u64]| -> Vec<Vec<u8>> {
            plan.ranges
                .iter()
                .enumerate()
                .map(|(i, &(_, _, len))| contents(row as u64, i, versions[i], len))
                .collect()
        };
        let r = &mut model.rows[row];
        let mut with_pending = r.acked.clone();
        if let Some(pending) = &r.pending {
            for &(i, v) in pending {
                with_pending[i] = v;
            }
        }
        if actual == state(&r.acked) {
            // The pending entry did not survive: its versions are gone.
            if r.pending.is_some() {
                model.pending_dropped += 1;
            }
        } else if r.pending.is_some() && actual == state(&with_pending) {
            r.acked = with_pending;
            model.pending_applied += 1;
        } else {
            let seen: Vec<String> = actual
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let version = (0..=r.next_version)
                        .find(|&v| contents(row as u64, i, v, bytes.len() as u64) == *bytes);
                    format!("range {i}: {version:?}")
                })
                .collect();
            panic!(
                "row {row} is not a whole version: acked {:?}, pending {:?}, on disk {seen:?}",
                r.acked, r.pending
            );
        }
        r.pending = None;
        r.busy = false;
    }
    // Nothing outside the rows' ranges was written.
    for pv in &world.pvs {
        let start = pv.data_offset_bytes;
        let mut area = pv.disk.stored(start, DISK_BYTES - start);
        for plan in plans {
            for &(target, offset, len) in &plan.ranges {
                if target == pv.id {
                    let at = (offset - start) as usize;
                    area[at..at + len as usize].fill(0);
                }
            }
        }
        assert!(
            area.iter().all(|&b| b == 0),
            "PV {} has bytes outside every row",
            pv.id
        );
    }
}

fn run(seed: u64) -> Model {
    // Odd seeds run on disks without FUA: entries then wait for flushes.
    let world = Rc::new(World::with_fua(
        seed,
        PVS,
        DISK_BYTES,
        REGION_BYTES,
        with_latency(2),
        seed.is_multiple_of(2),
    ));
    let plans = Rc::new(plans(&world));
    let model = Rc::new(RefCell::new(Model {
        rows: plans
            .iter()
            .map(|p| RowModel {
                acked: vec![0; p.ranges.len()],
                ..RowModel::default()
            })
            .collect(),
        logged: 0,
        replayed: 0,
        torn: 0,
        pending_applied: 0,
        pending_dropped: 0,
    }));
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    for life in 0..LIVES {
        // Start: sometimes the power fails again during recovery.
        if rng.random_bool(0.3) {
            let limit = Duration::from_millis(rng.random_range(0..30));
            runtime().block_on(recover(&world, Some(limit)));
            world.crash();
        }
        let rt = runtime();
        let (set, report) = rt.block_on(recover(&world, None)).expect("no time limit");
        check(&world, &plans, &mut model.borrow_mut(), &report);
        // Run until the power fails.
        let limit = Duration::from_millis(rng.random_range(1..300));
        let workers = (0..WORKERS).map(|w| {
            worker(
                set.clone(),
                world.clone(),
                plans.clone(),
                model.clone(),
                seed * 100 + life * 10 + w,
                None,
            )
        });
        rt.block_on(async {
            let _ = tokio::time::timeout(limit, join_all(workers)).await;
        });
        drop(set);
        drop(rt);
        world.crash();
    }
    // Last start: recover, check, then run to completion and checkpoint:
    // nothing is left to replay, and no worker waited forever.
    let rt = runtime();
    let (set, report) = rt.block_on(recover(&world, None)).expect("no time limit");
    check(&world, &plans, &mut model.borrow_mut(), &report);
    rt.block_on(async {
        let workers = (0..WORKERS).map(|w| {
            worker(
                set.clone(),
                world.clone(),
                plans.clone(),
                model.clone(),
                seed * 100 + 90 + w,
                Some(20),
            )
        });
        tokio::time::timeout(Duration::from_secs(3600), join_all(workers))
            .await
            .expect("workers finish: no one waits forever for journal room");
        set.checkpoint_all().await.expect("checkpoint");
    });
    drop(set);
    drop(rt);
    world.crash();
    let (_, report) = runtime()
        .block_on(recover(&world, None))
        .expect("no time limit");
    assert_eq!(
        report.entries_replayed, 0,
        "a checkpoint retires everything logged before it"
    );
    check(&world, &plans, &mut model.borrow_mut(), &report);
    let model = model.borrow();
    assert!(model.logged > 0);
    Model {
        rows: Vec::new(),
        ..*model
    }
}

#[test]
fn every_acknowledged_row_update_survives_crashes_whole() {
    let mut totals = [0u64; 5];
    run_seeds(0..300, |seed| {
        let m = run(seed);
        for (t, v) in totals.iter_mut().zip([
            m.logged,
            m.replayed,
            m.torn,
            m.pending_applied,
            m.pending_dropped,
        ]) {
            *t += v;
        }
    });
    eprintln!(
        "logged {}, replayed {}, torn tails {}, in-flight entries applied {} / dropped {}",
        totals[0], totals[1], totals[2], totals[3], totals[4]
    );
}
