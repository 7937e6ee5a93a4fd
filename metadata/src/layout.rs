//! The redundancy layouts an extent can have, with LVM's names, and the
//! checks that make a layout valid for a given PE size.
//!
//! A logical extent maps to a *placed extent*: `legs()` PEs on distinct
//! PVs holding `data_legs() × pe_bytes` user bytes, so a striped or parity
//! LV allocates in groups of PEs, as LVM does for striped LVs. The metadata
//! keeps the layout with each LV; the byte-level math (`raid::geometry`)
//! takes it as its input. Validation lives here so that every error a user
//! can cause (`lvcreate --type raid5 -i 1`, a stripe size of 3 KiB) has one
//! wording.
//!
//! There is no RAID 0+1 (a stripe set mirrored as a whole): `Raid10` gives
//! the same capacity and the same speed, and survives strictly more
//! failure sets. With N stripes and 2 copies, raid10 loses data only when
//! both legs of one mirror pair fail; 0+1 loses it as soon as one leg fails
//! on each side, whichever stripes they hold. LVM has no raid01 type either.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// LVM's default stripe size.
pub const DEFAULT_UNIT_BYTES: u64 = 64 * 1024;
/// The smallest stripe unit: one logical block.
pub const MIN_UNIT_BYTES: u64 = 4096;
/// The PE sizes a VG may have (`vgcreate -s`).
pub const MIN_PE_BYTES: u64 = 256 * 1024;
pub const MAX_PE_BYTES: u64 = 64 * 1024 * 1024;
/// Legs of one placed extent. 64 lets a set of legs be one `u64` bitmask.
pub const MAX_LEGS: usize = 64;

/// How one extent's user bytes are spread over its legs (PEs on distinct
/// PVs). Counts are what LVM's options say: `-i` stripes, `-m` + 1 copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// One leg.
    Linear,
    /// `stripes` legs; user bytes go round them one unit at a time.
    Raid0 { stripes: usize, unit_bytes: u64 },
    /// `copies` legs, each a full copy (`lvcreate -m copies-1`).
    Raid1 { copies: usize },
    /// raid0 over `stripes` mirror groups of `copies` legs each.
    Raid10 {
        stripes: usize,
        copies: usize,
        unit_bytes: u64,
    },
    /// `stripes` data shards and one XOR parity shard per row, rotating.
    Raid5 { stripes: usize, unit_bytes: u64 },
    /// `data` data shards and `parity` Reed-Solomon parity shards per row.
    Erasure {
        data: usize,
        parity: usize,
        unit_bytes: u64,
    },
}

impl Layout {
    /// LVM's type name (`ec` for erasure coding, which LVM lacks).
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Linear => "linear",
            Layout::Raid0 { .. } => "raid0",
            Layout::Raid1 { .. } => "raid1",
            Layout::Raid10 { .. } => "raid10",
            Layout::Raid5 { .. } => "raid5",
            Layout::Erasure { .. } => "ec",
        }
    }

    /// PEs per placed extent. Saturates instead of overflowing so that
    /// validation can report absurd counts.
    pub fn legs(&self) -> usize {
        match *self {
            Layout::Linear => 1,
            Layout::Raid0 { stripes, .. } => stripes,
            Layout::Raid1 { copies } => copies,
            Layout::Raid10 {
                stripes, copies, ..
            } => stripes.saturating_mul(copies),
            Layout::Raid5 { stripes, .. } => stripes.saturating_add(1),
            Layout::Erasure { data, parity, .. } => data.saturating_add(parity),
        }
    }

    /// The stripe unit, for the layouts that stripe.
    pub fn unit_bytes(&self) -> Option<u64> {
        match *self {
            Layout::Linear | Layout::Raid1 { .. } => None,
            Layout::Raid0 { unit_bytes, .. }
            | Layout::Raid10 { unit_bytes, .. }
            | Layout::Raid5 { unit_bytes, .. }
            | Layout::Erasure { unit_bytes, .. } => Some(unit_bytes),
        }
    }

    /// Checks the layout against a PE size with the production limits.
    pub fn validate(&self, pe_bytes: u64) -> Result<(), GeometryError> {
        self.validate_within(pe_bytes, &Limits::PRODUCTION)
    }

    pub fn validate_within(&self, pe_bytes: u64, limits: &Limits) -> Result<(), GeometryError> {
        if !pe_bytes.is_power_of_two()
            || pe_bytes < limits.min_pe_bytes
            || pe_bytes > limits.max_pe_bytes
        {
            return Err(GeometryError::PeSize {
                pe_bytes,
                min: limits.min_pe_bytes,
                max: limits.max_pe_bytes,
            });
        }
        let name = self.name();
        let at_least = |what: &'static str, min: usize, got: usize| {
            if got < min {
                Err(GeometryError::TooFew {
                    layout: name,
                    what,
                    min,
                    got,
                })
            } else {
                Ok(())
            }
        };
        match *self {
            Layout::Linear => {}
            // One stripe is linear, one copy is linear: refusing them keeps
            // one spelling per placement.
            Layout::Raid0 { stripes, .. } => at_least("stripes", 2, stripes)?,
            Layout::Raid1 { copies } => at_least("copies", 2, copies)?,
            Layout::Raid10 {
                stripes, copies, ..
            } => {
                at_least("stripes", 2, stripes)?;
                at_least("copies", 2, copies)?;
            }
            Layout::Raid5 { stripes, .. } => at_least("stripes", 2, stripes)?,
            // ec:1+M is raid1 with M+1 copies.
            Layout::Erasure { data, parity, .. } => {
                at_least("data shards", 2, data)?;
                at_least("parity shard", 1, parity)?;
            }
        }
        let legs = self.legs();
        if legs > MAX_LEGS {
            return Err(GeometryError::TooManyLegs {
                layout: name,
                legs,
                max: MAX_LEGS,
            });
        }
        if let Some(unit_bytes) = self.unit_bytes() {
            if !unit_bytes.is_power_of_two() {
                return Err(GeometryError::UnitNotPowerOfTwo { unit_bytes });
            }
            if unit_bytes < limits.min_unit_bytes {
                return Err(GeometryError::UnitTooSmall {
                    unit_bytes,
                    min: limits.min_unit_bytes,
                });
            }
            // Both are powers of two, so a unit no larger than the PE
            // divides it: a PE holds a whole number of rows.
            if unit_bytes > pe_bytes {
                return Err(GeometryError::UnitLargerThanPe {
                    unit_bytes,
                    pe_bytes,
                });
            }
        }
        Ok(())
    }
}

