//! `bv-bench rebuild`: what a PV failure costs each redundant layout, and
//! how fast `lvconvert --repair` restores it, against the disk's own
//! sequential bandwidth.
//!
//! Per layout, a thick LV in a VG of nine PV files, written whole, then:
//!
//! ```text
//!  healthy   fio 4k randread QD32 (timed)
//!  fail PV 0 ─▶ one fio run, its IOPS logged every 250 ms:
//!      degraded ──(lvconvert --repair starts)── rebuilding ──(done)── repaired
//!  fail PV 1 ─▶ lvconvert --repair with nothing else running (idle rebuild)
//! ```
//!
//! A rebuild copies each lost leg onto a PE of another PV, reading the
//! survivors it is computed from: the disk traffic it causes is the copied
//! bytes times (sources + 1). Every file shares one filesystem, so that
//! traffic is set against fio's sequential read and write on a plain file
//! there.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tests::Server;

use crate::disk::DiskFiles;
use crate::fio::{self, Job, Workload, PREWRITE, WORKLOADS};
use crate::options::RebuildOptions;
use crate::process;
use crate::targets::{layout, LayoutSpec};

const MIB: u64 = 1 << 20;
/// PVs per VG: after two failures every layout (ec 4+2 has six legs) still
/// finds a PV outside an extent's other legs.
const PVS: usize = 9;
/// Seconds of the logged run before the repair starts.
const DEGRADED_S: u64 = 3;
/// fio's IOPS log interval.
const LOG_MS: u64 = 250;

/// One layout's figures.
struct Figures {
    healthy_iops: f64,
    degraded_iops: f64,
    rebuilding_iops: f64,
    repaired_iops: Option<f64>,
    loaded: Repair,
    idle: Repair,
}

/// A finished `lvconvert --repair`.
struct Repair {
    copied_mib: f64,
    seconds: f64,
}

impl Repair {
    fn mib_per_s(&self) -> f64 {
        self.copied_mib / self.seconds.max(1e-6)
    }
}

