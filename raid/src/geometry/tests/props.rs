//! Property tests on production-sized geometries: random layouts (up to 64
//! legs), PE sizes, units and requests.

use proptest::prelude::*;

use super::check_spans;
use crate::geometry::{LegContent, StripeGeometry};
use crate::layout::{Layout, MAX_LEGS};

fn layout() -> impl Strategy<Value = Layout> {
    (0..6u8, 2..=16usize, 1..=4usize, 12..=26u32).prop_map(|(kind, a, b, unit_shift)| {
        let unit_bytes = 1u64 << unit_shift;
        match kind {
            0 => Layout::Linear,
            1 => Layout::Raid0 {
                stripes: a,
                unit_bytes,
            },
            2 => Layout::Raid1 { copies: b + 1 },
            3 => Layout::Raid10 {
                stripes: a,
                copies: b.max(2),
                unit_bytes,
            },
            4 => Layout::Raid5 {
                stripes: a,
                unit_bytes,
            },
            _ => Layout::Erasure {
                data: a,
                parity: b,
                unit_bytes,
            },
        }
    })
}

/// A valid geometry and a request inside its extent of at most ~1000 units.
fn case() -> impl Strategy<Value = (StripeGeometry, u64, u64)> {
    (layout(), 18..=26u32)
        .prop_filter_map("unit larger than the PE", |(layout, pe_shift)| {
            StripeGeometry::new(layout, 1 << pe_shift).ok()
        })
        .prop_flat_map(|g| {
            let extent = g.extent_bytes();
            (Just(g), 0..=extent).prop_flat_map(move |(g, offset)| {
                let max_len = (extent - offset).min(1000 * g.unit_bytes());
                (Just(g), Just(offset), 0..=max_len)
            })
        })
}

proptest! {
    #[test]
    fn spans_tile_large_requests((g, offset, len) in case()) {
        prop_assert!(g.legs() <= MAX_LEGS);
        check_spans(&g, offset, len);
    }

    /// Every span's bytes, looked up from the leg's side, are those user bytes.
    #[test]
    fn leg_pieces_point_back_to_spans((g, offset, len) in case()) {
        for span in g.spans(offset, len) {
            for leg in span.legs() {
                let pieces: Vec<_> = g.leg_pieces(leg, span.pe_offset_bytes, span.len_bytes).collect();
                prop_assert_eq!(pieces.len(), 1);
                prop_assert_eq!(pieces[0].row, span.row);
                prop_assert_eq!(pieces[0].content, LegContent::Data {
                    shard: span.shard,
                    offset_bytes: offset + span.request_offset_bytes,
                });
            }
        }
    }

    /// Rows tile the request and count as full exactly when whole.
    #[test]
    fn rows_tile_large_requests((g, offset, len) in case()) {
        let Some(p) = g.as_parity() else { return Ok(()) };
        let mut next = offset;
        for r in p.rows(offset, len) {
            prop_assert_eq!(r.row * p.row_bytes() + r.row_offset_bytes, next);
            prop_assert_eq!(r.full, r.row_offset_bytes == 0 && r.len_bytes == p.row_bytes());
            prop_assert!(r.shards.end <= p.data_shards());
            prop_assert!(r.unit_range_bytes.end <= p.unit_bytes());
            next += r.len_bytes;
        }
        prop_assert_eq!(next, offset + len);
    }
}
