//! A journal's region on its PV: checking it, reading its current header,
//! formatting it.
//!
//! ```text
//!  region: | header slot 0 | header slot 1 | stripe ring ... | record ring |
//! ```
//!
//! Opening picks the valid slot with the higher header sequence; the other
//! slot is the header from before the last header write, which a torn
//! write leaves intact. A region where neither slot is valid holds no
//! journal and is formatted. One holding another PV's journal, or a newer
//! format, is refused and left as it is.
//!
//! Crash-ordering rule: a format is one FUA write of both slots, done
//! before the journal is used.
//!
//! Why a header write is read back: falling back to the older slot is
//! right only when the newer write was torn by a crash, before it counted.
//! A disk that silently spoils or misdirects the write would otherwise let
//! the header count (entries retired, their ring space reused) while the
//! next opening finds the older slot: retired entries found again would
//! roll rows back over data written since. So a header counts only once it
//! reads back as written.

use std::sync::Arc;

use blockvirt::{
    BlockDevice, BlockError, BlockResult, ByteRange, ErrorKind, IoBuf, IoBufMut, WriteFlags,
};
use metadata::PvId;

use super::format::{DecodeError, JournalHeader, BLOCK_BYTES, FORMAT_VERSION, HEADER_AREA_BYTES};
use super::io::{read_exact, write_all};
use super::records::records_ring_bytes;
use super::MIN_REGION_BYTES;

/// Refuses a region that is unaligned, too small or outside the device.
pub(super) fn check_region(
    pv: PvId,
    device: &dyn BlockDevice,
    region: ByteRange,
) -> BlockResult<()> {
    let inside = region
        .end_bytes()
        .is_some_and(|end| end <= device.info().size_bytes);
    if !region.offset_bytes.is_multiple_of(BLOCK_BYTES)
        || !region.len_bytes.is_multiple_of(BLOCK_BYTES)
        || region.len_bytes < MIN_REGION_BYTES
        || !inside
    {
        return Err(BlockError::new(
            ErrorKind::InvalidArgument,
            format!(
                "journal region {}+{} of PV id {pv}: needs whole 4 KiB blocks, at least {MIN_REGION_BYTES} bytes, inside the device",
                region.offset_bytes, region.len_bytes
            ),
        ));
    }
    Ok(())
}

/// Reads the current header of a region (already checked), or formats the
/// region if neither slot holds a valid one.
pub(super) async fn open_region(
    pv: PvId,
    device: &Arc<dyn BlockDevice>,
    region: ByteRange,
) -> BlockResult<JournalHeader> {
    let slots = read_exact(
        device,
        pv,
        "journal header read",
        region.offset_bytes,
        HEADER_AREA_BYTES,
    )
    .await?;
    let mut current: Option<JournalHeader> = None;
    for block in slots.chunks(BLOCK_BYTES as usize) {
        match JournalHeader::decode(block) {
            Ok(header) => {
                if header.pv != pv || header.region_bytes != region.len_bytes {
                    return Err(BlockError::new(
                        ErrorKind::Corrupt,
                        format!(
                            "journal region of PV id {pv} ({} bytes) holds the journal of PV id {} ({} bytes)",
                            region.len_bytes, header.pv, header.region_bytes
                        ),
                    ));
                }
                if current.is_none_or(|c| header.header_seq > c.header_seq) {
                    current = Some(header);
                }
            }
            Err(DecodeError::UnsupportedVersion(version)) => {
                return Err(BlockError::new(
                    ErrorKind::Unsupported,
                    format!("journal of PV id {pv} has format version {version}; this build reads versions 1 to {FORMAT_VERSION}"),
                ));
            }
            // A slot never written, or torn while being written: the other
            // slot holds the header from before that write.
            Err(_) => {}
        }
    }
    let after_slots = region.len_bytes - HEADER_AREA_BYTES;
    let misplaced =
        |offset: u64, capacity: u64| offset >= capacity || !offset.is_multiple_of(BLOCK_BYTES);
    match current {
        Some(header)
            if header.records_bytes > after_slots / 2
                || !header.records_bytes.is_multiple_of(BLOCK_BYTES)
                || misplaced(header.tail_offset_bytes, after_slots - header.records_bytes)
                || (header.records_bytes > 0
                    && misplaced(header.records_tail_offset_bytes, header.records_bytes)) =>
        {
            Err(BlockError::new(
                ErrorKind::Corrupt,
                format!(
                    "journal of PV id {pv}: tails at ring offsets {} and {} (records) of a region with a {}-byte record ring",
                    header.tail_offset_bytes, header.records_tail_offset_bytes, header.records_bytes
                ),
            ))
        }
        Some(header) => Ok(header),
        None => {
            tracing::info!("PV id {pv}: no journal in its region; formatting one");
            format_region(pv, device, region, 0).await
        }
    }
}

/// Writes an empty journal: slot 0 holds the header, slot 1 is cleared so
/// no older header there can win.
pub(super) async fn format_region(
    pv: PvId,
    device: &Arc<dyn BlockDevice>,
    region: ByteRange,
    epoch: u64,
) -> BlockResult<JournalHeader> {
    let header = JournalHeader {
        pv,
        region_bytes: region.len_bytes,
        generation: random_generation(pv),
        epoch,
        header_seq: 0,
        tail_seq: 0,
        tail_offset_bytes: 0,
        records_bytes: records_ring_bytes(region.len_bytes),
        records_tail_seq: 0,
        records_tail_offset_bytes: 0,
    };
    let mut slots = IoBufMut::zeroed(HEADER_AREA_BYTES as usize);
    slots[..BLOCK_BYTES as usize].copy_from_slice(&header.encode());
    write_all(
        device,
        pv,
        "journal format",
        region.offset_bytes,
        slots.freeze(),
        WriteFlags::FUA,
    )
    .await?;
    Ok(header)
}

/// Attempts at a header write that does not read back as written, before
/// giving up: a read-back can be spoiled on its own, a write retried.
const HEADER_WRITE_ATTEMPTS: usize = 3;

/// Writes `header` into its slot with FUA and reads it back; fails unless
/// the slot holds exactly `header`.
pub(super) async fn write_header(
    device: &Arc<dyn BlockDevice>,
    region: ByteRange,
    header: &JournalHeader,
) -> BlockResult<()> {
    let pv = header.pv;
    let block = header.encode();
    let at = region.offset_bytes + header.slot() * BLOCK_BYTES;
    for _ in 0..HEADER_WRITE_ATTEMPTS {
        let buf = IoBuf::copy_from(&block);
        write_all(device, pv, "journal header write", at, buf, WriteFlags::FUA).await?;
        let back = read_exact(device, pv, "journal header read-back", at, BLOCK_BYTES).await?;
        if back[..] == block[..] {
            return Ok(());
        }
        tracing::warn!(
            "PV id {pv}: journal header slot {} did not read back as written",
            header.slot()
        );
    }
    Err(BlockError::new(
        ErrorKind::Corrupt,
        format!(
            "PV id {pv}: journal header slot {} did not read back as written after {HEADER_WRITE_ATTEMPTS} attempts",
            header.slot()
        ),
    ))
}

/// A generation unlikely to equal that of any journal written before in
/// the same place: the process's random hash keys, the time and the PV.
fn random_generation(pv: PvId) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(pv);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.finish()
}