pub fn run(options: &RebuildOptions) -> Result<()> {
    let fio_version = fio::check_installed()?;
    let server = Server::start_with(&[]);
    let (disk_write, disk_read) = {
        let disk = DiskFiles::create(server.dir.path(), options.size_mib)?;
        let runtime = options.runtime_s;
        (
            disk.measure(&WORKLOADS[3], 1, runtime, 1)?,
            disk.measure(&WORKLOADS[2], 1, runtime, 1)?,
        )
    };
    let mut rows = Vec::new();
    for name in &options.layouts {
        let spec = layout(name).context("layout checked by the options")?;
        process::check_interrupted()?;
        eprintln!("bv-bench rebuild: {}", spec.title);
        let figures =
            measure(&server, spec, options).with_context(|| format!("measuring {}", spec.title))?;
        rows.push((spec, figures));
    }
    let table = markdown(&rows, disk_write, disk_read, options, &fio_version);
    println!("{table}");
    if let Some(path) = &options.json {
        let report = json!({
            "fio": fio_version,
            "size_mib": options.size_mib,
            "runtime_s": options.runtime_s,
            "max_recovery_rate": options.max_recovery_rate,
            "disk_seq_write_mib_per_s": disk_write,
            "disk_seq_read_mib_per_s": disk_read,
            "layouts": rows.iter().map(|(spec, f)| row_json(spec, f)).collect::<Vec<Value>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

fn measure(server: &Server, spec: &LayoutSpec, options: &RebuildOptions) -> Result<Figures> {
    let vg = format!("rebuild-{}", spec.name);
    let pvs: Vec<String> = (0..PVS)
        .map(|i| {
            server
                .path(&format!("{vg}-pv{i}.img"))
                .display()
                .to_string()
        })
        .collect();
    // Room for the LV on the seven PVs left after two failures.
    let raw_mib = options.size_mib * spec.legs as u64 / spec.data_legs as u64;
    let pv_size = format!("{}m", raw_mib / (PVS as u64 - 2) + 256);
    let mut pvcreate = vec!["pvcreate", "--size", pv_size.as_str()];
    pvcreate.extend(pvs.iter().map(String::as_str));
    let mut vgcreate = vec!["vgcreate", vg.as_str()];
    vgcreate.extend(pvs.iter().map(String::as_str));
    let size = format!("{}m", options.size_mib);
    let mut lvcreate = vec!["lvcreate", "-L", size.as_str(), "-n", "lv", vg.as_str()];
    lvcreate.extend(spec.options);
    if let Some(rate) = &options.max_recovery_rate {
        lvcreate.extend(["--maxrecoveryrate", rate.as_str()]);
    }
    for args in [pvcreate, vgcreate, lvcreate] {
        bv(server, &args)?;
    }
    let lv = format!("{vg}/lv");
    let uri = server.uri(&lv);
    let pid = server.pid().context("bv serve is running")?;
    let size_bytes = options.size_mib * MIB;
    let scratch = tempfile::tempdir()?;
    let job = |workload: &'static Workload, timed| Job {
        workload,
        uri: &uri,
        size_bytes,
        timed,
    };
    fio::run(&job(&PREWRITE, None), pid, scratch.path())?;
    let randread = &WORKLOADS[0];
    let healthy = fio::run(
        &job(randread, Some((options.runtime_s, 2))),
        pid,
        scratch.path(),
    )?;

    bv(server, &["pvchange", "--fault", "fail", &pvs[0]])?;
    let logged = job(randread, Some((DEGRADED_S + options.runtime_s, 0)));
    let (loaded, window) = repair_under_load(server, &lv, &logged, scratch.path())?;
    let log = read_iops_log(scratch.path())?;
    let average = |from: f64, to: f64| average_iops(&log, from, to);

    bv(server, &["pvchange", "--fault", "fail", &pvs[1]])?;
    let idle = repair(server, &lv)?;

    let result = Figures {
        healthy_iops: healthy.iops,
        degraded_iops: average(0.0, window.0).context("no IOPS logged before the repair")?,
        rebuilding_iops: average(window.0, window.1).context("no IOPS logged during the repair")?,
        repaired_iops: average(window.1, f64::INFINITY),
        loaded,
        idle,
    };
    bv(server, &["vgremove", "-f", &vg])?;
    for pv in &pvs {
        let _ = std::fs::remove_file(pv);
    }
    Ok(result)
}

/// Runs `job` with its IOPS logged; starts `lvconvert --repair` after
/// [`DEGRADED_S`] seconds. Returns the repair and the seconds into the run
/// at which it started and ended (the run's end if it outlasted fio).
fn repair_under_load(
    server: &Server,
    lv: &str,
    job: &Job,
    scratch: &Path,
) -> Result<(Repair, (f64, f64))> {
    let mut repair: Option<(RepairChild, f64)> = None;
    let mut ended: Option<f64> = None;
    let mut spawn_error = None;
    let limit = Duration::from_secs(DEGRADED_S + job.timed.map_or(0, |t| t.0) + 120);
    let finished = process::run(
        Command::new("fio")
            .current_dir(scratch)
            .args(job.args())
            .arg("--write_iops_log=rebuild")
            .arg(format!("--log_avg_msec={LOG_MS}")),
        limit,
        |elapsed| {
            let at = elapsed.as_secs_f64();
            if repair.is_none() && spawn_error.is_none() && at >= DEGRADED_S as f64 {
                match RepairChild::spawn(server, lv) {
                    Ok(child) => repair = Some((child, at)),
                    Err(e) => spawn_error = Some(e),
                }
            }
            if ended.is_none() && repair.as_mut().is_some_and(|(child, _)| child.has_ended()) {
                ended = Some(at);
            }
        },
    )?;
    if let Some(e) = spawn_error {
        return Err(e);
    }
    if !finished.status.success() {
        bail!("fio under the repair: {}", finished.reason());
    }
    let (child, started) = repair.context("fio ended before the repair started")?;
    let end = ended.unwrap_or(f64::INFINITY);
    Ok((child.finish()?, (started, end)))
}

/// `bv lvconvert --repair`, run in the foreground (it waits for the job);
/// killed if dropped before it finished.
struct RepairChild(Option<Child>);

impl RepairChild {
    fn spawn(server: &Server, lv: &str) -> Result<RepairChild> {
        let child = server
            .bv_command()
            .args(["lvconvert", "--repair", lv])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bv lvconvert --repair")?;
        Ok(RepairChild(Some(child)))
    }

    fn has_ended(&mut self) -> bool {
        let child = self.0.as_mut().expect("running");
        matches!(child.try_wait(), Ok(Some(_)))
    }

    fn finish(mut self) -> Result<Repair> {
        let child = self.0.take().expect("running");
        let output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "lvconvert --repair: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        parse_repair(&stdout)
    }
}

impl Drop for RepairChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn repair(server: &Server, lv: &str) -> Result<Repair> {
    let finished = process::run_ok(
        server.bv_command().args(["lvconvert", "--repair", lv]),
        Duration::from_secs(3600),
    )?;
    parse_repair(&finished.stdout)
}

/// Reads "(96.0 MiB in 0.41 s, 234.1 MiB/s)" from lvconvert's last line.
fn parse_repair(stdout: &str) -> Result<Repair> {
    let inside = stdout
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside)
        .with_context(|| format!("no figures in lvconvert's output: {stdout}"))?;
    let words: Vec<&str> = inside.split_whitespace().collect();
    match words[..] {
        [mib, "MiB", "in", seconds, "s,", ..] => Ok(Repair {
            copied_mib: mib.parse()?,
            seconds: seconds.parse()?,
        }),
        _ => bail!("unexpected lvconvert output: {stdout}"),
    }
}

/// fio's IOPS log: (seconds into the run, IOPS over the interval ending then).
fn read_iops_log(scratch: &Path) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(scratch.join("rebuild_iops.1.log"))
        .context("reading fio's IOPS log")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let ms: f64 = fields.next()?.parse().ok()?;
            let iops: f64 = fields.next()?.parse().ok()?;
            Some((ms / 1000.0, iops))
        })
        .collect())
}

