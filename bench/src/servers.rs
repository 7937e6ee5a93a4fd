//! The NBD servers measured: `nbdkit file` and `qemu-nbd` on a plain file,
//! and `bv serve`. Each listens on 127.0.0.1 only, and is killed when its
//! handle drops.
//!
//! With `Cache::Bypass` the peers keep data out of the host's page cache,
//! as `bv serve` does by default (O_DIRECT PVs, io_uring):
//! - qemu-nbd: `--cache=none` (O_DIRECT) and `--aio=io_uring`, the same
//!   I/O path as Blockvirt's PVs;
//! - nbdkit 1.32's file plugin has no O_DIRECT; `cache=none` is its nearest
//!   setting (pages dropped after each read, writes pushed to the disk in a
//!   small window), with `fadvise=random` so no read-ahead is wasted, as
//!   with O_DIRECT. `--threads 32`: as many requests in flight as the
//!   deepest queue measured (its default is 16).

use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::{bv_binary, free_port, Server};

use crate::process::check_interrupted;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// The tools' defaults: through the host's page cache.
    Host,
    /// Around the page cache, as `bv serve` is.
    Bypass,
}

/// A peer NBD server exporting one plain file as the default export.
pub struct Peer {
    child: Child,
    pub name: &'static str,
    pub uri: String,
    pub command_line: String,
}

impl Peer {
    pub fn nbdkit(file: &Path, cache: Cache) -> Result<Peer> {
        let port = free_port().to_string();
        let mut args = vec!["-f", "-i", "127.0.0.1", "-p", &port];
        if cache == Cache::Bypass {
            args.extend(["--threads", "32"]);
        }
        args.extend(["file", path_str(file)?]);
        if cache == Cache::Bypass {
            args.extend(["cache=none", "fadvise=random"]);
        }
        Peer::start("nbdkit", &args, &port)
    }

    pub fn qemu_nbd(file: &Path, cache: Cache) -> Result<Peer> {
        let port = free_port().to_string();
        let mut args = vec!["-f", "raw"];
        if cache == Cache::Bypass {
            args.extend(["--cache=none", "--aio=io_uring"]);
        }
        args.extend(["-b", "127.0.0.1", "-p", &port, "-t", "--shared=16"]);
        args.push(path_str(file)?);
        Peer::start("qemu-nbd", &args, &port)
    }

    fn start(name: &'static str, args: &[&str], port: &str) -> Result<Peer> {
        let mut stderr = tempfile::tempfile()?;
        let child = Command::new(name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.try_clone()?)
            .spawn()
            .with_context(|| {
                format!("starting {name} (scripts/install-deps bench installs the peers)")
            })?;
        let mut peer = Peer {
            child,
            name,
            uri: format!("nbd://127.0.0.1:{port}"),
            command_line: format!("{name} {}", args.join(" ")),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err() {
            check_interrupted()?;
            if let Some(status) = peer.child.try_wait()? {
                let mut log = String::new();
                stderr.rewind()?;
                stderr.read_to_string(&mut log)?;
                bail!("{} exited at start ({status}): {log}", peer.command_line);
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("{} did not start listening in 20 s", peer.command_line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(peer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How `tests::Server` starts `bv serve` (all defaults but the port).
pub fn bv_command_line(server: &Server) -> String {
    format!(
        "{} --data-dir {} serve --listen 127.0.0.1:0",
        bv_binary().display(),
        server.data_dir().display()
    )
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("benchmark paths must be UTF-8")
}
