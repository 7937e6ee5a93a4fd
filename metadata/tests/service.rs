//! The metadata service over a real RocksDB: lifecycles, allocation,
//! leases and fencing, atomicity of refused operations, and durability
//! across reopen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metadata::{ExtentEntry, Layout, LvOptions, MapChange, MetaError, Service};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn open(&self) -> Service {
        Service::open_rocksdb(&self.dir.path().join("meta")).unwrap()
    }

    fn pv_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("pv{n}"))
    }
}

/// A service with `pvs` PVs of `pes` extents each, in VG "vg".
fn pool(fx: &Fixture, pvs: usize, pes: u64) -> Service {
    let svc = fx.open();
    let paths: Vec<PathBuf> = (0..pvs).map(|n| fx.pv_path(n)).collect();
    for path in &paths {
        svc.create_pv(
            path,
            Uuid::new_v4(),
            metadata::model::pv_bytes_for(pes, EXTENT),
        )
        .unwrap();
    }
    svc.create_vg("vg", &paths, EXTENT).unwrap();
    svc
}

/// Reserves `n` placements one at a time (small pools grant one per call).
fn reserve_n(svc: &Service, token: metadata::LeaseToken, n: usize) -> Vec<metadata::Placement> {
    (0..n)
        .flat_map(|_| svc.reserve(token, 1).unwrap())
        .collect()
}

fn vg_free(svc: &Service) -> u64 {
    svc.vg_reports()[0].pe_free
}

#[test]
fn lifecycle_persists_across_reopen() {
    let fx = Fixture::new();
    {
        let svc = pool(&fx, 2, 10);
        svc.create_lv("vg", "thin", 100 * MIB, true, Layout::Linear)
            .unwrap();
        svc.create_lv("vg", "thick", 10 * MIB, false, Layout::Linear)
            .unwrap();
        assert_eq!(vg_free(&svc), 20 - 3, "thick LV of 10 MiB takes 3 extents");
    }
    let svc = fx.open();
    let lvs = svc.lv_reports();
    assert_eq!(lvs.len(), 2);
    let thick = lvs.iter().find(|l| l.record.name == "thick").unwrap();
    assert_eq!(
        thick.record.size_bytes,
        12 * MIB,
        "size rounds up to whole extents"
    );
    assert_eq!(thick.mapped_extents, 3);
    assert_eq!(thick.data_percent(), 100.0);
    let thin = lvs.iter().find(|l| l.record.name == "thin").unwrap();
    assert_eq!(thin.mapped_extents, 0);
    assert_eq!(vg_free(&svc), 17);
    svc.remove_lv("vg", "thick").unwrap();
    svc.remove_lv("vg", "thin").unwrap();
    assert_eq!(vg_free(&svc), 20);
    svc.remove_vg("vg", false).unwrap();
    svc.remove_pv(&fx.pv_path(0)).unwrap();
    assert_eq!(svc.pv_reports().len(), 1);
}

fn rate(max_recovery_rate: u64) -> LvOptions {
    LvOptions {
        max_recovery_rate,
        ..LvOptions::default()
    }
}

#[test]
fn integrity_persists_and_only_mirrors_take_it() {
    let fx = Fixture::new();
    let on = LvOptions {
        raid_integrity: true,
        ..LvOptions::default()
    };
    {
        let svc = pool(&fx, 3, 10);
        let mirror = Layout::Raid1 { copies: 2 };
        let lv = svc
            .create_lv_with("vg", "mirror", 8 * MIB, true, mirror, on)
            .unwrap();
        assert!(lv.raid_integrity);
        let raid5 = Layout::Raid5 {
            stripes: 2,
            unit_bytes: 64 << 10,
        };
        for layout in [Layout::Linear, Layout::Raid1 { copies: 1 }, raid5] {
            let refused = svc.create_lv_with("vg", "other", 8 * MIB, true, layout, on);
            assert!(
                matches!(refused, Err(MetaError::InvalidArgument(_))),
                "{layout:?}: {refused:?}"
            );
            assert!(svc.lookup_lv("vg", "other").is_err(), "nothing half-made");
        }
    }
    let svc = fx.open();
    assert!(svc.lookup_lv("vg", "mirror").unwrap().0.raid_integrity);
}

