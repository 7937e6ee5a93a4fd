//! Stripe geometry: where each user byte of a placed extent lives on its
//! legs, and what each byte of a leg holds. Pure arithmetic, no I/O; the
//! redundancy layer asks it how to split a request and how to rebuild a
//! leg.
//!
//! ```text
//!  user range in the extent ──spans()──> (row, shard, leg(s), PE offset, len)
//!  (leg, PE range)     ──leg_pieces()──> data of user offset X | parity j of row r
//! ```
//!
//! Spans are split at stripe-unit boundaries and nowhere else, so each is
//! one contiguous I/O on one leg (or on each copy of a mirror group). The
//! redundancy of a byte always sits at the same PE offset on the other
//! legs of its group, so a lost leg's range is rebuilt from that same range
//! of the survivors.

mod grid;
mod parity;
mod striped;

#[cfg(test)]
mod tests;

use std::ops::Range;

pub use parity::{ParityGeometry, RowSpan, RowSpans};
pub use striped::StripedGeometry;

use crate::layout::{GeometryError, Layout, Limits};
use grid::{Cells, Grid};

/// The geometry of one layout on PEs of one size; built once per LV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripeGeometry {
    /// linear, raid0, raid1, raid10.
    Striped(StripedGeometry),
    /// raid5, erasure coding.
    Parity(ParityGeometry),
}

impl StripeGeometry {
    pub fn new(layout: Layout, pe_bytes: u64) -> Result<StripeGeometry, GeometryError> {
        Self::new_within(layout, pe_bytes, &Limits::PRODUCTION)
    }

    pub(crate) fn new_within(
        layout: Layout,
        pe_bytes: u64,
        limits: &Limits,
    ) -> Result<StripeGeometry, GeometryError> {
        layout.validate_within(pe_bytes, limits)?;
        Ok(match layout {
            Layout::Raid5 { .. } | Layout::Erasure { .. } => {
                StripeGeometry::Parity(ParityGeometry::new(layout, pe_bytes))
            }
            Layout::Linear
            | Layout::Raid0 { .. }
            | Layout::Raid1 { .. }
            | Layout::Raid10 { .. } => {
                StripeGeometry::Striped(StripedGeometry::new(layout, pe_bytes))
            }
        })
    }

    pub fn layout(&self) -> Layout {
        match self {
            StripeGeometry::Striped(g) => g.layout(),
            StripeGeometry::Parity(g) => g.layout(),
        }
    }

    pub fn as_parity(&self) -> Option<&ParityGeometry> {
        match self {
            StripeGeometry::Parity(g) => Some(g),
            StripeGeometry::Striped(_) => None,
        }
    }

    pub fn as_striped(&self) -> Option<&StripedGeometry> {
        match self {
            StripeGeometry::Striped(g) => Some(g),
            StripeGeometry::Parity(_) => None,
        }
    }

    fn grid(&self) -> Grid {
        match self {
            StripeGeometry::Striped(g) => g.grid,
            StripeGeometry::Parity(g) => g.grid,
        }
    }

    pub fn pe_bytes(&self) -> u64 {
        match self {
            StripeGeometry::Striped(g) => g.pe_bytes(),
            StripeGeometry::Parity(g) => g.pe_bytes(),
        }
    }

    /// The stripe unit; the whole PE for linear and raid1.
    pub fn unit_bytes(&self) -> u64 {
        self.grid().unit_bytes
    }

    /// PEs per placed extent.
    pub fn legs(&self) -> usize {
        match self {
            StripeGeometry::Striped(g) => g.legs(),
            StripeGeometry::Parity(g) => g.shards(),
        }
    }

    /// Legs' worth of user data per extent (stripes, or K).
    pub fn data_legs(&self) -> usize {
        self.grid().columns
    }

    /// User bytes per placed extent.
    pub fn extent_bytes(&self) -> u64 {
        self.data_legs() as u64 * self.pe_bytes()
    }

    /// Rows per PE: each leg holds one unit of every row.
    pub fn rows_per_pe(&self) -> u64 {
        self.pe_bytes() / self.unit_bytes()
    }

    /// Legs that may fail, whichever they are, without data loss. raid10
    /// survives more when the failures fall in different groups; see
    /// [`survives`](Self::survives).
    pub fn tolerance(&self) -> usize {
        match self {
            StripeGeometry::Striped(g) => g.copies() - 1,
            StripeGeometry::Parity(g) => g.parity_shards(),
        }
    }

    /// Whether every user byte is still readable with the legs whose bits
    /// are set in `failed_legs` lost.
    pub fn survives(&self, failed_legs: u64) -> bool {
        match self {
            StripeGeometry::Striped(g) => g.survives(failed_legs),
            StripeGeometry::Parity(g) => g.survives(failed_legs),
        }
    }

    /// The legs whose bytes at a given PE range, together, determine `leg`'s
    /// bytes at that range (`leg` included): its mirror group, or every leg
    /// of a parity layout. For linear and raid0 that is `leg` alone.
    pub fn group_legs(&self, leg: usize) -> Range<usize> {
        assert!(leg < self.legs(), "leg {leg} out of range");
        match self {
            StripeGeometry::Striped(g) => g.column_legs(g.leg_column(leg).0),
            StripeGeometry::Parity(g) => 0..g.shards(),
        }
    }

