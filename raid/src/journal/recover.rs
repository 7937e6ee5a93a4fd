//! Recovery: replaying every unretired entry of every journal onto its
//! targets, then starting every journal empty in a new epoch.
//!
//! ```text
//!  scan each readable journal ─▶ keep the newest epoch's entries ─▶ merge copies by entry id
//!    ─▶ replay in id order (one entry's writes done before the next) ─▶ flush targets
//!    ─▶ per journal: header {epoch + 1, tail = after the last entry} (FUA)
//! ```
//!
//! Why the id order: an entry is logged on the journals of all of its
//! row's parity PVs, and a crash can leave the newest entry of a row
//! durable on one copy and torn on another. Replaying journal after journal
//! would then write the row's newest entry and afterwards an older one from
//! the other journal, mixing two versions of the row. Ids are handed out
//! when `log` starts, and a layout logs a row's next entry only after the
//! previous one returned, so id order is each row's order, and replaying
//! the merged set in that order ends every row at its newest entry.
//!
//! Why the epoch: recovery cannot rewrite all headers at once. If it
//! crashes after emptying some journals, the next recovery must not replay
//! the old entries still in the others: an older copy would roll a row
//! back to a mix. Each recovery raises the epoch, and only entries of the
//! newest epoch found on any readable journal are replayed; older ones were
//! replayed (and flushed) by the recovery that raised it. The same rule
//! ignores the journal of a PV that was missing at the last start and came
//! back: its rows have been written since.
//!
//! Why damaged entries are looked for in place: a disk that spoils its
//! writes can damage the only copy of a row's newest entry after it went
//! in place. Replaying the row's older entries would then roll the row
//! back over acknowledged data. The damaged entry's header still names
//! its targets and the checksum of its payload; when the targets hold
//! exactly those bytes, the entry went in place, and older entries skip
//! the byte ranges it wrote. When they do not, the entry never finished
//! in place (torn by the crash, or spoiled before), and the older entries
//! are replayed as usual.
//!
//! Intent entries (full-row writes logged as checksums, `intent.rs`) have
//! nothing to replay: once every writes entry is replayed, each intent's
//! row is made consistent from what its shards hold.
//!
//! Record entries (checksums of mirror writes, in the record ring) have
//! nothing to replay either: the copies of each recorded block are settled
//! on the version its newest record vouches for (`records_recover.rs`).
//! A journal formatted without a record ring gets one here, as the new
//! header empties both rings.
//!
//! Crash-ordering rule: targets are flushed after the replay and before
//! any header is rewritten, so a crash anywhere leaves either the old
//! entries to replay again (replay is idempotent) or durable results.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use blockvirt::volume::PvSet;
use blockvirt::{BlockError, BlockResult, ErrorKind, IoBuf, WriteFlags};
use futures::future::join_all;
use metadata::PvId;

use super::checkpoint::flush_targets;
use super::entry::{in_data_area, JournalRecovery, RecoveryReport};
use super::format::payload_crc;
use super::format::{EntryHeader, EntryKind};
use super::intent::RowIntent;
use super::io::{read_exact, write_all};
use super::pv_journal::PvJournal;
use super::records::{records_ring_bytes, ExtentLegs};
use super::records_recover::{read_records, settle_records, RecordedBlocks};
use super::region::write_header;
use super::scan::{Found, Lane, Scan};
use super::settle::settle;

