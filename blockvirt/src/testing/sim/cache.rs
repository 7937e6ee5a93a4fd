//! The volatile write cache of a simulated disk, and what a power loss leaves.
//!
//! Four views of the disk are kept side by side:
//!
//! ```text
//!              every completed op      flushed (or FUA) ops only
//!  as stored   stored                  durable
//!  pristine    truth                   truth_durable
//! ```
//!
//! "As stored" includes injected corruption and misdirected writes;
//! "pristine" is what the disk would hold without them. A completed write,
//! discard or write-zeroes updates `stored` and `truth` at once and is
//! appended to the log. `flush` replays the log, in issue order, onto the
//! durable views and empties it.
//!
//! Crash rule: at power loss each logged op independently persists whole,
//! persists torn (a random non-empty, strict subset of its 4 KiB blocks; a
//! block is never half-written), or is lost; survivors are replayed in issue
//! order onto the durable views, which then become the whole disk.
//!
//! A FUA op goes to the durable views at once. It is logged as well when
//! older unflushed ops exist, and always replayed at a crash, so an older
//! unflushed write to the same block that happens to persist cannot land on
//! top of it.

use rand::rngs::SmallRng;
use rand::Rng;

use super::blocks::{BlockMap, Content};
use crate::device::ByteRange;

/// The kind of a cached operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Write,
    WriteZeroes,
    Discard,
}

/// What happened at a crash to one operation that was not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashOutcome {
    /// Every block persisted.
    Whole,
    /// `blocks_kept` of the op's blocks persisted (at least one, not all).
    Torn { blocks_kept: u64 },
    /// Nothing persisted.
    Lost,
}

/// One not-yet-durable operation and its fate at a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashedOp {
    pub kind: OpKind,
    /// The range the caller asked for (a misdirected write landed elsewhere).
    pub range: ByteRange,
    pub outcome: CrashOutcome,
}

/// What `crash()` did: the unflushed operations, in issue order. FUA writes
/// are durable already and not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub ops: Vec<CrashedOp>,
}

impl CrashReport {
    /// How many listed ops had an outcome matching `pred`.
    pub fn count(&self, pred: impl Fn(&CrashOutcome) -> bool) -> usize {
        self.ops.iter().filter(|op| pred(&op.outcome)).count()
    }
}

/// One block of a cached op: what it makes of the pristine view, and what
/// it makes of the stored view (another block when misdirected, other bytes
/// when corrupted).
#[derive(Debug, Clone)]
pub(crate) struct Effect {
    pub truth_block: u64,
    pub truth: Content,
    pub stored_block: u64,
    pub stored: Content,
}

#[derive(Debug)]
pub(crate) struct LoggedOp {
    pub kind: OpKind,
    pub range: ByteRange,
    pub fua: bool,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Default)]
pub(crate) struct WriteCache {
    stored: BlockMap,
    durable: BlockMap,
    truth: BlockMap,
    truth_durable: BlockMap,
    /// Completed, not yet flushed ops (and FUA ops issued after them).
    log: Vec<LoggedOp>,
}

impl WriteCache {
    pub(crate) fn stored(&self) -> &BlockMap {
        &self.stored
    }

    pub(crate) fn truth(&self) -> &BlockMap {
        &self.truth
    }

    pub(crate) fn truth_durable(&self) -> &BlockMap {
        &self.truth_durable
    }

    /// Ops completed since the last flush that are not durable yet.
    pub(crate) fn unflushed_ops(&self) -> usize {
        self.log.iter().filter(|op| !op.fua).count()
    }

    /// Applies a completed op: visible at once, durable only if FUA.
    pub(crate) fn apply(&mut self, op: LoggedOp) {
        if op.effects.is_empty() {
            return;
        }
        for effect in &op.effects {
            self.stored.set(effect.stored_block, effect.stored.clone());
            self.truth.set(effect.truth_block, effect.truth.clone());
        }
        if op.fua {
            persist(&mut self.durable, &mut self.truth_durable, &op.effects);
            if self.log.is_empty() {
                // Nothing older can persist on top of it.
                return;
            }
        }
        self.log.push(op);
    }

