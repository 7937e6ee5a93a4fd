//! Space accounting of the ring that holds a journal's entries. Pure
//! arithmetic on ring offsets (bytes from the ring's start), no I/O.
//!
//! ```text
//!  ring start                                              ring end (capacity)
//!  |  free  |#### e7 ####|## e8 ##|#### e9 ####|   free   | gap |
//!           ^ tail                             ^ head
//!  an entry that does not fit before the end skips the gap and starts at 0:
//!  |## e10 ##| free |#### e7 ####|## e8 ##|#### e9 ####|  gap (e10's)   |
//!            ^ head ^ tail
//! ```
//!
//! An entry never straddles the end of the ring: when it does not fit
//! between the head and the end, it starts at offset 0 and the bytes it
//! skipped count as its own (its footprint), so they are freed with it. No
//! wrap marker is written: a reader that finds no valid entry where the
//! previous one ended looks at offset 0, and the sequence number tells the
//! real next entry from anything left there. One block fewer to write and
//! to lose.
//!
//! Entries are freed oldest first. An entry may use at most half the ring,
//! so one that must skip a gap (never longer than itself) still fits an
//! empty ring.

use super::format::BLOCK_BYTES;

/// Where an entry was placed, and how much ring it holds until freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub offset_bytes: u64,
    pub len_bytes: u64,
    /// `len_bytes` plus the gap skipped before it at the end of the ring.
    pub footprint_bytes: u64,
}

impl Placement {
    /// Where the next entry would start if it fits there.
    pub fn end_bytes(&self) -> u64 {
        self.offset_bytes + self.len_bytes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    capacity_bytes: u64,
    /// Where the next entry goes (if it fits before the end).
    head_bytes: u64,
    /// Start of the oldest entry's footprint.
    tail_bytes: u64,
    used_bytes: u64,
}

impl Ring {
    /// An empty ring whose first entry goes at `start_bytes`.
    pub fn empty(capacity_bytes: u64, start_bytes: u64) -> Ring {
        assert!(
            capacity_bytes >= 2 * BLOCK_BYTES && capacity_bytes.is_multiple_of(BLOCK_BYTES),
            "ring capacity {capacity_bytes} is not at least two whole blocks"
        );
        assert!(
            start_bytes < capacity_bytes && start_bytes.is_multiple_of(BLOCK_BYTES),
            "ring start {start_bytes} is not a block of a {capacity_bytes}-byte ring"
        );
        Ring {
            capacity_bytes,
            head_bytes: start_bytes,
            tail_bytes: start_bytes,
            used_bytes: 0,
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn head_bytes(&self) -> u64 {
        self.head_bytes
    }

    /// The largest entry the ring accepts: half of it, in whole blocks.
    pub fn max_entry_bytes(&self) -> u64 {
        max_entry_bytes(self.capacity_bytes)
    }

    /// Where an entry of `len_bytes` would go now, or `None` if the ring
    /// has no room for it until older entries are freed. `len_bytes` must
    /// be whole blocks, at most [`max_entry_bytes`](Self::max_entry_bytes)
    /// (the caller refuses larger entries with an error; here that is a
    /// broken invariant).
    pub fn place(&self, len_bytes: u64) -> Option<Placement> {
        assert!(
            len_bytes > 0
                && len_bytes.is_multiple_of(BLOCK_BYTES)
                && len_bytes <= self.max_entry_bytes(),
            "entry of {len_bytes} bytes in a {}-byte ring",
            self.capacity_bytes
        );
        let fits_before_end = self.head_bytes + len_bytes <= self.capacity_bytes;
        let (offset_bytes, footprint_bytes) = if fits_before_end {
            (self.head_bytes, len_bytes)
        } else {
            (0, self.capacity_bytes - self.head_bytes + len_bytes)
        };
        (self.used_bytes + footprint_bytes <= self.capacity_bytes).then_some(Placement {
            offset_bytes,
            len_bytes,
            footprint_bytes,
        })
    }

    /// Takes room for an entry of `len_bytes` at the head (see
    /// [`place`](Self::place)).
    pub fn reserve(&mut self, len_bytes: u64) -> Option<Placement> {
        let placement = self.place(len_bytes)?;
        self.used_bytes += placement.footprint_bytes;
        self.head_bytes = placement.end_bytes() % self.capacity_bytes;
        Some(placement)
    }

    /// Frees the oldest entry, which must be `placement`.
    pub fn release(&mut self, placement: Placement) {
        let end = placement.end_bytes() % self.capacity_bytes;
        assert!(
            placement.footprint_bytes <= self.used_bytes
                && (self.tail_bytes + placement.footprint_bytes) % self.capacity_bytes == end,
            "ring release of {placement:?} out of order (tail {}, used {})",
            self.tail_bytes,
            self.used_bytes
        );
        self.used_bytes -= placement.footprint_bytes;
        self.tail_bytes = end;
    }
}

/// The largest entry a ring of `capacity_bytes` accepts.
pub fn max_entry_bytes(capacity_bytes: u64) -> u64 {
    capacity_bytes / 2 / BLOCK_BYTES * BLOCK_BYTES
}

/// Where a reader looks for the entry after one that ended at `end_bytes`:
/// right there if a block fits before the end, then the ring start (the
/// writer went there when the entry did not fit).
pub fn next_candidates(capacity_bytes: u64, end_bytes: u64) -> Vec<u64> {
    if end_bytes != 0 && end_bytes + BLOCK_BYTES <= capacity_bytes {
        vec![end_bytes, 0]
    } else {
        vec![0]
    }
}
