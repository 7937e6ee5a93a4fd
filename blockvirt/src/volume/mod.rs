//! `ThinVolume`: a logical volume as a block device. It maps the volume's
//! bytes onto placed extents, allocates thin extents on first write, gives
//! them back on discard, answers block status, and (for redundant layouts)
//! keeps a checksum per block so a bad copy is never served.
//!
//! ```text
//!  LV bytes   |-- extent 0 --|-- extent 1 --|-- extent 2 --|
//!  slots        [PE(pv1,7)]     unmapped       [PE(pv2,0), PE(pv3,4)]
//!  written      0b..0110        -              0b..1111      (64 chunks each)
//!                    │ Redundancy (linear, raid0/1/5/10, ec)
//!                    ▼
//!                   legs (PEs on distinct PVs)
//! ```
//!
//! Each logical extent has a slot: its placement (or none), a 64-bit
//! "written" bitmap of chunks (extent / 64; 64 KiB for a 4 MiB linear
//! extent), and for redundant layouts a checksum per 4 KiB block. Clear
//! chunks read as zeroes whatever the PEs hold, so a PE freed by one LV and
//! handed to another never shows the old data, and nothing is zeroed at
//! allocation (parity layouts aside: their legs are zeroed before an
//! extent's first write, see `Redundancy::initialize`). The first write into a chunk that does not cover it whole
//! writes the rest of the chunk as zeroes.
//!
//! Locking, per extent: reads, and writes into chunks already written (or
//! covered whole), share the slot's placement lock; allocation, partial
//! first writes, discard, zeroing, repair of a bad copy and leg
//! replacement take it alone. Holding it across the leg I/O keeps a PE
//! from being freed under an I/O in flight. The chunk bits and the count of
//! map changes sit under one small mutex, updated together with the dirty
//! set, so a FUA write can always tell whether the map entry it relies on
//! is durable.
//!
//! Crash rule (see `commit`): data write -> PV flush -> synced metadata
//! commit -> acknowledge. A map change is committed only after the data it
//! marks written is durable, and a freed PE is reused only after the commit
//! that frees it.
//!
//! Granularity: allocation and release are per extent; written/zero
//! tracking is per chunk. Discard and write-zeroes clear whole chunks
//! (reading zeroes afterwards) and return an extent to the VG once none of
//! its chunks is written (thin LVs). A partial chunk is left as is by
//! discard (advisory) and overwritten with zeroes by write-zeroes.

mod checksum;
mod commit;
mod geometry;
mod io;
mod layout;
mod maintain;
mod pvs;
mod ranges;
mod resync;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metadata::{
    ChunkChecksums, CommitBatch, ExtentEntry, LeaseToken, MapService, MetaError, PeAddr, Placement,
    PvId,
};
use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;

use crate::buf::{IoBuf, IoBufMut, IO_ALIGN};
use crate::device::{
    BlockDevice, BufResult, ByteRange, Caps, DeviceInfo, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};
pub use checksum::{block_checksum, CHECKSUM_BLOCK_BYTES};
use commit::{Committer, Dirty};
pub use geometry::Geometry;
pub use layout::{
    BlockCheck, Kept, Layouts, Leg, Legs, Linear, LinearOnly, ReadReport, Redundancy, ScrubMode,
    ScrubReport,
};
pub use pvs::{PvHandle, PvSet};

/// Largest single request; pieces stay within the leaves' limit.
const IO_BYTES_MAX: u32 = 32 << 20;

#[derive(Clone)]
pub struct VolumeOptions {
    /// Who holds the lease (shown in `lvs`).
    pub holder: String,
    /// How often dirty map changes are committed without a client flush.
    pub commit_interval: Duration,
    /// Extents reserved from the VG at a time.
    pub reserve_batch: usize,
    /// Builds the I/O for the LV's layout.
    pub layouts: Arc<dyn Layouts>,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            holder: format!("bv serve (pid {})", std::process::id()),
            commit_interval: Duration::from_secs(1),
            reserve_batch: 4,
            layouts: Arc::new(LinearOnly),
        }
    }
}

