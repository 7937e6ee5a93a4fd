//! What the volume's bytes may be, block by block (4 KiB).
//!
//! Every write carries a fresh tag; a block it wrote holds [`content`] of
//! (tag, block number), so one compare tells which write a block came
//! from. Tag 0 is zeroes: never written, discarded, or zeroed.
//!
//! Per block the model keeps three sets of tags:
//! - `now`: what a read may return. One tag, except where concurrent
//!   writes raced, a write failed (it may have landed on some blocks and
//!   not others), or a crash left a choice; the first read that sees the
//!   block narrows it to what it saw, since a block device must keep
//!   returning what it returned.
//! - `durable`: what stable storage may hold, as of the last flush (or FUA
//!   write) that covered the block.
//! - `pending`: writes issued since then, acknowledged or not. A crash may
//!   leave any of them, each block on its own (torn writes).
//!
//! So after a crash a block holds its flushed value or any value written to
//! it since that flush; never anything else. A flush covers the writes
//! acknowledged before it started; a batch of concurrent requests is taken
//! as if its flush came first, the one order that promises the least.
//!
//! Discard clears whole chunks (extent / 64) only and leaves partial
//! chunks as they are; write-zeroes zeroes its whole range (module docs of
//! `blockvirt::volume`). Both are writes of tag 0 here.
//!
//! Fragile blocks: a redundant layout vouches for a block with a checksum
//! kept in the metadata, committed at flush. A block a crash left undecided
//! may hold data whose checksum never got committed; while another copy
//! (or the rest of the row) agrees with it, the layout adopts it, but once
//! the layout's tolerance is used up no copy may be left to agree, and then
//! the block cannot be told from rot and its read fails. Such blocks are
//! marked fragile until rewritten and flushed; reads of them may fail
//! while the pool is at its tolerance (never with wrong bytes).

use std::ops::Range;

pub const BLOCK: u64 = 4096;

/// Which write a block's bytes come from (0: zeroes).
pub type Tag = u32;

