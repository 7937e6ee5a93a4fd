//! What the server hands the metrics at each scrape: its state, read once
//! (reports from the metadata service, counters from live devices, jobs,
//! NBD counts), so the gauges describe one moment and nothing on the data
//! path keeps them up to date.

use blockvirt::counted::ErrorCounts;
use blockvirt::leaf::{FaultCounters, FaultMode};
use metadata::VgReport;

use crate::api::{JobKind, JobStatus, LvStatus, PvStatus};

pub struct Snapshot {
    pub pvs: Vec<PvSample>,
    pub vgs: Vec<VgReport>,
    pub lvs: Vec<LvStatus>,
    pub jobs: Vec<JobStatus>,
    /// One per job kind, since the server started.
    pub job_totals: Vec<JobTotals>,
    pub nbd: NbdCounts,
}

pub struct PvSample {
    pub status: PvStatus,
    /// `None` when the server could not open the PV.
    pub device: Option<PvDeviceSample>,
}

/// Counters of an open PV's device wrappers.
pub struct PvDeviceSample {
    pub errors: ErrorCounts,
    pub mode: FaultMode,
    pub injected: FaultCounters,
}

/// What the jobs of one kind did since the server started, finished and
/// forgotten ones included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTotals {
    pub kind: JobKind,
    pub copied_bytes: u64,
    pub checked_blocks: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct NbdCounts {
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub requests_in_flight: u64,
}
