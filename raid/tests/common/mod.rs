//! Shared pieces of the raid tests. Here, for the journal tests: simulated
//! PVs with a journal region and a data area each, a runtime per "life" of
//! a server, deterministic contents, and a device wrapper that counts (and
//! can hold back) flushes. In `pool`: a whole volume group of simulated PVs
//! for the layout tests and the simulation.

#![allow(dead_code)]

pub mod pool;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blockvirt::testing::{SimDisk, SimFaults};
use blockvirt::volume::{PvHandle, PvSet};
use blockvirt::{
    BlockDevice, BlockResult, BufResult, ByteRange, DeviceInfo, IoBuf, IoBufMut, StatusExtent,
    WriteFlags, ZeroFlags,
};
use metadata::{PeAddr, PvId};
use raid::journal::{JournalEntry, JournalOptions, JournalSet, JournalWrite, RowKey};

pub const BLOCK: u64 = 4096;

/// One simulated PV: a journal region and, after it, a data area.
#[derive(Debug, Clone)]
pub struct SimPv {
    pub id: PvId,
    pub disk: Arc<SimDisk>,
    pub region: ByteRange,
    pub data_offset_bytes: u64,
}

/// Simulated PVs, ids 1..=count, each `disk_bytes` with a journal region
/// of `region_bytes` at 64 KiB and the data area after it.
pub struct World {
    pub pvs: Vec<SimPv>,
}

impl World {
    pub fn new(
        seed: u64,
        count: u64,
        disk_bytes: u64,
        region_bytes: u64,
        faults: SimFaults,
    ) -> World {
        World::with_fua(seed, count, disk_bytes, region_bytes, faults, true)
    }

    /// As `new`, on disks that offer FUA writes or not (without, every
    /// journal entry waits for a flush of its device).
    pub fn with_fua(
        seed: u64,
        count: u64,
        disk_bytes: u64,
        region_bytes: u64,
        faults: SimFaults,
        fua: bool,
    ) -> World {
        let pvs = (1..=count)
            .map(|id| {
                let region = ByteRange::new(64 << 10, region_bytes);
                let disk = SimDisk::with_faults(
                    disk_bytes,
                    seed.wrapping_mul(1000).wrapping_add(id),
                    faults,
                );
                SimPv {
                    id,
                    disk: Arc::new(if fua { disk } else { disk.without_fua() }),
                    region,
                    data_offset_bytes: region.offset_bytes + region.len_bytes,
                }
            })
            .collect();
        World { pvs }
    }

    pub fn pv(&self, id: PvId) -> &SimPv {
        &self.pvs[(id - 1) as usize]
    }

    /// A fresh set of open PVs, as a server builds at start: on sessions
    /// of this power-on, cut off by the next crash.
    pub fn pv_set(&self) -> PvSet {
        let set = PvSet::default();
        for pv in &self.pvs {
            set.insert(
                pv.id,
                PvHandle {
                    device: Arc::new(pv.disk.session()),
                    data_offset_bytes: pv.data_offset_bytes,
                },
                false,
            );
        }
        set
    }

    pub fn regions(&self) -> Vec<(PvId, ByteRange)> {
        self.pvs.iter().map(|pv| (pv.id, pv.region)).collect()
    }

    /// Opens the journals without periodic checkpoints (tests decide when).
    pub async fn open(&self, pvs: PvSet) -> JournalSet {
        JournalSet::open_with(pvs, self.regions(), no_periodic())
            .await
            .expect("journals open")
    }

    /// A write of `blocks` blocks of `pattern(tag)` at block `block` of
    /// PV `pv`'s data area.
    pub fn write(&self, pv: PvId, block: u64, tag: u64, blocks: u64) -> JournalWrite {
        JournalWrite {
            pv,
            offset_bytes: self.pv(pv).data_offset_bytes + block * BLOCK,
            data: pattern(tag, blocks * BLOCK),
        }
    }

    /// The entry's in-place writes, done directly on the disks (not flushed).
    pub async fn in_place(&self, entry: &JournalEntry) {
        for w in &entry.writes {
            let (result, _) = self
                .pv(w.pv)
                .disk
                .write_at(w.offset_bytes, w.data.clone(), WriteFlags::empty())
                .await;
            result.expect("in-place write");
        }
    }

    /// Whether the disk holds `w`'s bytes where `w` puts them.
    pub fn holds(&self, w: &JournalWrite) -> bool {
        self.pv(w.pv)
            .disk
            .stored(w.offset_bytes, w.data.len() as u64)
            == w.data[..]
    }

    /// Whether the disk holds zeroes where `w` would write.
    pub fn untouched(&self, w: &JournalWrite) -> bool {
        self.pv(w.pv)
            .disk
            .stored(w.offset_bytes, w.data.len() as u64)
            .iter()
            .all(|&b| b == 0)
    }

    /// Power loss on every disk at once.
    pub fn crash(&self) {
        for pv in &self.pvs {
            pv.disk.crash();
        }
    }
}

pub fn row(row: u64) -> RowKey {
    RowKey {
        pe: PeAddr { pv: 1, pe: 0 },
        row,
    }
}

pub fn entry(row_index: u64, writes: Vec<JournalWrite>) -> JournalEntry {
    JournalEntry {
        row: row(row_index),
        writes,
        intent: None,
    }
}

pub fn no_periodic() -> JournalOptions {
    JournalOptions {
        checkpoint_interval: None,
    }
}

/// A runtime for one life of a server: one thread and paused time, so a
/// seed decides every interleaving. Dropping it ends every task at once,
/// as a crash ends the process.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Deterministic, distinct contents for `tag`.
pub fn pattern(tag: u64, len_bytes: u64) -> IoBuf {
    let mut buf = IoBufMut::zeroed(len_bytes as usize);
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    buf.freeze()
}

/// Latency in milliseconds so concurrent operations overlap.
pub fn with_latency(max_ms: u64) -> SimFaults {
    SimFaults {
        latency_min_ms: 0,
        latency_max_ms: max_ms,
        ..SimFaults::default()
    }
}

pub fn sleep_ms(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

/// Counts writes and flushes, and can hold flushes or FUA writes back
/// until released.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn BlockDevice>,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    /// Flushes pass while this is true.
    gate: tokio::sync::watch::Sender<bool>,
    /// FUA writes pass while this is true.
    fua_gate: tokio::sync::watch::Sender<bool>,
}

impl Counting {
    pub fn new(inner: Arc<dyn BlockDevice>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            gate: tokio::sync::watch::channel(true).0,
            fua_gate: tokio::sync::watch::channel(true).0,
        })
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Flushes wait from now on until [`open_flushes`](Self::open_flushes).
    pub fn hold_flushes(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_flushes(&self) {
        self.gate.send_replace(true);
    }

    /// FUA writes wait from now on (forever: for tests that then crash).
    pub fn hold_fua_writes(&self) {
        self.fua_gate.send_replace(false);
    }
}

#[async_trait]
impl BlockDevice for Counting {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        self.inner.read_at(offset_bytes, buf).await
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        if flags.contains(WriteFlags::FUA) {
            let mut gate = self.fua_gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_at(offset_bytes, buf, flags).await
    }

    async fn flush(&self) -> BlockResult<()> {
        let mut gate = self.gate.subscribe();
        // The sender lives in `self`: waiting cannot fail.
        let _ = gate.wait_for(|open| *open).await;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.inner.flush().await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        self.inner.discard(range).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        self.inner.write_zeroes(range, flags).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        self.inner.block_status(range).await
    }
}
