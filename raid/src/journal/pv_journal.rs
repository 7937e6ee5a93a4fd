//! One PV's journal in memory: the ring, the entries not yet retired, and
//! group commit of appends.
//!
//! ```text
//!  seq:     tail_seq ........ completed_end ... durable_end ... written_end ... next_seq
//!  slots:   [retirable prefix][logged, in-place writes running][written, not flushed][being written]
//! ```
//!
//! An append writes the whole entry into its ring slot, with FUA when the
//! device offers it: the entry is then durable once its write completes.
//! (A file PV turns FUA into `RWF_DSYNC`; on a disk without FUA the kernel
//! follows the write with a cache flush of its own. That is one request
//! and no extra round trip through this process, where a separate flush
//! costs a second request, a blocking `fdatasync` on an io_uring worker and
//! two thread wakes. Measured on the reference disk, 4k writes at QD32:
//! 67.5k IOPS with `RWF_DSYNC` against 40.3k with an `fdatasync` after
//! every other write.)
//!
//! On a device without FUA the append is a plain write, and its caller
//! waits until a flush of the journal device that started after the write
//! completed has finished. One flush runs at a time; callers that finish
//! writing during it wait for the next, which then covers all of them:
//! that is the group commit.
//!
//! Either way an entry counts as durable only once every older entry is
//! too (`durable_end` only ever covers a prefix). The prefix rule is what
//! recovery needs: it stops at the first gap.
//!
//! Crash-ordering rule: `log` returns only when the entry (and every entry
//! before it) is durable on the journal device.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use blockvirt::{
    BlockDevice, BlockError, BlockResult, ByteRange, Caps, ErrorKind, IoBuf, WriteFlags,
};
use metadata::PvId;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use super::entry::RowKey;
use super::format::{JournalHeader, HEADER_AREA_BYTES};
use super::io::write_all;
use super::records::RecordLane;
use super::ring::{Placement, Ring};

pub(super) struct PvJournal {
    pub pv: PvId,
    pub device: Arc<dyn BlockDevice>,
    pub region: ByteRange,
    state: Mutex<State>,
    /// Bumped on every change of `state` that a waiter may care about.
    changes: watch::Sender<u64>,
    /// One checkpoint (or recovery) at a time per journal: the header slots
    /// are written in turn and the tail moves forward only.
    pub checkpoint_lock: tokio::sync::Mutex<()>,
    /// A background checkpoint has been started and not finished.
    pub background_checkpoint: AtomicBool,
}

impl std::fmt::Debug for PvJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvJournal")
            .field("pv", &self.pv)
            .field("region", &self.region)
            .finish()
    }
}

pub(super) struct State {
    /// The header as it is durable on disk.
    pub header: JournalHeader,
    pub ring: Ring,
    pub next_seq: u64,
    /// Every entry below this one has been written (not necessarily flushed).
    written_end: u64,
    /// Every entry below this one is durable.
    durable_end: u64,
    /// Every entry below this one is durable and its in-place writes completed.
    completed_end: u64,
    flushing: bool,
    /// Entries not retired, oldest first; the first has `header.tail_seq`.
    slots: VecDeque<Slot>,
    /// Entries not retired, per row: all of them, and the intents.
    rows: HashMap<RowKey, (u32, u32)>,
    /// Set by the first failed journal write or flush; the journal then
    /// refuses everything, as what is durable on it is no longer known.
    poisoned: Option<String>,
    /// False until recovery ran: no appends before the old entries are replayed.
    pub ready: bool,
    /// The record ring (`records.rs`).
    pub records: RecordLane,
}

struct Slot {
    seq: u64,
    placement: Placement,
    row: RowKey,
    intent: bool,
    target_pvs: Vec<PvId>,
    written: bool,
    completed: bool,
}

/// Proof that an entry is durable on one journal. Dropping it (or handing
/// it to `completed`) says the entry's in-place writes are over, so a
/// checkpoint may retire the entry once it has flushed their targets. A
/// caller that gives up halfway drops it too, and the entry is kept until
/// that checkpoint all the same.
pub(super) struct Ticket {
    journal: Arc<PvJournal>,
    seq: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket(PV id {}, seq {})", self.journal.pv, self.seq)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.journal.complete(self.seq);
    }
}