/// The chunk bits of a slot and how many map changes it has seen and had
/// committed; updated together, under one lock.
#[derive(Debug, Default, Clone, Copy)]
struct Bits {
    written: u64,
    changes: u64,
    committed: u64,
}

/// One logical extent.
/// Reserved placements set aside because a leg's PV is unusable.
#[derive(Debug, Default)]
struct Skipped {
    pes: Vec<PeAddr>,
    pvs: BTreeSet<PvId>,
}

#[derive(Debug, Default)]
struct Slot {
    placement: tokio::sync::RwLock<Option<Placement>>,
    bits: Mutex<Bits>,
    /// Per-4 KiB-block checksums; empty unless the layout is redundant.
    checksums: Mutex<Vec<u32>>,
    /// Blocks (index in the extent) known bad: never adopted by a resync
    /// (see `metadata::ChunkChecksums::known_bad`).
    known_bad: Mutex<BTreeSet<usize>>,
    /// The placed extent went through `Redundancy::initialize` (or holds
    /// written data, which it did before its first write). Until then the
    /// first write initializes it: a thick LV's extents are placed at
    /// creation, on PEs holding whatever their previous owner left.
    ready: AtomicBool,
    /// Written before an unclean shutdown and not resynced since: its
    /// copies may disagree (see `resync`).
    unsynced: AtomicBool,
    /// Writes in flight under the shared placement lock.
    writing: ranges::WriteRanges,
}

