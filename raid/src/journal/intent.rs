//! Intent entries: full-row writes logged as checksums, not bytes.
//!
//! A full-row write computes its parity from the new data alone, so only
//! the tearing of its in-place writes needs guarding against: a crash
//! that lands some shards and not others leaves a row whose parity matches
//! neither version. Journaling the row's bytes (as a partial-row write
//! must, to replay them) writes them twice. An intent entry instead holds
//! a checksum table, as md's PPL logs no partial parity for a full-stripe
//! write and recomputes its parity from the data at recovery:
//!
//! ```text
//!  payload:  codec (u8: 0 xor, 1 reed-solomon), K (u8), M (u8), 0 (u8), blocks per shard (u32)
//!            per shard, K data then M parity: the entry's write to it (u8; 255: none, its leg was lost)
//!            per shard, per block: CRC-32C of the new bytes (u32)
//!            per data shard, per block: what the block held before (u64: CRC-32C | 1 << 32; 0: any bytes)
//!            zeroes to a whole block
//! ```
//!
//! At recovery (`settle.rs`), each 4 KiB column of the row is made consistent
//! with every data block holding its old or its new bytes, both of which
//! are right for a write never acknowledged as durable:
//! - every data block present and old or new: parity is encoded from
//!   them and written where it differs;
//! - otherwise (a leg lost, or a block holding neither version: rot) those
//!   blocks are rebuilt from the parity, trying each choice of parity
//!   shards, and the rebuild is kept only if every rebuilt block is its
//!   old or new version; the column is then written back consistent;
//! - where no choice verifies, the column is left as it is. Its blocks
//!   fail their checksums and no resync adopts them: a torn full-row write
//!   plus a lost leg can leave the lost leg's blocks of that row
//!   unreadable, never wrong. They were all being overwritten (PPL, too,
//!   protects the data outside a write, not inside it).
//!
//! What a block held before is the checksum the volume had for it when the
//! write started; "any" where none applies (a chunk never written, whose
//! bytes nobody reads, or a block known bad). A block that is not its new
//! version counts as old under "any" only where the row cannot rebuild it
//! as its new version: otherwise rot in it would go into parity, and a
//! resync would take the row's agreement with it for the write's bytes.
//!
//! Ordering rule: an intent cannot bring back bytes, so a later entry of
//! the same row must never be replayed over a row torn by an intent's
//! in-place writes (its parity would assume bytes that were lost). The
//! layout therefore retires a row's intent (flushing its in-place writes)
//! before it logs anything else for that row, and recovery settles intents
//! after replaying every writes entry: an intent is always the newest
//! entry of its row.

use std::sync::Arc;

use super::format::BLOCK_BYTES;
use crate::codec::{ErasureCodec, ReedSolomon, Xor};

const BLOCK: usize = BLOCK_BYTES as usize;
const NO_WRITE: u8 = u8::MAX;
const OLD_KNOWN: u64 = 1 << 32;

/// The code a row's parity is computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCodec {
    Xor,
    ReedSolomon,
}

/// The checksum table of one full-row write (a column range of every
/// shard, the same range on each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowIntent {
    pub codec: RowCodec,
    pub data_shards: usize,
    pub parity_shards: usize,
    /// Per shard (data first): the entry's write that puts it in place;
    /// `None` where the shard's leg is lost.
    pub writes: Vec<Option<usize>>,
    /// Per shard, per 4 KiB block: CRC-32C of the new bytes.
    pub new: Vec<Vec<u32>>,
    /// Per data shard, per block: CRC-32C of what it held before; `None`
    /// where any bytes will do.
    pub old: Vec<Vec<Option<u32>>>,
}

impl RowIntent {
    pub(super) fn shards(&self) -> usize {
        self.data_shards + self.parity_shards
    }

    pub(super) fn blocks(&self) -> usize {
        self.new.first().map_or(0, Vec::len)
    }