#[test]
fn recovery_rates_persist_and_only_redundant_lvs_take_one() {
    let fx = Fixture::new();
    {
        let svc = pool(&fx, 2, 10);
        let mirror = Layout::Raid1 { copies: 2 };
        let lv = svc
            .create_lv_with("vg", "mirror", 8 * MIB, true, mirror, rate(64 * MIB))
            .unwrap();
        assert_eq!(lv.max_recovery_rate, 64 * MIB);
        svc.create_lv("vg", "plain", 8 * MIB, true, Layout::Linear)
            .unwrap();
        let refused = svc.set_max_recovery_rate("vg", "plain", MIB);
        assert!(
            matches!(&refused, Err(MetaError::InvalidArgument(m)) if m.contains("redundant")),
            "{refused:?}"
        );
        let refused = svc.create_lv_with("vg", "fast", 8 * MIB, true, Layout::Linear, rate(MIB));
        assert!(matches!(refused, Err(MetaError::InvalidArgument(_))));
        assert!(svc.lookup_lv("vg", "fast").is_err(), "nothing half-made");
        assert!(matches!(
            svc.set_max_recovery_rate("vg", "nope", MIB),
            Err(MetaError::NotFound(_))
        ));
        // 0 is "unlimited", valid for any layout.
        svc.set_max_recovery_rate("vg", "plain", 0).unwrap();
        let changed = svc.set_max_recovery_rate("vg", "mirror", 3 * MIB).unwrap();
        assert_eq!(changed.max_recovery_rate, 3 * MIB);
        // A lease grant keeps the rate.
        svc.acquire("vg", "mirror", "test").unwrap();
    }
    let svc = fx.open();
    let (mirror, _) = svc.lookup_lv("vg", "mirror").unwrap();
    assert_eq!(mirror.max_recovery_rate, 3 * MIB);
    assert_eq!(svc.lookup_lv("vg", "plain").unwrap().0.max_recovery_rate, 0);
}

#[test]
fn refused_operations_change_nothing() {
    let fx = Fixture::new();
    let svc = pool(&fx, 1, 4);
    let before = (svc.pv_reports(), svc.vg_reports(), svc.lv_reports());
    let other = fx.pv_path(9);
    svc.create_pv(
        &other,
        Uuid::new_v4(),
        metadata::model::pv_bytes_for(4, EXTENT),
    )
    .unwrap();
    let before_pv = svc.pv_reports();

    let err = svc
        .create_lv("vg", "big", 5 * EXTENT, false, Layout::Linear)
        .unwrap_err();
    assert!(matches!(err, MetaError::NoSpace(_)), "{err}");
    assert!(err.to_string().contains("insufficient free space"), "{err}");
    assert!(matches!(
        svc.create_lv("vg", "bad/name", MIB, true, Layout::Linear),
        Err(MetaError::InvalidArgument(_))
    ));
    assert!(matches!(
        svc.create_lv("nope", "x", MIB, true, Layout::Linear),
        Err(MetaError::NotFound(_))
    ));
    assert!(matches!(
        svc.create_lv("vg", "zero", 0, true, Layout::Linear),
        Err(MetaError::InvalidArgument(_))
    ));
    // A VG naming one free PV and one taken PV is refused as a whole.
    let err = svc
        .create_vg("vg2", &[other.clone(), fx.pv_path(0)], EXTENT)
        .unwrap_err();
    assert!(matches!(err, MetaError::Busy(_)), "{err}");
    assert!(matches!(
        svc.create_vg("vg", std::slice::from_ref(&other), EXTENT),
        Err(MetaError::AlreadyExists(_))
    ));
    assert!(matches!(
        svc.create_vg("vg3", std::slice::from_ref(&other), 3 * MIB),
        Err(MetaError::InvalidArgument(_))
    ));
    assert!(matches!(
        svc.remove_pv(&fx.pv_path(0)),
        Err(MetaError::Busy(_))
    ));
    assert!(matches!(
        svc.create_pv(&other, Uuid::new_v4(), 8 * MIB),
        Err(MetaError::AlreadyExists(_))
    ));
    assert!(matches!(
        svc.create_pv(Path::new("/tiny"), Uuid::new_v4(), MIB),
        Err(MetaError::InvalidArgument(_))
    ));

    assert_eq!(svc.pv_reports(), before_pv);
    assert_eq!(svc.vg_reports(), before.1);
    assert_eq!(svc.lv_reports(), before.2);
}

