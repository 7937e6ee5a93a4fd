//! `Counted<D>`: counts the errors a device returns, per operation.
//!
//! ```text
//!  Checked ── Counted ── Faulty ── FileDevice      (a PV on the server)
//! ```
//!
//! The server puts one in front of every PV so its metrics can say which
//! disk fails and how often, whether the error came from the disk or from
//! an injected fault. Below `Checked`, so a contract violation (a bug of
//! the layer above) is not blamed on the disk. A success costs nothing but
//! the match on its result; an error, one relaxed atomic add.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::buf::{IoBuf, IoBufMut};
use crate::device::{
    BlockDevice, BufResult, ByteRange, DeviceInfo, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::BlockResult;

/// The operations [`Counted`] counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    BlockStatus,
}

impl DeviceOp {
    /// Every operation, in the order of [`ErrorCounts::by_op`].
    pub const ALL: [DeviceOp; 6] = [
        DeviceOp::Read,
        DeviceOp::Write,
        DeviceOp::Flush,
        DeviceOp::Discard,
        DeviceOp::WriteZeroes,
        DeviceOp::BlockStatus,
    ];

    /// A lower-case name, fit for a metric label.
    pub fn name(self) -> &'static str {
        match self {
            DeviceOp::Read => "read",
            DeviceOp::Write => "write",
            DeviceOp::Flush => "flush",
            DeviceOp::Discard => "discard",
            DeviceOp::WriteZeroes => "write_zeroes",
            DeviceOp::BlockStatus => "block_status",
        }
    }
}

/// Errors returned since the wrapper was made, per [`DeviceOp`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub by_op: [u64; 6],
}

impl ErrorCounts {
    pub fn get(&self, op: DeviceOp) -> u64 {
        self.by_op[op as usize]
    }

    pub fn total(&self) -> u64 {
        self.by_op.iter().sum()
    }
}

#[derive(Debug)]
pub struct Counted<D> {
    inner: D,
    errors: [AtomicU64; 6],
}

impl<D: BlockDevice> Counted<D> {
    pub fn new(inner: D) -> Self {
        Counted {
            inner,
            errors: Default::default(),
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn errors(&self) -> ErrorCounts {
        ErrorCounts {
            by_op: std::array::from_fn(|i| self.errors[i].load(Ordering::Relaxed)),
        }
    }

    fn count<T>(&self, op: DeviceOp, result: &BlockResult<T>) {
        if result.is_err() {
            self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl<D: BlockDevice> BlockDevice for Counted<D> {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        let (result, buf) = self.inner.read_at(offset_bytes, buf).await;
        self.count(DeviceOp::Read, &result);
        (result, buf)
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        let (result, buf) = self.inner.write_at(offset_bytes, buf, flags).await;
        self.count(DeviceOp::Write, &result);
        (result, buf)
    }

    async fn flush(&self) -> BlockResult<()> {
        let result = self.inner.flush().await;
        self.count(DeviceOp::Flush, &result);
        result
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        let result = self.inner.discard(range).await;
        self.count(DeviceOp::Discard, &result);
        result
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        let result = self.inner.write_zeroes(range, flags).await;
        self.count(DeviceOp::WriteZeroes, &result);
        result
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        let result = self.inner.block_status(range).await;
        self.count(DeviceOp::BlockStatus, &result);
        result
    }
}