    /// The leg pieces of user bytes `[offset_bytes, offset_bytes + len_bytes)`
    /// of the extent, in request order, split at unit boundaries.
    ///
    /// # Panics
    /// If the range leaves the extent (the caller splits at extents).
    pub fn spans(&self, offset_bytes: u64, len_bytes: u64) -> Spans {
        let end_bytes = offset_bytes
            .checked_add(len_bytes)
            .filter(|&end| end <= self.extent_bytes())
            .unwrap_or_else(|| panic!("range {offset_bytes}+{len_bytes} leaves the extent"));
        Spans {
            geometry: *self,
            cells: self.grid().cells(offset_bytes, end_bytes),
        }
    }

    /// What leg `leg` holds at PE bytes `[pe_offset_bytes, +len_bytes)`,
    /// split at unit (row) boundaries: for a rebuild, which user bytes or
    /// which parity shard to recompute there.
    ///
    /// # Panics
    /// If the leg or the range is out of the PE.
    pub fn leg_pieces(&self, leg: usize, pe_offset_bytes: u64, len_bytes: u64) -> LegPieces {
        assert!(leg < self.legs(), "leg {leg} out of range");
        let end_bytes = pe_offset_bytes
            .checked_add(len_bytes)
            .filter(|&end| end <= self.pe_bytes())
            .unwrap_or_else(|| panic!("range {pe_offset_bytes}+{len_bytes} leaves the PE"));
        LegPieces {
            geometry: *self,
            leg,
            pe_offset_bytes,
            end_bytes,
        }
    }

    fn span(&self, cell: grid::Cell) -> Span {
        let (leg, copies) = match self {
            StripeGeometry::Striped(g) => {
                let legs = g.column_legs(cell.column);
                (legs.start, legs.len())
            }
            StripeGeometry::Parity(g) => (g.shard_leg(cell.row, cell.column), 1),
        };
        Span {
            row: cell.row,
            shard: cell.column,
            leg,
            copies,
            pe_offset_bytes: cell.row * self.unit_bytes() + cell.in_unit_bytes,
            len_bytes: cell.len_bytes,
            request_offset_bytes: cell.request_offset_bytes,
        }
    }

    fn leg_content(&self, leg: usize, row: u64, in_unit_bytes: u64) -> LegContent {
        let grid = self.grid();
        let column = match self {
            StripeGeometry::Striped(g) => g.leg_column(leg).0,
            StripeGeometry::Parity(g) => {
                let shard = g.leg_shard(row, leg);
                if shard >= g.data_shards() {
                    return LegContent::Parity {
                        index: shard - g.data_shards(),
                    };
                }
                shard
            }
        };
        LegContent::Data {
            shard: column,
            offset_bytes: grid.user_offset(row, column, in_unit_bytes),
        }
    }
}

/// One contiguous piece of a request on one leg, or on each leg of a
/// mirror group (`leg..leg + copies`, all at the same PE offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub row: u64,
    /// The data shard (column) within the row.
    pub shard: usize,
    /// The leg holding it; the first copy for mirrors.
    pub leg: usize,
    /// Legs `leg..leg + copies` hold the same bytes; 1 without mirrors.
    pub copies: usize,
    pub pe_offset_bytes: u64,
    pub len_bytes: u64,
    /// Offset of the piece within the request.
    pub request_offset_bytes: u64,
}

impl Span {
    /// Every leg holding these bytes.
    pub fn legs(&self) -> Range<usize> {
        self.leg..self.leg + self.copies
    }
}

#[derive(Debug, Clone)]
pub struct Spans {
    geometry: StripeGeometry,
    cells: Cells,
}

impl Iterator for Spans {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        self.cells.next().map(|cell| self.geometry.span(cell))
    }
}

/// What a leg holds over one piece of its PE, within one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegPiece {
    pub row: u64,
    pub pe_offset_bytes: u64,
    pub len_bytes: u64,
    pub content: LegContent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegContent {
    /// User bytes `[offset_bytes, offset_bytes + len)` of the extent, which
    /// are data shard `shard` of the row.
    Data { shard: usize, offset_bytes: u64 },
    /// Parity shard `index` (`0..M`) of the row.
    Parity { index: usize },
}

#[derive(Debug, Clone)]
pub struct LegPieces {
    geometry: StripeGeometry,
    leg: usize,
    pe_offset_bytes: u64,
    end_bytes: u64,
}

impl Iterator for LegPieces {
    type Item = LegPiece;

    fn next(&mut self) -> Option<LegPiece> {
        if self.pe_offset_bytes >= self.end_bytes {
            return None;
        }
        let unit_bytes = self.geometry.unit_bytes();
        let row = self.pe_offset_bytes / unit_bytes;
        let in_unit_bytes = self.pe_offset_bytes % unit_bytes;
        let len_bytes = (unit_bytes - in_unit_bytes).min(self.end_bytes - self.pe_offset_bytes);
        let piece = LegPiece {
            row,
            pe_offset_bytes: self.pe_offset_bytes,
            len_bytes,
            content: self.geometry.leg_content(self.leg, row, in_unit_bytes),
        };
        self.pe_offset_bytes += len_bytes;
        Some(piece)
    }
}
