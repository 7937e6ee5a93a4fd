//! The redundancy layouts as I/O: `Redundancy` implementations that drive
//! the legs of a placed extent, built on the pure geometry and codecs of
//! this crate.
//!
//! ```text
//!  ThinVolume ──Redundancy──▶ Mirrored (linear, raid0, raid1, raid10)
//!                          └▶ Parity   (raid5, ec K+M) ──▶ JournalSet
//! ```
//!
//! Both follow the same rules:
//! - A leg that fails an I/O is marked failed (for every extent on its PV,
//!   and durably, by the PV set's owner), and the operation carries on
//!   without it while the layout's tolerance allows.
//! - Reads verify each block against the volume's checksum when the volume
//!   passes a check. A block that fails is recovered from the other copies
//!   (mirrors) or the rest of its row (parity); the bad copy is rewritten
//!   only when the caller holds the extent alone (`repair`).
//! - Copies that agree with each other but not with the checksum (a write
//!   that landed before a crash, its checksum never committed) are
//!   *adopted* only by a resync (`ScrubMode::Resync`), which the volume
//!   runs after an unclean shutdown or a failed write. Any other time such
//!   a block is damage: rot copied into parity, say.
//! - No wrong bytes are ever returned: when nothing vouches for a block
//!   the read fails.

mod mirrored;
mod parity;
mod verify;

use std::sync::Arc;

use blockvirt::volume::{Layouts, Linear, Redundancy};
use blockvirt::{BlockError, BlockResult, ErrorKind};
use metadata::{Layout, LvRecord};

use crate::codec::codec_for;
use crate::geometry::StripeGeometry;
use crate::journal::JournalSet;
pub use mirrored::Mirrored;
pub use parity::Parity;

/// Every layout, over a server's stripe journals.
pub struct RaidLayouts {
    journals: Arc<JournalSet>,
}

impl RaidLayouts {
    pub fn new(journals: Arc<JournalSet>) -> RaidLayouts {
        RaidLayouts { journals }
    }
}

impl Layouts for RaidLayouts {
    fn build(&self, lv: &LvRecord, pe_bytes: u64) -> BlockResult<Arc<dyn Redundancy>> {
        let layout = lv.layout;
        let invalid = |e: String| {
            BlockError::new(
                ErrorKind::InvalidArgument,
                format!("{}: {e}", layout.describe()),
            )
        };
        if layout == Layout::Linear {
            return Ok(Arc::new(Linear::new(pe_bytes)));
        }
        match StripeGeometry::new(layout, pe_bytes).map_err(|e| invalid(e.to_string()))? {
            StripeGeometry::Striped(geometry) if lv.raid_integrity => Ok(Arc::new(
                Mirrored::with_records(geometry, self.journals.clone()),
            )),
            StripeGeometry::Striped(geometry) => Ok(Arc::new(Mirrored::new(geometry))),
            StripeGeometry::Parity(geometry) => {
                let codec = codec_for(&layout)
                    .map_err(|e| invalid(e.to_string()))?
                    .ok_or_else(|| invalid("no codec".into()))?;
                Ok(Arc::new(Parity::new(
                    geometry,
                    codec,
                    self.journals.clone(),
                )))
            }
        }
    }
}
