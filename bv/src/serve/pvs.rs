//! PVs on the server: opening them at start (label checked, file locked),
//! and `pvcreate` / `pvremove`, which touch both the device and the
//! metadata and undo the device change when the metadata refuses.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use blockvirt::label::{read_label, wipe_label, write_label, PvLabel};
use blockvirt::leaf::FileDevice;
use blockvirt::volume::PvHandle;
use blockvirt::{BlockDevice, Checked, IoBufMut, WriteFlags, IO_ALIGN};
use metadata::model::pv_data_offset;
use metadata::{PvRecord, PvReport};
use uuid::Uuid;

use super::Server;
use crate::api::{ApiError, CreatePv, PvStatus};

/// Whether the server could open a PV.
#[derive(Debug, Clone)]
pub enum PvState {
    Online,
    Missing(String),
}

impl Server {
    /// Opens every recorded PV; one that cannot be opened is marked missing
    /// (its LVs fail I/O on its extents) and the server carries on.
    pub async fn open_all_pvs(&self) {
        for record in self.service.pv_records() {
            let state = match self.open_pv(&record).await {
                Ok(()) => PvState::Online,
                Err(problem) => {
                    tracing::error!("PV {}: {problem}", record.path.display());
                    PvState::Missing(problem)
                }
            };
            self.pv_states.lock().insert(record.id, state);
        }
    }

    async fn open_pv(&self, record: &PvRecord) -> Result<(), String> {
        let device =
            FileDevice::open(&record.path, self.file_options).map_err(|e| e.to_string())?;
        device.lock_exclusive().map_err(|e| e.to_string())?;
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
        self.pvs.insert(
            record.id,
            PvHandle {
                device: Arc::new(Checked::new(device)),
                data_offset_bytes: record.data_offset_bytes,
            },
            record.failed.is_some(),
        );
        Ok(())
    }

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
        match self.service.create_pv(path, label.uuid, size_bytes) {
            Ok(record) => {
                self.pvs.insert(
                    record.id,
                    PvHandle {
                        device: Arc::new(Checked::new(device)),
                        data_offset_bytes: record.data_offset_bytes,
                    },
                    false,
                );
                self.pv_states.lock().insert(record.id, PvState::Online);
                Ok(record)
            }
            Err(e) => {
                // Put back what was there before.
                let _ = device.write_at(0, previous.freeze(), WriteFlags::FUA).await;
                Err(e.into())
            }
        }
    }

    pub async fn remove_pv(&self, path: &Path) -> Result<PvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        let report = self
            .service
            .pv_reports()
            .into_iter()
            .find(|pv| pv.record.path == path)
            .ok_or_else(|| {
                ApiError::new(
                    "not_found",
                    format!("physical volume \"{}\" not found", path.display()),
                )
            })?;
        if let Some(vg) = &report.vg_name {
            return Err(ApiError::new(
                "busy",
                format!(
                    "physical volume \"{}\" belongs to volume group \"{vg}\"; remove it with vgreduce first",
                    path.display()
                ),
            ));
        }
        let handle = self.pvs.get(report.record.id).ok();
        if let Some(handle) = &handle {
            wipe_label(&*handle.device).await?;
        }
        match self.service.remove_pv(path) {
            Ok(record) => {
                self.pvs.remove(record.id);
                self.pv_states.lock().remove(&record.id);
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

    pub async fn pv_statuses(&self) -> Vec<PvStatus> {
        let service = self.service.clone();
        let reports = tokio::task::spawn_blocking(move || service.pv_reports())
            .await
            .unwrap_or_default();
        let states = self.pv_states.lock();
        reports
            .into_iter()
            .map(|report: PvReport| {
                let (state, problem) = match (&report.record.failed, states.get(&report.record.id))
                {
                    (Some(why), _) => ("failed", Some(why.clone())),
                    (None, Some(PvState::Online)) => ("online", None),
                    (None, Some(PvState::Missing(why))) => ("missing", Some(why.clone())),
                    (None, None) => ("missing", Some("not opened".to_string())),
                };
                PvStatus {
                    report,
                    state: state.to_string(),
                    problem,
                }
            })
            .collect()
    }

    /// Refuses to build on PVs the server could not open.
    pub async fn require_online(&self, paths: &[std::path::PathBuf]) -> Result<(), ApiError> {
        for status in self.pv_statuses().await {
            if paths.contains(&status.report.record.path) && status.state != "online" {
                return Err(ApiError::new(
                    "busy",
                    format!(
                        "physical volume \"{}\" is missing: {}",
                        status.report.record.path.display(),
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
