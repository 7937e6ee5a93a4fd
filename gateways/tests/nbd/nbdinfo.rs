//! nbdinfo: what the handshake advertises, the export list, and the
//! allocation map served through `base:allocation`.

use serde_json::Value;

use crate::harness::*;

fn single_export(json: &str) -> Value {
    let parsed: Value = serde_json::from_str(json).expect("nbdinfo prints JSON");
    assert_eq!(parsed["protocol"], "newstyle-fixed");
    assert_eq!(parsed["structured"], true);
    let exports = parsed["exports"].as_array().expect("exports array");
    assert_eq!(exports.len(), 1);
    exports[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_size_block_sizes_and_every_capability() {
    let fixture = Fixture::start(vec![
        ExportSpec::new("vg0/lv0", 64 * MIB).description("thin volume lv0")
    ])
    .await;
    let json = run_ok("nbdinfo", &["--json", &fixture.uri("vg0/lv0")]).await;
    let export = single_export(&json);
    assert_eq!(export["export-name"], "vg0/lv0");
    assert_eq!(export["description"], "thin volume lv0");
    assert_eq!(export["export-size"], 64 * MIB);
    assert_eq!(export["block_size_minimum"], 4096);
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(export["block_size_maximum"], 32 * MIB);
    assert_eq!(export["is_read_only"], false);
    for capability in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
        "can_cache",
        "can_df",
    ] {
        assert_eq!(export[capability], true, "{capability} in {json}");
    }
    let contexts = export["contexts"].as_array().expect("contexts");
    assert!(contexts.iter().any(|c| c == "base:allocation"), "{json}");
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_shows_a_read_only_export_without_write_operations() {
    let fixture = Fixture::start(vec![ExportSpec::new("ro", 8 * MIB).read_only()]).await;
    let json = run_ok("nbdinfo", &["--json", &fixture.uri("ro")]).await;
    let export = single_export(&json);
    assert_eq!(export["is_read_only"], true);
    for capability in ["can_trim", "can_zero", "can_fast_zero", "can_fua"] {
        assert_eq!(export[capability], false, "{capability} in {json}");
    }
    assert_eq!(export["can_multi_conn"], true);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_list_shows_every_export_with_its_description() {
    let fixture = Fixture::start(vec![
        ExportSpec::new("vg0/lv0", 8 * MIB).description("first"),
        ExportSpec::new("vg0/lv1", 16 * MIB).description("second"),
        ExportSpec::new("vg1/data", 4 * MIB),
    ])
    .await;
    let uri = format!("nbd://127.0.0.1:{}", fixture.port());
    let json = run_ok("nbdinfo", &["--list", "--json", &uri]).await;
    let parsed: Value = serde_json::from_str(&json).expect("nbdinfo prints JSON");
    let exports = parsed["exports"].as_array().expect("exports array");
    let mut seen: Vec<(String, String, u64)> = exports
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap_or_default().to_owned(),
                e["description"].as_str().unwrap_or_default().to_owned(),
                e["export-size"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("vg0/lv0".into(), "first".into(), 8 * MIB),
            ("vg0/lv1".into(), "second".into(), 16 * MIB),
            ("vg1/data".into(), String::new(), 4 * MIB),
        ],
        "{json}"
    );
    // Listing opened each export for details, and let every one go again.
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_map_shows_holes_and_data() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 8 * MIB)]).await;
    write_file_bytes(fixture.file("lv"), MIB, &vec![0x5a; MIB as usize]);
    let json = run_ok("nbdinfo", &["--map", "--json", &fixture.uri("lv")]).await;
    let map: Value = serde_json::from_str(&json).expect("nbdinfo prints JSON");
    let extents: Vec<(u64, u64, u64)> = map
        .as_array()
        .expect("extent array")
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap_or(u64::MAX),
                e["length"].as_u64().unwrap_or(u64::MAX),
                e["type"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(
        extents,
        vec![(0, MIB, 3), (MIB, MIB, 0), (2 * MIB, 6 * MIB, 3)],
        "{json}"
    );
    fixture.stop().await;
}