/// The bytes of block `lba` as written by the write tagged `tag`.
pub fn content(tag: Tag, lba: u64, out: &mut [u8]) {
    if tag == 0 {
        out.fill(0);
        return;
    }
    let mut x = ((u64::from(tag) << 32) ^ lba).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

/// A small set of tags, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<Tag>);

impl Tags {
    pub fn one(tag: Tag) -> Tags {
        Tags(vec![tag])
    }

    pub fn insert(&mut self, tag: Tag) {
        if let Err(at) = self.0.binary_search(&tag) {
            self.0.insert(at, tag);
        }
    }

    pub fn extend(&mut self, other: &Tags) {
        for &tag in &other.0 {
            self.insert(tag);
        }
    }

    pub fn contains(&self, tag: Tag) -> bool {
        self.0.binary_search(&tag).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = Tag> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Block {
    now: Tags,
    durable: Tags,
    pending: Tags,
    fragile: bool,
    /// Rewritten alone since the last crash: the next flush commits its
    /// checksum, and it is no longer fragile.
    rewritten: bool,
}

/// A change of some blocks to one tag: a write, or the zeroes of a
/// discard or write-zeroes.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub blocks: Range<u64>,
    pub tag: Tag,
    pub fua: bool,
}

/// How a request of a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Ok,
    /// Failed: it may have changed some of its blocks and not others.
    Failed,
    /// Refused before changing anything.
    Refused,
    /// Still running when the power failed.
    Unfinished,
}

pub struct Model {
    blocks: Vec<Block>,
}

impl Model {
    /// A volume of `blocks` blocks, all zeroes.
    pub fn new(blocks: u64) -> Model {
        let zero = Block {
            now: Tags::one(0),
            durable: Tags::one(0),
            pending: Tags::default(),
            fragile: false,
            rewritten: false,
        };
        Model {
            blocks: vec![zero; blocks as usize],
        }
    }

    /// Requests of a batch are about to start: whatever they write may be
    /// on disk at a crash, finished or not.
    pub fn issue(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            for b in m.blocks.clone() {
                self.blocks[b as usize].pending.insert(m.tag);
            }
        }
    }

    /// What a read of block `lba` may return while `racing` run.
    pub fn allowed(&self, lba: u64, racing: &[Mutation]) -> Tags {
        let mut tags = self.blocks[lba as usize].now.clone();
        for m in racing.iter().filter(|m| m.blocks.contains(&lba)) {
            tags.insert(m.tag);
        }
        tags
    }

    pub fn is_fragile(&self, blocks: Range<u64>) -> bool {
        blocks.into_iter().any(|b| self.blocks[b as usize].fragile)
    }

    /// A batch has ended: `flushed` if a flush of it succeeded, each
    /// mutation with how its request ended, and what reads saw of blocks
    /// no mutation of the batch touched. Returns an error if two reads saw
    /// different contents of one such block.
    pub fn end_batch(
        &mut self,
        flushed: bool,
        mutations: &[(Mutation, Ended)],
        seen: &[(u64, Tag)],
    ) -> Result<(), String> {
        if flushed {
            for block in &mut self.blocks {
                block.durable = block.now.clone();
                block.pending = Tags::default();
                if block.rewritten {
                    block.fragile = false;
                }
            }
        }
        let mut touched: Vec<u64> = mutations
            .iter()
            .filter(|(_, ended)| *ended != Ended::Refused)
            .flat_map(|(m, _)| m.blocks.clone())
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for lba in touched {
            let writers: Vec<&(Mutation, Ended)> = mutations
                .iter()
                .filter(|(m, ended)| *ended != Ended::Refused && m.blocks.contains(&lba))
                .collect();
            self.apply_writers(lba, &writers);
        }
        for &(lba, tag) in seen {
            let block = &mut self.blocks[lba as usize];
            if block.now.len() == 1 && !block.now.contains(tag) {
                return Err(format!(
                    "block {lba}: reads of one batch saw tags {:?} and {tag}",
                    block.now
                ));
            }
            block.now = Tags::one(tag);
            if block.pending.is_empty() {
                block.durable = Tags::one(tag);
            }
        }
        Ok(())
    }

    fn apply_writers(&mut self, lba: u64, writers: &[&(Mutation, Ended)]) {
        let block = &mut self.blocks[lba as usize];
        let mut ok = Tags::default();
        let mut maybe = Tags::default();
        let mut fua = Tags::default();
        for (m, ended) in writers {
            // Pending again if a flush of this batch cleared it.
            block.pending.insert(m.tag);
            match ended {
                Ended::Ok => {
                    ok.insert(m.tag);
                    if m.fua {
                        fua.insert(m.tag);
                    }
                }
                _ => maybe.insert(m.tag),
            }
        }
        if ok.is_empty() {
            block.now.extend(&maybe);
        } else {
            block.now = ok;
            block.now.extend(&maybe);
        }
        if !fua.is_empty() {
            block.durable = fua;
            if writers.len() == 1 {
                block.pending = Tags::default();
            }
        }
        if writers.len() == 1 && writers[0].1 == Ended::Ok {
            block.fragile = false;
            block.rewritten = true;
        }
    }

    /// Power loss: each block holds its durable value or one written since.
    pub fn crash(&mut self) {
        for block in &mut self.blocks {
            let mut left = block.durable.clone();
            left.extend(&block.pending);
            left.extend(&block.now);
            if left.len() > 1 {
                block.fragile = true;
            }
            block.now = left.clone();
            block.durable = left;
            block.pending = Tags::default();
            block.rewritten = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(first: u64, count: u64, tag: Tag, fua: bool) -> Mutation {
        Mutation {
            blocks: first..first + count,
            tag,
            fua,
        }
    }

    fn run(model: &mut Model, m: Mutation, ended: Ended) {
        model.issue(std::slice::from_ref(&m));
        model.end_batch(false, &[(m, ended)], &[]).unwrap();
    }

    #[test]
    fn a_crash_keeps_flushed_writes_and_may_keep_later_ones() {
        let mut model = Model::new(4);
        run(&mut model, write(0, 2, 1, false), Ended::Ok);
        model.end_batch(true, &[], &[]).unwrap();
        run(&mut model, write(1, 2, 2, false), Ended::Ok);
        assert_eq!(model.allowed(1, &[]), Tags::one(2));
        model.crash();
        assert_eq!(model.allowed(0, &[]), Tags::one(1));
        assert_eq!(model.allowed(1, &[]), Tags(vec![1, 2]));
        assert_eq!(model.allowed(2, &[]), Tags(vec![0, 2]));
        assert!(model.is_fragile(1..2) && !model.is_fragile(0..1));
        // A read decides the block; the choice is then durable.
        model.end_batch(false, &[], &[(1, 2)]).unwrap();
        model.crash();
        assert_eq!(model.allowed(1, &[]), Tags::one(2));
    }

    #[test]
    fn fua_is_durable_at_once() {
        let mut model = Model::new(1);
        run(&mut model, write(0, 1, 1, false), Ended::Ok);
        run(&mut model, write(0, 1, 2, true), Ended::Ok);
        model.crash();
        assert_eq!(model.allowed(0, &[]), Tags::one(2));
    }

    #[test]
    fn failed_and_racing_writes_leave_a_choice() {
        let mut model = Model::new(1);
        run(&mut model, write(0, 1, 1, false), Ended::Failed);
        assert_eq!(model.allowed(0, &[]), Tags(vec![0, 1]));
        let (a, b) = (write(0, 1, 2, false), write(0, 1, 3, false));
        model.issue(&[a.clone(), b.clone()]);
        assert_eq!(
            model.allowed(0, &[a.clone(), b.clone()]),
            Tags(vec![0, 1, 2, 3])
        );
        model
            .end_batch(false, &[(a, Ended::Ok), (b, Ended::Ok)], &[])
            .unwrap();
        assert_eq!(model.allowed(0, &[]), Tags(vec![2, 3]));
    }
}
