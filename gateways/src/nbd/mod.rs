//! The NBD server: Blockvirt's VM-disk path.
//!
//! It serves any number of exports (one per logical volume, named `VG/LV`)
//! on one TCP port to QEMU (qemu-img, qemu-io, guests' drives) and libnbd's
//! tools (nbdinfo, nbdcopy, nbdsh), speaking the fixed newstyle protocol of
//! the reference document (`doc/proto.md` in the NetworkBlockDevice
//! project). The integration tests in `tests/nbd/` run those clients.
//!
//! ```text
//!  TCP accept ──> connection task
//!                   │ handshake     greeting, options (GO/INFO/LIST/...),
//!                   │               export opened through `Exports`
//!                   │ transmission  reader ─> request tasks ─> writer
//!                   └ guard dropped after the last in-flight request
//! ```
//!
//! Supported: `NBD_OPT_EXPORT_NAME`, `ABORT`, `LIST`, `STARTTLS` (refused:
//! no TLS yet), `INFO`, `GO` (with export, name, description and block-size
//! information), `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and
//! `SET_META_CONTEXT` with `base:allocation`; commands `READ` (with holes
//! and `DF`), `WRITE` (+FUA), `FLUSH`, `TRIM`, `WRITE_ZEROES` (+`NO_HOLE`,
//! `FAST_ZERO`), `BLOCK_STATUS` (+`REQ_ONE`), `CACHE` and `DISC`; many
//! requests in flight per connection, replies out of order; multi-conn.
//! Not yet: TLS, the extended-headers extension (64-bit lengths) and
//! resize; clients are told `NBD_REP_ERR_POLICY` / `NBD_REP_ERR_UNSUP` and
//! fall back.
//!
//! Why not the `nbd` crate: it negotiates only the export name (no
//! `NBD_OPT_GO`, no structured replies, no metadata contexts, no trim or
//! write-zeroes), and QEMU and libnbd fail against it. The server is a
//! small tokio program instead, split by concern:
//!
//! - `proto`: constants and pure encode/decode of every message;
//! - `handshake`: option haggling; `session`: what was negotiated;
//! - `transmission`: the request/reply pipeline of one connection;
//! - `commands`: what each command does to a `BlockDevice`;
//! - `extents`: allocation maps to block-status and sparse-read replies;
//! - `exports`: the catalogue the server asks for devices;
//! - `stats`: connection and in-flight counts for the server's metrics.
//!
//! Durability: FLUSH and FUA are acknowledged only after the device's
//! `flush` (or FUA write) returned, so the device's crash-ordering rule is
//! the server's; the gateway itself keeps no cache.

mod commands;
mod exports;
mod extents;
mod handshake;
pub mod proto;
mod session;
mod stats;
mod transmission;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use exports::{Export, ExportError, ExportListing, Exports};
pub use stats::NbdStats;

use handshake::{HandshakeError, Outcome};
use transmission::Limits;

/// The IANA-assigned NBD port.
pub const NBD_PORT: u16 = 10809;

/// Server settings.
#[derive(Debug, Clone)]
pub struct NbdConfig {
    /// Where to listen; default `127.0.0.1:10809` (not every interface:
    /// there is no authentication yet).
    pub listen: SocketAddr,
    /// Requests one connection may have in flight at once (a reply counts
    /// until it is written); 1 to 4096, default 64.
    pub max_in_flight: usize,
    /// Bytes of READ and WRITE data one connection may hold in memory at
    /// once; default 256 MiB. A single request larger than this still runs,
    /// alone.
    pub max_buffer_bytes: usize,
    /// A client must finish option haggling within this time; it bounds
    /// how long an idle or slow peer holds a connection slot. Default 30 s.
    pub handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests and their replies may take
    /// before connections are cut. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, NBD_PORT)),
            max_in_flight: 64,
            max_buffer_bytes: 256 << 20,
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A bound NBD server; [`run`](NbdServer::run) serves until shutdown.
pub struct NbdServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: NbdConfig,
    exports: Arc<dyn Exports>,
    stats: Arc<NbdStats>,
}

