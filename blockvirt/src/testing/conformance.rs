//! The conformance suite every device and every stack runs.
//!
//! Only the constructor differs between runs: it must return a fresh device,
//! at least 8 MiB large, whose whole content reads as zeroes (a new sparse
//! file, a new thin volume). Every check wraps the device in [`Checked`], so
//! a layer that answers outside the contract fails the suite too.
//!
//! Assertions panic with the name of the check and, for the randomized
//! model run, the seed that replays it.

use std::future::Future;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::buf::{IoBuf, IoBufMut};
use crate::checked::Checked;
use crate::device::{BlockDevice, BlockStatus, ByteRange, Caps, WriteFlags, ZeroFlags};
use crate::error::ErrorKind;

/// Runs every conformance check, each on a fresh device from `make`.
pub async fn run_conformance<D, F, Fut>(make: F)
where
    D: BlockDevice,
    F: Fn() -> Fut,
    Fut: Future<Output = D>,
{
    info_is_sane(Checked::new(make().await)).await;
    fresh_device_reads_zeroes(Checked::new(make().await)).await;
    writes_read_back_at_the_edges(Checked::new(make().await)).await;
    fua_writes_and_flush_succeed(Checked::new(make().await)).await;
    write_zeroes_zeroes_only_its_range(Checked::new(make().await)).await;
    discard_keeps_neighbours(Checked::new(make().await)).await;
    block_status_is_honest(Checked::new(make().await)).await;
    contract_violations_are_refused(Checked::new(make().await)).await;
    concurrent_writes_do_not_interfere(Arc::new(Checked::new(make().await))).await;
    for seed in 0..4 {
        model_run(Checked::new(make().await), seed, 300).await;
    }
}

const MIB: u64 = 1 << 20;

fn pattern(seed: u64, len: usize) -> IoBuf {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = IoBufMut::zeroed(len);
    rng.fill(&mut buf[..]);
    buf.freeze()
}

async fn read<D: BlockDevice>(dev: &D, offset: u64, len: u64) -> IoBufMut {
    let (result, buf) = dev.read_at(offset, IoBufMut::zeroed(len as usize)).await;
    if let Err(e) = result {
        panic!("read {offset}+{len} failed: {e}");
    }
    buf
}

async fn write<D: BlockDevice>(dev: &D, offset: u64, data: &IoBuf, flags: WriteFlags) {
    let (result, _) = dev.write_at(offset, data.clone(), flags).await;
    if let Err(e) = result {
        panic!("write {offset}+{} failed: {e}", data.len());
    }
}

fn assert_zero(buf: &[u8], what: &str) {
    if let Some(pos) = buf.iter().position(|&b| b != 0) {
        panic!("{what}: byte {pos} is {:#x}, expected zero", buf[pos]);
    }
}

async fn info_is_sane<D: BlockDevice>(dev: D) {
    let info = dev.info();
    assert!(
        info.block_bytes.is_power_of_two(),
        "block size is a power of two"
    );
    assert_eq!(
        info.size_bytes % u64::from(info.block_bytes),
        0,
        "size is whole blocks"
    );
    assert!(
        info.size_bytes >= 8 * MIB,
        "conformance needs an 8 MiB device"
    );
    assert!(
        info.io_bytes_max >= 1 << 20,
        "io_bytes_max allows 1 MiB transfers"
    );
    assert!(!info.read_only, "conformance needs a writable device");
}

async fn fresh_device_reads_zeroes<D: BlockDevice>(dev: D) {
    let size = dev.info().size_bytes;
    assert_zero(&read(&dev, 0, MIB).await, "fresh device, first MiB");
    assert_zero(&read(&dev, size - MIB, MIB).await, "fresh device, last MiB");
}

async fn writes_read_back_at_the_edges<D: BlockDevice>(dev: D) {
    let info = dev.info();
    let block = u64::from(info.block_bytes);
    let size = info.size_bytes;
    let cases = [
        (0, block),
        (block, 3 * block),
        (size - block, block),
        (size / 2 - 5 * block, 11 * block), // across the middle
        (3 * MIB - block, MIB + 2 * block), // unaligned to any extent size
    ];
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, len as usize);
        write(&dev, offset, &data, WriteFlags::empty()).await;
        let back = read(&dev, offset, len).await;
        assert!(back[..] == data[..], "write at {offset}+{len} reads back");
    }
    // Earlier cases are intact after the later ones.
    let first = pattern(1, block as usize);
    assert!(
        read(&dev, 0, block).await[..] == first[..],
        "first block intact"
    );
}

