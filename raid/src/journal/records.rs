//! Records: the checksums of mirror writes, logged ahead of the writes in
//! a ring of their own, so that after a power loss an unfinished write can
//! be told from a copy gone bad (docs/ARCHITECTURE.md, "the mirror plan").
//!
//! ```text
//!  region: | header slots | stripe ring ................ | record ring |
//!                                                         ^ region end - records_bytes
//!  record entry: | header block: kind 2, targets = every copy of every write |
//!                | payload: per write (copies u32, blocks u32, LV id u64, LE u64,   |
//!                |          CRC-32C u32 x blocks), zero-padded to whole blocks      |
//! ```
//!
//! A write's copies are the targets in order: the first write's copies,
//! then the next write's. Every copy of a write has the same length, a
//! CRC-32C per 4 KiB block of what the write puts there. The LV and LE
//! say whose extent the copies were: recovery settles a record only while
//! that extent still has its legs there (`ExtentLegs`), so a record left
//! behind by an extent since moved or freed never touches PEs another LV
//! (or another extent) holds now.
//!
//! Why a ring of its own: a record is kept (*pinned*) until the volume
//! has committed the same checksums, up to a commit interval after the
//! write. In the stripe ring, which retires only a prefix, that would hold
//! back the stripe entries logged after it. Here records hold back only
//! records, and they retire at a checkpoint once unpinned.
//!
//! Crash-ordering rule: `log_records` returns only when the entry, and
//! every older record entry of those journals, is durable (the scan stops
//! at the first gap, as in the stripe ring), so before any copy is
//! written.

use std::collections::VecDeque;
use std::sync::Arc;

use blockvirt::{BlockError, BlockResult, ErrorKind, IoBuf, WriteFlags};
use futures::future::select_all;
use metadata::{PeAddr, PvId};

use super::checkpoint::Retire;
use super::entry::{in_data_area, validate_journal_pvs, RowKey};
use super::format::{
    payload_crc, EntryHeader, EntryKind, JournalHeader, Target, BLOCK_BYTES, HEADER_AREA_BYTES,
    MAX_WRITES,
};
use super::io::write_all;
use super::pv_journal::PvJournal;
use super::ring::{max_entry_bytes, Placement, Ring};
use super::scan::Lane;
use super::JournalSet;

/// Bytes before a write's checksums in the payload: copies, blocks, LV, LE.
const WRITE_HEADER_BYTES: usize = 24;

/// The record ring a region of `region_bytes` gets when it is formatted
/// or emptied: a sixteenth of what follows the header slots, in whole
/// blocks; none where that is under 8 blocks (tiny test regions).
pub fn records_ring_bytes(region_bytes: u64) -> u64 {
    let bytes = region_bytes.saturating_sub(HEADER_AREA_BYTES) / 16 / BLOCK_BYTES * BLOCK_BYTES;
    if bytes < 8 * BLOCK_BYTES {
        0
    } else {
        bytes
    }
}

/// One mirror write: the extent it is in (LV id, LE), where each copy
/// goes (PV, absolute device offset) and the CRC-32C of each 4 KiB block
/// it writes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrite {
    pub lv: u64,
    pub le: u64,
    pub copies: Vec<(PvId, u64)>,
    pub crcs: Vec<u32>,
}

/// Where an extent's legs are now, as the metadata says: recovery asks
/// before it settles a record (see the module doc).
pub trait ExtentLegs: Send + Sync {
    /// The device byte ranges (PV, start, length) of the legs of extent
    /// `le` of LV `lv`; `None` when the LV or the extent is gone.
    fn legs(&self, lv: u64, le: u64) -> Option<Vec<(PvId, u64, u64)>>;
}

impl ExtentLegs for metadata::Service {
    /// A metadata error counts as "gone": a record not settled is left to
    /// the volume's resync, where one settled wrongly could not be undone.
    fn legs(&self, lv: u64, le: u64) -> Option<Vec<(PvId, u64, u64)>> {
        self.extent_legs(lv, le).ok().flatten()
    }
}

