//! The fio benchmark's results: medians over rounds, ratios to the peers,
//! server cost; printed as markdown tables and written as JSON.

use serde_json::{json, Value};

use crate::fio::{Measured, Workload, WORKLOADS};
use crate::targets::{ServerKind, Target};

/// One target's runs: `by_workload[w]` holds a `Measured` per round.
#[derive(Default)]
pub struct Runs {
    pub prewrite: Option<Measured>,
    pub by_workload: Vec<Vec<Measured>>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// A row's median figure for workload `w`, unless the row is n/a.
fn figure(target: &Target, runs: &Runs, w: usize) -> Option<f64> {
    if target.unavailable.is_some() {
        return None;
    }
    let values: Vec<f64> = runs.by_workload[w]
        .iter()
        .map(|m| m.figure(WORKLOADS[w].unit))
        .collect();
    median(&values)
}

fn cpu_per_gib(target: &Target, runs: &Runs, w: usize) -> Option<f64> {
    let values: Vec<f64> = runs.by_workload[w]
        .iter()
        .map(Measured::cpu_s_per_gib)
        .collect();
    target
        .unavailable
        .is_none()
        .then(|| median(&values))
        .flatten()
}

fn peak_rss_mib(target: &Target, runs: &Runs) -> Option<f64> {
    let peak = runs
        .by_workload
        .iter()
        .flatten()
        .map(|m| m.server_peak_rss_bytes)
        .max();
    target
        .unavailable
        .is_none()
        .then_some(peak)
        .flatten()
        .map(|b| b as f64 / (1u64 << 20) as f64)
}

pub struct Report<'a> {
    pub targets: &'a [Target],
    pub runs: &'a [Runs],
    /// Settings, versions, command lines: written to the JSON as they are.
    pub context: Value,
}

impl Report<'_> {
    /// Workload `w`'s median figure of the first row served by `kind`.
    fn peer(&self, kind: ServerKind, w: usize) -> Option<f64> {
        let i = self.targets.iter().position(|t| t.kind == kind)?;
        figure(&self.targets[i], &self.runs[i], w)
    }

    fn ratio(&self, i: usize, kind: ServerKind, w: usize) -> Option<f64> {
        Some(figure(&self.targets[i], &self.runs[i], w)? / self.peer(kind, w)?)
    }

    pub fn markdown(&self, title: &str) -> String {
        let mut out = format!("{title}\n\n");
        let heading = |first: &str, columns: &[String]| {
            format!(
                "| {first} | {} |\n| --- |{}\n",
                columns.join(" | "),
                " ---: |".repeat(columns.len())
            )
        };
        let labels: Vec<String> = WORKLOADS
            .iter()
            .map(|w| format!("{} ({})", w.label, w.unit.label()))
            .collect();
        out += &heading("target", &labels);
        for (i, target) in self.targets.iter().enumerate() {
            let cells = (0..WORKLOADS.len()).map(|w| cell(figure(target, &self.runs[i], w), 0));
            out += &row(&target.name, cells);
        }

        out += "\nBlockvirt / nbdkit, Blockvirt / qemu-nbd (above 1: Blockvirt is faster)\n\n";
        let names: Vec<String> = WORKLOADS.iter().map(|w| w.label.to_string()).collect();
        out += &heading("target", &names);
        for (i, target) in self.targets.iter().enumerate() {
            if target.kind != ServerKind::Blockvirt {
                continue;
            }
            let cells = (0..WORKLOADS.len()).map(|w| {
                let (a, b) = (
                    self.ratio(i, ServerKind::Nbdkit, w),
                    self.ratio(i, ServerKind::QemuNbd, w),
                );
                match (a, b) {
                    (None, None) => "n/a".to_string(),
                    _ => format!("{} / {}", cell(a, 2), cell(b, 2)),
                }
            });
            out += &row(&target.name, cells);
        }

        out += "\nServer cost: peak RSS during a run (largest of all runs), CPU seconds per GiB moved (median)\n\n";
        let mut columns = vec!["peak RSS (MiB)".to_string()];
        columns.extend(WORKLOADS.iter().map(|w| format!("CPU s/GiB {}", w.label)));
        out += &heading("server, target", &columns);
        for (i, target) in self.targets.iter().enumerate() {
            let runs = &self.runs[i];
            let mut cells = vec![cell(peak_rss_mib(target, runs), 0)];
            cells.extend((0..WORKLOADS.len()).map(|w| cell(cpu_per_gib(target, runs, w), 2)));
            out += &row(&target.name, cells.into_iter());
        }

        let missing: Vec<&Target> = self
            .targets
            .iter()
            .filter(|t| t.unavailable.is_some())
            .collect();
        if !missing.is_empty() {
            out += "\nn/a:\n\n";
            for target in missing {
                let reason = target.unavailable.as_deref().unwrap_or_default();
                out += &format!("- {}: {}\n", target.name, one_line(reason));
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .zip(self.runs)
            .enumerate()
            .map(|(i, (target, runs))| {
                let results: serde_json::Map<String, Value> = WORKLOADS
                    .iter()
                    .enumerate()
                    .map(|(w, workload)| (workload.name.to_string(), self.json_cell(i, w, workload)))
                    .collect();
                json!({
                    "name": target.name,
                    "server": match target.kind {
                        ServerKind::Nbdkit => "nbdkit",
                        ServerKind::QemuNbd => "qemu-nbd",
                        ServerKind::Blockvirt => "blockvirt",
                    },
                    "uri": target.uri,
                    "setup": target.setup,
                    "unavailable": target.unavailable,
                    "prewrite": runs.prewrite.as_ref().map(measured_json),
                    "peak_rss_bytes": runs.by_workload.iter().flatten().map(|m| m.server_peak_rss_bytes).max(),
                    "results": results,
                })
            })
            .collect();
        let mut report = self.context.clone();
        report["targets"] = Value::Array(targets);
        report
    }

    fn json_cell(&self, i: usize, w: usize, workload: &Workload) -> Value {
        let (target, runs) = (&self.targets[i], &self.runs[i]);
        json!({
            "unit": workload.unit.label(),
            "rounds": runs.by_workload[w].iter().map(measured_json).collect::<Vec<_>>(),
            "median": figure(target, runs, w),
            "median_cpu_s_per_gib": cpu_per_gib(target, runs, w),
            "vs_nbdkit": self.ratio(i, ServerKind::Nbdkit, w),
            "vs_qemu_nbd": self.ratio(i, ServerKind::QemuNbd, w),
        })
    }
}

fn measured_json(m: &Measured) -> Value {
    json!({
        "bytes": m.bytes,
        "iops": m.iops,
        "mib_per_s": m.mib_per_s,
        "server_cpu_s": m.server_cpu_s,
        "cpu_s_per_gib": m.cpu_s_per_gib(),
        "server_peak_rss_bytes": m.server_peak_rss_bytes,
    })
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
}

fn row(name: &str, cells: impl Iterator<Item = String>) -> String {
    format!("| {name} | {} |\n", cells.collect::<Vec<_>>().join(" | "))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
