//! Every request (offset, length) on small geometries: spans tile it, and
//! for parity layouts the row view agrees with the spans.

use super::{check_spans, tiny_geometries};
use crate::geometry::StripeGeometry;

/// Offsets and lengths: every one on small extents, a grid around unit and
/// row boundaries on the larger ones.
fn requests(g: &StripeGeometry) -> Vec<(u64, u64)> {
    let extent_bytes = g.extent_bytes();
    let mut all = Vec::new();
    if extent_bytes <= 96 {
        for offset in 0..=extent_bytes {
            for len in 0..=extent_bytes - offset {
                all.push((offset, len));
            }
        }
        return all;
    }
    let unit = g.unit_bytes();
    let row = unit * g.data_legs() as u64;
    let mut points = vec![
        0,
        1,
        unit - 1,
        unit,
        unit + 1,
        row - 1,
        row,
        row + 1,
        2 * row + unit / 2,
    ];
    points.extend([
        extent_bytes - row,
        extent_bytes - unit,
        extent_bytes - 1,
        extent_bytes,
    ]);
    points.retain(|&p| p <= extent_bytes);
    for &offset in &points {
        for &end in &points {
            if end >= offset {
                all.push((offset, end - offset));
            }
        }
    }
    all
}

#[test]
fn spans_tile_every_request() {
    for g in tiny_geometries() {
        for (offset, len) in requests(&g) {
            check_spans(&g, offset, len);
        }
    }
}

#[test]
fn rows_agree_with_spans() {
    for g in tiny_geometries() {
        let Some(p) = g.as_parity() else { continue };
        for (offset, len) in requests(&g) {
            let ctx = format!(
                "{:?} pe {} request {offset}+{len}",
                g.layout(),
                g.pe_bytes()
            );
            let rows: Vec<_> = p.rows(offset, len).collect();
            let spans: Vec<_> = g.spans(offset, len).collect();
            let mut next = 0;
            for r in &rows {
                assert_eq!(r.request_offset_bytes, next, "{ctx}");
                assert!(r.len_bytes > 0, "{ctx}");
                assert_eq!(
                    r.row * p.row_bytes() + r.row_offset_bytes,
                    offset + next,
                    "{ctx}"
                );
                next += r.len_bytes;
                let in_row: Vec<_> = spans.iter().filter(|s| s.row == r.row).collect();
                let shards: Vec<_> = in_row.iter().map(|s| s.shard).collect();
                assert_eq!(shards, r.shards.clone().collect::<Vec<_>>(), "{ctx}");
                let span_bytes: u64 = in_row.iter().map(|s| s.len_bytes).sum();
                assert_eq!(span_bytes, r.len_bytes, "{ctx}");
                assert_eq!(r.full, r.len_bytes == p.row_bytes(), "{ctx}");
                // The unit range holds every span's bytes within the unit,
                // exactly when there is one span.
                for s in &in_row {
                    let start = s.pe_offset_bytes % p.unit_bytes();
                    assert!(r.unit_range_bytes.start <= start, "{ctx}");
                    assert!(start + s.len_bytes <= r.unit_range_bytes.end, "{ctx}");
                }
                if let [only] = in_row[..] {
                    let start = only.pe_offset_bytes % p.unit_bytes();
                    assert_eq!(r.unit_range_bytes, start..start + only.len_bytes, "{ctx}");
                }
            }
            assert_eq!(next, len, "{ctx}");
        }
    }
}
