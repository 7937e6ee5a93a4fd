//! How a placed extent's bytes lie on its legs: the interface between the
//! volume and the redundancy implementations.
//!
//! ```text
//!  ThinVolume ── Redundancy::read/write(legs, offset in extent) ──▶ legs
//!                (Linear here; raid0/1/5/10 and ec in the `raid` crate)
//! ```
//!
//! The volume decides *which* extent and *which* bytes (thin map, chunk
//! bits, checksums); a `Redundancy` decides how those bytes are spread over
//! the extent's legs, how they are rebuilt when a leg is lost, and how a
//! block that fails its checksum is recovered from the other copies.
//!
//! Offsets given to a `Redundancy` are bytes within the extent's user data
//! (`0..extent_bytes()`), multiples of 4 KiB.

use std::sync::Arc;

use async_trait::async_trait;
use metadata::{Layout, LvRecord, PvId};

use super::pvs::PvSet;
use crate::buf::{IoBuf, IoBufMut};
use crate::device::{BlockDevice, BufResult, ByteRange, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};

/// One leg of a placed extent: a PE, and its device when the PV is online.
#[derive(Debug, Clone)]
pub struct Leg {
    pub pv: PvId,
    /// The PE's number on its PV.
    pub pe: u64,
    /// `None` when the PV has failed or is missing.
    pub device: Option<Arc<dyn BlockDevice>>,
    /// Where the PE starts on the device.
    pub base_bytes: u64,
}

/// The legs of one placed extent, resolved against the open PVs.
#[derive(Debug, Clone)]
pub struct Legs {
    pub legs: Vec<Leg>,
    pvs: PvSet,
}

impl Legs {
    pub fn new(legs: Vec<Leg>, pvs: PvSet) -> Legs {
        Legs { legs, pvs }
    }

    /// Leg `i`'s device, or an I/O error if its PV is not usable.
    pub fn device(&self, i: usize) -> BlockResult<(&Arc<dyn BlockDevice>, u64)> {
        let leg = &self.legs[i];
        match &leg.device {
            Some(device) if self.is_online(i) => Ok((device, leg.base_bytes)),
            _ => Err(BlockError::new(
                ErrorKind::Io,
                format!("PV id {} has failed", leg.pv),
            )),
        }
    }

    pub fn len(&self) -> usize {
        self.legs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Whether leg `i` can be used now: its PV is open and has not failed
    /// (also during this operation).
    pub fn is_online(&self, i: usize) -> bool {
        self.legs[i].device.is_some() && !self.pvs.is_failed(self.legs[i].pv)
    }

    /// Marks leg `i`'s PV failed (an I/O error from it), so every extent
    /// stops using it and the failure is recorded.
    pub fn fail(&self, i: usize, err: &BlockError) {
        self.pvs.fail(self.legs[i].pv, &err.to_string());
    }
}

/// Verifies blocks against the checksums the volume keeps.
pub trait BlockCheck: Send + Sync {
    /// Whether the block at `offset_bytes` has a checksum (it holds written
    /// data). Blocks of chunks never written have none.
    fn covers(&self, offset_bytes: u64) -> bool;

    /// Whether `block` (4 KiB, at `offset_bytes` in the extent) is what
    /// was last written there; always true where [`covers`] is false.
    ///
    /// [`covers`]: BlockCheck::covers
    fn matches(&self, offset_bytes: u64, block: &[u8]) -> bool;

    /// The checksum of what was last written to the block at
    /// `offset_bytes`; `None` where any bytes will do (not covered, or
    /// known bad).
    fn expected(&self, offset_bytes: u64) -> Option<u32>;

    /// The checksum of the block the write in progress puts at
    /// `offset_bytes`, where the caller computed it already: a layout that
    /// needs the new blocks' checksums takes them from here rather than
    /// hashing the bytes again. `None` elsewhere.
    fn written(&self, _offset_bytes: u64) -> Option<u32> {
        None
    }

    /// Whether the block at `offset_bytes` is known bad: a resync must not
    /// adopt it, whatever the row says.
    fn known_bad(&self, offset_bytes: u64) -> bool;

    /// The extent checked: (LV id, LE). `None` outside a volume.
    fn extent(&self) -> Option<(u64, u64)> {
        None
    }

