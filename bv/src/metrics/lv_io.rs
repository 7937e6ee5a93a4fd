//! Per-LV I/O metrics, recorded on the data path: the NBD gateway tells
//! each export's [`LvIo`] about every request it answers.
//!
//! The labelled children are looked up once, when an LV's export is first
//! opened, and kept in [`LvIo`]; a request then costs two or three relaxed
//! atomic adds and a lock-free histogram observation, with no label lookup
//! and no lock. Series live from an LV's first open until `lvremove` (or
//! `vgremove -f`), so counters survive reconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateways::observe::{IoObserver, IoOp};
use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use prometheus::{Registry, Result};

const LABELS: [&str; 3] = ["vg", "lv", "op"];

/// Storage latency spans from tens of microseconds (a cached 4 KiB read)
/// to seconds (a flush behind a slow disk, a degraded rebuild read):
/// 50 µs doubling 19 times, up to 13.1 s, then +Inf.
fn latency_buckets() -> Vec<f64> {
    (0..19).map(|i| 50e-6 * f64::powi(2.0, i)).collect()
}

/// Ops whose range is data moved (or released), so their bytes count.
fn moves_bytes(op: IoOp) -> bool {
    matches!(
        op,
        IoOp::Read | IoOp::Write | IoOp::Trim | IoOp::WriteZeroes
    )
}

/// The families behind every LV's I/O series, and the LVs seen so far.
pub struct LvIoMetrics {
    operations: IntCounterVec,
    errors: IntCounterVec,
    bytes: IntCounterVec,
    duration: HistogramVec,
    lvs: Mutex<HashMap<(String, String), Arc<LvIo>>>,
}

impl LvIoMetrics {
    pub fn new(registry: &Registry) -> Result<Self> {
        let operations = IntCounterVec::new(
            Opts::new(
                "blockvirt_lv_operations_total",
                "Requests answered on the LV's export, by operation (refused ones included).",
            ),
            &LABELS,
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "blockvirt_lv_errors_total",
                "Requests on the LV's export answered with an error, by operation.",
            ),
            &LABELS,
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "blockvirt_lv_bytes_total",
                "Bytes read, written, trimmed or zeroed by successful requests on the LV's export.",
            ),
            &LABELS,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "blockvirt_lv_operation_duration_seconds",
                "Time from reading a request's header to its reply being ready, by operation.",
            )
            .buckets(latency_buckets()),
            &LABELS,
        )?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(LvIoMetrics {
            operations,
            errors,
            bytes,
            duration,
            lvs: Mutex::new(HashMap::new()),
        })
    }

    /// The observer for `vg/lv`'s export (made, with its series at zero,
    /// on first use).
    pub fn observer(&self, vg: &str, lv: &str) -> Arc<LvIo> {
        let mut lvs = self.lvs.lock();
        lvs.entry((vg.to_string(), lv.to_string()))
            .or_insert_with(|| {
                Arc::new(LvIo {
                    ops: IoOp::ALL.map(|op| {
                        let labels = [vg, lv, op.name()];
                        OpSeries {
                            operations: self.operations.with_label_values(&labels),
                            errors: self.errors.with_label_values(&labels),
                            bytes: moves_bytes(op).then(|| self.bytes.with_label_values(&labels)),
                            duration: self.duration.with_label_values(&labels),
                        }
                    }),
                })
            })
            .clone()
    }

    /// Drops the series of a removed LV.
    pub fn forget(&self, vg: &str, lv: &str) {
        if self
            .lvs
            .lock()
            .remove(&(vg.to_string(), lv.to_string()))
            .is_none()
        {
            return;
        }
        for op in IoOp::ALL {
            let labels = [vg, lv, op.name()];
            // Absent children (bytes of a flush) are not an error here.
            let _ = self.operations.remove_label_values(&labels);
            let _ = self.errors.remove_label_values(&labels);
            let _ = self.bytes.remove_label_values(&labels);
            let _ = self.duration.remove_label_values(&labels);
        }
    }

    /// Drops the series of every LV of a removed VG.
    pub fn forget_vg(&self, vg: &str) {
        let names: Vec<String> = self
            .lvs
            .lock()
            .keys()
            .filter(|(v, _)| v == vg)
            .map(|(_, lv)| lv.clone())
            .collect();
        for lv in names {
            self.forget(vg, &lv);
        }
    }
}

struct OpSeries {
    operations: IntCounter,
    errors: IntCounter,
    bytes: Option<IntCounter>,
    duration: Histogram,
}

/// One LV's series, shared by every connection to its export.
pub struct LvIo {
    ops: [OpSeries; IoOp::ALL.len()],
}

impl IoObserver for LvIo {
    fn completed(&self, op: IoOp, len_bytes: u64, elapsed: Duration, ok: bool) {
        let series = &self.ops[op.index()];
        series.operations.inc();
        series.duration.observe(elapsed.as_secs_f64());
        if !ok {
            series.errors.inc();
        } else if let Some(bytes) = &series.bytes {
            bytes.inc_by(len_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, name: &str, op: &str) -> Option<f64> {
        let family = registry.gather().into_iter().find(|f| f.name() == name)?;
        let metric = family
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.value() == op))?
            .clone();
        Some(if name.ends_with("_seconds") {
            metric.get_histogram().get_sample_count() as f64
        } else {
            metric.get_counter().get_value()
        })
    }

    #[test]
    fn requests_move_their_op_series_and_forget_removes_them() {
        let registry = Registry::new();
        let metrics = LvIoMetrics::new(&registry).unwrap();
        let io = metrics.observer("vg", "a");
        assert!(Arc::ptr_eq(&io, &metrics.observer("vg", "a")));
        let ms = Duration::from_millis(1);
        io.completed(IoOp::Write, 8192, ms, true);
        io.completed(IoOp::Write, 4096, ms, false);
        io.completed(IoOp::Flush, 0, ms, true);
        io.completed(IoOp::BlockStatus, 1 << 30, ms, true);

        let write = |name| value(&registry, name, "write");
        assert_eq!(write("blockvirt_lv_operations_total"), Some(2.0));
        assert_eq!(write("blockvirt_lv_errors_total"), Some(1.0));
        assert_eq!(write("blockvirt_lv_bytes_total"), Some(8192.0));
        assert_eq!(write("blockvirt_lv_operation_duration_seconds"), Some(2.0));
        assert_eq!(
            value(&registry, "blockvirt_lv_bytes_total", "block_status"),
            None,
            "a status query moves no bytes"
        );
        assert_eq!(
            value(&registry, "blockvirt_lv_operations_total", "read"),
            Some(0.0),
            "every op's series exists from the first open"
        );

        metrics.observer("vg", "b");
        metrics.forget_vg("vg");
        assert!(registry.gather().is_empty(), "{:?}", registry.gather());
    }

    #[test]
    fn buckets_span_fifty_microseconds_to_seconds() {
        let buckets = latency_buckets();
        assert!((buckets[0] - 50e-6).abs() < 1e-12);
        assert!(buckets[buckets.len() - 1] > 10.0);
        assert!(buckets.windows(2).all(|w| w[0] < w[1]));
    }
}
