//! Shared pieces of the NBD integration tests: an in-process server over
//! sparse temp files, a small `Exports` catalogue, a device wrapper with
//! test knobs, and a bounded way to run real client programs.
//!
//! Everything is cleaned up by ownership: the temp directory when the
//! [`Fixture`] drops, child processes by `kill_on_drop` (also when a
//! timeout fires), the server when its shutdown sender drops.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;
use blockvirt::leaf::{FileDevice, FileOptions};
use blockvirt::{
    BlockDevice, BlockError, BlockResult, BufResult, ByteRange, Caps, Checked, DeviceInfo,
    ErrorKind, IoBuf, IoBufMut, StatusExtent, WriteFlags, ZeroFlags,
};
use gateways::nbd::{Export, ExportError, ExportListing, Exports, NbdConfig, NbdServer, NbdStats};
use gateways::observe::{IoObserver, IoOp};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

pub const MIB: u64 = 1 << 20;
/// Upper bound for any one client program.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one protocol exchange in the raw-socket tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// Knobs for [`TestDevice`].
#[derive(Default)]
pub struct Knobs {
    /// Capabilities hidden from the server.
    pub caps_removed: Option<Caps>,
    /// Override of `io_bytes_max`.
    pub io_bytes_max: Option<u32>,
    /// Reads at this offset wait for a permit of `gate` first.
    pub gated_read: Option<(u64, Arc<Semaphore>)>,
    /// Reads at this offset panic.
    pub panic_read_at: Option<u64>,
    /// `write_zeroes` with `ZeroFlags::FAST` fails with `Unsupported`.
    pub refuse_fast_zero: bool,
}

/// A wrapper over a real device with test behaviour switched on by knobs.
pub struct TestDevice {
    inner: Arc<dyn BlockDevice>,
    knobs: Knobs,
}

impl std::fmt::Debug for TestDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestDevice({:?})", self.inner)
    }
}

impl TestDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, knobs: Knobs) -> Self {
        TestDevice { inner, knobs }
    }
}

#[async_trait]
impl BlockDevice for TestDevice {
    fn info(&self) -> DeviceInfo {
        let mut info = self.inner.info();
        if let Some(removed) = self.knobs.caps_removed {
            info.caps -= removed;
        }
        if let Some(max) = self.knobs.io_bytes_max {
            info.io_bytes_max = max;
        }
        info
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        if let Some((gated, gate)) = &self.knobs.gated_read {
            if *gated == offset_bytes {
                let _permit = gate.acquire().await;
            }
        }
        if self.knobs.panic_read_at == Some(offset_bytes) {
            panic!("test device: deliberate panic reading at {offset_bytes}");
        }
        self.inner.read_at(offset_bytes, buf).await
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        self.inner.write_at(offset_bytes, buf, flags).await
    }

    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        self.inner.discard(range).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        if self.knobs.refuse_fast_zero && flags.contains(ZeroFlags::FAST) {
            return Err(BlockError::new(
                ErrorKind::Unsupported,
                "test device: no fast zero",
            ));
        }
        self.inner.write_zeroes(range, flags).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        self.inner.block_status(range).await
    }
}

struct Entry {
    device: Arc<dyn BlockDevice>,
    description: String,
}

/// One request as an observer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub export: String,
    pub op: IoOp,
    pub len_bytes: u64,
    pub ok: bool,
}

/// Records what the server reports for each export, in order.
#[derive(Default)]
pub struct Recorder {
    seen: std::sync::Mutex<Vec<Observed>>,
}

impl Recorder {
    pub fn take(&self) -> Vec<Observed> {
        std::mem::take(&mut *self.seen.lock().expect("recorder lock"))
    }
}

/// The observer handed out with one export.
struct ExportObserver {
    export: String,
    recorder: Arc<Recorder>,
}

impl IoObserver for ExportObserver {
    fn completed(&self, op: IoOp, len_bytes: u64, _elapsed: Duration, ok: bool) {
        self.recorder
            .seen
            .lock()
            .expect("recorder lock")
            .push(Observed {
                export: self.export.clone(),
                op,
                len_bytes,
                ok,
            });
    }
}

/// A fixed catalogue that counts live guards, so tests can see when the
/// server releases an export, and records the requests it answers.
pub struct TestExports {
    entries: HashMap<String, Entry>,
    order: Vec<String>,
    live_guards: Arc<AtomicUsize>,
    pub observed: Arc<Recorder>,
}