/// The bounds validation applies. Production uses [`Limits::PRODUCTION`];
/// the exhaustive tests shrink units and PEs to a few bytes, where every
/// byte of an extent can be checked, because the arithmetic does not
/// depend on magnitude.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min_unit_bytes: u64,
    pub min_pe_bytes: u64,
    pub max_pe_bytes: u64,
}

impl Limits {
    pub const PRODUCTION: Limits = Limits {
        min_unit_bytes: MIN_UNIT_BYTES,
        min_pe_bytes: MIN_PE_BYTES,
        max_pe_bytes: MAX_PE_BYTES,
    };
}

/// Why a layout cannot be used with a PE size.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GeometryError {
    #[error("{layout} needs at least {min} {what}, got {got}")]
    TooFew {
        layout: &'static str,
        what: &'static str,
        min: usize,
        got: usize,
    },
    #[error("{layout} with {legs} legs exceeds the maximum of {max} legs")]
    TooManyLegs {
        layout: &'static str,
        legs: usize,
        max: usize,
    },
    #[error("stripe unit of {unit_bytes} bytes is not a power of two")]
    UnitNotPowerOfTwo { unit_bytes: u64 },
    #[error("stripe unit of {unit_bytes} bytes is smaller than the minimum of {min} bytes")]
    UnitTooSmall { unit_bytes: u64, min: u64 },
    #[error(
        "stripe unit of {unit_bytes} bytes is larger than the extent size of {pe_bytes} bytes"
    )]
    UnitLargerThanPe { unit_bytes: u64, pe_bytes: u64 },
    #[error("extent size of {pe_bytes} bytes is not a power of two between {min} and {max} bytes")]
    PeSize { pe_bytes: u64, min: u64, max: u64 },
}

impl Layout {
    /// PEs' worth of user data per placed extent.
    pub fn data_legs(&self) -> usize {
        match *self {
            Layout::Linear | Layout::Raid1 { .. } => 1,
            Layout::Raid0 { stripes, .. }
            | Layout::Raid5 { stripes, .. }
            | Layout::Raid10 { stripes, .. } => stripes,
            Layout::Erasure { data, .. } => data,
        }
    }

    /// Legs of one placed extent that may fail, whichever they are, without
    /// losing data (raid10 survives more when failures hit different
    /// mirror groups).
    pub fn tolerance(&self) -> usize {
        match *self {
            Layout::Linear | Layout::Raid0 { .. } => 0,
            Layout::Raid1 { copies } | Layout::Raid10 { copies, .. } => copies - 1,
            Layout::Raid5 { .. } => 1,
            Layout::Erasure { parity, .. } => parity,
        }
    }

    pub fn is_redundant(&self) -> bool {
        self.tolerance() > 0
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

    /// User bytes of one placed extent on PEs of `pe_bytes`.
    pub fn extent_bytes(&self, pe_bytes: u64) -> u64 {
        self.data_legs() as u64 * pe_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PE: u64 = 4 << 20;

    #[test]
    fn leg_counts_and_tolerance() {
        let unit_bytes = DEFAULT_UNIT_BYTES;
        let cases = [
            (Layout::Linear, 1, 1, 0),
            (
                Layout::Raid0 {
                    stripes: 3,
                    unit_bytes,
                },
                3,
                3,
                0,
            ),
            (Layout::Raid1 { copies: 3 }, 3, 1, 2),
            (
                Layout::Raid5 {
                    stripes: 3,
                    unit_bytes,
                },
                4,
                3,
                1,
            ),
            (
                Layout::Raid10 {
                    stripes: 2,
                    copies: 2,
                    unit_bytes,
                },
                4,
                2,
                1,
            ),
            (
                Layout::Erasure {
                    data: 4,
                    parity: 2,
                    unit_bytes,
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
}
