//! Byte-by-byte checks over every small geometry: each user byte, each leg
//! byte, each set of failed legs.

use std::collections::HashMap;

use super::{oracle, tiny_geometries};
use crate::geometry::{LegContent, StripeGeometry};

/// Where each user byte lives: (user offset) -> (legs, PE offset).
fn byte_map(g: &StripeGeometry) -> Vec<(Vec<usize>, u64)> {
    (0..g.extent_bytes())
        .map(|offset_bytes| {
            let spans: Vec<_> = g.spans(offset_bytes, 1).collect();
            assert_eq!(spans.len(), 1);
            (spans[0].legs().collect(), spans[0].pe_offset_bytes)
        })
        .collect()
}

#[test]
fn every_user_byte_lands_where_the_layout_rules_say() {
    for g in tiny_geometries() {
        for (offset_bytes, got) in byte_map(&g).into_iter().enumerate() {
            let want = oracle(g.layout(), g.pe_bytes(), offset_bytes as u64);
            assert_eq!(
                got,
                want,
                "{:?} pe {} byte {offset_bytes}",
                g.layout(),
                g.pe_bytes()
            );
        }
    }
}

#[test]
fn mapping_is_contiguous_within_a_unit() {
    for g in tiny_geometries() {
        let map = byte_map(&g);
        for offset_bytes in 1..map.len() {
            let (legs, pe_offset_bytes) = &map[offset_bytes];
            if *pe_offset_bytes % g.unit_bytes() != 0 {
                let (prev_legs, prev_pe) = &map[offset_bytes - 1];
                assert_eq!(legs, prev_legs, "{:?} byte {offset_bytes}", g.layout());
                assert_eq!(
                    *pe_offset_bytes,
                    prev_pe + 1,
                    "{:?} byte {offset_bytes}",
                    g.layout()
                );
            }
        }
    }
}

/// No two user bytes share a leg byte; with the parity the leg pieces
/// report, every byte of every leg is used exactly once; and every data
/// byte is reachable from the user range.
#[test]
fn leg_bytes_are_data_or_parity_exactly_once() {
    for g in tiny_geometries() {
        let ctx = format!("{:?} pe {}", g.layout(), g.pe_bytes());
        let mut owner: HashMap<(usize, u64), String> = HashMap::new();
        for (offset_bytes, (legs, pe_offset_bytes)) in byte_map(&g).into_iter().enumerate() {
            for leg in legs {
                let previous = owner.insert((leg, pe_offset_bytes), format!("data {offset_bytes}"));
                assert!(
                    previous.is_none(),
                    "{ctx}: leg {leg} byte {pe_offset_bytes} twice"
                );
            }
        }
        for leg in 0..g.legs() {
            for piece in g.leg_pieces(leg, 0, g.pe_bytes()) {
                if let LegContent::Parity { index } = piece.content {
                    for b in piece.pe_offset_bytes..piece.pe_offset_bytes + piece.len_bytes {
                        let previous = owner.insert((leg, b), format!("parity {index}"));
                        assert!(previous.is_none(), "{ctx}: leg {leg} byte {b} twice");
                    }
                }
            }
        }
        assert_eq!(owner.len() as u64, g.legs() as u64 * g.pe_bytes(), "{ctx}");
    }
}

/// `leg_pieces` inverts `spans`: what a leg byte holds points back to it.
#[test]
fn leg_pieces_invert_spans() {
    for g in tiny_geometries() {
        let ctx = format!("{:?} pe {}", g.layout(), g.pe_bytes());
        for leg in 0..g.legs() {
            for b in 0..g.pe_bytes() {
                let pieces: Vec<_> = g.leg_pieces(leg, b, 1).collect();
                assert_eq!(pieces.len(), 1, "{ctx}");
                let piece = pieces[0];
                assert_eq!((piece.pe_offset_bytes, piece.len_bytes), (b, 1), "{ctx}");
                assert_eq!(piece.row, b / g.unit_bytes(), "{ctx}");
                match piece.content {
                    LegContent::Data {
                        shard,
                        offset_bytes,
                    } => {
                        let span = g.spans(offset_bytes, 1).next().expect("one span");
                        assert!(span.legs().contains(&leg), "{ctx} leg {leg} byte {b}");
                        assert_eq!(span.pe_offset_bytes, b, "{ctx} leg {leg} byte {b}");
                        assert_eq!(span.shard, shard, "{ctx} leg {leg} byte {b}");
                    }
                    LegContent::Parity { index } => {
                        let p = g.as_parity().expect("parity only in parity layouts");
                        let holder = p.parity_legs(piece.row).nth(index);
                        assert_eq!(holder, Some(leg), "{ctx} leg {leg} byte {b}");
                    }
                }
            }
        }
    }
}

/// Leg pieces over any range tile it and split only at unit boundaries.
#[test]
fn leg_pieces_tile_pe_ranges() {
    for g in tiny_geometries() {
        for leg in 0..g.legs() {
            for start in 0..g.pe_bytes() {
                for len in 0..=g.pe_bytes() - start {
                    let mut next = start;
                    for piece in g.leg_pieces(leg, start, len) {
                        assert_eq!(piece.pe_offset_bytes, next);
                        assert!(piece.len_bytes > 0);
                        let unit = g.unit_bytes();
                        assert_eq!(
                            piece.pe_offset_bytes / unit,
                            (next + piece.len_bytes - 1) / unit
                        );
                        if next != start {
                            assert_eq!(next % unit, 0);
                        }
                        next += piece.len_bytes;
                    }
                    assert_eq!(next, start + len);
                }
            }
        }
    }
}

/// The redundancy of every leg byte sits at the same PE offset on the
/// other legs of its group: the copies of a mirror, or the other shards of
/// the row.
#[test]
fn groups_hold_a_byte_s_redundancy_at_the_same_offset() {
    for g in tiny_geometries() {
        for leg in 0..g.legs() {
            let group = g.group_legs(leg);
            assert!(group.contains(&leg));
            for b in 0..g.pe_bytes() {
                let here = g.leg_pieces(leg, b, 1).next().expect("piece").content;
                for other in group.clone() {
                    let there = g.leg_pieces(other, b, 1).next().expect("piece").content;
                    match g {
                        // A mirror group holds one content on all its legs.
                        StripeGeometry::Striped(_) => assert_eq!(here, there),
                        // A parity group holds the row's shards, one per leg.
                        StripeGeometry::Parity(_) => {
                            if other != leg {
                                assert_ne!(here, there);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `survives` against the definition: every user byte keeps a leg (for
/// mirrors) or at most M legs fail (for an MDS code); `tolerance` is the
/// largest count of failures that every choice of legs survives.
#[test]
fn survival_and_tolerance_match_every_failure_set() {
    for g in tiny_geometries() {
        if g.legs() > 12 {
            continue;
        }
        let map = byte_map(&g);
        let mut tolerance = g.legs();
        for failed in 0u64..1 << g.legs() {
            let expected = match g {
                StripeGeometry::Striped(_) => map
                    .iter()
                    .all(|(legs, _)| legs.iter().any(|&leg| failed & (1 << leg) == 0)),
                StripeGeometry::Parity(p) => failed.count_ones() as usize <= p.parity_shards(),
            };
            assert_eq!(
                g.survives(failed),
                expected,
                "{:?} failed {failed:b}",
                g.layout()
            );
            if !expected {
                tolerance = tolerance.min(failed.count_ones() as usize - 1);
            }
        }
        assert_eq!(g.tolerance(), tolerance, "{:?}", g.layout());
    }
}