impl Slot {
    fn written(&self) -> u64 {
        self.bits.lock().written
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// True when the extent's map entry on disk is the one in memory.
    fn is_durable(&self) -> bool {
        let bits = self.bits.lock();
        bits.committed >= bits.changes
    }
}

pub struct ThinVolume {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct Inner {
    name: String,
    map: Arc<dyn MapService>,
    token: LeaseToken,
    lease_duration: Duration,
    /// I/O stops at this instant unless a renewal moved it.
    lease_deadline: Mutex<Instant>,
    pvs: PvSet,
    redundancy: Arc<dyn Redundancy>,
    pe_bytes: u64,
    geometry: Geometry,
    /// Keep block checksums (redundant layouts).
    checksummed: bool,
    thin: bool,
    size_bytes: AtomicU64,
    slots: RwLock<Vec<Arc<Slot>>>,
    reservation: Mutex<Vec<Placement>>,
    /// Held while asking the VG for more extents.
    reserving: tokio::sync::Mutex<()>,
    reserve_batch: usize,
    dirty: Mutex<Dirty>,
    committer: Committer,
    refreshing: tokio::sync::Mutex<()>,
    /// Bad copies found by reads and scrubs since the volume opened.
    mismatches: AtomicU64,
    /// Sticky: once set, every operation fails with it.
    failure: Mutex<Option<(ErrorKind, String)>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for ThinVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThinVolume({})", self.inner.name)
    }
}

impl ThinVolume {
    /// Takes the write lease on `vg/lv` and loads its map.
    pub async fn open(
        map: Arc<dyn MapService>,
        pvs: PvSet,
        vg: &str,
        lv: &str,
        options: VolumeOptions,
    ) -> BlockResult<ThinVolume> {
        let name = format!("{vg}/{lv}");
        let requested = Instant::now();
        let grant = map
            .acquire(vg, lv, &options.holder)
            .await
            .map_err(|e| meta_error(&name, e))?;
        let token = grant.token;
        let unclean = grant.unclean;
        let inner = match Inner::new(name.clone(), map.clone(), pvs, grant, requested, &options) {
            Ok(inner) => Arc::new(inner),
            Err(e) => {
                // Do not leave the LV "in use" by a volume that never opened,
                // nor forget that it stopped uncleanly before.
                let _ = map.release(token, Vec::new(), !unclean).await;
                return Err(e);
            }
        };
        let mut tasks = vec![
            tokio::spawn(commit::background_commits(
                Arc::downgrade(&inner),
                options.commit_interval,
            )),
            tokio::spawn(commit::lease_renewal(Arc::downgrade(&inner))),
        ];
        if inner.unsynced_extents() > 0 {
            tasks.push(tokio::spawn(resync::background_resync(Arc::downgrade(
                &inner,
            ))));
        }
        Ok(ThinVolume { inner, tasks })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Commits everything, returns unused reservations and ends the lease.
    /// The volume refuses I/O afterwards. Extents still unsynced (opened
    /// after an unclean stop, and neither used nor reached by the
    /// background resync yet) keep the LV marked unclean, so the next open
    /// resyncs them: released as clean, their copies would be trusted as
    /// they are, and a block whose copies hold writes never committed would
    /// fail its checksum on every copy.
    pub async fn close(&self) -> BlockResult<()> {
        let synced = self.inner.sync().await;
        self.inner.closed.store(true, Ordering::Release);
        for task in &self.tasks {
            task.abort();
        }
        let clean = self.inner.unsynced_extents() == 0;
        let unused: Vec<PeAddr> = std::mem::take(&mut *self.inner.reservation.lock())
            .into_iter()
            .flatten()
            .collect();
        let released = self
            .inner
            .map
            .release(self.inner.token, unused, clean)
            .await
            .map_err(|e| meta_error(&self.inner.name, e));
        synced.and(released)
    }

    /// Picks up a larger size after `lvextend` (new extents are visible to
    /// clients that connect afterwards).
    pub async fn refresh(&self) -> BlockResult<()> {
        self.inner.refresh().await
    }

    /// Bad copies found by reads and scrubs since the volume opened.
    pub fn mismatches(&self) -> u64 {
        self.inner.mismatches.load(Ordering::Relaxed)
    }
}

impl Drop for ThinVolume {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Inner {
    fn new(
        name: String,
        map: Arc<dyn MapService>,
        pvs: PvSet,
        grant: metadata::LeaseGrant,
        requested: Instant,
        options: &VolumeOptions,
    ) -> BlockResult<Inner> {
        let pe_bytes = grant.vg.extent_bytes;
        let redundancy = options
            .layouts
            .build(&grant.lv, pe_bytes)
            .map_err(|e| e.context_prefix(&name))?;
        let geometry = Geometry::new(redundancy.extent_bytes());
        let checksummed = grant.lv.layout.is_redundant();
        let slots: Vec<Arc<Slot>> = (0..grant.lv.size_bytes / geometry.extent_bytes)
            .map(|_| Arc::new(Slot::default()))
            .collect();
        let corrupt = |what: String| BlockError::new(ErrorKind::Corrupt, format!("{name}: {what}"));
        for (le, entry) in grant.map {
            let slot = slots
                .get(le as usize)
                .ok_or_else(|| corrupt(format!("mapped extent {le} beyond the LV's size")))?;
            install(slot, entry, &geometry, checksummed);
            if grant.unclean && checksummed && slot.written() != 0 {
                slot.unsynced.store(true, Ordering::Release);
            }
        }
        for sums in grant.checksums {
            let slot = slots.get(sums.le as usize).ok_or_else(|| {
                corrupt(format!(
                    "checksums for extent {} beyond the LV's size",
                    sums.le
                ))
            })?;
            let per_chunk = geometry.blocks_per_chunk();
            let mut checksums = slot.checksums.lock();
            let start = sums.chunk as usize * per_chunk;
            if sums.values.len() != per_chunk || start + per_chunk > checksums.len() {
                return Err(corrupt(format!(
                    "checksums of extent {} chunk {} do not fit",
                    sums.le, sums.chunk
                )));
            }
            checksums[start..start + per_chunk].copy_from_slice(&sums.values);
            slot.known_bad
                .lock()
                .extend(sums.known_bad.iter().map(|&b| start + b as usize));
        }
        Ok(Inner {
            name,
            map,
            token: grant.token,
            lease_duration: grant.duration,
            lease_deadline: Mutex::new(requested + grant.duration),
            pvs,
            redundancy,
            pe_bytes,
            geometry,
            checksummed,
            thin: grant.lv.thin,
            size_bytes: AtomicU64::new(grant.lv.size_bytes),
            slots: RwLock::new(slots),
            reservation: Mutex::new(Vec::new()),
            reserving: tokio::sync::Mutex::new(()),
            reserve_batch: options.reserve_batch.max(1),
            dirty: Mutex::new(Dirty::default()),
            committer: Committer::default(),
            refreshing: tokio::sync::Mutex::new(()),
            mismatches: AtomicU64::new(0),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
        })
    }

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size_bytes: self.size_bytes.load(Ordering::Acquire),
            block_bytes: IO_ALIGN as u32,
            io_bytes_max: IO_BYTES_MAX,
            caps: Caps::FLUSH
                | Caps::FUA
                | Caps::DISCARD
                | Caps::WRITE_ZEROES
                | Caps::FAST_ZERO
                | Caps::BLOCK_STATUS,
            read_only: false,
        }
    }