/// Mean IOPS of the log intervals that lie wholly between `from` and `to`.
fn average_iops(log: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    let interval = LOG_MS as f64 / 1000.0;
    let inside: Vec<f64> = log
        .iter()
        .filter(|(end, _)| end - interval >= from && *end <= to)
        .map(|(_, iops)| *iops)
        .collect();
    (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
}

fn bv(server: &Server, args: &[&str]) -> Result<()> {
    process::run_ok(server.bv_command().args(args), Duration::from_secs(600))?;
    Ok(())
}

/// Legs a rebuilt leg is computed from: one copy for mirrors, the data
/// shards' worth for parity layouts.
fn sources(spec: &LayoutSpec) -> u64 {
    if spec.legs == 2 * spec.data_legs {
        1
    } else {
        spec.data_legs as u64
    }
}

fn markdown(
    rows: &[(&LayoutSpec, Figures)],
    disk_write: f64,
    disk_read: f64,
    options: &RebuildOptions,
    fio_version: &str,
) -> String {
    let limit = match &options.max_recovery_rate {
        Some(rate) => format!("rebuilds limited to {rate} per second (`--maxrecoveryrate`)"),
        None => "rebuilds unlimited".into(),
    };
    let mut out = format!(
        "{fio_version}, {} MiB thick LVs in VGs of {PVS} PV files; 4k randread QD32 IOPS; \
         the disk: {disk_write:.0} MiB/s sequential write, {disk_read:.0} MiB/s read; {limit}\n\n\
         | layout | healthy | 1 PV failed | rebuilding | repaired | rebuild MiB/s under load | \
         rebuild MiB/s idle | disk MiB/s the idle rebuild moves | of the disk's write bandwidth |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        options.size_mib,
    );
    for (spec, f) in rows {
        let traffic = f.idle.mib_per_s() * (sources(spec) + 1) as f64;
        out += &format!(
            "| {} | {:.0} | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {} | {:.0} | {:.0} | {:.0} | {:.0}% |\n",
            spec.title,
            f.healthy_iops,
            f.degraded_iops,
            f.degraded_iops / f.healthy_iops,
            f.rebuilding_iops,
            f.rebuilding_iops / f.healthy_iops,
            f.repaired_iops
                .map_or("n/a (the repair outlasted fio)".into(), |v| format!("{v:.0}")),
            f.loaded.mib_per_s(),
            f.idle.mib_per_s(),
            traffic,
            100.0 * f.idle.mib_per_s() / disk_write,
        );
    }
    out
}

fn row_json(spec: &LayoutSpec, f: &Figures) -> Value {
    json!({
        "layout": spec.name,
        "healthy_iops": f.healthy_iops,
        "degraded_iops": f.degraded_iops,
        "rebuilding_iops": f.rebuilding_iops,
        "repaired_iops": f.repaired_iops,
        "rebuild_under_load": {"copied_mib": f.loaded.copied_mib, "seconds": f.loaded.seconds},
        "rebuild_idle": {"copied_mib": f.idle.copied_mib, "seconds": f.idle.seconds},
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn repair_figures_are_read_from_lvconvert() {
        let out = "  vg/lv: rebuilt 3 legs of 3 extents (12.0 MiB in 0.50 s, 24.0 MiB/s).\n";
        let repair = parse_repair(out).unwrap();
        assert_eq!((repair.copied_mib, repair.seconds), (12.0, 0.5));
        assert!(parse_repair("  vg/lv: nothing to repair.\n").is_err());
    }

    #[test]
    fn iops_average_only_whole_intervals_in_the_window() {
        let log = [(0.25, 10.0), (0.5, 20.0), (0.75, 30.0), (1.0, 40.0)];
        assert_eq!(average_iops(&log, 0.25, 0.75), Some(25.0));
        assert_eq!(average_iops(&log, 0.3, 0.74), None);
        assert_eq!(average_iops(&log, 0.0, f64::INFINITY), Some(25.0));
    }
}
