//! Test support shared by every crate of the workspace.
//!
//! - [`run_conformance`]: the one suite every device and every stack runs.
//! - [`SimDisk`]: a deterministic, seeded, in-memory disk with a volatile
//!   write cache, crashes and injected faults, and the pristine truth kept
//!   aside for checkers.
//! - [`run_seeds`]: runs a simulation test over many seeds and prints the
//!   one that fails (`BV_SIM_SEED=N` replays it).
//!
//! It lives in the library, not behind `cfg(test)`, so the crates stacked on
//! `blockvirt` (redundancy, dedup, the server) run the same checks and
//! simulate the same disks.

mod conformance;
mod seeds;
mod sim;

pub use conformance::{model_run, run_conformance};
pub use seeds::{run_seeds, SEED_ENV};
pub use sim::{
    CrashOutcome, CrashReport, CrashedOp, OpKind, SimCounters, SimDisk, SimFaults, SimSession,
};