    fn check_usable(&self) -> BlockResult<()> {
        if let Some((kind, why)) = &*self.failure.lock() {
            return Err(BlockError::new(*kind, format!("{}: {why}", self.name)));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(BlockError::new(
                ErrorKind::Shutdown,
                format!("{}: closed", self.name),
            ));
        }
        if Instant::now() >= *self.lease_deadline.lock() {
            let err = BlockError::new(
                ErrorKind::Fenced,
                format!("{}: write lease expired", self.name),
            );
            self.fail(&err);
            return Err(err);
        }
        Ok(())
    }

    /// Makes the volume refuse all further I/O (lost lease, failed commit).
    fn fail(&self, err: &BlockError) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            tracing::error!("{}: volume stopped: {err}", self.name);
            *failure = Some((err.kind(), err.to_string()));
        }
    }

    fn slot(&self, le: u64) -> Arc<Slot> {
        self.slots.read()[le as usize].clone()
    }

    fn legs(&self, placement: &Placement) -> Legs {
        self.pvs.legs(placement, self.pe_bytes)
    }

    /// Updates a slot's chunk bits; counts a map change and marks it dirty
    /// (in the same critical section) when they changed.
    fn update_bits(&self, slot: &Slot, le: u64, update: impl FnOnce(u64) -> u64) {
        let mut bits = slot.bits.lock();
        let written = update(bits.written);
        if written != bits.written {
            bits.written = written;
            bits.changes += 1;
            self.dirty.lock().extents.insert(le);
        }
    }

    /// Records a change to extent `le`'s placement for the next commit.
    fn placement_changed(&self, slot: &Slot, le: u64) {
        let mut bits = slot.bits.lock();
        bits.changes += 1;
        self.dirty.lock().extents.insert(le);
    }

    /// The checksums of `data`'s blocks on a redundant layout (none
    /// otherwise): computed once per write, for the layout
    /// (`BlockCheck::written`) and then the slot.
    fn block_checksums(&self, data: &[u8]) -> Vec<u32> {
        if !self.checksummed {
            return Vec::new();
        }
        data.chunks(IO_ALIGN).map(block_checksum).collect()
    }

    /// Stores checksums of `data` written at `offset_bytes` in extent `le`
    /// (redundant layouts) and marks their chunks for the next commit.
    fn record_checksums(&self, slot: &Slot, le: u64, offset_bytes: u64, data: &[u8]) {
        self.record_block_checksums(slot, le, offset_bytes, &self.block_checksums(data));
    }

    /// [`record_checksums`](Self::record_checksums) with the checksums
    /// computed already.
    fn record_block_checksums(&self, slot: &Slot, le: u64, offset_bytes: u64, sums: &[u32]) {
        if !self.checksummed {
            return;
        }
        let block = IO_ALIGN as u64;
        let first = (offset_bytes / block) as usize;
        slot.checksums.lock()[first..first + sums.len()].copy_from_slice(sums);
        let mut known_bad = slot.known_bad.lock();
        if !known_bad.is_empty() {
            let written = first..first + sums.len();
            known_bad.retain(|b| !written.contains(b));
        }
        drop(known_bad);
        let chunk_bytes = self.geometry.chunk_bytes;
        let mut dirty = self.dirty.lock();
        let end = offset_bytes + sums.len() as u64 * block;
        for chunk in offset_bytes / chunk_bytes..end.div_ceil(chunk_bytes) {
            dirty.checksum_chunks.insert((le, chunk as u8));
        }
    }

    /// A placement for a new extent, from the reservation or the VG.
    async fn allocate(&self) -> BlockResult<Placement> {
        let mut skipped = Skipped::default();
        if let Some(placement) = self.take_reserved(&mut skipped) {
            self.dirty.lock().returned.extend(skipped.pes);
            return Ok(placement);
        }
        // One reservation request at a time: a request that comes back
        // empty then means a full pool, not spares another request is
        // about to put in the reservation.
        let _one = self.reserving.lock().await;
        let mut reported = BTreeSet::new();
        loop {
            if let Some(placement) = self.take_reserved(&mut skipped) {
                self.dirty.lock().returned.extend(skipped.pes);
                return Ok(placement);
            }
            // A PV this server cannot use (dead, or missing since it
            // started) that the VG does not know as failed is offered
            // again and again: record it failed, so the VG places around
            // it, and hand its skipped PEs back now, as a full VG needs
            // every one of them.
            let news: Vec<PvId> = skipped.pvs.difference(&reported).copied().collect();
            if news.is_empty() && !reported.is_empty() {
                return Err(self.no_free_extent());
            }
            for pv in news {
                self.map
                    .report_failed_pv(pv, "unusable when a new extent was placed".into())
                    .await
                    .map_err(|e| meta_error(&self.name, e))?;
                reported.insert(pv);
            }
            self.give_back(std::mem::take(&mut skipped.pes)).await?;
            let fresh = self
                .map
                .reserve(self.token, self.reserve_batch)
                .await
                .map_err(|e| meta_error(&self.name, e))?;
            if fresh.is_empty() {
                return Err(self.no_free_extent());
            }
            self.reservation.lock().extend(fresh);
        }
    }

    fn no_free_extent(&self) -> BlockError {
        BlockError::new(
            ErrorKind::NoSpace,
            format!("{}: the volume group has no free extent left", self.name),
        )
    }

    /// A reserved placement with every leg on a working PV. Placements
    /// with a leg on a failed or missing PV are set aside in `skipped`: a
    /// new extent must not start out degraded.
    fn take_reserved(&self, skipped: &mut Skipped) -> Option<Placement> {
        let mut reservation = self.reservation.lock();
        while let Some(placement) = reservation.pop() {
            let failed: Vec<PvId> = placement
                .iter()
                .map(|pe| pe.pv)
                .filter(|&pv| self.pvs.is_failed(pv))
                .collect();
            if failed.is_empty() {
                return Some(placement);
            }
            skipped.pvs.extend(failed);
            skipped.pes.extend(placement);
        }
        None
    }

    /// Returns reserved PEs that were never written to the VG.
    async fn give_back(&self, pes: Vec<PeAddr>) -> BlockResult<()> {
        if pes.is_empty() {
            return Ok(());
        }
        let batch = CommitBatch {
            returned: pes.clone(),
            ..CommitBatch::default()
        };
        if let Err(e) = self.map.commit(self.token, batch).await {
            self.dirty.lock().returned.extend(pes);
            return Err(meta_error(&self.name, e));
        }
        Ok(())
    }

    async fn refresh(&self) -> BlockResult<()> {
        // One at a time: two would both append the new slots.
        let _one = self.refreshing.lock().await;
        let requested = Instant::now();
        let record = self
            .map
            .renew(self.token)
            .await
            .map_err(|e| meta_error(&self.name, e))?;
        *self.lease_deadline.lock() = requested + self.lease_duration;
        let known = self.slots.read().len() as u64;
        let extents = record.size_bytes / self.geometry.extent_bytes;
        if extents <= known {
            return Ok(());
        }
        let entries = if self.thin {
            Vec::new()
        } else {
            self.map
                .extents(self.token, known)
                .await
                .map_err(|e| meta_error(&self.name, e))?
        };
        let added: Vec<Arc<Slot>> = (known..extents)
            .map(|_| Arc::new(Slot::default()))
            .collect();
        for (le, entry) in entries {
            if let Some(slot) = le.checked_sub(known).and_then(|i| added.get(i as usize)) {
                install(slot, entry, &self.geometry, self.checksummed);
            }
        }
        self.slots.write().extend(added);
        self.size_bytes
            .store(extents * self.geometry.extent_bytes, Ordering::Release);
        tracing::info!(
            "{}: grown to {} bytes",
            self.name,
            extents * self.geometry.extent_bytes
        );
        Ok(())
    }
}

