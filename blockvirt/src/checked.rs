//! `Checked<D>`: asserts the contract between two layers.
//!
//! It sits between a layer and its child and rejects any request the child
//! was promised it would never see: out of range, unaligned, too large, a
//! flag or operation the child did not announce, a write to a read-only
//! device, a block-status answer that does not tile the range. A violation
//! is a bug in the layer above, so it is logged at error level and returned
//! as an error of the matching kind instead of reaching the child. The
//! checks are a few integer comparisons, so they stay on in release builds.

use async_trait::async_trait;

use crate::buf::{IoBuf, IoBufMut};
use crate::device::{
    BlockDevice, BufResult, ByteRange, Caps, DeviceInfo, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};

#[derive(Debug)]
pub struct Checked<D> {
    inner: D,
}

impl<D: BlockDevice> Checked<D> {
    pub fn new(inner: D) -> Self {
        Checked { inner }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn violation(&self, kind: ErrorKind, what: String) -> BlockError {
        tracing::error!(device = ?self.inner, "contract violation: {what}");
        BlockError::new(kind, format!("contract violation: {what}"))
    }

    fn check_range(&self, op: &str, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        let info = self.inner.info();
        let block = u64::from(info.block_bytes);
        if !offset_bytes.is_multiple_of(block) || !len_bytes.is_multiple_of(block) {
            return Err(self.violation(
                ErrorKind::Unaligned,
                format!("{op} at {offset_bytes}+{len_bytes} is not {block}-byte aligned"),
            ));
        }
        match offset_bytes.checked_add(len_bytes) {
            Some(end) if end <= info.size_bytes => Ok(()),
            _ => Err(self.violation(
                ErrorKind::OutOfRange,
                format!(
                    "{op} at {offset_bytes}+{len_bytes} ends past the device size {}",
                    info.size_bytes
                ),
            )),
        }
    }

    fn check_io(&self, op: &str, offset_bytes: u64, len: usize) -> BlockResult<()> {
        let info = self.inner.info();
        if len > info.io_bytes_max as usize {
            return Err(self.violation(
                ErrorKind::InvalidArgument,
                format!("{op} of {len} bytes exceeds io_bytes_max {}", info.io_bytes_max),
            ));
        }
        self.check_range(op, offset_bytes, len as u64)
    }

    fn check_cap(&self, op: &str, cap: Caps) -> BlockResult<()> {
        if self.inner.info().caps.contains(cap) {
            Ok(())
        } else {
            Err(self.violation(
                ErrorKind::Unsupported,
                format!("{op} needs {cap:?}, which the device did not announce"),
            ))
        }
    }

    fn check_writable(&self, op: &str) -> BlockResult<()> {
        if self.inner.info().read_only {
            Err(self.violation(ErrorKind::ReadOnly, format!("{op} on a read-only device")))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl<D: BlockDevice> BlockDevice for Checked<D> {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        if let Err(e) = self.check_io("read", offset_bytes, buf.len()) {
            return (Err(e), buf);
        }
        let len = buf.len();
        let (result, buf) = self.inner.read_at(offset_bytes, buf).await;
        assert_eq!(buf.len(), len, "{:?} changed the buffer length", self.inner);
        (result, buf)
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        let checks = self
            .check_writable("write")
            .and_then(|_| self.check_io("write", offset_bytes, buf.len()))
            .and_then(|_| {
                if flags.contains(WriteFlags::FUA) {
                    self.check_cap("write with FUA", Caps::FUA)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = checks {
            return (Err(e), buf);
        }
        self.inner.write_at(offset_bytes, buf, flags).await
    }

    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        self.check_writable("discard")?;
        self.check_cap("discard", Caps::DISCARD)?;
        self.check_range("discard", range.offset_bytes, range.len_bytes)?;
        self.inner.discard(range).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        self.check_writable("write_zeroes")?;
        self.check_range("write_zeroes", range.offset_bytes, range.len_bytes)?;
        if flags.contains(ZeroFlags::FAST) {
            self.check_cap("write_zeroes with FAST", Caps::FAST_ZERO)?;
        }
        self.inner.write_zeroes(range, flags).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        self.check_range("block_status", range.offset_bytes, range.len_bytes)?;
        let extents = self.inner.block_status(range).await?;
        let total: u64 = extents.iter().map(|e| e.len_bytes).sum();
        assert_eq!(
            total, range.len_bytes,
            "{:?} answered block_status for {range:?} with {total} bytes",
            self.inner
        );
        assert!(
            extents.iter().all(|e| e.len_bytes > 0),
            "{:?} answered block_status with an empty extent",
            self.inner
        );
        Ok(extents)
    }
}
