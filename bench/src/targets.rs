//! What the fio benchmark measures, one row per export:
//!
//! - `nbdkit` and `qemu-nbd`, each on a sparse file of the export size;
//! - Blockvirt: a thin LV of the same size per layout, all in one VG of 7
//!   PV files (enough for ec 4+2's 6 legs);
//! - for each redundant layout, the same LV with one PV failed: it lives in
//!   a VG of exactly as many PVs as the layout has legs, and the first PV
//!   is failed (`bv pvchange --fault fail`) once the data is written. Every
//!   extent then runs with one leg gone, and no spare PV could take it over.
//!
//! Every file sits in the `bv serve` test directory, so peers and PVs share
//! one filesystem. A row this build cannot set up (a layout or a verb not
//! there yet) keeps the one-line reason and is reported as n/a.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use tests::Server;

use crate::options::FioOptions;
use crate::process;
use crate::servers::{Cache, Peer};

const MIB: u64 = 1 << 20;
/// PVs in the VG of the healthy rows.
const HEALTHY_PVS: usize = 7;

pub struct LayoutSpec {
    /// Name on bv-bench's command line, and of the LV.
    pub name: &'static str,
    pub title: &'static str,
    /// `bv lvcreate` options.
    pub options: &'static [&'static str],
    pub legs: usize,
    pub data_legs: usize,
}

pub const LAYOUTS: [LayoutSpec; 6] = [
    LayoutSpec {
        name: "linear",
        title: "linear",
        options: &[],
        legs: 1,
        data_legs: 1,
    },
    LayoutSpec {
        name: "raid1",
        title: "raid1",
        options: &["--type", "raid1", "-m", "1"],
        legs: 2,
        data_legs: 1,
    },
    LayoutSpec {
        name: "raid1-integrity",
        title: "raid1, integrity",
        options: &["--type", "raid1", "-m", "1", "--raidintegrity", "y"],
        legs: 2,
        data_legs: 1,
    },
    LayoutSpec {
        name: "raid10",
        title: "raid10",
        options: &["--type", "raid10", "-i", "2", "-m", "1"],
        legs: 4,
        data_legs: 2,
    },
    LayoutSpec {
        name: "raid5",
        title: "raid5 3+1",
        options: &["--type", "raid5", "-i", "3"],
        legs: 4,
        data_legs: 3,
    },
    LayoutSpec {
        name: "ec",
        title: "ec 4+2",
        options: &["--type", "ec", "--ec", "4+2"],
        legs: 6,
        data_legs: 4,
    },
];

pub fn layout(name: &str) -> Option<&'static LayoutSpec> {
    LAYOUTS.iter().find(|l| l.name == name)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Nbdkit,
    QemuNbd,
    Blockvirt,
}

pub struct Target {
    pub name: String,
    pub kind: ServerKind,
    pub uri: String,
    pub pid: u32,
    /// The `bv` commands that made it.
    pub setup: Vec<String>,
    /// The PV to fail once the data is written.
    pub fail_pv: Option<PathBuf>,
    /// Why the row has no figures.
    pub unavailable: Option<String>,
    /// Copies a write puts on the disk, where plain files can do the same
    /// (`disk`): 1 for a single copy, 2 for a healthy 2-way mirror; `None`
    /// for parity layouts (reads, journal and writes in turn) and for a
    /// degraded raid10 (some writes one copy, some two).
    pub copies: Option<usize>,
}

/// Everything the benchmark runs. Fields drop in order: the peers, then
/// `bv serve` and the directory holding every file.
pub struct Lab {
    pub nbdkit: Peer,
    pub qemu_nbd: Peer,
    pub server: Server,
    pub targets: Vec<Target>,
}

impl Lab {
    pub fn start(options: &FioOptions) -> Result<Lab> {
        let layouts: Vec<&LayoutSpec> = options.layouts.iter().filter_map(|n| layout(n)).collect();
        let server = Server::start_with(&[]);
        check_free_space(&server, options.size_mib * MIB, &layouts)?;
        let file = |name: &str| -> Result<PathBuf> {
            let path = server.path(name);
            std::fs::File::create(&path)?.set_len(options.size_mib * MIB)?;
            Ok(path)
        };
        let nbdkit = Peer::nbdkit(&file("nbdkit.img")?, Cache::Bypass)?;
        let qemu_nbd = Peer::qemu_nbd(&file("qemu-nbd.img")?, Cache::Bypass)?;
        let mut lab = Lab {
            targets: vec![
                peer_target(&nbdkit, ServerKind::Nbdkit),
                peer_target(&qemu_nbd, ServerKind::QemuNbd),
            ],
            nbdkit,
            qemu_nbd,
            server,
        };
        let pv_size = format!("{}m", 2 * options.size_mib + 256);
        lab.make_vg("bench", HEALTHY_PVS, &pv_size)?;
        for spec in &layouts {
            let target = lab.blockvirt_lv(spec, "bench", options.size_mib);
            lab.targets.push(target);
        }
        let pvchange = lab.bv(&["pvchange", "--help"]).err();
        for spec in layouts.iter().filter(|l| l.legs > 1) {
            let vg = format!("failed-{}", spec.name);
            let target = match &pvchange {
                Some(reason) => lab.unavailable(spec, reason),
                None => {
                    lab.make_vg(&vg, spec.legs, &pv_size)?;
                    let mut target = lab.blockvirt_lv(spec, &vg, options.size_mib);
                    target.fail_pv = Some(lab.server.path(&pv_name(&vg, 0)));
                    target
                }
            };
            lab.targets.push(target);
        }
        Ok(lab)
    }

