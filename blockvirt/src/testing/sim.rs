//! `SimDisk`: a deterministic, seeded, in-memory disk for simulation tests
//! (the model is TigerBeetle's `testing/storage.zig`).
//!
//! ```text
//!  caller ── plan (one lock: every RNG draw, in call order; `state.rs`)
//!         ── sleep the planned latency (tokio time, virtual when paused)
//!         ── execute (one lock): failed? crashed meanwhile? injected error?
//!                                else apply to the write cache
//! ```
//!
//! - 4 KiB blocks, sparse in memory: unwritten blocks read as zeroes.
//! - A volatile write cache (`cache.rs`): a completed write is visible at
//!   once, durable after `flush` or when written with FUA. [`SimDisk::crash`]
//!   is a power loss: every unflushed op persists whole, torn (a subset of
//!   its blocks) or not at all, as the seed decides. A stack opened on
//!   [`SimDisk::session`] handles loses them at the crash, as a host
//!   losing power would (`session.rs`).
//! - Seeded faults ([`SimFaults`], all off by default): I/O errors, silent
//!   read corruption, latent write corruption, misdirected writes, latency,
//!   and [`SimDisk::fail`] for a dead disk. [`SimDisk::counters`] says what
//!   was injected.
//! - The pristine truth for checkers: [`SimDisk::truth_acknowledged`] (every
//!   completed write) and [`SimDisk::truth_durable`] (flushed only), as the
//!   disk would hold them had no corruption or misdirection happened.
//!
//! Determinism: one `SmallRng` seeded at construction, drawn only while the
//! state lock is held, at the start of each operation. The same seed and
//! the same sequence of calls give the same faults and the same crash. A
//! caller that runs operations concurrently gets a deterministic order only
//! if its own scheduling is (a current-thread runtime with paused time).
//!
//! Cost: time and memory per 4 KiB block an operation touches, which suits
//! the disk sizes of simulation tests (a 1 GiB discard is 262,144 entries).

mod blocks;
mod cache;
mod faults;
mod session;
mod state;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use cache::{CrashOutcome, CrashReport, CrashedOp, OpKind};
pub use faults::{SimCounters, SimFaults};
pub use session::SimSession;

use self::blocks::{BlockMap, Content, BLOCK_BYTES};
use self::cache::{Effect, LoggedOp, WriteCache};
use self::state::{injected, Op, Plan, State};
use crate::buf::{IoBuf, IoBufMut};
use crate::device::{
    BlockDevice, BufResult, ByteRange, Caps, DeviceInfo, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// Largest single read or write, as the file leaf.
const IO_BYTES_MAX: u32 = 32 << 20;

/// A simulated disk. Share it with `Arc` to keep a handle for `crash()` and
/// the truth while a stack above owns it.
pub struct SimDisk {
    info: DeviceInfo,
    seed: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk")
            .field("size_bytes", &self.info.size_bytes)
            .field("seed", &self.seed)
            .finish()
    }
}

impl SimDisk {
    /// A fault-free disk of `size_bytes` (a multiple of 4 KiB) reading as zeroes.
    pub fn new(size_bytes: u64, seed: u64) -> SimDisk {
        SimDisk::with_faults(size_bytes, seed, SimFaults::default())
    }

    /// A disk that injects `faults`, decided by `seed`.
    pub fn with_faults(size_bytes: u64, seed: u64, faults: SimFaults) -> SimDisk {
        assert!(
            size_bytes.is_multiple_of(BLOCK_BYTES),
            "SimDisk size {size_bytes} is not a multiple of {BLOCK_BYTES}"
        );
        faults.validate();
        SimDisk {
            info: DeviceInfo {
                size_bytes,
                block_bytes: BLOCK_BYTES as u32,
                io_bytes_max: IO_BYTES_MAX,
                caps: Caps::FLUSH
                    | Caps::FUA
                    | Caps::DISCARD
                    | Caps::WRITE_ZEROES
                    | Caps::FAST_ZERO
                    | Caps::BLOCK_STATUS,
                read_only: false,
            },
            seed,
            state: Mutex::new(State {
                rng: SmallRng::seed_from_u64(seed),
                faults,
                counters: SimCounters::default(),
                failed: false,
                generation: 0,
                cache: WriteCache::default(),
            }),
        }
    }

