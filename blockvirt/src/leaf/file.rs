//! `FileDevice`: a PV leaf over a regular file or a block device.
//!
//! - I/O goes through io_uring (one ring thread for the process) or, as a fallback,
//!   through `pread`/`pwrite` on tokio's blocking pool.
//! - `O_DIRECT` is used when the filesystem accepts it (probed at open);
//!   buffers that are not aligned are bounced through an aligned copy.
//! - `flush` is `fdatasync`. A failed `fdatasync` poisons the device: the
//!   kernel may already have dropped the dirty pages, so what is durable is
//!   unknown, and retrying would report a success that is not true.
//! - `discard` punches a hole (`FALLOC_FL_PUNCH_HOLE`), `write_zeroes` uses
//!   `FALLOC_FL_ZERO_RANGE` when the range must stay allocated. Both read
//!   back as zeroes.
//! - `block_status` answers from `SEEK_DATA` / `SEEK_HOLE` on files; a block
//!   device reports all data.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::uring::{Request, Ring};
use crate::buf::{IoBuf, IoBufMut, IO_ALIGN};
use crate::device::{
    push_status, BlockDevice, BlockStatus, BufResult, ByteRange, Caps, DeviceInfo, StatusExtent,
    WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// Largest single transfer handed to the kernel.
const IO_BYTES_MAX: u32 = 32 << 20;

/// How a leaf submits I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring when the kernel allows it, else threads.
    #[default]
    Auto,
    Uring,
    Threads,
}

/// Options for opening a [`FileDevice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOptions {
    pub engine: EngineChoice,
    /// Try `O_DIRECT`; fall back to buffered I/O where the filesystem refuses.
    pub direct_io: bool,
    pub read_only: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            engine: EngineChoice::Auto,
            direct_io: true,
            read_only: false,
        }
    }
}

enum Engine {
    Uring(&'static Ring),
    Threads,
}

pub struct FileDevice {
    path: PathBuf,
    file: Arc<File>,
    info: DeviceInfo,
    engine: Engine,
    direct: bool,
    block_device: bool,
    poisoned: AtomicBool,
    /// Flushes hold it alone, FUA writes share it. Linux reports a
    /// writeback error to one syncer only; with flushes one at a time and
    /// the poison stored before the next one starts, no flush (or FUA
    /// write) can report success for data an earlier sync found lost.
    sync_order: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDevice")
            .field("path", &self.path)
            .field("engine", &self.engine_name())
            .field("direct", &self.direct)
            .finish()
    }
}

