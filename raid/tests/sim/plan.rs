//! What one seed simulates: the layout and the pool under it, and which
//! disks go bad, how and when. Everything is drawn from the seed.

use blockvirt::testing::SimFaults;
use metadata::Layout;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The layouts, in turn by seed, so every short run covers each of them.
const KINDS: usize = 8;

/// How a bad disk goes wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Dies: every operation fails from then on. `announced`: the server
    /// learns of it at once (its own probe), not from an I/O error.
    Dies { announced: bool },
    /// Blocks of its legs rot, now and then (`SimDisk::corrupt_block`).
    Rots,
    /// Injected I/O errors, silent read corruption, silently corrupted or
    /// misdirected writes, at these odds from then on.
    Flaky(SimFaults),
}

#[derive(Debug, Clone)]
pub struct BadDisk {
    pub disk: usize,
    pub fault: Fault,
    /// The batch (counted over the whole seed) before which it goes bad.
    pub onset: usize,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub layout: Layout,
    pub thin: bool,
    pub disks: usize,
    pub pes_per_disk: u64,
    pub extents: u64,
    /// Every disk: latency and the odds of each unflushed write at a crash.
    pub faults: SimFaults,
    pub bad: Vec<BadDisk>,
    /// Batches of requests in each life of the server (between restarts).
    pub lives: Vec<usize>,
    /// Most requests one batch runs concurrently.
    pub concurrency: usize,
    /// A mirror created with `--raidintegrity y` (set by the caller, not
    /// drawn: drawing it would change every seed's plan).
    pub integrity: bool,
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_5eed);
        let unit = 4096 << rng.random_range(2..=4); // 16, 32 or 64 KiB
        let layout = match seed as usize % KINDS {
            0 => Layout::Linear,
            1 => Layout::Raid0 {
                stripes: rng.random_range(2..=3),
                unit_bytes: unit,
            },
            2 => Layout::Raid1 { copies: 2 },
            3 => Layout::Raid1 { copies: 3 },
            4 => Layout::Raid10 {
                stripes: 2,
                copies: 2,
                unit_bytes: unit,
            },
            5 => Layout::Raid5 {
                stripes: rng.random_range(2..=4),
                unit_bytes: unit,
            },
            6 => Layout::Erasure {
                data: 2,
                parity: 1,
                unit_bytes: unit,
            },
            _ => Layout::Erasure {
                data: 4,
                parity: 2,
                unit_bytes: unit,
            },
        };
        // One seed in five loses more disks than the layout survives.
        let tolerance = layout.tolerance();
        let bad_count = if rng.random_bool(0.2) {
            tolerance + rng.random_range(1..=2)
        } else {
            rng.random_range(0..=tolerance)
        };
        let disks = layout.legs() + bad_count + rng.random_range(0..=2);
        let extents = rng.random_range(2..=5);
        let lives: Vec<usize> = (0..rng.random_range(1..=4))
            .map(|_| rng.random_range(8..=30))
            .collect();
        let total: usize = lives.iter().sum();
        let mut order: Vec<usize> = (0..disks).collect();
        let bad = (0..bad_count)
            .map(|_| {
                let disk = order.swap_remove(rng.random_range(0..order.len()));
                BadDisk {
                    disk,
                    fault: draw_fault(&mut rng, layout.is_redundant()),
                    onset: rng.random_range(0..total),
                }
            })
            .collect();
        let whole = rng.random_range(0.1..0.6);
        let faults = SimFaults {
            latency_min_ms: 0,
            latency_max_ms: rng.random_range(0..=3),
            crash_whole_probability: whole,
            crash_torn_probability: rng.random_range(0.0..(1.0 - whole)),
            ..SimFaults::default()
        };
        Plan {
            seed,
            layout,
            thin: rng.random_bool(0.7),
            disks,
            // Room for every extent on every disk, reservations, repairs.
            pes_per_disk: 2 * extents + 8,
            extents,
            faults,
            bad,
            lives,
            concurrency: rng.random_range(1..=4),
            integrity: false,
        }
    }

    /// The plan of `seed`, as a mirror with integrity where it is a mirror
    /// of two copies or more.
    pub fn with_integrity(seed: u64) -> Plan {
        let plan = Plan::new(seed);
        let mirror = match plan.layout {
            Layout::Raid1 { copies } | Layout::Raid10 { copies, .. } => copies >= 2,
            _ => false,
        };
        Plan {
            integrity: mirror,
            ..plan
        }
    }
}

/// Silent corruption only under redundant layouts: the others keep no
/// checksums, so nothing could tell rot from data.
fn draw_fault(rng: &mut SmallRng, redundant: bool) -> Fault {
    match rng.random_range(0..4) {
        0 | 1 => Fault::Dies {
            announced: rng.random_bool(0.5),
        },
        2 if redundant => Fault::Rots,
        _ => {
            let mut odds = SimFaults::default();
            let kinds = if redundant { 6 } else { 3 };
            match rng.random_range(0..kinds) {
                0 => odds.read_error_probability = 0.02,
                1 => odds.write_error_probability = 0.02,
                2 => odds.flush_error_probability = 0.05,
                3 => odds.read_corruption_probability = 0.05,
                4 => odds.write_corruption_probability = 0.05,
                _ => odds.misdirected_write_probability = 0.02,
            }
            Fault::Flaky(odds)
        }
    }
}
