//! A simulated disk's state under its lock, and the plan of one operation:
//! every random decision it needs, drawn in a fixed order before it sleeps
//! its latency, so the RNG sequence depends only on the order of calls.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use super::blocks::BLOCK_BYTES;
use super::cache::WriteCache;
use super::faults::{SimCounters, SimFaults};
use crate::device::ByteRange;
use crate::error::{BlockError, BlockResult, ErrorKind};

pub(super) struct State {
    /// The disk's one RNG: drawn only here and by `crash` / `corrupt_block`.
    pub rng: SmallRng,
    pub faults: SimFaults,
    pub counters: SimCounters,
    pub failed: bool,
    /// Bumped by every crash: an op planned before it fails after it.
    pub generation: u64,
    pub cache: WriteCache,
}

/// Which operation is being planned: each draws its own kinds of fault.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Write,
    Flush,
    Change, // discard, write-zeroes
    Status,
}

/// Every random decision of one operation, drawn before it sleeps.
pub(super) struct Plan {
    pub generation: u64,
    pub delay: Duration,
    pub error: bool,
    /// Flip `mask` into the byte at this offset of the op's buffer.
    pub flip: Option<(usize, u8)>,
    /// A misdirected write lands at this block instead.
    pub misdirect_to_block: Option<u64>,
}

impl State {
    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.random_bool(probability)
    }

    /// Every random decision for one op, in a fixed order.
    pub(super) fn plan(&mut self, op: Op, range: ByteRange, size_bytes: u64) -> Plan {
        let faults = self.faults;
        let mut plan = Plan {
            generation: self.generation,
            delay: Duration::ZERO,
            error: false,
            flip: None,
            misdirect_to_block: None,
        };
        if faults.latency_max_ms > 0 {
            let ms = self
                .rng
                .random_range(faults.latency_min_ms..=faults.latency_max_ms);
            plan.delay = Duration::from_millis(ms);
            if ms > 0 {
                self.counters.delays += 1;
            }
        }
        let error_probability = match op {
            Op::Read => faults.read_error_probability,
            Op::Write | Op::Change => faults.write_error_probability,
            Op::Flush => faults.flush_error_probability,
            Op::Status => 0.0,
        };
        plan.error = self.chance(error_probability);
        if plan.error || range.len_bytes == 0 {
            return plan;
        }
        let len = range.len_bytes as usize;
        match op {
            Op::Read => {
                if self.chance(faults.read_corruption_probability) {
                    plan.flip = Some(self.draw_flip(len));
                }
            }
            Op::Write => {
                if self.chance(faults.write_corruption_probability) {
                    plan.flip = Some(self.draw_flip(len));
                }
                if self.chance(faults.misdirected_write_probability) {
                    plan.misdirect_to_block = self.draw_misdirection(range, size_bytes);
                }
            }
            Op::Flush | Op::Change | Op::Status => {}
        }
        plan
    }

    /// A byte of a `len`-byte buffer and a non-zero mask, so the flip
    /// always changes the data.
    fn draw_flip(&mut self, len: usize) -> (usize, u8) {
        (
            self.rng.random_range(0..len),
            self.rng.random_range(1..=u8::MAX),
        )
    }

    /// Another start block where the whole write fits, or `None` when the
    /// write covers the disk and there is nowhere else to go.
    fn draw_misdirection(&mut self, range: ByteRange, size_bytes: u64) -> Option<u64> {
        let starts = (size_bytes - range.len_bytes) / BLOCK_BYTES + 1;
        if starts < 2 {
            return None;
        }
        let own = range.offset_bytes / BLOCK_BYTES;
        let other = self.rng.random_range(0..starts - 1);
        Some(if other >= own { other + 1 } else { other })
    }

    /// Whether a planned op may run now: the disk is alive and has not
    /// crashed since the op began.
    pub(super) fn admit(&mut self, plan: &Plan, what: &str) -> BlockResult<()> {
        if self.failed {
            self.counters.failed_ops += 1;
            return Err(BlockError::new(
                ErrorKind::Io,
                format!("sim disk: {what}: disk failed"),
            ));
        }
        if plan.generation != self.generation {
            self.counters.interrupted_ops += 1;
            return Err(BlockError::new(
                ErrorKind::Io,
                format!("sim disk: {what}: interrupted by a crash"),
            ));
        }
        Ok(())
    }
}

pub(super) fn injected(what: &str) -> BlockError {
    BlockError::new(
        ErrorKind::Io,
        format!("sim disk: {what}: injected I/O error"),
    )
}
