//! One batch of requests run concurrently against the volume (perhaps cut
//! short by a power loss), and the verdict on what came back.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use blockvirt::testing::SimDisk;
use blockvirt::volume::{PvSet, ThinVolume};
use blockvirt::{
    BlockDevice, BlockError, ByteRange, Checked, ErrorKind, IoBufMut, WriteFlags, ZeroFlags,
};
use futures::future::join_all;

use crate::model::{content, Ended, Model, Mutation, Tag, BLOCK};
use crate::ops::{Op, Shape};

/// Simulated time a batch may take; beyond it the volume is deadlocked.
const BATCH_LIMIT: Duration = Duration::from_secs(600);

/// A request's result: the bytes of a read, nothing for the others.
pub type Outcome = Result<Option<Vec<u8>>, BlockError>;

/// How many disks have gone bad, against what the layout survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Fewer bad disks than the layout tolerates (or none).
    Sound,
    /// As many as it tolerates: fragile blocks may fail to read.
    AtTolerance,
    /// More: anything may fail, but no read may return wrong bytes.
    Beyond,
}

/// Runs `ops` concurrently. With `crash_after`, the power fails that much
/// (simulated) time into the batch, or at its end if it is done sooner;
/// requests still running then are `None`.
pub async fn run_batch(
    volume: &Checked<ThinVolume>,
    pvs: &PvSet,
    ops: &[Op],
    crash_after: Option<(Duration, &[Arc<SimDisk>])>,
) -> Vec<Option<Outcome>> {
    let done: RefCell<Vec<Option<Outcome>>> = RefCell::new(ops.iter().map(|_| None).collect());
    let all = join_all(ops.iter().enumerate().map(|(i, op)| {
        let done = &done;
        async move {
            let outcome = run_op(volume, pvs, op).await;
            done.borrow_mut()[i] = Some(outcome);
        }
    }));
    let all = tokio::time::timeout(BATCH_LIMIT, all);
    let deadlock =
        || panic!("a batch ran over {BATCH_LIMIT:?} of simulated time (deadlock?): {ops:?}");
    match crash_after {
        None => {
            if all.await.is_err() {
                deadlock();
            }
        }
        Some((delay, disks)) => {
            tokio::select! {
                biased;
                finished = all => if finished.is_err() { deadlock() },
                () = tokio::time::sleep(delay) => {}
            }
            for disk in disks {
                disk.crash();
            }
        }
    }
    done.into_inner()
}

async fn run_op(volume: &Checked<ThinVolume>, pvs: &PvSet, op: &Op) -> Outcome {
    let lv = volume.inner();
    match *op {
        Op::Read { at, len } => {
            let (result, buf) = volume.read_at(at, IoBufMut::zeroed(len as usize)).await;
            result.map(|()| Some(buf.to_vec()))
        }
        Op::Write { at, len, tag, fua } => {
            let mut buf = IoBufMut::zeroed(len as usize);
            for (i, block) in buf.chunks_mut(BLOCK as usize).enumerate() {
                content(tag, at / BLOCK + i as u64, block);
            }
            let flags = if fua {
                WriteFlags::FUA
            } else {
                WriteFlags::empty()
            };
            volume
                .write_at(at, buf.freeze(), flags)
                .await
                .0
                .map(|()| None)
        }
        Op::Discard { at, len } => volume.discard(ByteRange::new(at, len)).await.map(|()| None),
        Op::Zeroes { at, len, flags } => volume
            .write_zeroes(ByteRange::new(at, len), flags)
            .await
            .map(|()| None),
        Op::Flush => volume.flush().await.map(|()| None),
        Op::Scrub { le } => {
            let report = lv.scrub_extent(le, true).await?;
            if report.unrecoverable > 0 {
                return Err(BlockError::new(
                    ErrorKind::Corrupt,
                    format!("scrub of extent {le}: {report:?}"),
                ));
            }
            Ok(None)
        }
        Op::Repair => {
            for le in lv.degraded_extents().await {
                lv.replace_legs(le, |pe| pvs.is_failed(pe.pv)).await?;
            }
            Ok(None)
        }
        Op::Move { le, leg } => {
            if let Some(placement) = lv.placement(le).await {
                let pv = placement[leg % placement.len()].pv;
                lv.replace_legs(le, |pe| pe.pv == pv).await?;
            }
            Ok(None)
        }
    }
}