    /// Fails the PVs of the rows with one PV failed; a row whose failure
    /// cannot be injected becomes n/a.
    pub fn fail_pvs(&mut self) {
        for i in 0..self.targets.len() {
            let target = &self.targets[i];
            let Some(pv) = target
                .fail_pv
                .clone()
                .filter(|_| target.unavailable.is_none())
            else {
                continue;
            };
            let pv = pv.display().to_string();
            let args = ["pvchange", "--fault", "fail", pv.as_str()];
            let result = self.bv(&args);
            let target = &mut self.targets[i];
            target.setup.push(format!("bv {}", args.join(" ")));
            target.unavailable = result.err();
        }
    }

    fn blockvirt_lv(&self, spec: &LayoutSpec, vg: &str, size_mib: u64) -> Target {
        let size = format!("{size_mib}m");
        let mut args = vec!["lvcreate", "-V", &size, "-n", spec.name, vg];
        args.extend(spec.options);
        let mut target = Target {
            name: match vg {
                "bench" => format!("Blockvirt {}", spec.title),
                _ => format!("Blockvirt {}, 1 PV failed", spec.title),
            },
            kind: ServerKind::Blockvirt,
            uri: self.server.uri(&format!("{vg}/{}", spec.name)),
            pid: self.server.pid().expect("bv serve is running"),
            setup: vec![format!("bv {}", args.join(" "))],
            fail_pv: None,
            unavailable: None,
            copies: match (spec.legs, spec.data_legs, vg == "bench") {
                (1, 1, _) | (2, 1, false) => Some(1),
                (legs, data, true) if legs == 2 * data => Some(2),
                _ => None,
            },
        };
        target.unavailable = self.bv(&args).err().or_else(|| probe(&target.uri).err());
        target
    }

    fn unavailable(&self, spec: &LayoutSpec, reason: &str) -> Target {
        Target {
            name: format!("Blockvirt {}, 1 PV failed", spec.title),
            kind: ServerKind::Blockvirt,
            uri: String::new(),
            pid: 0,
            setup: Vec::new(),
            fail_pv: None,
            unavailable: Some(reason.to_string()),
            copies: None,
        }
    }

    fn make_vg(&self, vg: &str, count: usize, pv_size: &str) -> Result<()> {
        let names: Vec<String> = (0..count).map(|i| pv_name(vg, i)).collect();
        let mut pvcreate = vec!["pvcreate", "--size", pv_size];
        pvcreate.extend(names.iter().map(String::as_str));
        let mut vgcreate = vec!["vgcreate", vg];
        vgcreate.extend(names.iter().map(String::as_str));
        for args in [pvcreate, vgcreate] {
            if let Err(reason) = self.bv(&args) {
                bail!("bv {}: {reason}", args.join(" "));
            }
        }
        Ok(())
    }

    /// Runs the `bv` CLI; an error is its one-line complaint.
    fn bv(&self, args: &[&str]) -> Result<(), String> {
        let finished = process::run(
            self.server.bv_command().args(args),
            Duration::from_secs(120),
            |_| {},
        )
        .map_err(|e| e.to_string())?;
        if finished.status.success() {
            return Ok(());
        }
        let first = finished.stderr.lines().find(|l| !l.trim().is_empty());
        Err(first.map_or_else(|| finished.reason(), str::to_string))
    }
}

fn pv_name(vg: &str, index: usize) -> String {
    format!("{vg}-pv{index}.img")
}

fn peer_target(peer: &Peer, kind: ServerKind) -> Target {
    Target {
        name: peer.name.to_string(),
        kind,
        uri: peer.uri.clone(),
        pid: peer.pid(),
        setup: Vec::new(),
        fail_pv: None,
        unavailable: None,
        copies: Some(1),
    }
}

/// Opens the export once; an error is the server's own reason, which
/// libnbd shows only in its debug output.
fn probe(uri: &str) -> Result<(), String> {
    let finished = process::run(
        Command::new("nbdinfo")
            .args(["--size", uri])
            .env("LIBNBD_DEBUG", "1"),
        Duration::from_secs(30),
        |_| {},
    )
    .map_err(|e| e.to_string())?;
    if finished.status.success() {
        return Ok(());
    }
    const MARK: &str = "server error message: ";
    let server_says = finished
        .stderr
        .lines()
        .find_map(|line| line.split_once(MARK).map(|(_, m)| m.to_string()));
    Err(server_says.unwrap_or_else(|| finished.reason()))
}

/// Refuses to start when the pre-written data would not fit.
fn check_free_space(server: &Server, size_bytes: u64, layouts: &[&LayoutSpec]) -> Result<()> {
    // Two peer files and the disk's plain files; each LV's bytes times its
    // legs over its data legs, twice for redundant layouts (healthy and
    // failed rows).
    let disk_files = crate::disk::FILE_COUNTS.into_iter().max().unwrap_or(1) as f64;
    let per_byte: f64 = 2.0
        + disk_files
        + layouts
            .iter()
            .map(|l| {
                let copies = if l.legs > 1 { 2.0 } else { 1.0 };
                copies * l.legs as f64 / l.data_legs as f64
            })
            .sum::<f64>();
    let needed = (per_byte * size_bytes as f64 * 1.1) as u64;
    let dir = std::ffi::CString::new(server.dir.path().as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is a NUL-terminated path and `stat` a valid pointer.
    if unsafe { libc::statvfs(dir.as_ptr(), &mut stat) } != 0 {
        bail!(
            "statvfs {}: {}",
            server.dir.path().display(),
            std::io::Error::last_os_error()
        );
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    if free < needed {
        bail!(
            "the benchmark writes about {} MiB under {} but only {} MiB are free \
             (use a smaller --size-mib, fewer --layouts, or TMPDIR elsewhere)",
            needed / MIB,
            server.dir.path().display(),
            free / MIB
        );
    }
    Ok(())
}