/// Recovers `journals` (sorted by PV); returns the report and the new epoch.
pub(super) async fn recover(
    pvs: &PvSet,
    journals: &[Arc<PvJournal>],
    legs: Option<&dyn ExtentLegs>,
) -> BlockResult<(RecoveryReport, RecordedBlocks)> {
    // No checkpoint may run on any journal meanwhile.
    let mut turns = Vec::with_capacity(journals.len());
    for journal in journals {
        turns.push(journal.checkpoint_lock.lock().await);
    }
    let mut report = RecoveryReport::default();
    let mut scans: Vec<(&Arc<PvJournal>, Scan)> = Vec::new();
    let mut record_scans: Vec<(&Arc<PvJournal>, Scan)> = Vec::new();
    for journal in journals {
        let mut part = JournalRecovery::default();
        if !pvs.is_failed(journal.pv) {
            let header = journal.lock().header;
            let scanned = match journal.scan(&header, Lane::Stripes).await {
                Ok(stripes) => journal
                    .scan(&header, Lane::Records)
                    .await
                    .map(|records| (stripes, records)),
                Err(e) => Err(e),
            };
            match scanned {
                Ok((scan, records)) => {
                    record_scans.push((journal, records));
                    part.read = true;
                    part.entries_found = scan.entries.len() as u64;
                    part.torn_entries = u64::from(scan.torn);
                    part.damaged_entries =
                        scan.entries.iter().filter(|f| !f.payload_sound).count() as u64;
                    scans.push((journal, scan));
                }
                // As any I/O error does, this fails the PV: its columns are
                // rebuilt from the others, so its entries are not needed.
                Err(e) => pvs.fail(journal.pv, &format!("journal unreadable: {e}")),
            }
        }
        report.journals.insert(journal.pv, part);
    }
    let newest = scans
        .iter()
        .map(|(j, _)| j.lock().header.epoch)
        .max()
        .unwrap_or(0);

    // Entry id -> its copies.
    let mut copies: BTreeMap<u64, Vec<(&Arc<PvJournal>, &Found)>> = BTreeMap::new();
    for (journal, scan) in &scans {
        if journal.lock().header.epoch != newest {
            if let Some(part) = report.journals.get_mut(&journal.pv) {
                part.entries_stale = scan.entries.len() as u64;
            }
            continue;
        }
        for found in &scan.entries {
            copies
                .entry(found.header.id)
                .or_default()
                .push((journal, found));
        }
    }

    let mut in_place: Vec<Written> = Vec::new();
    for copies in copies.values() {
        if copies.iter().all(|(_, found)| !found.payload_sound) {
            let header = &copies[0].1.header;
            // An intent's payload is its checksum table: nothing to look
            // for in place.
            let intent = matches!(header.kind, EntryKind::Intent { .. });
            if !intent && is_in_place(pvs, header).await {
                report.entries_in_place += 1;
                in_place.extend(header.targets.iter().map(|t| Written {
                    id: header.id,
                    pv: t.pv,
                    range: t.offset_bytes..t.offset_bytes + t.len_bytes,
                }));
            } else {
                report.entries_damaged += 1;
            }
        }
    }

    let mut touched = BTreeSet::new();
    let mut intents: Vec<(&EntryHeader, RowIntent)> = Vec::new();
    for (id, copies) in &copies {
        let sound: Vec<_> = copies
            .iter()
            .filter(|(_, found)| found.payload_sound)
            .copied()
            .collect();
        if sound.is_empty() {
            continue;
        }
        match read_one_copy(pvs, *id, &sound).await? {
            Some((header, payload)) if matches!(header.kind, EntryKind::Intent { .. }) => {
                match RowIntent::decode(&payload, header.targets.len()) {
                    Ok(intent) => intents.push((header, intent)),
                    Err(why) => {
                        tracing::error!(
                            "journal intent id {} for {:?}: {why}; not settled",
                            header.id,
                            header.row
                        );
                        report.entries_invalid += 1;
                    }
                }
            }
            Some((header, payload)) => {
                let later: Vec<&Written> = in_place.iter().filter(|w| w.id > *id).collect();
                replay(pvs, header, &payload, &later, &mut report, &mut touched).await
            }
            None => report.entries_unreadable += 1,
        }
    }
    // After every replay: an intent is the newest entry of its row.
    for (header, intent) in &intents {
        settle(pvs, header, intent, &mut report, &mut touched).await;
    }
    let records = read_records(pvs, &record_scans, newest, &mut report).await?;
    let recorded = match legs {
        Some(legs) => settle_records(pvs, legs, &records, &mut report, &mut touched).await,
        None => {
            report.records_found += records.len() as u64;
            RecordedBlocks::default()
        }
    };
    let touched: Vec<PvId> = touched.into_iter().collect();
    flush_targets(pvs, &touched).await;

    report.epoch = newest + 1;
    for ((journal, scan), (_, records)) in scans
        .iter()
        .zip(&record_scans)
        .filter(|((j, _), _)| !pvs.is_failed(j.pv))
    {
        let header = {
            let state = journal.lock();
            let records_bytes = match state.header.records_bytes {
                0 => records_ring_bytes(journal.region.len_bytes),
                bytes => bytes,
            };
            super::format::JournalHeader {
                epoch: report.epoch,
                header_seq: state.header.header_seq + 1,
                tail_seq: scan.next_seq,
                tail_offset_bytes: 0,
                records_bytes,
                records_tail_seq: records.next_seq,
                records_tail_offset_bytes: 0,
                ..state.header
            }
        };
        if let Err(e) = write_header(&journal.device, journal.region, &header).await {
            // Its entries stay behind in an older epoch, which the next
            // recovery ignores.
            journal.poison(&e);
            pvs.fail(journal.pv, &format!("journal header write: {e}"));
            continue;
        }
        journal.lock().reset(header);
        journal.bump();
    }
    drop(turns);
    Ok((report, recorded))
}

/// A byte range an entry found in place wrote.
struct Written {
    id: u64,
    pv: PvId,
    range: Range<u64>,
}

