//! `Counted<D>`: transparent (the conformance suite over a `SimDisk`), and
//! every error counted against its operation, whether a fault was
//! injected below it or the device refused on its own.

use std::sync::atomic::{AtomicU64, Ordering};

use blockvirt::counted::{Counted, DeviceOp};
use blockvirt::leaf::{FaultMode, Faulty};
use blockvirt::testing::{run_conformance, SimDisk};
use blockvirt::{BlockDevice, ByteRange, IoBufMut, WriteFlags, ZeroFlags};

const SIZE: u64 = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_conformance_and_counts_nothing_on_a_healthy_device() {
    let seed = AtomicU64::new(0);
    run_conformance(|| {
        let seed = seed.fetch_add(1, Ordering::Relaxed);
        async move { Counted::new(SimDisk::new(SIZE, seed)) }
    })
    .await;
    let dev = Counted::new(SimDisk::new(SIZE, 1));
    let (result, _) = dev.read_at(0, IoBufMut::zeroed(4096)).await;
    result.unwrap();
    dev.flush().await.unwrap();
    assert_eq!(dev.errors().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_operation_is_counted_against_its_kind() {
    let dev = Counted::new(Faulty::with_seed(SimDisk::new(SIZE, 7), 7));
    dev.inner().set_mode(FaultMode::Fail).unwrap();
    let range = ByteRange::new(0, 4096);
    for _ in 0..2 {
        let (result, _) = dev.read_at(0, IoBufMut::zeroed(4096)).await;
        assert!(result.is_err());
    }
    let (result, _) = dev
        .write_at(0, IoBufMut::zeroed(4096).freeze(), WriteFlags::empty())
        .await;
    assert!(result.is_err());
    assert!(dev.flush().await.is_err());
    assert!(dev.discard(range).await.is_err());
    assert!(dev.write_zeroes(range, ZeroFlags::empty()).await.is_err());
    assert!(dev.block_status(range).await.is_err());

    let errors = dev.errors();
    assert_eq!(errors.get(DeviceOp::Read), 2);
    for op in &DeviceOp::ALL[1..] {
        assert_eq!(errors.get(*op), 1, "{}", op.name());
    }
    assert_eq!(errors.total(), 7);
    assert_eq!(dev.inner().injected().errors, 7);

    // Healthy again: successes add nothing.
    dev.inner().set_mode(FaultMode::None).unwrap();
    dev.flush().await.unwrap();
    assert_eq!(dev.errors().total(), 7);
}