/// Fills a fresh slot (not shared yet) from its durable map entry.
fn install(slot: &Slot, entry: ExtentEntry, geometry: &Geometry, checksummed: bool) {
    *slot.placement.try_write().expect("not shared yet") = Some(entry.placement);
    slot.bits.lock().written = entry.written;
    slot.ready.store(entry.written != 0, Ordering::Release);
    if checksummed {
        slot.reset_checksums(geometry.blocks_per_extent());
    }
}

impl Slot {
    /// `blocks` zero checksums (none for an unmapped extent), nothing known bad.
    fn reset_checksums(&self, blocks: usize) {
        *self.checksums.lock() = vec![0; blocks];
        self.known_bad.lock().clear();
    }
}

/// The checksum records of one chunk, for a commit.
fn chunk_checksums(slot: &Slot, le: u64, chunk: u8, geometry: &Geometry) -> ChunkChecksums {
    let per_chunk = geometry.blocks_per_chunk();
    let start = chunk as usize * per_chunk;
    ChunkChecksums {
        le,
        chunk,
        values: slot.checksums.lock()[start..start + per_chunk].to_vec(),
        known_bad: slot
            .known_bad
            .lock()
            .range(start..start + per_chunk)
            .map(|&b| (b - start) as u32)
            .collect(),
    }
}