    /// The same disk without FUA writes: durability only through `flush`,
    /// as on a disk (or stack) that cannot force a single write out.
    pub fn without_fua(mut self) -> SimDisk {
        self.info.caps.remove(Caps::FUA);
        self
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn faults(&self) -> SimFaults {
        self.state.lock().faults
    }

    /// Changes the faults for operations that start from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        faults.validate();
        self.state.lock().faults = faults;
    }

    /// The disk dies: every operation fails until [`recover`](Self::recover).
    /// Its contents stay as they are.
    pub fn fail(&self) {
        self.state.lock().failed = true;
    }

    pub fn recover(&self) {
        self.state.lock().failed = false;
    }

    pub fn is_failed(&self) -> bool {
        self.state.lock().failed
    }

    /// Power loss and restart: unflushed ops persist whole, torn or not at
    /// all (odds from [`SimFaults`], choice from the seed); ops in flight
    /// fail. Afterwards the disk, and both truths, hold only durable state.
    pub fn crash(&self) -> CrashReport {
        let mut state = self.state.lock();
        let State {
            rng,
            faults,
            counters,
            generation,
            cache,
            ..
        } = &mut *state;
        *generation += 1;
        counters.crashes += 1;
        cache.crash(
            rng,
            faults.crash_whole_probability,
            faults.crash_torn_probability,
        )
    }

    /// Latent corruption: flips bits of one byte (chosen by the seed) of
    /// the block at `offset_bytes`, in every copy the disk holds. Reads see
    /// it, the truth does not; a later write to the block replaces it.
    /// Returns the offset of the flipped byte.
    pub fn corrupt_block(&self, offset_bytes: u64) -> u64 {
        assert!(
            offset_bytes.is_multiple_of(BLOCK_BYTES) && offset_bytes < self.info.size_bytes,
            "corrupt_block({offset_bytes}): not a block of this {}-byte disk",
            self.info.size_bytes
        );
        let mut state = self.state.lock();
        let byte = state.rng.random_range(0..BLOCK_BYTES as usize);
        let mask = state.rng.random_range(1..=u8::MAX);
        state.cache.flip(offset_bytes / BLOCK_BYTES, byte, mask);
        state.counters.latent_corruptions += 1;
        offset_bytes + byte as u64
    }

    /// What a fault-free read would return now: stored data, with any
    /// latent corruption or misdirected write in it.
    pub fn stored(&self, offset_bytes: u64, len_bytes: u64) -> Vec<u8> {
        self.view(offset_bytes, len_bytes, |cache| cache.stored())
    }

    /// The pristine contents with every completed write applied.
    pub fn truth_acknowledged(&self, offset_bytes: u64, len_bytes: u64) -> Vec<u8> {
        self.view(offset_bytes, len_bytes, |cache| cache.truth())
    }

    /// The pristine contents with only durable (flushed or FUA) writes
    /// applied: what must survive a crash.
    pub fn truth_durable(&self, offset_bytes: u64, len_bytes: u64) -> Vec<u8> {
        self.view(offset_bytes, len_bytes, |cache| cache.truth_durable())
    }

    /// Completed writes, discards and write-zeroes not yet durable.
    pub fn unflushed_ops(&self) -> usize {
        self.state.lock().cache.unflushed_ops()
    }

    pub fn counters(&self) -> SimCounters {
        self.state.lock().counters
    }

    fn view(
        &self,
        offset_bytes: u64,
        len_bytes: u64,
        map: impl Fn(&WriteCache) -> &BlockMap,
    ) -> Vec<u8> {
        assert!(
            offset_bytes
                .checked_add(len_bytes)
                .is_some_and(|end| end <= self.info.size_bytes),
            "{offset_bytes}+{len_bytes} is outside this {}-byte disk",
            self.info.size_bytes
        );
        let mut out = vec![0u8; len_bytes as usize];
        map(&self.state.lock().cache).read(offset_bytes, &mut out);
        out
    }

