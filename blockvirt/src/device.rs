//! The block-device contract every layer speaks.
//!
//! ```text
//!  gateway (NBD, iSCSI, FUSE)
//!     │ BlockDevice
//!  ThinVolume ── Checked ── FileDevice (io_uring | threads)
//! ```
//!
//! Rules that hold for every implementation:
//! - Capabilities ([`Caps`]) are fixed at open. The size may only grow.
//! - I/O is all-or-error: a read fills the whole buffer or fails.
//! - Buffers are owned and come back with the result, even on error.
//! - Offsets and lengths are multiples of `block_bytes`, within the device,
//!   and no longer than `io_bytes_max` ([`Checked`](crate::Checked) enforces it).
//! - The trait has no default bodies: a new operation is a compile error in
//!   every layer until that layer decides what it means.

use async_trait::async_trait;
use bitflags::bitflags;

use crate::buf::{IoBuf, IoBufMut};
use crate::error::BlockResult;

/// A result that also hands back the buffer the operation took.
pub type BufResult<B> = (BlockResult<()>, B);

bitflags! {
    /// Operations and flags a device offers, fixed when it is opened.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Caps: u32 {
        /// `flush` makes completed writes durable (a volatile cache exists).
        const FLUSH = 1 << 0;
        /// `WriteFlags::FUA` is honoured per write.
        const FUA = 1 << 1;
        /// `discard` releases space.
        const DISCARD = 1 << 2;
        /// `write_zeroes` is cheaper than writing a zero buffer.
        const WRITE_ZEROES = 1 << 3;
        /// `ZeroFlags::FAST` is answered truthfully (fails fast when slow).
        const FAST_ZERO = 1 << 4;
        /// `block_status` reports holes and zeroes rather than "all data".
        const BLOCK_STATUS = 1 << 5;
    }
}

bitflags! {
    /// Per-write flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct WriteFlags: u32 {
        /// Durable before completion (forced unit access).
        const FUA = 1 << 0;
    }
}

bitflags! {
    /// Flags for `write_zeroes`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct ZeroFlags: u32 {
        /// Keep the range allocated: later writes there must not hit ENOSPC.
        const NO_HOLE = 1 << 0;
        /// Fail with `Unsupported` instead of falling back to writing zeroes.
        const FAST = 1 << 1;
    }
}

bitflags! {
    /// Allocation state of a range, with the meaning of NBD's `base:allocation`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct BlockStatus: u32 {
        /// Not allocated: writing here may need new space (and may hit ENOSPC).
        const HOLE = 1 << 0;
        /// Reads as zeroes.
        const ZERO = 1 << 1;
    }
}

/// What a device is, fixed at open except for `size_bytes`, which may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    pub size_bytes: u64,
    /// Smallest unit of addressing and alignment (a power of two).
    pub block_bytes: u32,
    /// Largest single read or write the device accepts.
    pub io_bytes_max: u32,
    pub caps: Caps,
    pub read_only: bool,
}

/// A byte range on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

impl ByteRange {
    pub fn new(offset_bytes: u64, len_bytes: u64) -> Self {
        ByteRange {
            offset_bytes,
            len_bytes,
        }
    }

    /// One past the last byte; `None` on overflow.
    pub fn end_bytes(&self) -> Option<u64> {
        self.offset_bytes.checked_add(self.len_bytes)
    }
}

/// A run of bytes with one allocation state, as returned by `block_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    pub len_bytes: u64,
    pub status: BlockStatus,
}

/// The contract of every layer: leaves, wrappers, volumes, redundancy.
#[async_trait]
pub trait BlockDevice: Send + Sync + std::fmt::Debug + 'static {
    fn info(&self) -> DeviceInfo;

    /// Fills `buf` with the bytes at `offset_bytes`.
    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut>;

    /// Writes all of `buf` at `offset_bytes`.
    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf>;

    /// Makes every write completed before this call durable.
    async fn flush(&self) -> BlockResult<()>;

    /// Hints that `range` is no longer needed. Contents afterwards are
    /// unspecified by the contract (a layer documents what it does).
    async fn discard(&self, range: ByteRange) -> BlockResult<()>;

    /// Makes `range` read as zeroes.
    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()>;

    /// Allocation state of `range`: consecutive extents that cover exactly
    /// `range`, in order, adjacent extents differing in status.
    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>>;
}

/// A shared device is a device: layers and gateways can hold one stack
/// through `Arc`s without a wrapper type.
#[async_trait]
impl<D: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<D> {
    fn info(&self) -> DeviceInfo {
        (**self).info()
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        (**self).read_at(offset_bytes, buf).await
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        (**self).write_at(offset_bytes, buf, flags).await
    }

    async fn flush(&self) -> BlockResult<()> {
        (**self).flush().await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        (**self).discard(range).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        (**self).write_zeroes(range, flags).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        (**self).block_status(range).await
    }
}

/// Appends `len_bytes` of `status` to `extents`, merging with the last extent
/// when the status is the same. Helps implementations keep the
/// "adjacent extents differ" rule.
pub fn push_status(extents: &mut Vec<StatusExtent>, len_bytes: u64, status: BlockStatus) {
    if len_bytes == 0 {
        return;
    }
    match extents.last_mut() {
        Some(last) if last.status == status => last.len_bytes += len_bytes,
        _ => extents.push(StatusExtent { len_bytes, status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_status_merges_equal_neighbours() {
        let mut extents = Vec::new();
        push_status(&mut extents, 4096, BlockStatus::empty());
        push_status(&mut extents, 4096, BlockStatus::empty());
        push_status(&mut extents, 0, BlockStatus::HOLE);
        push_status(&mut extents, 8192, BlockStatus::HOLE | BlockStatus::ZERO);
        assert_eq!(
            extents,
            vec![
                StatusExtent {
                    len_bytes: 8192,
                    status: BlockStatus::empty()
                },
                StatusExtent {
                    len_bytes: 8192,
                    status: BlockStatus::HOLE | BlockStatus::ZERO
                },
            ]
        );
    }

    #[test]
    fn range_end_detects_overflow() {
        assert_eq!(ByteRange::new(u64::MAX, 1).end_bytes(), None);
        assert_eq!(ByteRange::new(10, 5).end_bytes(), Some(15));
    }
}