    /// Makes every completed op durable.
    pub(crate) fn flush(&mut self) {
        for op in self.log.drain(..) {
            persist(&mut self.durable, &mut self.truth_durable, &op.effects);
        }
    }

    /// Power loss: decides each unflushed op's fate with `rng`, and leaves
    /// the disk holding only what is durable.
    pub(crate) fn crash(
        &mut self,
        rng: &mut SmallRng,
        whole_probability: f64,
        torn_probability: f64,
    ) -> CrashReport {
        let mut report = CrashReport::default();
        for op in std::mem::take(&mut self.log) {
            if op.fua {
                persist(&mut self.durable, &mut self.truth_durable, &op.effects);
                continue;
            }
            let outcome = draw_outcome(rng, op.effects.len(), whole_probability, torn_probability);
            match outcome {
                CrashOutcome::Whole => {
                    persist(&mut self.durable, &mut self.truth_durable, &op.effects)
                }
                CrashOutcome::Torn { blocks_kept } => {
                    let mut kept =
                        rand::seq::index::sample(rng, op.effects.len(), blocks_kept as usize)
                            .into_vec();
                    kept.sort_unstable();
                    for i in kept {
                        persist(
                            &mut self.durable,
                            &mut self.truth_durable,
                            std::slice::from_ref(&op.effects[i]),
                        );
                    }
                }
                CrashOutcome::Lost => {}
            }
            report.ops.push(CrashedOp {
                kind: op.kind,
                range: op.range,
                outcome,
            });
        }
        self.stored = self.durable.clone();
        self.truth = self.truth_durable.clone();
        report
    }

    /// Latent corruption of one block's medium: every version of it the
    /// disk holds (visible, durable, and cached in the log) gets the same
    /// flipped byte, so neither a flush nor a crash brings clean data back.
    /// Only a later write replaces it.
    pub(crate) fn flip(&mut self, block: u64, byte_in_block: usize, mask: u8) {
        for map in [&mut self.stored, &mut self.durable] {
            let flipped = map.get(block).flipped(byte_in_block, mask);
            map.set(block, flipped);
        }
        for effect in self.log.iter_mut().flat_map(|op| op.effects.iter_mut()) {
            if effect.stored_block == block {
                effect.stored = effect.stored.flipped(byte_in_block, mask);
            }
        }
    }
}

fn persist(durable: &mut BlockMap, truth_durable: &mut BlockMap, effects: &[Effect]) {
    for effect in effects {
        durable.set(effect.stored_block, effect.stored.clone());
        truth_durable.set(effect.truth_block, effect.truth.clone());
    }
}

