//! The thin volume (the library, without a server) over real PV files and a
//! real RocksDB metadata service:
//! the conformance suite, thin allocation and release, a full pool,
//! isolation of reused extents, live growth, and recovery after a crash.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockvirt::leaf::{FileDevice, FileOptions};
use blockvirt::testing::run_conformance;
use blockvirt::volume::{PvHandle, PvSet, ThinVolume, VolumeOptions};
use blockvirt::{
    BlockDevice, BlockStatus, ByteRange, Checked, ErrorKind, IoBuf, IoBufMut, WriteFlags, ZeroFlags,
};
use metadata::{Layout, LocalMapService, MapService, Service};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;

struct Pool {
    dir: tempfile::TempDir,
    service: Arc<Service>,
    pvs: PvSet,
    paths: Vec<PathBuf>,
}

impl Pool {
    /// A VG "vg" of `count` sparse PV files with `pes` extents each.
    fn new(count: usize, pes: u64) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let service = Arc::new(Service::open_rocksdb(&dir.path().join("meta")).unwrap());
        let mut pool = Pool {
            dir,
            service,
            pvs: PvSet::default(),
            paths: Vec::new(),
        };
        for n in 0..count {
            let path = pool.dir.path().join(format!("pv{n}"));
            let size = metadata::model::pv_bytes_for(pes, EXTENT);
            std::fs::File::create(&path).unwrap().set_len(size).unwrap();
            pool.service.create_pv(&path, Uuid::new_v4(), size).unwrap();
            pool.paths.push(path);
        }
        pool.service.create_vg("vg", &pool.paths, EXTENT).unwrap();
        pool.open_pvs();
        pool
    }

    fn open_pvs(&mut self) {
        self.pvs = PvSet::default();
        for pv in self.service.pv_records() {
            let device = FileDevice::open(&pv.path, FileOptions::default()).unwrap();
            self.pvs.insert(
                pv.id,
                PvHandle {
                    device: Arc::new(Checked::new(device)),
                    data_offset_bytes: pv.data_offset_bytes,
                },
                false,
            );
        }
    }

    /// Simulates a crash and restart: nothing was closed or released; the
    /// metadata service is reopened from what RocksDB holds.
    async fn restart(self) -> Pool {
        let Pool { dir, service, .. } = self;
        let weak = Arc::downgrade(&service);
        drop(service);
        // Blocking-pool tasks may hold the service for a moment longer, and
        // RocksDB's lock goes only with the last reference.
        for _ in 0..100 {
            if weak.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let service = Arc::new(Service::open_rocksdb(&dir.path().join("meta")).unwrap());
        service.reclaim_all_reservations().unwrap();
        let paths = service.pv_records().into_iter().map(|pv| pv.path).collect();
        let mut pool = Pool {
            dir,
            service,
            pvs: PvSet::default(),
            paths,
        };
        pool.open_pvs();
        pool
    }

    fn map(&self) -> Arc<dyn MapService> {
        Arc::new(LocalMapService::new(self.service.clone()))
    }

    async fn open(&self, lv: &str) -> ThinVolume {
        self.open_with_commit_interval(lv, Duration::from_millis(50))
            .await
    }

    async fn open_with_commit_interval(&self, lv: &str, interval: Duration) -> ThinVolume {
        let options = VolumeOptions {
            commit_interval: interval,
            ..VolumeOptions::default()
        };
        ThinVolume::open(self.map(), self.pvs.clone(), "vg", lv, options)
            .await
            .unwrap()
    }

    fn mapped(&self, lv: &str) -> u64 {
        self.service
            .lv_reports()
            .into_iter()
            .find(|r| r.record.name == lv)
            .unwrap()
            .mapped_extents
    }

    fn free(&self) -> u64 {
        self.service.vg_reports()[0].pe_free
    }

    fn allocated_on_disk(&self) -> u64 {
        self.paths
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().blocks() * 512)
            .sum()
    }
}

fn pattern(byte: u8, len: u64) -> IoBuf {
    IoBuf::copy_from(&vec![byte; len as usize])
}

async fn read(dev: &impl BlockDevice, offset: u64, len: u64) -> Vec<u8> {
    let (result, buf) = dev.read_at(offset, IoBufMut::zeroed(len as usize)).await;
    result.unwrap();
    buf.to_vec()
}

async fn write(dev: &impl BlockDevice, offset: u64, data: IoBuf) {
    dev.write_at(offset, data, WriteFlags::empty())
        .await
        .0
        .unwrap();
}

