//! `Mirrored`: raid0, raid1 and raid10 (and linear) on their legs.
//!
//! ```text
//!  user bytes ──spans──▶ (row, column) ──▶ mirror group: legs g·C .. g·C+C
//!  read:  one copy of the group (rotating), verified; a bad block is taken
//!         from another copy that matches its checksum
//!  write: every online copy of the group
//! ```
//!
//! A write succeeds when at least one copy of every span took it; the
//! copies that failed are marked failed, so they are never read again
//! before a rebuild replaces them.
//!
//! With integrity (`lvcreate --raidintegrity y`), a write first logs the
//! checksums of its blocks as records on the journals of its copies' PVs
//! (`journal/records.rs`), and hands their pins to the volume, which drops
//! them once it has committed the same checksums. After a power loss,
//! recovery settles each recorded block on the copy holding the write, so
//! damage on the other copy cannot pass for an unfinished write. Adopting a block (copies agree, the
//! checksum does not) is for a resync alone, and needs two copies: a lone
//! copy that fails its checksum might be rot.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use blockvirt::volume::{BlockCheck, Legs, ReadReport, Redundancy, ScrubMode, ScrubReport};
use blockvirt::{
    BlockError, BlockResult, BufResult, ByteRange, ErrorKind, IoBuf, IoBufMut, WriteFlags,
    ZeroFlags,
};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use metadata::{Layout, PvId};

use crate::journal::{JournalSet, RecordEntry, RecordWrite};

use super::verify::{failing_blocks, join, split, unrecoverable, BLOCK};
use crate::geometry::{LegContent, Span, StripeGeometry, StripedGeometry};

/// Times a rebuild reads a span again whose blocks no copy vouches for,
/// before it copies them as they stand.
const REBUILD_REREADS: usize = 2;

/// How long a write waits for record room while it holds its extent
/// before it asks the volume to commit (which drops pins) and come back.
const RECORD_ROOM_WAIT: Duration = Duration::from_millis(20);

/// Spans one record entry carries at most (its copies are its targets).
const SPANS_PER_RECORD: usize = 32;

#[derive(Debug)]
pub struct Mirrored {
    geometry: StripedGeometry,
    /// Spreads reads over the copies of a group.
    next_copy: AtomicUsize,
    /// With integrity: the journals that take the records of writes.
    records: Option<Arc<JournalSet>>,
}

impl Mirrored {
    pub fn new(geometry: StripedGeometry) -> Mirrored {
        Mirrored {
            geometry,
            next_copy: AtomicUsize::new(0),
            records: None,
        }
    }

    /// A mirror whose writes log their checksums first (integrity).
    pub fn with_records(geometry: StripedGeometry, journals: Arc<JournalSet>) -> Mirrored {
        Mirrored {
            records: Some(journals),
            ..Mirrored::new(geometry)
        }
    }

