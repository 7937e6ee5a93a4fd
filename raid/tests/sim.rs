//! The seeded simulation of the redundancy layer: every layout through a
//! thin or thick volume over simulated disks, under a random concurrent
//! workload, disks going bad, power lost at random (also in the middle of
//! repairs, scrubs and journal recovery), checked against a model of the
//! volume's bytes (`sim/model.rs` says what it allows).
//!
//! One seed decides everything (`sim/plan.rs`): the layout and pool, which
//! disks go bad and how, and each life of the server between restarts.
//! A life opens the volume as a server does, runs batches of concurrent
//! requests (`sim/ops.rs`, `sim/run.rs`), and ends with a power loss, a
//! clean shutdown, or (the last one) a flush, a power loss and a check of
//! every block.
//!
//! `cargo test --release -p raid --test sim` runs a short range of seeds.
//! `BV_SIM_SEEDS=5000` runs seeds 0..5000 (`BV_SIM_SEEDS=A..B` a range);
//! `BV_SIM_SEED=N` replays seed N, and `BV_SIM_TRACE=1` prints its requests.
//! `BV_SIM_INTEGRITY=1` makes every mirror of two copies or more one with
//! `--raidintegrity y`; `simulation_of_mirrors_with_integrity` does that
//! for the short run's mirrors.

mod common;
#[path = "sim/model.rs"]
mod model;
#[path = "sim/ops.rs"]
mod ops;
#[path = "sim/plan.rs"]
mod plan;
#[path = "sim/run.rs"]
mod run;

use std::ops::Range;
use std::sync::mpsc;
use std::time::Duration;

use blockvirt::testing::{run_seeds, SimFaults};
use blockvirt::volume::{ThinVolume, VolumeOptions};
use blockvirt::Checked;
use common::pool::{Pool, PE};
use metadata::LvOptions;
use model::{Model, Tag, BLOCK};
use ops::{draw_io, Op, Shape};
use plan::{Fault, Plan};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use run::{judge, run_batch, Health};

/// Seeds of the short run (every layout eight times or more).
const SHORT_RUN: Range<u64> = 0..64;
/// Seeds beyond the short run that once found a bug, run with it: a
/// commit that snapshotted chunk bits set by a write that finished while it
/// waited, without that write's checksums (8539, 8618, 9679); the
/// model keeping writes after a shutdown whose last commit failed (4576);
/// a barrier failing every commit when a dead PV's journal header could not
/// be written (9007); a lost block rebuilt with rot from an unwritten chunk
/// (7991); a row rolled back by replaying its older journal entry over a
/// newer one the disk spoiled after it went in place (558, 3398, 5534);
/// rot a write had to fold into parity adopted by a resync (4886); an
/// unfinished ec 4+2 write next to rotten parity never adopted, since not
/// every shard agreed (13775, 14711); a resync recording the checksum of
/// a block read back from one copy, a flipped read or a stale copy, not
/// of what the copies settled on (11407, 11995, 14371); an unfinished
/// ec 4+2 write next to a rotten data block never adopted, since the rot
/// was only rebuilt together with the write's blocks (4527); a commit
/// recording checksums for an extent mapped anew after its snapshot
/// (23546); a flushed ec 2+1 write rolled back by an older entry of its
/// row when its own journal append went astray (20222); an extent of a
/// parity LV released before the commit that unmapped it, its rows torn
/// by a power loss (32774); a resync adopting a block rebuilt from parity
/// that a write had updated by delta from rot (36535); a journal header
/// write the disk spoiled, so the next recovery fell back to the older
/// slot and settled retired intents over data written since (30597); a
/// resync's rewrites of stale mirror copies lost to a second power loss,
/// so the stale copies outvoted a torn write over the decided one (29851);
/// a flushed ec 2+1 block on a lost leg, rebuilt from parity that agreed
/// with a torn neighbour as it stood, refused because the column as a
/// whole was beyond repair though the block matched its own checksum
/// (21918); a discard's PEs handed back a commit after the one that
/// unmapped them, by when the service had reserved them for the LV again,
/// so the new reservation was taken from under the write using it
/// (60882); a read of old bytes no checksum covers, flipped on the way by
/// a flaky disk, XORed into ec 4+2 parity by a partial-row write, which
/// left a later torn write's column beyond repair (74751); rot at rest in
/// such bytes XORed into raid5 parity the same way, so the block rotting
/// again could not be rebuilt (41957); a recovery that settled a torn
/// full-row write's column with a rotten block as "old" (its chunk was
/// unwritten, so any bytes counted), encoding parity that agreed with the
/// rot, which the resync then adopted (70846); a raid10 opened after a
/// power loss and closed cleanly before its background resync reached an
/// extent whose copies held writes never committed: the clean release
/// forgot the resync owed, and the next life failed reads of those blocks
/// with no disk at fault (238068).
/// Seeds shift their fault schedule when the stack's disk I/O changes
/// (a flush or a read more draws from the disk's RNG): 484, once here,
/// now lands in the 2-way mirror class docs/ARCHITECTURE.md describes.
const REGRESSIONS: [u64; 28] = [
    558, 3398, 4527, 4576, 4886, 5534, 7991, 8539, 8618, 9007, 9679, 11407, 11995, 13775, 14371,
    14711, 20222, 21918, 23546, 29851, 30597, 32774, 36535, 41957, 60882, 70846, 74751, 238068,
];
/// Real time one seed may take before it counts as hung.
const SEED_LIMIT: Duration = Duration::from_secs(120);

