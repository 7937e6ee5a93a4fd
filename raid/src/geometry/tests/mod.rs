//! Tests of the stripe geometry. Small geometries (units of a few bytes)
//! are checked byte by byte against the layout rules written out plainly
//! in [`oracle`]; large ones with proptest.

mod exhaustive;
mod parity;
mod props;
mod requests;
mod sizes;

use super::StripeGeometry;
use crate::layout::{Layout, Limits};

const TINY: Limits = Limits {
    min_unit_bytes: 1,
    min_pe_bytes: 1,
    max_pe_bytes: u64::MAX,
};

/// Every layout with counts up to about 6, on units of `unit_bytes`.
fn layouts(unit_bytes: u64) -> Vec<Layout> {
    let mut all = vec![Layout::Linear];
    for n in 2..=6 {
        all.push(Layout::Raid0 {
            stripes: n,
            unit_bytes,
        });
        all.push(Layout::Raid1 { copies: n });
        all.push(Layout::Raid5 {
            stripes: n,
            unit_bytes,
        });
        for m in 1..=4 {
            all.push(Layout::Erasure {
                data: n,
                parity: m,
                unit_bytes,
            });
        }
    }
    for stripes in 2..=4 {
        for copies in 2..=3 {
            all.push(Layout::Raid10 {
                stripes,
                copies,
                unit_bytes,
            });
        }
    }
    all
}

/// Small geometries: units of 1..8 bytes, PEs of 4..32 bytes.
fn tiny_geometries() -> Vec<StripeGeometry> {
    let mut all = Vec::new();
    for pe_bytes in [4, 8, 16, 32] {
        for unit_bytes in [1, 2, 4, 8] {
            if unit_bytes > pe_bytes {
                continue;
            }
            for layout in layouts(unit_bytes) {
                // Linear and raid1 ignore the unit: take them once per PE size.
                if layout.unit_bytes().is_none() && unit_bytes != 1 {
                    continue;
                }
                all.push(StripeGeometry::new_within(layout, pe_bytes, &TINY).expect("valid"));
            }
        }
    }
    all
}

/// The layout rules as written in the design, for one user byte: the legs
/// that hold it and its PE offset there.
fn oracle(layout: Layout, pe_bytes: u64, offset_bytes: u64) -> (Vec<usize>, u64) {
    let striped = |n: u64, c: usize, u: u64| {
        let row = offset_bytes / (n * u);
        let column = ((offset_bytes % (n * u)) / u) as usize;
        let legs = (column * c..column * c + c).collect();
        (legs, row * u + offset_bytes % u)
    };
    let rotated = |k: u64, m: u64, u: u64| {
        let row = offset_bytes / (k * u);
        let shard = (offset_bytes % (k * u)) / u;
        let leg = ((shard + row) % (k + m)) as usize;
        (vec![leg], row * u + offset_bytes % u)
    };
    match layout {
        Layout::Linear => (vec![0], offset_bytes),
        Layout::Raid1 { copies } => ((0..copies).collect(), offset_bytes),
        Layout::Raid0 {
            stripes,
            unit_bytes,
        } => striped(stripes as u64, 1, unit_bytes),
        Layout::Raid10 {
            stripes,
            copies,
            unit_bytes,
        } => striped(stripes as u64, copies, unit_bytes),
        Layout::Raid5 {
            stripes,
            unit_bytes,
        } => rotated(stripes as u64, 1, unit_bytes),
        Layout::Erasure {
            data,
            parity,
            unit_bytes,
        } => {
            let _ = pe_bytes;
            rotated(data as u64, parity as u64, unit_bytes)
        }
    }
}

/// Checks that `spans` of `[offset_bytes, +len_bytes)` tile the request,
/// split at unit boundaries only, and agree with the oracle at both ends
/// of every span (within a unit the mapping is contiguous, which
/// [`exhaustive`] checks byte by byte).
fn check_spans(g: &StripeGeometry, offset_bytes: u64, len_bytes: u64) {
    let unit_bytes = g.unit_bytes();
    let spans: Vec<_> = g.spans(offset_bytes, len_bytes).collect();
    let mut next_bytes = 0;
    for (i, span) in spans.iter().enumerate() {
        let ctx = || {
            format!(
                "{:?} pe {} request {offset_bytes}+{len_bytes} span {span:?}",
                g.layout(),
                g.pe_bytes()
            )
        };
        assert_eq!(span.request_offset_bytes, next_bytes, "{}", ctx());
        assert!(span.len_bytes > 0, "{}", ctx());
        next_bytes += span.len_bytes;
        // Inside one unit, and split only where a unit ends.
        let first_unit = span.pe_offset_bytes / unit_bytes;
        let last_unit = (span.pe_offset_bytes + span.len_bytes - 1) / unit_bytes;
        assert_eq!(first_unit, last_unit, "{}", ctx());
        assert_eq!(first_unit, span.row, "{}", ctx());
        if i > 0 {
            assert_eq!(span.pe_offset_bytes % unit_bytes, 0, "{}", ctx());
        }
        if i + 1 < spans.len() {
            assert_eq!(
                (span.pe_offset_bytes + span.len_bytes) % unit_bytes,
                0,
                "{}",
                ctx()
            );
        }
        assert!(
            span.pe_offset_bytes + span.len_bytes <= g.pe_bytes(),
            "{}",
            ctx()
        );
        assert!(span.legs().end <= g.legs(), "{}", ctx());
        assert!(span.shard < g.data_legs(), "{}", ctx());
        for (at, delta) in [(0, 0), (span.len_bytes - 1, span.len_bytes - 1)] {
            let user = offset_bytes + span.request_offset_bytes + at;
            let (legs, pe_offset_bytes) = oracle(g.layout(), g.pe_bytes(), user);
            assert_eq!(span.legs().collect::<Vec<_>>(), legs, "{}", ctx());
            assert_eq!(span.pe_offset_bytes + delta, pe_offset_bytes, "{}", ctx());
        }
    }
    assert_eq!(next_bytes, len_bytes);
}
