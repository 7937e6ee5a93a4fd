//! Journal throughput on a real file (ext4 or whatever holds the temp
//! directory; `fdatasync` per flush): entries logged per second with 1, 8
//! and 64 logs in flight, and flushes of the journal device per entry
//! (group commit). Each entry is a small raid5 read-modify-write: one
//! 4 KiB data block and one 4 KiB parity block (12 KiB in the journal).
//! Tickets are handed back at once (no in-place writes), so checkpoints
//! only flush the targets and write headers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use blockvirt::leaf::{FileDevice, FileOptions};
use blockvirt::volume::{PvHandle, PvSet};
use blockvirt::{
    BlockDevice, BlockResult, BufResult, ByteRange, DeviceInfo, IoBuf, IoBufMut, StatusExtent,
    WriteFlags, ZeroFlags,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::StreamExt;
use metadata::model::{pv_data_offset, pv_journal_bytes, PV_LABEL_AREA_BYTES};
use metadata::PeAddr;
use raid::journal::{JournalEntry, JournalOptions, JournalSet, JournalWrite, RowKey};

const PV_BYTES: u64 = 4 << 30;

/// Counts flushes of the device below.
#[derive(Debug)]
struct FlushCounter {
    inner: Arc<dyn BlockDevice>,
    flushes: AtomicU64,
}

#[async_trait]
impl BlockDevice for FlushCounter {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        self.inner.read_at(offset_bytes, buf).await
    }
    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        self.inner.write_at(offset_bytes, buf, flags).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
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

fn journal(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let pvs = PvSet::default();
    let mut counter = None;
    for id in [1u64, 2] {
        let path = dir.path().join(format!("pv{id}"));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(PV_BYTES))
            .expect("PV file");
        let file: Arc<dyn BlockDevice> =
            Arc::new(FileDevice::open(&path, FileOptions::default()).expect("open"));
        let device: Arc<dyn BlockDevice> = if id == 1 {
            let counted = Arc::new(FlushCounter {
                inner: file,
                flushes: AtomicU64::new(0),
            });
            counter = Some(counted.clone());
            counted
        } else {
            file
        };
        let handle = PvHandle {
            device,
            data_offset_bytes: pv_data_offset(PV_BYTES),
        };
        pvs.insert(id, handle, false);
    }
    let counter = counter.expect("journal device");
    let region = ByteRange::new(PV_LABEL_AREA_BYTES, pv_journal_bytes(PV_BYTES));
    let set = rt.block_on(async {
        let set = JournalSet::open_with(
            pvs,
            vec![(1, region), (2, region)],
            JournalOptions::default(),
        )
        .await
        .expect("open");
        set.recover().await.expect("recover");
        set
    });
    let data = IoBuf::copy_from(&[0x5a; 4096]);
    let entry = |i: u64| JournalEntry {
        row: RowKey {
            pe: PeAddr { pv: 2, pe: 0 },
            row: i,
        },
        writes: vec![
            JournalWrite {
                pv: 2,
                offset_bytes: pv_data_offset(PV_BYTES) + (i % 1024) * 4096,
                data: data.clone(),
            },
            JournalWrite {
                pv: 1,
                offset_bytes: pv_data_offset(PV_BYTES) + (i % 1024) * 4096,
                data: data.clone(),
            },
        ],
        intent: None,
    };

    let mut group = c.benchmark_group("journal");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for in_flight in [1usize, 8, 64] {
        let mut logged = 0u64;
        let mut flushes = 0u64;
        group.bench_function(format!("log 4K+4K, {in_flight} in flight"), |b| {
            b.iter_custom(|iters| {
                let before = counter.flushes.load(Ordering::Relaxed);
                let start = Instant::now();
                rt.block_on(
                    futures::stream::iter(0..iters)
                        .map(|i| {
                            let set = set.clone();
                            let e = entry(i);
                            async move { set.completed(set.log(&[1], &e).await.expect("log")) }
                        })
                        .buffer_unordered(in_flight)
                        .for_each(|()| async {}),
                );
                let elapsed = start.elapsed();
                logged += iters;
                flushes += counter.flushes.load(Ordering::Relaxed) - before;
                elapsed
            });
        });
        eprintln!(
            "{in_flight} in flight: {:.3} flushes of the journal device per entry ({flushes} for {logged}; checkpoints' target flushes included)",
            flushes as f64 / logged.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, journal);
criterion_main!(benches);
