//! LVs as NBD exports, named `VG/LV`.
//!
//! An LV is opened (its write lease taken, its map loaded) when the first
//! client selects it and closed (map committed, lease released) when the
//! last one disconnects. Every connection to one LV shares one
//! `ThinVolume`, which is what makes NBD's multi-conn flush rule hold: a
//! flush on any connection commits the whole volume.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use blockvirt::volume::{PvSet, ThinVolume, VolumeOptions};
use blockvirt::{BlockDevice, Checked, ErrorKind};
use gateways::nbd::{Export, ExportError, ExportListing, Exports};
use metadata::{MapService, Service};
use tokio::sync::Mutex;

use crate::size::Units;

struct OpenVolume {
    volume: Arc<ThinVolume>,
    users: usize,
}

pub struct VolumeRegistry {
    me: Weak<VolumeRegistry>,
    service: Arc<Service>,
    map: Arc<dyn MapService>,
    pvs: PvSet,
    options: VolumeOptions,
    open: Mutex<HashMap<String, OpenVolume>>,
}

impl VolumeRegistry {
    pub fn new(
        service: Arc<Service>,
        map: Arc<dyn MapService>,
        pvs: PvSet,
        options: VolumeOptions,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| VolumeRegistry {
            me: me.clone(),
            service,
            map,
            pvs,
            options,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Lets an open LV see its new size after `lvextend`.
    pub async fn refresh(&self, name: &str) -> blockvirt::BlockResult<()> {
        let volume = self.open.lock().await.get(name).map(|v| v.volume.clone());
        match volume {
            Some(volume) => volume.refresh().await,
            None => Ok(()),
        }
    }

    /// Closes every open LV (server shutdown).
    pub async fn close_all(&self) {
        let open: Vec<(String, OpenVolume)> = self.open.lock().await.drain().collect();
        for (name, entry) in open {
            if let Err(e) = entry.volume.close().await {
                tracing::error!("closing {name}: {e}");
            }
        }
    }

    async fn release(&self, name: &str) {
        let mut open = self.open.lock().await;
        let Some(entry) = open.get_mut(name) else {
            return;
        };
        entry.users -= 1;
        if entry.users > 0 {
            return;
        }
        let entry = open.remove(name).expect("present above");
        // Closed under the lock, so a new client waits for the lease to be
        // released before taking it again.
        if let Err(e) = entry.volume.close().await {
            tracing::error!("closing {name}: {e}");
        }
    }

    fn describe(&self, name: &str) -> String {
        let units = Units::default();
        self.service
            .lv_reports()
            .into_iter()
            .find(|lv| format!("{}/{}", lv.vg_name, lv.record.name) == name)
            .map(|lv| {
                format!(
                    "{} {} logical volume, {}",
                    if lv.record.thin { "thin" } else { "thick" },
                    lv.layout().name(),
                    units.format(lv.record.size_bytes)
                )
            })
            .unwrap_or_default()
    }
}

/// Held by one connection; the last one to go closes the LV.
struct ExportGuard {
    registry: Weak<VolumeRegistry>,
    name: String,
}

impl Drop for ExportGuard {
    fn drop(&mut self) {
        let (Some(registry), Ok(runtime)) = (
            self.registry.upgrade(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        runtime.spawn(async move { registry.release(&name).await });
    }
}

#[async_trait]
impl Exports for VolumeRegistry {
    async fn list(&self) -> Vec<ExportListing> {
        self.service
            .lv_reports()
            .into_iter()
            .map(|lv| {
                let name = format!("{}/{}", lv.vg_name, lv.record.name);
                ExportListing {
                    description: self.describe(&name),
                    name,
                }
            })
            .collect()
    }

    async fn open(&self, name: &str) -> Result<Export, ExportError> {
        let Some((vg, lv)) = name.split_once('/') else {
            return Err(ExportError::Unknown);
        };
        if vg.is_empty() || lv.is_empty() || lv.contains('/') {
            return Err(ExportError::Unknown);
        }
        let mut open = self.open.lock().await;
        let volume = match open.get_mut(name) {
            Some(entry) => {
                entry.users += 1;
                entry.volume.clone()
            }
            None => {
                let volume = ThinVolume::open(
                    self.map.clone(),
                    self.pvs.clone(),
                    vg,
                    lv,
                    self.options.clone(),
                )
                .await
                .map_err(|e| match e.kind() {
                    ErrorKind::NotFound => ExportError::Unknown,
                    ErrorKind::Busy => ExportError::Busy(e.to_string()),
                    _ => ExportError::Failed(e.to_string()),
                })?;
                let volume = Arc::new(volume);
                open.insert(
                    name.to_string(),
                    OpenVolume {
                        volume: volume.clone(),
                        users: 1,
                    },
                );
                volume
            }
        };
        drop(open);
        let device: Arc<dyn BlockDevice> = Arc::new(Checked::new(volume));
        Ok(Export {
            device,
            description: self.describe(name),
            guard: Box::new(ExportGuard {
                registry: self.me.clone(),
                name: name.to_string(),
            }),
        })
    }
}
