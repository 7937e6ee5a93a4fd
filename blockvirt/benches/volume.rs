//! The thin volume's extent map on the data path, and the metadata
//! service's commit of map changes.
//!
//! The PVs are null devices (reads leave the buffer as it is, writes are
//! dropped), so what is measured is the volume layer alone: finding the
//! extent's slot, its lock and chunk bits, splitting requests, allocating.
//! The leaves are measured end to end by `bv-bench fio`. Requests run one
//! at a time on a current-thread runtime; background commits are off.
//!
//! - `volume/read-4k`, `volume/overwrite-4k`: random 4 KiB requests into
//!   written chunks of a 1 GiB linear thin LV (4 MiB extents).
//! - `volume/first-write-64k`: a whole chunk written into a new extent:
//!   allocation from the reservation (one reserve call to the metadata
//!   service every 4 extents), the map change, the dirty set.
//! - `volume/block-status-1g`: block status of a 1 GiB LV whose chunks
//!   alternate written and not (16,384 runs; throughput in chunks).
//! - `commit/N`: `MapService::commit` of N changed extent entries, as a
//!   flush sends them: `LocalMapService` over an in-memory store, so the
//!   service's checks, encoding and bookkeeping without RocksDB's synced
//!   write (which `bv-bench fio` includes).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use blockvirt::volume::{PvHandle, PvSet, ThinVolume, VolumeOptions};
use blockvirt::{
    BlockDevice, BlockResult, BlockStatus, BufResult, ByteRange, Caps, Checked, DeviceInfo, IoBuf,
    IoBufMut, StatusExtent, WriteFlags, ZeroFlags,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use metadata::store::MemStore;
use metadata::{ExtentEntry, Layout, LocalMapService, MapChange, MapService, Service};
use tokio::runtime::Runtime;
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const EXTENT_BYTES: u64 = 4 * MIB;
const CHUNK_BYTES: u64 = EXTENT_BYTES / 64;
const LV_BYTES: u64 = 1 << 30;
/// Each null PV: room for the largest batch of first writes.
const PV_BYTES: u64 = 1 << 40;

#[derive(Debug)]
struct NullDisk;

#[async_trait]
impl BlockDevice for NullDisk {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size_bytes: PV_BYTES,
            block_bytes: 4096,
            io_bytes_max: 32 << 20,
            caps: Caps::all(),
            read_only: false,
        }
    }
    async fn read_at(&self, _: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        (Ok(()), buf)
    }
    async fn write_at(&self, _: u64, buf: IoBuf, _: WriteFlags) -> BufResult<IoBuf> {
        (Ok(()), buf)
    }
    async fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    async fn discard(&self, _: ByteRange) -> BlockResult<()> {
        Ok(())
    }
    async fn write_zeroes(&self, _: ByteRange, _: ZeroFlags) -> BlockResult<()> {
        Ok(())
    }
    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        Ok(vec![StatusExtent {
            len_bytes: range.len_bytes,
            status: BlockStatus::empty(),
        }])
    }
}

/// A VG "vg" of two null PVs, with its metadata in memory.
struct Pool {
    service: Arc<Service>,
    map: Arc<dyn MapService>,
    pvs: PvSet,
}

impl Pool {
    fn new() -> Pool {
        // Leases outlive the benchmark: nothing renews them between batches.
        let service = Service::open(Box::new(MemStore::new()))
            .expect("service")
            .with_lease_duration(Duration::from_secs(24 * 3600));
        let service = Arc::new(service);
        let pvs = PvSet::default();
        let mut paths = Vec::new();
        for i in 0..2 {
            let path = PathBuf::from(format!("/null/pv{i}"));
            let record = service
                .create_pv(&path, Uuid::new_v4(), PV_BYTES)
                .expect("pv");
            let handle = PvHandle {
                device: Arc::new(Checked::new(NullDisk)),
                data_offset_bytes: record.data_offset_bytes,
            };
            pvs.insert(record.id, handle, false);
            paths.push(path);
        }
        service.create_vg("vg", &paths, EXTENT_BYTES).expect("vg");
        Pool {
            map: Arc::new(LocalMapService::new(service.clone())),
            service,
            pvs,
        }
    }

    /// Creates and opens a linear thin LV.
    async fn lv(&self, name: &str, size_bytes: u64) -> ThinVolume {
        self.service
            .create_lv("vg", name, size_bytes, true, Layout::Linear)
            .expect("lv");
        let options = VolumeOptions {
            commit_interval: Duration::from_secs(24 * 3600),
            ..VolumeOptions::default()
        };
        ThinVolume::open(self.map.clone(), self.pvs.clone(), "vg", name, options)
            .await
            .expect("open")
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn write(volume: &ThinVolume, offset_bytes: u64, len_bytes: u64) {
    let buf = IoBuf::zeroed(len_bytes as usize);
    let (result, _) = volume
        .write_at(offset_bytes, buf, WriteFlags::empty())
        .await;
    result.expect("write");
}

/// 4 KiB-aligned offsets spread over the LV (xorshift: fixed and cheap).
fn random_offsets(count: usize) -> Vec<u64> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % (LV_BYTES / 4096)) * 4096
        })
        .collect()
}