async fn conformance(thin: bool) {
    let pool = Pool::new(2, 64);
    let counter = AtomicUsize::new(0);
    run_conformance(|| {
        let name = format!("lv{}", counter.fetch_add(1, Ordering::Relaxed));
        pool.service
            .create_lv("vg", &name, 16 * MIB, thin, Layout::Linear)
            .unwrap();
        let pool = &pool;
        async move { pool.open(&name).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thin_volume_conformance() {
    conformance(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thick_volume_conformance() {
    conformance(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thin_extents_come_and_go_with_data() {
    let pool = Pool::new(2, 8);
    pool.service
        .create_lv("vg", "lv", 64 * MIB, true, Layout::Linear)
        .unwrap();
    let lv = pool.open("lv").await;
    let disk_before = pool.allocated_on_disk();
    write(&lv, 6 * MIB, pattern(0xab, 4 * MIB)).await; // [6, 8) in extent 1, [8, 10) in 2
    lv.flush().await.unwrap();
    assert_eq!(pool.mapped("lv"), 2);
    assert!(pool.allocated_on_disk() >= disk_before + 4 * MIB);

    let status = lv.block_status(ByteRange::new(0, 64 * MIB)).await.unwrap();
    let expect = [
        (4 * MIB, BlockStatus::HOLE | BlockStatus::ZERO), // extent 0: never written
        (2 * MIB, BlockStatus::ZERO),                     // allocated, not written
        (4 * MIB, BlockStatus::empty()),                  // data
        (2 * MIB, BlockStatus::ZERO),
        (52 * MIB, BlockStatus::HOLE | BlockStatus::ZERO),
    ];
    let got: Vec<(u64, BlockStatus)> = status.iter().map(|e| (e.len_bytes, e.status)).collect();
    assert_eq!(got, expect);

    // Discarding part of the data leaves both extents; discarding the rest
    // of an extent's data frees it.
    lv.discard(ByteRange::new(7 * MIB, MIB)).await.unwrap();
    assert_eq!(
        read(&lv, 7 * MIB, MIB).await,
        vec![0; MIB as usize],
        "discarded chunks read zero"
    );
    lv.flush().await.unwrap();
    assert_eq!(pool.mapped("lv"), 2);
    lv.discard(ByteRange::new(6 * MIB, MIB)).await.unwrap();
    lv.write_zeroes(ByteRange::new(8 * MIB, 2 * MIB), ZeroFlags::empty())
        .await
        .unwrap();
    lv.flush().await.unwrap();
    assert_eq!(pool.mapped("lv"), 0);
    assert_eq!(pool.free(), 16);
    assert!(
        pool.allocated_on_disk() <= disk_before,
        "holes punched in the PV files"
    );

    // NO_HOLE keeps (or makes) the extent allocated.
    lv.write_zeroes(ByteRange::new(0, MIB), ZeroFlags::NO_HOLE)
        .await
        .unwrap();
    lv.flush().await.unwrap();
    assert_eq!(pool.mapped("lv"), 1);
    lv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pool_fails_fast_and_recovers_after_discard() {
    let pool = Pool::new(1, 4);
    pool.service
        .create_lv("vg", "a", 64 * MIB, true, Layout::Linear)
        .unwrap();
    pool.service
        .create_lv("vg", "b", 64 * MIB, true, Layout::Linear)
        .unwrap();
    let a = pool.open("a").await;
    let b = pool.open("b").await;
    write(&b, 0, pattern(0xbb, MIB)).await;
    for i in 0..3 {
        write(&a, i * EXTENT, pattern(0xaa, 4096)).await;
    }
    // The pool (4 extents) is full: a new extent fails at once with NoSpace.
    let started = std::time::Instant::now();
    let (result, _) = a
        .write_at(3 * EXTENT, pattern(1, 4096), WriteFlags::empty())
        .await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::NoSpace);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ENOSPC is prompt"
    );
    // Writes into allocated extents still work, in both LVs.
    write(&a, 4096, pattern(0xa1, 4096)).await;
    write(&b, MIB, pattern(0xb1, 4096)).await;
    assert_eq!(read(&b, 0, 4096).await, vec![0xbb; 4096]);
    a.flush().await.unwrap();
    assert_eq!(pool.service.vg_reports()[0].data_percent(), 100.0);
    // Discard frees space for the other LV.
    a.discard(ByteRange::new(0, 3 * EXTENT)).await.unwrap();
    a.flush().await.unwrap();
    write(&b, 2 * EXTENT, pattern(0xb2, 4096)).await;
    assert_eq!(read(&b, 2 * EXTENT, 4096).await, vec![0xb2; 4096]);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_extent_never_shows_old_data() {
    let pool = Pool::new(1, 1);
    pool.service
        .create_lv("vg", "a", EXTENT, true, Layout::Linear)
        .unwrap();
    pool.service
        .create_lv("vg", "b", EXTENT, true, Layout::Linear)
        .unwrap();
    let a = pool.open("a").await;
    // Fill the extent, then discard all but one chunk (partial discard
    // leaves chunk 0 written), then the rest.
    write(&a, 0, pattern(0x5a, EXTENT)).await;
    a.flush().await.unwrap();
    a.discard(ByteRange::new(0, EXTENT)).await.unwrap();
    a.flush().await.unwrap();
    assert_eq!(pool.free(), 1);
    let b = pool.open("b").await;
    write(&b, 8192, pattern(0x77, 4096)).await; // same PE, one block
    let back = read(&b, 0, EXTENT).await;
    assert!(back[..8192].iter().all(|&x| x == 0));
    assert!(back[8192..12288].iter().all(|&x| x == 0x77));
    assert!(
        back[12288..].iter().all(|&x| x == 0),
        "no byte of LV a is visible in LV b"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_growth_is_visible_after_refresh() {
    let pool = Pool::new(1, 16);
    pool.service
        .create_lv("vg", "thin", 8 * MIB, true, Layout::Linear)
        .unwrap();
    pool.service
        .create_lv("vg", "thick", 8 * MIB, false, Layout::Linear)
        .unwrap();
    for name in ["thin", "thick"] {
        let lv = pool.open(name).await;
        write(&lv, 0, pattern(0x11, MIB)).await;
        pool.service.extend_lv("vg", name, 16 * MIB).unwrap();
        lv.refresh().await.unwrap();
        assert_eq!(lv.info().size_bytes, 16 * MIB);
        assert_eq!(read(&lv, 12 * MIB, MIB).await, vec![0; MIB as usize]);
        write(&lv, 15 * MIB, pattern(0x22, MIB)).await;
        lv.flush().await.unwrap();
        assert_eq!(read(&lv, 0, MIB).await, vec![0x11; MIB as usize]);
        assert_eq!(read(&lv, 15 * MIB, MIB).await, vec![0x22; MIB as usize]);
        lv.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_data_survives_a_crash() {
    let pool = Pool::new(2, 8);
    pool.service
        .create_lv("vg", "lv", 32 * MIB, true, Layout::Linear)
        .unwrap();
    {
        // No background commits: only FLUSH and FUA may make things durable.
        let lv = pool
            .open_with_commit_interval("lv", Duration::from_secs(3600))
            .await;
        write(&lv, 0, pattern(0x01, MIB)).await;
        write(&lv, 9 * MIB, pattern(0x02, 4096)).await;
        lv.flush().await.unwrap();
        lv.write_at(20 * MIB, pattern(0x03, 4096), WriteFlags::FUA)
            .await
            .0
            .unwrap();
        // A FUA write into a chunk that an unflushed write just allocated
        // must make that allocation durable too.
        write(&lv, 28 * MIB, pattern(0x04, 4096)).await;
        lv.write_at(28 * MIB, pattern(0x05, 4096), WriteFlags::FUA)
            .await
            .0
            .unwrap();
        // Crash: no close, no release; the volume and service vanish.
        drop(lv);
    }
    let pool = pool.restart().await;
    let lv = pool.open("lv").await;
    assert_eq!(read(&lv, 0, MIB).await, vec![0x01; MIB as usize]);
    assert_eq!(read(&lv, 9 * MIB, 4096).await, vec![0x02; 4096]);
    assert_eq!(
        read(&lv, 20 * MIB, 4096).await,
        vec![0x03; 4096],
        "FUA write survived"
    );
    assert_eq!(
        read(&lv, 28 * MIB, 4096).await,
        vec![0x05; 4096],
        "FUA write into an unflushed extent survived"
    );
    lv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writer_per_lv() {
    let pool = Pool::new(1, 4);
    pool.service
        .create_lv("vg", "lv", 8 * MIB, true, Layout::Linear)
        .unwrap();
    let lv = pool.open("lv").await;
    let second = ThinVolume::open(
        pool.map(),
        pool.pvs.clone(),
        "vg",
        "lv",
        VolumeOptions::default(),
    )
    .await;
    assert_eq!(second.unwrap_err().kind(), ErrorKind::Busy);
    lv.close().await.unwrap();
    let (result, _) = lv.write_at(0, pattern(1, 4096), WriteFlags::empty()).await;
    assert_eq!(
        result.unwrap_err().kind(),
        ErrorKind::Shutdown,
        "closed volumes refuse I/O"
    );
    pool.open("lv").await.close().await.unwrap();
}
