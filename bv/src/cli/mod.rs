//! The LVM verbs, as a client of the running server. Each command prints
//! LVM's success line on stdout, or one error line on stderr; the exit code
//! is 0, or 5 when anything failed (LVM's ECMD_FAILED).

mod layout;
mod report;
mod wait;

use std::path::{Path, PathBuf};

use metadata::{LvRecord, PvRecord, VgRecord};

use crate::api::client::Client;
use crate::api::{
    ChangePv, ChangeVg, CreateLv, CreatePv, CreateVg, ExtendLv, JobState, JobStatus, LvName,
    MovePv, RemoveMissing, RemovePv, RemoveVg, Reports, SetFaultPolicy, SetRecoveryRate,
    SyncAction,
};
use crate::args::{Command, LvcreateArgs, ReportArgs, ReportFormat};
use crate::size::{parse_size, parse_size_arg, SizeArg, Units, MIB};
use report::Report;

/// LVM's exit code for a failed command.
pub const EXIT_FAILED: i32 = 5;

/// Runs one CLI command; returns the exit code.
pub async fn run(command: Command, socket: &Path) -> i32 {
    let client = Client::new(socket);
    let verb = verb_name(&command);
    let mut failed = false;
    let mut fail = |message: String| {
        eprintln!("bv {verb}: {message}");
        failed = true;
    };
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Pvcreate { paths, size, force } => {
            let size_bytes = match size.map(|s| parse_size(&s, MIB)).transpose() {
                Ok(size) => size,
                Err(e) => return usage(verb, e),
            };
            for path in paths {
                let path = absolute(&path);
                let request = CreatePv {
                    path: path.clone(),
                    size_bytes,
                    force,
                };
                match client.post::<_, PvRecord>("/v1/pvcreate", &request).await {
                    Ok(_) => println!(
                        "  Physical volume \"{}\" successfully created.",
                        path.display()
                    ),
                    Err(e) => fail(e.message),
                }
            }
        }
        Command::Pvremove { paths, .. } => {
            for path in paths {
                let path = absolute(&path);
                match client
                    .post::<_, PvRecord>("/v1/pvremove", &RemovePv { path: path.clone() })
                    .await
                {
                    Ok(_) => println!(
                        "  Labels on physical volume \"{}\" successfully wiped.",
                        path.display()
                    ),
                    Err(e) => fail(e.message),
                }
            }
        }
        Command::Pvchange { fault, paths } => {
            for path in paths {
                let path = absolute(&path);
                let request = ChangePv {
                    path: path.clone(),
                    fault: fault.clone(),
                };
                match client
                    .post::<_, serde_json::Value>("/v1/pvchange", &request)
                    .await
                {
                    Ok(_) => println!(
                        "  Physical volume \"{}\" changed: injected fault {fault}",
                        path.display()
                    ),
                    Err(e) => fail(e.message),
                }
            }
        }
        Command::Pvmove { pv, wait } => {
            let path = absolute(&pv);
            let request = MovePv { path: path.clone() };
            match job(&client, "/v1/pvmove", &request, wait.background).await {
                Ok(None) => println!(
                    "  {}: moving in the background; `bv pvs` shows what is left",
                    path.display()
                ),
                Ok(Some(done)) => println!(
                    "  {}: Moved: 100.00% ({}; {})",
                    path.display(),
                    done.message.as_deref().unwrap_or_default(),
                    done.copied()
                ),
                Err(e) => fail(e),
            }
        }
        Command::Vgcreate {
            vg,
            pvs,
            extent_size,
        } => {
            let extent_bytes = match extent_size.map(|s| parse_size(&s, MIB)).transpose() {
                Ok(size) => size,
                Err(e) => return usage(verb, e),
            };
            let request = CreateVg {
                name: vg.clone(),
                pvs: pvs.iter().map(|p| absolute(p)).collect(),
                extent_bytes,
            };
            match client.post::<_, VgRecord>("/v1/vgcreate", &request).await {
                Ok(_) => println!("  Volume group \"{vg}\" successfully created"),
                Err(e) => fail(e.message),
            }
        }
        Command::Vgextend { vg, pvs } => {
            let request = ChangeVg {
                name: vg.clone(),
                pvs: pvs.iter().map(|p| absolute(p)).collect(),
            };
            match client.post::<_, VgRecord>("/v1/vgextend", &request).await {
                Ok(_) => println!("  Volume group \"{vg}\" successfully extended"),
                Err(e) => fail(e.message),
            }
        }
        Command::Vgreduce {
            vg, removemissing, ..
        } if removemissing => {
            let request = RemoveMissing { name: vg.clone() };
            match client
                .post::<_, Vec<PvRecord>>("/v1/vgreduce-removemissing", &request)
                .await
            {
                Ok(removed) if removed.is_empty() => {
                    println!("  Volume group \"{vg}\" has no failed physical volume.")
                }
                Ok(removed) => {
                    for pv in removed {
                        println!(
                            "  Removed failed \"{}\" from volume group \"{vg}\"",
                            pv.path.display()
                        );
                    }
                    println!("  Wrote out consistent volume group {vg}.");
                }
                Err(e) => fail(e.message),
            }
        }
        Command::Vgchange { vg, policy } => {
            let policy = match policy.as_str() {
                "allocate" => metadata::FaultPolicy::Allocate,
                _ => metadata::FaultPolicy::Warn,
            };
            let request = SetFaultPolicy {
                name: vg.clone(),
                policy,
            };
            match client.post::<_, VgRecord>("/v1/vgchange", &request).await {
                Ok(_) => println!("  Volume group \"{vg}\" successfully changed"),
                Err(e) => fail(e.message),
            }
        }
        Command::Vgreduce { vg, pvs, .. } => {
            let request = ChangeVg {
                name: vg.clone(),
                pvs: pvs.iter().map(|p| absolute(p)).collect(),
            };
            match client.post::<_, VgRecord>("/v1/vgreduce", &request).await {
                Ok(_) => {
                    for pv in &request.pvs {
                        println!("  Removed \"{}\" from volume group \"{vg}\"", pv.display());
                    }
                }
                Err(e) => fail(e.message),
            }
        }
        Command::Vgremove { vgs, force } => {
            for vg in vgs {
                let request = RemoveVg {
                    name: vg.clone(),
                    force,
                };
                match client.post::<_, VgRecord>("/v1/vgremove", &request).await {
                    Ok(_) => println!("  Volume group \"{vg}\" successfully removed"),
                    Err(e) => fail(e.message),
                }
            }
        }
        Command::Lvcreate(args) => {
            let request = match lvcreate_request(&args) {
                Ok(request) => request,
                Err(e) => return usage(verb, e),
            };
            match client.post::<_, LvRecord>("/v1/lvcreate", &request).await {
                Ok(lv) => println!("  Logical volume \"{}\" created.", lv.name),
                Err(e) => fail(e.message),
            }
        }
        Command::Lvextend { size, lv } => {
            let (vg, name) = match split_lv(&lv) {
                Ok(names) => names,
                Err(e) => return usage(verb, e),
            };
            let (size_bytes, relative) = match parse_size_arg(&size, MIB) {
                Ok(SizeArg::Absolute(bytes)) => (bytes, false),
                Ok(SizeArg::Plus(bytes)) => (bytes, true),
                Err(e) => return usage(verb, e),
            };
            let before = client
                .get::<Reports>("/v1/reports")
                .await
                .ok()
                .and_then(|r| {
                    r.lvs
                        .into_iter()
                        .find(|l| l.report.vg_name == vg && l.report.record.name == name)
                });
            let request = ExtendLv {
                vg: vg.clone(),
                name: name.clone(),
                size_bytes,
                relative,
            };
            match client.post::<_, LvRecord>("/v1/lvextend", &request).await {
                Ok(grown) => {
                    let units = Units::default();
                    if let Some(before) = before {
                        println!(
                            "  Size of logical volume {vg}/{name} changed from {} to {}.",
                            units.format(before.report.record.size_bytes),
                            units.format(grown.size_bytes)
                        );
                    }
                    println!("  Logical volume {vg}/{name} successfully resized.");
                }
                Err(e) => fail(e.message),
            }
        }
        Command::Lvconvert { lv, wait, .. } => {
            let (vg, name) = match split_lv(&lv) {
                Ok(names) => names,
                Err(e) => return usage(verb, e),
            };
            let request = LvName { vg, name };
            match job(&client, "/v1/lvconvert-repair", &request, wait.background).await {
                Ok(None) => println!(
                    "  Repair of {lv} started in the background; `bv lvs` shows its progress (Cpy%Sync)."
                ),
                Ok(Some(done)) => println!(
                    "  {lv}: {} ({}).",
                    done.message.as_deref().unwrap_or_default(),
                    done.copied()
                ),
                Err(e) => fail(e),
            }
        }
        Command::Lvchange {
            syncaction,
            maxrecoveryrate,
            lv,
            wait,
        } => {
            let (vg, name) = match split_lv(&lv) {
                Ok(names) => names,
                Err(e) => return usage(verb, e),
            };
            let rate = match maxrecoveryrate.as_deref().map(parse_recovery_rate) {
                Some(Err(e)) => return usage(verb, e),
                Some(Ok(rate)) => Some(rate),
                None => None,
            };
            let rate_set = match rate {
                None => true,
                Some(max_recovery_rate) => {
                    let request = SetRecoveryRate {
                        vg: vg.clone(),
                        name: name.clone(),
                        max_recovery_rate,
                    };
                    match client
                        .post::<_, LvRecord>("/v1/lvchange-recovery-rate", &request)
                        .await
                    {
                        Ok(_) => {
                            println!("  Logical volume {lv} changed.");
                            true
                        }
                        Err(e) => {
                            fail(e.message);
                            false
                        }
                    }
                }
            };
            if let Some(syncaction) = syncaction.filter(|_| rate_set) {
                let request = SyncAction {
                    vg,
                    name,
                    repair: syncaction == "repair",
                };
                match job(&client, "/v1/lvchange-syncaction", &request, wait.background).await {
                    Ok(None) => println!(
                        "  {syncaction} of {lv} started in the background; `bv lvs -o +raid_sync_action,raid_mismatch_count` follows it."
                    ),
                    Ok(Some(done)) => println!(
                        "  {lv}: {syncaction} done: {}.",
                        done.message.unwrap_or_default()
                    ),
                    Err(e) => fail(e),
                }
            }
        }
        Command::Lvremove { lvs, .. } => {
            for lv in lvs {
                let (vg, name) = match split_lv(&lv) {
                    Ok(names) => names,
                    Err(e) => {
                        fail(e);
                        continue;
                    }
                };
                match client
                    .post::<_, LvRecord>(
                        "/v1/lvremove",
                        &LvName {
                            vg,
                            name: name.clone(),
                        },
                    )
                    .await
                {
                    Ok(_) => println!("  Logical volume \"{name}\" successfully removed."),
                    Err(e) => fail(e.message),
                }
            }
        }
        Command::Pvs(args) | Command::Vgs(args) | Command::Lvs(args) => {
            let units = match Units::parse(&args.units, !args.nosuffix) {
                Ok(units) => units,
                Err(e) => return usage(verb, e),
            };
            match client.get::<Reports>("/v1/reports").await {
                Ok(reports) => {
                    let report = match verb {
                        "pvs" => {
                            let pvs = select(&reports.pvs, &args, |pv| {
                                pv.report.record.path.display().to_string()
                            });
                            pvs.map(|pvs| Report::pvs(&pvs, units))
                        }
                        "vgs" => select(&reports.vgs, &args, |vg| vg.record.name.clone())
                            .map(|vgs| Report::vgs(&vgs, units)),
                        _ => select(&reports.lvs, &args, |lv| {
                            format!("{}/{}", lv.report.vg_name, lv.report.record.name)
                        })
                        .map(|lvs| Report::lvs(&lvs, units)),
                    };
                    let report = match (report, &args.options) {
                        (Ok(report), Some(options)) => report.select(options),
                        (report, _) => report,
                    };
                    match report {
                        Ok(report) => match args.format {
                            ReportFormat::Json => println!("{}", report.json()),
                            ReportFormat::Basic => print!("{}", report.table(!args.noheadings)),
                        },
                        Err(e) => fail(e),
                    }
                }
                Err(e) => fail(e.message),
            }
        }
        Command::Pvdisplay { paths } => match client.get::<Reports>("/v1/reports").await {
            Ok(reports) => {
                let wanted: Vec<PathBuf> = paths.iter().map(|p| absolute(p)).collect();
                for path in &wanted {
                    if !reports.pvs.iter().any(|pv| &pv.report.record.path == path) {
                        fail(format!("physical volume \"{}\" not found", path.display()));
                    }
                }
                for pv in reports
                    .pvs
                    .iter()
                    .filter(|pv| wanted.is_empty() || wanted.contains(&pv.report.record.path))
                {
                    println!("{}", report::pvdisplay(pv));
                }
            }
            Err(e) => fail(e.message),
        },
        Command::Vgdisplay { vgs } => match client.get::<Reports>("/v1/reports").await {
            Ok(reports) => {
                for name in &vgs {
                    if !reports.vgs.iter().any(|vg| &vg.record.name == name) {
                        fail(format!("volume group \"{name}\" not found"));
                    }
                }
                for vg in reports
                    .vgs
                    .iter()
                    .filter(|vg| vgs.is_empty() || vgs.contains(&vg.record.name))
                {
                    println!("{}", report::vgdisplay(vg, &reports));
                }
            }
            Err(e) => fail(e.message),
        },
        Command::Lvdisplay { lvs } => match client.get::<Reports>("/v1/reports").await {
            Ok(reports) => {
                let full = |lv: &crate::api::LvStatus| {
                    format!("{}/{}", lv.report.vg_name, lv.report.record.name)
                };
                for name in &lvs {
                    if !reports.lvs.iter().any(|lv| &full(lv) == name) {
                        fail(format!("logical volume \"{name}\" not found"));
                    }
                }
                for lv in reports
                    .lvs
                    .iter()
                    .filter(|lv| lvs.is_empty() || lvs.contains(&full(lv)))
                {
                    println!("{}", report::lvdisplay(lv));
                }
            }
            Err(e) => fail(e.message),
        },
    }
    if failed {
        EXIT_FAILED
    } else {
        0
    }
}