impl NbdServer {
    /// Binds the listening socket (port 0 picks a free port).
    pub async fn bind(config: NbdConfig, exports: Arc<dyn Exports>) -> io::Result<NbdServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        tracing::info!(%local_addr, "NBD server listening");
        Ok(NbdServer {
            listener,
            local_addr,
            config,
            exports,
            stats: Arc::default(),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connection and request counts, live for as long as the server runs.
    pub fn stats(&self) -> Arc<NbdStats> {
        self.stats.clone()
    }

    /// Serves until `shutdown` completes. Then it stops accepting, answers
    /// requests that arrive meanwhile with `NBD_ESHUTDOWN` (and options with
    /// `NBD_REP_ERR_SHUTDOWN`), lets in-flight requests finish (at most
    /// `shutdown_grace`), closes every connection and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let NbdServer {
            listener,
            local_addr,
            config,
            exports,
            stats,
        } = self;
        let config = Arc::new(config);
        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let span = tracing::debug_span!("nbd", %peer);
                        // Counted from accept, so a client stuck in the
                        // handshake shows too.
                        let tally = stats.connection();
                        let shared = Shared {
                            exports: exports.clone(),
                            config: config.clone(),
                            stats: stats.clone(),
                            _tally: tally,
                        };
                        connections.spawn(
                            connection(stream, shared, stopping.clone()).instrument(span),
                        );
                    }
                    Err(e) => {
                        // Out of descriptors or a connection reset before
                        // accept: transient, so back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(finished) = connections.join_next() => reap(finished),
            }
        }
        drop(listener);
        tracing::info!(%local_addr, "NBD server shutting down");
        stop.send_replace(true);
        while let Some(finished) = connections.join_next().await {
            reap(finished);
        }
        tracing::info!(%local_addr, "NBD server stopped");
        Ok(())
    }
}

fn reap(finished: Result<(), tokio::task::JoinError>) {
    if let Err(e) = finished {
        tracing::error!("NBD connection task failed: {e}");
    }
}

/// What a connection task holds besides its socket.
struct Shared {
    exports: Arc<dyn Exports>,
    config: Arc<NbdConfig>,
    stats: Arc<NbdStats>,
    /// Counts the connection as open until the task ends (or is aborted).
    _tally: stats::Tally,
}

/// One client, from greeting to close.
async fn connection(mut stream: TcpStream, shared: Shared, shutdown: watch::Receiver<bool>) {
    let Shared {
        ref exports,
        ref config,
        ref stats,
        ..
    } = shared;
    tracing::debug!("connected");
    // Replies are written whole; Nagle would only delay them (spec advice).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let mut shutdown_signal = shutdown.clone();
    let negotiated = tokio::select! {
        result = tokio::time::timeout(
            config.handshake_timeout,
            handshake::negotiate(&mut stream, &**exports, &shutdown),
        ) => result,
        _ = shutdown_signal.wait_for(|stopping| *stopping) => {
            tracing::debug!("shutdown during the handshake");
            return;
        }
    };
    let session = match negotiated {
        Err(_) => {
            tracing::warn!(
                "handshake not finished within {:?}; disconnecting",
                config.handshake_timeout
            );
            return;
        }
        Ok(Ok(Outcome::Transmission(session))) => session,
        Ok(Ok(Outcome::Closed)) => {
            tracing::debug!("client left during the handshake");
            return;
        }
        Ok(Err(e @ (HandshakeError::Io(_) | HandshakeError::Shutdown))) => {
            tracing::debug!("handshake ended: {e}");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!("handshake failed: {e}");
            return;
        }
    };
    let limits = Limits {
        max_in_flight: config.max_in_flight.clamp(1, 4096) as u32,
        max_buffer_bytes: config.max_buffer_bytes,
        shutdown_grace: config.shutdown_grace,
    };
    let (reader, writer) = stream.into_split();
    transmission::serve(*session, reader, writer, shutdown, limits, stats.clone()).await;
}