impl PvJournal {
    pub fn new(
        pv: PvId,
        device: Arc<dyn BlockDevice>,
        region: ByteRange,
        header: JournalHeader,
        ready: bool,
    ) -> Arc<PvJournal> {
        let capacity = ring_capacity_bytes(region, &header);
        let state = State {
            header,
            ring: Ring::empty(capacity, header.tail_offset_bytes),
            next_seq: header.tail_seq,
            written_end: header.tail_seq,
            durable_end: header.tail_seq,
            completed_end: header.tail_seq,
            flushing: false,
            slots: VecDeque::new(),
            rows: HashMap::new(),
            poisoned: None,
            ready,
            records: RecordLane::new(&header),
        };
        Arc::new(PvJournal {
            pv,
            device,
            region,
            state: Mutex::new(state),
            changes: watch::channel(0).0,
            checkpoint_lock: tokio::sync::Mutex::new(()),
            background_checkpoint: AtomicBool::new(false),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// A receiver that sees every change made after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Device offset of a ring offset.
    pub fn ring_device_offset(&self, ring_offset_bytes: u64) -> u64 {
        self.region.offset_bytes + HEADER_AREA_BYTES + ring_offset_bytes
    }

    pub fn poison(&self, err: &BlockError) {
        {
            let mut state = self.lock();
            if state.poisoned.is_none() {
                tracing::error!("journal on PV id {} failed: {err}", self.pv);
                state.poisoned = Some(err.to_string());
            }
        }
        self.bump();
    }

    /// Writes a reserved entry and waits until it is durable. Runs as its
    /// own task: a reserved slot is always written (or the journal
    /// poisoned), whatever happens to the caller, so it cannot leave a hole
    /// that blocks the durable prefix for everyone after it.
    pub async fn append(
        self: Arc<Self>,
        seq: u64,
        offset_bytes: u64,
        buf: IoBuf,
    ) -> BlockResult<Ticket> {
        let at = self.ring_device_offset(offset_bytes);
        let fua = self.device.info().caps.contains(Caps::FUA);
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::empty()
        };
        if let Err(e) = write_all(&self.device, self.pv, "journal append", at, buf, flags).await {
            self.poison(&e);
            return Err(e);
        }
        {
            let mut state = self.lock();
            state.slot_mut(seq).written = true;
            while state.written_end < state.next_seq && state.slot(state.written_end).written {
                state.written_end += 1;
            }
            if fua {
                // Every entry below `written_end` was written with FUA too.
                state.durable_end = state.durable_end.max(state.written_end);
            }
        }
        self.bump();
        self.commit(seq).await?;
        Ok(Ticket { journal: self, seq })
    }

    /// Group commit: returns once entry `seq` is durable. Whoever finds no
    /// flush running and something new written starts one; the others wait.
    async fn commit(&self, seq: u64) -> BlockResult<()> {
        let mut changes = self.subscribe();
        loop {
            let target = {
                let mut state = self.lock();
                state.usable(self.pv)?;
                if state.durable_end > seq {
                    return Ok(());
                }
                // Nothing new to cover while an older entry is still being
                // written: its writer flushes when it is done.
                let start = !state.flushing && state.written_end > state.durable_end;
                if start {
                    state.flushing = true;
                }
                start.then_some(state.written_end)
            };
            match target {
                Some(written_end) => {
                    // Every entry below `written_end` completed its write
                    // before this flush started, so the flush covers it.
                    let result = self.device.flush().await;
                    {
                        let mut state = self.lock();
                        state.flushing = false;
                        if result.is_ok() {
                            state.durable_end = state.durable_end.max(written_end);
                        }
                    }
                    if let Err(e) = result {
                        let e = e.context_prefix(format_args!("PV id {}: journal flush", self.pv));
                        self.poison(&e);
                        return Err(e);
                    }
                    self.bump();
                }
                None => {
                    // The sender lives as long as `self`: this cannot fail.
                    let _ = changes.changed().await;
                }
            }
        }
    }

    fn complete(&self, seq: u64) {
        {
            let mut state = self.lock();
            state.slot_mut(seq).completed = true;
            while state.completed_end < state.next_seq && state.slot(state.completed_end).completed
            {
                state.completed_end += 1;
            }
            assert!(
                state.completed_end <= state.durable_end,
                "journal on PV id {}: an entry completed before it was durable",
                self.pv
            );
        }
        self.bump();
    }
}

impl State {
    /// Why the journal failed, once it has.
    pub fn failure(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Refuses work on a journal that failed or is not recovered yet.
    pub fn usable(&self, pv: PvId) -> BlockResult<()> {
        if let Some(why) = &self.poisoned {
            return Err(BlockError::new(
                ErrorKind::Poisoned,
                format!("journal on PV id {pv} failed earlier ({why})"),
            ));
        }
        if !self.ready {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!("journal on PV id {pv} is not recovered yet"),
            ));
        }
        Ok(())
    }

    /// Takes ring room for an entry of `len_bytes`, or `None` if the ring
    /// has none until a checkpoint frees some.
    pub fn reserve(
        &mut self,
        row: RowKey,
        intent: bool,
        target_pvs: &[PvId],
        len_bytes: u64,
    ) -> Option<(u64, Placement)> {
        let placement = self.ring.reserve(len_bytes)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(Slot {
            seq,
            placement,
            row,
            intent,
            target_pvs: target_pvs.to_vec(),
            written: false,
            completed: false,
        });
        let counts = self.rows.entry(row).or_insert((0, 0));
        counts.0 += 1;
        counts.1 += u32::from(intent);
        Some((seq, placement))
    }

    pub fn has_row(&self, row: &RowKey) -> bool {
        self.rows.contains_key(row)
    }

    pub fn has_intent(&self, row: &RowKey) -> bool {
        self.rows.get(row).is_some_and(|&(_, intents)| intents > 0)
    }

    /// Entries below this one may be retired now.
    pub fn completed_end(&self) -> u64 {
        self.completed_end
    }

    /// The PVs written in place by entries below `upto`, sorted.
    pub fn targets_before(&self, upto: u64) -> Vec<PvId> {
        let mut pvs: Vec<PvId> = self
            .slots
            .iter()
            .take_while(|s| s.seq < upto)
            .flat_map(|s| s.target_pvs.iter().copied())
            .collect();
        pvs.sort_unstable();
        pvs.dedup();
        pvs
    }

    /// The header that retires every stripe entry below `upto` and every
    /// record entry below `records_upto`.
    pub fn header_retiring(&self, upto: u64, records_upto: u64) -> JournalHeader {
        let tail_offset_bytes = self
            .slots
            .iter()
            .find(|s| s.seq == upto)
            .map_or(self.ring.head_bytes(), |s| s.placement.offset_bytes);
        JournalHeader {
            header_seq: self.header.header_seq + 1,
            tail_seq: upto,
            tail_offset_bytes,
            records_tail_seq: records_upto,
            records_tail_offset_bytes: self.records.tail_offset_for(records_upto),
            ..self.header
        }
    }

    /// Drops the entries below `header.tail_seq` and the record entries
    /// below `header.records_tail_seq`, now that `header` is durable.
    /// Returns how many were retired.
    pub fn retire(&mut self, header: JournalHeader) -> u64 {
        let records_before = self.records.live();
        self.records.retire(header.records_tail_seq);
        let records_retired = (records_before - self.records.live()) as u64;
        assert!(
            header.tail_seq <= self.completed_end && header.header_seq > self.header.header_seq,
            "retiring up to {} with entries completed only up to {}",
            header.tail_seq,
            self.completed_end
        );
        let mut retired = 0;
        while self.slots.front().is_some_and(|s| s.seq < header.tail_seq) {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.ring.release(slot.placement);
            match self.rows.get_mut(&slot.row) {
                Some((1, _)) => {
                    self.rows.remove(&slot.row);
                }
                Some((n, intents)) => {
                    *n -= 1;
                    *intents -= u32::from(slot.intent);
                }
                None => panic!("row {:?} of a live entry is not counted", slot.row),
            }
            retired += 1;
        }
        self.header = header;
        retired + records_retired
    }

    /// Starts over from `header` (durable), with no entry: after recovery.
    pub fn reset(&mut self, header: JournalHeader) {
        // Recovery may have given the region a record ring it lacked.
        let capacity = header.region_bytes - HEADER_AREA_BYTES - header.records_bytes;
        self.ring = Ring::empty(capacity, header.tail_offset_bytes);
        self.records = RecordLane::new(&header);
        self.next_seq = header.tail_seq;
        self.written_end = header.tail_seq;
        self.durable_end = header.tail_seq;
        self.completed_end = header.tail_seq;
        self.slots.clear();
        self.rows.clear();
        self.header = header;
        self.ready = true;
    }

    fn slot(&self, seq: u64) -> &Slot {
        let index = self.index(seq);
        &self.slots[index]
    }

    fn slot_mut(&mut self, seq: u64) -> &mut Slot {
        let index = self.index(seq);
        &mut self.slots[index]
    }

    fn index(&self, seq: u64) -> usize {
        let first = self.slots.front().map_or(u64::MAX, |s| s.seq);
        let index = seq.wrapping_sub(first) as usize;
        assert!(
            seq >= first && self.slots.get(index).is_some_and(|s| s.seq == seq),
            "journal entry {seq} is not live (first live: {first})"
        );
        index
    }
}

/// Bytes of the stripe ring in a region: all but the header slots and the
/// record ring at its end.
pub(super) fn ring_capacity_bytes(region: ByteRange, header: &JournalHeader) -> u64 {
    region.len_bytes - HEADER_AREA_BYTES - header.records_bytes
}
