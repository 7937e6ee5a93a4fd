//! A host's view of a [`SimDisk`] for one power-on.
//!
//! A crash in a test is a power loss of disks *and* host, but the test's
//! process lives on: tasks of the stack that was running (a background
//! checkpoint, a commit) would go on writing to the disks after the crash,
//! which no real host could. A stack reaches its disks through sessions
//! opened at its start; once a disk crashes, every operation through an
//! older session fails as if the crash had interrupted it, and only the
//! restarted stack's new sessions reach the disk.

use std::sync::Arc;

use async_trait::async_trait;

use super::SimDisk;
use crate::buf::{IoBuf, IoBufMut};
use crate::device::{
    BlockDevice, BufResult, ByteRange, DeviceInfo, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::BlockResult;

/// The disk as one power-on sees it (see the module doc).
#[derive(Debug, Clone)]
pub struct SimSession {
    disk: Arc<SimDisk>,
    generation: u64,
}

impl SimDisk {
    /// Opens the disk for the current power-on: operations through the
    /// session fail once the disk crashes.
    pub fn session(self: &Arc<Self>) -> SimSession {
        SimSession {
            disk: self.clone(),
            generation: self.state.lock().generation,
        }
    }
}

impl SimSession {
    /// Whether no crash has ended this session's power-on.
    pub fn is_current(&self) -> bool {
        self.disk.state.lock().generation == self.generation
    }

    fn life(&self) -> Option<u64> {
        Some(self.generation)
    }
}

#[async_trait]
impl BlockDevice for SimSession {
    fn info(&self) -> DeviceInfo {
        self.disk.info
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        self.disk.read_in(self.life(), offset_bytes, buf).await
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        self.disk
            .write_in(self.life(), offset_bytes, buf, flags)
            .await
    }

    async fn flush(&self) -> BlockResult<()> {
        self.disk.flush_in(self.life()).await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        self.disk.discard_in(self.life(), range).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        self.disk.write_zeroes_in(self.life(), range, flags).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        self.disk.block_status_in(self.life(), range).await
    }
}
