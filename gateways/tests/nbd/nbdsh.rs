//! libnbd through its Python bindings (what nbdsh runs): the error rules,
//! block status with REQ_ONE, structured reads with holes and DF, cache,
//! fast zero refusals, panics in a request, and a clean disconnect.
//! Each script ends by printing `ok`, so a script that stopped early fails.

use crate::harness::*;

const PRELUDE: &str = r#"
import nbd, sys

def connect(uri):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    return h

def expect_error(name, fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        assert e.errno == name, f"{fn.__name__}{args[1:]}: expected {name}, got {e.errno}: {e.string}"
        return
    raise AssertionError(f"{fn.__name__}{args[1:]} succeeded, expected {name}")
"#;

async fn script(body: &str, args: &[&str]) {
    let source = format!("{PRELUDE}\n{body}\nprint('ok')\n");
    let out = run_python(&source, args).await;
    assert!(
        out.trim_end().ends_with("ok"),
        "script did not finish:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_misaligned_and_unknown_requests_get_the_spec_errors() {
    let fixture = Fixture::start(vec![ExportSpec::new("vg0/lv0", 8 * MIB)]).await;
    script(
        r#"
h = connect(sys.argv[1])
h.set_strict_mode(0)  # let libnbd send what it would normally refuse
size = h.get_size()
expect_error("EINVAL", h.pread, 4096, size)
expect_error("EINVAL", h.pread, 8192, size - 4096)
expect_error("ENOSPC", h.pwrite, b"x" * 4096, size)
expect_error("ENOSPC", h.zero, 4096, size)
expect_error("EINVAL", h.trim, 4096, size)
expect_error("EINVAL", h.cache, 4096, size)
expect_error("EINVAL", h.block_status, 4096, size, lambda *a: 0)
expect_error("EINVAL", h.pread, 512, 0)
expect_error("EINVAL", h.pread, 4096, 512)
expect_error("EINVAL", h.pwrite, b"x" * 512, 0)
expect_error("EINVAL", h.trim, 4096, 2048)
expect_error("EINVAL", h.pread, 4096, 0, 1 << 9)
expect_error("EINVAL", h.pwrite, b"x" * 4096, 0, nbd.CMD_FLAG_REQ_ONE)
# Zero-length requests are answered, not punished.
assert h.pread(0, 0) == b""
h.pwrite(b"", 0)
h.trim(0, 0)
h.zero(0, 0)
# The connection is still healthy after all of that.
h.pwrite(b"\x01" * 4096, 0)
assert h.pread(4096, 0) == b"\x01" * 4096
h.shutdown()
"#,
        &[&fixture.uri("vg0/lv0")],
    )
    .await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_refuses_writes_with_eperm() {
    let fixture = Fixture::start(vec![ExportSpec::new("ro", 4 * MIB).read_only()]).await;
    write_file_bytes(fixture.file("ro"), 0, &[0x3c; 4096]);
    script(
        r#"
h = connect(sys.argv[1])
assert h.is_read_only()
h.set_strict_mode(0)
expect_error("EPERM", h.pwrite, b"x" * 4096, 0)
expect_error("EPERM", h.trim, 4096, 0)
expect_error("EPERM", h.zero, 4096, 0)
assert h.pread(4096, 0) == b"\x3c" * 4096
h.shutdown()
"#,
        &[&fixture.uri("ro")],
    )
    .await;
    assert_eq!(file_bytes(fixture.file("ro"), 0, 4096), vec![0x3c; 4096]);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_status_with_and_without_req_one() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    script(
        r#"
h = connect(sys.argv[1])
assert h.can_meta_context("base:allocation")
h.pwrite(b"\x07" * 65536, 0)
got = []
def cb(context, offset, entries, err):
    got.append((context, offset, list(entries)))
    return 0
h.block_status(1 << 20, 0, cb, nbd.CMD_FLAG_REQ_ONE)
assert got == [("base:allocation", 0, [65536, 0])], got
got.clear()
h.block_status(1 << 20, 0, cb)
assert got == [("base:allocation", 0, [65536, 0, (1 << 20) - 65536, 3])], got
got.clear()
# A single extent never exceeds the request, even inside a longer hole.
h.block_status(8192, 1 << 20, cb, nbd.CMD_FLAG_REQ_ONE)
assert got == [("base:allocation", 1 << 20, [8192, 3])], got
h.shutdown()
"#,
        &[&fixture.uri("lv")],
    )
    .await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_reads_send_holes_and_honour_df() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    script(
        r#"
h = connect(sys.argv[1])
h.pwrite(b"\x09" * 65536, 0)
chunks = []
def cb(buf, offset, status, err):
    chunks.append((status, offset, len(buf)))
    return 0
data = h.pread_structured(1 << 20, 0, cb)
assert data == b"\x09" * 65536 + bytes((1 << 20) - 65536)
assert sorted(chunks) == sorted([(nbd.READ_DATA, 0, 65536), (nbd.READ_HOLE, 65536, (1 << 20) - 65536)]), chunks
chunks.clear()
data = h.pread_structured(1 << 20, 0, cb, nbd.CMD_FLAG_DF)
assert data == b"\x09" * 65536 + bytes((1 << 20) - 65536)
assert chunks == [(nbd.READ_DATA, 0, 1 << 20)], chunks
h.shutdown()
"#,
        &[&fixture.uri("lv")],
    )
    .await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_flush_and_fua_variants_are_acknowledged() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 4 * MIB)]).await;
    script(
        r#"
h = connect(sys.argv[1])
assert h.can_cache() and h.can_flush() and h.can_fua()
h.cache(1 << 20, 0)
h.pwrite(b"\x21" * 8192, 0, nbd.CMD_FLAG_FUA)
h.trim(4096, 65536, nbd.CMD_FLAG_FUA)
h.zero(8192, 131072, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
h.zero(65536, 196608, nbd.CMD_FLAG_FAST_ZERO)
h.flush()
assert h.pread(8192, 0) == b"\x21" * 8192
assert h.pread(8192, 131072) == bytes(8192)
h.shutdown()
"#,
        &[&fixture.uri("lv")],
    )
    .await;
    assert_eq!(file_bytes(fixture.file("lv"), 0, 8192), vec![0x21; 8192]);
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_zero_is_refused_with_enotsup_when_the_device_cannot_promise_it() {
    let fixture = Fixture::start(vec![
        // The device tries and refuses.
        ExportSpec::new("refuses", 4 * MIB).knobs(Knobs {
            refuse_fast_zero: true,
            ..Knobs::default()
        }),
        // The device does not claim fast zeroing at all.
        ExportSpec::new("lacks", 4 * MIB).knobs(Knobs {
            caps_removed: Some(blockvirt::Caps::FAST_ZERO),
            ..Knobs::default()
        }),
    ])
    .await;
    for name in ["refuses", "lacks"] {
        write_file_bytes(fixture.file(name), 0, &[0x44; 65536]);
        script(
            r#"
h = connect(sys.argv[1])
assert h.can_fast_zero()
expect_error("ENOTSUP", h.zero, 65536, 0, nbd.CMD_FLAG_FAST_ZERO)
# Refused fast zeroes leave the data alone.
assert h.pread(65536, 0) == b"\x44" * 65536
h.zero(65536, 0)
assert h.pread(65536, 0) == bytes(65536)
h.shutdown()
"#,
            &[&fixture.uri(name)],
        )
        .await;
    }
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_gets_eio_and_the_connection_goes_on() {
    let fixture = Fixture::start(vec![ExportSpec::new("panicky", 4 * MIB).knobs(Knobs {
        panic_read_at: Some(8192),
        ..Knobs::default()
    })])
    .await;
    script(
        r#"
h = connect(sys.argv[1])
expect_error("EIO", h.pread, 4096, 8192)
h.pwrite(b"\x66" * 4096, 0)
assert h.pread(4096, 0) == b"\x66" * 4096
expect_error("EIO", h.pread, 4096, 8192)
h.shutdown()
"#,
        &[&fixture.uri("panicky")],
    )
    .await;
    fixture.wait_guards_released().await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_after_many_async_writes_keeps_them_and_releases_the_export() {
    let fixture = Fixture::start(vec![ExportSpec::new("lv", 8 * MIB)]).await;
    script(
        r#"
h = connect(sys.argv[1])
buffers = [nbd.Buffer.from_bytearray(bytearray([i + 1]) * 65536) for i in range(32)]
for i, buf in enumerate(buffers):
    h.aio_pwrite(buf, i * 65536)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
h.shutdown()
"#,
        &[&fixture.uri("lv")],
    )
    .await;
    fixture.wait_guards_released().await;
    for i in 0..32u64 {
        let bytes = file_bytes(fixture.file("lv"), i * 65536, 65536);
        assert!(bytes.iter().all(|&b| u64::from(b) == i + 1), "block {i}");
    }
    // The server still takes new connections afterwards.
    script(
        "h = connect(sys.argv[1])\nassert h.pread(65536, 0) == b'\\x01' * 65536\nh.shutdown()",
        &[&fixture.uri("lv")],
    )
    .await;
    fixture.stop().await;
}
