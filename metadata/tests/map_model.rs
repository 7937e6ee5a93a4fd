//! Property test: the durable extent map and the allocator, driven by random
//! reserve / map / remap / unmap / reopen sequences, always agree with a
//! plain model of which logical extent holds which PE.

use std::collections::BTreeMap;
use std::path::PathBuf;

use metadata::{ExtentEntry, Layout, MapChange, PeAddr, Service};
use proptest::prelude::*;
use uuid::Uuid;

const EXTENT: u64 = 4 << 20;
const LES: u64 = 12;

#[derive(Debug, Clone)]
enum Op {
    Map { le: u64 },
    Unmap { le: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..LES).prop_map(|le| Op::Map { le }),
        3 => (0..LES).prop_map(|le| Op::Unmap { le }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn durable_map_matches_model(pes in 2u64..10, ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let open = || Service::open_rocksdb(&dir.path().join("meta")).unwrap();
        let mut svc = open();
        let paths: Vec<PathBuf> = (0..2).map(|n| dir.path().join(format!("pv{n}"))).collect();
        for path in &paths {
            svc.create_pv(path, Uuid::new_v4(), metadata::model::pv_bytes_for(pes, EXTENT)).unwrap();
        }
        svc.create_vg("vg", &paths, EXTENT).unwrap();
        svc.create_lv("vg", "lv", LES * EXTENT, true, Layout::Linear).unwrap();
        let mut grant = svc.acquire("vg", "lv", "t").unwrap();
        let mut model: BTreeMap<u64, PeAddr> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Map { le } => {
                    let reserved = svc.reserve(grant.token, 1).unwrap();
                    if model.len() as u64 + 1 > 2 * pes && !model.contains_key(&le) {
                        prop_assert!(reserved.is_empty(), "pool is full");
                    }
                    let Some(placement) = reserved.into_iter().next() else { continue };
                    svc.commit(grant.token, vec![MapChange { le, entry: Some(ExtentEntry { placement: placement.clone(), written: le }) }]).unwrap();
                    model.insert(le, placement[0]);
                }
                Op::Unmap { le } => {
                    svc.commit(grant.token, vec![MapChange { le, entry: None }]).unwrap();
                    model.remove(&le);
                }
                Op::Reopen => {
                    drop(svc);
                    svc = open();
                    svc.reclaim_all_reservations().unwrap();
                    grant = svc.acquire("vg", "lv", "t").unwrap();
                }
            }
            let report = &svc.vg_reports()[0];
            prop_assert_eq!(report.pe_free, 2 * pes - model.len() as u64);
            prop_assert_eq!(svc.lv_reports()[0].mapped_extents, model.len() as u64);
        }
        drop(svc);
        let svc = open();
        svc.reclaim_all_reservations().unwrap();
        let grant = svc.acquire("vg", "lv", "t").unwrap();
        let durable: BTreeMap<u64, PeAddr> = grant.map.iter().map(|(le, e)| (*le, e.placement[0])).collect();
        prop_assert_eq!(&durable, &model);
        for (le, entry) in &grant.map {
            prop_assert_eq!(entry.written, *le);
        }
    }
}