/// Judges a batch's outcomes against the model, then moves the model on.
pub fn judge(
    model: &mut Model,
    shape: &Shape,
    health: Health,
    ops: &[Op],
    outcomes: &[Option<Outcome>],
    tags_issued: Tag,
) -> Result<(), String> {
    let racing: Vec<Mutation> = ops.iter().filter_map(|op| op.mutation(shape)).collect();
    let raced = |lba: u64| racing.iter().any(|m| m.blocks.contains(&lba));
    let mut seen = Vec::new();
    let mut expected = vec![0u8; BLOCK as usize];
    for (op, outcome) in ops.iter().zip(outcomes) {
        match outcome {
            None | Some(Ok(None)) => {}
            Some(Ok(Some(data))) => {
                let first = op.reach(shape).start;
                for (i, got) in data.chunks(BLOCK as usize).enumerate() {
                    let lba = first + i as u64;
                    let allowed = model.allowed(lba, &racing);
                    let found = allowed.iter().find(|&tag| {
                        content(tag, lba, &mut expected);
                        got == &expected[..]
                    });
                    match found {
                        Some(tag) if !raced(lba) => seen.push((lba, tag)),
                        Some(_) => {}
                        None => {
                            return Err(format!(
                                "{op:?}: block {lba} (extent {}, byte {} in it) holds {}; allowed: tags {:?}",
                                lba * BLOCK / shape.extent,
                                lba * BLOCK % shape.extent,
                                identify(lba, got, tags_issued),
                                allowed
                            ))
                        }
                    }
                }
            }
            Some(Err(e)) => {
                if !error_allowed(model, shape, health, op, e) {
                    return Err(format!("{op:?} failed ({health:?}): {e}"));
                }
            }
        }
    }
    let flushed = ops
        .iter()
        .zip(outcomes)
        .any(|(op, outcome)| matches!((op, outcome), (Op::Flush, Some(Ok(_)))));
    let mutations: Vec<(Mutation, Ended)> = ops
        .iter()
        .zip(outcomes)
        .filter_map(|(op, outcome)| {
            let ended = match outcome {
                None => Ended::Unfinished,
                Some(Ok(_)) => Ended::Ok,
                Some(Err(e)) if refused(op, e) => Ended::Refused,
                Some(Err(_)) => Ended::Failed,
            };
            op.mutation(shape).map(|m| (m, ended))
        })
        .collect();
    model.end_batch(flushed, &mutations, &seen)
}

/// A fast write-zeroes may refuse, changing nothing.
fn refused(op: &Op, err: &BlockError) -> bool {
    matches!(op, Op::Zeroes { flags, .. } if flags.contains(ZeroFlags::FAST))
        && err.kind() == ErrorKind::Unsupported
}

fn error_allowed(model: &Model, shape: &Shape, health: Health, op: &Op, err: &BlockError) -> bool {
    if health == Health::Beyond || refused(op, err) {
        return true;
    }
    // Moving a leg needs a PV outside the extent's other legs.
    if matches!(op, Op::Move { .. }) && err.kind() == ErrorKind::NoSpace {
        return true;
    }
    let reads_data = matches!(
        op,
        Op::Read { .. } | Op::Scrub { .. } | Op::Repair | Op::Move { .. }
    );
    reads_data && health == Health::AtTolerance && model.is_fragile(op.reach(shape))
}

/// Names what a block holds (the write it is closest to), for failure
/// messages.
fn identify(lba: u64, got: &[u8], tags_issued: Tag) -> String {
    let mut expected = vec![0u8; BLOCK as usize];
    let (tag, differing) = (0..=tags_issued)
        .map(|tag| {
            content(tag, lba, &mut expected);
            let differing = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
            (tag, differing)
        })
        .min_by_key(|&(_, differing)| differing)
        .expect("tag 0 at least");
    match differing {
        0 => format!("tag {tag}"),
        n => format!("tag {tag} with {n} bytes changed"),
    }
}
