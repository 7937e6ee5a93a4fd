//! How an LV's logical extents lie on PVs: linear, striped, mirrored,
//! parity, erasure coded.
//!
//! A logical extent maps to a *placed extent*: `legs()` PEs on distinct
//! PVs. It holds `data_legs() × pe_bytes` user bytes, so a striped or
//! parity LV allocates in groups of PEs, as LVM does for striped LVs. The
//! metadata service only needs the leg counts (for placement) and the
//! validation. The byte-level math lives in the `raid` crate.

use serde::{Deserialize, Serialize};

use crate::error::{MetaError, MetaResult};

/// LVM's default stripe size.
pub const DEFAULT_UNIT_BYTES: u32 = 64 << 10;
/// The smallest stripe unit: one I/O block.
pub const MIN_UNIT_BYTES: u32 = 4 << 10;
/// Most legs one placed extent may have.
pub const MAX_LEGS: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// One PE per extent.
    Linear,
    /// Striped over `stripes` PEs, no redundancy.
    Raid0 { stripes: u32, unit_bytes: u32 },
    /// `copies` identical PEs.
    Raid1 { copies: u32 },
    /// `stripes` data PEs and one rotating parity PE.
    Raid5 { stripes: u32, unit_bytes: u32 },
    /// Striped over `stripes` mirror groups of `copies` PEs each.
    Raid10 {
        stripes: u32,
        copies: u32,
        unit_bytes: u32,
    },
    /// `data` data PEs and `parity` Reed-Solomon parity PEs, rotating.
    Erasure {
        data: u32,
        parity: u32,
        unit_bytes: u32,
    },
}

impl Layout {
    /// PEs per placed extent, each on a distinct PV.
    pub fn legs(&self) -> usize {
        (match *self {
            Layout::Linear => 1,
            Layout::Raid0 { stripes, .. } => stripes,
            Layout::Raid1 { copies } => copies,
            Layout::Raid5 { stripes, .. } => stripes + 1,
            Layout::Raid10 {
                stripes, copies, ..
            } => stripes * copies,
            Layout::Erasure { data, parity, .. } => data + parity,
        }) as usize
    }

    /// PEs' worth of user data per placed extent.
    pub fn data_legs(&self) -> usize {
        (match *self {
            Layout::Linear | Layout::Raid1 { .. } => 1,
            Layout::Raid0 { stripes, .. }
            | Layout::Raid5 { stripes, .. }
            | Layout::Raid10 { stripes, .. } => stripes,
            Layout::Erasure { data, .. } => data,
        }) as usize
    }

    /// Legs of one placed extent that may fail without losing data (for
    /// raid10: per mirror group).
    pub fn tolerance(&self) -> usize {
        (match *self {
            Layout::Linear | Layout::Raid0 { .. } => 0,
            Layout::Raid1 { copies } | Layout::Raid10 { copies, .. } => copies - 1,
            Layout::Raid5 { .. } => 1,
            Layout::Erasure { parity, .. } => parity,
        }) as usize
    }

    pub fn is_redundant(&self) -> bool {
        self.tolerance() > 0
    }