/// Whole, torn or lost. An op of one block cannot tear: the torn share of
/// the odds goes to whole and lost equally.
fn draw_outcome(
    rng: &mut SmallRng,
    blocks: usize,
    whole_probability: f64,
    torn_probability: f64,
) -> CrashOutcome {
    let x: f64 = rng.random();
    if x < whole_probability {
        CrashOutcome::Whole
    } else if x < whole_probability + torn_probability {
        if blocks >= 2 {
            CrashOutcome::Torn {
                blocks_kept: rng.random_range(1..blocks) as u64,
            }
        } else if rng.random_bool(0.5) {
            CrashOutcome::Whole
        } else {
            CrashOutcome::Lost
        }
    } else {
        CrashOutcome::Lost
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::super::blocks::BLOCK_BYTES;
    use super::*;

    fn write(block: u64, count: u64, byte: u8, fua: bool) -> LoggedOp {
        let effects = (block..block + count)
            .map(|b| {
                let content = Content::data(&[byte; BLOCK_BYTES as usize]);
                Effect {
                    truth_block: b,
                    truth: content.clone(),
                    stored_block: b,
                    stored: content,
                }
            })
            .collect();
        LoggedOp {
            kind: OpKind::Write,
            range: ByteRange::new(block * BLOCK_BYTES, count * BLOCK_BYTES),
            fua,
            effects,
        }
    }

    fn byte_at(map: &BlockMap, block: u64) -> u8 {
        let mut out = [0u8; 1];
        map.read(block * BLOCK_BYTES, &mut out);
        out[0]
    }

    #[test]
    fn writes_are_visible_at_once_and_durable_after_flush() {
        let mut cache = WriteCache::default();
        cache.apply(write(3, 2, 9, false));
        assert_eq!(byte_at(cache.stored(), 4), 9);
        assert_eq!(byte_at(cache.truth(), 4), 9);
        assert_eq!(byte_at(cache.truth_durable(), 4), 0);
        assert_eq!(cache.unflushed_ops(), 1);
        cache.flush();
        assert_eq!(byte_at(cache.truth_durable(), 4), 9);
        assert_eq!(cache.unflushed_ops(), 0);
    }

    #[test]
    fn certain_loss_drops_everything_unflushed() {
        let mut cache = WriteCache::default();
        cache.apply(write(0, 1, 1, false));
        cache.flush();
        cache.apply(write(0, 4, 2, false));
        let report = cache.crash(&mut SmallRng::seed_from_u64(1), 0.0, 0.0);
        assert_eq!(report.count(|o| *o == CrashOutcome::Lost), 1);
        assert_eq!(byte_at(cache.stored(), 0), 1);
        assert_eq!(byte_at(cache.stored(), 1), 0);
    }

    #[test]
    fn a_fua_write_is_not_overwritten_by_an_older_write_that_persists() {
        let mut cache = WriteCache::default();
        cache.apply(write(0, 1, 1, false));
        cache.apply(write(0, 1, 2, true));
        let report = cache.crash(&mut SmallRng::seed_from_u64(1), 1.0, 0.0);
        assert_eq!(report.ops.len(), 1, "only the unflushed write is reported");
        assert_eq!(byte_at(cache.stored(), 0), 2);
        assert_eq!(byte_at(cache.truth(), 0), 2);
    }

    #[test]
    fn torn_ops_keep_a_strict_non_empty_subset() {
        for seed in 0..50 {
            let mut cache = WriteCache::default();
            cache.apply(write(0, 8, 5, false));
            let report = cache.crash(&mut SmallRng::seed_from_u64(seed), 0.0, 1.0);
            let CrashOutcome::Torn { blocks_kept } = report.ops[0].outcome else {
                panic!("seed {seed}: an 8-block op with torn odds 1 tears");
            };
            let landed = (0..8).filter(|&b| byte_at(cache.stored(), b) == 5).count();
            assert_eq!(landed as u64, blocks_kept, "seed {seed}");
            assert!((1..8).contains(&landed), "seed {seed}");
        }
    }

    #[test]
    fn a_flipped_block_stays_flipped_through_flush_and_crash() {
        let mut cache = WriteCache::default();
        cache.apply(write(0, 1, 1, false));
        cache.flush();
        cache.apply(write(0, 1, 2, false));
        cache.flip(0, 0, 0x80);
        assert_eq!(byte_at(cache.stored(), 0), 0x82);
        assert_eq!(byte_at(cache.truth(), 0), 2, "the truth is pristine");
        cache.flush();
        cache.crash(&mut SmallRng::seed_from_u64(0), 0.0, 0.0);
        assert_eq!(byte_at(cache.stored(), 0), 0x82);
    }

    #[test]
    fn a_flipped_block_whose_rewrite_is_lost_shows_the_old_data_flipped() {
        let mut cache = WriteCache::default();
        cache.apply(write(0, 1, 1, false));
        cache.flush();
        cache.apply(write(0, 1, 2, false));
        cache.flip(0, 0, 0x80);
        cache.crash(&mut SmallRng::seed_from_u64(0), 0.0, 0.0);
        assert_eq!(byte_at(cache.stored(), 0), 0x81);
        assert_eq!(byte_at(cache.truth(), 0), 1);
    }
}
