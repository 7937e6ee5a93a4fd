//! `bv serve`: one process with the data path, the embedded metadata
//! service and the management API.
//!
//! ```text
//!  NBD clients ──▶ NbdServer ──▶ VolumeRegistry ──▶ ThinVolume ──▶ PVs
//!                                      │ MapService (in process)
//!  bv CLI ──▶ API (Unix socket) ──▶ Server ──▶ metadata::Service ──▶ RocksDB
//! ```
//!
//! Start-up: open RocksDB (its lock keeps a second server off the same data
//! directory), return reservations left by a previous run (no other data
//! server can hold one in embedded mode), open and lock every PV, then
//! listen. Shutdown (SIGINT / SIGTERM): stop taking NBD requests, let those
//! in flight finish, commit and close every open LV.

mod exports;
mod manage;
mod pvs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use blockvirt::leaf::{EngineChoice, FileOptions};
use blockvirt::volume::{PvSet, VolumeOptions};
use gateways::nbd::{NbdConfig, NbdServer};
use metadata::{LocalMapService, PvId, Service};
use parking_lot::Mutex;

use crate::api::routes;
use crate::args::{IoEngine, ServeArgs};
pub use exports::VolumeRegistry;
pub use pvs::PvState;

/// Everything the management API acts on.
pub struct Server {
    service: Arc<Service>,
    pvs: PvSet,
    pv_states: Mutex<HashMap<PvId, PvState>>,
    volumes: Arc<VolumeRegistry>,
    file_options: FileOptions,
    nbd_address: SocketAddr,
    data_dir: PathBuf,
    /// Serializes management operations that touch devices and metadata.
    manage: tokio::sync::Mutex<()>,
}

impl Server {
    pub fn nbd_address(&self) -> SocketAddr {
        self.nbd_address
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }
}

pub async fn run(data_dir: PathBuf, socket: PathBuf, args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let meta_dir = data_dir.join("meta");
    let service = Service::open_rocksdb(&meta_dir).map_err(|e| {
        if e.to_string().contains("lock") {
            anyhow::anyhow!("another bv serve is using {} ({e})", data_dir.display())
        } else {
            anyhow::anyhow!("opening metadata in {}: {e}", meta_dir.display())
        }
    })?;
    let service = Arc::new(service);
    let reclaimed = service.reclaim_all_reservations()?;
    if reclaimed > 0 {
        tracing::info!(
            "returned {reclaimed} extents reserved by the previous run to the free pool"
        );
    }

    let file_options = FileOptions {
        engine: match args.io_engine {
            IoEngine::Auto => EngineChoice::Auto,
            IoEngine::Uring => EngineChoice::Uring,
            IoEngine::Threads => EngineChoice::Threads,
        },
        direct_io: args.direct_io == "on",
        read_only: false,
    };
    // Commits must come well inside a lease (which renews every third of
    // its duration).
    let commit_max = metadata::service::DEFAULT_LEASE.as_secs_f64() / 3.0;
    if !(args.commit_interval > 0.0 && args.commit_interval <= commit_max) {
        bail!("--commit-interval must be more than 0 and at most {commit_max} seconds");
    }
    let pvs = PvSet::default();
    let failures = service.clone();
    pvs.on_failure(move |pv, reason| {
        // Recorded durably off the I/O path; a restart remembers it.
        let (service, reason) = (failures.clone(), reason.to_string());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = service.set_pv_failed(pv, &reason) {
                tracing::error!("recording the failure of PV id {pv}: {e}");
            }
        });
    });
    let volumes = VolumeRegistry::new(
        service.clone(),
        Arc::new(LocalMapService::new(service.clone())),
        pvs.clone(),
        VolumeOptions {
            commit_interval: Duration::from_secs_f64(args.commit_interval),
            ..VolumeOptions::default()
        },
    );
    let nbd = NbdServer::bind(
        NbdConfig {
            listen: args.listen,
            ..NbdConfig::default()
        },
        volumes.clone(),
    )
    .await
    .with_context(|| format!("listening for NBD on {}", args.listen))?;

    let server = Arc::new(Server {
        service,
        pvs,
        pv_states: Mutex::new(HashMap::new()),
        volumes: volumes.clone(),
        file_options,
        nbd_address: nbd.local_addr(),
        data_dir: data_dir.clone(),
        manage: tokio::sync::Mutex::new(()),
    });
    server.open_all_pvs().await;

    let router = routes::router(server.clone());
    if socket.exists() {
        std::fs::remove_file(&socket)
            .with_context(|| format!("removing stale {}", socket.display()))?;
    }
    let unix = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_tasks = vec![tokio::spawn(serve_api(
        unix,
        router.clone(),
        stop_rx.clone(),
    ))];
    if let Some(address) = args.api_listen {
        let tcp = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the API to {address}"))?;
        tracing::warn!("management API also on http://{address} (no authentication)");
        api_tasks.push(tokio::spawn(serve_api(tcp, router, stop_rx.clone())));
    }

    eprintln!(
        "bv serve: NBD exports on nbd://{}/VG/LV, management API on {}",
        server.nbd_address(),
        socket.display()
    );
    let mut nbd_stop = stop_rx.clone();
    let nbd_task = tokio::spawn(nbd.run(async move {
        let _ = nbd_stop.wait_for(|stop| *stop).await;
    }));

    shutdown_signal().await;
    eprintln!("bv serve: shutting down");
    let _ = stop_tx.send(true);
    match nbd_task.await {
        Ok(Err(e)) => tracing::error!("NBD server: {e}"),
        Err(e) => tracing::error!("NBD server task: {e}"),
        Ok(Ok(())) => {}
    }
    for task in api_tasks {
        let _ = task.await;
    }
    volumes.close_all().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn serve_api<L>(
    listener: L,
    router: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("management API: {e}");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