/// `BV_SIM_INTEGRITY=1` runs mirrors with `--raidintegrity y`.
#[test]
fn simulation() {
    let seeds = match std::env::var("BV_SIM_SEEDS") {
        Ok(value) => parse_seeds(&value),
        Err(_) => SHORT_RUN,
    };
    let integrity = std::env::var_os("BV_SIM_INTEGRITY").is_some_and(|v| v == "1");
    run_seeds(seeds, |seed| {
        with_deadline(seed, move || simulate(plan_of(seed, integrity)))
    });
}

/// The mirrors of the short run again, with integrity.
#[test]
fn simulation_of_mirrors_with_integrity() {
    let seeds: Vec<u64> = SHORT_RUN
        .filter(|&seed| Plan::with_integrity(seed).integrity)
        .collect();
    assert!(!seeds.is_empty());
    for seed in seeds {
        with_deadline(seed, move || simulate(Plan::with_integrity(seed)));
    }
}

fn plan_of(seed: u64, integrity: bool) -> Plan {
    match integrity {
        true => Plan::with_integrity(seed),
        false => Plan::new(seed),
    }
}

#[test]
fn regressions() {
    for seed in REGRESSIONS {
        with_deadline(seed, move || simulate(Plan::new(seed)));
    }
}

fn parse_seeds(value: &str) -> Range<u64> {
    let bad = || panic!("BV_SIM_SEEDS={value:?}: expected N or A..B");
    match value.split_once("..") {
        Some((a, b)) => {
            a.trim().parse().unwrap_or_else(|_| bad())..b.trim().parse().unwrap_or_else(|_| bad())
        }
        None => 0..value.trim().parse().unwrap_or_else(|_| bad()),
    }
}

/// Runs `f` on its own thread and fails if it takes over [`SEED_LIMIT`]:
/// a livelock fails the seed instead of hanging the run.
fn with_deadline(seed: u64, f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("seed {seed}"))
        .spawn(move || {
            f();
            let _ = done.send(());
        })
        .expect("spawn a seed's thread");
    match finished.recv_timeout(SEED_LIMIT) {
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running after {SEED_LIMIT:?}"),
        _ => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// One thread, paused time: the seed decides every interleaving. A new
/// runtime per life of the server, so a crash ends every task at once.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn simulate(plan: Plan) {
    let mut sim = Sim::new(plan.clone());
    let lives = plan.lives.len();
    for (life, &batches) in plan.lives.iter().enumerate() {
        runtime().block_on(sim.life(life, batches, life + 1 == lives));
        if sim.gave_up {
            break;
        }
    }
}