struct Guard(Arc<AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestExports {
    pub fn live_guards(&self) -> usize {
        self.live_guards.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Exports for TestExports {
    async fn list(&self) -> Vec<ExportListing> {
        self.order
            .iter()
            .map(|name| ExportListing {
                name: name.clone(),
                description: self.entries[name].description.clone(),
            })
            .collect()
    }

    async fn open(&self, name: &str) -> Result<Export, ExportError> {
        if name == "busy" {
            return Err(ExportError::Busy("held by another host".into()));
        }
        let entry = self.entries.get(name).ok_or(ExportError::Unknown)?;
        self.live_guards.fetch_add(1, Ordering::SeqCst);
        Ok(Export {
            device: entry.device.clone(),
            description: entry.description.clone(),
            observer: Some(Arc::new(ExportObserver {
                export: name.to_owned(),
                recorder: self.observed.clone(),
            })),
            guard: Box::new(Guard(self.live_guards.clone())),
        })
    }
}

/// A sparse file of `size_bytes` in `dir`.
pub fn sparse_file(dir: &Path, name: &str, size_bytes: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create backing file");
    file.set_len(size_bytes).expect("size backing file");
    path
}

/// A file leaf behind `Checked`, so a request outside the contract (out of
/// range, unaligned, too large, a write to a read-only device) would fail
/// the test instead of reaching the file.
pub fn file_device(path: &Path, read_only: bool) -> Arc<dyn BlockDevice> {
    let options = FileOptions {
        read_only,
        ..FileOptions::default()
    };
    let leaf = FileDevice::open(path, options).expect("open file device");
    Arc::new(Checked::new(leaf))
}

/// What one export of a fixture is made of.
pub struct ExportSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub size_bytes: u64,
    pub read_only: bool,
    pub knobs: Knobs,
}

impl ExportSpec {
    pub fn new(name: &'static str, size_bytes: u64) -> Self {
        ExportSpec {
            name,
            description: "",
            size_bytes,
            read_only: false,
            knobs: Knobs::default(),
        }
    }

    pub fn description(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn knobs(mut self, knobs: Knobs) -> Self {
        self.knobs = knobs;
        self
    }
}

/// A running server over fresh sparse files.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    pub exports: Arc<TestExports>,
    pub files: HashMap<&'static str, PathBuf>,
    pub stats: Arc<NbdStats>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Fixture {
    pub async fn start(specs: Vec<ExportSpec>) -> Fixture {
        Self::start_with(specs, NbdConfig::default()).await
    }

    pub async fn start_with(specs: Vec<ExportSpec>, config: NbdConfig) -> Fixture {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut entries = HashMap::new();
        let mut order = Vec::new();
        let mut files = HashMap::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let path = sparse_file(dir.path(), &format!("pv{index}.img"), spec.size_bytes);
            let device: Arc<dyn BlockDevice> = Arc::new(TestDevice::new(
                file_device(&path, spec.read_only),
                spec.knobs,
            ));
            files.insert(spec.name, path);
            order.push(spec.name.to_owned());
            entries.insert(
                spec.name.to_owned(),
                Entry {
                    device,
                    description: spec.description.to_owned(),
                },
            );
        }
        let exports = Arc::new(TestExports {
            entries,
            order,
            live_guards: Arc::new(AtomicUsize::new(0)),
            observed: Arc::default(),
        });
        let config = NbdConfig {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            ..config
        };
        let server = NbdServer::bind(config, exports.clone())
            .await
            .expect("bind NBD server");
        let addr = server.local_addr();
        let stats = server.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Fixture {
            dir,
            addr,
            exports,
            files,
            stats,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn uri(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{name}", self.port())
    }

    pub fn file(&self, name: &str) -> &Path {
        &self.files[name]
    }

    /// Starts server shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the server down and waits (bounded) for `run` to return.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        self.wait_stopped().await;
    }

    pub async fn wait_stopped(&mut self) {
        if let Some(server) = self.server.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("server stops within 30 s")
                .expect("server task does not panic");
            result.expect("server run succeeds");
        }
    }

    /// Waits (bounded) until the server released every export.
    pub async fn wait_guards_released(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.exports.live_guards() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} export guards still held",
                self.exports.live_guards()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Runs a client program with a time limit; the child is killed if the
/// limit passes or the test panics.
pub async fn run_tool(program: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run {program} ({e}); the NBD tests need qemu-utils, libnbd-bin, \
             and python3-libnbd installed"
        ),
    };
    match tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for client program"),
        Err(_) => panic!("{program} {args:?} did not finish within {TOOL_TIMEOUT:?}"),
    }
}

/// Runs a client program that must succeed; returns its stdout.
pub async fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run_tool(program, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

/// Runs a Python script with libnbd's bindings; `args` become `sys.argv[1..]`.
pub async fn run_python(script: &str, args: &[&str]) -> String {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    run_ok("/usr/bin/python3", &all).await
}

/// Bytes `range` of a file, read directly (the server's view is bypassed).
pub fn file_bytes(path: &Path, offset_bytes: u64, len_bytes: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).expect("open backing file");
    let mut out = vec![0u8; len_bytes];
    file.read_exact_at(&mut out, offset_bytes)
        .expect("read backing file");
    out
}

/// Writes `bytes` into a file at `offset_bytes` (to prepare content).
pub fn write_file_bytes(path: &Path, offset_bytes: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open backing file");
    file.write_all_at(bytes, offset_bytes)
        .expect("write backing file");
    file.sync_all().expect("sync backing file");
}
