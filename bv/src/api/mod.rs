//! The management API: HTTP + JSON between `bv` commands and `bv serve`.
//!
//! It listens on a Unix socket in the data directory (mode 0600: only the
//! owner of the data directory can manage the server), and optionally on a
//! loopback TCP address. Routes mirror the CLI verbs: `GET /v1/pvs`,
//! `POST /v1/lvcreate`, ... Errors come back as `{"error": {"kind",
//! "message"}}` with a matching HTTP status, and the message is the one
//! line the CLI prints.

pub mod client;
pub mod routes;

use std::path::PathBuf;

use axum::http::StatusCode;
use blockvirt::{BlockError, ErrorKind};
use metadata::{LvReport, MetaError, PvReport, VgReport};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePv {
    pub path: PathBuf,
    /// Create a sparse file of this size when the path does not exist.
    pub size_bytes: Option<u64>,
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovePv {
    pub path: PathBuf,
}

/// `pvchange --fault MODE`: the fault to inject into a live PV.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangePv {
    pub path: PathBuf,
    /// `none`, `fail`, `eio:RATE`, `slow:MS` or `corrupt:RATE`.
    pub fault: String,
}

/// `pvmove PV`: move every extent leg off a PV.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MovePv {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVg {
    pub name: String,
    pub pvs: Vec<PathBuf>,
    pub extent_bytes: Option<u64>,
}

/// vgextend / vgreduce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeVg {
    pub name: String,
    pub pvs: Vec<PathBuf>,
}

/// `vgreduce --removemissing VG`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveMissing {
    pub name: String,
}

/// `vgchange --raid-fault-policy POLICY VG`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetFaultPolicy {
    pub name: String,
    pub policy: metadata::FaultPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveVg {
    pub name: String,
    /// Remove the VG's logical volumes first.
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateLv {
    pub vg: String,
    pub name: String,
    pub size_bytes: u64,
    pub thin: bool,
    pub layout: metadata::Layout,
    /// `--maxrecoveryrate`, bytes per second; 0: unlimited.
    #[serde(default)]
    pub max_recovery_rate: u64,
    /// `--raidintegrity y`.
    #[serde(default)]
    pub raid_integrity: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtendLv {
    pub vg: String,
    pub name: String,
    /// New size, or growth when `relative`.
    pub size_bytes: u64,
    pub relative: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LvName {
    pub vg: String,
    pub name: String,
}

/// `lvchange --syncaction check|repair VG/LV`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncAction {
    pub vg: String,
    pub name: String,
    /// Rewrite bad copies (`repair`) or only count them (`check`).
    pub repair: bool,
}

/// `lvchange --maxrecoveryrate RATE VG/LV`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetRecoveryRate {
    pub vg: String,
    pub name: String,
    /// Bytes per second; 0: unlimited.
    pub max_recovery_rate: u64,
}

/// What a maintenance job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// `lvconvert --repair`: rebuild legs lost with failed PVs elsewhere.
    Recover,
    /// `lvchange --syncaction check`: count bad copies.
    Check,
    /// `lvchange --syncaction repair`: count and rewrite bad copies.
    Repair,
    /// `pvmove`: move every leg off a PV.
    Move,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::Recover,
        JobKind::Check,
        JobKind::Repair,
        JobKind::Move,
    ];

    /// LVM's `raid_sync_action` spelling (`move` for pvmove).
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Recover => "recover",
            JobKind::Check => "check",
            JobKind::Repair => "repair",
            JobKind::Move => "move",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

/// A maintenance job's progress and outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub kind: JobKind,
    /// `VG/LV`, or the PV's path for pvmove.
    pub target: String,
    pub state: JobState,
    /// Extents done out of `total` (which may grow when a PV fails while
    /// a repair runs).
    pub done: u64,
    pub total: u64,
    /// Bytes written to new legs (recover, move).
    pub bytes_copied: u64,
    /// Blocks verified, and bad copies found / rewritten / beyond repair
    /// (check, repair).
    pub blocks_checked: u64,
    pub mismatches: u64,
    pub repaired: u64,
    pub unrecoverable: u64,
    pub elapsed_seconds: f64,
    /// The outcome, once the job has ended.
    pub message: Option<String>,
}

impl JobStatus {
    /// What a copying job moved and how fast: "96.0 MiB in 0.41 s, 234.1
    /// MiB/s".
    pub fn copied(&self) -> String {
        let mib = self.bytes_copied as f64 / (1 << 20) as f64;
        let seconds = self.elapsed_seconds.max(1e-6);
        format!("{mib:.1} MiB in {seconds:.2} s, {:.1} MiB/s", mib / seconds)
    }

    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            if self.state == JobState::Running {
                0.0
            } else {
                100.0
            }
        } else {
            self.done as f64 * 100.0 / self.total as f64
        }
    }
}

/// A PV as the running server sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PvStatus {
    #[serde(flatten)]
    pub report: PvReport,
    /// "online", "failed" or "missing", with the reason in `problem`.
    pub state: String,
    pub problem: Option<String>,
    /// The fault injected (`pvchange --fault`): "none" unless set; empty
    /// when the PV is not open.
    pub fault: String,
}

/// An LV as the running server sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LvStatus {
    #[serde(flatten)]
    pub report: LvReport,
    /// The NBD URI clients connect to.
    pub export_uri: String,
    /// The maintenance running on it: "idle", "recover", "check",
    /// "repair" or "move".
    pub sync_action: String,
    /// Redundant layouts: the running job's progress, or else the share of
    /// mapped extents with every leg healthy.
    pub sync_percent: Option<f64>,
    /// Bad copies found by the last check or repair since the server started.
    pub mismatches: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reports {
    pub pvs: Vec<PvStatus>,
    pub vgs: Vec<VgReport>,
    pub lvs: Vec<LvStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub version: String,
    pub nbd_address: String,
    pub data_dir: PathBuf,
}

/// An error as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ApiError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            kind: kind.to_string(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.kind.as_str() {
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "busy" | "fenced" => StatusCode::CONFLICT,
            "invalid_argument" => StatusCode::BAD_REQUEST,
            "no_space" => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<MetaError> for ApiError {
    fn from(err: MetaError) -> Self {
        let kind = match &err {
            MetaError::NotFound(_) => "not_found",
            MetaError::AlreadyExists(_) => "already_exists",
            MetaError::InvalidArgument(_) => "invalid_argument",
            MetaError::NoSpace(_) => "no_space",
            MetaError::Busy(_) => "busy",
            MetaError::Fenced(_) => "fenced",
            MetaError::Corrupt(_) => "corrupt",
            MetaError::Store(_) => "store",
        };
        ApiError::new(kind, err.to_string())
    }
}

impl From<BlockError> for ApiError {
    fn from(err: BlockError) -> Self {
        let kind = match err.kind() {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Busy => "busy",
            ErrorKind::InvalidArgument | ErrorKind::OutOfRange | ErrorKind::Unaligned => {
                "invalid_argument"
            }
            ErrorKind::NoSpace => "no_space",
            ErrorKind::Fenced => "fenced",
            _ => "io",
        };
        ApiError::new(kind, err.to_string())
    }
}
