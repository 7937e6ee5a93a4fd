//! A sparse map of 4 KiB blocks: one view of a simulated disk's contents.
//!
//! A block is a hole (never written, discarded, or zeroed without `NO_HOLE`),
//! an allocated block of zeroes, or data. Holes take no memory, so a large
//! simulated disk costs only what was written to it. Data blocks are shared
//! (`Arc`) between the views of one disk (what reads see, what is durable,
//! the pristine truth), so keeping four views costs little more than one.
//!
//! The map is ordered: `block_status` walks only the blocks present in a
//! range, and iteration order never depends on hashing.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::device::{push_status, BlockStatus, StatusExtent};

/// The block size of a simulated disk.
pub(crate) const BLOCK_BYTES: u64 = 4096;

/// What one block holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    /// Unallocated; reads as zeroes.
    Hole,
    /// Allocated, reads as zeroes.
    Zero,
    /// Exactly `BLOCK_BYTES` bytes.
    Data(Arc<[u8]>),
}

impl Content {
    pub(crate) fn data(bytes: &[u8]) -> Content {
        assert_eq!(bytes.len() as u64, BLOCK_BYTES, "a data block is one block");
        Content::Data(Arc::from(bytes))
    }

    /// A copy of this block with `byte ^= mask` at `byte_in_block`.
    /// `mask` is not zero, so the result always differs.
    pub(crate) fn flipped(&self, byte_in_block: usize, mask: u8) -> Content {
        assert_ne!(mask, 0, "a zero mask would flip nothing");
        let mut bytes = match self {
            Content::Hole | Content::Zero => vec![0u8; BLOCK_BYTES as usize],
            Content::Data(data) => data.to_vec(),
        };
        bytes[byte_in_block] ^= mask;
        Content::Data(Arc::from(bytes))
    }
}

/// Block index -> content; absent blocks are holes.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockMap {
    blocks: BTreeMap<u64, Content>,
}

impl BlockMap {
    pub(crate) fn get(&self, block: u64) -> &Content {
        self.blocks.get(&block).unwrap_or(&Content::Hole)
    }

    pub(crate) fn set(&mut self, block: u64, content: Content) {
        match content {
            Content::Hole => {
                self.blocks.remove(&block);
            }
            content => {
                self.blocks.insert(block, content);
            }
        }
    }

    /// Copies `out.len()` bytes starting at `offset_bytes` into `out`.
    /// Any byte range works; holes and zero blocks read as zeroes.
    pub(crate) fn read(&self, offset_bytes: u64, out: &mut [u8]) {
        out.fill(0);
        let Some(last_byte) = (out.len() as u64).checked_sub(1) else {
            return;
        };
        let first = offset_bytes / BLOCK_BYTES;
        let last = (offset_bytes + last_byte) / BLOCK_BYTES;
        for (&block, content) in self.blocks.range(first..=last) {
            let Content::Data(data) = content else {
                continue;
            };
            let block_start = block * BLOCK_BYTES;
            let from = offset_bytes.max(block_start);
            let to = (offset_bytes + out.len() as u64).min(block_start + BLOCK_BYTES);
            out[(from - offset_bytes) as usize..(to - offset_bytes) as usize]
                .copy_from_slice(&data[(from - block_start) as usize..(to - block_start) as usize]);
        }
    }

    /// Allocation state of `count` blocks from `first`, as `block_status`
    /// reports it: holes are `HOLE | ZERO`, zero blocks `ZERO`, data neither.
    pub(crate) fn status(&self, first: u64, count: u64) -> Vec<StatusExtent> {
        let hole = BlockStatus::HOLE | BlockStatus::ZERO;
        let mut extents = Vec::new();
        let mut next = first;
        for (&block, content) in self.blocks.range(first..first + count) {
            push_status(&mut extents, (block - next) * BLOCK_BYTES, hole);
            let status = match content {
                Content::Hole => hole,
                Content::Zero => BlockStatus::ZERO,
                Content::Data(_) => BlockStatus::empty(),
            };
            push_status(&mut extents, BLOCK_BYTES, status);
            next = block + 1;
        }
        push_status(&mut extents, (first + count - next) * BLOCK_BYTES, hole);
        extents
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_of(byte: u8) -> Content {
        Content::data(&[byte; BLOCK_BYTES as usize])
    }

    #[test]
    fn holes_read_as_zeroes_and_data_reads_back_at_any_byte_range() {
        let mut map = BlockMap::default();
        map.set(1, block_of(7));
        map.set(2, Content::Zero);
        let mut out = vec![0xffu8; 3 * BLOCK_BYTES as usize];
        map.read(0, &mut out);
        let b = BLOCK_BYTES as usize;
        assert!(out[..b].iter().all(|&x| x == 0));
        assert!(out[b..2 * b].iter().all(|&x| x == 7));
        assert!(out[2 * b..].iter().all(|&x| x == 0));
        let mut middle = vec![0u8; 10];
        map.read(BLOCK_BYTES - 5, &mut middle);
        assert_eq!(middle, [0, 0, 0, 0, 0, 7, 7, 7, 7, 7]);
        map.read(0, &mut []);
    }

    #[test]
    fn setting_a_hole_frees_the_block() {
        let mut map = BlockMap::default();
        map.set(5, block_of(1));
        map.set(5, Content::Hole);
        assert_eq!(map.get(5), &Content::Hole);
        assert!(map.blocks.is_empty());
    }

    #[test]
    fn status_tiles_the_range_and_merges_neighbours() {
        let mut map = BlockMap::default();
        map.set(2, block_of(1));
        map.set(3, block_of(2));
        map.set(4, Content::Zero);
        map.set(9, block_of(3));
        let hole = BlockStatus::HOLE | BlockStatus::ZERO;
        let b = BLOCK_BYTES;
        let extents = map.status(1, 8);
        let expect = [
            (b, hole),
            (2 * b, BlockStatus::empty()),
            (b, BlockStatus::ZERO),
            (4 * b, hole),
        ];
        let got: Vec<_> = extents.iter().map(|e| (e.len_bytes, e.status)).collect();
        assert_eq!(got, expect);
        assert_eq!(map.status(20, 3).len(), 1);
    }

    #[test]
    fn a_flip_always_changes_the_block() {
        for content in [Content::Hole, Content::Zero, block_of(0xaa)] {
            let flipped = content.flipped(17, 0x10);
            let Content::Data(bytes) = &flipped else {
                panic!("a flipped block holds data");
            };
            let mut original = vec![0u8; BLOCK_BYTES as usize];
            if let Content::Data(data) = &content {
                original.copy_from_slice(data);
            }
            let differing: Vec<_> = (0..original.len())
                .filter(|&i| original[i] != bytes[i])
                .collect();
            assert_eq!(differing, [17]);
        }
    }
}
