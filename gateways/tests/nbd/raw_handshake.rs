//! Hand-built handshake bytes: what the server does with garbage, unknown
//! and malformed options, unknown exports, metadata context negotiation,
//! `NBD_OPT_EXPORT_NAME` with and without zero padding, INFO versus GO.

use crate::harness::*;
use crate::raw_client::*;

fn fixture_exports() -> Vec<ExportSpec> {
    vec![
        ExportSpec::new("vg0/lv0", 8 * MIB).description("first volume"),
        ExportSpec::new("vg0/lv1", 4 * MIB),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_ihaveopt_closes_the_connection() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(client.closed_by_server().await);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_flags_close_the_connection() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::greeted(fixture.addr).await;
    client.send(&0x0000_0007u32.to_be_bytes()).await;
    assert!(client.closed_by_server().await);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_option_gets_err_unsup_and_the_session_continues() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    for unknown in [0x1234u32, 4, 11] {
        let replies = client.option_exchange(unknown, b"some data").await;
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].reply_type, REP_ERR_UNSUP, "option {unknown}");
    }
    let replies = client.option_exchange(OPT_LIST, &[]).await;
    let names: Vec<(String, String)> = replies
        .iter()
        .filter(|r| r.reply_type == REP_SERVER)
        .map(|r| {
            let len = be32(&r.data[0..4]) as usize;
            (
                String::from_utf8_lossy(&r.data[4..4 + len]).into_owned(),
                String::from_utf8_lossy(&r.data[4 + len..]).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("vg0/lv0".to_owned(), "first volume".to_owned()),
            ("vg0/lv1".to_owned(), String::new())
        ]
    );
    assert_eq!(replies.last().map(|r| r.reply_type), Some(REP_ACK));
    let replies = client.option_exchange(OPT_ABORT, &[]).await;
    assert_eq!(replies[0].reply_type, REP_ACK);
    assert!(client.closed_by_server().await);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_for_an_unknown_export_is_refused_and_the_session_continues() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    for (name, expected) in [
        ("nope", REP_ERR_UNKNOWN),
        ("", REP_ERR_UNKNOWN),
        ("busy", REP_ERR_POLICY),
    ] {
        let replies = client
            .option_exchange(OPT_GO, &info_request(name, &[]))
            .await;
        assert_eq!(replies.len(), 1, "{name:?}: {replies:?}");
        assert_eq!(replies[0].reply_type, expected, "{name:?}");
        assert!(!replies[0].data.is_empty(), "error replies carry a message");
    }
    let (size, flags) = client.go("vg0/lv1", false).await;
    assert_eq!(size, 4 * MIB);
    assert_eq!(flags & 1, 1, "HAS_FLAGS");
    assert_eq!(flags & (1 << 7), 0, "no DF without structured replies");
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_options_get_err_invalid_and_the_session_continues() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    let mut lying_name = 100u32.to_be_bytes().to_vec();
    lying_name.extend_from_slice(b"short");
    let mut trailing = info_request("vg0/lv0", &[]);
    trailing.push(0);
    let mut nul_name = info_request("vg0/lv0", &[]);
    nul_name[6] = 0;
    let cases: Vec<(u32, Vec<u8>, u32)> = vec![
        (OPT_GO, lying_name.clone(), REP_ERR_INVALID),
        (OPT_INFO, lying_name, REP_ERR_INVALID),
        (OPT_GO, trailing, REP_ERR_INVALID),
        (OPT_GO, vec![0, 0], REP_ERR_INVALID),
        (OPT_GO, nul_name, REP_ERR_INVALID),
        (OPT_LIST, b"x".to_vec(), REP_ERR_INVALID),
        (OPT_STRUCTURED_REPLY, b"x".to_vec(), REP_ERR_INVALID),
        (OPT_STARTTLS, vec![], REP_ERR_POLICY),
        // Metadata contexts need structured replies first.
        (
            OPT_SET_META_CONTEXT,
            meta_request("vg0/lv0", &["base:allocation"]),
            REP_ERR_INVALID,
        ),
        (
            OPT_LIST_META_CONTEXT,
            vec![0, 0, 0, 0, 0, 0, 0, 9],
            REP_ERR_INVALID,
        ),
    ];
    for (option, data, expected) in cases {
        let replies = client.option_exchange(option, &data).await;
        assert_eq!(replies.len(), 1, "option {option} {data:?}: {replies:?}");
        assert_eq!(replies[0].reply_type, expected, "option {option} {data:?}");
    }
    let (size, _) = client.go("vg0/lv0", true).await;
    assert_eq!(size, 8 * MIB);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_option_length_closes_the_connection() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    let mut header = IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&OPT_INFO.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    client.send(&header).await;
    assert!(client.closed_by_server().await);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_reports_export_name_description_and_block_sizes() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    let replies = client
        .option_exchange(
            OPT_GO,
            &info_request("vg0/lv0", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
        )
        .await;
    let info = |kind: u16| {
        replies
            .iter()
            .find(|r| r.reply_type == REP_INFO && be16(&r.data) == kind)
            .map(|r| r.data[2..].to_vec())
            .unwrap_or_else(|| panic!("info {kind} missing: {replies:?}"))
    };
    assert_eq!(info(INFO_NAME), b"vg0/lv0");
    assert_eq!(info(INFO_DESCRIPTION), b"first volume");
    let sizes = info(INFO_BLOCK_SIZE);
    assert_eq!(
        (be32(&sizes[0..4]), be32(&sizes[4..8]), be32(&sizes[8..12])),
        (4096, 4096, 32 << 20)
    );
    let export = info(INFO_EXPORT);
    assert_eq!(be64(&export[0..8]), 8 * MIB);
    assert_eq!(replies.last().map(|r| r.reply_type), Some(REP_ACK));
    // Transmission has begun: a read works.
    client.request(0, CMD_READ, 1, 0, 4096, &[]).await;
    let reply = client.reply().await;
    assert_eq!((reply.cookie(), reply.error()), (1, 0));
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_contexts_are_listed_and_selected_per_export() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.option_exchange(OPT_STRUCTURED_REPLY, &[]).await;
    let context_names = |replies: &[OptionReply]| -> Vec<(u32, String)> {
        replies
            .iter()
            .filter(|r| r.reply_type == REP_META_CONTEXT)
            .map(|r| {
                (
                    be32(&r.data[0..4]),
                    String::from_utf8_lossy(&r.data[4..]).into_owned(),
                )
            })
            .collect()
    };
    for queries in [
        &[][..],
        &["base:"][..],
        &["base:allocation", "x-other:thing"][..],
    ] {
        let replies = client
            .option_exchange(OPT_LIST_META_CONTEXT, &meta_request("vg0/lv0", queries))
            .await;
        assert_eq!(
            context_names(&replies),
            vec![(0, "base:allocation".to_owned())],
            "{queries:?}"
        );
        assert_eq!(replies.last().map(|r| r.reply_type), Some(REP_ACK));
    }
    let replies = client
        .option_exchange(
            OPT_LIST_META_CONTEXT,
            &meta_request("vg0/lv0", &["qemu:dirty-bitmap:b"]),
        )
        .await;
    assert!(context_names(&replies).is_empty());
    let replies = client
        .option_exchange(
            OPT_LIST_META_CONTEXT,
            &meta_request("vg0/lv0", &["nocolon"]),
        )
        .await;
    assert_eq!(replies[0].reply_type, REP_ERR_INVALID);
    // `base:` selects nothing when setting.
    let replies = client
        .option_exchange(OPT_SET_META_CONTEXT, &meta_request("vg0/lv0", &["base:"]))
        .await;
    assert!(context_names(&replies).is_empty());
    // Selected for lv1, then GO lv0: the selection does not carry over.
    let replies = client
        .option_exchange(
            OPT_SET_META_CONTEXT,
            &meta_request("vg0/lv1", &["base:allocation"]),
        )
        .await;
    let selected = context_names(&replies);
    assert_eq!(selected.len(), 1);
    assert_ne!(selected[0].0, 0);
    let replies = client
        .option_exchange(OPT_GO, &info_request("vg0/lv0", &[]))
        .await;
    assert_eq!(replies.last().map(|r| r.reply_type), Some(REP_ACK));
    client.request(0, CMD_BLOCK_STATUS, 9, 0, 4096, &[]).await;
    let reply = client.full_reply().await;
    assert_eq!(reply[0].error(), EINVAL, "{reply:?}");
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_status_uses_the_selected_context_id() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.option_exchange(OPT_STRUCTURED_REPLY, &[]).await;
    let replies = client
        .option_exchange(
            OPT_SET_META_CONTEXT,
            &meta_request("vg0/lv0", &["base:allocation"]),
        )
        .await;
    let context_id = be32(&replies[0].data[0..4]);
    client
        .option_exchange(OPT_GO, &info_request("vg0/lv0", &[]))
        .await;
    client
        .request(0, CMD_BLOCK_STATUS, 5, 0, 1 << 20, &[])
        .await;
    let reply = client.full_reply().await;
    let [Reply::Chunk {
        flags,
        kind,
        cookie,
        payload,
    }] = reply.as_slice()
    else {
        panic!("one chunk expected: {reply:?}");
    };
    assert_eq!((*flags, *kind, *cookie), (FLAG_DONE, CHUNK_BLOCK_STATUS, 5));
    assert_eq!(be32(&payload[0..4]), context_id);
    assert_eq!(
        &payload[4..],
        &[0, 0x10, 0, 0, 0, 0, 0, 3],
        "one hole-and-zero MiB"
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_ends_the_handshake_with_or_without_zero_padding() {
    let fixture = Fixture::start(fixture_exports()).await;
    for (client_flags, padding) in [(1u32, 124usize), (3, 0)] {
        let mut client = RawClient::greeted(fixture.addr).await;
        client.send(&client_flags.to_be_bytes()).await;
        client.option(OPT_EXPORT_NAME, b"vg0/lv1").await;
        let reply = client.read_exact(10 + padding).await;
        assert_eq!(be64(&reply[0..8]), 4 * MIB);
        assert!(reply[10..].iter().all(|&b| b == 0));
        // The next bytes are the reply to a read, not stray padding.
        client.request(0, CMD_READ, 77, 0, 4096, &[]).await;
        let reply = client.reply().await;
        assert_eq!((reply.cookie(), reply.error()), (77, 0));
        client.request(0, CMD_DISC, 78, 0, 0, &[]).await;
        assert!(client.closed_by_server().await);
    }
    // An unknown name cannot be refused politely: the server hangs up.
    let mut client = RawClient::connect(fixture.addr).await;
    client.option(OPT_EXPORT_NAME, b"nope").await;
    assert!(client.closed_by_server().await);
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_releases_the_export_and_go_holds_it_until_disconnect() {
    let fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    let replies = client
        .option_exchange(OPT_INFO, &info_request("vg0/lv0", &[]))
        .await;
    assert_eq!(replies.last().map(|r| r.reply_type), Some(REP_ACK));
    assert_eq!(
        fixture.exports.live_guards(),
        0,
        "INFO does not keep the export"
    );
    client.go("vg0/lv0", false).await;
    assert_eq!(fixture.exports.live_guards(), 1, "GO keeps the export");
    client.request(0, CMD_DISC, 1, 0, 0, &[]).await;
    assert!(client.closed_by_server().await);
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_the_handshake_is_disconnected() {
    let config = gateways::nbd::NbdConfig {
        handshake_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let fixture = Fixture::start_with(fixture_exports(), config).await;
    let mut idle = RawClient::connect(fixture.addr).await;
    assert!(idle.closed_by_server().await);
    // Other clients are unaffected.
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("vg0/lv0", true).await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_still_in_the_handshake() {
    let mut fixture = Fixture::start(fixture_exports()).await;
    let mut client = RawClient::connect(fixture.addr).await;
    let replies = client.option_exchange(OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(replies[0].reply_type, REP_ACK);
    fixture.begin_shutdown();
    assert!(client.closed_by_server().await);
    fixture.wait_stopped().await;
    assert_eq!(fixture.exports.live_guards(), 0);
}