    /// Logs the records of writing `data` (zeroes where `None`) at
    /// `offset_bytes`, spans `spans`, and hands their pins to `check`.
    /// `NeedsCommit` when the journals have no room soon enough: nothing
    /// is written then.
    async fn log_records(
        &self,
        legs: &Legs,
        spans: &[Span],
        offset_bytes: u64,
        data: Option<&IoBuf>,
        check: Option<&dyn BlockCheck>,
    ) -> BlockResult<()> {
        let (Some(journals), Some(check)) = (&self.records, check) else {
            return Ok(());
        };
        let Some((lv, le)) = check.extent() else {
            return Ok(());
        };
        let crc_at = |span: &Span, at: usize| {
            let in_extent = offset_bytes + span.request_offset_bytes + at as u64;
            check.written(in_extent).unwrap_or_else(|| {
                let at = span.request_offset_bytes as usize + at;
                match data {
                    Some(data) => crc32c::crc32c(&data[at..at + BLOCK]),
                    None => crc32c::crc32c(&[0u8; BLOCK]),
                }
            })
        };
        for batch in spans.chunks(SPANS_PER_RECORD) {
            loop {
                let writes: Vec<RecordWrite> = batch
                    .iter()
                    .filter_map(|span| {
                        let copies: Vec<(PvId, u64)> = span
                            .legs()
                            .filter(|&leg| legs.is_online(leg))
                            .map(|leg| {
                                let leg = &legs.legs[leg];
                                (leg.pv, leg.base_bytes + span.pe_offset_bytes)
                            })
                            .collect();
                        // One copy left: nothing to tell apart.
                        (copies.len() >= 2).then(|| RecordWrite {
                            lv,
                            le,
                            copies,
                            crcs: (0..span.len_bytes as usize)
                                .step_by(BLOCK)
                                .map(|at| crc_at(span, at))
                                .collect(),
                        })
                    })
                    .collect();
                if writes.is_empty() {
                    break;
                }
                let mut pvs: Vec<PvId> = writes
                    .iter()
                    .flat_map(|w| w.copies.iter().map(|&(pv, _)| pv))
                    .collect();
                pvs.sort_unstable();
                pvs.dedup();
                let entry = RecordEntry { writes };
                let logged = journals
                    .log_records_within(&pvs, &entry, Some(RECORD_ROOM_WAIT))
                    .await;
                match logged {
                    Ok(Some(pins)) => {
                        check.keep_until_committed(Box::new(pins));
                        break;
                    }
                    Ok(None) => {
                        return Err(BlockError::new(
                            ErrorKind::NeedsCommit,
                            "no room for the records of a mirror write before a commit",
                        ))
                    }
                    // A journal that failed is its PV failing (the journal
                    // set marks it): log again on the copies left.
                    Err(_) if copies_lost(legs, batch, &pvs) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The copy of the block at `at` in a span (`pe_offset_bytes` into
    /// its PEs) that matches the newest record recovery found of it, if
    /// any does.
    fn recorded(
        &self,
        legs: &Legs,
        copies: &[(usize, IoBufMut)],
        pe_offset_bytes: u64,
        at: usize,
        check: &dyn BlockCheck,
    ) -> Option<Vec<u8>> {
        let journals = self.records.as_ref()?;
        let (lv, le) = check.extent()?;
        let crcs: Vec<u32> = copies.iter().find_map(|(leg, _)| {
            let leg = &legs.legs[*leg];
            let offset = leg.base_bytes + pe_offset_bytes + at as u64;
            journals.recorded_crcs(lv, le, leg.pv, offset)
        })?;
        crcs.iter().find_map(|&crc| {
            copies
                .iter()
                .map(|(_, data)| &data[at..at + BLOCK])
                .find(|block| crc32c::crc32c(block) == crc)
                .map(<[u8]>::to_vec)
        })
    }

    fn stripe(&self) -> StripeGeometry {
        StripeGeometry::Striped(self.geometry)
    }

    /// The online copies of a span, starting at a rotating one.
    fn copies(&self, legs: &Legs, span: &Span, exclude: Option<usize>) -> Vec<usize> {
        let first = self.next_copy.fetch_add(1, Ordering::Relaxed) % span.copies;
        (0..span.copies)
            .map(|i| span.leg + (first + i) % span.copies)
            .filter(|&leg| Some(leg) != exclude && legs.is_online(leg))
            .collect()
    }

    /// Reads `span` (at extent offset `offset_bytes`) into `part`, verified
    /// with `check`. `prefer` is read first when online; `exclude` never.
    #[allow(clippy::too_many_arguments)]
    async fn read_span(
        &self,
        legs: &Legs,
        span: Span,
        offset_bytes: u64,
        mut part: IoBufMut,
        check: Option<&dyn BlockCheck>,
        repair: bool,
        prefer: Option<usize>,
        exclude: Option<usize>,
    ) -> (BlockResult<ReadReport>, IoBufMut) {
        let mut order = self.copies(legs, &span, exclude);
        if let Some(leg) = prefer.filter(|leg| order.contains(leg)) {
            order.retain(|l| *l != leg);
            order.insert(0, leg);
        }
        let mut source = None;
        for &leg in &order {
            let (result, back) = read_leg(legs, leg, span.pe_offset_bytes, part).await;
            part = back;
            match result {
                Ok(()) => {
                    source = Some(leg);
                    break;
                }
                Err(e) => legs.fail(leg, &e),
            }
        }
        let Some(source) = source else {
            return (Err(no_copy(span)), part);
        };
        let mut report = ReadReport::default();
        let Some(check) = check else {
            return (Ok(report), part);
        };
        for index in failing_blocks(check, offset_bytes, &part) {
            let at = index * BLOCK;
            let block_offset = offset_bytes + at as u64;
            let pe_offset = span.pe_offset_bytes + at as u64;
            // Every readable copy of the block, the first read included.
            let mut seen: Vec<(usize, Vec<u8>)> = vec![(source, part[at..at + BLOCK].to_vec())];
            for &leg in order
                .iter()
                .filter(|&&leg| leg != source && legs.is_online(leg))
            {
                let (result, block) = read_leg(legs, leg, pe_offset, IoBufMut::zeroed(BLOCK)).await;
                match result {
                    Ok(()) => seen.push((leg, block.to_vec())),
                    Err(e) => legs.fail(leg, &e),
                }
            }
            match seen
                .iter()
                .find(|(_, data)| check.matches(block_offset, data))
            {
                Some((_, good)) => {
                    let good = good.clone();
                    part[at..at + BLOCK].copy_from_slice(&good);
                    let bad: Vec<usize> = seen
                        .iter()
                        .filter(|(_, data)| !check.matches(block_offset, data))
                        .map(|(leg, _)| *leg)
                        .collect();
                    report.mismatches += bad.len() as u64;
                    if repair {
                        rewrite(legs, &bad, pe_offset, IoBuf::copy_from(&good)).await;
                    }
                }
                None => return (Err(unrecoverable(block_offset)), part),
            }
        }
        (Ok(report), part)
    }

    /// The span of user bytes `[offset_bytes, +len)` within one unit.
    fn span_at(&self, offset_bytes: u64, len_bytes: u64) -> Span {
        let mut spans = self.stripe().spans(offset_bytes, len_bytes);
        let span = spans.next().expect("a non-empty range has a span");
        debug_assert!(spans.next().is_none(), "range crosses a unit");
        span
    }
}

/// Records the blocks of `data` (a rebuild's copy, at extent offset
/// `offset_bytes`) that no copy vouched for as known bad: the new leg
/// holds them as they stood, so its copies agree on bytes their checksums
/// do not know, which a resync must never adopt.
fn mark_lost_blocks(check: Option<&dyn BlockCheck>, offset_bytes: u64, data: &[u8]) {
    let Some(check) = check else { return };
    for index in failing_blocks(check, offset_bytes, data) {
        check.mark_known_bad(offset_bytes + (index * BLOCK) as u64);
    }
}

async fn read_leg(
    legs: &Legs,
    leg: usize,
    pe_offset_bytes: u64,
    buf: IoBufMut,
) -> (BlockResult<()>, IoBufMut) {
    match legs.device(leg) {
        Ok((device, base)) => device.read_at(base + pe_offset_bytes, buf).await,
        Err(e) => (Err(e), buf),
    }
}

/// Writes `data` on each of `targets`; a leg that fails is marked failed.
async fn rewrite(legs: &Legs, targets: &[usize], pe_offset_bytes: u64, data: IoBuf) -> usize {
    let writes = targets.iter().map(|&leg| {
        let data = data.clone();
        async move {
            let result = match legs.device(leg) {
                Ok((device, base)) => {
                    device
                        .write_at(base + pe_offset_bytes, data, WriteFlags::empty())
                        .await
                        .0
                }
                Err(e) => Err(e),
            };
            (leg, result)
        }
    });
    let mut written = 0;
    for (leg, result) in join_all(writes).await {
        match result {
            Ok(()) => written += 1,
            Err(e) => legs.fail(leg, &e),
        }
    }
    written
}

/// The block the copies of an unfinished write settle on: the one most of
/// them hold. Where they disagree, a copy that reads differently again is
/// left out: a read that flipped bits on the way must neither outvote the
/// copies nor become the adopted block, which every copy would then be
/// rewritten with. A copy that cannot be read again (its PV failed since,
/// on a write) still counts as first read.
async fn settle(
    legs: &Legs,
    copies: &[(usize, IoBufMut)],
    span_pe_offset_bytes: u64,
    at: usize,
) -> Option<Vec<u8>> {
    let blocks: Vec<&[u8]> = copies.iter().map(|(_, d)| &d[at..at + BLOCK]).collect();
    if blocks.iter().all(|block| *block == blocks[0]) {
        return Some(blocks[0].to_vec());
    }
    let mut stable: Vec<&[u8]> = Vec::with_capacity(copies.len());
    for ((leg, _), first) in copies.iter().zip(blocks) {
        let pe_offset = span_pe_offset_bytes + at as u64;
        let (result, again) = read_leg(legs, *leg, pe_offset, IoBufMut::zeroed(BLOCK)).await;
        match result {
            Ok(()) if again[..] != *first => continue,
            Ok(()) => {}
            Err(e) => legs.fail(*leg, &e),
        }
        stable.push(first);
    }
    (!stable.is_empty()).then(|| most_common(&stable))
}

/// The block most copies hold (the first of them on a tie).
fn most_common(blocks: &[&[u8]]) -> Vec<u8> {
    let count = |block: &[u8]| blocks.iter().filter(|other| **other == block).count();
    let mut best = blocks[0];
    for block in &blocks[1..] {
        if count(block) > count(best) {
            best = block;
        }
    }
    best.to_vec()
}

/// Whether a PV among `pvs` no longer holds an online copy of `spans`.
fn copies_lost(legs: &Legs, spans: &[Span], pvs: &[PvId]) -> bool {
    spans.iter().any(|span| {
        span.legs()
            .any(|leg| !legs.is_online(leg) && pvs.contains(&legs.legs[leg].pv))
    })
}

fn no_copy(span: Span) -> BlockError {
    BlockError::new(
        ErrorKind::Io,
        format!(
            "no copy of row {} column {} is readable (all its legs failed)",
            span.row, span.shard
        ),
    )
}

#[async_trait]
impl Redundancy for Mirrored {
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
            let at = offset_bytes + span.request_offset_bytes;
            self.read_span(legs, *span, at, part, check, repair, None, None)
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
        // Copies are written whole; nothing old is read.
        let spans: Vec<Span> = self
            .stripe()
            .spans(offset_bytes, data.len() as u64)
            .collect();
        self.log_records(legs, &spans, offset_bytes, Some(&data), check)
            .await?;
        let writes = spans.iter().map(|span| {
            let piece = data.slice(
                span.request_offset_bytes as usize
                    ..(span.request_offset_bytes + span.len_bytes) as usize,
            );
            async move {
                let copies: Vec<usize> = span.legs().filter(|&leg| legs.is_online(leg)).collect();
                let writes = copies.iter().map(|&leg| {
                    let piece = piece.clone();
                    async move {
                        let result = match legs.device(leg) {
                            Ok((device, base)) => {
                                device
                                    .write_at(base + span.pe_offset_bytes, piece, flags)
                                    .await
                                    .0
                            }
                            Err(e) => Err(e),
                        };
                        (leg, result)
                    }
                });
                let mut written = 0;
                for (leg, result) in join_all(writes).await {
                    match result {
                        Ok(()) => written += 1,
                        Err(e) => legs.fail(leg, &e),
                    }
                }
                if written == 0 {
                    Err(no_copy(*span))
                } else {
                    Ok(())
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
        let spans: Vec<Span> = self.stripe().spans(offset_bytes, len_bytes).collect();
        self.log_records(legs, &spans, offset_bytes, None, check)
            .await?;
        let zeroes = spans.iter().map(|span| async move {
            let targets = span
                .legs()
                .filter(|&leg| legs.is_online(leg))
                .map(|leg| async move {
                    let range =
                        |base: u64| ByteRange::new(base + span.pe_offset_bytes, span.len_bytes);
                    let result = match legs.device(leg) {
                        Ok((device, base)) => {
                            device.write_zeroes(range(base), ZeroFlags::NO_HOLE).await
                        }
                        Err(e) => Err(e),
                    };
                    (leg, result)
                });
            let mut zeroed = 0;
            for (leg, result) in join_all(targets).await {
                match result {
                    Ok(()) => zeroed += 1,
                    Err(e) => legs.fail(leg, &e),
                }
            }
            if zeroed == 0 {
                Err(no_copy(*span))
            } else {
                Ok(())
            }
        });
        join_all(zeroes).await.into_iter().collect()
    }

    async fn release(&self, legs: &Legs, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        let spans: Vec<Span> = self.stripe().spans(offset_bytes, len_bytes).collect();
        let discards = spans
            .iter()
            .flat_map(|span| span.legs().map(move |leg| (leg, *span)))
            .map(|(leg, span)| async move {
                if let Ok((device, base)) = legs.device(leg) {
                    // Space back only: failing to punch costs space, not data.
                    if let Err(e) = device
                        .discard(ByteRange::new(base + span.pe_offset_bytes, span.len_bytes))
                        .await
                    {
                        tracing::warn!("releasing space on PV id {}: {e}", legs.legs[leg].pv);
                    }
                }
            });
        join_all(discards).await;
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
        // The pieces (one per stripe unit) are read at once: one after the
        // other, a striped leg's rebuild waited on a unit's read at a time.
        let reads = pieces.iter().zip(parts).map(|(piece, part)| async move {
            let LegContent::Data { offset_bytes, .. } = piece.content else {
                unreachable!("mirrors hold no parity");
            };
            let span = self.span_at(offset_bytes, piece.len_bytes);
            // The leg itself first (pvmove); without it, its copies (repair).
            let prefer = legs.is_online(leg).then_some(leg);
            let exclude = if prefer.is_some() { None } else { Some(leg) };
            let mut read = self
                .read_span(
                    legs,
                    span,
                    offset_bytes,
                    part,
                    check,
                    false,
                    prefer,
                    exclude,
                )
                .await;
            // A read that flipped bits on the way looks like damage: read
            // again before taking the copies as they stand.
            for attempt in 0..=REBUILD_REREADS {
                if !matches!(&read.0, Err(e) if e.kind() == ErrorKind::Corrupt) {
                    break;
                }
                let part = read.1;
                let reread_check = check.filter(|_| attempt < REBUILD_REREADS);
                read = self
                    .read_span(
                        legs,
                        span,
                        offset_bytes,
                        part,
                        reread_check,
                        false,
                        prefer,
                        exclude,
                    )
                    .await;
                if reread_check.is_none() && read.0.is_ok() {
                    mark_lost_blocks(check, offset_bytes, &read.1);
                }
            }
            read
        });
        let (result, buf) = join(join_all(reads).await, rest);
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
        let repair = mode != ScrubMode::Check;
        let mut report = ScrubReport::default();
        for span in self.stripe().spans(offset_bytes, len_bytes) {
            let span_offset = offset_bytes + span.request_offset_bytes;
            // Every online copy of the whole span.
            let mut copies: Vec<(usize, IoBufMut)> = Vec::new();
            for leg in span.legs().filter(|&leg| legs.is_online(leg)) {
                let (result, data) = read_leg(
                    legs,
                    leg,
                    span.pe_offset_bytes,
                    IoBufMut::zeroed(span.len_bytes as usize),
                )
                .await;
                match result {
                    Ok(()) => copies.push((leg, data)),
                    Err(e) => legs.fail(leg, &e),
                }
            }
            if copies.is_empty() {
                return Err(no_copy(span));
            }
            for at in (0..span.len_bytes as usize).step_by(BLOCK) {
                report.blocks_checked += 1;
                let block_offset = span_offset + at as u64;
                let matching = copies
                    .iter()
                    .find(|(_, data)| check.matches(block_offset, &data[at..at + BLOCK]))
                    .map(|(_, data)| data[at..at + BLOCK].to_vec());
                // Copies of an unfinished write differ without any of them
                // being damaged: settle on one, and count no mismatch. A
                // write recorded before the last start (integrity) says
                // which one; otherwise the copies vote.
                let resync = matching.is_none()
                    && mode == ScrubMode::Resync
                    && !check.known_bad(block_offset);
                let recorded = match resync {
                    true => self.recorded(legs, &copies, span.pe_offset_bytes, at, check),
                    false => None,
                };
                let settled = match recorded {
                    Some(recorded) => Some(recorded),
                    None if resync && copies.len() >= 2 => {
                        settle(legs, &copies, span.pe_offset_bytes, at).await
                    }
                    None => None,
                };
                if let Some(settled) = &settled {
                    report.adopted.push((block_offset, settled.clone()));
                }
                let good = matching.or(settled.clone());
                let disagree = |good: &[u8]| -> Vec<usize> {
                    copies
                        .iter()
                        .filter(|(_, data)| &data[at..at + BLOCK] != good)
                        .map(|(leg, _)| *leg)
                        .collect()
                };
                match good {
                    Some(good) => {
                        let bad = disagree(&good);
                        if settled.is_none() {
                            report.mismatches += bad.len() as u64;
                        }
                        if repair && !bad.is_empty() {
                            let pe_offset = span.pe_offset_bytes + at as u64;
                            report.repaired +=
                                rewrite(legs, &bad, pe_offset, IoBuf::copy_from(&good)).await
                                    as u64;
                        }
                    }
                    None => report.unrecoverable += 1,
                }
            }
        }
        Ok(report)
    }

    async fn barrier(&self) -> BlockResult<()> {
        Ok(())
    }

    async fn initialize(&self, _legs: &Legs) -> BlockResult<()> {
        // Copies need no agreement on bytes never written: reads of those
        // chunks never reach the legs.
        Ok(())
    }
}
