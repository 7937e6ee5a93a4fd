//! `Faulty<D>`: fault injection at run time, in front of a live PV.
//!
//! ```text
//!  Checked ── Faulty ── FileDevice
//!               │ mode: none | fail | eio:RATE | slow:MS | corrupt:RATE
//! ```
//!
//! `bv pvchange --fault MODE PV` sets the mode of a PV's wrapper while the
//! server runs, so failure handling (degraded RAID reads, error replies,
//! timeouts) is exercised on a real stack, not only in simulation.
//!
//! - Each operation decides its fault once, at its start, under a short
//!   lock that also guards the RNG; the mode can change at any time, and an
//!   operation in flight keeps the decision it made. With mode `none` the
//!   lock is skipped (one atomic load).
//! - Injected errors are `ErrorKind::Io` with "injected fault: MODE" in the
//!   context; a failed operation never reaches the child, so nothing is
//!   written.
//! - `corrupt` flips bits in the buffer returned to the caller only, with a
//!   non-zero mask, so the data always differs; the child's data is intact.
//! - `block_status` fails under `fail` and is delayed under `slow`; `eio`
//!   and `corrupt` leave it alone (it reads allocation metadata, not data).

mod mode;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use mode::{FaultMode, FaultModeError, SLOW_DELAY_MS_MAX};

use crate::buf::{IoBuf, IoBufMut};
use crate::device::{
    BlockDevice, BufResult, ByteRange, DeviceInfo, StatusExtent, WriteFlags, ZeroFlags,
};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// How many faults a [`Faulty`] wrapper injected since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Operations failed with an injected error.
    pub errors: u64,
    /// Reads whose returned data was corrupted.
    pub corruptions: u64,
    /// Operations delayed.
    pub delays: u64,
}

/// A device wrapper that injects the faults of its current [`FaultMode`].
pub struct Faulty<D> {
    inner: D,
    /// `mode != None`: lets the common case skip the lock.
    active: AtomicBool,
    state: Mutex<ModeState>,
    errors: AtomicU64,
    corruptions: AtomicU64,
    delays: AtomicU64,
}

struct ModeState {
    mode: FaultMode,
    rng: SmallRng,
}

/// Which operations a mode applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    /// Write, flush, discard, write-zeroes.
    Change,
    Status,
}

/// What one operation suffers, decided at its start.
#[derive(Default)]
struct Decision {
    /// The mode that decided, for the error's context.
    mode: FaultMode,
    fail: bool,
    delay: Option<Duration>,
    corrupt: bool,
}

impl<D: BlockDevice> Faulty<D> {
    /// Wraps `inner` with mode `none`, seeded from the thread's RNG.
    pub fn new(inner: D) -> Self {
        Faulty::with_seed(inner, rand::rng().random())
    }