    /// Keeps `kept` (what a layout logged ahead of this write, such as the
    /// pins of its records) until the checksums of the write are committed,
    /// and drops it then. Where nothing commits checksums, drops it now.
    fn keep_until_committed(&self, kept: Kept) {
        drop(kept);
    }

    /// Records that no copy of the block at `offset_bytes` matched its
    /// checksum when a write had to encode redundancy from it as it stood,
    /// so the redundancy now agrees with bad bytes. Durable with the next
    /// commit; cleared when the block is written. A no-op where
    /// [`covers`](BlockCheck::covers) is false.
    fn mark_known_bad(&self, offset_bytes: u64);
}

/// Something a layout needs kept alive until a commit (see
/// [`BlockCheck::keep_until_committed`]).
pub type Kept = Box<dyn std::any::Any + Send + Sync>;

/// What a verified read had to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Bad copies found (and rewritten when allowed).
    pub mismatches: u64,
}

/// What a scrub does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubMode {
    /// Count bad copies only.
    Check,
    /// Rewrite copies that fail their checksum from one that passes.
    Repair,
    /// Repair, and where no copy passes and the copies disagree (writes in
    /// flight at an unclean shutdown, none of them committed), make every
    /// copy hold one of them and adopt it. Only after an unclean shutdown:
    /// any other time such a block is damage, not an unfinished write.
    Resync,
}

/// What a scrub of a range found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub blocks_checked: u64,
    /// Copies or parity that disagreed with the checksums or each other.
    pub mismatches: u64,
    pub repaired: u64,
    /// Blocks no copy could vouch for.
    pub unrecoverable: u64,
    /// Blocks whose copies agree with each other, or settled on one of
    /// them, but not with the checksum: written before a crash (or a failed
    /// write) without their checksum being committed (resync only): each
    /// block's extent offset and the content its copies now hold, which the
    /// volume adopts. The content travels with the report: reading it back
    /// would take one copy's word for it, and a bad read would adopt bytes
    /// no copy holds.
    pub adopted: Vec<(u64, Vec<u8>)>,
}

impl ScrubReport {
    pub fn add(&mut self, other: ScrubReport) {
        self.blocks_checked += other.blocks_checked;
        self.mismatches += other.mismatches;
        self.repaired += other.repaired;
        self.unrecoverable += other.unrecoverable;
        self.adopted.extend(other.adopted);
    }
}

/// One layout's I/O over the legs of a placed extent.
#[async_trait]
pub trait Redundancy: Send + Sync + std::fmt::Debug {
    fn layout(&self) -> Layout;

    /// User bytes one placed extent holds.
    fn extent_bytes(&self) -> u64;

    /// Reads user bytes at `offset_bytes`. With `check`, every block is
    /// verified and a bad copy is recovered from the others (repairing it
    /// when `repair` is set, which needs the extent to itself).
    async fn read(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        buf: IoBufMut,
        check: Option<&dyn BlockCheck>,
        repair: bool,
    ) -> (BlockResult<ReadReport>, IoBufMut);

