//! The server's side of `GET /metrics`: one snapshot of its state per
//! scrape (reports from the metadata service, counters of the PV device
//! wrappers, jobs, NBD counts), rendered with the data-path series.

use std::collections::HashMap;

use crate::api::ApiError;
use crate::metrics::snapshot::{NbdCounts, PvDeviceSample, PvSample};
use crate::metrics::Snapshot;

use super::{PvState, Server};

impl Server {
    /// The text of one scrape.
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let reports = self.reports().await;
        let mut devices: HashMap<metadata::PvId, PvDeviceSample> = self
            .pv_states
            .lock()
            .iter()
            .filter_map(|(id, state)| match state {
                PvState::Online(device) => Some((
                    *id,
                    PvDeviceSample {
                        errors: device.errors(),
                        mode: device.inner().mode(),
                        injected: device.inner().injected(),
                    },
                )),
                PvState::Missing(_) => None,
            })
            .collect();
        let snapshot = Snapshot {
            pvs: reports
                .pvs
                .into_iter()
                .map(|status| PvSample {
                    device: devices.remove(&status.report.record.id),
                    status,
                })
                .collect(),
            vgs: reports.vgs,
            lvs: reports.lvs,
            jobs: self.jobs.list(),
            job_totals: self.jobs.totals(),
            nbd: NbdCounts {
                connections_open: self.nbd_stats.connections_open(),
                connections_accepted: self.nbd_stats.connections_accepted(),
                requests_in_flight: self.nbd_stats.requests_in_flight(),
            },
        };
        self.metrics
            .render(&snapshot)
            .map_err(|e| ApiError::new("internal", format!("rendering metrics: {e}")))
    }
}
