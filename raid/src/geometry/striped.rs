//! Geometry of the layouts without parity: linear, raid0, raid1, raid10.
//! All four are raid0 over mirror groups:
//!
//! ```text
//!  raid10, 2 stripes x 2 copies        legs 0,1 = group 0; legs 2,3 = group 1
//!   leg:      0     1     2     3
//!   row 0   |u0  |u0  |u1  |u1  |      column c lives on legs c*copies ..
//!   row 1   |u2  |u2  |u3  |u3  |      (c+1)*copies, every copy at the same
//!                                      PE offset row * unit_bytes + in_unit
//! ```
//!
//! Linear is one stripe of one copy, raid1 one stripe of `copies` copies,
//! raid0 `stripes` stripes of one copy. The layouts without a stripe unit
//! use the whole PE as their unit: one row per PE.

use std::ops::Range;

use super::grid::Grid;
use crate::layout::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripedGeometry {
    layout: Layout,
    stripes: usize,
    copies: usize,
    pub(crate) grid: Grid,
    pe_bytes: u64,
}

impl StripedGeometry {
    /// `layout` must be one of the striped family and already validated.
    pub(crate) fn new(layout: Layout, pe_bytes: u64) -> StripedGeometry {
        let (stripes, copies, unit_bytes) = match layout {
            Layout::Linear => (1, 1, pe_bytes),
            Layout::Raid0 {
                stripes,
                unit_bytes,
            } => (stripes, 1, unit_bytes),
            Layout::Raid1 { copies } => (1, copies, pe_bytes),
            Layout::Raid10 {
                stripes,
                copies,
                unit_bytes,
            } => (stripes, copies, unit_bytes),
            Layout::Raid5 { .. } | Layout::Erasure { .. } => {
                panic!("{} is not a striped layout", layout.name())
            }
        };
        StripedGeometry {
            layout,
            stripes,
            copies,
            grid: Grid {
                columns: stripes,
                unit_bytes,
            },
            pe_bytes,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Mirror groups (data columns).
    pub fn stripes(&self) -> usize {
        self.stripes
    }

    /// Legs per mirror group.
    pub fn copies(&self) -> usize {
        self.copies
    }

    pub fn unit_bytes(&self) -> u64 {
        self.grid.unit_bytes
    }

    pub fn pe_bytes(&self) -> u64 {
        self.pe_bytes
    }

    pub fn legs(&self) -> usize {
        self.stripes * self.copies
    }

    /// The legs that hold column `column`, all at the same PE offsets.
    pub fn column_legs(&self, column: usize) -> Range<usize> {
        assert!(column < self.stripes, "column {column} out of range");
        column * self.copies..(column + 1) * self.copies
    }

    /// (column, copy) of a leg.
    pub fn leg_column(&self, leg: usize) -> (usize, usize) {
        assert!(leg < self.legs(), "leg {leg} out of range");
        (leg / self.copies, leg % self.copies)
    }

    /// Data survives while every mirror group keeps one leg.
    pub(crate) fn survives(&self, failed_legs: u64) -> bool {
        (0..self.stripes).all(|column| {
            self.column_legs(column)
                .any(|leg| failed_legs & (1u64 << leg) == 0)
        })
    }
}
