//! What a simulated disk does wrong ([`SimFaults`]), and how often it did
//! ([`SimCounters`]).
//!
//! Every fault is off by default: a `SimDisk` with `SimFaults::default()`
//! behaves as a perfect disk with a volatile write cache. Probabilities are
//! per operation and drawn from the disk's one seeded RNG, so a seed decides
//! which operation fails.

/// Fault configuration of a [`SimDisk`](super::SimDisk). Probabilities are in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimFaults {
    /// A read fails with an I/O error.
    pub read_error_probability: f64,
    /// A write, discard or write-zeroes fails with an I/O error and changes
    /// nothing.
    pub write_error_probability: f64,
    /// A flush fails; nothing becomes durable (the cache stays as it was).
    pub flush_error_probability: f64,
    /// A successful read returns one byte with flipped bits; the stored data
    /// stays intact (a bad cable or controller, silent to the caller).
    pub read_corruption_probability: f64,
    /// A write stores one byte with flipped bits (latent corruption: every
    /// later read sees it, the truth does not).
    pub write_corruption_probability: f64,
    /// A write lands at another block range; its own blocks keep their old
    /// contents.
    pub misdirected_write_probability: f64,
    /// Each operation first sleeps a uniform draw in
    /// `[latency_min_ms, latency_max_ms]` (`tokio::time::sleep`, so virtual
    /// under tokio's paused time). Milliseconds because tokio's timer has
    /// that resolution: a finer draw would be rounded up. Both zero: none.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// At `crash()`, an unflushed write (or discard, or write-zeroes)
    /// persists whole with this probability...
    pub crash_whole_probability: f64,
    /// ...persists torn (some of its blocks) with this one, and is lost
    /// otherwise.
    pub crash_torn_probability: f64,
}

impl Default for SimFaults {
    /// No faults. Crash outcomes (used only when a test calls `crash()`) are
    /// whole, torn and lost with equal odds.
    fn default() -> Self {
        SimFaults {
            read_error_probability: 0.0,
            write_error_probability: 0.0,
            flush_error_probability: 0.0,
            read_corruption_probability: 0.0,
            write_corruption_probability: 0.0,
            misdirected_write_probability: 0.0,
            latency_min_ms: 0,
            latency_max_ms: 0,
            crash_whole_probability: 1.0 / 3.0,
            crash_torn_probability: 1.0 / 3.0,
        }
    }
}

impl SimFaults {
    /// Panics with a clear message on a configuration no disk can follow:
    /// a test that asks for one is wrong, not unlucky.
    pub(crate) fn validate(&self) {
        let probabilities = [
            ("read_error_probability", self.read_error_probability),
            ("write_error_probability", self.write_error_probability),
            ("flush_error_probability", self.flush_error_probability),
            (
                "read_corruption_probability",
                self.read_corruption_probability,
            ),
            (
                "write_corruption_probability",
                self.write_corruption_probability,
            ),
            (
                "misdirected_write_probability",
                self.misdirected_write_probability,
            ),
            ("crash_whole_probability", self.crash_whole_probability),
            ("crash_torn_probability", self.crash_torn_probability),
        ];
        for (name, p) in probabilities {
            assert!(
                (0.0..=1.0).contains(&p),
                "SimFaults::{name} = {p} is not in [0, 1]"
            );
        }
        assert!(
            self.crash_whole_probability + self.crash_torn_probability <= 1.0,
            "SimFaults: crash_whole_probability + crash_torn_probability exceeds 1"
        );
        assert!(
            self.latency_min_ms <= self.latency_max_ms,
            "SimFaults: latency_min_ms {} exceeds latency_max_ms {}",
            self.latency_min_ms,
            self.latency_max_ms
        );
    }
}

/// How many faults a [`SimDisk`](super::SimDisk) injected since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    pub read_errors: u64,
    /// Failed writes, discards and write-zeroes.
    pub write_errors: u64,
    pub flush_errors: u64,
    /// Operations refused because the disk was `fail()`ed.
    pub failed_ops: u64,
    /// Operations in flight (sleeping their latency) when `crash()` ran;
    /// they fail and change nothing.
    pub interrupted_ops: u64,
    /// Reads that returned flipped bits.
    pub read_corruptions: u64,
    /// Writes that stored flipped bits.
    pub write_corruptions: u64,
    /// Blocks flipped through `corrupt_block`.
    pub latent_corruptions: u64,
    pub misdirected_writes: u64,
    /// Operations that slept a non-zero latency.
    pub delays: u64,
    pub crashes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_injects_nothing() {
        let faults = SimFaults::default();
        faults.validate();
        assert_eq!(faults.read_error_probability, 0.0);
        assert_eq!(faults.latency_max_ms, 0);
    }

    #[test]
    #[should_panic(expected = "read_error_probability = 1.5")]
    fn a_probability_above_one_is_refused() {
        SimFaults {
            read_error_probability: 1.5,
            ..SimFaults::default()
        }
        .validate();
    }

    #[test]
    #[should_panic(expected = "exceeds 1")]
    fn crash_odds_must_leave_room() {
        SimFaults {
            crash_whole_probability: 0.7,
            crash_torn_probability: 0.7,
            ..SimFaults::default()
        }
        .validate();
    }
}
