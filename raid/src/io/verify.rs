//! Small pieces shared by the layouts: splitting a buffer into per-span
//! parts and joining it back, and finding the blocks that fail a check.

use blockvirt::volume::{BlockCheck, ReadReport, CHECKSUM_BLOCK_BYTES};
use blockvirt::{BlockError, BlockResult, ErrorKind, IoBufMut};

pub(crate) const BLOCK: usize = CHECKSUM_BLOCK_BYTES;

/// Splits `buf` into consecutive parts of `lens` bytes (which must add up
/// to its length).
pub(crate) fn split(
    mut buf: IoBufMut,
    lens: impl Iterator<Item = usize>,
) -> (Vec<IoBufMut>, IoBufMut) {
    let parts = lens.map(|len| buf.split_to(len)).collect();
    (parts, buf)
}

/// Joins parts from [`split`] back in order, merging their reports; the
/// first error wins.
pub(crate) fn join(
    results: Vec<(BlockResult<ReadReport>, IoBufMut)>,
    rest: IoBufMut,
) -> (BlockResult<ReadReport>, IoBufMut) {
    let mut outcome: BlockResult<ReadReport> = Ok(ReadReport::default());
    let mut whole: Option<IoBufMut> = None;
    for (result, part) in results {
        match (&mut outcome, result) {
            (Ok(total), Ok(report)) => total.mismatches += report.mismatches,
            (Ok(_), Err(e)) => outcome = Err(e),
            (Err(_), _) => {}
        }
        match whole.as_mut() {
            Some(joined) => joined.unsplit(part),
            None => whole = Some(part),
        }
    }
    match whole {
        Some(mut joined) => {
            joined.unsplit(rest);
            (outcome, joined)
        }
        None => (outcome, rest),
    }
}

/// Indexes of the 4 KiB blocks of `data`, at extent offset `offset_bytes`,
/// that fail `check`.
pub(crate) fn failing_blocks(check: &dyn BlockCheck, offset_bytes: u64, data: &[u8]) -> Vec<usize> {
    data.chunks(BLOCK)
        .enumerate()
        .filter(|(i, block)| !check.matches(offset_bytes + (i * BLOCK) as u64, block))
        .map(|(i, _)| i)
        .collect()
}

/// The error for a block nothing vouches for.
pub(crate) fn unrecoverable(offset_bytes: u64) -> BlockError {
    BlockError::new(
        ErrorKind::Corrupt,
        format!("block at extent offset {offset_bytes}: no copy matches its checksum"),
    )
}
