//! Test harness for Blockvirt's integration tests: a real `bv serve` in a
//! temporary directory, the `bv` CLI, and real clients (qemu-img, qemu-io,
//! nbdinfo, nbdcopy, nbdsh via Debian's python3) run with time limits.
//!
//! Everything a test starts is cleaned up when its handle drops: the server
//! is killed and waited for, the temporary directory removed. Servers
//! listen on 127.0.0.1 with ports picked by the kernel.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Python that has libnbd's module (Debian's, not a pyenv one on PATH).
pub const PYTHON: &str = "/usr/bin/python3";

/// The `bv` binary built next to this test binary
/// (`cargo build --release --bins` first; `BV_BIN` overrides).
pub fn bv_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BV_BIN") {
        return PathBuf::from(path);
    }
    // Test binaries live in target/<profile>/deps, other tools (bv-bench)
    // next to bv in target/<profile>.
    let exe = std::env::current_exe().expect("own executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [
        dir.join("bv"),
        dir.parent().expect("target/<profile>").join("bv"),
    ];
    let found = candidates.iter().find(|path| path.exists()).cloned();
    found.unwrap_or_else(|| {
        panic!(
            "{} not found: run `cargo build --release --bins` first",
            candidates[1].display()
        )
    })
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_with_limit(command: &mut Command, limit: Duration) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {description}: {e}"));
    let started = Instant::now();
    loop {
        match child.try_wait().expect("waiting for a child") {
            Some(_) => return child.wait_with_output().expect("collecting output"),
            None if started.elapsed() > limit => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("collecting output");
                panic!(
                    "{description} ran longer than {limit:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: &mut Command, limit: Duration) -> String {
    let description = format!("{command:?}");
    let output = run_with_limit(command, limit);
    assert!(
        output.status.success(),
        "{description} failed ({})\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A running `bv serve` with its own data directory.
pub struct Server {
    pub dir: tempfile::TempDir,
    /// The NBD port of the running server (changes at restart).
    pub nbd_port: u16,
    child: Option<Child>,
    log: PathBuf,
    serve_args: Vec<String>,
}

impl Server {
    /// Starts a server on a fresh data directory, committing thin-map
    /// changes every 0.2 s so background commits happen within a test.
    pub fn start() -> Server {
        Server::start_with(&["--commit-interval", "0.2"])
    }

    /// Starts a server with extra `bv serve` options, in a fresh directory
    /// under `$TMPDIR`.
    pub fn start_with(serve_args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("bv-test")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("serve.log");
        let mut server = Server {
            dir,
            nbd_port: 0,
            child: None,
            log,
            serve_args: serve_args.iter().map(|a| a.to_string()).collect(),
        };
        server.launch();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A path inside the test directory (for PV files, images).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.nbd_port)
    }

    /// Starts `bv serve` on a port the kernel picks (no race with other
    /// tests for a free port) and waits for its "ready" line in the log.
    fn launch(&mut self) {
        let log_start = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(bv_binary())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&self.serve_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting bv serve");
        self.child = Some(child);
        self.wait_ready(log_start as usize);
    }

    fn wait_ready(&mut self, log_start: usize) {
        const READY: &str = "NBD exports on nbd://127.0.0.1:";
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("bv serve exited early ({status}):\n{}", self.log_text());
            }
            let log = self.log_text();
            let port = log
                .get(log_start..)
                .and_then(|fresh| fresh.split(READY).nth(1))
                .and_then(|rest| rest.split('/').next())
                .and_then(|port| port.parse().ok());
            if let Some(port) = port {
                self.nbd_port = port;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("bv serve did not come up in 30 s:\n{}", self.log_text());
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory (on a new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// SIGTERM and wait: the clean shutdown path.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("bv serve did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `bv` CLI pointed at this server.
    pub fn bv_command(&self) -> Command {
        let mut command = Command::new(bv_binary());
        command
            .arg("--data-dir")
            .arg(self.data_dir())
            .current_dir(self.dir.path());
        command
    }

    /// Runs `bv ARGS`; returns (exit code, stdout, stderr).
    pub fn bv(&self, args: &[&str]) -> (i32, String, String) {
        let output = run_with_limit(self.bv_command().args(args), Duration::from_secs(60));
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs `bv ARGS`, which must succeed; returns stdout.
    pub fn bv_ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.bv(args);
        assert_eq!(
            code,
            0,
            "bv {args:?} failed\nstdout: {stdout}\nstderr: {stderr}\nserver log:\n{}",
            self.log_text()
        );
        stdout
    }

    /// A VG `vg` of `count` sparse PV files of `size` each.
    pub fn make_vg(&self, vg: &str, count: usize, size: &str) {
        let names: Vec<String> = (0..count).map(|i| format!("{vg}-pv{i}.img")).collect();
        let mut args = vec!["pvcreate", "--size", size];
        args.extend(names.iter().map(String::as_str));
        self.bv_ok(&args);
        let mut args = vec!["vgcreate", vg];
        args.extend(names.iter().map(String::as_str));
        self.bv_ok(&args);
    }

    /// The `pvs --reportformat json` row of the PV file `name` (in the
    /// test directory), sizes in bytes.
    pub fn pv_report(&self, name: &str) -> serde_json::Value {
        let out = self.bv_ok(&[
            "pvs",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
        ]);
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("pvs json");
        let path = self.path(name).display().to_string();
        parsed["report"][0]["pv"]
            .as_array()
            .expect("pv array")
            .iter()
            .find(|row| row["pv_name"] == path.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{path} not in pvs: {out}"))
    }

    /// The `vgs --reportformat json -o FIELDS` row of VG `vg`, sizes in
    /// bytes.
    pub fn vg_report(&self, vg: &str, fields: &str) -> serde_json::Value {
        let out = self.bv_ok(&[
            "vgs",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            fields,
            vg,
        ]);
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("vgs json");
        parsed["report"][0]["vg"][0].clone()
    }

    /// Polls `done` every 100 ms until it holds; panics with `what` and
    /// the server log after `limit`.
    pub fn wait_until(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting until {what}\nserver log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `lvs --reportformat json` row of `vg/lv`, sizes in bytes.
    pub fn lv_report(&self, vg: &str, lv: &str) -> serde_json::Value {
        let out = self.bv_ok(&[
            "lvs",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
        ]);
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("lvs json");
        parsed["report"][0]["lv"]
            .as_array()
            .expect("lv array")
            .iter()
            .find(|row| row["vg_name"] == vg && row["lv_name"] == lv)
            .cloned()
            .unwrap_or_else(|| panic!("{vg}/{lv} not in lvs: {out}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `len` bytes of seeded pseudo-random data (xorshift64*: fast and
/// deterministic, which is all test data needs).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut data = vec![0u8; len];
    for chunk in data.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let value = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&value[..chunk.len()]);
    }
    data
}

/// Writes `len` bytes of `random_bytes` to a new file.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, random_bytes(len, seed)).expect("writing test data");
}
