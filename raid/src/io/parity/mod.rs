//! `Parity`: raid5 and erasure coding (K data + M parity shards per row,
//! rotating) on their legs.
//!
//! ```text
//!  read:   data shard's leg ──ok──▶ verified ──bad──▶ resolve the column
//!            └─lost─▶ reconstruct from the row's other shards
//!  write:  row lock ─▶ old bytes, verified (RMW; the whole column, resolved,
//!          when degraded or the old bytes fail) ─▶ new parity ─▶ journal entry on the parity PVs, durable
//!          ─▶ data and parity in place ─▶ entry completed
//! ```
//!
//! Whole rows in a run of one request, where full rows log intents, go in
//! place together: one write per leg instead of one per row and leg
//! (`full_rows.rs`).
//!
//! Crash rule (no write hole): every byte a partial-row update puts in
//! place is in a durable journal entry before the first in-place write
//! starts, so after a crash the replay makes every row that was mid-update
//! consistent again before anything reads it. A full-row write with one
//! parity shard logs an *intent* instead (`logs_intents` says why only
//! then): the checksums of its new blocks and of what they overwrite, not
//! the bytes (its parity comes from the new data alone, so only the
//! tearing of its in-place writes needs guarding). Recovery then
//! re-encodes the row's parity from data that is each block's old or new
//! version (`journal/intent.rs`). An intent cannot bring bytes back, so a
//! row's intent is retired (its writes flushed) before anything else of
//! the row is logged. Only a row whose parity legs are all lost goes
//! unjournaled: it has no redundancy left to keep. Placements are freed
//! only after `barrier` retired every entry.
//!
//! One lock per row (striped over a fixed table) orders writes, degraded
//! reads and repairs of the same row, so no one reconstructs from a row
//! whose data and parity are mid-update.
//!
//! Resolving a column (`resolve.rs`): data blocks that match their
//! checksums are trusted, the rest rebuilt from the row and accepted only
//! where checksums or the row vouch for them; anything else fails the
//! read rather than guess.

mod full_rows;
mod resolve;

use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use blockvirt::volume::{BlockCheck, Legs, ReadReport, Redundancy, ScrubMode, ScrubReport};
use blockvirt::{
    BlockError, BlockResult, BufResult, ByteRange, ErrorKind, IoBuf, IoBufMut, WriteFlags,
};
use futures::future::join_all;
use metadata::{Layout, PeAddr, PvId};

use super::verify::{failing_blocks, join, split, unrecoverable, BLOCK};
use crate::codec::ErasureCodec;
use crate::geometry::{LegContent, LegPiece, ParityGeometry, RowSpan, Span, StripeGeometry};
use crate::journal::{
    JournalEntry, JournalSet, JournalWrite, RowCodec, RowIntent, RowKey, Tickets,
};
use resolve::Verdict;

/// Row locks per layout (striped: two rows may share one).
const ROW_LOCKS: usize = 1024;

/// Times a resync reads a column again that looks beyond repair.
const RESYNC_REREADS: usize = 2;

/// Largest journal entry payload a row update makes (a quarter of the
/// smallest journal ring).
const MAX_ENTRY_BYTES: u64 = 256 << 10;

/// What a row update covers, which decides how it is journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowWrite {
    /// Part of the row: parity updated from the old bytes; the new bytes
    /// are journaled.
    Partial,
    /// The whole row, its bytes journaled (M >= 2, see `logs_intents`).
    Full,
    /// The whole row, journaled as an intent (checksums only).
    FullWithIntent,
}

#[derive(Debug)]
pub struct Parity {
    geometry: ParityGeometry,
    codec: Arc<dyn ErasureCodec>,
    journals: Arc<JournalSet>,
    row_locks: Box<[tokio::sync::Mutex<()>]>,
}