async fn fua_writes_and_flush_succeed<D: BlockDevice>(dev: D) {
    let caps = dev.info().caps;
    let data = pattern(7, 64 << 10);
    let flags = if caps.contains(Caps::FUA) {
        WriteFlags::FUA
    } else {
        WriteFlags::empty()
    };
    write(&dev, MIB, &data, flags).await;
    dev.flush().await.expect("flush succeeds");
    dev.flush().await.expect("a second flush succeeds");
    assert!(
        read(&dev, MIB, 64 << 10).await[..] == data[..],
        "FUA write reads back"
    );
}

async fn write_zeroes_zeroes_only_its_range<D: BlockDevice>(dev: D) {
    let block = u64::from(dev.info().block_bytes);
    let data = pattern(9, (4 * MIB) as usize);
    write(&dev, 0, &data, WriteFlags::empty()).await;
    for (offset, len, flags) in [
        (block, block, ZeroFlags::empty()),
        (MIB, MIB, ZeroFlags::empty()),
        (MIB / 2 + block, MIB / 4, ZeroFlags::NO_HOLE),
        (3 * MIB, MIB, ZeroFlags::NO_HOLE),
    ] {
        dev.write_zeroes(ByteRange::new(offset, len), flags)
            .await
            .unwrap_or_else(|e| panic!("write_zeroes {offset}+{len} {flags:?}: {e}"));
        assert_zero(&read(&dev, offset, len).await, "zeroed range");
    }
    let back = read(&dev, 0, 4 * MIB).await;
    let keep = |start: u64, end: u64| {
        assert!(
            back[start as usize..end as usize] == data[start as usize..end as usize],
            "bytes {start}..{end} next to zeroed ranges are intact"
        );
    };
    keep(0, block);
    keep(2 * block, MIB / 2 + block);
    keep(MIB / 2 + block + MIB / 4, MIB);
    keep(2 * MIB, 3 * MIB);
}

async fn discard_keeps_neighbours<D: BlockDevice>(dev: D) {
    if !dev.info().caps.contains(Caps::DISCARD) {
        return;
    }
    let data = pattern(11, (4 * MIB) as usize);
    write(&dev, 0, &data, WriteFlags::empty()).await;
    let (offset, len) = (MIB - 8192, 2 * MIB + 4096);
    dev.discard(ByteRange::new(offset, len))
        .await
        .expect("discard");
    let back = read(&dev, 0, 4 * MIB).await;
    assert!(
        back[..offset as usize] == data[..offset as usize],
        "bytes before discard intact"
    );
    let end = (offset + len) as usize;
    assert!(back[end..] == data[end..], "bytes after discard intact");
    // A discarded range accepts new data.
    let fresh = pattern(12, MIB as usize);
    write(&dev, MIB, &fresh, WriteFlags::empty()).await;
    assert!(
        read(&dev, MIB, MIB).await[..] == fresh[..],
        "rewrite after discard"
    );
}

async fn block_status_is_honest<D: BlockDevice>(dev: D) {
    let size = dev.info().size_bytes;
    let data = pattern(13, (256 << 10) as usize);
    write(&dev, 2 * MIB, &data, WriteFlags::empty()).await;
    for range in [ByteRange::new(0, size), ByteRange::new(2 * MIB, 256 << 10)] {
        let extents = dev.block_status(range).await.expect("block_status");
        let mut offset = range.offset_bytes;
        for extent in &extents {
            if extent.status.contains(BlockStatus::ZERO) {
                let len = extent.len_bytes.min(8 * MIB);
                assert_zero(&read(&dev, offset, len).await, "range reported as zero");
            }
            offset += extent.len_bytes;
        }
        if dev.info().caps.contains(Caps::BLOCK_STATUS) {
            let written = dev
                .block_status(ByteRange::new(2 * MIB, 256 << 10))
                .await
                .expect("block_status of written range");
            assert!(
                written
                    .iter()
                    .all(|e| !e.status.contains(BlockStatus::ZERO)),
                "written data is not reported as zero: {written:?}"
            );
        }
    }
}

