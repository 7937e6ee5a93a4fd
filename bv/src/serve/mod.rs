//! `bv serve`: one process with the data path, the embedded metadata
//! service and the management API.
//!
//! ```text
//!  NBD clients ──▶ NbdServer ──▶ VolumeRegistry ──▶ ThinVolume ──▶ layouts (raid) ──▶ PVs
//!                                      │ MapService (in process)       └▶ stripe journals
//!  bv CLI ──▶ API (Unix socket) ──▶ Server ──▶ metadata::Service ──▶ RocksDB
//!                                      └▶ jobs (repair, scrub, pvmove), failure handling
//! ```
//!
//! Start-up: open RocksDB (its lock keeps a second server off the same data
//! directory), return reservations left by a previous run (no other data
//! server can hold one in embedded mode), open and lock every PV, replay
//! the stripe journals (so every parity row is whole before any volume
//! reads it), then listen. Shutdown (SIGINT / SIGTERM): stop taking NBD
//! requests, let those in flight finish, commit and close every open LV.

mod exports;
mod failures;
mod jobs;
mod manage;
mod metrics;
mod pace;
mod pvs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{bail, Context};
use blockvirt::leaf::{EngineChoice, FileOptions};
use blockvirt::volume::{PvSet, VolumeOptions};
use gateways::nbd::{NbdConfig, NbdServer, NbdStats};
use metadata::{LocalMapService, PvId, Service};
use parking_lot::Mutex;
use raid::io::RaidLayouts;
use raid::journal::JournalSet;

use crate::api::routes;
use crate::args::{IoEngine, ServeArgs};
use crate::metrics::Metrics;
pub use exports::VolumeRegistry;
pub use jobs::Jobs;
pub use pvs::PvState;

/// Everything the management API acts on.
pub struct Server {
    me: Weak<Server>,
    service: Arc<Service>,
    pvs: PvSet,
    pv_states: Mutex<HashMap<PvId, PvState>>,
    journals: Arc<JournalSet>,
    volumes: Arc<VolumeRegistry>,
    jobs: Jobs,
    metrics: Arc<Metrics>,
    nbd_stats: Arc<NbdStats>,
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

    pub fn jobs(&self) -> &Jobs {
        &self.jobs
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
    // Failures are handled (recorded durably, repaired) off the I/O path;
    // the handler starts once the server is built, and nothing is lost
    // meanwhile.
    let (failure_tx, failure_rx) = tokio::sync::mpsc::unbounded_channel();
    pvs.on_failure(move |pv, reason| {
        let _ = failure_tx.send((pv, reason.to_string()));
    });
    let pv_states = pvs::open_all(&service, &pvs, file_options).await;
    for (pv, state) in &pv_states {
        if let PvState::Missing(problem) = state {
            failures::fail_missing_redundant(&service, *pv, problem);
        }
    }
    let journals = Arc::new(open_journals(&service, &pvs).await?);
    let metrics = Arc::new(Metrics::new().context("setting up metrics")?);
    let volumes = VolumeRegistry::new(
        service.clone(),
        Arc::new(LocalMapService::new(service.clone())),
        pvs.clone(),
        VolumeOptions {
            commit_interval: Duration::from_secs_f64(args.commit_interval),
            layouts: Arc::new(RaidLayouts::new(journals.clone())),
            ..VolumeOptions::default()
        },
        metrics.clone(),
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

    let server = Arc::new_cyclic(|me| Server {
        me: me.clone(),
        service,
        pvs,
        pv_states: Mutex::new(pv_states),
        journals,
        volumes: volumes.clone(),
        jobs: Jobs::default(),
        metrics,
        nbd_stats: nbd.stats(),
        file_options,
        nbd_address: nbd.local_addr(),
        data_dir: data_dir.clone(),
        manage: tokio::sync::Mutex::new(()),
    });
    tokio::spawn(failures::handle_failures(
        Arc::downgrade(&server),
        failure_rx,
    ));
    if args.pv_check_interval > 0.0 {
        tokio::spawn(
            server
                .clone()
                .check_pv_health(Duration::from_secs_f64(args.pv_check_interval)),
        );
    }

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
    if let Some(address) = args.metrics_listen {
        let tcp = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the metrics listener to {address}"))?;
        eprintln!("bv serve: metrics on http://{}/metrics", tcp.local_addr()?);
        api_tasks.push(tokio::spawn(serve_api(
            tcp,
            routes::metrics_router(server.clone()),
            stop_rx.clone(),
        )));
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

/// Opens the stripe journal of every open PV and replays what a crash
/// left in them.
async fn open_journals(service: &Service, pvs: &PvSet) -> anyhow::Result<JournalSet> {
    let regions = service
        .pv_records()
        .iter()
        .filter(|record| pvs.get(record.id).is_ok())
        .map(|record| (record.id, pvs::journal_region(record)))
        .collect();
    let journals = JournalSet::open(pvs.clone(), regions)
        .await
        .context("opening the stripe journals")?;
    let report = journals
        .recover_with(Some(service))
        .await
        .context("replaying the stripe journals")?;
    if report.entries_replayed > 0 || report.entries_unreadable > 0 || report.entries_in_place > 0 {
        tracing::warn!(
            "stripe journals: {} interrupted row updates replayed ({} bytes), {} skipped writes to failed PVs, {} unreadable, {} damaged, {} damaged but found in place",
            report.entries_replayed,
            report.bytes_replayed,
            report.writes_skipped,
            report.entries_unreadable,
            report.entries_damaged,
            report.entries_in_place
        );
    }
    Ok(journals)
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