    /// Refuses what the contract forbids, as a real device would, without
    /// drawing from the RNG.
    fn check(&self, op: &str, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        if !offset_bytes.is_multiple_of(BLOCK_BYTES) || !len_bytes.is_multiple_of(BLOCK_BYTES) {
            return Err(BlockError::new(
                ErrorKind::Unaligned,
                format!("sim disk: {op} at {offset_bytes}+{len_bytes}"),
            ));
        }
        match offset_bytes.checked_add(len_bytes) {
            Some(end) if end <= self.info.size_bytes => Ok(()),
            _ => Err(BlockError::new(
                ErrorKind::OutOfRange,
                format!("sim disk: {op} at {offset_bytes}+{len_bytes}"),
            )),
        }
    }

    fn check_io(&self, op: &str, offset_bytes: u64, len: usize) -> BlockResult<()> {
        if len > IO_BYTES_MAX as usize {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!("sim disk: {op} of {len} bytes exceeds {IO_BYTES_MAX}"),
            ));
        }
        self.check(op, offset_bytes, len as u64)
    }

    /// Draws the plan, then sleeps its latency, then takes the lock again
    /// for the op to run under. An op of a power-on (`life`) that a crash
    /// has ended fails like one the crash interrupted.
    async fn begin(
        &self,
        life: Option<u64>,
        op: Op,
        range: ByteRange,
    ) -> (Plan, parking_lot::MutexGuard<'_, State>) {
        let mut plan = self.state.lock().plan(op, range, self.info.size_bytes);
        if let Some(generation) = life {
            plan.generation = generation;
        }
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        (plan, self.state.lock())
    }
}

/// The operations, for the disk's own handle (`life` None: it outlives
/// crashes) and for a [`SimSession`] (the generation it was opened in).
impl SimDisk {
    pub(super) async fn read_in(
        &self,
        life: Option<u64>,
        offset_bytes: u64,
        buf: IoBufMut,
    ) -> BufResult<IoBufMut> {
        let mut buf = buf;
        if let Err(e) = self.check_io("read", offset_bytes, buf.len()) {
            return (Err(e), buf);
        }
        let what = format!("read at {offset_bytes}+{}", buf.len());
        let range = ByteRange::new(offset_bytes, buf.len() as u64);
        let (plan, mut state) = self.begin(life, Op::Read, range).await;
        if let Err(e) = state.admit(&plan, &what) {
            return (Err(e), buf);
        }
        if plan.error {
            state.counters.read_errors += 1;
            return (Err(injected(&what)), buf);
        }
        state.cache.stored().read(offset_bytes, &mut buf);
        if let Some((byte, mask)) = plan.flip {
            buf[byte] ^= mask;
            state.counters.read_corruptions += 1;
        }
        (Ok(()), buf)
    }

    pub(super) async fn write_in(
        &self,
        life: Option<u64>,
        offset_bytes: u64,
        buf: IoBuf,
        flags: WriteFlags,
    ) -> BufResult<IoBuf> {
        if let Err(e) = self.check_io("write", offset_bytes, buf.len()) {
            return (Err(e), buf);
        }
        let what = format!("write at {offset_bytes}+{}", buf.len());
        let range = ByteRange::new(offset_bytes, buf.len() as u64);
        let (plan, mut state) = self.begin(life, Op::Write, range).await;
        if let Err(e) = state.admit(&plan, &what) {
            return (Err(e), buf);
        }
        if plan.error {
            state.counters.write_errors += 1;
            return (Err(injected(&what)), buf);
        }
        let first = offset_bytes / BLOCK_BYTES;
        let landing = plan.misdirect_to_block.unwrap_or(first);
        let effects = buf
            .chunks(BLOCK_BYTES as usize)
            .enumerate()
            .map(|(i, bytes)| {
                let truth = Content::data(bytes);
                let stored = match plan.flip {
                    Some((byte, mask)) if byte / BLOCK_BYTES as usize == i => {
                        truth.flipped(byte % BLOCK_BYTES as usize, mask)
                    }
                    _ => truth.clone(),
                };
                Effect {
                    truth_block: first + i as u64,
                    truth,
                    stored_block: landing + i as u64,
                    stored,
                }
            })
            .collect();
        if plan.flip.is_some() {
            state.counters.write_corruptions += 1;
        }
        if plan.misdirect_to_block.is_some() {
            state.counters.misdirected_writes += 1;
        }
        state.cache.apply(LoggedOp {
            kind: OpKind::Write,
            range,
            fua: flags.contains(WriteFlags::FUA),
            effects,
        });
        (Ok(()), buf)
    }

