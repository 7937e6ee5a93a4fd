//! The row-and-column arithmetic every layout shares: user bytes fill a
//! row of `columns` units, one unit per column, then the next row.
//!
//! ```text
//!  user bytes   |u0|u1|u2|u3|u4|u5|...      (units of unit_bytes)
//!  columns        0  1  2                  (columns = 3)
//!  row 0        |u0|u1|u2|                 each column's unit sits at
//!  row 1        |u3|u4|u5|                 PE offset row * unit_bytes
//! ```
//!
//! Families differ only in which leg a (row, column) lands on; splitting a
//! range at unit boundaries lives here once.

/// `columns` data units of `unit_bytes` per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    pub columns: usize,
    pub unit_bytes: u64,
}

impl Grid {
    /// User bytes in one row.
    pub fn row_bytes(&self) -> u64 {
        self.columns as u64 * self.unit_bytes
    }

    /// The cells (unit pieces) of user bytes `[offset_bytes, end_bytes)`.
    pub fn cells(&self, offset_bytes: u64, end_bytes: u64) -> Cells {
        assert!(offset_bytes <= end_bytes, "range ends before it starts");
        Cells {
            grid: *self,
            offset_bytes,
            end_bytes,
            request_offset_bytes: 0,
        }
    }

    /// Where user byte `offset_bytes` lives: (row, column, offset in unit).
    pub fn locate(&self, offset_bytes: u64) -> (u64, usize, u64) {
        let row = offset_bytes / self.row_bytes();
        let in_row = offset_bytes % self.row_bytes();
        let column = (in_row / self.unit_bytes) as usize;
        (row, column, in_row % self.unit_bytes)
    }

    /// The user offset of byte `in_unit_bytes` of (row, column).
    pub fn user_offset(&self, row: u64, column: usize, in_unit_bytes: u64) -> u64 {
        row * self.row_bytes() + column as u64 * self.unit_bytes + in_unit_bytes
    }
}

/// A piece of a user range that stays inside one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cell {
    pub row: u64,
    pub column: usize,
    /// Offset inside the unit; the PE offset is `row * unit + in_unit`.
    pub in_unit_bytes: u64,
    pub len_bytes: u64,
    pub request_offset_bytes: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Cells {
    grid: Grid,
    offset_bytes: u64,
    end_bytes: u64,
    request_offset_bytes: u64,
}

impl Iterator for Cells {
    type Item = Cell;

    fn next(&mut self) -> Option<Cell> {
        if self.offset_bytes >= self.end_bytes {
            return None;
        }
        let (row, column, in_unit_bytes) = self.grid.locate(self.offset_bytes);
        let len_bytes =
            (self.grid.unit_bytes - in_unit_bytes).min(self.end_bytes - self.offset_bytes);
        let cell = Cell {
            row,
            column,
            in_unit_bytes,
            len_bytes,
            request_offset_bytes: self.request_offset_bytes,
        };
        self.offset_bytes += len_bytes;
        self.request_offset_bytes += len_bytes;
        Some(cell)
    }
}
