//! Ring arithmetic: placement, wrap-around, space accounting, and the
//! reader's candidates.

use proptest::prelude::*;

use crate::journal::format::BLOCK_BYTES;
use crate::journal::ring::*;

const B: u64 = BLOCK_BYTES;

#[test]
fn entries_fill_in_order_then_wrap_with_a_gap() {
    let mut ring = Ring::empty(10 * B, 0);
    assert_eq!(ring.max_entry_bytes(), 5 * B);
    let a = ring.reserve(4 * B).expect("room");
    let b = ring.reserve(4 * B).expect("room");
    assert_eq!((a.offset_bytes, b.offset_bytes), (0, 4 * B));
    assert_eq!(ring.used_bytes(), 8 * B);
    // 3 blocks do not fit in the 2 left before the end, and the ring start
    // is still taken.
    assert_eq!(ring.reserve(3 * B), None);
    ring.release(a);
    let c = ring.reserve(3 * B).expect("room after a is freed");
    assert_eq!(c.offset_bytes, 0, "an entry never straddles the end");
    assert_eq!(c.footprint_bytes, 2 * B + 3 * B, "the skipped gap is c's");
    assert_eq!(ring.used_bytes(), 4 * B + 5 * B);
    assert_eq!(ring.head_bytes(), 3 * B);
    ring.release(b);
    ring.release(c);
    assert_eq!(ring.used_bytes(), 0);
    assert_eq!(ring.head_bytes(), 3 * B);
}

#[test]
fn an_entry_ending_exactly_at_the_end_wraps_the_head() {
    let mut ring = Ring::empty(8 * B, 4 * B);
    let a = ring.reserve(4 * B).expect("room");
    assert_eq!((a.offset_bytes, a.footprint_bytes), (4 * B, 4 * B));
    assert_eq!(ring.head_bytes(), 0);
    let b = ring.reserve(4 * B).expect("room");
    assert_eq!((b.offset_bytes, b.footprint_bytes), (0, 4 * B));
    assert_eq!(ring.used_bytes(), 8 * B);
    assert_eq!(ring.place(B), None, "full");
}

#[test]
fn the_largest_entry_always_fits_an_empty_ring() {
    for capacity_blocks in 2..40u64 {
        for start in 0..capacity_blocks {
            let mut ring = Ring::empty(capacity_blocks * B, start * B);
            let max = ring.max_entry_bytes();
            assert!(
                ring.reserve(max).is_some(),
                "capacity {capacity_blocks}, start {start}"
            );
        }
    }
}

#[test]
#[should_panic(expected = "out of order")]
fn releasing_out_of_order_is_a_bug() {
    let mut ring = Ring::empty(10 * B, 0);
    let _a = ring.reserve(2 * B).expect("room");
    let b = ring.reserve(2 * B).expect("room");
    ring.release(b);
}

#[test]
#[should_panic(expected = "entry of")]
fn an_entry_over_half_the_ring_is_a_bug() {
    let mut ring = Ring::empty(10 * B, 0);
    let _ = ring.reserve(6 * B);
}

#[test]
fn readers_look_where_the_last_entry_ended_then_at_the_start() {
    assert_eq!(next_candidates(10 * B, 4 * B), vec![4 * B, 0]);
    assert_eq!(next_candidates(10 * B, 9 * B), vec![9 * B, 0]);
    assert_eq!(next_candidates(10 * B, 10 * B), vec![0]);
    assert_eq!(next_candidates(10 * B, 0), vec![0]);
    assert_eq!(max_entry_bytes(9 * B), 4 * B);
}

proptest! {
    /// Against a model of the live entries: they never overlap or straddle
    /// the end, used bytes are the sum of their footprints, a refusal means
    /// the footprint would not fit, and a reader following the candidates
    /// from the oldest entry finds every live entry in order.
    #[test]
    fn ring_matches_a_model(
        capacity_blocks in 2u64..64,
        start in 0u64..64,
        ops in prop::collection::vec((any::<bool>(), 1u64..32), 1..200),
    ) {
        let capacity = capacity_blocks * B;
        let mut ring = Ring::empty(capacity, (start % capacity_blocks) * B);
        let mut live: std::collections::VecDeque<Placement> = Default::default();
        for (add, blocks) in ops {
            if add || live.is_empty() {
                let len = (blocks * B).min(ring.max_entry_bytes());
                let used_before = ring.used_bytes();
                match ring.reserve(len) {
                    Some(p) => {
                        prop_assert!(p.offset_bytes + p.len_bytes <= capacity);
                        prop_assert!(p.footprint_bytes >= p.len_bytes);
                        for q in &live {
                            let apart = p.end_bytes() <= q.offset_bytes || q.end_bytes() <= p.offset_bytes;
                            prop_assert!(apart, "{p:?} overlaps {q:?}");
                        }
                        prop_assert_eq!(ring.used_bytes(), used_before + p.footprint_bytes);
                        live.push_back(p);
                    }
                    None => {
                        let head = ring.head_bytes();
                        let footprint = if head + len <= capacity { len } else { capacity - head + len };
                        prop_assert!(used_before + footprint > capacity);
                    }
                }
            } else if let Some(p) = live.pop_front() {
                ring.release(p);
            }
            let sum: u64 = live.iter().map(|p| p.footprint_bytes).sum();
            prop_assert_eq!(ring.used_bytes(), sum);
            // The reader's walk: each live entry is where the previous ended,
            // or at the start.
            for pair in live.iter().collect::<Vec<_>>().windows(2) {
                let candidates = next_candidates(capacity, pair[0].end_bytes());
                prop_assert!(candidates.contains(&pair[1].offset_bytes));
            }
        }
    }
}
