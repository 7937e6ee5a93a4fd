//! Maintenance jobs that run online, in the background, with progress:
//! `lvconvert --repair` (recover), `lvchange --syncaction check|repair`
//! and `pvmove`.
//!
//! A job opens its LV through the volume registry, so it shares the one
//! `ThinVolume` NBD clients use (or takes the LV's lease if none is
//! connected), and works one extent at a time with that extent to itself:
//! I/O to every other extent goes on. Progress is counted in extents and
//! kept here for `lvs` and the CLI's progress bar; finished jobs are kept
//! (the last few) so their outcome can be read back.
//!
//! One job of a kind per target at a time: a second `lvconvert --repair` of
//! the same LV is refused while the first runs; a repair started while a
//! check runs goes ahead (both take each extent in turn).
//!
//! Each job keeps to its LV's `--maxrecoveryrate` (`pace.rs`), counting
//! the bytes of the legs it writes (repair, pvmove) or of each leg it
//! verifies (check, repair).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use blockvirt::volume::ScrubReport;
use blockvirt::ErrorKind;
use futures::StreamExt;
use metadata::PvId;
use parking_lot::Mutex;

use super::pace::Pace;
use super::Server;
use crate::api::{ApiError, JobKind, JobState, JobStatus};
use crate::metrics::snapshot::JobTotals;

/// Finished jobs kept for reading back.
const FINISHED_KEPT: usize = 64;

/// Extents a repair rebuilds at once: each copies one extent in 1 MiB
/// steps, and several keep every surviving PV busy.
const REBUILDS_IN_FLIGHT: usize = 4;

#[derive(Default)]
pub struct Jobs {
    next_id: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<Job>>>,
    /// Bad copies found by the last check or repair, by LV.
    last_mismatches: Mutex<HashMap<String, u64>>,
    /// What jobs no longer kept had done, by kind, so totals never shrink.
    retired: Mutex<HashMap<JobKind, (u64, u64)>>,
}

pub struct Job {
    started: Instant,
    status: Mutex<JobStatus>,
}

impl Jobs {
    /// Registers a running job, unless one of the same kind already runs
    /// on `target`.
    fn begin(&self, kind: JobKind, target: &str) -> Result<Arc<Job>, ApiError> {
        let mut all = self.all.lock();
        let same_kind = |k: JobKind| match kind {
            JobKind::Check | JobKind::Repair => matches!(k, JobKind::Check | JobKind::Repair),
            _ => k == kind,
        };
        if let Some(running) = all.values().find(|job| {
            let s = job.status.lock();
            s.state == JobState::Running && s.target == target && same_kind(s.kind)
        }) {
            let s = running.status();
            return Err(ApiError::new(
                "busy",
                format!(
                    "{target}: a {} is already running ({:.1}% done)",
                    s.kind.name(),
                    s.percent()
                ),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            started: Instant::now(),
            status: Mutex::new(JobStatus {
                id,
                kind,
                target: target.to_string(),
                state: JobState::Running,
                done: 0,
                total: 0,
                bytes_copied: 0,
                blocks_checked: 0,
                mismatches: 0,
                repaired: 0,
                unrecoverable: 0,
                elapsed_seconds: 0.0,
                message: None,
            }),
        });
        all.insert(id, job.clone());
        let finished: Vec<u64> = all
            .iter()
            .filter(|(_, job)| job.status.lock().state != JobState::Running)
            .map(|(id, _)| *id)
            .collect();
        let mut retired = self.retired.lock();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(FINISHED_KEPT))
        {
            if let Some(job) = all.remove(id) {
                let s = job.status.lock();
                let (copied, checked) = retired.entry(s.kind).or_default();
                *copied += s.bytes_copied;
                *checked += s.blocks_checked;
            }
        }
        Ok(job)
    }

    pub fn get(&self, id: u64) -> Option<JobStatus> {
        self.all.lock().get(&id).map(|job| job.status())
    }

    pub fn list(&self) -> Vec<JobStatus> {
        self.all.lock().values().map(|job| job.status()).collect()
    }

    /// The job running on `target` that `lvs` shows (a recover first).
    pub fn running_on(&self, target: &str) -> Option<JobStatus> {
        let mut running: Vec<JobStatus> = self
            .all
            .lock()
            .values()
            .map(|job| job.status())
            .filter(|s| s.state == JobState::Running && s.target == target)
            .collect();
        running.sort_by_key(|s| s.kind != JobKind::Recover);
        running.into_iter().next()
    }

    /// What the jobs of each kind did since the server started.
    pub fn totals(&self) -> Vec<JobTotals> {
        let all = self.all.lock();
        let retired = self.retired.lock();
        JobKind::ALL
            .into_iter()
            .map(|kind| {
                let (mut copied_bytes, mut checked_blocks) =
                    retired.get(&kind).copied().unwrap_or_default();
                for job in all.values() {
                    let s = job.status.lock();
                    if s.kind == kind {
                        copied_bytes += s.bytes_copied;
                        checked_blocks += s.blocks_checked;
                    }
                }
                JobTotals {
                    kind,
                    copied_bytes,
                    checked_blocks,
                }
            })
            .collect()
    }

