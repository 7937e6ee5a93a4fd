//! Validation errors and the per-layout counts, on production sizes.

use crate::geometry::StripeGeometry;
use crate::layout::{GeometryError, Layout, DEFAULT_UNIT_BYTES};

const MIB: u64 = 1024 * 1024;
const U: u64 = DEFAULT_UNIT_BYTES;

fn error(layout: Layout, pe_bytes: u64) -> String {
    match StripeGeometry::new(layout, pe_bytes) {
        Ok(g) => panic!("{layout:?} on {pe_bytes} accepted: {g:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_layouts_say_why() {
    let raid5 = |stripes, unit_bytes| Layout::Raid5 {
        stripes,
        unit_bytes,
    };
    assert_eq!(
        error(raid5(1, U), 4 * MIB),
        "raid5 needs at least 2 stripes, got 1"
    );
    assert_eq!(
        error(
            Layout::Raid0 {
                stripes: 1,
                unit_bytes: U
            },
            4 * MIB
        ),
        "raid0 needs at least 2 stripes, got 1"
    );
    assert_eq!(
        error(Layout::Raid1 { copies: 1 }, 4 * MIB),
        "raid1 needs at least 2 copies, got 1"
    );
    let raid10 = Layout::Raid10 {
        stripes: 2,
        copies: 1,
        unit_bytes: U,
    };
    assert_eq!(
        error(raid10, 4 * MIB),
        "raid10 needs at least 2 copies, got 1"
    );
    let ec = |data, parity| Layout::Erasure {
        data,
        parity,
        unit_bytes: U,
    };
    assert_eq!(
        error(ec(1, 2), 4 * MIB),
        "ec needs at least 2 data shards, got 1"
    );
    assert_eq!(
        error(ec(4, 0), 4 * MIB),
        "ec needs at least 1 parity shard, got 0"
    );
    assert_eq!(
        error(ec(60, 5), 4 * MIB),
        "ec with 65 legs exceeds the maximum of 64 legs"
    );
    assert_eq!(
        error(raid5(4, 48 * 1024), 4 * MIB),
        "stripe unit of 49152 bytes is not a power of two"
    );
    assert_eq!(
        error(raid5(4, 2048), 4 * MIB),
        "stripe unit of 2048 bytes is smaller than the minimum of 4096 bytes"
    );
    assert_eq!(
        error(raid5(4, 8 * MIB), 4 * MIB),
        "stripe unit of 8388608 bytes is larger than the extent size of 4194304 bytes"
    );
    for pe_bytes in [0, 3 * MIB, 128 * 1024, 128 * MIB] {
        assert_eq!(
            error(Layout::Linear, pe_bytes),
            format!("extent size of {pe_bytes} bytes is not a power of two between 262144 and 67108864 bytes")
        );
    }
    // Overflowing counts are refused, not wrapped.
    let huge = Layout::Raid10 {
        stripes: usize::MAX,
        copies: 2,
        unit_bytes: U,
    };
    assert!(matches!(
        StripeGeometry::new(huge, 4 * MIB),
        Err(GeometryError::TooManyLegs { .. })
    ));
}

#[test]
fn counts_per_layout() {
    let pe = 4 * MIB;
    // (layout, legs, data legs, tolerance, unit)
    let table = [
        (Layout::Linear, 1, 1, 0, pe),
        (
            Layout::Raid0 {
                stripes: 3,
                unit_bytes: U,
            },
            3,
            3,
            0,
            U,
        ),
        (Layout::Raid1 { copies: 3 }, 3, 1, 2, pe),
        (
            Layout::Raid10 {
                stripes: 2,
                copies: 3,
                unit_bytes: U,
            },
            6,
            2,
            2,
            U,
        ),
        (
            Layout::Raid5 {
                stripes: 4,
                unit_bytes: U,
            },
            5,
            4,
            1,
            U,
        ),
        (
            Layout::Erasure {
                data: 8,
                parity: 3,
                unit_bytes: U,
            },
            11,
            8,
            3,
            U,
        ),
    ];
    for (layout, legs, data_legs, tolerance, unit) in table {
        let g = StripeGeometry::new(layout, pe).expect("valid");
        assert_eq!(g.layout(), layout);
        assert_eq!(g.legs(), legs, "{layout:?}");
        assert_eq!(layout.legs(), legs, "{layout:?}");
        assert_eq!(g.data_legs(), data_legs, "{layout:?}");
        assert_eq!(g.extent_bytes(), data_legs as u64 * pe, "{layout:?}");
        assert_eq!(g.tolerance(), tolerance, "{layout:?}");
        assert_eq!(g.unit_bytes(), unit, "{layout:?}");
        assert_eq!(g.rows_per_pe(), pe / unit, "{layout:?}");
    }
}

/// The smallest and largest PEs and units the limits allow are accepted.
#[test]
fn limits_are_inclusive() {
    for pe_bytes in [256 * 1024, 64 * MIB] {
        for unit_bytes in [4096, pe_bytes] {
            let layout = Layout::Erasure {
                data: 4,
                parity: 2,
                unit_bytes,
            };
            StripeGeometry::new(layout, pe_bytes).expect("valid");
        }
    }
    let widest = Layout::Erasure {
        data: 48,
        parity: 16,
        unit_bytes: U,
    };
    assert_eq!(
        StripeGeometry::new(widest, 4 * MIB).map(|g| g.legs()),
        Ok(64)
    );
}
