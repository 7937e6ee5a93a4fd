//! What callers hand the journal (an entry: a row's in-place writes) and
//! what recovery reports. Owns the checks an entry passes before anything
//! is written.

use std::collections::{BTreeMap, HashSet};

use blockvirt::volume::{PvHandle, PvSet};
use blockvirt::{BlockError, BlockResult, ErrorKind, IoBuf};
use metadata::{PeAddr, PvId};

use super::format::{payload_crc, EntryHeader, EntryKind, Target, BLOCK_BYTES, MAX_WRITES};
use super::intent::RowIntent;

/// A stable name for one row of one placed extent, chosen by the layout:
/// the first leg's PE and the row index within it. Only compared for
/// equality (`has_unretired`) and kept in entries for diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub pe: PeAddr,
    pub row: u64,
}

/// One in-place write: `data` goes to `offset_bytes` of PV `pv`'s device
/// (an absolute device offset, not relative to the PV's data area). Offset
/// and length are multiples of 4 KiB.
#[derive(Debug, Clone)]
pub struct JournalWrite {
    pub pv: PvId,
    pub offset_bytes: u64,
    pub data: IoBuf,
}

/// Every byte one row update is about to write in place: new data ranges
/// and new parity ranges. With `intent`, a full-row write: the journal
/// keeps only that checksum table, not the bytes (`intent.rs`).
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub row: RowKey,
    pub writes: Vec<JournalWrite>,
    pub intent: Option<RowIntent>,
}

impl JournalEntry {
    /// An entry that journals the bytes of `writes`.
    pub fn writes(row: RowKey, writes: Vec<JournalWrite>) -> JournalEntry {
        JournalEntry {
            row,
            writes,
            intent: None,
        }
    }

    pub fn payload_bytes(&self) -> u64 {
        match &self.intent {
            Some(intent) => intent.encoded_len() as u64,
            None => self.writes.iter().map(|w| w.data.len() as u64).sum(),
        }
    }

    pub(super) fn kind(&self) -> EntryKind {
        match &self.intent {
            Some(_) => EntryKind::Intent {
                payload_bytes: self.payload_bytes(),
            },
            None => EntryKind::Writes,
        }
    }

    /// Bytes the entry takes in a journal: one header block and the payload.
    pub fn entry_bytes(&self) -> u64 {
        BLOCK_BYTES + self.payload_bytes()
    }

    pub(super) fn targets(&self) -> Vec<Target> {
        self.writes
            .iter()
            .map(|w| Target {
                pv: w.pv,
                offset_bytes: w.offset_bytes,
                len_bytes: w.data.len() as u64,
            })
            .collect()
    }

    /// The distinct PVs written in place, sorted.
    pub(super) fn target_pvs(&self) -> Vec<PvId> {
        let mut pvs: Vec<PvId> = self.writes.iter().map(|w| w.pv).collect();
        pvs.sort_unstable();
        pvs.dedup();
        pvs
    }

    /// The entry as written to one journal: `header` (that journal's
    /// generation and sequence), then the payload.
    pub(super) fn encode(&self, header: &EntryHeader) -> IoBuf {
        let mut block = [0u8; BLOCK_BYTES as usize];
        header.encode_into(&mut block);
        let table = self.intent.as_ref().map(RowIntent::encode);
        let parts: Vec<&[u8]> = match &table {
            Some(table) => vec![&block[..], &table[..]],
            None => std::iter::once(&block[..])
                .chain(self.writes.iter().map(|w| &w.data[..]))
                .collect(),
        };
        let buf = IoBuf::concat(&parts);
        debug_assert_eq!(buf.len() as u64, self.entry_bytes());
        buf
    }

    pub(super) fn payload_crc(&self) -> u32 {
        match &self.intent {
            Some(intent) => payload_crc([&intent.encode()[..]]),
            None => payload_crc(self.writes.iter().map(|w| &w.data[..])),
        }
    }

    /// Refuses what cannot be journaled: no writes, too many, unaligned,
    /// empty or overlapping ranges (replay order inside one entry would
    /// then matter, and the layout never means that).
    pub(super) fn validate(&self) -> BlockResult<()> {
        let invalid = |why: String| {
            Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!("journal entry for {:?}: {why}", self.row),
            ))
        };
        if self.writes.is_empty() || self.writes.len() > MAX_WRITES {
            return invalid(format!(
                "{} writes (1 to {MAX_WRITES} allowed)",
                self.writes.len()
            ));
        }
        let mut ranges: Vec<(PvId, u64, u64)> = Vec::with_capacity(self.writes.len());
        for w in &self.writes {
            let len = w.data.len() as u64;
            if len == 0
                || !len.is_multiple_of(BLOCK_BYTES)
                || !w.offset_bytes.is_multiple_of(BLOCK_BYTES)
            {
                return invalid(format!(
                    "write of {len} bytes at {} on PV id {} is not whole 4 KiB blocks",
                    w.offset_bytes, w.pv
                ));
            }
            let Some(end) = w.offset_bytes.checked_add(len) else {
                return invalid(format!("write at {} overflows", w.offset_bytes));
            };
            ranges.push((w.pv, w.offset_bytes, end));
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            if pair[0].0 == pair[1].0 && pair[1].1 < pair[0].2 {
                return invalid(format!("writes overlap on PV id {}", pair[0].0));
            }
        }
        if let Some(intent) = &self.intent {
            if let Err(why) = intent.validate(self.writes.len()) {
                return invalid(format!("intent: {why}"));
            }
            let column = intent.new[0].len() as u64 * BLOCK_BYTES;
            if self.writes.iter().any(|w| w.data.len() as u64 != column) {
                return invalid("intent: writes of different lengths".to_string());
            }
        }
        Ok(())
    }
}

