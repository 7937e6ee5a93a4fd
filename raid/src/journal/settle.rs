//! Settling an intent's row at recovery: each 4 KiB column made
//! consistent with every data block its old or new version (the rules are
//! in `intent.rs`).

use std::collections::BTreeSet;

use blockvirt::volume::PvSet;
use blockvirt::{IoBuf, WriteFlags};
use futures::future::join_all;
use metadata::PvId;

use super::entry::{in_data_area, RecoveryReport};
use super::format::{EntryHeader, BLOCK_BYTES};
use super::intent::RowIntent;
use super::io::{read_exact, write_all};
use crate::codec::ErasureCodec;

const BLOCK: usize = BLOCK_BYTES as usize;

/// What one data block holds, against the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    New,
    Old,
    /// Neither version (or its leg lost): to be rebuilt.
    Unknown,
}

/// Makes the row of an intent entry consistent (module doc). Reads and
/// writes its targets on the PVs that are online; a PV that fails an I/O
/// is marked failed. PVs written go into `touched` (flushed by the caller).
pub(super) async fn settle(
    pvs: &PvSet,
    header: &EntryHeader,
    intent: &RowIntent,
    report: &mut RecoveryReport,
    touched: &mut BTreeSet<PvId>,
) {
    let Some(codec) = intent.codec() else {
        report.entries_invalid += 1;
        return;
    };
    let n = intent.shards();
    let len = intent.blocks() * BLOCK;
    if header.targets.iter().any(|t| t.len_bytes != len as u64) {
        report.entries_invalid += 1;
        return;
    }
    // Each shard's bytes as they are on disk; None where lost.
    let reads = join_all((0..n).map(|shard| async move {
        let target = header.targets[intent.writes[shard]?];
        if pvs.is_failed(target.pv) {
            return None;
        }
        let handle = pvs.get(target.pv).ok()?;
        if !in_data_area(&handle, target.offset_bytes, target.len_bytes) {
            return None;
        }
        match read_exact(
            &handle.device,
            target.pv,
            "intent settle",
            target.offset_bytes,
            target.len_bytes,
        )
        .await
        {
            Ok(bytes) => Some(bytes.to_vec()),
            Err(e) => {
                pvs.fail(target.pv, &format!("intent settle: {e}"));
                None
            }
        }
    }))
    .await;
    let present: Vec<bool> = reads.iter().map(Option::is_some).collect();
    let mut shards: Vec<Vec<u8>> = reads
        .into_iter()
        .map(|r| r.unwrap_or_else(|| vec![0u8; len]))
        .collect();
    // (shard, block) pairs to write back.
    let mut rewrite: Vec<(usize, usize)> = Vec::new();
    for b in 0..intent.blocks() {
        match settle_column(codec.as_ref(), intent, &mut shards, &present, b) {
            Ok(changed) => rewrite.extend(changed.into_iter().map(|s| (s, b))),
            Err(unsettled) => report.intent_blocks_unsettled += unsettled,
        }
    }
    let mut writes = Vec::new();
    for (s, b) in rewrite {
        let target = header.targets[intent.writes[s].expect("present shards have a write")];
        let Ok(handle) = pvs.get(target.pv) else {
            continue;
        };
        let block = IoBuf::copy_from(&shards[s][b * BLOCK..(b + 1) * BLOCK]);
        writes.push((
            target.pv,
            handle.device,
            target.offset_bytes + (b * BLOCK) as u64,
            block,
        ));
    }
    let results = join_all(
        writes
            .into_iter()
            .map(|(pv, device, at, block)| async move {
                let result =
                    write_all(&device, pv, "intent settle", at, block, WriteFlags::empty()).await;
                (pv, result)
            }),
    )
    .await;
    for (pv, result) in results {
        touched.insert(pv);
        match result {
            Ok(()) => report.intent_blocks_rewritten += 1,
            Err(e) => pvs.fail(pv, &format!("intent settle: {e}")),
        }
    }
    report.intents_settled += 1;
}

