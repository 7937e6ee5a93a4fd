//! The stripe journal: closes the write hole of raid5 and erasure-coded
//! rows (invariant 2), as md's journal and PPL do.
//!
//! A partial-stripe write changes some data units of a row and its parity.
//! A crash between those writes leaves parity that matches neither the old
//! nor the new data; if a disk then fails, rebuilding a unit that was not
//! even being written returns wrong bytes. So, for every write of a parity
//! row, the layout
//!
//! 1. computes the new data and parity bytes;
//! 2. logs them with [`JournalSet::log`]: one entry holding every byte it
//!    is about to write in place, on the journal of each parity leg's PV
//!    (M copies), and waits until the entry is durable;
//! 3. writes data and parity in place;
//! 4. hands the tickets back ([`JournalSet::completed`]).
//!
//! After a crash, [`JournalSet::recover`] rewrites the bytes of every entry
//! not yet retired, so each row that was mid-update is whole again before
//! anything reads it. Entries hold complete new content, so replaying an
//! older entry and then a newer one for a row ends at the newer state.
//!
//! Full-stripe writes may log an *intent* entry instead (`intent.rs`; the
//! raid5 and ec K+1 layouts do): the
//! checksums of every new block and of what each data block held, not
//! the bytes. Their parity comes from the new data alone; what can go
//! wrong is only the tearing of their in-place writes, and recovery undoes
//! that by re-encoding parity from data blocks that each hold their old or
//! new version (rebuilding from parity those that hold neither). The
//! caller retires a row's intent ([`JournalSet::has_unretired_intent`],
//! [`JournalSet::retire`]) before it logs anything else for that row.
//!
//! Every PV has one journal, shared by all layouts of the server, in the
//! region the PV layout reserves for it (`metadata::pv_journal_bytes`):
//!
//! ```text
//!  PV:     | label area, 1 MiB | journal region | PE 0 | PE 1 | ...
//!
//!  region: +0      header slot 0 (4 KiB)  \  written in turn (FUA); the valid slot
//!          +4 KiB  header slot 1 (4 KiB)  /  with the higher header sequence is current
//!          +8 KiB  stripe ring of entries ............ | record ring | region end
//!                  |entry seq 41|entry seq 42|  free  |gap| (records.rs: a sixteenth)
//!                   ^ tail (in the header)    ^ head
//!
//!  entry:  | header block (4 KiB)                        | payload            |
//!          | magic, generation, epoch, seq, entry id,   | write 0's bytes,   |
//!          | size, row, payload CRC, kind, targets      | write 1's bytes,.. |
//!          | (PV id, device offset, bytes) x n, CRC     | (intent: checksums)|
//! ```
//!
//! The byte layout of both blocks is in `format.rs` (format version 3, all
//! little-endian, CRC-32C). Sequence numbers go up by one per entry of a
//! journal. An entry is whole blocks and never straddles the end of the
//! ring: one that does not fit before the end starts at ring offset 0 and
//! the skipped gap counts as its own (no wrap marker; `ring.rs` says why).
//! An entry larger than half the ring is refused: 476 KiB in the smallest
//! (1 MiB) region. Parity is byte-wise, so a layout can split a row's
//! update by byte range within the unit when a whole row is larger.
//!
//! - **generation**: random, chosen when a region is formatted; entries of
//!   an earlier journal in the same place never count.
//! - **epoch**: raised for every journal by each recovery; recovery replays
//!   only entries of the newest epoch it finds (`recover.rs` says why).
//! - **entry id**: numbered per set and epoch when `log` starts, the same
//!   on every copy; recovery merges the copies and replays in id order.
//!
//! Group commit: concurrent appends to one journal are plain writes that
//! share one flush (`pv_journal.rs`); the flush that covers an entry
//! starts after its write completed. A full ring makes `log` run a
//! checkpoint and wait for room; it never fails for lack of room.
//!
//! Retirement (`checkpoint.rs`): a checkpoint flushes the targets of
//! completed entries, then writes the header with the new tail (FUA), then
//! frees their ring space. One runs when a log finds a ring over half full,
//! every `checkpoint_interval`, and on [`JournalSet::checkpoint_all`]
//! (a layout's barrier before a placement is freed or replaced, so no stale
//! entry is ever replayed into a PE handed to someone else).
//!
//! Crash-ordering rules:
//! - an entry is durable on every journal it is logged on, and so is every
//!   older entry of those journals, before `log` returns, hence before any
//!   in-place write of it starts;
//! - a header that moves the tail past an entry is written (FUA) only after
//!   the entry's in-place writes completed and their devices were flushed;
//!   its ring space is reused only after that header is durable;
//! - recovery flushes every replayed target before it rewrites any header.
//!
//! Errors: a failed write or flush of a journal device poisons that journal
//! and is returned to the caller (the layout then treats the PV as
//! failed). A target PV that fails a flush at a checkpoint, or a write or
//! flush during replay, is marked failed in the `PvSet`, as any layout I/O
//! error does; so is a PV whose journal recovery cannot read or rewrite
//! (recovery goes on without it). Nothing read from disk is trusted before
//! its checksum.
//!
//! Callers must not hold tickets they have not handed back while they log
//! again on the same journals: a full ring waits for those tickets.