struct Sim {
    plan: Plan,
    rng: SmallRng,
    model: Model,
    shape: Shape,
    pool: Option<Pool>,
    /// The last tag handed to a write.
    tags: Tag,
    /// Batches run so far, over every life.
    batch: usize,
    /// Which of the plan's bad disks have gone bad.
    active: Vec<bool>,
    trace: Vec<String>,
    /// Beyond tolerance, a restart may fail; the seed ends there.
    gave_up: bool,
}

impl Sim {
    fn new(plan: Plan) -> Sim {
        let layout = plan.layout;
        let extent = layout.extent_bytes(PE);
        let unit = layout.unit_bytes().unwrap_or(PE);
        let shape = Shape {
            size: plan.extents * extent,
            extent,
            chunk: extent / 64,
            unit,
            row: unit * layout.data_legs() as u64,
        };
        Sim {
            rng: SmallRng::seed_from_u64(plan.seed),
            model: Model::new(shape.blocks()),
            shape,
            pool: None,
            tags: 0,
            batch: 0,
            active: vec![false; plan.bad.len()],
            trace: Vec::new(),
            gave_up: false,
            plan,
        }
    }

    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("pool made in the first life")
    }

    fn note(&mut self, what: String) {
        if std::env::var_os("BV_SIM_TRACE").is_some() {
            eprintln!("{what}");
        }
        self.trace.push(what);
    }

    /// Panics with the plan and the latest requests.
    fn fail(&self, what: &str) -> ! {
        let recent = &self.trace[self.trace.len().saturating_sub(40)..];
        panic!(
            "{what}\nplan: {:?}\nlatest events:\n  {}",
            self.plan,
            recent.join("\n  ")
        );
    }

    fn health(&self) -> Health {
        let bad = self.active.iter().filter(|a| **a).count();
        let tolerance = self.plan.layout.tolerance();
        if bad > tolerance {
            Health::Beyond
        } else if bad > 0 && bad == tolerance {
            Health::AtTolerance
        } else {
            Health::Sound
        }
    }

    async fn life(&mut self, life: usize, batches: usize, last: bool) {
        self.note(format!("life {life}"));
        let Some(volume) = self.boot(life == 0).await else {
            return;
        };
        if life > 0 && self.rng.random_bool(0.5) {
            self.check_all(&volume).await;
        }
        let crash_at_end = !last && self.rng.random_bool(0.8);
        for i in 0..batches {
            self.go_bad(&volume).await;
            let crash = crash_at_end && i + 1 == batches;
            let ops = self.draw_batch(&volume, crash).await;
            if self.run(&volume, ops, crash).await {
                return;
            }
        }
        if last {
            self.finish(volume).await;
        } else if !crash_at_end {
            self.note("clean shutdown".into());
            let closed = volume.inner().close().await;
            if let Err(e) = closed {
                if self.health() != Health::Beyond {
                    self.fail(&format!("close: {e}"));
                }
                // The last commit failed: the next life starts from what
                // was durable, as after a power loss (the disks keep their
                // bytes, but the map and checksums are the last committed).
                self.note(format!("close failed: {e}"));
                self.model.crash();
            }
        }
    }

    /// Opens the volume: on a new pool in the first life, after a restart
    /// (journals recovered first) in the others. `None` if the power failed
    /// during the restart, or a restart beyond tolerance failed.
    async fn boot(&mut self, first: bool) -> Option<Checked<ThinVolume>> {
        if first {
            let plan = &self.plan;
            let pool =
                Pool::with_faults(plan.disks, plan.pes_per_disk, plan.seed, plan.faults).await;
            let options = LvOptions {
                raid_integrity: plan.integrity,
                ..LvOptions::default()
            };
            pool.service
                .create_lv_with("vg", "lv", self.shape.size, plan.thin, plan.layout, options)
                .unwrap();
            self.pool = Some(pool);
            return Some(
                self.open()
                    .await
                    .unwrap_or_else(|e| self.fail(&format!("open: {e}"))),
            );
        }
        // Injected I/O errors stay off while the server starts: the
        // journal tests cover recovery's error paths.
        self.set_flaky(false);
        let crash_after = self
            .rng
            .random_bool(0.05)
            .then(|| Duration::from_millis(self.rng.random_range(0..=5)));
        let mut pool = self.pool.take().expect("pool");
        let restarted = match crash_after {
            None => Some(pool.restart().await),
            Some(delay) => tokio::select! {
                biased;
                result = pool.restart() => Some(result),
                () = tokio::time::sleep(delay) => None,
            },
        };
        self.pool = Some(pool);
        let opened = match restarted {
            None => {
                self.note("power lost during journal recovery".into());
                self.pool().crash();
                self.model.crash();
                return None;
            }
            Some(Ok(())) => self.open().await,
            Some(Err(e)) => Err(e),
        };
        self.set_flaky(true);
        match opened {
            Ok(volume) => Some(volume),
            Err(e) if self.health() == Health::Beyond => {
                self.note(format!("restart failed: {e}"));
                self.gave_up = true;
                None
            }
            Err(e) => self.fail(&format!("restart: {e}")),
        }
    }

    async fn open(&self) -> blockvirt::BlockResult<Checked<ThinVolume>> {
        let options = VolumeOptions {
            commit_interval: Duration::from_secs(1),
            ..VolumeOptions::default()
        };
        let volume = self.pool().open_with("lv", options).await?;
        Ok(Checked::new(volume))
    }

    /// Injected errors on or off on the flaky disks that have gone bad.
    fn set_flaky(&self, on: bool) {
        for (bad, active) in self.plan.bad.iter().zip(&self.active) {
            if let (Fault::Flaky(odds), true) = (bad.fault, *active) {
                let faults = if on {
                    with_odds(self.plan.faults, odds)
                } else {
                    self.plan.faults
                };
                self.pool().disks[bad.disk].set_faults(faults);
            }
        }
    }

    /// Disks whose time has come go bad; rotting disks rot some more.
    async fn go_bad(&mut self, volume: &Checked<ThinVolume>) {
        for i in 0..self.plan.bad.len() {
            let bad = self.plan.bad[i].clone();
            let onset = bad.onset == self.batch;
            if onset {
                self.active[i] = true;
                self.note(format!("disk {} goes bad: {:?}", bad.disk, bad.fault));
            }
            match bad.fault {
                Fault::Dies { announced } if onset => {
                    let pool = self.pool();
                    pool.disks[bad.disk].fail();
                    if announced {
                        pool.pvs.fail(pool.ids[bad.disk], "disk died");
                    }
                }
                Fault::Flaky(odds) if onset => {
                    self.pool().disks[bad.disk].set_faults(with_odds(self.plan.faults, odds));
                }
                Fault::Rots if self.active[i] && (onset || self.rng.random_bool(0.2)) => {
                    self.rot(volume, bad.disk).await;
                }
                _ => {}
            }
        }
    }

    /// Rots a block of a leg on `disk`.
    async fn rot(&mut self, volume: &Checked<ThinVolume>, disk: usize) {
        let mut legs = Vec::new();
        for le in 0..self.plan.extents {
            if let Some(placement) = volume.inner().placement(le).await {
                legs.extend(
                    placement
                        .into_iter()
                        .filter(|pe| self.pool().disk_of(pe.pv) == disk),
                );
            }
        }
        if legs.is_empty() {
            return;
        }
        let pe = legs[self.rng.random_range(0..legs.len())];
        let block = self.rng.random_range(0..PE / BLOCK);
        let (disk, offset) = self.pool().pe_offset(pe, block * BLOCK);
        self.pool().disks[disk].corrupt_block(offset);
        self.note(format!("rot: disk {disk}, PE {pe:?}, block {block}"));
    }

    async fn draw_batch(&mut self, volume: &Checked<ThinVolume>, crash: bool) -> Vec<Op> {
        let count = self.rng.random_range(1..=self.plan.concurrency);
        let mut ops: Vec<Op> = (0..count)
            .map(|_| draw_io(&mut self.rng, &self.shape, &mut self.tags))
            .collect();
        let redundant = self.plan.layout.is_redundant();
        let le = self.rng.random_range(0..self.plan.extents);
        if redundant && self.rng.random_bool(0.05) {
            ops.push(Op::Scrub { le });
        }
        if self.rng.random_bool(0.03) {
            let leg = self.rng.random_range(0..self.plan.layout.legs());
            ops.push(Op::Move { le, leg });
        }
        if self.rng.random_bool(0.2) && !volume.inner().degraded_extents().await.is_empty() {
            ops.push(Op::Repair);
        }
        // Power lost during maintenance, now and then.
        if crash && self.rng.random_bool(0.3) {
            ops.push(if redundant {
                Op::Scrub { le }
            } else {
                Op::Move { le, leg: 0 }
            });
        }
        ops
    }

    /// Runs a batch, ending in a power loss if `crash`; judges it. Returns
    /// whether the power was lost.
    async fn run(&mut self, volume: &Checked<ThinVolume>, ops: Vec<Op>, crash: bool) -> bool {
        let crash_after = crash.then(|| Duration::from_millis(self.rng.random_range(0..=6)));
        self.note(format!(
            "batch {} ({:?}){}: {ops:?}",
            self.batch,
            self.health(),
            crash_after.map_or(String::new(), |d| format!(", power lost after {d:?}"))
        ));
        let health = self.health();
        let pool = self.pool();
        let disks = crash_after.map(|d| (d, &pool.disks[..]));
        let outcomes = run_batch(volume, &pool.pvs, &ops, disks).await;
        let errors: Vec<String> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Some(Err(e)) => Some(format!("#{i}: {e}")),
                None => Some(format!("#{i}: unfinished")),
                _ => None,
            })
            .collect();
        if !errors.is_empty() {
            self.note(format!("  {}", errors.join("; ")));
        }
        if let Err(e) = judge(
            &mut self.model,
            &self.shape,
            health,
            &ops,
            &outcomes,
            self.tags,
        ) {
            self.fail(&format!("batch {}: {e}", self.batch));
        }
        self.batch += 1;
        if crash {
            self.model.crash();
        }
        crash
    }

    /// Reads every block, a few requests at a time.
    async fn check_all(&mut self, volume: &Checked<ThinVolume>) {
        let step = 64 * BLOCK;
        let reads: Vec<Op> = (0..self.shape.size)
            .step_by(step as usize)
            .map(|at| Op::Read {
                at,
                len: step.min(self.shape.size - at),
            })
            .collect();
        for batch in reads.chunks(4) {
            self.run(volume, batch.to_vec(), false).await;
        }
    }

    /// The end of the seed: a flush, every block read, a power loss, a
    /// restart, and every block read again.
    async fn finish(&mut self, volume: Checked<ThinVolume>) {
        self.run(&volume, vec![Op::Flush], false).await;
        self.check_all(&volume).await;
        drop(volume);
        self.pool().crash();
        self.model.crash();
        self.note("power lost; final check".into());
        if let Some(volume) = self.boot(false).await {
            self.check_all(&volume).await;
        }
    }
}

/// The seed's disk settings with a flaky disk's error odds.
fn with_odds(base: SimFaults, odds: SimFaults) -> SimFaults {
    SimFaults {
        read_error_probability: odds.read_error_probability,
        write_error_probability: odds.write_error_probability,
        flush_error_probability: odds.flush_error_probability,
        read_corruption_probability: odds.read_corruption_probability,
        write_corruption_probability: odds.write_corruption_probability,
        misdirected_write_probability: odds.misdirected_write_probability,
        ..base
    }
}
