//! `ThinVolume`: a logical volume as a block device. It maps the volume's
//! bytes onto physical extents, allocates thin extents on first write,
//! gives them back on discard, and answers block status.
//!
//! ```text
//!  LV bytes   |-- extent 0 --|-- extent 1 --|-- extent 2 --|
//!  slots        PE(pv1, 7)      unmapped       PE(pv2, 0)
//!  written      0b..0110        -              0b..1111      (64 chunks each)
//! ```
//!
//! Each logical extent has a slot: its placement (or none) and a 64-bit
//! "written" bitmap of chunks (extent / 64; 64 KiB for the default 4 MiB
//! extent). Clear chunks read as zeroes whatever the PE holds, so a PE
//! freed by one LV and handed to another never shows the old data, and
//! nothing is zeroed at allocation. The first write into a chunk that does
//! not cover it whole writes the rest of the chunk as zeroes.
//!
//! Locking, per extent: reads and writes into chunks already written (or
//! covered whole) share the slot lock; allocation, partial-chunk first
//! writes, discard and zeroing take it alone. Holding the lock across the
//! PV I/O keeps a PE from being freed under an I/O in flight.
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

mod commit;
mod geometry;
mod io;
mod pvs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metadata::{LeaseToken, MapService, MetaError, Placement};
use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;

use crate::buf::{IoBuf, IoBufMut, IO_ALIGN};
use crate::device::{
    BlockDevice, BufResult, ByteRange, Caps, DeviceInfo, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};
use commit::{Committer, Dirty};
pub use geometry::Geometry;
pub use pvs::{PvHandle, PvSet};

/// Largest single request; pieces stay within the leaves' limit.
const IO_BYTES_MAX: u32 = 32 << 20;

#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Who holds the lease (shown in `lvs`).
    pub holder: String,
    /// How often dirty map changes are committed without a client flush.
    pub commit_interval: Duration,
    /// Extents reserved from the VG at a time.
    pub reserve_batch: usize,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            holder: format!("bv serve (pid {})", std::process::id()),
            commit_interval: Duration::from_secs(1),
            reserve_batch: 4,
        }
    }
}

/// One logical extent.
#[derive(Debug, Default)]
struct Slot {
    placement: tokio::sync::RwLock<Option<Placement>>,
    written: AtomicU64,
    /// Map changes made to this extent so far, and how many of them a
    /// commit has made durable.
    changes: AtomicU64,
    committed: AtomicU64,
}

impl Slot {
    /// True when the extent's map entry on disk is the one in memory.
    fn is_durable(&self) -> bool {
        self.committed.load(Ordering::Acquire) >= self.changes.load(Ordering::Acquire)
    }
}

pub struct ThinVolume {
    inner: Arc<Inner>,
    upkeep: JoinHandle<()>,
}

struct Inner {
    name: String,
    map: Arc<dyn MapService>,
    token: LeaseToken,
    lease_duration: Duration,
    pvs: PvSet,
    geometry: Geometry,
    thin: bool,
    size_bytes: AtomicU64,
    slots: RwLock<Vec<Arc<Slot>>>,
    reservation: Mutex<Vec<Placement>>,
    reserve_batch: usize,
    dirty: Mutex<Dirty>,
    committer: Committer,
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
        let grant = map
            .acquire(vg, lv, &options.holder)
            .await
            .map_err(|e| meta_error(&name, e))?;
        let geometry = Geometry::new(grant.vg.extent_bytes);
        let slots: Vec<Arc<Slot>> = (0..grant.lv.size_bytes / geometry.extent_bytes)
            .map(|_| Arc::new(Slot::default()))
            .collect();
        for (le, entry) in grant.map {
            let slot = slots.get(le as usize).ok_or_else(|| {
                BlockError::new(
                    ErrorKind::Corrupt,
                    format!("{name}: mapped extent {le} beyond the LV's size"),
                )
            })?;
            *slot
                .placement
                .try_write()
                .expect("no one else holds it yet") = Some(entry.placement);
            slot.written.store(entry.written, Ordering::Relaxed);
        }
        let inner = Arc::new(Inner {
            name,
            map,
            token: grant.token,
            lease_duration: grant.duration,
            pvs,
            geometry,
            thin: grant.lv.thin,
            size_bytes: AtomicU64::new(grant.lv.size_bytes),
            slots: RwLock::new(slots),
            reservation: Mutex::new(Vec::new()),
            reserve_batch: options.reserve_batch.max(1),
            dirty: Mutex::new(Dirty::default()),
            committer: Committer::default(),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let upkeep = tokio::spawn(commit::upkeep(
            Arc::downgrade(&inner),
            options.commit_interval,
        ));
        Ok(ThinVolume { inner, upkeep })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Commits everything, returns unused reservations and ends the lease.
    /// The volume refuses I/O afterwards.
    pub async fn close(&self) -> BlockResult<()> {
        let synced = self.inner.sync().await;
        self.inner.closed.store(true, Ordering::Release);
        self.upkeep.abort();
        let unused = std::mem::take(&mut *self.inner.reservation.lock());
        let released = self
            .inner
            .map
            .release(self.inner.token, unused)
            .await
            .map_err(|e| meta_error(&self.inner.name, e));
        synced.and(released)
    }

    /// Picks up a larger size after `lvextend` (new extents are visible to
    /// clients that connect afterwards).
    pub async fn refresh(&self) -> BlockResult<()> {
        self.inner.refresh().await
    }
}

impl Drop for ThinVolume {
    fn drop(&mut self) {
        self.upkeep.abort();
    }
}

impl Inner {
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

    /// Records a change to extent `le`'s map entry for the next commit.
    fn map_changed(&self, slot: &Slot, le: u64) {
        slot.changes.fetch_add(1, Ordering::AcqRel);
        self.dirty.lock().extents.insert(le);
    }

    fn slot(&self, le: u64) -> Arc<Slot> {
        self.slots.read()[le as usize].clone()
    }

    /// A placement for a new extent, from the reservation or the VG.
    async fn allocate(&self) -> BlockResult<Placement> {
        if let Some(placement) = self.reservation.lock().pop() {
            return Ok(placement);
        }
        let mut fresh = self
            .map
            .reserve(self.token, self.reserve_batch)
            .await
            .map_err(|e| meta_error(&self.name, e))?;
        let placement = fresh.pop().ok_or_else(|| {
            BlockError::new(
                ErrorKind::NoSpace,
                format!("{}: the volume group has no free extent left", self.name),
            )
        })?;
        self.reservation.lock().extend(fresh);
        Ok(placement)
    }

    async fn refresh(&self) -> BlockResult<()> {
        let record = self
            .map
            .renew(self.token)
            .await
            .map_err(|e| meta_error(&self.name, e))?;
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
                *slot.placement.try_write().expect("not shared yet") = Some(entry.placement);
                slot.written.store(entry.written, Ordering::Relaxed);
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