    /// Wraps `inner` with mode `none`; `seed` makes the faults repeatable
    /// for one sequence of calls.
    pub fn with_seed(inner: D, seed: u64) -> Self {
        Faulty {
            inner,
            active: AtomicBool::new(false),
            state: Mutex::new(ModeState {
                mode: FaultMode::None,
                rng: SmallRng::seed_from_u64(seed),
            }),
            errors: AtomicU64::new(0),
            corruptions: AtomicU64::new(0),
            delays: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Switches the mode for operations that start from now on. A mode no
    /// wrapper can follow (a rate outside (0, 1], a delay over a minute) is
    /// refused and the old mode stays.
    pub fn set_mode(&self, mode: FaultMode) -> Result<(), FaultModeError> {
        let mode = mode.validate()?;
        let mut state = self.state.lock();
        state.mode = mode;
        self.active
            .store(mode != FaultMode::None, Ordering::Release);
        tracing::info!(device = ?self.inner, %mode, "fault mode set");
        Ok(())
    }

    pub fn mode(&self) -> FaultMode {
        self.state.lock().mode
    }

    pub fn injected(&self) -> FaultCounters {
        FaultCounters {
            errors: self.errors.load(Ordering::Relaxed),
            corruptions: self.corruptions.load(Ordering::Relaxed),
            delays: self.delays.load(Ordering::Relaxed),
        }
    }

    fn decide(&self, op: Op) -> Decision {
        if !self.active.load(Ordering::Acquire) {
            return Decision::default();
        }
        let mut state = self.state.lock();
        let mode = state.mode;
        // `random()` is in [0, 1), so a rate of 1 always hits.
        let mut hit = |rate: f64| state.rng.random::<f64>() < rate;
        let mut decision = Decision {
            mode,
            ..Decision::default()
        };
        match mode {
            FaultMode::None => {}
            FaultMode::Fail => decision.fail = true,
            FaultMode::Eio { rate } => decision.fail = op != Op::Status && hit(rate),
            FaultMode::Slow { delay_ms } => {
                decision.delay = Some(Duration::from_millis(delay_ms));
            }
            FaultMode::Corrupt { rate } => decision.corrupt = op == Op::Read && hit(rate),
        }
        decision
    }

    /// Sleeps the decided delay; the injected error, if one was decided.
    async fn suffer(&self, decision: &Decision, what: impl FnOnce() -> String) -> BlockResult<()> {
        if let Some(delay) = decision.delay {
            self.delays.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
        if decision.fail {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(BlockError::new(
                ErrorKind::Io,
                format!("{}: injected fault: {}", what(), decision.mode),
            ));
        }
        Ok(())
    }

    /// Flips bits of one byte of `buf` (a non-zero mask, so it changes).
    fn corrupt(&self, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let (byte, mask) = {
            let mut state = self.state.lock();
            (
                state.rng.random_range(0..buf.len()),
                state.rng.random_range(1..=u8::MAX),
            )
        };
        buf[byte] ^= mask;
        self.corruptions.fetch_add(1, Ordering::Relaxed);
    }
}

impl<D: BlockDevice> std::fmt::Debug for Faulty<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty")
            .field("inner", &self.inner)
            .field("mode", &self.mode())
            .finish()
    }
}

#[async_trait]
impl<D: BlockDevice> BlockDevice for Faulty<D> {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    async fn read_at(&self, offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        let decision = self.decide(Op::Read);
        let len = buf.len();
        let what = || format!("read at {offset_bytes}+{len}");
        if let Err(e) = self.suffer(&decision, what).await {
            return (Err(e), buf);
        }
        let (result, mut buf) = self.inner.read_at(offset_bytes, buf).await;
        if decision.corrupt && result.is_ok() {
            self.corrupt(&mut buf);
        }
        (result, buf)
    }

    async fn write_at(&self, offset_bytes: u64, buf: IoBuf, flags: WriteFlags) -> BufResult<IoBuf> {
        let decision = self.decide(Op::Change);
        let len = buf.len();
        let what = || format!("write at {offset_bytes}+{len}");
        if let Err(e) = self.suffer(&decision, what).await {
            return (Err(e), buf);
        }
        self.inner.write_at(offset_bytes, buf, flags).await
    }

    async fn flush(&self) -> BlockResult<()> {
        let decision = self.decide(Op::Change);
        self.suffer(&decision, || "flush".to_string()).await?;
        self.inner.flush().await
    }

    async fn discard(&self, range: ByteRange) -> BlockResult<()> {
        let decision = self.decide(Op::Change);
        let what = || format!("discard at {}+{}", range.offset_bytes, range.len_bytes);
        self.suffer(&decision, what).await?;
        self.inner.discard(range).await
    }

    async fn write_zeroes(&self, range: ByteRange, flags: ZeroFlags) -> BlockResult<()> {
        let decision = self.decide(Op::Change);
        let what = || format!("write_zeroes at {}+{}", range.offset_bytes, range.len_bytes);
        self.suffer(&decision, what).await?;
        self.inner.write_zeroes(range, flags).await
    }

    async fn block_status(&self, range: ByteRange) -> BlockResult<Vec<StatusExtent>> {
        let decision = self.decide(Op::Status);
        let what = || format!("block_status at {}+{}", range.offset_bytes, range.len_bytes);
        self.suffer(&decision, what).await?;
        self.inner.block_status(range).await
    }
}