mod checkpoint;
mod entry;
mod format;
mod intent;
mod io;
mod pv_journal;
mod records;
mod records_recover;
mod recover;
mod region;
mod ring;
mod scan;
mod settle;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use blockvirt::volume::PvSet;
use blockvirt::{BlockError, BlockResult, ByteRange, ErrorKind};
use futures::future::{join_all, select_all};
use metadata::PvId;
use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;

use self::checkpoint::Retire;
use self::format::{EntryHeader, BLOCK_BYTES, HEADER_AREA_BYTES};
use self::pv_journal::{PvJournal, Ticket};
use self::region::{check_region, format_region, open_region};
use self::ring::max_entry_bytes;

pub use self::entry::{JournalEntry, JournalRecovery, JournalWrite, RecoveryReport, RowKey};
pub use self::format::{FORMAT_VERSION, MAX_WRITES};
pub use self::intent::{RowCodec, RowIntent};
pub use self::records::{
    records_ring_bytes, ExtentLegs, RecordEntry, RecordPin, RecordPins, RecordWrite,
};

/// The smallest region: the header slots and a ring of 8 blocks (entries
/// of up to 4 blocks). Real regions are 1 to 64 MiB.
pub const MIN_REGION_BYTES: u64 = HEADER_AREA_BYTES + 8 * BLOCK_BYTES;

/// How a [`JournalSet`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// Checkpoint every journal this often, so an idle server retires its
    /// entries without waiting for the ring to fill. `None`: only on
    /// demand and when a ring is half full.
    pub checkpoint_interval: Option<Duration>,
}