/// Maps a metadata-service error onto the data path's error kinds.
pub(crate) fn meta_error(volume: &str, err: MetaError) -> BlockError {
    let kind = match &err {
        MetaError::NotFound(_) => ErrorKind::NotFound,
        MetaError::AlreadyExists(_) | MetaError::Busy(_) => ErrorKind::Busy,
        MetaError::InvalidArgument(_) => ErrorKind::InvalidArgument,
        MetaError::NoSpace(_) => ErrorKind::NoSpace,
        MetaError::Fenced(_) => ErrorKind::Fenced,
        MetaError::Corrupt(_) => ErrorKind::Corrupt,
        MetaError::Store(_) => ErrorKind::Io,
    };
    BlockError::with_source(kind, format!("{volume}: metadata"), err)
}

#[async_trait]
impl BlockDevice for ThinVolume {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        if let Err(e) = self.inner.check_usable() {
            return (Err(e), buf);
        }
        self.inner.read(offset_bytes, buf).await
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        if let Err(e) = self.inner.check_usable() {
            return (Err(e), buf);
        }
        let result = self.inner.write(offset_bytes, &buf, flags).await;
        (result, buf)
    }

    async fn flush(&self) -> BlockResult<()> {
        self.inner.sync().await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        self.inner.check_usable()?;
        self.inner.zero(range, ZeroFlags::empty(), true).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        self.inner.check_usable()?;
        self.inner.zero(range, flags, false).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        self.inner.check_usable()?;
        self.inner.status(range).await
    }
}