/// Starts a server job; unless `background`, follows it to its end and
/// returns its final status (an error if it failed).
async fn job<B: serde::Serialize>(
    client: &Client,
    route: &str,
    request: &B,
    background: bool,
) -> Result<Option<JobStatus>, String> {
    let started: JobStatus = client.post(route, request).await.map_err(|e| e.message)?;
    if background {
        return Ok(None);
    }
    let status = wait::follow(client, started).await?;
    match status.state {
        JobState::Done => Ok(Some(status)),
        _ => Err(status.message.unwrap_or_else(|| "the job failed".into())),
    }
}

fn lvcreate_request(args: &LvcreateArgs) -> Result<CreateLv, String> {
    let (size, thin) = match (&args.size, &args.virtual_size) {
        (Some(size), None) => (size, false),
        (None, Some(size)) => (size, true),
        _ => return Err("give exactly one of -L (thick) or -V (thin)".into()),
    };
    Ok(CreateLv {
        vg: args.vg.clone(),
        name: args.name.clone(),
        size_bytes: parse_size(size, MIB)?,
        thin,
        layout: layout::layout_from(args)?,
        max_recovery_rate: args
            .maxrecoveryrate
            .as_deref()
            .map_or(Ok(0), parse_recovery_rate)?,
        raid_integrity: args.raidintegrity.as_deref() == Some("y"),
    })
}

