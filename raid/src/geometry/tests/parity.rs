//! The parity rotation: shard and leg lookups invert each other, and
//! parity spreads evenly over the legs.

use super::tiny_geometries;

#[test]
fn shard_leg_and_leg_shard_are_inverse() {
    for g in tiny_geometries() {
        let Some(p) = g.as_parity() else { continue };
        let shards = p.shards();
        for row in (0..3 * shards as u64).chain([u64::MAX - 1, u64::MAX]) {
            let mut seen = vec![false; shards];
            for shard in 0..shards {
                let leg = p.shard_leg(row, shard);
                assert!(
                    !seen[leg],
                    "{:?} row {row}: two shards on leg {leg}",
                    g.layout()
                );
                seen[leg] = true;
                assert_eq!(p.leg_shard(row, leg), shard);
            }
            let parity: Vec<_> = p.parity_legs(row).collect();
            assert_eq!(parity.len(), p.parity_shards());
            for (index, leg) in parity.into_iter().enumerate() {
                assert_eq!(p.leg_shard(row, leg), p.data_shards() + index);
            }
        }
    }
}

/// Over any K+M consecutive rows each leg holds parity exactly M times;
/// over a whole PE the counts differ by at most M (none when K+M divides
/// the rows per PE).
#[test]
fn parity_rotates_over_every_leg() {
    for g in tiny_geometries() {
        let Some(p) = g.as_parity() else { continue };
        let shards = p.shards();
        let count = |rows: std::ops::Range<u64>| {
            let mut per_leg = vec![0usize; shards];
            for row in rows {
                for leg in p.parity_legs(row) {
                    per_leg[leg] += 1;
                }
            }
            per_leg
        };
        for start in 0..shards as u64 {
            let per_leg = count(start..start + shards as u64);
            assert!(
                per_leg.iter().all(|&n| n == p.parity_shards()),
                "{:?}",
                g.layout()
            );
        }
        let per_leg = count(0..p.rows_per_pe());
        let (min, max) = (per_leg.iter().min(), per_leg.iter().max());
        let spread = max.copied().unwrap_or(0) - min.copied().unwrap_or(0);
        if p.rows_per_pe() % shards as u64 == 0 {
            assert_eq!(spread, 0, "{:?}", g.layout());
        } else {
            assert!(spread <= p.parity_shards(), "{:?} {per_leg:?}", g.layout());
        }
    }
}

/// Raid5 as the module picture draws it: in row 0 data on legs 0..N and
/// parity on the last leg, then every shard one leg to the right per row.
#[test]
fn raid5_places_parity_like_the_picture() {
    use crate::{Layout, StripeGeometry};
    let layout = Layout::Raid5 {
        stripes: 3,
        unit_bytes: 64 * 1024,
    };
    let g = StripeGeometry::new(layout, 4 << 20).expect("valid");
    let p = g.as_parity().expect("parity");
    let parity: Vec<_> = (0..5).map(|row| p.parity_legs(row).next()).collect();
    assert_eq!(parity, [Some(3), Some(0), Some(1), Some(2), Some(3)]);
    assert_eq!(
        (0..3).map(|s| p.shard_leg(1, s)).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}
