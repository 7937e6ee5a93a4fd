//! `Faulty<D>`: transparent with mode `none` (the conformance suite over a
//! file and over a `SimDisk`), and each mode doing what it says, switched
//! while the device is in use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockvirt::leaf::{FaultCounters, FaultMode, Faulty, FileDevice, FileOptions};
use blockvirt::testing::{run_conformance, SimDisk};
use blockvirt::{BlockDevice, BlockError, ByteRange, ErrorKind, IoBuf, IoBufMut};
use blockvirt::{WriteFlags, ZeroFlags};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SIZE: u64 = 16 << 20;
const BLOCK: u64 = 4096;

fn pattern(seed: u64, len: u64) -> IoBuf {
    let mut buf = IoBufMut::zeroed(len as usize);
    SmallRng::seed_from_u64(seed).fill(&mut buf[..]);
    buf.freeze()
}

fn over_sim(seed: u64) -> Faulty<SimDisk> {
    Faulty::with_seed(SimDisk::new(SIZE, seed), seed)
}

async fn read<D: BlockDevice>(dev: &D, offset: u64, len: u64) -> Result<IoBufMut, BlockError> {
    let (result, buf) = dev.read_at(offset, IoBufMut::zeroed(len as usize)).await;
    assert_eq!(buf.len() as u64, len, "the buffer comes back");
    result.map(|_| buf)
}

