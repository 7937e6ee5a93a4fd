//! The fio benchmark's results: medians over rounds, ratios to the peers,
//! server cost; printed as markdown tables and written as JSON.

use serde_json::{json, Value};

use crate::disk::FILE_COUNTS;
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
    /// `disk[w][c]`: the disk alone running workload `w` on `FILE_COUNTS[c]`
    /// plain files at once, one figure per round.
    pub disk: &'a [Vec<Vec<f64>>],
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

    /// The disk's median figure for workload `w` on `files` files at once.
    fn disk_figure(&self, w: usize, files: usize) -> Option<f64> {
        let c = FILE_COUNTS.iter().position(|&n| n == files)?;
        median(&self.disk[w][c])
    }

    /// What the disk alone does for row `i`'s pattern under workload `w`,
    /// per client request: reads take one copy, writes every copy.
    fn disk_rate(&self, i: usize, w: usize) -> Option<f64> {
        let copies = self.targets[i].copies?;
        let files = if WORKLOADS[w].rw.contains("write") {
            copies
        } else {
            1
        };
        Some(self.disk_figure(w, files)? / files as f64)
    }

    fn share_of_disk(&self, i: usize, w: usize) -> Option<f64> {
        Some(figure(&self.targets[i], &self.runs[i], w)? / self.disk_rate(i, w)?)
    }

    /// A 2-copy write's ceiling against a 1-copy write on this disk.
    fn mirror_ceiling(&self, w: usize) -> Option<f64> {
        if !WORKLOADS[w].rw.contains("write") {
            return None;
        }
        Some(self.disk_figure(w, 2)? / 2.0 / self.disk_figure(w, 1)?)
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

        out += "\nThe disk alone: fio's io_uring engine, O_DIRECT, on plain files beside the PVs, each file at the workload's queue depth (median)\n\n";
        out += &heading("files at once", &labels);
        for files in FILE_COUNTS {
            let cells = (0..WORKLOADS.len()).map(|w| cell(self.disk_figure(w, files), 0));
            let name = match files {
                1 => "1 file".to_string(),
                n => format!("{n} files, summed"),
            };
            out += &row(&name, cells);
        }
        let cells = (0..WORKLOADS.len()).map(|w| cell(self.mirror_ceiling(w), 2));
        out += &row("ceiling of a 2-copy write over a 1-copy write", cells);

        out += "\nShare of the disk's own rate for the same pattern (a read takes one file; a write as many files as copies, summed, per copy; n/a where no plain-file pattern matches: parity layouts, a degraded raid10)\n\n";
        out += &heading("target", &names);
        for (i, target) in self.targets.iter().enumerate() {
            let cells = (0..WORKLOADS.len()).map(|w| cell(self.share_of_disk(i, w), 2));
            out += &row(&target.name, cells);
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
        let disk: serde_json::Map<String, Value> = WORKLOADS
            .iter()
            .enumerate()
            .map(|(w, workload)| {
                let by_files: Vec<Value> = FILE_COUNTS
                    .iter()
                    .enumerate()
                    .map(|(c, &files)| {
                        json!({
                            "files": files,
                            "rounds": self.disk[w][c],
                            "median": self.disk_figure(w, files),
                        })
                    })
                    .collect();
                let entry = json!({
                    "unit": workload.unit.label(),
                    "by_files": by_files,
                    "mirror_write_ceiling": self.mirror_ceiling(w),
                });
                (workload.name.to_string(), entry)
            })
            .collect();
        let mut report = self.context.clone();
        report["targets"] = Value::Array(targets);
        report["disk"] = Value::Object(disk);
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
            "share_of_disk": self.share_of_disk(i, w),
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

    fn target(name: &str, copies: Option<usize>) -> Target {
        Target {
            name: name.to_string(),
            kind: ServerKind::Blockvirt,
            uri: String::new(),
            pid: 0,
            setup: Vec::new(),
            fail_pv: None,
            unavailable: None,
            copies,
        }
    }

    /// One round per workload, every figure `value`.
    fn runs(value: f64) -> Runs {
        let measured = || Measured {
            bytes: 1 << 30,
            iops: value,
            mib_per_s: value,
            server_cpu_s: 1.0,
            server_peak_rss_bytes: 0,
        };
        Runs {
            prewrite: None,
            by_workload: WORKLOADS.iter().map(|_| vec![measured()]).collect(),
        }
    }

    #[test]
    fn shares_of_the_disk_count_every_copy_a_write_makes() {
        let targets = [
            target("linear", Some(1)),
            target("raid1", Some(2)),
            target("raid5", None),
        ];
        let runs = [runs(50.0), runs(40.0), runs(30.0)];
        // Every workload: 100 on one file, 160 summed over two.
        let disk: Vec<Vec<Vec<f64>>> = WORKLOADS
            .iter()
            .map(|_| vec![vec![100.0], vec![160.0]])
            .collect();
        let report = Report {
            targets: &targets,
            runs: &runs,
            disk: &disk,
            context: json!({}),
        };
        let randread = 0;
        let randwrite = 1;
        assert_eq!(report.mirror_ceiling(randwrite), Some(0.8));
        assert_eq!(report.mirror_ceiling(randread), None);
        assert_eq!(report.share_of_disk(0, randwrite), Some(0.5));
        // raid1 writes two copies: the disk's 160 over two files is 80 per write.
        assert_eq!(report.share_of_disk(1, randwrite), Some(0.5));
        // and reads one: the one file's 100.
        assert_eq!(report.share_of_disk(1, randread), Some(0.4));
        assert_eq!(report.share_of_disk(2, randwrite), None);
        let json = report.json();
        assert_eq!(json["disk"]["randwrite-4k"]["mirror_write_ceiling"], 0.8);
        assert_eq!(
            json["targets"][1]["results"]["randwrite-4k"]["share_of_disk"],
            0.5
        );
        assert!(report
            .markdown("t")
            .contains("| 2 files, summed | 160 | 160 | 160 | 160 |"));
    }
}
