//! Open LVs, shared by NBD clients and the server's own work (repair,
//! scrub, pvmove), and the NBD catalogue of exports named `VG/LV`.
//!
//! An LV is opened (its write lease taken, its map loaded) when its first
//! user arrives and closed (map committed, lease released) when the last
//! one leaves. Every user of one LV shares one `ThinVolume`, which is what
//! makes NBD's multi-conn flush rule hold: a flush on any connection
//! commits the whole volume. Each LV has its own lock, so opening or
//! closing one LV never waits for another.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use blockvirt::volume::{PvSet, ThinVolume, VolumeOptions};
use blockvirt::{BlockDevice, BlockError, BlockResult, Checked, ErrorKind};
use gateways::nbd::{Export, ExportError, ExportListing, Exports};
use metadata::{LvReport, MapService, Service};

use crate::metrics::Metrics;
use crate::size::Units;

#[derive(Default)]
struct Entry {
    volume: Option<Arc<ThinVolume>>,
    users: usize,
}

pub struct VolumeRegistry {
    me: Weak<VolumeRegistry>,
    service: Arc<Service>,
    map: Arc<dyn MapService>,
    pvs: PvSet,
    options: VolumeOptions,
    metrics: Arc<Metrics>,
    entries: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
}

/// One user's hold on an open LV; the last one dropped closes it.
pub struct VolumeUse {
    registry: Weak<VolumeRegistry>,
    name: String,
    pub volume: Arc<ThinVolume>,
}

impl Drop for VolumeUse {
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

impl VolumeRegistry {
    pub fn new(
        service: Arc<Service>,
        map: Arc<dyn MapService>,
        pvs: PvSet,
        options: VolumeOptions,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| VolumeRegistry {
            me: me.clone(),
            service,
            map,
            pvs,
            options,
            metrics,
            entries: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn entry(&self, name: &str) -> Arc<tokio::sync::Mutex<Entry>> {
        self.entries
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Opens `vg/lv` (or joins its users).
    pub async fn open(&self, name: &str) -> BlockResult<VolumeUse> {
        let Some((vg, lv)) = name
            .split_once('/')
            .filter(|(vg, lv)| !vg.is_empty() && !lv.is_empty() && !lv.contains('/'))
        else {
            return Err(BlockError::new(
                ErrorKind::NotFound,
                format!("\"{name}\" is not VG/LV"),
            ));
        };
        let entry = self.entry(name);
        let mut entry = entry.lock().await;
        let volume = match &entry.volume {
            Some(volume) => volume.clone(),
            None => {
                let volume = Arc::new(
                    ThinVolume::open(
                        self.map.clone(),
                        self.pvs.clone(),
                        vg,
                        lv,
                        self.options.clone(),
                    )
                    .await?,
                );
                entry.volume = Some(volume.clone());
                volume
            }
        };
        entry.users += 1;
        Ok(VolumeUse {
            registry: self.me.clone(),
            name: name.to_string(),
            volume,
        })
    }

    /// Whether `vg/lv` is open here.
    pub fn is_open(&self, name: &str) -> bool {
        let entry = self.entries.lock().get(name).cloned();
        entry.is_some_and(|e| e.try_lock().map_or(true, |e| e.volume.is_some()))
    }

    /// Lets an open LV see its new size after `lvextend`.
    pub async fn refresh(&self, name: &str) -> BlockResult<()> {
        let entry = self.entries.lock().get(name).cloned();
        let volume = match entry {
            Some(entry) => entry.lock().await.volume.clone(),
            None => None,
        };
        match volume {
            Some(volume) => volume.refresh().await,
            None => Ok(()),
        }
    }

    /// The LVs open now.
    pub async fn open_volumes(&self) -> Vec<Arc<ThinVolume>> {
        let entries: Vec<Arc<tokio::sync::Mutex<Entry>>> =
            self.entries.lock().values().cloned().collect();
        let mut open = Vec::new();
        for entry in entries {
            if let Some(volume) = &entry.lock().await.volume {
                open.push(volume.clone());
            }
        }
        open
    }

    /// Closes every open LV (server shutdown).
    pub async fn close_all(&self) {
        let entries: Vec<(String, Arc<tokio::sync::Mutex<Entry>>)> =
            self.entries.lock().drain().collect();
        for (name, entry) in entries {
            if let Some(volume) = entry.lock().await.volume.take() {
                if let Err(e) = volume.close().await {
                    tracing::error!("closing {name}: {e}");
                }
            }
        }
    }

    async fn release(&self, name: &str) {
        let entry = self.entry(name);
        let mut entry = entry.lock().await;
        entry.users = entry.users.saturating_sub(1);
        if entry.users > 0 {
            return;
        }
        // Closed under the LV's lock, so a new user waits for the lease to
        // be released before taking it again.
        if let Some(volume) = entry.volume.take() {
            if let Err(e) = volume.close().await {
                tracing::error!("closing {name}: {e}");
            }
        }
    }

    /// LV reports, taken off the async workers (the service's lock can be
    /// held across a synced store write).
    async fn lv_reports(&self) -> Vec<LvReport> {
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || service.lv_reports())
            .await
            .unwrap_or_default()
    }
}

fn describe(lv: &LvReport) -> String {
    format!(
        "{} {} logical volume, {}",
        if lv.record.thin { "thin" } else { "thick" },
        lv.layout().describe(),
        Units::default().format(lv.record.size_bytes)
    )
}

#[async_trait]
impl Exports for VolumeRegistry {
    async fn list(&self) -> Vec<ExportListing> {
        self.lv_reports()
            .await
            .iter()
            .map(|lv| ExportListing {
                name: format!("{}/{}", lv.vg_name, lv.record.name),
                description: describe(lv),
            })
            .collect()
    }

    async fn open(&self, name: &str) -> Result<Export, ExportError> {
        let lv_use = VolumeRegistry::open(self, name)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => ExportError::Unknown,
                ErrorKind::Busy => ExportError::Busy(e.to_string()),
                _ => ExportError::Failed(e.to_string()),
            })?;
        let description = self
            .lv_reports()
            .await
            .iter()
            .find(|lv| format!("{}/{}", lv.vg_name, lv.record.name) == name)
            .map(describe)
            .unwrap_or_default();
        let device: Arc<dyn BlockDevice> = Arc::new(Checked::new(lv_use.volume.clone()));
        // The name was checked to be VG/LV by the open above.
        let (vg, lv) = name.split_once('/').unwrap_or((name, ""));
        Ok(Export {
            device,
            description,
            observer: Some(self.metrics.lv_io.observer(vg, lv)),
            guard: Box::new(lv_use),
        })
    }
}