impl Parity {
    pub fn new(
        geometry: ParityGeometry,
        codec: Arc<dyn ErasureCodec>,
        journals: Arc<JournalSet>,
    ) -> Parity {
        Parity {
            geometry,
            codec,
            journals,
            row_locks: (0..ROW_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn stripe(&self) -> StripeGeometry {
        StripeGeometry::Parity(self.geometry)
    }

    fn k(&self) -> usize {
        self.geometry.data_shards()
    }

    fn shards(&self) -> usize {
        self.geometry.shards()
    }

    fn unit(&self) -> u64 {
        self.geometry.unit_bytes()
    }

    /// Whether full-row writes log intents rather than their bytes: only
    /// with one parity shard. Recovery cannot rebuild a lost leg's block
    /// of a row an intent's write tore (the other data blocks mix both
    /// versions and no parity matches them), so an intent turns a crash
    /// plus one lost leg into unreadable blocks in the range written. With
    /// M = 1 that loss is the layout's whole tolerance, where md's PPL
    /// gives the same; with M >= 2 one lost leg leaves tolerance to spare,
    /// which journaled bytes keep.
    fn logs_intents(&self) -> bool {
        self.geometry.parity_shards() == 1
    }

    /// Identifies row `row` of this placed extent (by its first leg's PE).
    fn row_key(&self, legs: &Legs, row: u64) -> RowKey {
        RowKey {
            pe: PeAddr {
                pv: legs.legs[0].pv,
                pe: legs.legs[0].pe,
            },
            row,
        }
    }

    fn row_lock(&self, legs: &Legs, row: u64) -> &tokio::sync::Mutex<()> {
        &self.row_locks[self.row_lock_index(legs, row)]
    }

    /// Which lock of the table guards `row`. Whoever holds several takes
    /// them in index order (`full_rows.rs`), so no two writers deadlock.
    fn row_lock_index(&self, legs: &Legs, row: u64) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.row_key(legs, row).hash(&mut hasher);
        hasher.finish() as usize % ROW_LOCKS
    }

    /// The parity shards of data shards `inputs` (all as long).
    fn encode(&self, inputs: &[&[u8]]) -> BlockResult<Vec<Vec<u8>>> {
        let len = inputs.first().map_or(0, |input| input.len());
        let mut parity = vec![vec![0u8; len]; self.geometry.parity_shards()];
        let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        self.codec
            .encode(inputs, &mut outputs)
            .map_err(codec_error)?;
        Ok(parity)
    }

    /// Extent offset of data shard `shard`'s byte at `in_unit` of `row`.
    fn data_offset(&self, row: u64, shard: usize, in_unit: u64) -> u64 {
        row * self.geometry.row_bytes() + shard as u64 * self.unit() + in_unit
    }

    fn parity_pvs(&self, legs: &Legs, row: u64) -> Vec<PvId> {
        self.geometry
            .parity_legs(row)
            .filter(|&leg| legs.is_online(leg))
            .map(|leg| legs.legs[leg].pv)
            .collect()
    }

    /// Every shard of `row` at unit bytes `[in_unit, +len)`; `None` for a
    /// leg that is offline or fails the read (then marked failed).
    async fn read_column(
        &self,
        legs: &Legs,
        row: u64,
        in_unit: u64,
        len: u64,
    ) -> Vec<Option<IoBufMut>> {
        self.read_shards(legs, row, in_unit, len, |_| true).await
    }

    /// Like [`read_column`](Self::read_column), for the shards `wanted`
    /// picks (`None` for the others).
    async fn read_shards(
        &self,
        legs: &Legs,
        row: u64,
        in_unit: u64,
        len: u64,
        wanted: impl Fn(usize) -> bool,
    ) -> Vec<Option<IoBufMut>> {
        let reads = (0..self.shards()).map(|shard| {
            let leg = self.geometry.shard_leg(row, shard);
            let wanted = wanted(shard);
            async move {
                if !wanted {
                    return None;
                }
                let (device, base) = legs.device(leg).ok()?;
                let (result, buf) = device
                    .read_at(
                        base + row * self.unit() + in_unit,
                        IoBufMut::zeroed(len as usize),
                    )
                    .await;
                match result {
                    Ok(()) => Some(buf),
                    Err(e) => {
                        legs.fail(leg, &e);
                        None
                    }
                }
            }
        });
        join_all(reads).await
    }

    /// Writes `bytes` at unit offset `in_unit` of each listed shard of
    /// `row`, on online legs; a leg that fails is marked failed.
    async fn put(
        &self,
        legs: &Legs,
        row: u64,
        writes: Vec<(usize, u64, IoBuf)>,
        flags: WriteFlags,
    ) -> usize {
        let puts = writes.into_iter().map(|(shard, in_unit, bytes)| {
            let leg = self.geometry.shard_leg(row, shard);
            put_leg(legs, leg, row * self.unit() + in_unit, bytes, flags)
        });
        join_all(puts).await.into_iter().filter(|ok| !ok).count()
    }

    /// Whether the old bytes under the blocks `pieces` overwrite (read into
    /// `column`, which starts at unit byte `cols.start`) are what was
    /// written there.
    fn old_blocks_match(
        &self,
        column: &[Option<IoBufMut>],
        row: u64,
        cols: &Range<u64>,
        pieces: &[(usize, Range<u64>, IoBuf)],
        check: Option<&dyn BlockCheck>,
    ) -> bool {
        let Some(check) = check else {
            return true;
        };
        pieces.iter().all(|(shard, range, _)| {
            let old = column[*shard].as_ref().expect("read");
            range.clone().step_by(BLOCK).all(|in_unit| {
                let at = (in_unit - cols.start) as usize;
                check.matches(self.data_offset(row, *shard, in_unit), &old[at..at + BLOCK])
            })
        })
    }

    /// Whether `pieces` overwrite a block no checksum covers, whose old
    /// bytes could not be verified before being XORed out of parity.
    fn overwrites_unverified(
        &self,
        row: u64,
        pieces: &[(usize, Range<u64>, IoBuf)],
        check: Option<&dyn BlockCheck>,
    ) -> bool {
        check.is_some_and(|check| {
            pieces.iter().any(|(shard, range, _)| {
                range
                    .clone()
                    .step_by(BLOCK)
                    .any(|in_unit| !check.covers(self.data_offset(row, *shard, in_unit)))
            })
        })
    }

    /// The data shards read into `column` (column slice `cols`) with a
    /// block no checksum covers that `pieces` leave in place: their bytes
    /// go into new parity unverified.
    fn keeps_unverified(
        &self,
        row: u64,
        cols: &Range<u64>,
        pieces: &[(usize, Range<u64>, IoBuf)],
        column: &[Option<IoBufMut>],
        check: Option<&dyn BlockCheck>,
    ) -> Vec<usize> {
        let Some(check) = check else {
            return Vec::new();
        };
        let overwritten = |shard: usize, in_unit: u64| {
            pieces
                .iter()
                .any(|(s, range, _)| *s == shard && range.contains(&in_unit))
        };
        (0..self.k())
            .filter(|&shard| column[shard].is_some())
            .filter(|&shard| {
                cols.clone().step_by(BLOCK).any(|in_unit| {
                    !overwritten(shard, in_unit)
                        && !check.covers(self.data_offset(row, shard, in_unit))
                })
            })
            .collect()
    }

    /// Lost legs beyond what the layout tolerates: the row cannot be kept.
    fn check_tolerance(&self, legs: &Legs, row: u64) -> BlockResult<()> {
        let lost = (0..self.shards())
            .filter(|&s| !legs.is_online(self.geometry.shard_leg(row, s)))
            .count();
        if lost > self.geometry.parity_shards() {
            Err(BlockError::new(
                ErrorKind::Io,
                format!(
                    "row {row}: {lost} legs lost, more than {} the layout survives",
                    self.geometry.parity_shards()
                ),
            ))
        } else {
            Ok(())
        }
    }

    async fn write_row(
        &self,
        legs: &Legs,
        rs: RowSpan,
        data: IoBuf,
        flags: WriteFlags,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        let unit = self.unit();
        let row = rs.row;
        let _row = self.row_lock(legs, row).lock().await;
        self.check_tolerance(legs, row)?;
        // (shard, bytes within the unit, new data) of each touched shard.
        let pieces: Vec<(usize, Range<u64>, IoBuf)> = rs
            .shards
            .clone()
            .map(|shard| {
                let start = (shard as u64 * unit).max(rs.row_offset_bytes);
                let end = ((shard as u64 + 1) * unit).min(rs.row_offset_bytes + rs.len_bytes);
                let from = (start - rs.row_offset_bytes) as usize;
                let bytes = data.slice(from..from + (end - start) as usize);
                (
                    shard,
                    start - shard as u64 * unit..end - shard as u64 * unit,
                    bytes,
                )
            })
            .collect();
        let hull = if rs.full {
            0..unit
        } else {
            rs.unit_range_bytes.clone()
        };
        let kind = match (rs.full, self.logs_intents()) {
            (false, _) => RowWrite::Partial,
            (true, false) => RowWrite::Full,
            (true, true) => RowWrite::FullWithIntent,
        };
        // Parity is computed byte by byte, so a row can be updated in
        // column slices; each slice's journal entry stays well inside the
        // smallest journal ring. An intent is only checksums: one slice.
        let slice_bytes = if kind == RowWrite::FullWithIntent {
            unit
        } else {
            ((MAX_ENTRY_BYTES / self.shards() as u64) / BLOCK as u64 * BLOCK as u64)
                .max(BLOCK as u64)
        };
        let mut start = hull.start;
        while start < hull.end {
            let cols = start..(start + slice_bytes).min(hull.end);
            let in_slice: Vec<(usize, Range<u64>, IoBuf)> = pieces
                .iter()
                .filter_map(|(shard, range, bytes)| {
                    let from = range.start.max(cols.start);
                    let to = range.end.min(cols.end);
                    (from < to).then(|| {
                        let at = (from - range.start) as usize;
                        (*shard, from..to, bytes.slice(at..at + (to - from) as usize))
                    })
                })
                .collect();
            if !in_slice.is_empty() {
                self.write_slice(legs, row, cols.clone(), in_slice, kind, flags, check)
                    .await?;
            }
            start = cols.end;
        }
        Ok(())
    }

    /// Writes the new data of one column slice of a row (the row lock
    /// held): new parity, journal entry, data and parity in place.
    #[allow(clippy::too_many_arguments)]
    async fn write_slice(
        &self,
        legs: &Legs,
        row: u64,
        cols: Range<u64>,
        pieces: Vec<(usize, Range<u64>, IoBuf)>,
        kind: RowWrite,
        flags: WriteFlags,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        let (k, n) = (self.k(), self.shards());
        let cols_len = (cols.end - cols.start) as usize;
        // Read-modify-write needs every changed shard and all parity, and
        // old data that is what was written; otherwise the whole column is
        // read and resolved. Old bytes no checksum covers (a chunk never
        // written, or discarded) cannot be verified: rot at rest in them,
        // or a read that flipped bits on the way, XORed out of parity
        // would stay there for good.
        let degraded = !(0..n).all(|s| legs.is_online(self.geometry.shard_leg(row, s)));
        let mut whole_column = degraded || self.overwrites_unverified(row, &pieces, check);
        let mut rereads = 0;
        let parity: Vec<Vec<u8>> = loop {
            if kind != RowWrite::Partial {
                let inputs: Vec<&[u8]> = pieces.iter().map(|(_, _, bytes)| &bytes[..]).collect();
                break self.encode(&inputs)?;
            }
            if !whole_column {
                // Read-modify-write: old bytes of the changed shards, old parity.
                let wanted =
                    |shard: usize| shard >= k || pieces.iter().any(|(s, _, _)| *s == shard);
                let column = self
                    .read_shards(legs, row, cols.start, cols.end - cols.start, wanted)
                    .await;
                if (0..n).any(|s| wanted(s) && column[s].is_none()) {
                    whole_column = true; // a leg failed during the read
                    continue;
                }
                if !self.old_blocks_match(&column, row, &cols, &pieces, check) {
                    // Damage folded into the delta would corrupt parity.
                    whole_column = true;
                    continue;
                }
                let mut parity: Vec<Vec<u8>> = (k..n)
                    .map(|s| column[s].as_ref().expect("read").to_vec())
                    .collect();
                for (shard, range, bytes) in &pieces {
                    let old = column[*shard].as_ref().expect("read");
                    let mut delta = vec![0u8; cols_len];
                    let at = (range.start - cols.start) as usize;
                    let span = at..at + bytes.len();
                    for ((d, o), new) in delta[span.clone()]
                        .iter_mut()
                        .zip(&old[span])
                        .zip(&bytes[..])
                    {
                        *d = o ^ new;
                    }
                    let mut outputs: Vec<&mut [u8]> =
                        parity.iter_mut().map(Vec::as_mut_slice).collect();
                    self.codec
                        .update_parity(*shard, &delta, &mut outputs)
                        .map_err(codec_error)?;
                }
                break parity;
            }
            // Whole column: the old data, verified block by block, the new
            // data over it, parity encoded afresh. Where the row cannot
            // vouch for a block, it is rebuilt as it stands: lost already,
            // it fails its checksum on every read.
            let column = self
                .read_column(legs, row, cols.start, cols.end - cols.start)
                .await;
            // Data no checksum covers goes into the new parity as read: a
            // read that flipped bits on the way would stay in parity for
            // good, so it must read the same twice.
            let unverified = self.keeps_unverified(row, &cols, &pieces, &column, check);
            if !unverified.is_empty() && rereads < RESYNC_REREADS {
                let again = self
                    .read_shards(legs, row, cols.start, cols.end - cols.start, |s| {
                        unverified.contains(&s)
                    })
                    .await;
                if unverified
                    .iter()
                    .any(|&s| again[s].as_deref() != column[s].as_deref())
                {
                    rereads += 1;
                    continue;
                }
            }
            let present: Vec<bool> = column.iter().map(Option::is_some).collect();
            let mut shards: Vec<Vec<u8>> = column
                .iter()
                .map(|c| {
                    c.as_ref()
                        .map_or_else(|| vec![0u8; cols_len], |b| b.to_vec())
                })
                .collect();
            let mut slices: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
            self.codec
                .reconstruct_data(&mut slices, &present)
                .map_err(codec_error)?;
            if let Some(check) = check {
                for at in (0..cols_len).step_by(BLOCK) {
                    match self.resolve(&column, row, cols.start, at, Some(check), false) {
                        Verdict::Good { shards: sound, .. } => {
                            for (shard, block) in shards.iter_mut().zip(&sound).take(k) {
                                shard[at..at + BLOCK].copy_from_slice(block);
                            }
                        }
                        // Parity will agree with these blocks as they
                        // stand: recorded, so no resync takes that
                        // agreement for a sound row.
                        Verdict::Unrecoverable => {
                            let in_unit = cols.start + at as u64;
                            let overwritten = |shard: usize| {
                                pieces.iter().any(|(s, range, _)| {
                                    *s == shard
                                        && range.start <= in_unit
                                        && in_unit + BLOCK as u64 <= range.end
                                })
                            };
                            for shard in (0..k).filter(|&s| !overwritten(s)) {
                                let offset = self.data_offset(row, shard, in_unit);
                                let sound = column[shard]
                                    .as_ref()
                                    .is_some_and(|b| check.matches(offset, &b[at..at + BLOCK]));
                                if !sound {
                                    check.mark_known_bad(offset);
                                }
                            }
                        }
                    }
                }
            }
            for (shard, range, bytes) in &pieces {
                let at = (range.start - cols.start) as usize;
                shards[*shard][at..at + bytes.len()].copy_from_slice(bytes);
            }
            let inputs: Vec<&[u8]> = shards[..k].iter().map(Vec::as_slice).collect();
            break self.encode(&inputs)?;
        };

        let mut writes: Vec<(usize, u64, IoBuf)> = pieces
            .iter()
            .map(|(shard, range, bytes)| (*shard, range.start, bytes.clone()))
            .collect();
        writes.extend(
            parity
                .iter()
                .enumerate()
                .map(|(j, p)| (k + j, cols.start, IoBuf::copy_from(p))),
        );
        let (online, tickets) = self.log_row(legs, row, &cols, &writes, kind, check).await?;
        self.put(legs, row, online, flags).await;
        if let Some(tickets) = tickets {
            self.journals.completed(tickets);
        }
        self.check_tolerance(legs, row)
    }

    /// Logs the journal entry of an update of `row` (its lock held) that
    /// writes `writes` (shard, unit offset, bytes: data, then parity) in
    /// column slice `cols`. Returns the writes to put in place (those of
    /// online legs) and the entry's tickets: none when no parity PV is left
    /// to journal on (the row has no redundancy left to protect).
    async fn log_row(
        &self,
        legs: &Legs,
        row: u64,
        cols: &Range<u64>,
        writes: &[(usize, u64, IoBuf)],
        kind: RowWrite,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<(Vec<(usize, u64, IoBuf)>, Option<Tickets>)> {
        // A parity PV whose journal fails the entry is marked failed by
        // the journal set; the entry then goes to the parity PVs left.
        loop {
            let online: Vec<(usize, u64, IoBuf)> = writes
                .iter()
                .filter(|(shard, _, _)| legs.is_online(self.geometry.shard_leg(row, *shard)))
                .cloned()
                .collect();
            let parity_pvs = self.parity_pvs(legs, row);
            if parity_pvs.is_empty() {
                return Ok((online, None));
            }
            let key = self.row_key(legs, row);
            // An intent cannot bring bytes back: its in-place writes are
            // made durable before anything else of the row is logged.
            if self.journals.has_unretired_intent(&parity_pvs, key) {
                self.journals.retire(&parity_pvs).await?;
            }
            let journal_writes: Vec<JournalWrite> = online
                .iter()
                .map(|(shard, in_unit, bytes)| {
                    let leg = &legs.legs[self.geometry.shard_leg(row, *shard)];
                    JournalWrite {
                        pv: leg.pv,
                        offset_bytes: leg.base_bytes + row * self.unit() + in_unit,
                        data: bytes.clone(),
                    }
                })
                .collect();
            let entry = if kind == RowWrite::FullWithIntent {
                JournalEntry {
                    row: key,
                    intent: Some(self.row_intent(row, cols, writes, &online, check)),
                    writes: journal_writes,
                }
            } else {
                JournalEntry::writes(key, journal_writes)
            };
            match self.journals.log(&parity_pvs, &entry).await {
                Ok(tickets) => return Ok((online, Some(tickets))),
                Err(_) if self.parity_pvs(legs, row).len() < parity_pvs.len() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The checksum table of a full-row write of column slice `cols`:
    /// `writes` holds every shard's new bytes (data, then parity), `online`
    /// those going in place, in entry order.
    fn row_intent(
        &self,
        row: u64,
        cols: &Range<u64>,
        writes: &[(usize, u64, IoBuf)],
        online: &[(usize, u64, IoBuf)],
        check: Option<&dyn BlockCheck>,
    ) -> RowIntent {
        let (k, n) = (self.k(), self.shards());
        let blocks = ((cols.end - cols.start) / BLOCK as u64) as usize;
        // A data block's checksum is the volume's, computed already;
        // parity's is computed here.
        let written = |shard: usize, in_unit: u64| {
            let check = check.filter(|_| shard < k)?;
            check.written(self.data_offset(row, shard, in_unit))
        };
        let mut new = vec![Vec::new(); n];
        for (shard, _, bytes) in writes {
            new[*shard] = bytes
                .chunks_exact(BLOCK)
                .enumerate()
                .map(|(b, block)| {
                    written(*shard, cols.start + (b * BLOCK) as u64)
                        .unwrap_or_else(|| crc32c::crc32c(block))
                })
                .collect();
        }
        let old = (0..k)
            .map(|shard| {
                (0..blocks)
                    .map(|b| {
                        let in_unit = cols.start + (b * BLOCK) as u64;
                        check.and_then(|c| c.expected(self.data_offset(row, shard, in_unit)))
                    })
                    .collect()
            })
            .collect();
        RowIntent {
            codec: match self.geometry.layout() {
                Layout::Raid5 { .. } => RowCodec::Xor,
                _ => RowCodec::ReedSolomon,
            },
            data_shards: k,
            parity_shards: n - k,
            writes: (0..n)
                .map(|shard| online.iter().position(|(s, _, _)| *s == shard))
                .collect(),
            new,
            old,
        }
    }

    /// Reads a data span; a lost leg or a failing block is served from the
    /// rest of the row.
    async fn read_span(
        &self,
        legs: &Legs,
        span: Span,
        offset_bytes: u64,
        part: IoBufMut,
        check: Option<&dyn BlockCheck>,
        repair: bool,
    ) -> (BlockResult<ReadReport>, IoBufMut) {
        let mut part = part;
        if legs.is_online(span.leg) {
            let (device, base) = legs.device(span.leg).expect("online");
            let (result, back) = device.read_at(base + span.pe_offset_bytes, part).await;
            part = back;
            match result {
                Ok(()) => {
                    let bad = check
                        .map(|c| failing_blocks(c, offset_bytes, &part))
                        .unwrap_or_default();
                    if bad.is_empty() {
                        return (Ok(ReadReport::default()), part);
                    }
                }
                Err(e) => legs.fail(span.leg, &e),
            }
        }
        // Resolve the whole span from its row.
        let in_unit = span.pe_offset_bytes % self.unit();
        let _row = self.row_lock(legs, span.row).lock().await;
        let column = self
            .read_column(legs, span.row, in_unit, span.len_bytes)
            .await;
        let mut report = ReadReport::default();
        let mut rewrites: Vec<(usize, u64, IoBuf)> = Vec::new();
        for at in (0..span.len_bytes as usize).step_by(BLOCK) {
            match self.resolve(&column, span.row, in_unit, at, check, false) {
                Verdict::Good { shards, wrong, .. } => {
                    part[at..at + BLOCK].copy_from_slice(&shards[span.shard]);
                    report.mismatches += wrong.len() as u64;
                    for shard in wrong {
                        rewrites.push((
                            shard,
                            in_unit + at as u64,
                            IoBuf::copy_from(&shards[shard]),
                        ));
                    }
                }
                Verdict::Unrecoverable => {
                    let rebuilt = check.and_then(|c| {
                        self.rebuild_block(&column, span.row, in_unit, at, span.shard, c)
                    });
                    let Some(block) = rebuilt else {
                        return (Err(unrecoverable(offset_bytes + at as u64)), part);
                    };
                    part[at..at + BLOCK].copy_from_slice(&block);
                }
            }
        }
        if repair && !rewrites.is_empty() {
            self.put(legs, span.row, rewrites, WriteFlags::empty())
                .await;
        }
        (Ok(report), part)
    }

    /// Rebuilds what `piece` of a lost leg holds (one unit of one row)
    /// into `part`, under the row's lock.
    async fn rebuild_piece(
        &self,
        legs: &Legs,
        piece: &LegPiece,
        mut part: IoBufMut,
        check: Option<&dyn BlockCheck>,
    ) -> (BlockResult<ReadReport>, IoBufMut) {
        let in_unit = piece.pe_offset_bytes % self.unit();
        let shard = match piece.content {
            LegContent::Data { shard, .. } => shard,
            LegContent::Parity { index } => self.k() + index,
        };
        let _row = self.row_lock(legs, piece.row).lock().await;
        let mut column = self
            .read_column(legs, piece.row, in_unit, piece.len_bytes)
            .await;
        let mut rereads = 0;
        let mut outcome = Ok(ReadReport::default());
        let mut at = 0;
        while at < piece.len_bytes as usize {
            let block = match self.resolve(&column, piece.row, in_unit, at, check, false) {
                Verdict::Good { mut shards, .. } => Some(shards.swap_remove(shard)),
                Verdict::Unrecoverable => check
                    .filter(|_| shard < self.k())
                    .and_then(|c| self.rebuild_block(&column, piece.row, in_unit, at, shard, c)),
            };
            let block = match block {
                Some(block) => block,
                // A read that flipped bits on the way looks like
                // damage: read the column again before settling.
                None if rereads < RESYNC_REREADS => {
                    rereads += 1;
                    column = self
                        .read_column(legs, piece.row, in_unit, piece.len_bytes)
                        .await;
                    continue;
                }
                None => {
                    match self.rebuild_as_it_stands(&column, piece.row, in_unit, at, shard, check) {
                        Some(block) => block,
                        None => {
                            let offset = self.data_offset(
                                piece.row,
                                shard.min(self.k() - 1),
                                in_unit + at as u64,
                            );
                            outcome = Err(unrecoverable(offset));
                            break;
                        }
                    }
                }
            };
            part[at..at + BLOCK].copy_from_slice(&block);
            at += BLOCK;
        }
        (outcome, part)
    }
}

/// Writes `bytes` at `offset_bytes` of leg `leg`; a leg that fails is
/// marked failed. Returns whether the write succeeded.
async fn put_leg(
    legs: &Legs,
    leg: usize,
    offset_bytes: u64,
    bytes: IoBuf,
    flags: WriteFlags,
) -> bool {
    let result = match legs.device(leg) {
        Ok((device, base)) => device.write_at(base + offset_bytes, bytes, flags).await.0,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        legs.fail(leg, e);
    }
    result.is_ok()
}

fn codec_error(err: crate::codec::CodecError) -> BlockError {
    BlockError::with_source(ErrorKind::Io, "parity", err)
}

#[async_trait]
impl Redundancy for Parity {
    fn layout(&self) -> Layout {
        self.geometry.layout()
    }

    fn extent_bytes(&self) -> u64 {
        self.stripe().extent_bytes()
    }

    async fn read(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        buf: IoBufMut,
        check: Option<&dyn BlockCheck>,
        repair: bool,
    ) -> (BlockResult<ReadReport>, IoBufMut) {
        let spans: Vec<Span> = self
            .stripe()
            .spans(offset_bytes, buf.len() as u64)
            .collect();
        let (parts, rest) = split(buf, spans.iter().map(|s| s.len_bytes as usize));
        let reads = spans.iter().zip(parts).map(|(span, part)| {
            self.read_span(
                legs,
                *span,
                offset_bytes + span.request_offset_bytes,
                part,
                check,
                repair,
            )
        });
        join(join_all(reads).await, rest)
    }

    async fn write(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        data: IoBuf,
        flags: WriteFlags,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        let rows: Vec<RowSpan> = self
            .geometry
            .rows(offset_bytes, data.len() as u64)
            .collect();
        let writes = self.runs(rows).into_iter().map(|run| {
            let (first, last) = (&run[0], &run[run.len() - 1]);
            let bytes = data.slice(
                first.request_offset_bytes as usize
                    ..(last.request_offset_bytes + last.len_bytes) as usize,
            );
            let first_row = first.row;
            let single = (run.len() == 1).then(|| run[0].clone());
            async move {
                match single {
                    Some(rs) => self.write_row(legs, rs, bytes, flags, check).await,
                    None => {
                        self.write_full_rows(legs, first_row, bytes, flags, check)
                            .await
                    }
                }
            }
        });
        join_all(writes).await.into_iter().collect()
    }

    async fn write_zeroes(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        len_bytes: u64,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        // Through the parity path: the row's parity must follow.
        self.write(
            legs,
            offset_bytes,
            IoBuf::zeroed(len_bytes as usize),
            WriteFlags::empty(),
            check,
        )
        .await
    }

    async fn release(&self, _legs: &Legs, _offset_bytes: u64, _len_bytes: u64) -> BlockResult<()> {
        // Nothing is punched. Part of a row would leave its parity
        // describing data that is gone. A whole extent is released before
        // the commit that unmaps it, and a power loss in between leaves the
        // durable map holding it with rows the discards tore (the data of
        // one shard gone, another's kept). Its PEs give their space back
        // when they are placed again: `initialize` writes zeroes over them.
        Ok(())
    }

    async fn rebuild_leg(
        &self,
        legs: &Legs,
        leg: usize,
        pe_offset_bytes: u64,
        buf: IoBufMut,
        check: Option<&dyn BlockCheck>,
    ) -> BufResult<IoBufMut> {
        let pieces: Vec<_> = self
            .stripe()
            .leg_pieces(leg, pe_offset_bytes, buf.len() as u64)
            .collect();
        let (parts, rest) = split(buf, pieces.iter().map(|p| p.len_bytes as usize));
        // The pieces (one per row) are rebuilt at once, each under its own
        // row's lock: one after the other, a rebuild waited on a column's
        // reads at a time.
        let rebuilds = pieces
            .iter()
            .zip(parts)
            .map(|(piece, part)| self.rebuild_piece(legs, piece, part, check));
        let (result, buf) = join(join_all(rebuilds).await, rest);
        (result.map(|_| ()), buf)
    }

    async fn scrub(
        &self,
        legs: &Legs,
        offset_bytes: u64,
        len_bytes: u64,
        check: &dyn BlockCheck,
        mode: ScrubMode,
    ) -> BlockResult<ScrubReport> {
        // Parity rows are made consistent by the stripe journal at start;
        // a resync is a repair here.
        let repair = mode != ScrubMode::Check;
        let mut report = ScrubReport::default();
        let unit = self.unit();
        // Whole units of every row the range touches.
        let first_row = offset_bytes / self.geometry.row_bytes();
        let end_row = (offset_bytes + len_bytes).div_ceil(self.geometry.row_bytes());
        for row in first_row..end_row {
            let _row = self.row_lock(legs, row).lock().await;
            let mut column = self.read_column(legs, row, 0, unit).await;
            let mut rewrites: Vec<(usize, u64, IoBuf)> = Vec::new();
            let resync = mode == ScrubMode::Resync;
            for at in (0..unit as usize).step_by(BLOCK) {
                report.blocks_checked += self.k() as u64;
                let mut verdict = self.resolve(&column, row, 0, at, Some(check), resync);
                // A read that flipped bits on the way makes a column look
                // beyond repair, and only a resync can adopt an unfinished
                // write: it reads the column again before giving up.
                for _ in 0..RESYNC_REREADS {
                    if !resync || !matches!(verdict, Verdict::Unrecoverable) {
                        break;
                    }
                    column = self.read_column(legs, row, 0, unit).await;
                    verdict = self.resolve(&column, row, 0, at, Some(check), resync);
                }
                match verdict {
                    Verdict::Good {
                        shards,
                        wrong,
                        adopted,
                    } => {
                        report.mismatches += wrong.len() as u64;
                        for shard in wrong {
                            rewrites.push((shard, at as u64, IoBuf::copy_from(&shards[shard])));
                        }
                        report.adopted.extend(
                            adopted.iter().map(|&s| {
                                (self.data_offset(row, s, at as u64), shards[s].to_vec())
                            }),
                        );
                    }
                    Verdict::Unrecoverable => report.unrecoverable += 1,
                }
            }
            if repair && !rewrites.is_empty() {
                let count = rewrites.len() as u64;
                let failed = self.put(legs, row, rewrites, WriteFlags::empty()).await as u64;
                report.repaired += count - failed;
            }
        }
        Ok(report)
    }

    async fn barrier(&self) -> BlockResult<()> {
        self.journals.checkpoint_all().await
    }

    async fn initialize(&self, legs: &Legs) -> BlockResult<()> {
        // Zeroes on every leg: zero data, zero parity, every row consistent.
        // A leg that fails is marked failed, as in a write, and the extent
        // starts degraded if the layout tolerates it.
        let zeroes = (0..self.shards()).map(|leg| async move {
            let Ok((device, base)) = legs.device(leg) else {
                return;
            };
            let range = ByteRange::new(base, self.geometry.pe_bytes());
            if let Err(e) = device
                .write_zeroes(range, blockvirt::ZeroFlags::empty())
                .await
            {
                legs.fail(leg, &e);
            }
        });
        join_all(zeroes).await;
        // Row 0 has a shard on every leg.
        self.check_tolerance(legs, 0)
    }
}
