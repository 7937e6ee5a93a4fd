//! Recovery of records: settling the copies of every recorded block on
//! the version its newest record vouches for.
//!
//! ```text
//!  records of the newest epoch whose extents still have those legs (metadata)
//!    ─▶ newest first, per block: read every copy
//!    ─▶ copies agree: nothing to do
//!    ─▶ a copy matches a record (newest first): write it over the others
//!    ─▶ none does: leave them to the volume's resync (unsettled)
//! ```
//!
//! Why: a 2-way mirror whose copies differ after a power loss cannot tell
//! an unfinished write on one copy from damage (rot, a misdirected write)
//! on the other. The record of the write, durable before either copy was
//! written, tells them apart: the copy matching it holds the write, whole.
//! Every live record is of a write not yet committed by its volume, so
//! any recorded version is one the client may read back; the newest wins
//! so that every copy ends the same.
//!
//! Crash-ordering rule: the rewritten copies are flushed (with the stripe
//! replay's targets) before any header is rewritten, so a crash during
//! this leaves the records to settle again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use blockvirt::volume::PvSet;
use blockvirt::{BlockResult, IoBuf, WriteFlags};
use metadata::PvId;

use super::entry::{in_data_area, RecoveryReport};
use super::format::BLOCK_BYTES;
use super::io::{read_exact, write_all};
use super::pv_journal::PvJournal;
use super::records::{ExtentLegs, RecordEntry, RecordWrite};
use super::recover::read_one_copy;
use super::scan::{Found, Scan};

/// The record entries of the journals of epoch `newest`, merged across
/// their copies: (entry id, entry). Entries no copy of which reads whole
/// are left out (and counted).
pub(super) async fn read_records(
    pvs: &PvSet,
    scans: &[(&Arc<PvJournal>, Scan)],
    newest: u64,
    report: &mut RecoveryReport,
) -> BlockResult<Vec<(u64, RecordEntry)>> {
    let mut copies: BTreeMap<u64, Vec<(&Arc<PvJournal>, &Found)>> = BTreeMap::new();
    for (journal, scan) in scans {
        if journal.lock().header.epoch != newest {
            continue;
        }
        for found in scan.entries.iter().filter(|f| f.payload_sound) {
            copies
                .entry(found.header.id)
                .or_default()
                .push((journal, found));
        }
    }
    let mut entries = Vec::with_capacity(copies.len());
    for (id, copies) in &copies {
        let Some((header, payload)) = read_one_copy(pvs, *id, copies).await? else {
            report.entries_unreadable += 1;
            continue;
        };
        match RecordEntry::decode(&header.targets, &payload) {
            Ok(entry) => entries.push((*id, entry)),
            Err(why) => {
                tracing::error!("record entry id {id}: {why}; not settled");
                report.entries_invalid += 1;
            }
        }
    }
    Ok(entries)
}

/// The copies of one block: (PV, device offset) each.
type Copies = Vec<(PvId, u64)>;

/// Per copy of a recorded block, (PV, device offset): its extent (LV, LE)
/// and its records' checksums, newest first.
pub(super) type RecordedBlocks = HashMap<(PvId, u64), ((u64, u64), Vec<u32>)>;

/// Settles every block `entries` (id, entry) record, where `legs` says
/// the record's extent is still there; returns those blocks' records.
pub(super) async fn settle_records(
    pvs: &PvSet,
    legs: &dyn ExtentLegs,
    entries: &[(u64, RecordEntry)],
    report: &mut RecoveryReport,
    touched: &mut BTreeSet<PvId>,
) -> RecordedBlocks {
    // Per block, its extent and recorded checksums, newest first.
    let mut blocks: BTreeMap<Copies, ((u64, u64), Vec<u32>)> = BTreeMap::new();
    let mut newest_first: Vec<&(u64, RecordEntry)> = entries.iter().collect();
    newest_first.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    for (_, entry) in newest_first {
        for write in &entry.writes {
            if !still_placed(legs, write) {
                report.record_writes_stale += 1;
                continue;
            }
            for (i, &crc) in write.crcs.iter().enumerate() {
                let at = i as u64 * BLOCK_BYTES;
                let copies = write.copies.iter().map(|&(pv, o)| (pv, o + at)).collect();
                let owner = (write.lv, write.le);
                blocks
                    .entry(copies)
                    .or_insert((owner, Vec::new()))
                    .1
                    .push(crc);
            }
        }
    }
    report.records_found += entries.len() as u64;
    let mut recorded = RecordedBlocks::new();
    for (copies, (owner, crcs)) in blocks {
        settle_block(pvs, &copies, &crcs, report, touched).await;
        for copy in copies {
            recorded.insert(copy, (owner, crcs.clone()));
        }
    }
    recorded
}

/// Whether every copy of `write` lies in a leg its extent has now.
fn still_placed(legs: &dyn ExtentLegs, write: &RecordWrite) -> bool {
    let Some(now) = legs.legs(write.lv, write.le) else {
        return false;
    };
    write.copies.iter().all(|&(pv, offset)| {
        now.iter().any(|&(leg_pv, start, len)| {
            leg_pv == pv && offset >= start && offset + write.len_bytes() <= start + len
        })
    })
}

async fn settle_block(
    pvs: &PvSet,
    copies: &Copies,
    crcs: &[u32],
    report: &mut RecoveryReport,
    touched: &mut BTreeSet<PvId>,
) {
    let mut held: Vec<(PvId, u64, IoBuf)> = Vec::with_capacity(copies.len());
    for &(pv, offset) in copies {
        let Ok(handle) = pvs.get(pv) else { continue };
        if pvs.is_failed(pv) || !in_data_area(&handle, offset, BLOCK_BYTES) {
            continue;
        }
        match read_exact(&handle.device, pv, "record settle", offset, BLOCK_BYTES).await {
            Ok(block) => held.push((pv, offset, block)),
            Err(e) => pvs.fail(pv, &format!("record settle: {e}")),
        }
    }
    if held.len() < 2 || held.iter().all(|(_, _, b)| b[..] == held[0].2[..]) {
        return;
    }
    let chosen = crcs.iter().find_map(|&crc| {
        held.iter()
            .find(|(_, _, block)| crc32c::crc32c(block) == crc)
            .map(|(_, _, block)| block.clone())
    });
    let Some(good) = chosen else {
        report.record_blocks_unsettled += 1;
        return;
    };
    for (pv, offset, block) in &held {
        if block[..] == good[..] {
            continue;
        }
        let Ok(handle) = pvs.get(*pv) else { continue };
        let written = write_all(
            &handle.device,
            *pv,
            "record settle",
            *offset,
            good.clone(),
            WriteFlags::empty(),
        )
        .await;
        touched.insert(*pv);
        if let Err(e) = written {
            pvs.fail(*pv, &format!("record settle: {e}"));
        }
    }
    report.record_blocks_settled += 1;
}