    /// Checks the table against itself and against `writes` entry writes.
    pub(super) fn validate(&self, writes: usize) -> Result<(), &'static str> {
        let (n, blocks) = (self.shards(), self.blocks());
        if self.data_shards == 0
            || self.parity_shards == 0
            || n > usize::from(NO_WRITE)
            || (self.codec == RowCodec::Xor && self.parity_shards != 1)
        {
            return Err("shard counts out of range");
        }
        if self.writes.len() != n
            || self.new.len() != n
            || self.old.len() != self.data_shards
            || blocks == 0
            || self.new.iter().any(|c| c.len() != blocks)
            || self.old.iter().any(|c| c.len() != blocks)
        {
            return Err("table sizes disagree");
        }
        let mut used: Vec<usize> = self.writes.iter().flatten().copied().collect();
        used.sort_unstable();
        if used.len() != writes || used.iter().enumerate().any(|(i, &w)| i != w) {
            return Err("shards and writes disagree");
        }
        Ok(())
    }

    /// Bytes of the payload [`encode`](Self::encode) makes.
    pub(super) fn encoded_len(&self) -> usize {
        let (n, blocks) = (self.shards(), self.blocks());
        let table = 8 + n + n * blocks * 4 + self.data_shards * blocks * 8;
        table.div_ceil(BLOCK) * BLOCK
    }

    /// The payload: the table, zero-padded to whole blocks.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = vec![
            match self.codec {
                RowCodec::Xor => 0,
                RowCodec::ReedSolomon => 1,
            },
            self.data_shards as u8,
            self.parity_shards as u8,
            0,
        ];
        out.extend_from_slice(&(self.blocks() as u32).to_le_bytes());
        out.extend(self.writes.iter().map(|w| w.map_or(NO_WRITE, |w| w as u8)));
        for crc in self.new.iter().flatten() {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        for old in self.old.iter().flatten() {
            let word = old.map_or(0, |crc| OLD_KNOWN | u64::from(crc));
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Reads a payload back; `writes` is the entry's number of targets.
    pub(super) fn decode(payload: &[u8], writes: usize) -> Result<RowIntent, &'static str> {
        let mut at = 0usize;
        let mut take = |len: usize| -> Result<&[u8], &'static str> {
            let piece = payload.get(at..at + len).ok_or("table truncated")?;
            at += len;
            Ok(piece)
        };
        let head = take(8)?;
        let codec = match head[0] {
            0 => RowCodec::Xor,
            1 => RowCodec::ReedSolomon,
            _ => return Err("unknown codec"),
        };
        let (k, m) = (usize::from(head[1]), usize::from(head[2]));
        let blocks = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        if blocks == 0 || blocks > payload.len() {
            return Err("block count out of range");
        }
        let writes_of: Vec<Option<usize>> = take(k + m)?
            .iter()
            .map(|&w| (w != NO_WRITE).then_some(usize::from(w)))
            .collect();
        let mut new = Vec::with_capacity(k + m);
        for _ in 0..k + m {
            let bytes = take(blocks * 4)?;
            new.push(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            );
        }
        let mut old = Vec::with_capacity(k);
        for _ in 0..k {
            let bytes = take(blocks * 8)?;
            old.push(
                bytes
                    .chunks_exact(8)
                    .map(|c| {
                        let word = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                        (word & OLD_KNOWN != 0).then_some(word as u32)
                    })
                    .collect(),
            );
        }
        let intent = RowIntent {
            codec,
            data_shards: k,
            parity_shards: m,
            writes: writes_of,
            new,
            old,
        };
        intent.validate(writes)?;
        Ok(intent)
    }

    pub(super) fn codec(&self) -> Option<Arc<dyn ErasureCodec>> {
        let codec: Arc<dyn ErasureCodec> = match self.codec {
            RowCodec::Xor => Arc::new(Xor::new(self.data_shards).ok()?),
            RowCodec::ReedSolomon => {
                Arc::new(ReedSolomon::new(self.data_shards, self.parity_shards).ok()?)
            }
        };
        Some(codec)
    }
}