/// Whether every target of `entry` holds exactly its payload (the payload
/// checksum over the targets' bytes matches). A target that cannot be
/// read counts as not in place.
async fn is_in_place(pvs: &PvSet, entry: &EntryHeader) -> bool {
    let mut pieces = Vec::with_capacity(entry.targets.len());
    for target in &entry.targets {
        let Ok(handle) = pvs.get(target.pv) else {
            return false;
        };
        if pvs.is_failed(target.pv) || !in_data_area(&handle, target.offset_bytes, target.len_bytes)
        {
            return false;
        }
        let read = read_exact(
            &handle.device,
            target.pv,
            "journal in-place check",
            target.offset_bytes,
            target.len_bytes,
        )
        .await;
        match read {
            Ok(bytes) => pieces.push(bytes),
            Err(e) => {
                pvs.fail(target.pv, &format!("journal in-place check: {e}"));
                return false;
            }
        }
    }
    payload_crc(pieces.iter().map(|p| &p[..])) == entry.payload_crc
}

/// The parts of `range` on `pv` that none of `written` covers.
fn not_written(pv: PvId, range: Range<u64>, written: &[&Written]) -> Vec<Range<u64>> {
    let mut covers: Vec<&Range<u64>> = written
        .iter()
        .filter(|w| w.pv == pv && w.range.start < range.end && range.start < w.range.end)
        .map(|w| &w.range)
        .collect();
    covers.sort_by_key(|r| r.start);
    let mut left = Vec::new();
    let mut at = range.start;
    for cover in covers {
        if cover.start > at {
            left.push(at..cover.start);
        }
        at = at.max(cover.end);
    }
    if at < range.end {
        left.push(at..range.end);
    }
    left
}

/// The first copy of an entry that still reads back whole; `None` when
/// every copy's journal failed (those PVs are marked failed).
pub(super) async fn read_one_copy<'a>(
    pvs: &PvSet,
    id: u64,
    copies: &[(&Arc<PvJournal>, &'a Found)],
) -> BlockResult<Option<(&'a EntryHeader, IoBuf)>> {
    let mut changed = false;
    for (journal, found) in copies {
        let header = journal.lock().header;
        match journal
            .read_payload(&header, found.lane, found.offset_bytes, &found.header)
            .await
        {
            Ok(Some(payload)) => return Ok(Some((&found.header, payload))),
            Ok(None) => {
                changed = true;
                tracing::warn!(
                    "journal on PV id {}: entry id {id} changed since the scan",
                    journal.pv
                );
            }
            Err(e) => pvs.fail(journal.pv, &format!("journal unreadable: {e}")),
        }
    }
    if changed {
        return Err(BlockError::new(
            ErrorKind::Corrupt,
            format!("journal entry id {id}: no copy reads back as scanned"),
        ));
    }
    Ok(None)
}

/// Writes one entry's bytes in place, except where a later entry found in
/// place (`later`) wrote since. Targets on failed or absent PVs are
/// skipped; a target outside its PV's data area makes the whole entry invalid
/// (checked before anything is written); a target PV that fails a write
/// is marked failed, as in normal operation.
async fn replay(
    pvs: &PvSet,
    entry: &EntryHeader,
    payload: &IoBuf,
    later: &[&Written],
    report: &mut RecoveryReport,
    touched: &mut BTreeSet<PvId>,
) {
    let mut writes = Vec::with_capacity(entry.targets.len());
    let mut at = 0usize;
    for target in &entry.targets {
        let data = payload.slice(at..at + target.len_bytes as usize);
        at += target.len_bytes as usize;
        if pvs.is_failed(target.pv) {
            report.writes_skipped += 1;
            continue;
        }
        let Ok(handle) = pvs.get(target.pv) else {
            report.writes_skipped += 1;
            continue;
        };
        let fits = in_data_area(&handle, target.offset_bytes, target.len_bytes);
        if !fits {
            tracing::error!(
                "journal entry id {} for {:?}: write at {}+{} is outside the data area of PV id {}; entry not replayed",
                entry.id,
                entry.row,
                target.offset_bytes,
                target.len_bytes,
                target.pv
            );
            report.entries_invalid += 1;
            return;
        }
        let range = target.offset_bytes..target.offset_bytes + target.len_bytes;
        let parts = not_written(target.pv, range.clone(), later);
        if parts != [range.clone()] {
            report.writes_superseded += 1;
        }
        for part in parts {
            let at = (part.start - range.start) as usize;
            let len = (part.end - part.start) as usize;
            writes.push((
                target.pv,
                handle.device.clone(),
                part.start,
                data.slice(at..at + len),
            ));
        }
    }
    let results = join_all(
        writes
            .into_iter()
            .map(|(pv, device, offset, data)| async move {
                let len = data.len() as u64;
                let result = write_all(
                    &device,
                    pv,
                    "journal replay",
                    offset,
                    data,
                    WriteFlags::empty(),
                )
                .await;
                (pv, len, result)
            }),
    )
    .await;
    for (pv, len, result) in results {
        touched.insert(pv);
        match result {
            Ok(()) => report.bytes_replayed += len,
            Err(e) => pvs.fail(pv, &format!("journal replay: {e}")),
        }
    }
    report.entries_replayed += 1;
}
