//! Test support shared by every crate of the workspace.
//!
//! - [`run_conformance`]: the one suite every device and every stack runs.
//!
//! It lives in the library, not behind `cfg(test)`, so the crates stacked on
//! `blockvirt` (redundancy, dedup, the server) run the same checks.

mod conformance;

pub use conformance::{model_run, run_conformance};