impl RecordWrite {
    pub fn len_bytes(&self) -> u64 {
        self.crcs.len() as u64 * BLOCK_BYTES
    }
}

/// The records one append carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEntry {
    pub writes: Vec<RecordWrite>,
}

impl RecordEntry {
    fn table_bytes(&self) -> u64 {
        self.writes
            .iter()
            .map(|w| WRITE_HEADER_BYTES as u64 + 4 * w.crcs.len() as u64)
            .sum()
    }

    pub fn payload_bytes(&self) -> u64 {
        self.table_bytes().div_ceil(BLOCK_BYTES) * BLOCK_BYTES
    }

    pub fn entry_bytes(&self) -> u64 {
        BLOCK_BYTES + self.payload_bytes()
    }

    pub(super) fn targets(&self) -> Vec<Target> {
        self.writes
            .iter()
            .flat_map(|w| {
                w.copies.iter().map(|&(pv, offset_bytes)| Target {
                    pv,
                    offset_bytes,
                    len_bytes: w.len_bytes(),
                })
            })
            .collect()
    }

    pub(super) fn encode_payload(&self) -> Vec<u8> {
        let mut table = Vec::with_capacity(self.payload_bytes() as usize);
        for w in &self.writes {
            table.extend_from_slice(&(w.copies.len() as u32).to_le_bytes());
            table.extend_from_slice(&(w.crcs.len() as u32).to_le_bytes());
            table.extend_from_slice(&w.lv.to_le_bytes());
            table.extend_from_slice(&w.le.to_le_bytes());
            for crc in &w.crcs {
                table.extend_from_slice(&crc.to_le_bytes());
            }
        }
        table.resize(self.payload_bytes() as usize, 0);
        table
    }

