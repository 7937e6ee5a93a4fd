//! Prometheus metrics for `GET /metrics`.
//!
//! ```text
//!  NBD request ──▶ LvIo (atomics, per LV) ───────┐  long-lived registry
//!  scrape ──▶ Server::metrics_snapshot ──▶ state  │  + one made per scrape
//!             (reports, PV wrappers, jobs, NBD)   └─▶ text format 0.0.4
//! ```
//!
//! Two kinds of metric, kept apart by where their numbers come from:
//!
//! - **Recorded on the data path**: per-LV operations, errors, bytes and
//!   latency ([`lv_io`]). Pre-resolved counters and a lock-free histogram
//!   per LV and operation, in a registry that lives as long as the server.
//! - **Read at scrape time** ([`state`]): PV, VG, LV and job state, PV
//!   error and fault counters, NBD connections. The server takes a
//!   [`Snapshot`] and the families are built fresh for that scrape, so no
//!   state change anywhere has to remember to update a gauge.
//!
//! Names follow Prometheus's conventions: `blockvirt_` prefix, base units
//! in the name (`_bytes`, `_seconds`, `_ratio`), `_total` on counters and
//! only on counters. The README lists every metric.
//!
//! The `prometheus` crate (TiKV's) writes the classic text format 0.0.4,
//! which every Prometheus scrapes and `promtool check metrics` lints; see
//! docs/ARCHITECTURE.md for why not `prometheus-client`.

pub mod lv_io;
pub mod snapshot;
mod state;

use prometheus::{Encoder, Registry, TextEncoder};

pub use lv_io::LvIoMetrics;
pub use snapshot::Snapshot;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The server's metrics: the long-lived families and how to render a scrape.
pub struct Metrics {
    registry: Registry,
    pub lv_io: LvIoMetrics,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let lv_io = LvIoMetrics::new(&registry)?;
        Ok(Metrics { registry, lv_io })
    }

    /// The text of one scrape: the data-path families and the state in
    /// `snapshot`, sorted by name.
    pub fn render(&self, snapshot: &Snapshot) -> prometheus::Result<String> {
        let mut families = self.registry.gather();
        families.extend(state::families(snapshot)?);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = Vec::new();
        TextEncoder::new().encode(&families, &mut text)?;
        String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
