//! PVs on the server: opening them at start (label checked, file locked,
//! a fault injector and an error counter in front), `pvcreate` /
//! `pvremove`, which touch the device, its stripe journal and the metadata
//! and undo the device change when the metadata refuses, and
//! `pvchange --fault`.
//!
//! ```text
//!  PvSet ── Checked ── Counted (metrics) ── Faulty (pvchange --fault) ── FileDevice (io_uring)
//! ```

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockvirt::label::{read_label, wipe_label, write_label, PvLabel};
use blockvirt::leaf::{FaultMode, Faulty, FileDevice, FileOptions};
use blockvirt::volume::{PvHandle, PvSet};
use blockvirt::{
    BlockDevice, ByteRange, Checked, Counted, ErrorKind, IoBufMut, WriteFlags, IO_ALIGN,
};
use metadata::model::{pv_data_offset, PV_LABEL_AREA_BYTES};
use metadata::{PvId, PvRecord, PvReport, Service};
use uuid::Uuid;

use super::Server;
use crate::api::{ApiError, ChangePv, CreatePv, PvStatus};

/// A PV's device as the server holds it: errors counted (injected ones
/// too) above the fault injector.
pub type PvDevice = Arc<Counted<Faulty<FileDevice>>>;

/// Whether the server could open a PV.
#[derive(Clone)]
pub enum PvState {
    Online(PvDevice),
    Missing(String),
}

/// Where a PV's stripe journal lives: between the label area and its
/// first extent.
pub fn journal_region(record: &PvRecord) -> ByteRange {
    ByteRange::new(
        PV_LABEL_AREA_BYTES,
        record.data_offset_bytes - PV_LABEL_AREA_BYTES,
    )
}

/// Opens every recorded PV into `pvs` (start-up). One that cannot be
/// opened is missing: its extents' legs count as failed, and the server
/// carries on.
pub async fn open_all(
    service: &Service,
    pvs: &PvSet,
    options: FileOptions,
) -> HashMap<PvId, PvState> {
    let mut states = HashMap::new();
    for record in service.pv_records() {
        let state = match open_pv(&record, options).await {
            Ok(device) => {
                insert(pvs, &record, device.clone(), record.failed.is_some());
                PvState::Online(device)
            }
            Err(problem) => {
                tracing::error!("PV {}: {problem}", record.path.display());
                PvState::Missing(problem)
            }
        };
        states.insert(record.id, state);
    }
    states
}

/// How long start-up waits for a PV another process holds locked. A
/// server killed a moment ago still holds its PVs while the kernel tears
/// down its io_uring ring (requests in flight keep their files open), so
/// a restart right after a crash would otherwise find every PV busy.
const LOCK_WAIT: Duration = Duration::from_secs(10);