    /// Rebuilds the entry from its header's targets and its payload; an
    /// error says why they do not fit together.
    pub(super) fn decode(targets: &[Target], payload: &[u8]) -> Result<RecordEntry, &'static str> {
        let mut writes = Vec::new();
        let mut at = 0usize;
        let mut next_target = 0usize;
        let word = |at: usize| -> Result<u32, &'static str> {
            let bytes = payload
                .get(at..at + 4)
                .ok_or("table runs past the payload")?;
            Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
        };
        let long = |at: usize| -> Result<u64, &'static str> {
            let low = u64::from(word(at)?);
            Ok(low | (u64::from(word(at + 4)?) << 32))
        };
        while next_target < targets.len() {
            let copies = word(at)? as usize;
            let blocks = word(at + 4)? as usize;
            let (lv, le) = (long(at + 8)?, long(at + 16)?);
            at += WRITE_HEADER_BYTES;
            if copies == 0 || blocks == 0 || next_target + copies > targets.len() {
                return Err("write with no copies, no blocks, or more copies than targets");
            }
            let mut crcs = Vec::with_capacity(blocks);
            for i in 0..blocks {
                crcs.push(word(at + 4 * i)?);
            }
            at += 4 * blocks;
            let mine = &targets[next_target..next_target + copies];
            if mine
                .iter()
                .any(|t| t.len_bytes != blocks as u64 * BLOCK_BYTES)
            {
                return Err("a copy's length disagrees with its checksums");
            }
            writes.push(RecordWrite {
                lv,
                le,
                copies: mine.iter().map(|t| (t.pv, t.offset_bytes)).collect(),
                crcs,
            });
            next_target += copies;
        }
        Ok(RecordEntry { writes })
    }

    fn validate(&self, journal: &JournalSet) -> BlockResult<()> {
        let invalid = |why: String| {
            Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!("record entry: {why}"),
            ))
        };
        let targets: usize = self.writes.iter().map(|w| w.copies.len()).sum();
        if self.writes.is_empty() || targets > MAX_WRITES {
            return invalid(format!(
                "{} writes with {targets} copies (1 to {MAX_WRITES} copies allowed)",
                self.writes.len()
            ));
        }
        for w in &self.writes {
            if w.copies.is_empty() || w.crcs.is_empty() {
                return invalid("a write with no copies or no blocks".to_string());
            }
            let mut pvs: Vec<PvId> = w.copies.iter().map(|&(pv, _)| pv).collect();
            pvs.sort_unstable();
            pvs.dedup();
            if pvs.len() != w.copies.len() {
                return invalid("two copies of a write on one PV".to_string());
            }
            for &(pv, offset) in &w.copies {
                let Ok(handle) = journal.inner.pvs.get(pv) else {
                    return invalid(format!("PV id {pv} is not open"));
                };
                if !offset.is_multiple_of(BLOCK_BYTES)
                    || !in_data_area(&handle, offset, w.len_bytes())
                {
                    return invalid(format!(
                        "copy at {offset}+{} is not in whole blocks of PV id {pv}'s data area",
                        w.len_bytes()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The record ring of one journal, in memory.
#[derive(Debug)]
pub(super) struct RecordLane {
    /// `None` while the journal has no record ring (an older format).
    pub ring: Option<Ring>,
    pub next_seq: u64,
    /// Every record entry below this one is durable.
    durable_end: u64,
    /// Entries not retired, oldest first; the first has the header's
    /// record tail.
    slots: VecDeque<RecordSlot>,
}

#[derive(Debug)]
struct RecordSlot {
    seq: u64,
    placement: Placement,
    durable: bool,
    /// Holders that still need the entry (see [`RecordPin`]).
    pins: u32,
}

impl RecordLane {
    pub fn new(header: &JournalHeader) -> RecordLane {
        RecordLane {
            ring: (header.records_bytes > 0)
                .then(|| Ring::empty(header.records_bytes, header.records_tail_offset_bytes)),
            next_seq: header.records_tail_seq,
            durable_end: header.records_tail_seq,
            slots: VecDeque::new(),
        }
    }

    /// Takes room for an entry held by `pins` holders, or `None`.
    fn reserve(&mut self, len_bytes: u64, pins: u32) -> Option<(u64, Placement)> {
        let placement = self.ring.as_mut()?.reserve(len_bytes)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(RecordSlot {
            seq,
            placement,
            durable: false,
            pins,
        });
        Some((seq, placement))
    }

    fn has_room(&self, len_bytes: u64) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|ring| ring.place(len_bytes).is_some())
    }

    fn slot_mut(&mut self, seq: u64) -> &mut RecordSlot {
        let first = self.slots.front().map_or(u64::MAX, |s| s.seq);
        let index = seq.wrapping_sub(first) as usize;
        let slot = self.slots.get_mut(index);
        assert!(
            slot.as_ref().is_some_and(|s| s.seq == seq),
            "record entry {seq} is not live (first live: {first})"
        );
        slot.expect("checked")
    }

    fn mark_durable(&mut self, seq: u64) {
        self.slot_mut(seq).durable = true;
        while self.durable_end < self.next_seq {
            let first = self.slots.front().map_or(self.next_seq, |s| s.seq);
            let index = (self.durable_end - first) as usize;
            if !self.slots[index].durable {
                break;
            }
            self.durable_end += 1;
        }
    }

    fn unpin(&mut self, seq: u64) {
        let slot = self.slot_mut(seq);
        slot.pins = slot.pins.checked_sub(1).expect("record entry pinned");
    }

    /// The sequence after the prefix of entries nobody needs any more.
    pub fn retirable_end(&self) -> u64 {
        let retirable = self
            .slots
            .iter()
            .take_while(|s| s.durable && s.pins == 0)
            .count();
        self.slots.front().map_or(self.next_seq, |s| s.seq) + retirable as u64
    }

    /// Where the record ring's tail is once every entry below `upto` is
    /// retired.
    pub fn tail_offset_for(&self, upto: u64) -> u64 {
        self.slots.iter().find(|s| s.seq == upto).map_or_else(
            || self.ring.as_ref().map_or(0, Ring::head_bytes),
            |s| s.placement.offset_bytes,
        )
    }

    /// Frees the entries below `upto`, now that a header saying so is
    /// durable.
    pub fn retire(&mut self, upto: u64) {
        while self.slots.front().is_some_and(|s| s.seq < upto) {
            let slot = self.slots.pop_front().expect("checked");
            assert!(slot.durable && slot.pins == 0, "retiring a needed record");
            if let Some(ring) = self.ring.as_mut() {
                ring.release(slot.placement);
            }
        }
    }

    fn over_half_full(&self) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|ring| ring.used_bytes() > ring.capacity_bytes() / 2)
    }

    /// Live (unretired) record entries.
    pub fn live(&self) -> usize {
        self.slots.len()
    }
}

/// Keeps one record entry on one journal until dropped: the holder
/// drops it once the checksums it records are committed elsewhere.
pub struct RecordPin {
    journal: Arc<PvJournal>,
    seq: u64,
}

impl std::fmt::Debug for RecordPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordPin(PV id {}, seq {})", self.journal.pv, self.seq)
    }
}