async fn contract_violations_are_refused<D: BlockDevice>(dev: D) {
    let info = dev.info();
    let block = u64::from(info.block_bytes);
    let size = info.size_bytes;
    let (result, buf) = dev.read_at(size, IoBufMut::zeroed(block as usize)).await;
    assert_eq!(
        result.unwrap_err().kind(),
        ErrorKind::OutOfRange,
        "read past the end"
    );
    assert_eq!(buf.len(), block as usize, "buffer comes back on error");
    let (result, _) = dev
        .write_at(
            size - block,
            IoBuf::zeroed(2 * block as usize),
            WriteFlags::empty(),
        )
        .await;
    assert_eq!(
        result.unwrap_err().kind(),
        ErrorKind::OutOfRange,
        "write across the end"
    );
    if block > 1 {
        let (result, _) = dev.read_at(1, IoBufMut::zeroed(block as usize)).await;
        assert_eq!(
            result.unwrap_err().kind(),
            ErrorKind::Unaligned,
            "unaligned read"
        );
    }
    let err = dev
        .write_zeroes(
            ByteRange::new(u64::MAX - block + 1, block),
            ZeroFlags::empty(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "offset overflow");
    assert_zero(
        &read(&dev, size - MIB, MIB).await,
        "refused writes changed nothing",
    );
}

async fn concurrent_writes_do_not_interfere<D: BlockDevice>(dev: Arc<D>) {
    let stride = 256u64 << 10;
    let writers: Vec<_> = (0..32u64)
        .map(|i| {
            let dev = dev.clone();
            tokio::spawn(async move {
                let data = pattern(100 + i, stride as usize);
                write(&*dev, i * stride, &data, WriteFlags::empty()).await;
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    let back = read(&*dev, 0, 32 * stride).await;
    for i in 0..32u64 {
        let data = pattern(100 + i, stride as usize);
        let at = (i * stride) as usize;
        assert!(
            back[at..at + stride as usize] == data[..],
            "concurrent writer {i} intact"
        );
    }
}

/// What the model knows about each block.
#[derive(Clone, Copy)]
enum Known {
    Bytes(u64), // the block was filled from pattern(seed)
    Zero,
    Unknown, // discarded: the contract leaves its contents open
}

/// A seeded random sequence of writes, zeroes, discards, flushes and reads,
/// checked block by block against a model.
pub async fn model_run<D: BlockDevice>(dev: D, seed: u64, ops: usize) {
    let info = dev.info();
    let block = u64::from(info.block_bytes);
    let blocks = (info.size_bytes / block).min(4096);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut model = vec![Known::Zero; blocks as usize];
    let fail = |what: String| -> ! { panic!("model run seed {seed}: {what}") };
    for op in 0..ops {
        let first = rng.random_range(0..blocks);
        let count = rng.random_range(1..=(blocks - first).min(300));
        let range = ByteRange::new(first * block, count * block);
        match rng.random_range(0..10) {
            0..=3 => {
                let mut buf = IoBufMut::zeroed((count * block) as usize);
                let base = rng.random::<u64>();
                for i in 0..count {
                    let chunk = &mut buf[(i * block) as usize..((i + 1) * block) as usize];
                    chunk.copy_from_slice(&pattern(base ^ (first + i), block as usize));
                    model[(first + i) as usize] = Known::Bytes(base ^ (first + i));
                }
                let flags = if rng.random_bool(0.1) && info.caps.contains(Caps::FUA) {
                    WriteFlags::FUA
                } else {
                    WriteFlags::empty()
                };
                let (result, _) = dev.write_at(range.offset_bytes, buf.freeze(), flags).await;
                result.unwrap_or_else(|e| fail(format!("op {op}: write {range:?}: {e}")));
            }
            4 => {
                let flags = if rng.random_bool(0.5) {
                    ZeroFlags::NO_HOLE
                } else {
                    ZeroFlags::empty()
                };
                dev.write_zeroes(range, flags)
                    .await
                    .unwrap_or_else(|e| fail(format!("op {op}: write_zeroes {range:?}: {e}")));
                model[first as usize..(first + count) as usize].fill(Known::Zero);
            }
            5 if info.caps.contains(Caps::DISCARD) => {
                dev.discard(range)
                    .await
                    .unwrap_or_else(|e| fail(format!("op {op}: discard {range:?}: {e}")));
                model[first as usize..(first + count) as usize].fill(Known::Unknown);
            }
            6 => dev
                .flush()
                .await
                .unwrap_or_else(|e| fail(format!("op {op}: flush: {e}"))),
            _ => {
                let (result, buf) = dev
                    .read_at(
                        range.offset_bytes,
                        IoBufMut::zeroed((count * block) as usize),
                    )
                    .await;
                result.unwrap_or_else(|e| fail(format!("op {op}: read {range:?}: {e}")));
                for i in 0..count {
                    let got = &buf[(i * block) as usize..((i + 1) * block) as usize];
                    let ok = match model[(first + i) as usize] {
                        Known::Bytes(s) => got == &pattern(s, block as usize)[..],
                        Known::Zero => got.iter().all(|&b| b == 0),
                        Known::Unknown => true,
                    };
                    if !ok {
                        fail(format!(
                            "op {op}: block {} differs from the model",
                            first + i
                        ));
                    }
                }
            }
        }
    }
}