    pub(super) async fn flush_in(&self, life: Option<u64>) -> BlockResult<()> {
        let (plan, mut state) = self.begin(life, Op::Flush, ByteRange::new(0, 0)).await;
        state.admit(&plan, "flush")?;
        if plan.error {
            state.counters.flush_errors += 1;
            return Err(injected("flush"));
        }
        state.cache.flush();
        Ok(())
    }

    pub(super) async fn discard_in(&self, life: Option<u64>, range: ByteRange) -> BlockResult<()> {
        self.change(life, OpKind::Discard, range, Content::Hole)
            .await
    }

    pub(super) async fn write_zeroes_in(
        &self,
        life: Option<u64>,
        range: ByteRange,
        flags: ZeroFlags,
    ) -> BlockResult<()> {
        // Zeroing is always fast here, so `FAST` never fails.
        let content = if flags.contains(ZeroFlags::NO_HOLE) {
            Content::Zero
        } else {
            Content::Hole
        };
        self.change(life, OpKind::WriteZeroes, range, content).await
    }

    pub(super) async fn block_status_in(
        &self,
        life: Option<u64>,
        range: ByteRange,
    ) -> BlockResult<Vec<StatusExtent>> {
        self.check("block_status", range.offset_bytes, range.len_bytes)?;
        let what = format!("block_status at {}+{}", range.offset_bytes, range.len_bytes);
        let (plan, mut state) = self.begin(life, Op::Status, range).await;
        state.admit(&plan, &what)?;
        Ok(state.cache.stored().status(
            range.offset_bytes / BLOCK_BYTES,
            range.len_bytes / BLOCK_BYTES,
        ))
    }
}

impl SimDisk {
    /// Discard and write-zeroes: every block of `range` becomes `content`,
    /// through the cache like a write.
    async fn change(
        &self,
        life: Option<u64>,
        kind: OpKind,
        range: ByteRange,
        content: Content,
    ) -> BlockResult<()> {
        let name = match kind {
            OpKind::Discard => "discard",
            _ => "write_zeroes",
        };
        self.check(name, range.offset_bytes, range.len_bytes)?;
        let what = format!("{name} at {}+{}", range.offset_bytes, range.len_bytes);
        let (plan, mut state) = self.begin(life, Op::Change, range).await;
        state.admit(&plan, &what)?;
        if plan.error {
            state.counters.write_errors += 1;
            return Err(injected(&what));
        }
        let first = range.offset_bytes / BLOCK_BYTES;
        let effects = (first..first + range.len_bytes / BLOCK_BYTES)
            .map(|block| Effect {
                truth_block: block,
                truth: content.clone(),
                stored_block: block,
                stored: content.clone(),
            })
            .collect();
        state.cache.apply(LoggedOp {
            kind,
            range,
            fua: false,
            effects,
        });
        Ok(())
    }
}

#[async_trait]
impl BlockDevice for SimDisk {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        self.read_in(None, offset_bytes, buf).await
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        self.write_in(None, offset_bytes, buf, flags).await
    }

    async fn flush(&self) -> BlockResult<()> {
        self.flush_in(None).await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        self.discard_in(None, range).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        self.write_zeroes_in(None, range, flags).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        self.block_status_in(None, range).await
    }
}
