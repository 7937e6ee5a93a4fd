//! What a gateway reports about the requests it answers.
//!
//! Gateways keep no volume state, so they keep no per-volume statistics
//! either: an export carries an [`IoObserver`] from the server, and the
//! gateway calls it once per request when the reply is ready. The server
//! decides what to count (it keeps Prometheus metrics per LV).
//!
//! The call sits on the request path of every connection to the export at
//! once, so an observer must be cheap and must never block: atomic
//! counters, no locks, no allocation.

use std::time::Duration;

/// The kinds of request a gateway reports, named as NBD names them
/// (an iSCSI READ is a `Read`, an UNMAP a `Trim`, a SYNCHRONIZE CACHE a
/// `Flush`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    /// Discard (NBD `TRIM`).
    Trim,
    WriteZeroes,
    BlockStatus,
    Cache,
}

impl IoOp {
    /// Every kind, in the order of [`IoOp::index`].
    pub const ALL: [IoOp; 7] = [
        IoOp::Read,
        IoOp::Write,
        IoOp::Flush,
        IoOp::Trim,
        IoOp::WriteZeroes,
        IoOp::BlockStatus,
        IoOp::Cache,
    ];

    /// A lower-case name, fit for a metric label.
    pub fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Trim => "trim",
            IoOp::WriteZeroes => "write_zeroes",
            IoOp::BlockStatus => "block_status",
            IoOp::Cache => "cache",
        }
    }

    /// A dense index into arrays of `ALL.len()` entries.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Told about every request of a known kind that an export answers.
pub trait IoObserver: Send + Sync + 'static {
    /// One request answered: its kind, the length of the range it named
    /// (0 for a flush), the time from reading its header to its reply
    /// being ready, and whether the reply was a success. Requests refused
    /// before reaching the device (out of range, bad flags, shutdown) are
    /// reported too, as failures.
    fn completed(&self, op: IoOp, len_bytes: u64, elapsed: Duration, ok: bool);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_the_order_of_all_and_names_are_distinct() {
        for (index, op) in IoOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), index);
        }
        let mut names: Vec<&str> = IoOp::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), IoOp::ALL.len());
    }
}
