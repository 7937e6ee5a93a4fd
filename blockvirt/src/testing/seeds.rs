//! Running a simulation test over many seeds, and replaying the one that failed.
//!
//! A simulation test is a function of its seed: the same seed gives the same
//! faults, the same crash outcomes, the same failure. [`run_seeds`] runs it
//! for a range of seeds; when one panics it prints
//! `failing seed: N (replay with BV_SIM_SEED=N)` and goes on with the next,
//! and at the end the test fails naming every failing seed (a long run
//! reports them all at once). Setting `BV_SIM_SEED=N` runs only seed `N`.

use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};

/// The environment variable that replays one seed.
pub const SEED_ENV: &str = "BV_SIM_SEED";

/// Runs `test(seed)` for every seed in `seeds`, or only for the seed named
/// by `BV_SIM_SEED` when it is set. Panics after the last seed if any
/// failed, naming them.
pub fn run_seeds(seeds: Range<u64>, mut test: impl FnMut(u64)) {
    let replay = match std::env::var(SEED_ENV) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(value)) => {
            panic!("{SEED_ENV}={value:?} is not a seed (expected an integer)")
        }
    };
    let seeds = seeds_to_run(seeds, replay.as_deref()).unwrap_or_else(|e| panic!("{e}"));
    let count = seeds.len();
    let mut failing = Vec::new();
    for seed in seeds {
        // Each seed builds its world afresh, so one that panicked leaves
        // nothing behind that a later seed could observe.
        if panic::catch_unwind(AssertUnwindSafe(|| test(seed))).is_err() {
            eprintln!("failing seed: {seed} (replay with {SEED_ENV}={seed})");
            failing.push(seed);
        }
    }
    assert!(
        failing.is_empty(),
        "{} of {count} seeds failed: {failing:?}",
        failing.len()
    );
}

/// The seeds a run covers: the range, or the one seed being replayed.
fn seeds_to_run(seeds: Range<u64>, replay: Option<&str>) -> Result<Vec<u64>, String> {
    match replay {
        None => Ok(seeds.collect()),
        Some(value) => value
            .trim()
            .parse::<u64>()
            .map(|seed| vec![seed])
            .map_err(|_| format!("{SEED_ENV}={value:?} is not a seed (expected an integer)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_runs_every_seed() {
        assert_eq!(seeds_to_run(3..6, None), Ok(vec![3, 4, 5]));
        assert_eq!(seeds_to_run(0..0, None), Ok(vec![]));
    }

    #[test]
    fn a_replayed_seed_runs_alone_even_outside_the_range() {
        assert_eq!(seeds_to_run(0..10, Some("42")), Ok(vec![42]));
        assert_eq!(seeds_to_run(0..10, Some(" 7\n")), Ok(vec![7]));
    }

    #[test]
    fn a_bad_replay_value_is_a_clear_error() {
        let err = seeds_to_run(0..10, Some("seven")).unwrap_err();
        assert!(err.contains("BV_SIM_SEED=\"seven\""), "{err}");
    }
}
