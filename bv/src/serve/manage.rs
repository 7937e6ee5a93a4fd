//! VG and LV management on the running server. Metadata does the checking
//! and the atomic write; the server adds what only it knows (which PVs are
//! online, which LVs are open) and tells open volumes about changes.

use metadata::model::DEFAULT_EXTENT_BYTES;
use metadata::{LvOptions, LvRecord, MetaResult, PvRecord, VgRecord};

use super::Server;
use crate::api::{
    ApiError, ChangeVg, CreateLv, CreateVg, ExtendLv, LvName, LvStatus, RemoveMissing, RemoveVg,
    Reports, SetFaultPolicy, SetRecoveryRate,
};

impl Server {
    /// Runs a metadata call on the blocking pool (RocksDB syncs block).
    async fn metadata<T: Send + 'static>(
        &self,
        call: impl FnOnce(&metadata::Service) -> MetaResult<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || call(&service))
            .await
            .map_err(|e| ApiError::new("internal", format!("metadata task failed: {e}")))?
            .map_err(ApiError::from)
    }

    pub async fn create_vg(&self, request: CreateVg) -> Result<VgRecord, ApiError> {
        let _turn = self.manage.lock().await;
        self.require_online(&request.pvs).await?;
        let extent_bytes = request.extent_bytes.unwrap_or(DEFAULT_EXTENT_BYTES);
        self.metadata(move |s| s.create_vg(&request.name, &request.pvs, extent_bytes))
            .await
    }

    pub async fn extend_vg(&self, request: ChangeVg) -> Result<VgRecord, ApiError> {
        let _turn = self.manage.lock().await;
        self.require_online(&request.pvs).await?;
        self.metadata(move |s| s.extend_vg(&request.name, &request.pvs))
            .await
    }

    pub async fn reduce_vg(&self, request: ChangeVg) -> Result<VgRecord, ApiError> {
        let _turn = self.manage.lock().await;
        self.metadata(move |s| s.reduce_vg(&request.name, &request.pvs))
            .await
    }

    /// `vgreduce --removemissing`: drops the VG's failed PVs, once no
    /// extent has a leg on them any more (after `lvconvert --repair`).
    pub async fn remove_missing(&self, request: RemoveMissing) -> Result<Vec<PvRecord>, ApiError> {
        let _turn = self.manage.lock().await;
        self.metadata(move |s| s.remove_missing(&request.name))
            .await
    }

    /// `vgchange --raid-fault-policy`.
    pub async fn set_fault_policy(&self, request: SetFaultPolicy) -> Result<VgRecord, ApiError> {
        let _turn = self.manage.lock().await;
        self.metadata(move |s| s.set_fault_policy(&request.name, request.policy))
            .await
    }

    /// Removes a VG; with `force`, its LVs too (one atomic batch, refused
    /// as a whole if any LV is open).
    pub async fn remove_vg(&self, request: RemoveVg) -> Result<VgRecord, ApiError> {
        let _turn = self.manage.lock().await;
        if request.force {
            let open = self.reports().await.lvs.into_iter().find(|lv| {
                lv.report.vg_name == request.name && self.volumes.is_open(&lv_name(&lv.report))
            });
            if let Some(lv) = open {
                return Err(ApiError::new(
                    "busy",
                    format!("logical volume \"{}\" is in use", lv_name(&lv.report)),
                ));
            }
        }
        let name = request.name.clone();
        let removed = self
            .metadata(move |s| s.remove_vg(&request.name, request.force))
            .await?;
        self.metrics.lv_io.forget_vg(&name);
        Ok(removed)
    }

    pub async fn create_lv(&self, request: CreateLv) -> Result<LvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        self.metadata(move |s| {
            s.create_lv_with(
                &request.vg,
                &request.name,
                request.size_bytes,
                request.thin,
                request.layout,
                LvOptions {
                    max_recovery_rate: request.max_recovery_rate,
                    raid_integrity: request.raid_integrity,
                },
            )
        })
        .await
    }

    /// `lvchange --maxrecoveryrate`: jobs read the rate as they go.
    pub async fn set_recovery_rate(&self, request: SetRecoveryRate) -> Result<LvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        self.metadata(move |s| {
            s.set_max_recovery_rate(&request.vg, &request.name, request.max_recovery_rate)
        })
        .await
    }

    pub async fn extend_lv(&self, request: ExtendLv) -> Result<LvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        let (vg, name) = (request.vg.clone(), request.name.clone());
        let current = self.metadata(move |s| s.lookup_lv(&vg, &name)).await?.0;
        let size_bytes = if request.relative {
            current
                .size_bytes
                .checked_add(request.size_bytes)
                .ok_or_else(|| {
                    ApiError::new("invalid_argument", "new size is too large".to_string())
                })?
        } else {
            request.size_bytes
        };
        let (vg, name) = (request.vg.clone(), request.name.clone());
        let grown = self
            .metadata(move |s| s.extend_lv(&vg, &name, size_bytes))
            .await?;
        // The extension is committed; an open LV that cannot pick it up now
        // does at its next lease renewal.
        let full = format!("{}/{}", request.vg, request.name);
        if let Err(e) = self.volumes.refresh(&full).await {
            tracing::warn!("{full} grew, but the open volume has not seen it yet: {e}");
        }
        Ok(grown)
    }

    pub async fn remove_lv(&self, request: LvName) -> Result<LvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        let full = format!("{}/{}", request.vg, request.name);
        if self.volumes.is_open(&full) {
            return Err(ApiError::new(
                "busy",
                format!("logical volume \"{full}\" is in use"),
            ));
        }
        let (vg, name) = (request.vg.clone(), request.name.clone());
        let removed = self
            .metadata(move |s| s.remove_lv(&request.vg, &request.name))
            .await?;
        self.metrics.lv_io.forget(&vg, &name);
        Ok(removed)
    }

    pub async fn reports(&self) -> Reports {
        let service = self.service.clone();
        let (vgs, lvs) =
            tokio::task::spawn_blocking(move || (service.vg_reports(), service.lv_reports()))
                .await
                .unwrap_or_default();
        Reports {
            pvs: self.pv_statuses().await,
            vgs,
            lvs: lvs
                .into_iter()
                .map(|report| self.lv_status(report))
                .collect(),
        }
    }
}

impl Server {
    fn lv_status(&self, report: metadata::LvReport) -> LvStatus {
        let name = lv_name(&report);
        let job = self.jobs.running_on(&name);
        let sync_percent = report.layout().is_redundant().then(|| match &job {
            Some(job) if job.kind == crate::api::JobKind::Recover => job.percent(),
            _ if report.mapped_extents == 0 => 100.0,
            _ => {
                let healthy = report
                    .mapped_extents
                    .saturating_sub(report.degraded_extents);
                healthy as f64 * 100.0 / report.mapped_extents as f64
            }
        });
        LvStatus {
            export_uri: format!("nbd://{}/{name}", self.nbd_address),
            sync_action: job.map_or("idle", |job| job.kind.name()).to_string(),
            sync_percent,
            mismatches: self.jobs.mismatches(&name),
            report,
        }
    }
}

/// `vg/lv`.
fn lv_name(lv: &metadata::LvReport) -> String {
    format!("{}/{}", lv.vg_name, lv.record.name)
}