/// Whether `len_bytes` at `offset_bytes` lies in the PV's data area: the
/// only place in-place writes go (never its label or its journal).
pub(super) fn in_data_area(handle: &PvHandle, offset_bytes: u64, len_bytes: u64) -> bool {
    offset_bytes >= handle.data_offset_bytes
        && offset_bytes
            .checked_add(len_bytes)
            .is_some_and(|end| end <= handle.device.info().size_bytes)
}

/// Checks that every write of `entry` goes to the data area of a known PV.
pub(super) fn validate_targets(pvs: &PvSet, entry: &JournalEntry) -> BlockResult<()> {
    for w in &entry.writes {
        let handle = pvs.get(w.pv).map_err(|_| {
            BlockError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "journal entry for {:?}: PV id {} is not open",
                    entry.row, w.pv
                ),
            )
        })?;
        if !in_data_area(&handle, w.offset_bytes, w.data.len() as u64) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "journal entry for {:?}: write at {}+{} is outside the data area of PV id {}",
                    entry.row,
                    w.offset_bytes,
                    w.data.len(),
                    w.pv
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the PVs an entry is logged on: at least one, no repeats.
pub(super) fn validate_journal_pvs(pvs: &[PvId]) -> BlockResult<()> {
    let distinct: HashSet<PvId> = pvs.iter().copied().collect();
    if pvs.is_empty() || distinct.len() != pvs.len() {
        return Err(BlockError::new(
            ErrorKind::InvalidArgument,
            format!("journal PVs {pvs:?}: need at least one, each once"),
        ));
    }
    Ok(())
}

/// What [`JournalSet::recover`](super::JournalSet::recover) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The epoch the journals start with from now on.
    pub epoch: u64,
    /// Distinct entries replayed (an entry logged on M journals counts once).
    pub entries_replayed: u64,
    /// Intent entries (full-row writes logged as checksums) whose rows
    /// were made consistent again.
    pub intents_settled: u64,
    /// 4 KiB blocks those rows had rewritten (parity, or data rebuilt).
    pub intent_blocks_rewritten: u64,
    /// Blocks of those rows no choice of parity rebuilt as their old or new
    /// version (a torn full-row write and a lost leg); left as they were.
    pub intent_blocks_unsettled: u64,
    /// Bytes written in place by the replay.
    pub bytes_replayed: u64,
    /// In-place writes not replayed because their PV is failed or absent.
    pub writes_skipped: u64,
    /// Entries whose checksums held but with a target outside its PV's data
    /// area; never replayed (a bug or a foreign journal; logged).
    pub entries_invalid: u64,
    /// Entries no copy of which could be read any more: every journal that
    /// held one failed during the recovery (and with it the row's parity,
    /// so nothing is left that the entry could make consistent).
    pub entries_unreadable: u64,
    /// Entries whose every copy was damaged (header sound, payload not) and
    /// whose bytes were not in place: torn by the crash before their
    /// append was acknowledged, or spoiled and never written in place.
    /// Not replayed.
    pub entries_damaged: u64,
    /// Entries whose every copy was damaged but whose bytes were all found
    /// in place: the disk spoiled the journal copy after the entry was
    /// durable. Older entries are not replayed over them.
    pub entries_in_place: u64,
    /// In-place byte ranges of older entries left alone because an entry
    /// found in place had written them since.
    pub writes_superseded: u64,
    /// Record entries (checksums of mirror writes) found whole.
    pub records_found: u64,
    /// Recorded blocks whose copies differed and now all hold the copy
    /// that matched the newest record.
    pub record_blocks_settled: u64,
    /// Recorded blocks whose copies differed and matched no record: left
    /// to the volume's resync.
    pub record_blocks_unsettled: u64,
    /// Recorded writes whose extent no longer has those legs (moved,
    /// freed, its LV gone): not settled.
    pub record_writes_stale: u64,
    /// Per journal, by PV.
    pub journals: BTreeMap<PvId, JournalRecovery>,
}

/// One journal's part in a recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalRecovery {
    /// False when the PV was failed or absent, or its journal could not be
    /// read (the PV is then marked failed): its entries were not used.
    pub read: bool,
    /// Valid entries found from the tail on.
    pub entries_found: u64,
    /// Entries found but left alone because an earlier recovery already
    /// replayed them (their epoch is older than the newest journal's).
    pub entries_stale: u64,
    /// The scan stopped at a block that was a started entry (the magic was
    /// there) but not a valid next one: an entry torn by the crash, never
    /// acknowledged. 0 or 1.
    pub torn_entries: u64,
    /// Entries found with a sound header and a payload that fails its
    /// checksum (torn by the crash, or spoiled since); the scan went on
    /// past them.
    pub damaged_entries: u64,
}