impl Drop for RecordPin {
    fn drop(&mut self) {
        self.journal.lock().records.unpin(self.seq);
        self.journal.bump();
    }
}

/// The pins of one record entry, one per journal it was logged on.
#[derive(Debug)]
#[must_use = "records retire when their pins drop: keep them until the checksums are committed"]
pub struct RecordPins {
    pub pins: Vec<RecordPin>,
}

impl PvJournal {
    /// Writes a reserved record entry, then waits until it and every
    /// older record entry are durable. Runs as its own task, as a stripe
    /// append does: a reserved slot is always written or the journal
    /// poisoned.
    async fn append_record(
        self: Arc<Self>,
        seq: u64,
        offset_bytes: u64,
        buf: IoBuf,
    ) -> BlockResult<RecordPin> {
        let pin = RecordPin {
            journal: self.clone(),
            seq,
        };
        let at = self.records_device_offset(offset_bytes);
        let fua = self.device.info().caps.contains(blockvirt::Caps::FUA);
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::empty()
        };
        let written = write_all(&self.device, self.pv, "record append", at, buf, flags).await;
        let durable = match written {
            Ok(()) if fua => Ok(()),
            Ok(()) => self.device.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = durable {
            self.poison(&e);
            return Err(e);
        }
        self.lock().records.mark_durable(seq);
        self.bump();
        let mut changes = self.subscribe();
        loop {
            {
                let state = self.lock();
                state.usable(self.pv)?;
                if state.records.durable_end > seq {
                    return Ok(pin);
                }
            }
            let _ = changes.changed().await;
        }
    }

    /// Device offset of a record ring offset.
    fn records_device_offset(&self, ring_offset_bytes: u64) -> u64 {
        let header = self.lock().header;
        self.lane_area(&header, Lane::Records).0 + ring_offset_bytes
    }
}

impl JournalSet {
    /// Logs `entry` durably on the record rings of `pvs` (the copies'
    /// PVs) and returns a pin per journal; the records stay until the pins
    /// are dropped and a checkpoint runs. Waits for room when a record
    /// ring is full (pins dropping make room). A journal's I/O error is
    /// returned, naming its PV.
    pub async fn log_records(&self, pvs: &[PvId], entry: &RecordEntry) -> BlockResult<RecordPins> {
        let logged = self.log_records_within(pvs, entry, None).await?;
        Ok(logged.expect("no deadline: waits for room"))
    }

