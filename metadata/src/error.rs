//! Errors of the metadata service. Messages are complete sentences for the
//! person at the CLI ("volume group vg0 not found"), because they travel
//! unchanged to `bv`'s one-line error output.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum MetaError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// Not enough free extents in the volume group.
    #[error("{0}")]
    NoSpace(String),
    /// In use (leased, or a PV that belongs to a VG).
    #[error("{0}")]
    Busy(String),
    /// The lease is gone or superseded; the holder must stop writing.
    #[error("{0}")]
    Fenced(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("metadata store: {0}")]
    Store(String),
}

pub type MetaResult<T> = Result<T, MetaError>;

/// A layout that does not fit is the caller's mistake.
impl From<crate::layout::GeometryError> for MetaError {
    fn from(err: crate::layout::GeometryError) -> Self {
        MetaError::InvalidArgument(err.to_string())
    }
}
