//! Erasure codecs: compute a row's parity shards from its data shards,
//! rebuild lost shards from any K survivors, and patch parity after a
//! partial write.
//!
//! ```text
//!  data shards d0..dK-1 ──encode──> parity p0..pM-1
//!  any K of (d, p)  ──reconstruct──> the others
//!  d_i changes by Δ = old ^ new ──update_parity──> p_j ^= c_ji · Δ
//! ```
//!
//! - [`Xor`]: M = 1, parity is the XOR of the data (raid5).
//! - [`ReedSolomon`]: any K + M up to 256, systematic Reed-Solomon over
//!   GF(2^8) (erasure-coded LVs), on `reed-solomon-erasure`; the choice is
//!   argued with figures in `docs/ARCHITECTURE.md` ("Redundancy: codecs").
//!
//! The parity format is part of the on-disk format: a codec never changes
//! what it writes for given data (known-answer tests pin it).
//!
//! Both codecs work **byte by byte**: parity byte `i` depends only on byte
//! `i` of each data shard. So a caller may encode, update or reconstruct
//! any sub-range of a row's units on its own (a 4 KiB write into a 64 KiB
//! unit touches 4 KiB of parity), and shards may have any length, the same
//! for all shards of one call.

mod reed_solomon;
mod xor;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use thiserror::Error;

use crate::layout::Layout;
pub use reed_solomon::ReedSolomon;
pub use xor::Xor;

/// A linear, systematic erasure code over shards of equal length.
pub trait ErasureCodec: Send + Sync + std::fmt::Debug {
    /// K.
    fn data_shards(&self) -> usize;

    /// M: how many lost shards of a row the code recovers.
    fn parity_shards(&self) -> usize;

    /// Computes every parity shard from the data shards:
    /// `parity[j] = f_j(data)`. K data and M parity slices of one length.
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError>;

    /// Fills every shard whose `present` flag is false from the others.
    /// `shards` holds the K data shards then the M parity shards, all of one
    /// length; at least K must be present. On error nothing is written.
    fn reconstruct(&self, shards: &mut [&mut [u8]], present: &[bool]) -> Result<(), CodecError>;

    /// As [`reconstruct`](Self::reconstruct), but fills only the absent
    /// data shards (a degraded read has no use for lost parity).
    fn reconstruct_data(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
    ) -> Result<(), CodecError>;

    /// Read-modify-write: data shard `index` changes by `delta` (old XOR
    /// new); updates every parity shard in place, so parity equals a fresh
    /// encode of the new data.
    fn update_parity(
        &self,
        index: usize,
        delta: &[u8],
        parity: &mut [&mut [u8]],
    ) -> Result<(), CodecError>;
}

/// The codec a layout writes its parity with; `None` for layouts without
/// parity. The layout fixes it, so parity written once stays readable.
pub fn codec_for(layout: &Layout) -> Result<Option<Arc<dyn ErasureCodec>>, CodecError> {
    Ok(match *layout {
        Layout::Raid5 { stripes, .. } => Some(Arc::new(Xor::new(stripes)?)),
        Layout::Erasure { data, parity, .. } => Some(Arc::new(ReedSolomon::new(data, parity)?)),
        Layout::Linear | Layout::Raid0 { .. } | Layout::Raid1 { .. } | Layout::Raid10 { .. } => {
            None
        }
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("cannot build a {data}+{parity} code: {reason}")]
    Shape {
        data: usize,
        parity: usize,
        reason: &'static str,
    },
    #[error("the Reed-Solomon kernels need an x86-64 CPU with AVX2, BMI2 and FMA (x86-64-v3)")]
    CpuUnsupported,
    #[error("expected {expected} {what}, got {got}")]
    ShardCount {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("shard of {got} bytes among shards of {expected} bytes")]
    ShardLength { expected: usize, got: usize },
    #[error("data shard {index} out of range for {data_shards} data shards")]
    ShardIndex { index: usize, data_shards: usize },
    #[error("{missing} shards missing, more than the {parity} the code recovers")]
    TooManyMissing { missing: usize, parity: usize },
}

fn count(what: &'static str, expected: usize, got: usize) -> Result<(), CodecError> {
    if expected == got {
        Ok(())
    } else {
        Err(CodecError::ShardCount {
            what,
            expected,
            got,
        })
    }
}

fn same_length(mut lengths: impl Iterator<Item = usize>) -> Result<usize, CodecError> {
    let Some(expected) = lengths.next() else {
        return Ok(0);
    };
    match lengths.find(|&got| got != expected) {
        None => Ok(expected),
        Some(got) => Err(CodecError::ShardLength { expected, got }),
    }
}

/// Checks an encode call; returns the shard length.
fn check_encode(
    codec: &dyn ErasureCodec,
    data: &[&[u8]],
    parity: &[&mut [u8]],
) -> Result<usize, CodecError> {
    count("data shards", codec.data_shards(), data.len())?;
    count("parity shards", codec.parity_shards(), parity.len())?;
    same_length(
        data.iter()
            .map(|s| s.len())
            .chain(parity.iter().map(|s| s.len())),
    )
}

/// Checks a reconstruct call; returns the number of absent shards.
fn check_reconstruct(
    codec: &dyn ErasureCodec,
    shards: &[&mut [u8]],
    present: &[bool],
) -> Result<usize, CodecError> {
    let total = codec.data_shards() + codec.parity_shards();
    count("shards", total, shards.len())?;
    count("present flags", total, present.len())?;
    same_length(shards.iter().map(|s| s.len()))?;
    let missing = present.iter().filter(|&&p| !p).count();
    if missing > codec.parity_shards() {
        return Err(CodecError::TooManyMissing {
            missing,
            parity: codec.parity_shards(),
        });
    }
    Ok(missing)
}

/// Checks an update_parity call.
fn check_update(
    codec: &dyn ErasureCodec,
    index: usize,
    delta: &[u8],
    parity: &[&mut [u8]],
) -> Result<(), CodecError> {
    if index >= codec.data_shards() {
        return Err(CodecError::ShardIndex {
            index,
            data_shards: codec.data_shards(),
        });
    }
    count("parity shards", codec.parity_shards(), parity.len())?;
    same_length(std::iter::once(delta.len()).chain(parity.iter().map(|s| s.len())))?;
    Ok(())
}

/// `dst ^= src`, written so the compiler vectorizes it.
fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "xor of unequal shards");
    const LANE: usize = 64;
    let mut dst_chunks = dst.chunks_exact_mut(LANE);
    let mut src_chunks = src.chunks_exact(LANE);
    for (d, s) in (&mut dst_chunks).zip(&mut src_chunks) {
        for i in 0..LANE {
            d[i] ^= s[i];
        }
    }
    for (d, s) in dst_chunks
        .into_remainder()
        .iter_mut()
        .zip(src_chunks.remainder())
    {
        *d ^= s;
    }
}
