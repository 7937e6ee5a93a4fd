//! Geometry of the parity layouts, raid5 and erasure coding, with one
//! rotation rule: in row `r`, shard `s` (data shards `0..K`, parity shards
//! `K..K+M`) lives on leg `(s + r) mod (K+M)`, at PE offset `r * unit`.
//!
//! ```text
//!  raid5, 3 stripes (K=3, M=1, 4 legs)
//!   leg:      0    1    2    3
//!   row 0   | d0 | d1 | d2 | P  |
//!   row 1   | P  | d0 | d1 | d2 |     parity moves one leg right per row,
//!   row 2   | d2 | P  | d0 | d1 |     so over any K+M consecutive rows
//!   row 3   | d1 | d2 | P  | d0 |     every leg holds parity M times
//! ```
//!
//! Every shard of a row sits at the same PE offset on its leg, so any byte
//! range of a lost leg is recomputed from the same range of the others.
//! Rows are the unit of full-stripe writes: a write that covers whole rows
//! computes parity from the new data alone; a partial row needs the old
//! data or parity (read-modify-write), which [`RowSpan`] tells apart.

use std::ops::Range;

use super::grid::Grid;
use crate::layout::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParityGeometry {
    layout: Layout,
    parity: usize,
    pub(crate) grid: Grid,
    pe_bytes: u64,
}

impl ParityGeometry {
    /// `layout` must be raid5 or erasure and already validated.
    pub(crate) fn new(layout: Layout, pe_bytes: u64) -> ParityGeometry {
        let (data, parity, unit_bytes) = match layout {
            Layout::Raid5 {
                stripes,
                unit_bytes,
            } => (stripes, 1, unit_bytes),
            Layout::Erasure {
                data,
                parity,
                unit_bytes,
            } => (data, parity, unit_bytes),
            _ => panic!("{} is not a parity layout", layout.name()),
        };
        ParityGeometry {
            layout,
            parity,
            grid: Grid {
                columns: data,
                unit_bytes,
            },
            pe_bytes,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// K: data shards per row.
    pub fn data_shards(&self) -> usize {
        self.grid.columns
    }

    /// M: parity shards per row.
    pub fn parity_shards(&self) -> usize {
        self.parity
    }

    /// K + M, which is also the number of legs.
    pub fn shards(&self) -> usize {
        self.grid.columns + self.parity
    }

    pub fn unit_bytes(&self) -> u64 {
        self.grid.unit_bytes
    }

    pub fn pe_bytes(&self) -> u64 {
        self.pe_bytes
    }

    /// User bytes per row (K units).
    pub fn row_bytes(&self) -> u64 {
        self.grid.row_bytes()
    }

    pub fn rows_per_pe(&self) -> u64 {
        self.pe_bytes / self.grid.unit_bytes
    }

    /// The leg that holds shard `shard` of row `row`.
    pub fn shard_leg(&self, row: u64, shard: usize) -> usize {
        let shards = self.shards();
        assert!(shard < shards, "shard {shard} out of range");
        ((shard as u64 + row % shards as u64) % shards as u64) as usize
    }

    /// The shard that leg `leg` holds in row `row`; inverse of
    /// [`shard_leg`](Self::shard_leg).
    pub fn leg_shard(&self, row: u64, leg: usize) -> usize {
        let shards = self.shards() as u64;
        assert!((leg as u64) < shards, "leg {leg} out of range");
        ((leg as u64 + shards - row % shards) % shards) as usize
    }

    /// The legs holding the parity shards of `row`, parity shard 0 first.
    pub fn parity_legs(&self, row: u64) -> impl Iterator<Item = usize> + '_ {
        (self.data_shards()..self.shards()).map(move |shard| self.shard_leg(row, shard))
    }

    /// The rows that user bytes `[offset_bytes, offset_bytes + len_bytes)`
    /// touch, in order, with what each row's piece covers.
    ///
    /// # Panics
    /// If the range leaves the extent (the caller splits at extents).
    pub fn rows(&self, offset_bytes: u64, len_bytes: u64) -> RowSpans {
        let end_bytes = offset_bytes
            .checked_add(len_bytes)
            .filter(|&end| end <= self.data_shards() as u64 * self.pe_bytes)
            .unwrap_or_else(|| panic!("range {offset_bytes}+{len_bytes} leaves the extent"));
        RowSpans {
            grid: self.grid,
            offset_bytes,
            end_bytes,
            request_offset_bytes: 0,
        }
    }

    /// Data survives while at most M legs are lost.
    pub(crate) fn survives(&self, failed_legs: u64) -> bool {
        let all = if self.shards() == 64 {
            u64::MAX
        } else {
            (1u64 << self.shards()) - 1
        };
        (failed_legs & all).count_ones() as usize <= self.parity
    }
}

/// The part of one row a user range covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSpan {
    pub row: u64,
    /// Offset of the piece within the row's user bytes (`0..row_bytes`).
    pub row_offset_bytes: u64,
    pub len_bytes: u64,
    /// Offset of the piece within the request.
    pub request_offset_bytes: u64,
    /// The data shards the piece touches.
    pub shards: Range<usize>,
    /// The bytes, within a unit, whose parity changes: exact when one
    /// shard is touched, else the hull (the whole unit).
    pub unit_range_bytes: Range<u64>,
    /// The piece covers the whole row: parity comes from the new data
    /// alone, with no read.
    pub full: bool,
}

#[derive(Debug, Clone)]
pub struct RowSpans {
    grid: Grid,
    offset_bytes: u64,
    end_bytes: u64,
    request_offset_bytes: u64,
}

impl Iterator for RowSpans {
    type Item = RowSpan;

    fn next(&mut self) -> Option<RowSpan> {
        if self.offset_bytes >= self.end_bytes {
            return None;
        }
        let row_bytes = self.grid.row_bytes();
        let unit_bytes = self.grid.unit_bytes;
        let row = self.offset_bytes / row_bytes;
        let row_offset_bytes = self.offset_bytes % row_bytes;
        let len_bytes = (row_bytes - row_offset_bytes).min(self.end_bytes - self.offset_bytes);
        let row_end_bytes = row_offset_bytes + len_bytes;
        let first_shard = (row_offset_bytes / unit_bytes) as usize;
        let end_shard = row_end_bytes.div_ceil(unit_bytes) as usize;
        let unit_range_bytes = if end_shard - first_shard == 1 {
            let start = row_offset_bytes % unit_bytes;
            start..start + len_bytes
        } else {
            0..unit_bytes
        };
        let span = RowSpan {
            row,
            row_offset_bytes,
            len_bytes,
            request_offset_bytes: self.request_offset_bytes,
            shards: first_shard..end_shard,
            unit_range_bytes,
            full: len_bytes == row_bytes,
        };
        self.offset_bytes += len_bytes;
        self.request_offset_bytes += len_bytes;
        Some(span)
    }
}