impl FileDevice {
    /// Opens an existing file or block device.
    pub fn open(path: impl AsRef<Path>, options: FileOptions) -> BlockResult<FileDevice> {
        let path = path.as_ref().to_path_buf();
        let context = || format!("open {}", path.display());
        let (file, direct) =
            open_file(&path, options).map_err(|e| BlockError::from_io(context(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| BlockError::from_io(context(), e))?;
        let block_device = meta.file_type().is_block_device();
        let raw_size = if block_device {
            block_device_size(&file).map_err(|e| BlockError::from_io(context(), e))?
        } else {
            meta.len()
        };
        let size_bytes = raw_size - raw_size % IO_ALIGN as u64;
        let file = Arc::new(file);
        let engine = match options.engine {
            EngineChoice::Threads => Engine::Threads,
            EngineChoice::Uring => Engine::Uring(
                Ring::process_wide()
                    .map_err(|e| BlockError::from_io(format!("{}: io_uring", context()), e))?,
            ),
            EngineChoice::Auto => match Ring::process_wide() {
                Ok(ring) => Engine::Uring(ring),
                Err(e) => {
                    tracing::warn!(
                        "io_uring unavailable for {} ({e}); using threads",
                        path.display()
                    );
                    Engine::Threads
                }
            },
        };
        let caps = Caps::FLUSH
            | Caps::FUA
            | Caps::DISCARD
            | Caps::WRITE_ZEROES
            | Caps::FAST_ZERO
            | if block_device {
                Caps::empty()
            } else {
                Caps::BLOCK_STATUS
            };
        Ok(FileDevice {
            info: DeviceInfo {
                size_bytes,
                block_bytes: IO_ALIGN as u32,
                io_bytes_max: IO_BYTES_MAX,
                caps,
                read_only: options.read_only,
            },
            path,
            file,
            engine,
            direct,
            block_device,
            poisoned: AtomicBool::new(false),
            sync_order: tokio::sync::RwLock::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes an exclusive advisory lock on the file, so two servers never
    /// write the same PV. Fails at once if another process holds it.
    pub fn lock_exclusive(&self) -> BlockResult<()> {
        // SAFETY: flock on a descriptor owned by `self.file`.
        let rc = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        let kind = if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            ErrorKind::Busy
        } else {
            ErrorKind::Io
        };
        Err(BlockError::with_source(
            kind,
            format!("{}: in use by another process", self.path.display()),
            err,
        ))
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Uring(_) => "io_uring",
            Engine::Threads => "threads",
        }
    }

    fn error(&self, op: &str, offset_bytes: u64, err: io::Error) -> BlockError {
        BlockError::from_io(
            format!("{}: {op} at {offset_bytes}", self.path.display()),
            err,
        )
    }

    fn check_poison(&self) -> BlockResult<()> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(BlockError::new(
                ErrorKind::Poisoned,
                self.path.display().to_string(),
            ))
        } else {
            Ok(())
        }
    }

    async fn read_raw(&self, offset_bytes: u64, buf: IoBufMut) -> (io::Result<()>, IoBufMut) {
        match &self.engine {
            Engine::Uring(ring) => {
                let (reply, done) = oneshot::channel();
                ring.submit(
                    self.file.clone(),
                    Request::Read {
                        offset: offset_bytes,
                        buf,
                        reply,
                    },
                );
                done.await.expect("ring thread answers every request")
            }
            Engine::Threads => {
                let file = self.file.clone();
                let mut buf = buf;
                tokio::task::spawn_blocking(move || {
                    let result = file.read_exact_at(&mut buf, offset_bytes);
                    (result, buf)
                })
                .await
                .expect("blocking read task does not panic")
            }
        }
    }

    async fn write_raw(
        &self,
        offset_bytes: u64,
        buf: IoBuf,
        dsync: bool,
    ) -> (io::Result<()>, IoBuf) {
        match &self.engine {
            Engine::Uring(ring) => {
                let (reply, done) = oneshot::channel();
                ring.submit(
                    self.file.clone(),
                    Request::Write {
                        offset: offset_bytes,
                        buf,
                        dsync,
                        reply,
                    },
                );
                done.await.expect("ring thread answers every request")
            }
            Engine::Threads => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || {
                    let result = file.write_all_at(&buf, offset_bytes).and_then(|_| {
                        if dsync {
                            file.sync_data()
                        } else {
                            Ok(())
                        }
                    });
                    (result, buf)
                })
                .await
                .expect("blocking write task does not panic")
            }
        }
    }

    async fn fallocate(&self, mode: i32, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        match &self.engine {
            Engine::Uring(ring) => {
                let (reply, done) = oneshot::channel();
                ring.submit(
                    self.file.clone(),
                    Request::Fallocate {
                        mode,
                        offset: offset_bytes,
                        len: len_bytes,
                        reply,
                    },
                );
                done.await.expect("ring thread answers every request")
            }
            Engine::Threads => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || {
                    // SAFETY: plain syscall on a descriptor kept open by `file`.
                    let rc = unsafe {
                        libc::fallocate(
                            file.as_raw_fd(),
                            mode,
                            offset_bytes as libc::off_t,
                            len_bytes as libc::off_t,
                        )
                    };
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                })
                .await
                .expect("blocking fallocate task does not panic")
            }
        }
    }

    async fn fdatasync(&self) -> io::Result<()> {
        match &self.engine {
            Engine::Uring(ring) => {
                let (reply, done) = oneshot::channel();
                ring.submit(self.file.clone(), Request::Fdatasync { reply });
                done.await.expect("ring thread answers every request")
            }
            Engine::Threads => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || file.sync_data())
                    .await
                    .expect("blocking fdatasync task does not panic")
            }
        }
    }

    /// Writes zero buffers over the range (when fallocate cannot zero it).
    async fn write_zero_buffers(&self, range: ByteRange) -> io::Result<()> {
        let chunk = (1u64 << 20).min(range.len_bytes) as usize;
        let zeroes = IoBuf::zeroed(chunk);
        let mut offset = range.offset_bytes;
        let end = range.offset_bytes + range.len_bytes;
        while offset < end {
            let len = (end - offset).min(chunk as u64) as usize;
            let (result, _) = self.write_raw(offset, zeroes.slice(0..len), false).await;
            result?;
            offset += len as u64;
        }
        Ok(())
    }
}