fn volume(c: &mut Criterion) {
    let rt = runtime();
    let pool = Pool::new();
    let (dense, sparse) = rt.block_on(async {
        let dense = pool.lv("dense", LV_BYTES).await;
        for offset in (0..LV_BYTES).step_by(EXTENT_BYTES as usize) {
            write(&dense, offset, EXTENT_BYTES).await;
        }
        let sparse = pool.lv("sparse", LV_BYTES).await;
        for offset in (0..LV_BYTES).step_by(2 * CHUNK_BYTES as usize) {
            write(&sparse, offset, CHUNK_BYTES).await;
        }
        (dense, sparse)
    });
    let offsets = random_offsets(1 << 16);
    let mut group = c.benchmark_group("volume");
    group.throughput(Throughput::Elements(1));

    group.bench_function("read-4k", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut buf = IoBufMut::zeroed(4096);
                let started = Instant::now();
                for i in 0..iters as usize {
                    let (result, back) = dense.read_at(offsets[i % offsets.len()], buf).await;
                    result.expect("read");
                    buf = back;
                }
                started.elapsed()
            })
        })
    });

    group.bench_function("overwrite-4k", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let buf = IoBuf::zeroed(4096);
                let started = Instant::now();
                for i in 0..iters as usize {
                    let offset = offsets[i % offsets.len()];
                    let (result, _) = dense
                        .write_at(offset, buf.clone(), WriteFlags::empty())
                        .await;
                    result.expect("write");
                }
                started.elapsed()
            })
        })
    });

    // A fresh LV per batch, so every write lands in a new extent; opening
    // and closing it are not timed.
    let mut batch = 0;
    group.bench_function("first-write-64k", |b| {
        b.iter_custom(|iters| {
            batch += 1;
            let name = format!("fresh{batch}");
            rt.block_on(async {
                let lv = pool.lv(&name, iters * EXTENT_BYTES).await;
                let buf = IoBuf::zeroed(CHUNK_BYTES as usize);
                let started = Instant::now();
                for le in 0..iters {
                    let (result, _) = lv
                        .write_at(le * EXTENT_BYTES, buf.clone(), WriteFlags::empty())
                        .await;
                    result.expect("write");
                }
                let elapsed = started.elapsed();
                lv.close().await.expect("close");
                pool.service.remove_lv("vg", &name).expect("remove");
                elapsed
            })
        })
    });

    group.throughput(Throughput::Elements(LV_BYTES / CHUNK_BYTES));
    group.bench_function("block-status-1g", |b| {
        b.iter(|| {
            rt.block_on(sparse.block_status(ByteRange::new(0, LV_BYTES)))
                .expect("status")
        })
    });
    group.finish();
}

fn commit(c: &mut Criterion) {
    const EXTENTS: u64 = 64;
    let rt = runtime();
    let pool = Pool::new();
    pool.service
        .create_lv("vg", "lv", EXTENTS * EXTENT_BYTES, true, Layout::Linear)
        .expect("lv");
    let (token, placements) = rt.block_on(async {
        let grant = pool.map.acquire("vg", "lv", "bench").await.expect("lease");
        let placements = pool
            .map
            .reserve(grant.token, EXTENTS as usize)
            .await
            .expect("reserve");
        assert_eq!(placements.len() as u64, EXTENTS);
        (grant.token, placements)
    });
    let changes = |count: u64, written: u64| -> Vec<MapChange> {
        (0..count)
            .map(|le| MapChange {
                le,
                entry: Some(ExtentEntry {
                    placement: placements[le as usize].clone(),
                    written,
                }),
            })
            .collect()
    };
    // Map every extent once; later commits change their chunk bits.
    rt.block_on(pool.map.commit(token, changes(EXTENTS, 1).into()))
        .expect("first commit");

    let mut group = c.benchmark_group("commit");
    for count in [1, EXTENTS] {
        group.throughput(Throughput::Elements(count));
        let mut written = 1u64;
        group.bench_function(BenchmarkId::from_parameter(count), |b| {
            b.iter(|| {
                written = written.rotate_left(1);
                rt.block_on(pool.map.commit(token, changes(count, written).into()))
                    .expect("commit")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = volume, commit
}
criterion_main!(benches);