#[test]
fn extend_grows_thick_lvs_all_or_nothing() {
    let fx = Fixture::new();
    let svc = pool(&fx, 1, 4);
    svc.create_lv("vg", "lv", EXTENT, false, Layout::Linear)
        .unwrap();
    let err = svc.extend_lv("vg", "lv", 5 * EXTENT).unwrap_err();
    assert!(matches!(err, MetaError::NoSpace(_)));
    assert_eq!(vg_free(&svc), 3, "failed extend allocated nothing");
    let grown = svc.extend_lv("vg", "lv", 3 * EXTENT).unwrap();
    assert_eq!(grown.size_bytes, 3 * EXTENT);
    assert_eq!(vg_free(&svc), 1);
    assert!(matches!(
        svc.extend_lv("vg", "lv", 2 * EXTENT),
        Err(MetaError::InvalidArgument(_))
    ));
}

#[test]
fn leases_reserve_commit_and_fence() {
    let fx = Fixture::new();
    let svc = pool(&fx, 2, 4).with_lease_duration(Duration::from_millis(300));
    svc.create_lv("vg", "lv", 6 * EXTENT, true, Layout::Linear)
        .unwrap();
    let grant = svc.acquire("vg", "lv", "server-a").unwrap();
    assert!(grant.map.is_empty());
    assert!(matches!(
        svc.acquire("vg", "lv", "server-b"),
        Err(MetaError::Busy(_))
    ));
    assert!(matches!(svc.remove_lv("vg", "lv"), Err(MetaError::Busy(_))));
    assert_eq!(svc.lv_reports()[0].open_by.as_deref(), Some("server-a"));

    let reserved = reserve_n(&svc, grant.token, 3);
    assert_eq!(reserved.len(), 3);
    assert_eq!(vg_free(&svc), 5, "reservations are not free");
    let entry = |i: usize| ExtentEntry {
        placement: reserved[i].clone(),
        written: 1,
    };
    svc.commit(
        grant.token,
        vec![
            MapChange {
                le: 0,
                entry: Some(entry(0)),
            },
            MapChange {
                le: 5,
                entry: Some(entry(1)),
            },
        ],
    )
    .unwrap();
    assert_eq!(svc.lv_reports()[0].mapped_extents, 2);

    // Out of range, repeated, and unreserved placements are refused.
    assert!(matches!(
        svc.commit(
            grant.token,
            vec![MapChange {
                le: 6,
                entry: Some(entry(2))
            }]
        ),
        Err(MetaError::InvalidArgument(_))
    ));
    assert!(
        matches!(
            svc.commit(
                grant.token,
                vec![MapChange {
                    le: 1,
                    entry: Some(entry(0))
                }]
            ),
            Err(MetaError::InvalidArgument(_))
        ),
        "a PE mapped elsewhere cannot be claimed again"
    );
    assert!(matches!(
        svc.commit(
            grant.token,
            vec![
                MapChange {
                    le: 1,
                    entry: Some(entry(2))
                },
                MapChange { le: 1, entry: None }
            ]
        ),
        Err(MetaError::InvalidArgument(_))
    ));

    // Unmapping returns the PE to the pool at once.
    svc.commit(grant.token, vec![MapChange { le: 5, entry: None }])
        .unwrap();
    assert_eq!(svc.lv_reports()[0].mapped_extents, 1);
    assert_eq!(vg_free(&svc), 6);

    // Once the lease lapses, a new holder fences the old one and gets the
    // old holder's reservation back.
    std::thread::sleep(Duration::from_millis(400));
    assert!(matches!(svc.renew(grant.token), Err(MetaError::Fenced(_))));
    let second = svc.acquire("vg", "lv", "server-b").unwrap();
    assert!(second.token.epoch > grant.token.epoch);
    assert_eq!(second.map.len(), 1);
    assert_eq!(second.map[0].0, 0);
    assert_eq!(vg_free(&svc), 7, "the stale reservation was reclaimed");
    assert!(matches!(
        svc.commit(grant.token, vec![MapChange { le: 2, entry: None }]),
        Err(MetaError::Fenced(_))
    ));
    svc.release(second.token, vec![], true).unwrap();
    svc.remove_lv("vg", "lv").unwrap();
    assert_eq!(vg_free(&svc), 8);
}

#[test]
fn a_release_that_is_not_clean_leaves_the_next_grant_unclean() {
    let fx = Fixture::new();
    let svc = pool(&fx, 2, 4);
    svc.create_lv("vg", "lv", 2 * EXTENT, true, Layout::Raid1 { copies: 2 })
        .unwrap();
    let first = svc.acquire("vg", "lv", "server-a").unwrap();
    assert!(!first.unclean, "a new LV starts clean");
    // The holder stops without releasing: the next grant is unclean.
    drop(svc);
    let svc = fx.open();
    let second = svc.acquire("vg", "lv", "server-a").unwrap();
    assert!(second.unclean);
    // Released before every extent was resynced: still unclean, across a
    // reopen of the store too.
    svc.release(second.token, vec![], false).unwrap();
    drop(svc);
    let svc = fx.open();
    let third = svc.acquire("vg", "lv", "server-a").unwrap();
    assert!(third.unclean, "the resync still owed is not forgotten");
    svc.release(third.token, vec![], true).unwrap();
    let fourth = svc.acquire("vg", "lv", "server-a").unwrap();
    assert!(!fourth.unclean, "a clean release ends it");
}