    pub fn mismatches(&self, lv: &str) -> u64 {
        self.last_mismatches.lock().get(lv).copied().unwrap_or(0)
    }
}

impl Job {
    pub fn status(&self) -> JobStatus {
        let mut status = self.status.lock().clone();
        status.elapsed_seconds = self.started.elapsed().as_secs_f64();
        status
    }

    fn add_total(&self, extents: u64) {
        self.status.lock().total += extents;
    }

    fn step(&self, bytes_copied: u64) {
        let mut s = self.status.lock();
        s.done += 1;
        s.bytes_copied += bytes_copied;
    }

    fn add_scrub(&self, report: &ScrubReport) {
        let mut s = self.status.lock();
        s.blocks_checked += report.blocks_checked;
        s.mismatches += report.mismatches;
        s.repaired += report.repaired;
        s.unrecoverable += report.unrecoverable;
    }

    fn finish(&self, outcome: Result<String, String>) {
        let mut s = self.status.lock();
        s.elapsed_seconds = self.started.elapsed().as_secs_f64();
        let target = s.target.clone();
        match outcome {
            Ok(message) => {
                tracing::info!("{target}: {} done: {message}", s.kind.name());
                s.state = JobState::Done;
                s.message = Some(message);
            }
            Err(message) => {
                tracing::error!("{target}: {} failed: {message}", s.kind.name());
                s.state = JobState::Failed;
                s.message = Some(message);
            }
        }
    }
}

impl Server {
    /// `lvconvert --repair VG/LV`: rebuilds every leg on a failed PV onto
    /// free extents of the other PVs.
    pub fn start_recover(&self, vg: &str, lv: &str) -> Result<JobStatus, ApiError> {
        let (record, vg_record) = self.service.lookup_lv(vg, lv)?;
        let name = format!("{vg}/{lv}");
        if record.layout.tolerance() == 0 {
            return Err(ApiError::new(
                "invalid_argument",
                format!(
                    "{name} is {}: without redundancy there is nothing to rebuild from",
                    record.layout.describe()
                ),
            ));
        }
        let job = self.jobs.begin(JobKind::Recover, &name)?;
        let server = self.me.upgrade().expect("the server is alive");
        let pe_bytes = vg_record.extent_bytes;
        let status = job.status();
        tokio::spawn(async move {
            let outcome = server.recover(&name, &job, pe_bytes).await;
            job.finish(outcome);
        });
        Ok(status)
    }

    async fn recover(&self, name: &str, job: &Job, pe_bytes: u64) -> Result<String, String> {
        let lv = self.volumes.open(name).await.map_err(|e| e.to_string())?;
        let volume = &lv.volume;
        let pvs = self.pvs.clone();
        let failed = |pe: metadata::PeAddr| pvs.is_failed(pe.pv);
        volume
            .return_reserved(failed)
            .await
            .map_err(|e| e.to_string())?;
        // Extents that could not be rebuilt, with why; a PV failing while
        // this runs adds extents, which the next pass picks up.
        let mut given_up: BTreeMap<u64, String> = BTreeMap::new();
        let (mut extents, mut legs) = (0u64, 0u64);
        let pace = &Pace::default();
        loop {
            let pending: Vec<u64> = volume
                .degraded_extents()
                .await
                .into_iter()
                .filter(|le| !given_up.contains_key(le))
                .collect();
            if pending.is_empty() {
                break;
            }
            job.add_total(pending.len() as u64);
            let mut rebuilt = futures::stream::iter(pending)
                .map(|le| async move {
                    let lost = volume
                        .placement(le)
                        .await
                        .map_or(0, |p| p.into_iter().filter(|pe| failed(*pe)).count());
                    pace.wait(lost as u64 * pe_bytes, self.recovery_rate(name))
                        .await;
                    (le, volume.replace_legs(le, failed).await)
                })
                .buffer_unordered(REBUILDS_IN_FLIGHT);
            while let Some((le, result)) = rebuilt.next().await {
                match result {
                    Ok(moved) => {
                        extents += 1;
                        legs += moved as u64;
                        job.step(moved as u64 * pe_bytes);
                    }
                    Err(e) if e.kind() == ErrorKind::NoSpace => {
                        return Err(format!(
                            "{e}; {extents} extents rebuilt so far: add a PV with vgextend and run lvconvert --repair again"
                        ));
                    }
                    Err(e) => {
                        given_up.insert(le, e.to_string());
                        job.step(0);
                    }
                }
            }
        }
        match given_up.iter().next() {
            None if extents == 0 => Ok("nothing to repair: no leg is on a failed PV".into()),
            None => Ok(format!("rebuilt {legs} legs of {extents} extents")),
            Some((le, why)) => Err(format!(
                "{} extents could not be rebuilt (extent {le}: {why}); {extents} rebuilt",
                given_up.len()
            )),
        }
    }

