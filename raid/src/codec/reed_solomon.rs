//! Reed-Solomon parity for erasure-coded LVs: a systematic code over
//! GF(2^8) with K data and M parity shards (K + M <= 256), recovering any
//! M lost shards of a row.
//!
//! Built on `reed-solomon-erasure` (a port of Backblaze's and Klaus Post's
//! coders: a Vandermonde matrix made systematic, polynomial 0x11D) with its
//! `simd-accel` kernels. Those kernels are C compiled with
//! `-march=haswell` and no run-time dispatch, so on x86-64 the constructor
//! refuses a CPU without AVX2, BMI2 and FMA instead of letting the first
//! encode die on an illegal instruction.
//!
//! Chosen over `reed-solomon-simd` (Leopard-RS, GF(2^16)) by measurement
//! on the shapes we use (2+1, 4+2, 8+3; 4 and 64 KiB shards; one core of
//! the project's 2-core VM; full tables in `docs/ARCHITECTURE.md`):
//!
//! | 4+2 | this crate | reed-solomon-simd |
//! | --- | --- | --- |
//! | encode, 64 KiB shards | 10.3 GiB/s | 8.3 GiB/s |
//! | reconstruct 2 lost, 4 KiB shards | 1.2 µs | 261 µs |
//! | reconstruct 2 lost, 64 KiB shards | 23 µs | 403 µs |
//! | update one 64 KiB shard | 6.1 µs (coefficients) | 27 µs (full encode) |
//!
//! Leopard's decoder has a fixed cost of about 0.23 ms (it evaluates over
//! all of GF(2^16)), fatal for degraded 4 KiB reads, and its FFT gives no
//! cheap delta update; encode speed is a wash.
//!
//! Parity updates use the code's coefficients directly: shard `i` changing
//! by Δ changes parity `j` by `c_ji · Δ`, one multiply-add pass per parity
//! shard over the changed bytes only. The coefficients are read from the
//! crate itself (encoding unit vectors), so they cannot drift from its
//! encoder.

use reed_solomon_erasure::galois_8;

use super::{check_encode, check_reconstruct, check_update, CodecError, ErasureCodec};

pub struct ReedSolomon {
    inner: galois_8::ReedSolomon,
    /// `coefficients[j][i]`: how data shard `i` enters parity shard `j`.
    pub(super) coefficients: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ReedSolomon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReedSolomon")
            .field("data_shards", &self.inner.data_shard_count())
            .field("parity_shards", &self.inner.parity_shard_count())
            .finish()
    }
}

/// Whether this CPU runs the `-march=haswell` kernels.
fn kernels_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("bmi2")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

impl ReedSolomon {
    pub fn new(data_shards: usize, parity_shards: usize) -> Result<ReedSolomon, CodecError> {
        let shape = |reason| CodecError::Shape {
            data: data_shards,
            parity: parity_shards,
            reason,
        };
        if data_shards == 0 || parity_shards == 0 {
            return Err(shape("needs at least one data and one parity shard"));
        }
        if data_shards + parity_shards > 256 {
            return Err(shape("GF(2^8) allows at most 256 shards"));
        }
        if !kernels_supported() {
            return Err(CodecError::CpuUnsupported);
        }
        let inner = galois_8::ReedSolomon::new(data_shards, parity_shards)
            .map_err(|_| shape("refused by the Reed-Solomon library"))?;
        // Column i of the parity rows is the parity of unit vector e_i.
        let columns: Vec<Vec<u8>> = (0..data_shards)
            .map(|i| {
                let unit: Vec<[u8; 1]> = (0..data_shards).map(|d| [u8::from(d == i)]).collect();
                let mut column = vec![[0u8; 1]; parity_shards];
                inner
                    .encode_sep(&unit, &mut column)
                    .unwrap_or_else(|e| panic!("encoding a unit vector failed: {e:?}"));
                column.iter().map(|c| c[0]).collect()
            })
            .collect();
        let coefficients: Vec<Vec<u8>> = (0..parity_shards)
            .map(|j| columns.iter().map(|column| column[j]).collect())
            .collect();
        // An MDS code has no zero coefficient in its parity rows.
        assert!(
            coefficients.iter().flatten().all(|&c| c != 0),
            "zero coefficient in a {data_shards}+{parity_shards} code"
        );
        Ok(ReedSolomon {
            inner,
            coefficients,
        })
    }

    fn fill_missing(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
        data_only: bool,
    ) -> Result<(), CodecError> {
        if check_reconstruct(self, shards, present)? == 0 || shards[0].is_empty() {
            return Ok(());
        }
        let mut slots: Vec<(&mut [u8], bool)> = shards
            .iter_mut()
            .map(|s| &mut **s)
            .zip(present.iter().copied())
            .collect();
        let done = if data_only {
            self.inner.reconstruct_data(&mut slots)
        } else {
            self.inner.reconstruct(&mut slots)
        };
        done.unwrap_or_else(|e| panic!("reconstruct refused checked shards: {e:?}"));
        Ok(())
    }
}

impl ErasureCodec for ReedSolomon {
    fn data_shards(&self) -> usize {
        self.inner.data_shard_count()
    }

    fn parity_shards(&self) -> usize {
        self.inner.parity_shard_count()
    }

    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        if check_encode(self, data, parity)? == 0 {
            return Ok(());
        }
        self.inner
            .encode_sep(data, parity)
            .unwrap_or_else(|e| panic!("encode refused checked shards: {e:?}"));
        Ok(())
    }

    fn reconstruct(&self, shards: &mut [&mut [u8]], present: &[bool]) -> Result<(), CodecError> {
        self.fill_missing(shards, present, false)
    }

    fn reconstruct_data(
        &self,
        shards: &mut [&mut [u8]],
        present: &[bool],
    ) -> Result<(), CodecError> {
        self.fill_missing(shards, present, true)
    }

    fn update_parity(
        &self,
        index: usize,
        delta: &[u8],
        parity: &mut [&mut [u8]],
    ) -> Result<(), CodecError> {
        check_update(self, index, delta, parity)?;
        if delta.is_empty() {
            return Ok(());
        }
        for (row, shard) in self.coefficients.iter().zip(parity.iter_mut()) {
            galois_8::mul_slice_xor(row[index], delta, shard);
        }
        Ok(())
    }
}
