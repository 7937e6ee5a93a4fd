//! Blockvirt's metadata: the durable truth about physical volumes, volume
//! groups, logical volumes, extent maps and extent allocation, kept in
//! RocksDB and served out of band from the data path.
//!
//! - [`store`]: the key-value store trait and its RocksDB implementation.
//! - [`model`]: the records and their encoding.
//! - [`alloc`]: which physical extents are free, and where new ones go.
//! - [`service`]: the service that owns it all (control and data paths).
//! - [`lease`]: the data path's interface: leases, reservations, commits.
//!
//! This crate depends on nothing else of Blockvirt's.

pub mod alloc;
pub mod error;
pub mod layout;
pub mod lease;
pub mod model;
pub mod service;
pub mod store;

pub use error::{MetaError, MetaResult};
pub use layout::Layout;
pub use lease::{CommitBatch, LeaseGrant, LeaseToken, LocalMapService, MapChange, MapService};
pub use model::{
    ChunkChecksums, ExtentEntry, FaultPolicy, LvId, LvOptions, LvRecord, PeAddr, Placement, PvId,
    PvRecord, VgId, VgRecord,
};
pub use service::{LvReport, PvReport, Service, VgReport};