    /// LVM's segment type name.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Linear => "linear",
            Layout::Raid0 { .. } => "raid0",
            Layout::Raid1 { .. } => "raid1",
            Layout::Raid5 { .. } => "raid5",
            Layout::Raid10 { .. } => "raid10",
            Layout::Erasure { .. } => "ec",
        }
    }

    /// A short human description: "raid5 3+1", "ec 4+2", "raid1 x2".
    pub fn describe(&self) -> String {
        match *self {
            Layout::Linear => "linear".into(),
            Layout::Raid0 { stripes, .. } => format!("raid0 x{stripes}"),
            Layout::Raid1 { copies } => format!("raid1 x{copies}"),
            Layout::Raid5 { stripes, .. } => format!("raid5 {stripes}+1"),
            Layout::Raid10 {
                stripes, copies, ..
            } => format!("raid10 {stripes}x{copies}"),
            Layout::Erasure { data, parity, .. } => format!("ec {data}+{parity}"),
        }
    }

    pub fn unit_bytes(&self) -> Option<u32> {
        match *self {
            Layout::Linear | Layout::Raid1 { .. } => None,
            Layout::Raid0 { unit_bytes, .. }
            | Layout::Raid5 { unit_bytes, .. }
            | Layout::Raid10 { unit_bytes, .. }
            | Layout::Erasure { unit_bytes, .. } => Some(unit_bytes),
        }
    }

    /// User bytes of one placed extent on PEs of `pe_bytes`.
    pub fn extent_bytes(&self, pe_bytes: u64) -> u64 {
        self.data_legs() as u64 * pe_bytes
    }

    /// Checks the parameters against each other and the VG's PE size.
    pub fn validate(&self, pe_bytes: u64) -> MetaResult<()> {
        let invalid = |why: String| Err(MetaError::InvalidArgument(why));
        let at_least = |what: &str, value: u32, min: u32| {
            if value < min {
                Err(MetaError::InvalidArgument(format!(
                    "{} needs at least {min} {what} (got {value})",
                    self.name()
                )))
            } else {
                Ok(())
            }
        };
        match *self {
            Layout::Linear => {}
            Layout::Raid0 { stripes, .. } => at_least("stripes", stripes, 2)?,
            Layout::Raid1 { copies } => at_least("copies", copies, 2)?,
            Layout::Raid5 { stripes, .. } => at_least("stripes", stripes, 2)?,
            Layout::Raid10 {
                stripes, copies, ..
            } => {
                at_least("stripes", stripes, 2)?;
                at_least("copies", copies, 2)?;
            }
            Layout::Erasure { data, parity, .. } => {
                at_least("data shards", data, 2)?;
                at_least("parity shards", parity, 1)?;
            }
        }
        if self.legs() > MAX_LEGS as usize {
            return invalid(format!(
                "{} has {} legs; at most {MAX_LEGS}",
                self.describe(),
                self.legs()
            ));
        }
        if let Some(unit) = self.unit_bytes() {
            if !unit.is_power_of_two() || unit < MIN_UNIT_BYTES || u64::from(unit) > pe_bytes {
                return invalid(format!(
                    "stripe size {unit} must be a power of two between {} KiB and the extent size ({} KiB)",
                    MIN_UNIT_BYTES >> 10,
                    pe_bytes >> 10
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PE: u64 = 4 << 20;

    #[test]
    fn leg_counts_and_tolerance() {
        let cases = [
            (Layout::Linear, 1, 1, 0),
            (
                Layout::Raid0 {
                    stripes: 3,
                    unit_bytes: DEFAULT_UNIT_BYTES,
                },
                3,
                3,
                0,
            ),
            (Layout::Raid1 { copies: 3 }, 3, 1, 2),
            (
                Layout::Raid5 {
                    stripes: 3,
                    unit_bytes: DEFAULT_UNIT_BYTES,
                },
                4,
                3,
                1,
            ),
            (
                Layout::Raid10 {
                    stripes: 2,
                    copies: 2,
                    unit_bytes: DEFAULT_UNIT_BYTES,
                },
                4,
                2,
                1,
            ),
            (
                Layout::Erasure {
                    data: 4,
                    parity: 2,
                    unit_bytes: DEFAULT_UNIT_BYTES,
                },
                6,
                4,
                2,
            ),
        ];
        for (layout, legs, data, tolerance) in cases {
            layout.validate(PE).unwrap();
            assert_eq!(
                (layout.legs(), layout.data_legs(), layout.tolerance()),
                (legs, data, tolerance),
                "{layout:?}"
            );
            assert_eq!(layout.extent_bytes(PE), data as u64 * PE);
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        for layout in [
            Layout::Raid0 {
                stripes: 1,
                unit_bytes: DEFAULT_UNIT_BYTES,
            },
            Layout::Raid1 { copies: 1 },
            Layout::Raid5 {
                stripes: 1,
                unit_bytes: DEFAULT_UNIT_BYTES,
            },
            Layout::Raid10 {
                stripes: 2,
                copies: 1,
                unit_bytes: DEFAULT_UNIT_BYTES,
            },
            Layout::Erasure {
                data: 4,
                parity: 0,
                unit_bytes: DEFAULT_UNIT_BYTES,
            },
            Layout::Raid5 {
                stripes: 3,
                unit_bytes: 3000,
            },
            Layout::Raid5 {
                stripes: 3,
                unit_bytes: 2048,
            },
            Layout::Raid5 {
                stripes: 3,
                unit_bytes: 8 << 20,
            },
            Layout::Erasure {
                data: 30,
                parity: 3,
                unit_bytes: DEFAULT_UNIT_BYTES,
            },
        ] {
            assert!(layout.validate(PE).is_err(), "{layout:?} accepted");
        }
    }
}
