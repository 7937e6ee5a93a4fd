//! Hand-built transmission bytes: bad magic, unknown commands, oversized
//! payloads, clients that vanish, many requests in flight answered out of
//! order, and shutdown with requests in flight.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::harness::*;
use crate::raw_client::*;

/// An export whose reads at offset 0 wait for the returned gate.
fn gated(name: &'static str) -> (ExportSpec, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let spec = ExportSpec::new(name, 8 * MIB).knobs(Knobs {
        gated_read: Some((0, gate.clone())),
        ..Knobs::default()
    });
    (spec, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_bad_magic_closes_the_connection() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", true).await;
    let mut bogus = 0x1256_0953u32.to_be_bytes().to_vec();
    bogus.extend_from_slice(&[0u8; 24]);
    client.send(&bogus).await;
    assert!(client.closed_by_server().await);
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_command_gets_einval_and_the_connection_continues() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    for structured in [false, true] {
        let mut client = RawClient::connect(fixture.addr).await;
        client.go("lv", structured).await;
        client.request(0, 42, 1, 0, 4096, &[]).await;
        let reply = client.full_reply().await;
        assert_eq!(
            (reply[0].cookie(), reply[0].error()),
            (1, EINVAL),
            "{reply:?}"
        );
        if structured {
            let Reply::Chunk { kind, payload, .. } = &reply[0] else {
                panic!("structured error expected: {reply:?}");
            };
            assert_eq!(*kind, CHUNK_ERROR);
            let message_len = be16(&payload[4..6]) as usize;
            assert!(message_len > 0, "errors carry a message");
        }
        client
            .request(0, CMD_WRITE, 2, 4096, 4096, &[0x31; 4096])
            .await;
        let reply = client.full_reply().await;
        assert_eq!((reply[0].cookie(), reply[0].error()), (2, 0));
        client.request(0, CMD_DISC, 3, 0, 0, &[]).await;
        assert!(client.closed_by_server().await);
    }
    assert_eq!(file_bytes(fixture.file("lv"), 4096, 4096), vec![0x31; 4096]);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_reads_report_errors_as_chunks_and_zero_lengths_are_answered() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", true).await;
    client.request(0, CMD_READ, 1, 4 * MIB, 4096, &[]).await;
    let reply = client.full_reply().await;
    let [Reply::Chunk {
        flags,
        kind,
        payload,
        ..
    }] = reply.as_slice()
    else {
        panic!("one error chunk expected: {reply:?}");
    };
    assert_eq!(
        (*flags, *kind, be32(&payload[0..4])),
        (FLAG_DONE, CHUNK_ERROR, EINVAL)
    );
    client.request(0, CMD_READ, 2, 0, 0, &[]).await;
    let reply = client.full_reply().await;
    let [Reply::Chunk { kind, .. }] = reply.as_slice() else {
        panic!("one chunk expected: {reply:?}");
    };
    assert_eq!(*kind, CHUNK_NONE);
    client.request(0, CMD_WRITE, 3, 0, 0, &[]).await;
    assert_eq!(client.full_reply().await[0].error(), 0);
    // A read over data then a hole: one data chunk, one hole chunk.
    client
        .request(0, CMD_WRITE, 4, 0, 65536, &[0x5e; 65536])
        .await;
    assert_eq!(client.full_reply().await[0].error(), 0);
    client.request(0, CMD_READ, 5, 0, 1 << 20, &[]).await;
    let reply = client.full_reply().await;
    let kinds: Vec<(u16, u64)> = reply
        .iter()
        .map(|r| match r {
            Reply::Chunk { kind, payload, .. } => (*kind, be64(&payload[0..8])),
            Reply::Simple { .. } => panic!("structured read answered simply"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![(CHUNK_OFFSET_DATA, 0), (CHUNK_OFFSET_HOLE, 65536)]
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_write_is_skipped_and_an_absurd_one_disconnects() {
    let fixture = Fixture::start(vec![ExportSpec::new("small", 8 * MIB).knobs(Knobs {
        io_bytes_max: Some(1 << 20),
        ..Knobs::default()
    })])
    .await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("small", false).await;
    // Over the 1 MiB maximum payload, well under the abuse limit.
    let payload = vec![0x99u8; 2 << 20];
    client.request(0, CMD_WRITE, 1, 0, 2 << 20, &payload).await;
    let reply = client.reply().await;
    assert_eq!((reply.cookie(), reply.error()), (1, EINVAL));
    client.request(0, CMD_READ, 2, 0, 4096, &[]).await;
    let Reply::Simple {
        error: 0,
        cookie: 2,
        data,
    } = client.reply().await
    else {
        panic!("read after a skipped payload must work");
    };
    assert_eq!(data, vec![0u8; 4096], "the skipped payload was not written");
    // Announcing 1 GiB is abuse: the server hangs up without reading it.
    client.request(0, CMD_WRITE, 3, 0, 1 << 30, &[]).await;
    assert!(client.closed_by_server().await);
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_write_payload_leaves_the_server_healthy() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    let mut vanishing = RawClient::connect(fixture.addr).await;
    vanishing.go("lv", true).await;
    let mut partial = REQUEST_MAGIC.to_be_bytes().to_vec();
    partial.extend_from_slice(&0u16.to_be_bytes());
    partial.extend_from_slice(&CMD_WRITE.to_be_bytes());
    partial.extend_from_slice(&1u64.to_be_bytes());
    partial.extend_from_slice(&0u64.to_be_bytes());
    partial.extend_from_slice(&65536u32.to_be_bytes());
    partial.extend_from_slice(&[0xaa; 1000]);
    vanishing.send(&partial).await;
    drop(vanishing);

    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", false).await;
    client
        .request(0, CMD_WRITE, 1, 8192, 4096, &[0x12; 4096])
        .await;
    assert_eq!(client.reply().await.error(), 0);
    client.request(0, CMD_READ, 2, 0, 4096, &[]).await;
    let Reply::Simple { error: 0, data, .. } = client.reply().await else {
        panic!("read failed");
    };
    assert_eq!(data, vec![0u8; 4096], "the half-sent write was not applied");
    client.request(0, CMD_DISC, 3, 0, 0, &[]).await;
    assert!(client.closed_by_server().await);
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_with_a_request_in_flight_leaves_the_server_healthy() {
    let (spec, gate) = gated("lv");
    let fixture = Fixture::start(vec![spec]).await;
    let mut vanishing = RawClient::connect(fixture.addr).await;
    vanishing.go("lv", true).await;
    vanishing.request(0, CMD_READ, 1, 0, 4096, &[]).await;
    // Make sure the request reached the device before the client leaves.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(vanishing);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fixture.exports.live_guards(), 1, "held while the read runs");
    gate.add_permits(1);
    fixture.wait_guards_released().await;

    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", true).await;
    gate.add_permits(1);
    client.request(0, CMD_READ, 7, 0, 4096, &[]).await;
    let reply = client.full_reply().await;
    assert_eq!((reply[0].cookie(), reply[0].error()), (7, 0));
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_are_all_answered_out_of_order() {
    let (spec, gate) = gated("lv");
    let fixture = Fixture::start(vec![spec]).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", true).await;
    // The first request blocks in the device until the gate opens. The
    // rest are small, so this client may send them all before reading a
    // reply without filling the socket buffers.
    client.request(0, CMD_READ, 1000, 0, 4096, &[]).await;
    let mut expected = HashSet::new();
    for i in 1..100u64 {
        let offset = i * 65536;
        if i % 2 == 0 {
            client
                .request(0, CMD_WRITE, i, offset, 4096, &[i as u8; 4096])
                .await;
        } else {
            client.request(0, CMD_READ, i, offset, 4096, &[]).await;
        }
        expected.insert(i);
    }
    let mut answered = HashSet::new();
    while answered.len() < expected.len() {
        for message in client.full_reply().await {
            assert_eq!(message.error(), 0, "{message:?}");
            assert_ne!(message.cookie(), 1000, "the gated read cannot be done yet");
            answered.insert(message.cookie());
        }
    }
    assert_eq!(answered, expected);
    // Only now, after 99 later requests, does the first one complete.
    gate.add_permits(1);
    let last = client.full_reply().await;
    assert_eq!((last[0].cookie(), last[0].error()), (1000, 0));
    for i in (2..100u64).step_by(2) {
        let bytes = file_bytes(fixture.file("lv"), i * 65536, 4096);
        assert!(bytes.iter().all(|&b| b == i as u8), "write {i}");
    }
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_buffer_budget_still_serves_requests_larger_than_itself() {
    // 64 KiB of buffer for the whole connection, 1 MiB requests: each one
    // runs alone, none waits forever.
    let config = gateways::nbd::NbdConfig {
        max_in_flight: 4,
        max_buffer_bytes: 64 << 10,
        ..Default::default()
    };
    let fixture = Fixture::start_with(vec![ExportSpec::new("lv", 16 * MIB)], config).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", false).await;
    for i in 0..8u64 {
        let payload = vec![i as u8 + 1; MIB as usize];
        client
            .request(0, CMD_WRITE, i, i * MIB, MIB as u32, &payload)
            .await;
    }
    for i in 8..16u64 {
        client
            .request(0, CMD_READ, i, (i - 8) * MIB, MIB as u32, &[])
            .await;
    }
    let mut answered = HashSet::new();
    for _ in 0..16 {
        let reply = client.reply().await;
        assert_eq!(reply.error(), 0, "{reply:?}");
        if let Reply::Simple { cookie, data, .. } = &reply {
            if *cookie >= 8 {
                // Each request needs the whole budget, so they ran one at a
                // time in order: every read sees its block's write.
                let expected = (*cookie - 8) as u8 + 1;
                assert!(data.iter().all(|&b| b == expected), "read {cookie}");
            }
        }
        answered.insert(reply.cookie());
    }
    assert_eq!(answered, (0..16).collect::<HashSet<u64>>());
    for i in 0..8u64 {
        let bytes = file_bytes(fixture.file("lv"), i * MIB, MIB as usize);
        assert!(bytes.iter().all(|&b| b == i as u8 + 1), "write {i}");
    }
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let (spec, gate) = gated("lv");
    let mut fixture = Fixture::start(vec![spec]).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", true).await;
    client.request(0, CMD_READ, 1, 0, 4096, &[]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    fixture.begin_shutdown();
    // The listener closes first; after that the connections know.
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while tokio::net::TcpStream::connect(fixture.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.request(0, CMD_READ, 2, 4096, 4096, &[]).await;
    let refused = client.full_reply().await;
    assert_eq!((refused[0].cookie(), refused[0].error()), (2, ESHUTDOWN));
    gate.add_permits(1);
    let finished = client.full_reply().await;
    assert_eq!((finished[0].cookie(), finished[0].error()), (1, 0));
    assert!(client.closed_by_server().await);
    fixture.wait_stopped().await;
    assert_eq!(fixture.exports.live_guards(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_end_get_enospc_over_simple_replies() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    let mut client = RawClient::connect(fixture.addr).await;
    client.go("lv", false).await;
    client
        .request(0, CMD_WRITE, 1, 4 * MIB, 4096, &[1; 4096])
        .await;
    assert_eq!(client.reply().await.error(), ENOSPC);
    client
        .request(0, CMD_READ, 2, 4 * MIB - 4096, 8192, &[])
        .await;
    assert_eq!(client.reply().await.error(), EINVAL);
    client.request(0, CMD_READ, 3, 0, 0, &[]).await;
    let Reply::Simple { error: 0, data, .. } = client.reply().await else {
        panic!("zero-length read failed");
    };
    assert!(data.is_empty());
    fixture.stop().await;
}