async fn open_pv(record: &PvRecord, options: FileOptions) -> Result<PvDevice, String> {
    let device = FileDevice::open(&record.path, options).map_err(|e| e.to_string())?;
    let waiting_since = Instant::now();
    loop {
        match device.lock_exclusive() {
            Ok(()) if waiting_since.elapsed() >= Duration::from_millis(50) => {
                tracing::info!(
                    "PV {}: locked after waiting {:?} for another process to let go of it",
                    record.path.display(),
                    waiting_since.elapsed()
                );
                break;
            }
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::Busy && waiting_since.elapsed() < LOCK_WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    match read_label(&device).await.map_err(|e| e.to_string())? {
        Some(label) if label.uuid == record.uuid => {}
        Some(label) => {
            return Err(format!(
                "the device carries PV label {} but {} is on record",
                label.uuid, record.uuid
            ))
        }
        None => return Err("the device has no PV label".into()),
    }
    if device.info().size_bytes < record.size_bytes {
        return Err(format!(
            "the device is smaller ({} bytes) than recorded ({} bytes)",
            device.info().size_bytes,
            record.size_bytes
        ));
    }
    Ok(Arc::new(Counted::new(Faulty::new(device))))
}

fn insert(pvs: &PvSet, record: &PvRecord, device: PvDevice, failed: bool) {
    pvs.insert(
        record.id,
        PvHandle {
            device: Arc::new(Checked::new(device)),
            data_offset_bytes: record.data_offset_bytes,
        },
        failed,
    );
}

impl Server {
    pub async fn create_pv(&self, request: CreatePv) -> Result<PvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        let path = request.path.as_path();
        if !path.is_absolute() {
            return Err(invalid(format!(
                "\"{}\": give an absolute path",
                path.display()
            )));
        }
        if self
            .service
            .pv_reports()
            .iter()
            .any(|pv| pv.record.path == path)
        {
            return Err(ApiError::new(
                "already_exists",
                format!("physical volume \"{}\" already exists", path.display()),
            ));
        }
        let created = match (path.exists(), request.size_bytes) {
            (false, None) => {
                return Err(invalid(format!(
                    "\"{}\" does not exist; give --size to create a sparse file",
                    path.display()
                )))
            }
            (true, Some(_)) => {
                return Err(invalid(format!(
                    "\"{}\" already exists; --size only creates new files",
                    path.display()
                )))
            }
            (false, Some(size_bytes)) => {
                create_sparse(path, size_bytes)?;
                true
            }
            (true, None) => false,
        };
        let result = self.label_and_record(path, request.force).await;
        if result.is_err() && created {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    async fn label_and_record(&self, path: &Path, force: bool) -> Result<PvRecord, ApiError> {
        let device = FileDevice::open(path, self.file_options)?;
        device.lock_exclusive()?;
        if let Ok(Some(label)) = read_label(&device).await {
            if !force {
                return Err(ApiError::new(
                    "busy",
                    format!(
                        "\"{}\" carries PV label {} from another data directory; use -f to overwrite it",
                        path.display(),
                        label.uuid
                    ),
                ));
            }
        }
        let (read, previous) = device.read_at(0, IoBufMut::zeroed(IO_ALIGN)).await;
        read?;
        let size_bytes = device.info().size_bytes;
        let label = PvLabel {
            uuid: Uuid::new_v4(),
            size_bytes,
            data_offset_bytes: pv_data_offset(size_bytes),
        };
        write_label(&device, &label).await?;
        let device = Arc::new(Counted::new(Faulty::new(device)));
        let recorded = self
            .service
            .create_pv(path, label.uuid, size_bytes)
            .map_err(ApiError::from);
        let journaled = match recorded {
            Ok(record) => {
                insert(&self.pvs, &record, device.clone(), false);
                match self.journals.add(record.id, journal_region(&record)).await {
                    Ok(()) => Ok(record),
                    Err(e) => {
                        self.pvs.remove(record.id);
                        let _ = self.service.remove_pv(path);
                        Err(ApiError::from(e))
                    }
                }
            }
            Err(e) => Err(e),
        };
        match journaled {
            Ok(record) => {
                self.pv_states
                    .lock()
                    .insert(record.id, PvState::Online(device));
                Ok(record)
            }
            Err(e) => {
                // Put back what was there before.
                let _ = device.write_at(0, previous.freeze(), WriteFlags::FUA).await;
                Err(e)
            }
        }
    }

    pub async fn remove_pv(&self, path: &Path) -> Result<PvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        let report = self.pv_report(path)?;
        if let Some(vg) = &report.vg_name {
            return Err(ApiError::new(
                "busy",
                format!(
                    "physical volume \"{}\" belongs to volume group \"{vg}\"; remove it with vgreduce first",
                    path.display()
                ),
            ));
        }
        let id = report.record.id;
        let mut handle = self.pvs.get(id).ok();
        if let Some(device) = handle.as_ref().map(|h| h.device.clone()) {
            match wipe_label(&*device).await {
                Ok(()) => {}
                // A dead disk cannot be wiped; its record goes all the same.
                Err(e) if report.record.failed.is_some() => {
                    tracing::warn!("{}: failed PV, label not wiped: {e}", path.display());
                    handle = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        match self.service.remove_pv(path) {
            Ok(record) => {
                // A PV outside every VG has no extent legs, so nothing can
                // log on its journal any more.
                if let Err(e) = self.journals.remove(id).await {
                    tracing::warn!("dropping the journal of {}: {e}", path.display());
                }
                self.pvs.remove(id);
                self.pv_states.lock().remove(&id);
                Ok(record)
            }
            Err(e) => {
                if let Some(handle) = handle {
                    let label = PvLabel {
                        uuid: report.record.uuid,
                        size_bytes: report.record.size_bytes,
                        data_offset_bytes: report.record.data_offset_bytes,
                    };
                    let _ = write_label(&*handle.device, &label).await;
                }
                Err(e.into())
            }
        }
    }

    /// `pvchange --fault MODE`: injects faults into a live PV (`none`
    /// stops). A PV that fails because of it stays failed: see
    /// `vgreduce --removemissing`.
    pub async fn change_pv(&self, request: ChangePv) -> Result<FaultMode, ApiError> {
        let mode: FaultMode = request
            .fault
            .parse()
            .map_err(|e: blockvirt::leaf::FaultModeError| invalid(e.to_string()))?;
        let report = self.pv_report(&request.path)?;
        let state = self.pv_states.lock().get(&report.record.id).cloned();
        match state {
            Some(PvState::Online(device)) => {
                device
                    .inner()
                    .set_mode(mode)
                    .map_err(|e| invalid(e.to_string()))?;
                if mode == FaultMode::Fail {
                    // A dead disk is noticed at once, not at the next I/O
                    // or health check: `lvconvert --repair` can follow.
                    self.probe_pv(report.record.id).await;
                }
                Ok(mode)
            }
            _ => Err(ApiError::new(
                "busy",
                format!(
                    "physical volume \"{}\" is not open here",
                    request.path.display()
                ),
            )),
        }
    }

    pub(super) fn pv_report(&self, path: &Path) -> Result<PvReport, ApiError> {
        self.service
            .pv_reports()
            .into_iter()
            .find(|pv| pv.record.path == path)
            .ok_or_else(|| {
                ApiError::new(
                    "not_found",
                    format!("physical volume \"{}\" not found", path.display()),
                )
            })
    }

    pub async fn pv_statuses(&self) -> Vec<PvStatus> {
        let service = self.service.clone();
        let reports = tokio::task::spawn_blocking(move || service.pv_reports())
            .await
            .unwrap_or_default();
        let states = self.pv_states.lock();
        reports
            .into_iter()
            .map(|report: PvReport| {
                let state = states.get(&report.record.id);
                let fault = match state {
                    Some(PvState::Online(device)) => device.inner().mode().to_string(),
                    _ => String::new(),
                };
                let (state, problem) = match (&report.record.failed, state) {
                    (Some(why), _) => ("failed", Some(why.clone())),
                    (None, Some(PvState::Online(_))) => ("online", None),
                    (None, Some(PvState::Missing(why))) => ("missing", Some(why.clone())),
                    (None, None) => ("missing", Some("not opened".to_string())),
                };
                PvStatus {
                    report,
                    state: state.to_string(),
                    problem,
                    fault,
                }
            })
            .collect()
    }

    /// Refuses to build on PVs that are failed or that the server could
    /// not open.
    pub async fn require_online(&self, paths: &[std::path::PathBuf]) -> Result<(), ApiError> {
        for status in self.pv_statuses().await {
            if paths.contains(&status.report.record.path) && status.state != "online" {
                return Err(ApiError::new(
                    "busy",
                    format!(
                        "physical volume \"{}\" is {}: {}",
                        status.report.record.path.display(),
                        status.state,
                        status.problem.unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn create_sparse(path: &Path, size_bytes: u64) -> Result<(), ApiError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| invalid(format!("cannot create \"{}\": {e}", path.display())))?;
    file.set_len(size_bytes - size_bytes % IO_ALIGN as u64)
        .map_err(|e| invalid(format!("cannot size \"{}\": {e}", path.display())))?;
    Ok(())
}

fn invalid(message: String) -> ApiError {
    ApiError::new("invalid_argument", message)
}