/// Makes column `b` of `shards` consistent (module doc); returns the
/// present shards whose block changed, or how many blocks it could not
/// settle.
fn settle_column(
    codec: &dyn ErasureCodec,
    intent: &RowIntent,
    shards: &mut [Vec<u8>],
    present: &[bool],
    b: usize,
) -> Result<Vec<usize>, u64> {
    let (k, n) = (intent.data_shards, intent.shards());
    let at = b * BLOCK;
    let crc = |shard: &[u8]| crc32c::crc32c(&shard[at..at + BLOCK]);
    if (0..n).all(|s| present[s] && crc(&shards[s]) == intent.new[s][b]) {
        return Ok(Vec::new());
    }
    let held = |s: usize, shard: &[u8]| {
        if !present[s] {
            return Held::Unknown;
        }
        let crc = crc(shard);
        if crc == intent.new[s][b] {
            Held::New
        } else if intent.old[s][b].is_none_or(|old| old == crc) {
            Held::Old
        } else {
            Held::Unknown
        }
    };
    let lost: Vec<usize> = (0..k)
        .filter(|&s| held(s, &shards[s]) == Held::Unknown)
        .collect();
    // Blocks that count as old only because any bytes do (their chunk was
    // never written, or known bad) may as well be rot: where the row
    // rebuilds them as their new version, that wins, and the rot never
    // goes into parity.
    let vague: Vec<usize> = (0..k)
        .filter(|&s| {
            present[s] && intent.old[s][b].is_none() && crc(&shards[s]) != intent.new[s][b]
        })
        .collect();
    let as_new = (!vague.is_empty()).then(|| {
        let both: Vec<usize> = lost.iter().chain(&vague).copied().collect();
        rebuild(codec, intent, shards, present, &both, b, &vague).map(|r| (both, r))
    });
    let (targets, rebuilt) = match as_new.flatten() {
        Some(found) => found,
        None if lost.is_empty() => (Vec::new(), Vec::new()),
        None => {
            let rebuilt =
                rebuild(codec, intent, shards, present, &lost, b, &[]).ok_or(lost.len() as u64)?;
            (lost, rebuilt)
        }
    };
    let mut changed = Vec::new();
    for (&s, block) in targets.iter().zip(rebuilt) {
        if shards[s][at..at + BLOCK] != block[..] {
            shards[s][at..at + BLOCK].copy_from_slice(&block);
            if present[s] {
                changed.push(s);
            }
        }
    }
    let mut parity = vec![vec![0u8; BLOCK]; n - k];
    {
        let inputs: Vec<&[u8]> = shards[..k].iter().map(|s| &s[at..at + BLOCK]).collect();
        let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
        codec.encode(&inputs, &mut outputs).map_err(|_| 1u64)?;
    }
    for (s, p) in (k..n).zip(&parity) {
        if present[s] && shards[s][at..at + BLOCK] != p[..] {
            shards[s][at..at + BLOCK].copy_from_slice(p);
            changed.push(s);
        }
    }
    Ok(changed)
}

/// Rebuilds data blocks `lost` of column `b` from the other data blocks
/// and a choice of parity blocks; the first choice under which every
/// rebuilt block is its old or new version (its new one, for those in
/// `must_be_new`) wins.
fn rebuild(
    codec: &dyn ErasureCodec,
    intent: &RowIntent,
    shards: &[Vec<u8>],
    present: &[bool],
    lost: &[usize],
    b: usize,
    must_be_new: &[usize],
) -> Option<Vec<Vec<u8>>> {
    let (k, n) = (intent.data_shards, intent.shards());
    let at = b * BLOCK;
    let parity: Vec<usize> = (k..n).filter(|&s| present[s]).collect();
    for choice in choices(&parity, lost.len()) {
        let mut column: Vec<Vec<u8>> = shards.iter().map(|s| s[at..at + BLOCK].to_vec()).collect();
        let use_shard: Vec<bool> = (0..n)
            .map(|s| {
                if s < k {
                    !lost.contains(&s)
                } else {
                    choice.contains(&s)
                }
            })
            .collect();
        let mut slices: Vec<&mut [u8]> = column.iter_mut().map(Vec::as_mut_slice).collect();
        if codec.reconstruct_data(&mut slices, &use_shard).is_err() {
            continue;
        }
        let verified = lost.iter().all(|&s| {
            let crc = crc32c::crc32c(&column[s]);
            crc == intent.new[s][b]
                || !must_be_new.contains(&s) && intent.old[s][b].is_none_or(|old| old == crc)
        });
        if verified {
            return Some(lost.iter().map(|&s| column[s].clone()).collect());
        }
    }
    None
}

/// Every subset of `items` with exactly `size` members.
fn choices(items: &[usize], size: usize) -> Vec<Vec<usize>> {
    if size == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        for mut rest in choices(&items[i + 1..], size - 1) {
            rest.insert(0, first);
            out.push(rest);
        }
    }
    out
}