#[test]
fn thick_extents_cannot_be_unmapped() {
    let fx = Fixture::new();
    let svc = pool(&fx, 1, 4);
    svc.create_lv("vg", "lv", EXTENT, false, Layout::Linear)
        .unwrap();
    let grant = svc.acquire("vg", "lv", "t").unwrap();
    assert_eq!(grant.map.len(), 1);
    assert!(matches!(
        svc.commit(grant.token, vec![MapChange { le: 0, entry: None }]),
        Err(MetaError::InvalidArgument(_))
    ));
    // Updating the written bitmap in place is fine.
    let mut entry = grant.map[0].1.clone();
    entry.written = u64::MAX;
    svc.commit(
        grant.token,
        vec![MapChange {
            le: 0,
            entry: Some(entry),
        }],
    )
    .unwrap();
}

#[test]
fn reservations_survive_reopen_until_reclaimed() {
    let fx = Fixture::new();
    {
        let svc = pool(&fx, 1, 8);
        svc.create_lv("vg", "lv", 8 * EXTENT, true, Layout::Linear)
            .unwrap();
        let grant = svc.acquire("vg", "lv", "t").unwrap();
        let reserved = reserve_n(&svc, grant.token, 4);
        svc.commit(
            grant.token,
            vec![MapChange {
                le: 3,
                entry: Some(ExtentEntry {
                    placement: reserved[0].clone(),
                    written: 7,
                }),
            }],
        )
        .unwrap();
        // No release: the process "dies" here.
    }
    let svc = fx.open();
    assert_eq!(vg_free(&svc), 4, "1 mapped + 3 still reserved");
    assert_eq!(svc.reclaim_all_reservations().unwrap(), 3);
    assert_eq!(vg_free(&svc), 7);
    let grant = svc.acquire("vg", "lv", "t").unwrap();
    assert_eq!(grant.map.len(), 1);
    assert_eq!(grant.map[0].1.written, 7);
}

#[test]
fn reservations_shrink_as_the_pool_fills() {
    let fx = Fixture::new();
    let svc = pool(&fx, 2, 40);
    svc.create_lv("vg", "lv", 100 * EXTENT, true, Layout::Linear)
        .unwrap();
    let grant = svc.acquire("vg", "lv", "t").unwrap();
    assert_eq!(
        svc.reserve(grant.token, 8).unwrap().len(),
        5,
        "80 free: at most 80/16"
    );
    let mut taken = 5;
    while taken < 80 {
        let got = svc.reserve(grant.token, 8).unwrap().len();
        assert!(got >= 1, "a request is never refused while space is left");
        taken += got;
    }
    assert_eq!(taken, 80);
    assert!(svc.reserve(grant.token, 1).unwrap().is_empty());
    assert_eq!(svc.vg_reports()[0].data_percent(), 100.0);
}

#[test]
fn nothing_new_is_placed_on_a_pv_being_emptied() {
    let fx = Fixture::new();
    let svc = pool(&fx, 3, 10);
    let leaving = svc.pv_records()[0].id;
    svc.set_evacuating(leaving, true).unwrap();
    let report = |svc: &Service| {
        svc.pv_reports()
            .into_iter()
            .find(|pv| pv.record.id == leaving)
            .unwrap()
    };
    assert!(!report(&svc).allocatable);
    assert_eq!(vg_free(&svc), 20, "its free extents do not count");
    svc.create_lv("vg", "lv", 100 * MIB, true, Layout::Raid1 { copies: 2 })
        .unwrap();
    let grant = svc.acquire("vg", "lv", "test").unwrap();
    let placed = reserve_n(&svc, grant.token, 5);
    assert!(placed.iter().flatten().all(|pe| pe.pv != leaving));
    let spare = svc.reserve_pe(grant.token, &[]).unwrap().unwrap();
    assert_ne!(spare.pv, leaving);
    svc.set_evacuating(leaving, false).unwrap();
    assert!(report(&svc).allocatable);
    assert!(matches!(
        svc.set_evacuating(9999, true),
        Err(MetaError::NotFound(_))
    ));
}
