//! Device I/O for the journal: reads and writes split at the device's
//! largest transfer, with errors that name the PV and the purpose.

use std::sync::Arc;

use blockvirt::{BlockDevice, BlockResult, IoBuf, IoBufMut, WriteFlags};
use metadata::PvId;

use super::format::BLOCK_BYTES;

/// The largest piece sent to `device` at once, in whole blocks.
fn piece_bytes(device: &dyn BlockDevice) -> usize {
    let max = device.info().io_bytes_max as u64 / BLOCK_BYTES * BLOCK_BYTES;
    max.max(BLOCK_BYTES) as usize
}

/// Writes all of `buf` at `offset_bytes`, in pieces the device accepts.
/// Each piece carries `flags`.
pub async fn write_all(
    device: &Arc<dyn BlockDevice>,
    pv: PvId,
    what: &str,
    offset_bytes: u64,
    buf: IoBuf,
    flags: WriteFlags,
) -> BlockResult<()> {
    let piece = piece_bytes(device.as_ref());
    let mut done = 0usize;
    while done < buf.len() {
        let len = piece.min(buf.len() - done);
        let at = offset_bytes + done as u64;
        let (result, _) = device
            .write_at(at, buf.slice(done..done + len), flags)
            .await;
        result.map_err(|e| e.context_prefix(format_args!("PV id {pv}: {what}")))?;
        done += len;
    }
    Ok(())
}

/// Reads `len_bytes` at `offset_bytes` into a new aligned buffer.
pub async fn read_exact(
    device: &Arc<dyn BlockDevice>,
    pv: PvId,
    what: &str,
    offset_bytes: u64,
    len_bytes: u64,
) -> BlockResult<IoBuf> {
    let piece = piece_bytes(device.as_ref());
    let mut rest = IoBufMut::zeroed(len_bytes as usize);
    let mut filled: Option<IoBufMut> = None;
    let mut at = offset_bytes;
    while !rest.is_empty() {
        let len = piece.min(rest.len());
        let part = rest.split_to(len);
        let (result, part) = device.read_at(at, part).await;
        result.map_err(|e| e.context_prefix(format_args!("PV id {pv}: {what}")))?;
        at += len as u64;
        match filled.as_mut() {
            Some(head) => head.unsplit(part),
            None => filled = Some(part),
        }
    }
    Ok(filled.unwrap_or(rest).freeze())
}