async fn write<D: BlockDevice>(dev: &D, offset: u64, data: &IoBuf) -> Result<(), BlockError> {
    let (result, buf) = dev
        .write_at(offset, data.clone(), WriteFlags::empty())
        .await;
    assert_eq!(buf.len(), data.len(), "the buffer comes back");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_none_passes_conformance_over_a_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicU64::new(0);
    run_conformance(|| {
        let path = dir
            .path()
            .join(format!("pv{}", counter.fetch_add(1, Ordering::Relaxed)));
        std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
        async move { Faulty::new(FileDevice::open(&path, FileOptions::default()).unwrap()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_none_passes_conformance_over_a_sim_disk() {
    let seed = AtomicU64::new(0);
    run_conformance(|| {
        let dev = over_sim(seed.fetch_add(1, Ordering::Relaxed));
        assert_eq!(dev.info(), dev.inner().info(), "info passes through");
        async move { dev }
    })
    .await;
}

#[tokio::test]
async fn fail_fails_every_operation_and_reaches_nothing() {
    let dev = over_sim(1);
    dev.set_mode(FaultMode::Fail).unwrap();
    let range = ByteRange::new(0, 4 * BLOCK);
    let errors = [
        read(&dev, 0, BLOCK).await.unwrap_err(),
        write(&dev, 0, &pattern(1, BLOCK)).await.unwrap_err(),
        dev.flush().await.unwrap_err(),
        dev.discard(range).await.unwrap_err(),
        dev.write_zeroes(range, ZeroFlags::empty())
            .await
            .unwrap_err(),
        dev.block_status(range).await.unwrap_err(),
    ];
    for e in &errors {
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.context().contains("injected fault: fail"), "{e}");
    }
    assert_eq!(errors[1].context(), "write at 0+4096: injected fault: fail");
    assert!(
        dev.inner().stored(0, BLOCK).iter().all(|&b| b == 0),
        "the write never reached the disk"
    );
    assert_eq!(dev.inner().unflushed_ops(), 0);
    assert_eq!(
        dev.injected(),
        FaultCounters {
            errors: 6,
            ..FaultCounters::default()
        }
    );
}

#[tokio::test]
async fn eio_fails_about_its_rate_of_operations() {
    let dev = over_sim(2);
    dev.set_mode("eio:0.5".parse().unwrap()).unwrap();
    let mut failures = 0;
    for i in 0..1000u64 {
        let offset = (i % 512) * BLOCK;
        let result = match i % 4 {
            0 => read(&dev, offset, BLOCK).await.map(|_| ()),
            1 => write(&dev, offset, &pattern(i, BLOCK)).await,
            2 => dev.flush().await,
            _ => dev.discard(ByteRange::new(offset, BLOCK)).await,
        };
        if let Err(e) = result {
            assert_eq!(e.kind(), ErrorKind::Io);
            assert!(e.context().ends_with("injected fault: eio:0.5"), "{e}");
            failures += 1;
        }
    }
    assert!((430..=570).contains(&failures), "{failures} of 1000 at 0.5");
    assert_eq!(dev.injected().errors, failures);
    // Block status reads allocation, not data: eio leaves it alone.
    for _ in 0..20 {
        dev.block_status(ByteRange::new(0, SIZE)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn slow_delays_every_operation_by_at_least_its_delay() {
    let dev = over_sim(3);
    dev.set_mode(FaultMode::Slow { delay_ms: 50 }).unwrap();
    let data = pattern(1, BLOCK);
    let start = tokio::time::Instant::now();
    for i in 0..4u64 {
        let before = tokio::time::Instant::now();
        match i {
            0 => write(&dev, 0, &data).await.unwrap(),
            1 => assert!(read(&dev, 0, BLOCK).await.unwrap()[..] == data[..]),
            2 => dev.flush().await.unwrap(),
            _ => drop(dev.block_status(ByteRange::new(0, BLOCK)).await.unwrap()),
        }
        assert!(before.elapsed() >= Duration::from_millis(50), "op {i}");
    }
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(dev.injected().delays, 4);
    assert_eq!(dev.injected().errors, 0);
}

#[tokio::test]
async fn corrupt_changes_every_read_but_not_the_stored_data() {
    let dev = over_sim(4);
    let data: Vec<IoBuf> = (0..16).map(|i| pattern(i, 8 * BLOCK)).collect();
    dev.set_mode("corrupt:1".parse().unwrap()).unwrap();
    for (i, d) in data.iter().enumerate() {
        write(&dev, i as u64 * 8 * BLOCK, d).await.unwrap();
    }
    for round in 0..4 {
        for (i, d) in data.iter().enumerate() {
            let offset = i as u64 * 8 * BLOCK;
            let back = read(&dev, offset, 8 * BLOCK).await.unwrap();
            let differing = back.iter().zip(d.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 1, "round {round}, read {i}: one byte differs");
            let under = read(dev.inner(), offset, 8 * BLOCK).await.unwrap();
            assert!(under[..] == d[..], "the device below holds the right data");
        }
    }
    assert_eq!(dev.injected().corruptions, 64);
    assert_eq!(dev.injected().errors, 0);
}

#[tokio::test]
async fn corrupt_at_a_rate_corrupts_about_that_share_of_reads() {
    let dev = over_sim(5);
    let data = pattern(9, BLOCK);
    write(&dev, 0, &data).await.unwrap();
    dev.set_mode(FaultMode::Corrupt { rate: 0.25 }).unwrap();
    let mut corrupted = 0;
    for _ in 0..1000 {
        if read(&dev, 0, BLOCK).await.unwrap()[..] != data[..] {
            corrupted += 1;
        }
    }
    assert!(
        (180..=320).contains(&corrupted),
        "{corrupted} of 1000 at 0.25"
    );
    assert_eq!(dev.injected().corruptions, corrupted);
}

#[tokio::test]
async fn mode_changes_take_effect_at_once_and_bad_modes_are_refused() {
    let dev = over_sim(6);
    let data = pattern(1, BLOCK);
    write(&dev, 0, &data).await.unwrap();
    for mode in ["fail", "eio:1", "none", "corrupt:1", "none"] {
        dev.set_mode(mode.parse().unwrap()).unwrap();
        assert_eq!(dev.mode().to_string(), mode);
        let result = read(&dev, 0, BLOCK).await;
        match mode {
            "fail" | "eio:1" => assert!(result.is_err(), "{mode}"),
            "corrupt:1" => assert!(result.unwrap()[..] != data[..], "{mode}"),
            _ => assert!(result.unwrap()[..] == data[..], "{mode}"),
        }
    }
    let err = dev.set_mode(FaultMode::Eio { rate: 2.0 }).unwrap_err();
    assert!(err.to_string().contains("rate must be"), "{err}");
    assert_eq!(
        dev.mode(),
        FaultMode::None,
        "a refused mode changes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn an_operation_in_flight_keeps_the_mode_it_started_with() {
    let dev = Arc::new(over_sim(7));
    let data = pattern(1, BLOCK);
    write(&*dev, 0, &data).await.unwrap();
    dev.set_mode(FaultMode::Slow { delay_ms: 1000 }).unwrap();
    let slow_read = {
        let dev = dev.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let result = read(&*dev, 0, BLOCK).await;
            (result, start.elapsed())
        })
    };
    tokio::task::yield_now().await; // the read is now asleep in its delay
    dev.set_mode(FaultMode::Fail).unwrap();
    assert!(
        read(&*dev, 0, BLOCK).await.is_err(),
        "new reads see the new mode"
    );
    let (result, took) = slow_read.await.unwrap();
    assert!(
        result.unwrap()[..] == data[..],
        "the read in flight still succeeds"
    );
    assert!(took >= Duration::from_millis(1000));
    dev.set_mode(FaultMode::None).unwrap();
    assert!(read(&*dev, 0, BLOCK).await.unwrap()[..] == data[..]);
    assert_eq!(
        dev.injected(),
        FaultCounters {
            errors: 1,
            corruptions: 0,
            delays: 1
        }
    );
}

#[test]
fn faulty_wraps_any_device_and_reports_its_mode() {
    let dev = Faulty::new(SimDisk::new(SIZE, 0));
    assert_eq!(dev.mode(), FaultMode::None);
    let debug = format!("{dev:?}");
    assert!(
        debug.contains("Faulty") && debug.contains("SimDisk"),
        "{debug}"
    );
}
