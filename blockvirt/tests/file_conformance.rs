//! The conformance suite over the file leaf, with each I/O engine.

use blockvirt::leaf::{EngineChoice, FileDevice, FileOptions};
use blockvirt::testing::run_conformance;

const SIZE: u64 = 16 << 20;

fn sparse_file(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    path
}

async fn conformance(engine: EngineChoice, direct_io: bool) {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    run_conformance(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = sparse_file(&dir, &format!("pv{n}"));
        async move {
            FileDevice::open(
                &path,
                FileOptions {
                    engine,
                    direct_io,
                    read_only: false,
                },
            )
            .unwrap()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_direct() {
    conformance(EngineChoice::Uring, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_buffered() {
    conformance(EngineChoice::Uring, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_direct() {
    conformance(EngineChoice::Threads, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_buffered() {
    conformance(EngineChoice::Threads, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_is_used_where_the_filesystem_allows() {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open(sparse_file(&dir, "pv"), FileOptions::default()).unwrap();
    assert_eq!(dev.engine_name(), "io_uring");
    // /tmp here is a disk filesystem; tmpfs before Linux 6.6 would refuse.
    println!("direct: {}", dev.is_direct());
}