impl Default for JournalOptions {
    /// Every second, as the volume's commit interval.
    fn default() -> Self {
        JournalOptions {
            checkpoint_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Proof that an entry is durable on each journal it was logged on; hand
/// it back with [`JournalSet::completed`] once the in-place writes are
/// over. Dropping it has the same effect.
#[must_use = "hand tickets back with JournalSet::completed after the in-place writes"]
#[derive(Debug)]
pub struct Tickets {
    tickets: Vec<Ticket>,
}

impl Tickets {
    /// One per journal the entry was logged on.
    pub fn len(&self) -> usize {
        self.tickets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty()
    }
}

/// The journals of every PV of a server (one per PV), shared by all its
/// layouts. Cheap to clone.
#[derive(Clone)]
pub struct JournalSet {
    inner: Arc<Inner>,
}

struct Inner {
    pvs: PvSet,
    journals: RwLock<BTreeMap<PvId, Arc<PvJournal>>>,
    /// The epoch entries are logged in; set by recovery.
    epoch: AtomicU64,
    next_id: AtomicU64,
    recovered: AtomicBool,
    recovering: AtomicBool,
    /// The records recovery found whose extents are still placed, per
    /// copy of each block: for the volumes' resync (`recorded_crcs`).
    recorded: Mutex<records_recover::RecordedBlocks>,
    periodic: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.periodic.lock().take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for JournalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pvs: Vec<PvId> = self.inner.journals.read().keys().copied().collect();
        write!(f, "JournalSet({pvs:?})")
    }
}

impl JournalSet {
    /// Opens the journal of each PV in `regions` (formatting an empty one
    /// where the region holds none); does not replay. PVs that are failed
    /// or not in `pvs` are left out. Checkpoints every second.
    pub async fn open(pvs: PvSet, regions: Vec<(PvId, ByteRange)>) -> BlockResult<JournalSet> {
        JournalSet::open_with(pvs, regions, JournalOptions::default()).await
    }

    /// [`open`](Self::open) with options.
    pub async fn open_with(
        pvs: PvSet,
        regions: Vec<(PvId, ByteRange)>,
        options: JournalOptions,
    ) -> BlockResult<JournalSet> {
        // Every region is checked before anything is read or written.
        let mut usable = Vec::with_capacity(regions.len());
        for (i, &(pv, region)) in regions.iter().enumerate() {
            if regions[..i].iter().any(|&(other, _)| other == pv) {
                return Err(BlockError::new(
                    ErrorKind::InvalidArgument,
                    format!("journal of PV id {pv} given twice"),
                ));
            }
            match pvs.get(pv) {
                Ok(handle) if !pvs.is_failed(pv) => {
                    check_region(pv, handle.device.as_ref(), region)?;
                    usable.push((pv, region, handle.device));
                }
                _ => tracing::warn!("PV id {pv} is failed or missing: its journal is not opened"),
            }
        }
        let mut journals = BTreeMap::new();
        for (pv, region, device) in usable {
            let header = open_region(pv, &device, region).await?;
            journals.insert(pv, PvJournal::new(pv, device, region, header, false));
        }
        let inner = Arc::new(Inner {
            pvs,
            journals: RwLock::new(journals),
            epoch: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            recovered: AtomicBool::new(false),
            recovering: AtomicBool::new(false),
            recorded: Mutex::new(Default::default()),
            periodic: Mutex::new(None),
        });
        if let Some(interval) = options.checkpoint_interval {
            *inner.periodic.lock() = Some(spawn_periodic(Arc::downgrade(&inner), interval));
        }
        Ok(JournalSet { inner })
    }

    /// Adds the journal of a PV created at run time, formatting its region
    /// whatever it held.
    pub async fn add(&self, pv: PvId, region: ByteRange) -> BlockResult<()> {
        let exists = || {
            BlockError::new(
                ErrorKind::InvalidArgument,
                format!("PV id {pv} already has a journal"),
            )
        };
        if self.inner.journals.read().contains_key(&pv) {
            return Err(exists());
        }
        let handle = self.inner.pvs.get(pv)?;
        check_region(pv, handle.device.as_ref(), region)?;
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let header = format_region(pv, &handle.device, region, epoch).await?;
        let ready = self.inner.recovered.load(Ordering::Acquire);
        let journal = PvJournal::new(pv, handle.device, region, header, ready);
        let mut journals = self.inner.journals.write();
        if journals.contains_key(&pv) {
            return Err(exists());
        }
        journals.insert(pv, journal);
        Ok(())
    }

    /// Drops the journal of a PV leaving the server (`pvremove`), after
    /// retiring its entries if the PV still works. Nothing may log on it
    /// any more: the PV holds no extent of any LV.
    pub async fn remove(&self, pv: PvId) -> BlockResult<()> {
        let journal = self.inner.journals.read().get(&pv).cloned();
        let Some(journal) = journal else {
            return Err(BlockError::new(
                ErrorKind::NotFound,
                format!("PV id {pv} has no journal"),
            ));
        };
        if !self.inner.pvs.is_failed(pv) {
            journal
                .checkpoint(&self.inner.pvs, Retire::AllLogged)
                .await?;
        }
        self.inner.journals.write().remove(&pv);
        Ok(())
    }

    /// Replays every unretired entry of every journal (merged across
    /// copies, in log order) onto its targets, skipping targets whose PV is
    /// failed or absent; flushes the targets; then empties the journals.
    /// Runs once, at start, before any volume opens. A journal that
    /// cannot be read or rewritten fails its PV (through the `PvSet`, as
    /// any I/O error does) and recovery goes on without it. After an error
    /// (an entry that no longer reads back as scanned) it may run again.
    pub async fn recover(&self) -> BlockResult<RecoveryReport> {
        self.recover_with(None).await
    }

    /// [`recover`](Self::recover), settling the copies of recorded mirror
    /// blocks (`records.rs`) whose extents `legs` still places there.
    /// Without it, records are read but settle nothing.
    pub async fn recover_with(&self, legs: Option<&dyn ExtentLegs>) -> BlockResult<RecoveryReport> {
        if self.inner.recovered.load(Ordering::Acquire)
            || self.inner.recovering.swap(true, Ordering::AcqRel)
        {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "journal recovery runs once, at start",
            ));
        }
        // Cleared however this ends (error, or the caller giving up), so
        // recovery can run again.
        let _running = ClearOnDrop(&self.inner.recovering);
        let (report, recorded) = recover::recover(&self.inner.pvs, &self.journals(), legs).await?;
        *self.inner.recorded.lock() = recorded;
        self.inner.epoch.store(report.epoch, Ordering::Release);
        self.inner.next_id.store(0, Ordering::Release);
        self.inner.recovered.store(true, Ordering::Release);
        Ok(report)
    }

