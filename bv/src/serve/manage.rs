//! VG and LV management on the running server. Metadata does the checking
//! and the atomic write; the server adds what only it knows (which PVs are
//! online, which LVs are open) and tells open volumes about changes.

use metadata::model::DEFAULT_EXTENT_BYTES;
use metadata::{LvRecord, MetaResult, VgRecord};

use super::Server;
use crate::api::{
    ApiError, ChangeVg, CreateLv, CreateVg, ExtendLv, LvName, LvStatus, RemoveVg, Reports,
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
        self.metadata(move |s| s.remove_vg(&request.name, request.force))
            .await
    }

    pub async fn create_lv(&self, request: CreateLv) -> Result<LvRecord, ApiError> {
        let _turn = self.manage.lock().await;
        self.metadata(move |s| {
            s.create_lv(
                &request.vg,
                &request.name,
                request.size_bytes,
                request.thin,
                request.layout,
            )
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
        self.metadata(move |s| s.remove_lv(&request.vg, &request.name))
            .await
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
                .map(|report| LvStatus {
                    export_uri: format!("nbd://{}/{}", self.nbd_address, lv_name(&report)),
                    report,
                })
                .collect(),
        }
    }
}

/// `vg/lv`.
fn lv_name(lv: &metadata::LvReport) -> String {
    format!("{}/{}", lv.vg_name, lv.record.name)
}
