//! What the NBD server serves: the [`Exports`] catalogue it asks for names
//! and devices, and the [`Export`] handle one connection holds.
//!
//! The server keeps no volume state of its own. It asks the catalogue to
//! `open` an export when a client selects one (`NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_EXPORT_NAME`), keeps the returned [`Export`] for exactly as long
//! as the client uses it, and drops it (with its `guard`) afterwards. The
//! guard is how the catalogue learns that a connection has finished: it can
//! release a write lease, unpin a volume, or count users.
//!
//! Names are opaque strings to the server (`VG/LV` in production); an empty
//! name is the protocol's "default export", which is simply unknown unless
//! the catalogue knows it.
//!
//! # Multi-connection consistency
//!
//! The server advertises `NBD_FLAG_CAN_MULTI_CONN`: a client may spread one
//! export over several connections and expect a FLUSH on any of them to make
//! every write completed on any of them durable. That holds only if every
//! connection to one export reaches the **same** device (the same `Arc`, or
//! devices that share one write-back cache and one flush). An `Exports`
//! implementation must therefore hand out the same device for every `open`
//! of a name while an earlier connection still holds it, never a second,
//! independently cached instance.

use std::sync::Arc;

use async_trait::async_trait;
use blockvirt::BlockDevice;
use thiserror::Error;

use crate::observe::IoObserver;

/// One entry of `NBD_OPT_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportListing {
    pub name: String,
    /// Shown to humans by clients (`nbdinfo --list`); may be empty.
    pub description: String,
}

/// An opened export, held by one connection.
pub struct Export {
    pub device: Arc<dyn BlockDevice>,
    /// Sent as `NBD_INFO_DESCRIPTION`; may be empty.
    pub description: String,
    /// Told about every request answered on this export, if any.
    pub observer: Option<Arc<dyn IoObserver>>,
    /// Dropped when the connection ends (after in-flight requests finish), or
    /// right after the reply to `NBD_OPT_INFO`, which opens without using.
    pub guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("device", &self.device)
            .field("description", &self.description)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// Why an export could not be opened. The message reaches the client (as
/// the text of an option error reply), so it must not leak internals that
/// an unauthenticated peer should not see.
#[derive(Debug, Error)]
pub enum ExportError {
    /// No export by that name: `NBD_REP_ERR_UNKNOWN`.
    #[error("no such export")]
    Unknown,
    /// The export exists but is in use in a way that excludes this client
    /// (an exclusive lease held elsewhere): `NBD_REP_ERR_POLICY`.
    #[error("export is busy: {0}")]
    Busy(String),
    /// The export exists but could not be opened: `NBD_REP_ERR_UNKNOWN`
    /// ("not available") with the message.
    #[error("export could not be opened: {0}")]
    Failed(String),
}

/// The catalogue of exports a server offers.
#[async_trait]
pub trait Exports: Send + Sync + 'static {
    /// Every export a client may select, for `NBD_OPT_LIST`.
    async fn list(&self) -> Vec<ExportListing>;

    /// Opens `name` for one connection. See the module docs for the rule
    /// that every open of one name must share one device.
    async fn open(&self, name: &str) -> Result<Export, ExportError>;
}