    /// The CRC-32C the records found by recovery hold for the block at
    /// device offset `offset_bytes` of PV `pv`, newest first, where they
    /// are records of extent `le` of LV `lv`; `None` where there are none.
    /// A resync after the start takes the copy matching one, so rot that
    /// set in after recovery cannot pass for the write either.
    pub fn recorded_crcs(&self, lv: u64, le: u64, pv: PvId, offset_bytes: u64) -> Option<Vec<u32>> {
        let recorded = self.inner.recorded.lock();
        let (owner, crcs) = recorded.get(&(pv, offset_bytes))?;
        (*owner == (lv, le)).then(|| crcs.clone())
    }

    /// Logs `entry` durably on the journals of `pvs` (the row's parity
    /// PVs) and returns a ticket per journal. Returns only when the entry
    /// is durable on all of them. Waits for room when a ring is full. A
    /// journal's I/O error is returned (naming its PV), and the entry then
    /// counts as logged nowhere.
    pub async fn log(&self, pvs: &[PvId], entry: &JournalEntry) -> BlockResult<Tickets> {
        if !self.inner.recovered.load(Ordering::Acquire) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "journal set not recovered yet",
            ));
        }
        entry.validate()?;
        entry::validate_journal_pvs(pvs)?;
        entry::validate_targets(&self.inner.pvs, entry)?;
        let journals = self.journals_of(pvs)?;
        let len_bytes = entry.entry_bytes();
        for journal in &journals {
            let header = journal.lock().header;
            let max = max_entry_bytes(pv_journal::ring_capacity_bytes(journal.region, &header));
            if len_bytes > max {
                return Err(BlockError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "journal entry of {len_bytes} bytes for {:?}: the journal on PV id {} takes at most {max}",
                        entry.row, journal.pv
                    ),
                ));
            }
        }
        let target_pvs = entry.target_pvs();
        let mut header = EntryHeader {
            generation: 0,
            epoch: self.inner.epoch.load(Ordering::Acquire),
            seq: 0,
            id: self.inner.next_id.fetch_add(1, Ordering::AcqRel),
            row: entry.row,
            payload_crc: entry.payload_crc(),
            kind: entry.kind(),
            targets: entry.targets(),
        };
        let reserved = match self.reserve(&journals, entry, &target_pvs).await {
            Ok(reserved) => reserved,
            Err(e) => {
                self.fail_poisoned(&journals);
                return Err(e);
            }
        };

        // From the reservation until every append task is spawned nothing
        // awaits: a reserved slot is always written.
        let mut appends = Vec::with_capacity(journals.len());
        for (journal, (seq, placement)) in journals.iter().zip(reserved) {
            header.generation = journal.lock().header.generation;
            header.seq = seq;
            let buf = entry.encode(&header);
            appends.push(tokio::spawn(journal.clone().append(
                seq,
                placement.offset_bytes,
                buf,
            )));
            let (used, capacity) = {
                let state = journal.lock();
                (state.ring.used_bytes(), state.ring.capacity_bytes())
            };
            if used > capacity / 2 {
                self.checkpoint_in_background(journal);
            }
        }
        // On a failure the tickets of the journals that succeeded are
        // dropped, which completes them: a checkpoint retires their entries.
        let tickets = self.finish_appends(&journals, appends).await?;
        Ok(Tickets { tickets })
    }

    /// Waits for every append task of one entry (one per journal) and
    /// returns their proofs; on the first failure, the error, with the
    /// journals that failed marked so (the others' proofs are dropped).
    async fn finish_appends<T>(
        &self,
        journals: &[Arc<PvJournal>],
        appends: Vec<JoinHandle<BlockResult<T>>>,
    ) -> BlockResult<Vec<T>> {
        let mut done = Vec::with_capacity(appends.len());
        let mut failure = None;
        for append in appends {
            match append.await {
                Ok(Ok(proof)) => done.push(proof),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(join) => {
                    failure = failure.or(Some(BlockError::with_source(
                        ErrorKind::Internal,
                        "journal append task",
                        join,
                    )))
                }
            }
        }
        match failure {
            Some(e) => {
                self.fail_poisoned(journals);
                Err(e)
            }
            None => Ok(done),
        }
    }

    /// A journal that failed an I/O is its PV failing: marked failed here,
    /// so the caller's retry leaves it out. Every log that meets the
    /// journal failed does it, not only the one whose I/O failed: another
    /// may see the journal poisoned first.
    fn fail_poisoned(&self, journals: &[Arc<PvJournal>]) {
        for journal in journals {
            let failure = journal.lock().failure().map(str::to_string);
            if let Some(why) = failure {
                self.inner.pvs.fail(journal.pv, &why);
            }
        }
    }

    /// The in-place writes of these tickets are over (successfully or not:
    /// the journal keeps the entries until a checkpoint has flushed their
    /// targets).
    pub fn completed(&self, tickets: Tickets) {
        drop(tickets);
    }

    /// True if `row` has an entry not yet retired on the journal of any of
    /// `pvs` (failed PVs aside: their journals are never replayed).
    pub fn has_unretired(&self, pvs: &[PvId], row: RowKey) -> bool {
        let journals = self.inner.journals.read();
        pvs.iter().any(|pv| {
            !self.inner.pvs.is_failed(*pv)
                && journals.get(pv).is_some_and(|j| j.lock().has_row(&row))
        })
    }

    /// True if `row` has an intent entry (a full-row write logged as
    /// checksums) not yet retired on the journal of any of `pvs`. Nothing
    /// else of that row may be logged until it is retired (`intent.rs`).
    pub fn has_unretired_intent(&self, pvs: &[PvId], row: RowKey) -> bool {
        let journals = self.inner.journals.read();
        pvs.iter().any(|pv| {
            !self.inner.pvs.is_failed(*pv)
                && journals.get(pv).is_some_and(|j| j.lock().has_intent(&row))
        })
    }

    /// Retires every entry logged before the call on the journals of
    /// `pvs`, as [`checkpoint_all`](Self::checkpoint_all) does on all.
    pub async fn retire(&self, pvs: &[PvId]) -> BlockResult<()> {
        let journals: Vec<_> = {
            let all = self.inner.journals.read();
            pvs.iter()
                .filter(|pv| !self.inner.pvs.is_failed(**pv))
                .filter_map(|pv| all.get(pv).cloned())
                .collect()
        };
        self.checkpoint_journals(journals).await
    }

    /// Retires every entry logged before the call on every journal of an
    /// online PV, waiting for their in-place writes to complete (tickets
    /// not handed back keep it waiting), and returns once the new tails are
    /// durable. A journal whose checkpoint fails an I/O is its PV failing:
    /// the PV is marked failed (a failed PV's journal is never replayed)
    /// and the others' checkpoints stand, so a dead disk degrades the pool
    /// instead of stopping every volume's commits.
    pub async fn checkpoint_all(&self) -> BlockResult<()> {
        let pvs = &self.inner.pvs;
        let journals: Vec<_> = self
            .journals()
            .into_iter()
            .filter(|j| !pvs.is_failed(j.pv))
            .collect();
        self.checkpoint_journals(journals).await
    }

    async fn checkpoint_journals(&self, journals: Vec<Arc<PvJournal>>) -> BlockResult<()> {
        let pvs = &self.inner.pvs;
        let results = join_all(
            journals
                .iter()
                .map(|j| j.checkpoint(pvs, Retire::AllLogged)),
        )
        .await;
        self.fail_poisoned(&journals);
        for (journal, result) in journals.iter().zip(results) {
            if let Err(e) = result {
                if !pvs.is_failed(journal.pv) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The journals, sorted by PV.
    fn journals(&self) -> Vec<Arc<PvJournal>> {
        self.inner.journals.read().values().cloned().collect()
    }

    /// The journals of `pvs`, sorted by PV (the order their locks are taken in).
    fn journals_of(&self, pvs: &[PvId]) -> BlockResult<Vec<Arc<PvJournal>>> {
        let journals = self.inner.journals.read();
        let mut found = Vec::with_capacity(pvs.len());
        for pv in pvs {
            let journal = journals.get(pv).ok_or_else(|| {
                BlockError::new(ErrorKind::NotFound, format!("PV id {pv} has no journal"))
            })?;
            if self.inner.pvs.is_failed(*pv) {
                return Err(BlockError::new(
                    ErrorKind::Io,
                    format!("PV id {pv} has failed: its journal is unusable"),
                ));
            }
            found.push(journal.clone());
        }
        found.sort_by_key(|j| j.pv);
        Ok(found)
    }

    /// Takes room on every journal at once, or on none: a caller never
    /// holds room on one journal while it waits for another, so callers
    /// waiting for room cannot wait on each other in a circle.
    async fn reserve(
        &self,
        journals: &[Arc<PvJournal>],
        entry: &JournalEntry,
        target_pvs: &[PvId],
    ) -> BlockResult<Vec<(u64, ring::Placement)>> {
        let len_bytes = entry.entry_bytes();
        loop {
            let changes: Vec<_> = journals.iter().map(|j| j.subscribe()).collect();
            let lacking: Vec<usize> = {
                let mut states: Vec<_> = journals.iter().map(|j| j.lock()).collect();
                for (journal, state) in journals.iter().zip(&states) {
                    state.usable(journal.pv)?;
                }
                let lacking: Vec<usize> = (0..states.len())
                    .filter(|&i| states[i].ring.place(len_bytes).is_none())
                    .collect();
                if lacking.is_empty() {
                    let reserved = states
                        .iter_mut()
                        .map(|state| {
                            state
                                .reserve(entry.row, entry.intent.is_some(), target_pvs, len_bytes)
                                .expect("room checked under the same locks")
                        })
                        .collect();
                    return Ok(reserved);
                }
                lacking
            };
            let mut retired = 0;
            for &i in &lacking {
                retired += journals[i]
                    .checkpoint(&self.inner.pvs, Retire::CompletedPrefix)
                    .await?;
            }
            if retired == 0 {
                // Room comes back when in-place writes complete; wait for any
                // change on a journal that lacks it.
                let mut waiting: Vec<_> = changes
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| lacking.contains(i))
                    .map(|(_, changes)| changes)
                    .collect();
                let _ = select_all(waiting.iter_mut().map(|c| Box::pin(c.changed()))).await;
            }
        }
    }

    fn checkpoint_in_background(&self, journal: &Arc<PvJournal>) {
        if journal.background_checkpoint.swap(true, Ordering::AcqRel) {
            return;
        }
        let journal = journal.clone();
        let pvs = self.inner.pvs.clone();
        tokio::spawn(async move {
            if let Err(e) = journal.checkpoint(&pvs, Retire::CompletedPrefix).await {
                tracing::warn!(
                    "background checkpoint of the journal on PV id {}: {e}",
                    journal.pv
                );
            }
            journal
                .background_checkpoint
                .store(false, Ordering::Release);
        });
    }
}

struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Checkpoints every usable journal every `interval`, until the set is dropped.
fn spawn_periodic(set: Weak<Inner>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(inner) = set.upgrade() else {
                return;
            };
            if !inner.recovered.load(Ordering::Acquire) {
                continue;
            }
            let journals: Vec<_> = inner.journals.read().values().cloned().collect();
            for journal in journals {
                if inner.pvs.is_failed(journal.pv) || journal.lock().usable(journal.pv).is_err() {
                    continue;
                }
                if let Err(e) = journal
                    .checkpoint(&inner.pvs, Retire::CompletedPrefix)
                    .await
                {
                    tracing::warn!(
                        "periodic checkpoint of the journal on PV id {}: {e}",
                        journal.pv
                    );
                }
            }
        }
    })
}
