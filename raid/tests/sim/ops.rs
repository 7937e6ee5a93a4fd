//! The requests a batch is made of, drawn at random: reads and writes of
//! any 4 KiB-aligned length, biased to start near the boundaries where the
//! layers split requests (extents, rows, units, chunks), and the volume's
//! maintenance (scrub, repair, moving a leg) run online among them.

use std::ops::Range;

use blockvirt::ZeroFlags;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::model::{Mutation, Tag, BLOCK};

#[derive(Debug, Clone)]
pub enum Op {
    Read {
        at: u64,
        len: u64,
    },
    Write {
        at: u64,
        len: u64,
        tag: Tag,
        fua: bool,
    },
    Discard {
        at: u64,
        len: u64,
    },
    Zeroes {
        at: u64,
        len: u64,
        flags: ZeroFlags,
    },
    Flush,
    /// Scrub extent `le`, repairing what it finds.
    Scrub {
        le: u64,
    },
    /// Replace every leg on a failed PV (`replace_legs` of each degraded extent).
    Repair,
    /// Move leg `leg` of extent `le` to another PV (pvmove).
    Move {
        le: u64,
        leg: usize,
    },
}

/// Where the volume's layers split requests, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub size: u64,
    pub extent: u64,
    pub chunk: u64,
    pub unit: u64,
    pub row: u64,
}

impl Shape {
    pub fn blocks(&self) -> u64 {
        self.size / BLOCK
    }

    /// The blocks of extent `le`.
    pub fn extent_blocks(&self, le: u64) -> Range<u64> {
        le * self.extent / BLOCK..(le + 1) * self.extent / BLOCK
    }
}

impl Op {
    /// What the request does to the volume's bytes if it succeeds.
    pub fn mutation(&self, shape: &Shape) -> Option<Mutation> {
        let blocks = |at: u64, len: u64| at / BLOCK..(at + len) / BLOCK;
        match *self {
            Op::Write { at, len, tag, fua } => Some(Mutation {
                blocks: blocks(at, len),
                tag,
                fua,
            }),
            // Whole chunks only; partial ones are left as they are.
            Op::Discard { at, len } => {
                let start = at.div_ceil(shape.chunk) * shape.chunk;
                let end = (at + len) / shape.chunk * shape.chunk;
                (start < end).then(|| Mutation {
                    blocks: blocks(start, end - start),
                    tag: 0,
                    fua: false,
                })
            }
            Op::Zeroes { at, len, .. } => Some(Mutation {
                blocks: blocks(at, len),
                tag: 0,
                fua: false,
            }),
            _ => None,
        }
    }

    /// The volume blocks the request reads or rewrites (for maintenance:
    /// every block of the extents it may read).
    pub fn reach(&self, shape: &Shape) -> Range<u64> {
        match *self {
            Op::Read { at, len }
            | Op::Write { at, len, .. }
            | Op::Discard { at, len }
            | Op::Zeroes { at, len, .. } => at / BLOCK..(at + len) / BLOCK,
            Op::Scrub { le } | Op::Move { le, .. } => shape.extent_blocks(le),
            Op::Flush | Op::Repair => 0..shape.blocks(),
        }
    }
}

/// A read, write, discard, write-zeroes or flush; `tags` numbers writes.
pub fn draw_io(rng: &mut SmallRng, shape: &Shape, tags: &mut Tag) -> Op {
    let (at, len) = draw_range(rng, shape);
    match rng.random_range(0..100) {
        0..=34 => Op::Read { at, len },
        35..=79 => {
            *tags += 1;
            Op::Write {
                at,
                len,
                tag: *tags,
                fua: rng.random_bool(0.15),
            }
        }
        80..=85 => Op::Discard { at, len },
        86..=91 => Op::Zeroes {
            at,
            len,
            flags: ZeroFlags::from_bits_truncate(rng.random_range(0..4)),
        },
        _ => Op::Flush,
    }
}

fn draw_range(rng: &mut SmallRng, shape: &Shape) -> (u64, u64) {
    let blocks = shape.blocks();
    let len = match rng.random_range(0..10) {
        0..=5 => rng.random_range(1..=4),
        6..=8 => rng.random_range(1..=32),
        _ => rng.random_range(1..=256),
    }
    .min(blocks);
    let start = if rng.random_bool(0.3) {
        rng.random_range(0..blocks)
    } else {
        let step =
            [shape.extent, shape.row, shape.unit, shape.chunk][rng.random_range(0..4)] / BLOCK;
        let anchor = step * rng.random_range(0..=blocks / step);
        (anchor + rng.random_range(0..=16)).saturating_sub(8)
    };
    let start = start.min(blocks - len);
    (start * BLOCK, len * BLOCK)
}