    /// Writes user bytes at `offset_bytes`. `check` vouches for what the
    /// extent held before: a layout that reads old bytes to update
    /// redundancy (parity) verifies them, so damage is never folded into
    /// the new parity.
    async fn write(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        data: IoBuf,
        flags: WriteFlags,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()>;

    /// Writes real zeroes over the range on every leg (`check` as in
    /// [`write`](Redundancy::write)).
    async fn write_zeroes(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        len_bytes: u64,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()>;

    /// The range is no longer needed: give its space back on every leg.
    async fn release(&self, legs: &Legs, offset_bytes: u64, len_bytes: u64) -> BlockResult<()>;

    /// What leg `leg` should hold at PE offset `pe_offset_bytes`: read from
    /// the leg itself while it is online and sound (pvmove), rebuilt from
    /// the other legs otherwise (repair). Data is verified with `check`, so
    /// a corrupt block is never copied onto a new leg.
    async fn rebuild_leg(
        &self,
        legs: &Legs,
        leg: usize,
        pe_offset_bytes: u64,
        buf: IoBufMut,
        check: Option<&dyn BlockCheck>,
    ) -> BufResult<IoBufMut>;

    /// Verifies every copy of the range (and parity), repairing bad ones
    /// when `repair` is set. Needs the extent to itself.
    async fn scrub(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        len_bytes: u64,
        check: &dyn BlockCheck,
        mode: ScrubMode,
    ) -> BlockResult<ScrubReport>;

    /// Retires everything that could still write to the legs after a
    /// restart (a stripe journal). Called by every commit that follows
    /// writes, and before placements are freed or replaced.
    async fn barrier(&self) -> BlockResult<()>;

    /// Readies a newly allocated placed extent before its first write.
    /// Parity layouts zero every leg, because they keep parity consistent
    /// by updating it, and a PE holds what its previous owner left.
    async fn initialize(&self, legs: &Legs) -> BlockResult<()>;
}

/// Builds the `Redundancy` for an LV's layout.
pub trait Layouts: Send + Sync + 'static {
    /// The I/O of LV `lv`'s layout (and its options) over PEs of `pe_bytes`.
    fn build(&self, lv: &LvRecord, pe_bytes: u64) -> BlockResult<Arc<dyn Redundancy>>;
}

/// Only the layouts this crate implements (linear).
#[derive(Debug, Default)]
pub struct LinearOnly;

impl Layouts for LinearOnly {
    fn build(&self, lv: &LvRecord, pe_bytes: u64) -> BlockResult<Arc<dyn Redundancy>> {
        match lv.layout {
            Layout::Linear => Ok(Arc::new(Linear::new(pe_bytes))),
            other => Err(BlockError::new(
                ErrorKind::Unsupported,
                format!("layout {} is not available here", other.describe()),
            )),
        }
    }
}

/// One leg holding the extent's bytes as they are.
#[derive(Debug)]
pub struct Linear {
    pe_bytes: u64,
}

impl Linear {
    pub fn new(pe_bytes: u64) -> Linear {
        Linear { pe_bytes }
    }
}

#[async_trait]
impl Redundancy for Linear {
    fn layout(&self) -> Layout {
        Layout::Linear
    }

    fn extent_bytes(&self) -> u64 {
        self.pe_bytes
    }

    async fn read(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        buf: IoBufMut,
        _check: Option<&dyn BlockCheck>,
        _repair: bool,
    ) -> (BlockResult<ReadReport>, IoBufMut) {
        let (device, base) = match legs.device(0) {
            Ok(leg) => leg,
            Err(e) => return (Err(e), buf),
        };
        let (result, buf) = device.read_at(base + offset_bytes, buf).await;
        (result.map(|()| ReadReport::default()), buf)
    }

    async fn write(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        data: IoBuf,
        flags: WriteFlags,
        _check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        let (device, base) = legs.device(0)?;
        device.write_at(base + offset_bytes, data, flags).await.0
    }

    async fn write_zeroes(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        len_bytes: u64,
        _check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        let (device, base) = legs.device(0)?;
        device
            .write_zeroes(
                ByteRange::new(base + offset_bytes, len_bytes),
                ZeroFlags::NO_HOLE,
            )
            .await
    }

    async fn release(&self, legs: &Legs, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        let (device, base) = legs.device(0)?;
        device
            .discard(ByteRange::new(base + offset_bytes, len_bytes))
            .await
    }

    async fn rebuild_leg(
        &self,
        legs: &Legs,
        _leg: usize,
        pe_offset_bytes: u64,
        buf: IoBufMut,
        _check: Option<&dyn BlockCheck>,
    ) -> BufResult<IoBufMut> {
        // No redundancy: the only source is the leg itself (pvmove).
        match legs.device(0) {
            Ok((device, base)) => device.read_at(base + pe_offset_bytes, buf).await,
            Err(e) => (Err(e), buf),
        }
    }

    async fn scrub(
        &self,
        _legs: &Legs,
        _offset_bytes: u64,
        _len_bytes: u64,
        _check: &dyn BlockCheck,
        _mode: ScrubMode,
    ) -> BlockResult<ScrubReport> {
        Err(BlockError::new(
            ErrorKind::Unsupported,
            "a linear LV has no redundancy to scrub",
        ))
    }

    async fn barrier(&self) -> BlockResult<()> {
        Ok(())
    }

    async fn initialize(&self, _legs: &Legs) -> BlockResult<()> {
        Ok(())
    }
}