    /// `lvchange --syncaction check|repair VG/LV`: verifies every written
    /// block of every copy against its checksum, rewriting bad copies from
    /// the good ones when `repair`.
    pub fn start_scrub(&self, vg: &str, lv: &str, repair: bool) -> Result<JobStatus, ApiError> {
        let (record, vg_record) = self.service.lookup_lv(vg, lv)?;
        let name = format!("{vg}/{lv}");
        if !record.layout.is_redundant() {
            return Err(ApiError::new(
                "invalid_argument",
                format!(
                    "{name} is {}: --syncaction needs a redundant layout (raid1, raid5, raid10, ec)",
                    record.layout.describe()
                ),
            ));
        }
        let kind = if repair {
            JobKind::Repair
        } else {
            JobKind::Check
        };
        let job = self.jobs.begin(kind, &name)?;
        let server = self.me.upgrade().expect("the server is alive");
        let status = job.status();
        tokio::spawn(async move {
            let outcome = server
                .scrub(&name, &job, repair, vg_record.extent_bytes)
                .await;
            let found = job.status().mismatches;
            server.jobs.last_mismatches.lock().insert(name, found);
            job.finish(outcome);
        });
        Ok(status)
    }

    async fn scrub(
        &self,
        name: &str,
        job: &Job,
        repair: bool,
        pe_bytes: u64,
    ) -> Result<String, String> {
        let lv = self.volumes.open(name).await.map_err(|e| e.to_string())?;
        let volume = &lv.volume;
        let count = volume.extent_count();
        job.add_total(count);
        let pace = Pace::default();
        for le in 0..count {
            if volume.placement(le).await.is_some() {
                pace.wait(pe_bytes, self.recovery_rate(name)).await;
                let report = volume
                    .scrub_extent(le, repair)
                    .await
                    .map_err(|e| e.to_string())?;
                job.add_scrub(&report);
            }
            job.step(0);
        }
        let s = job.status();
        let summary = format!(
            "{} blocks checked: {} mismatches, {} repaired, {} unrecoverable",
            s.blocks_checked, s.mismatches, s.repaired, s.unrecoverable
        );
        if s.unrecoverable > 0 {
            Err(summary)
        } else {
            Ok(summary)
        }
    }

    /// `pvmove PV`: moves every extent leg off the PV onto others, LV by
    /// LV, while nothing new is placed on it.
    pub fn start_move(&self, path: &std::path::Path) -> Result<JobStatus, ApiError> {
        let report = self.pv_report(path)?;
        let Some(vg) = report.vg_name.clone() else {
            return Err(ApiError::new(
                "invalid_argument",
                format!(
                    "physical volume \"{}\" is not in a volume group",
                    path.display()
                ),
            ));
        };
        let (pv, pe_bytes) = (report.record.id, report.extent_bytes.unwrap_or(0));
        let job = self
            .jobs
            .begin(JobKind::Move, &path.display().to_string())?;
        self.service.set_evacuating(pv, true)?;
        let server = self.me.upgrade().expect("the server is alive");
        let status = job.status();
        tokio::spawn(async move {
            let outcome = server.move_off(pv, &vg, pe_bytes, &job).await;
            if let Err(e) = server.service.set_evacuating(pv, false) {
                tracing::error!("PV id {pv}: {e}");
            }
            job.finish(outcome);
        });
        Ok(status)
    }

    async fn move_off(
        &self,
        pv: PvId,
        vg: &str,
        pe_bytes: u64,
        job: &Job,
    ) -> Result<String, String> {
        let on_pv = |pe: metadata::PeAddr| pe.pv == pv;
        for volume in self.volumes.open_volumes().await {
            volume
                .return_reserved(on_pv)
                .await
                .map_err(|e| e.to_string())?;
        }
        let service = self.service.clone();
        let (lvs, legs) = tokio::task::spawn_blocking(move || {
            let legs = service
                .pv_reports()
                .into_iter()
                .find(|r| r.record.id == pv)
                .map_or(0, |r| r.pe_alloc);
            (service.lvs_on_pv(pv), legs)
        })
        .await
        .map_err(|e| e.to_string())?;
        job.add_total(legs);
        let mut moved = 0u64;
        let names: BTreeSet<String> = lvs
            .into_iter()
            .filter(|(lv_vg, _)| lv_vg == vg)
            .map(|(vg, lv)| format!("{vg}/{lv}"))
            .collect();
        let pace = Pace::default();
        for name in names {
            let lv = self.volumes.open(&name).await.map_err(|e| e.to_string())?;
            for le in lv.volume.extents_with_legs(on_pv).await {
                pace.wait(pe_bytes, self.recovery_rate(&name)).await;
                let count = lv
                    .volume
                    .replace_legs(le, on_pv)
                    .await
                    .map_err(|e| format!("{e} ({moved} legs moved so far)"))?;
                moved += count as u64;
                job.step(count as u64 * pe_bytes);
            }
        }
        Ok(format!("moved {moved} extent legs"))
    }

    /// `VG/LV`'s `--maxrecoveryrate` now (0, unlimited, if it is gone:
    /// the job's own I/O then reports why).
    fn recovery_rate(&self, name: &str) -> u64 {
        name.split_once('/')
            .and_then(|(vg, lv)| self.service.lookup_lv(vg, lv).ok())
            .map_or(0, |(record, _)| record.max_recovery_rate)
    }
}