#[async_trait]
impl BlockDevice for FileDevice {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        if let Err(e) = self.check_poison() {
            return (Err(e), buf);
        }
        if self.direct && !buf.is_aligned() {
            // Lengths are block multiples (the contract); only the address
            // can be off, so an aligned copy of the same size suffices.
            let (result, bounce) = self
                .read_raw(offset_bytes, IoBufMut::zeroed(buf.len()))
                .await;
            let mut buf = buf;
            buf.copy_from_slice(&bounce);
            return (result.map_err(|e| self.error("read", offset_bytes, e)), buf);
        }
        let (result, buf) = self.read_raw(offset_bytes, buf).await;
        (result.map_err(|e| self.error("read", offset_bytes, e)), buf)
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        if let Err(e) = self.check_poison() {
            return (Err(e), buf);
        }
        let dsync = flags.contains(WriteFlags::FUA);
        let _order = if dsync {
            Some(self.sync_order.read().await)
        } else {
            None
        };
        if let Err(e) = self.check_poison() {
            return (Err(e), buf);
        }
        let (result, sent) = if self.direct && !buf.is_aligned() {
            let (result, _) = self
                .write_raw(offset_bytes, IoBuf::copy_from(&buf), dsync)
                .await;
            (result, buf)
        } else {
            self.write_raw(offset_bytes, buf, dsync).await
        };
        if result.is_err() && dsync {
            // A failed O_DSYNC write is a failed flush of that range.
            self.poisoned.store(true, Ordering::Release);
        }
        (
            result.map_err(|e| self.error("write", offset_bytes, e)),
            sent,
        )
    }

    async fn flush(&self) -> BlockResult<()> {
        let _alone = self.sync_order.write().await;
        self.check_poison()?;
        if let Err(e) = self.fdatasync().await {
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(
                "{}: fdatasync failed ({e}); device poisoned",
                self.path.display()
            );
            return Err(self.error("fdatasync", 0, e));
        }
        Ok(())
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        self.check_poison()?;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self
            .fallocate(mode, range.offset_bytes, range.len_bytes)
            .await
        {
            // Discard is advisory: a filesystem without hole punching keeps the data.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            result => result.map_err(|e| self.error("discard", range.offset_bytes, e)),
        }
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        self.check_poison()?;
        let mode = if flags.contains(ZeroFlags::NO_HOLE) || self.block_device {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self
            .fallocate(mode, range.offset_bytes, range.len_bytes)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                if flags.contains(ZeroFlags::FAST) {
                    return Err(BlockError::new(
                        ErrorKind::Unsupported,
                        format!("{}: fast zeroing", self.path.display()),
                    ));
                }
                self.write_zero_buffers(range)
                    .await
                    .map_err(|e| self.error("write_zeroes", range.offset_bytes, e))
            }
            Err(e) => Err(self.error("write_zeroes", range.offset_bytes, e)),
        }
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        if self.block_device {
            return Ok(vec![StatusExtent {
                len_bytes: range.len_bytes,
                status: BlockStatus::empty(),
            }]);
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || seek_status(&file, range))
            .await
            .expect("blocking seek task does not panic")
            .map_err(|e| self.error("block_status", range.offset_bytes, e))
    }
}

fn open_file(path: &Path, options: FileOptions) -> io::Result<(File, bool)> {
    let mut open = OpenOptions::new();
    open.read(true).write(!options.read_only);
    if options.direct_io {
        match open.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) if direct_read_works(&file) => return Ok((file, true)),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(
            "{}: O_DIRECT refused by the filesystem; using buffered I/O",
            path.display()
        );
    }
    Ok((open.open(path)?, false))
}

/// Some filesystems accept `O_DIRECT` at open and fail the first I/O.
fn direct_read_works(file: &File) -> bool {
    let mut probe = IoBufMut::zeroed(IO_ALIGN);
    match file.read_at(&mut probe, 0) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(libc::EINVAL),
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc == 0 {
        Ok(size)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps data and holes with `SEEK_DATA` / `SEEK_HOLE`, rounded to whole
/// blocks (a partly written block counts as data).
fn seek_status(file: &File, range: ByteRange) -> io::Result<Vec<StatusExtent>> {
    let fd = file.as_raw_fd();
    let block = IO_ALIGN as u64;
    let end = range.offset_bytes + range.len_bytes;
    let mut extents = Vec::new();
    let mut offset = range.offset_bytes;
    while offset < end {
        // SAFETY: lseek only reads the descriptor's file.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        let data = if data < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENXIO) {
                return Err(err);
            }
            end // no data after offset
        } else {
            (data as u64).min(end)
        };
        let data = data - data % block;
        if data > offset {
            push_status(
                &mut extents,
                data - offset,
                BlockStatus::HOLE | BlockStatus::ZERO,
            );
            offset = data;
            continue;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let hole = (hole as u64)
            .next_multiple_of(block)
            .clamp(offset + block, end);
        push_status(&mut extents, hole - offset, BlockStatus::empty());
        offset = hole;
    }
    Ok(extents)
}
