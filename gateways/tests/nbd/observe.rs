//! What the server reports: every answered request to its export's
//! observer (refusals as failures, unknown commands not at all), and
//! connections and requests in flight in `NbdStats`.

use std::time::Duration;

use gateways::observe::IoOp;

use crate::harness::*;
use crate::raw_client::*;

fn seen(op: IoOp, len_bytes: u64, ok: bool) -> Observed {
    Observed {
        export: "lv".into(),
        op,
        len_bytes,
        ok,
    }
}

/// Polls `done` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_request_is_reported_once_with_its_outcome() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", true).await;
    let requests: [(u16, u64, u32, &[u8]); 9] = [
        (CMD_WRITE, 0, 8192, &[7u8; 8192]),
        (CMD_READ, 0, 4096, &[]),
        (CMD_FLUSH, 0, 0, &[]),
        (CMD_TRIM, 0, 4096, &[]),
        (CMD_WRITE_ZEROES, 4096, 4096, &[]),
        (CMD_CACHE, 0, 4096, &[]),
        (CMD_BLOCK_STATUS, 0, 65536, &[]),
        // Past the end: refused before the device, reported as failed.
        (CMD_READ, 4 * MIB, 4096, &[]),
        // Unknown: answered EINVAL but not reported.
        (42, 0, 4096, &[]),
    ];
    for (cookie, (command, offset, len, payload)) in requests.iter().enumerate() {
        client
            .request(0, *command, cookie as u64, *offset, *len, payload)
            .await;
        client.full_reply().await;
    }
    assert_eq!(
        fixture.exports.observed.take(),
        vec![
            seen(IoOp::Write, 8192, true),
            seen(IoOp::Read, 4096, true),
            seen(IoOp::Flush, 0, true),
            seen(IoOp::Trim, 4096, true),
            seen(IoOp::WriteZeroes, 4096, true),
            seen(IoOp::Cache, 4096, true),
            seen(IoOp::BlockStatus, 65536, true),
            seen(IoOp::Read, 4096, false),
        ]
    );
    client.request(0, CMD_DISC, 99, 0, 0, &[]).await;
    assert!(client.closed_by_server().await);
    fixture.wait_guards_released().await;
    assert!(
        fixture.exports.observed.take().is_empty(),
        "DISC is not an I/O"
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_requests_in_flight_are_counted_while_they_last() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let spec = ExportSpec::new("lv", 4 * MIB).knobs(Knobs {
        gated_read: Some((0, gate.clone())),
        ..Knobs::default()
    });
    let fixture = Fixture::start(vec![spec]).await;
    let stats = fixture.stats.clone();
    assert_eq!(stats.connections_open(), 0);

    let mut first = RawClient::connect(fixture.addr).await;
    let second = RawClient::connect(fixture.addr).await;
    first.go("lv", false).await;
    eventually("two connections open", || stats.connections_open() == 2).await;
    assert_eq!(stats.connections_accepted(), 2);

    // A read held at the device is in flight until its reply is written.
    first.request(0, CMD_READ, 1, 0, 4096, &[]).await;
    eventually("one request in flight", || stats.requests_in_flight() == 1).await;
    gate.add_permits(1);
    first.full_reply().await;
    eventually("nothing in flight", || stats.requests_in_flight() == 0).await;

    drop(second);
    eventually("one connection open", || stats.connections_open() == 1).await;
    first.request(0, CMD_DISC, 2, 0, 0, &[]).await;
    assert!(first.closed_by_server().await);
    eventually("no connection open", || stats.connections_open() == 0).await;
    assert_eq!(stats.connections_accepted(), 2);
    fixture.stop().await;
}