/// A `--maxrecoveryrate`: bytes per second, KiB when no unit is given (as
/// in LVM).
fn parse_recovery_rate(text: &str) -> Result<u64, String> {
    parse_size(text, 1 << 10).map_err(|e| format!("--maxrecoveryrate: {e}"))
}

/// Keeps the rows whose name is listed (all when none is); an unknown name
/// is an error, as in LVM.
fn select<T: Clone>(
    rows: &[T],
    args: &ReportArgs,
    name: impl Fn(&T) -> String,
) -> Result<Vec<T>, String> {
    if args.names.is_empty() {
        return Ok(rows.to_vec());
    }
    let names: Vec<String> = args
        .names
        .iter()
        .map(|n| {
            let path = Path::new(n);
            if path.is_relative() && n.contains(std::path::MAIN_SEPARATOR) && Path::new(n).exists()
            {
                absolute(path).display().to_string()
            } else {
                n.clone()
            }
        })
        .collect();
    for wanted in &names {
        if !rows.iter().any(|row| &name(row) == wanted) {
            return Err(format!("\"{wanted}\" not found"));
        }
    }
    Ok(rows
        .iter()
        .filter(|row| names.contains(&name(row)))
        .cloned()
        .collect())
}

fn split_lv(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => {
            Ok((vg.to_string(), lv.to_string()))
        }
        _ => Err(format!("\"{text}\": name a logical volume as VG/LV")),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn usage(verb: &str, message: String) -> i32 {
    eprintln!("bv {verb}: {message}");
    crate::EXIT_USAGE
}

fn verb_name(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) => "serve",
        Command::Pvcreate { .. } => "pvcreate",
        Command::Pvs(_) => "pvs",
        Command::Pvdisplay { .. } => "pvdisplay",
        Command::Pvremove { .. } => "pvremove",
        Command::Pvchange { .. } => "pvchange",
        Command::Pvmove { .. } => "pvmove",
        Command::Vgcreate { .. } => "vgcreate",
        Command::Vgextend { .. } => "vgextend",
        Command::Vgreduce { .. } => "vgreduce",
        Command::Vgchange { .. } => "vgchange",
        Command::Vgs(_) => "vgs",
        Command::Vgdisplay { .. } => "vgdisplay",
        Command::Vgremove { .. } => "vgremove",
        Command::Lvcreate(_) => "lvcreate",
        Command::Lvs(_) => "lvs",
        Command::Lvdisplay { .. } => "lvdisplay",
        Command::Lvextend { .. } => "lvextend",
        Command::Lvremove { .. } => "lvremove",
        Command::Lvconvert { .. } => "lvconvert",
        Command::Lvchange { .. } => "lvchange",
    }
}