    /// [`log_records`](Self::log_records), giving up when there is no
    /// room before `wait` has passed: `None` then, and nothing logged. For
    /// a caller that must not wait long (it holds what a commit needs, and
    /// only commits drop pins).
    pub async fn log_records_within(
        &self,
        pvs: &[PvId],
        entry: &RecordEntry,
        wait: Option<std::time::Duration>,
    ) -> BlockResult<Option<RecordPins>> {
        if !self
            .inner
            .recovered
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "journal set not recovered yet",
            ));
        }
        entry.validate(self)?;
        validate_journal_pvs(pvs)?;
        let journals = self.journals_of(pvs)?;
        let len_bytes = entry.entry_bytes();
        for journal in &journals {
            let records_bytes = journal.lock().header.records_bytes;
            if records_bytes == 0 {
                return Err(BlockError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the journal on PV id {} has no record ring (an older format, converted when the server next starts)",
                        journal.pv
                    ),
                ));
            }
            let max = max_entry_bytes(records_bytes);
            if len_bytes > max {
                return Err(BlockError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "record entry of {len_bytes} bytes: the record ring on PV id {} takes at most {max}",
                        journal.pv
                    ),
                ));
            }
        }
        let payload = entry.encode_payload();
        let first = entry.writes[0].copies[0];
        let mut header = EntryHeader {
            generation: 0,
            epoch: self.inner.epoch.load(std::sync::atomic::Ordering::Acquire),
            seq: 0,
            id: self
                .inner
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel),
            // Diagnosis only: the first copy's PV and device block.
            row: RowKey {
                pe: PeAddr { pv: first.0, pe: 0 },
                row: first.1 / BLOCK_BYTES,
            },
            payload_crc: payload_crc([&payload[..]]),
            kind: EntryKind::Records {
                payload_bytes: entry.payload_bytes(),
            },
            targets: entry.targets(),
        };
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        let reserved = match self.reserve_records(&journals, len_bytes, deadline).await {
            Ok(Some(reserved)) => reserved,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.fail_poisoned(&journals);
                return Err(e);
            }
        };
        let mut appends = Vec::with_capacity(journals.len());
        for (journal, (seq, placement)) in journals.iter().zip(reserved) {
            header.generation = journal.lock().header.generation;
            header.seq = seq;
            let mut block = [0u8; BLOCK_BYTES as usize];
            header.encode_into(&mut block);
            let buf = IoBuf::concat(&[&block[..], &payload[..]]);
            appends.push(tokio::spawn(journal.clone().append_record(
                seq,
                placement.offset_bytes,
                buf,
            )));
            if journal.lock().records.over_half_full() {
                self.checkpoint_in_background(journal);
            }
        }
        let pins = self.finish_appends(&journals, appends).await?;
        Ok(Some(RecordPins { pins }))
    }

    /// Takes record room on every journal at once, or on none (as the
    /// stripe ring's `reserve`): each slot starts with one pin, its
    /// logger's. `None` when `deadline` passed waiting for room (only the
    /// wait is cut short, never a checkpoint).
    async fn reserve_records(
        &self,
        journals: &[Arc<PvJournal>],
        len_bytes: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> BlockResult<Option<Vec<(u64, Placement)>>> {
        loop {
            let changes: Vec<_> = journals.iter().map(|j| j.subscribe()).collect();
            let lacking: Vec<usize> = {
                let mut states: Vec<_> = journals.iter().map(|j| j.lock()).collect();
                for (journal, state) in journals.iter().zip(&states) {
                    state.usable(journal.pv)?;
                }
                let lacking: Vec<usize> = (0..states.len())
                    .filter(|&i| !states[i].records.has_room(len_bytes))
                    .collect();
                if lacking.is_empty() {
                    return Ok(Some(
                        states
                            .iter_mut()
                            .map(|state| {
                                state
                                    .records
                                    .reserve(len_bytes, 1)
                                    .expect("room checked under the same locks")
                            })
                            .collect(),
                    ));
                }
                lacking
            };
            let mut retired = 0;
            for &i in &lacking {
                retired += journals[i]
                    .checkpoint(&self.inner.pvs, Retire::CompletedPrefix)
                    .await?;
            }
            if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                return Ok(None);
            }
            if retired == 0 {
                // Room comes back when pins drop.
                let mut waiting: Vec<_> = changes
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| lacking.contains(i))
                    .map(|(_, changes)| changes)
                    .collect();
                let changed = select_all(waiting.iter_mut().map(|c| Box::pin(c.changed())));
                match deadline {
                    Some(deadline) => {
                        if tokio::time::timeout_at(deadline, changed).await.is_err() {
                            return Ok(None);
                        }
                    }
                    None => {
                        let _ = changed.await;
                    }
                }
            }
        }
    }
}
