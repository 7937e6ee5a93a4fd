//! The journal's on-disk format, version 3: the header slots and the entry
//! header block, as bytes. Pure encode and decode, no I/O; the region and
//! ring layout around them is drawn in the module doc (`journal/mod.rs`).
//!
//! Every integer is little-endian. Both block kinds are exactly 4 KiB and
//! end with a CRC-32C of their first 4092 bytes, so a torn or foreign block
//! is never taken for a valid one. Decoding never panics on any input.
//!
//! ```text
//!  header slot (2 per region)          entry header block (first block of an entry)
//!   0 magic "BVJRNLHD"                  0 magic "BVJRNLEN"
//!   8 format version (u32)              8 format version (u32)
//!  12 reserved (u32, 0)                12 write count (u32, 1..=MAX_WRITES)
//!  16 PV id                            16 generation (the journal's)
//!  24 region bytes                     24 epoch (the set's, at logging)
//!  32 generation (random at format)    32 sequence (per journal, +1 per entry)
//!  40 epoch (raised by every recovery) 40 entry id (per set and epoch)
//!  48 header sequence (slot = seq % 2) 48 entry bytes (this block + payload)
//!  56 tail sequence                    56 row: PE's PV id, PE number, row
//!  64 tail offset (ring bytes)         80 payload CRC-32C (u32), reserved (u32)
//!  72 record ring bytes                84 kind (u32): 0 writes, 1 intent, 2 records
//!  80 record tail sequence             88 targets: (PV id, device offset, bytes) x n
//!  88 record tail offset (its ring)
//!  96 zeroes
//!  4092 CRC-32C of bytes 0..4092       4092 CRC-32C of bytes 0..4092
//! ```
//!
//! A *writes* entry's payload is the targets' bytes, in target order; an
//! *intent* entry's is the checksum table of a full-row write
//! (`intent.rs`), a *records* entry's the checksums of mirror writes
//! (`records.rs`): whole blocks, their size given by the entry bytes.
//! Version 2 added the kind (version 1 had zeroes there, and only writes
//! entries); version 3 the record ring at the region's end (older headers
//! have zeroes there: no record ring) and the records kind. This build
//! reads all three and writes 3.
//!
//! The magic, the version and the CRC's place are the same in every format
//! version, so a newer journal is recognized and refused, never overwritten.

use metadata::{PeAddr, PvId};

use super::entry::RowKey;

/// The unit of everything in the region: header slots, entries, payloads.
pub const BLOCK_BYTES: u64 = 4096;
/// The format this code writes; it reads this one and every older one.
pub const FORMAT_VERSION: u32 = 3;
/// Two header slots written in turn, so a torn header write leaves the
/// previous header intact.
pub const HEADER_SLOTS: u64 = 2;
/// Bytes before the ring: the header slots.
pub const HEADER_AREA_BYTES: u64 = HEADER_SLOTS * BLOCK_BYTES;

const HEADER_MAGIC: [u8; 8] = *b"BVJRNLHD";
const ENTRY_MAGIC: [u8; 8] = *b"BVJRNLEN";
const CRC_AT: usize = BLOCK_BYTES as usize - 4;
const TARGETS_AT: usize = 88;
const TARGET_BYTES: usize = 24;
/// Most in-place writes one entry can carry: what fits in its header block.
/// A row has at most 64 legs (one write per leg), so this is never the limit.
pub const MAX_WRITES: usize = (CRC_AT - TARGETS_AT) / TARGET_BYTES;

/// Why a block is not a valid header or entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a block of this kind at all (never written, or something else).
    NoMagic,
    /// The magic is there but the checksum fails: a torn or damaged block.
    BadChecksum,
    /// Checksummed, but written by another format version.
    UnsupportedVersion(u32),
    /// Checksummed, but the fields contradict each other.
    Invalid(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NoMagic => write!(f, "no magic"),
            DecodeError::BadChecksum => write!(f, "checksum mismatch"),
            DecodeError::UnsupportedVersion(v) => {
                write!(f, "format version {v} (this build reads {FORMAT_VERSION})")
            }
            DecodeError::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

/// The durable state of one journal: which entries are still live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    pub pv: PvId,
    pub region_bytes: u64,
    /// Chosen at random when the region is formatted; every entry carries
    /// it, so entries left by an earlier journal in the same place are
    /// never read as this journal's.
    pub generation: u64,
    /// The set's epoch when this journal was last recovered or formatted.
    pub epoch: u64,
    /// Counts header writes; the slot written is `header_seq % 2`, and the
    /// valid slot with the higher count is the current header.
    pub header_seq: u64,
    /// Sequence of the oldest entry not retired (the next one, if none).
    pub tail_seq: u64,
    /// Ring offset where that entry starts (or the ring start, if it
    /// wrapped).
    pub tail_offset_bytes: u64,
    /// Bytes of the record ring at the end of the region; 0 for none (a
    /// journal formatted by an older version, until it is next emptied).
    pub records_bytes: u64,
    /// The record ring's oldest record entry not retired, and where it
    /// starts in that ring.
    pub records_tail_seq: u64,
    pub records_tail_offset_bytes: u64,
}

impl JournalHeader {
    /// The slot this header is written to.
    pub fn slot(&self) -> u64 {
        self.header_seq % HEADER_SLOTS
    }

    pub fn encode(&self) -> [u8; BLOCK_BYTES as usize] {
        let mut block = [0u8; BLOCK_BYTES as usize];
        block[0..8].copy_from_slice(&HEADER_MAGIC);
        put_u32(&mut block, 8, FORMAT_VERSION);
        put_u64(&mut block, 16, self.pv);
        put_u64(&mut block, 24, self.region_bytes);
        put_u64(&mut block, 32, self.generation);
        put_u64(&mut block, 40, self.epoch);
        put_u64(&mut block, 48, self.header_seq);
        put_u64(&mut block, 56, self.tail_seq);
        put_u64(&mut block, 64, self.tail_offset_bytes);
        put_u64(&mut block, 72, self.records_bytes);
        put_u64(&mut block, 80, self.records_tail_seq);
        put_u64(&mut block, 88, self.records_tail_offset_bytes);
        seal(&mut block);
        block
    }

    pub fn decode(block: &[u8]) -> Result<JournalHeader, DecodeError> {
        open_block(block, &HEADER_MAGIC)?;
        Ok(JournalHeader {
            pv: get_u64(block, 16),
            region_bytes: get_u64(block, 24),
            generation: get_u64(block, 32),
            epoch: get_u64(block, 40),
            header_seq: get_u64(block, 48),
            tail_seq: get_u64(block, 56),
            tail_offset_bytes: get_u64(block, 64),
            records_bytes: get_u64(block, 72),
            records_tail_seq: get_u64(block, 80),
            records_tail_offset_bytes: get_u64(block, 88),
        })
    }
}

/// What an entry's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// The bytes of every target: replayed after a crash.
    Writes,
    /// The checksum table of a full-row write (`payload_bytes` of it):
    /// nothing to replay; recovery makes the row consistent again.
    Intent { payload_bytes: u64 },
    /// The checksums of mirror writes, in the record ring (`records.rs`):
    /// nothing to replay; recovery settles their copies.
    Records { payload_bytes: u64 },
}

/// One in-place write an entry carries: where its payload bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub pv: PvId,
    pub offset_bytes: u64,
    pub len_bytes: u64,
}

/// The first block of an entry; its payload (the targets' bytes, in target
/// order) follows in the next blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    pub generation: u64,
    pub epoch: u64,
    pub seq: u64,
    pub id: u64,
    pub row: RowKey,
    pub payload_crc: u32,
    pub kind: EntryKind,
    pub targets: Vec<Target>,
}

impl EntryHeader {
    pub fn payload_bytes(&self) -> u64 {
        match self.kind {
            EntryKind::Writes => self.targets.iter().map(|t| t.len_bytes).sum(),
            EntryKind::Intent { payload_bytes } | EntryKind::Records { payload_bytes } => {
                payload_bytes
            }
        }
    }

    /// The whole entry: this block and the payload.
    pub fn entry_bytes(&self) -> u64 {
        BLOCK_BYTES + self.payload_bytes()
    }

    /// Encodes into `block` (4 KiB). The targets must already be valid
    /// (the caller validated the entry): that is asserted, not returned.
    pub fn encode_into(&self, block: &mut [u8]) {
        assert_eq!(block.len(), BLOCK_BYTES as usize, "entry header block size");
        assert!(
            (1..=MAX_WRITES).contains(&self.targets.len()),
            "an entry carries 1..={MAX_WRITES} writes, not {}",
            self.targets.len()
        );
        block.fill(0);
        block[0..8].copy_from_slice(&ENTRY_MAGIC);
        put_u32(block, 8, FORMAT_VERSION);
        put_u32(block, 12, self.targets.len() as u32);
        put_u64(block, 16, self.generation);
        put_u64(block, 24, self.epoch);
        put_u64(block, 32, self.seq);
        put_u64(block, 40, self.id);
        put_u64(block, 48, self.entry_bytes());
        put_u64(block, 56, self.row.pe.pv);
        put_u64(block, 64, self.row.pe.pe);
        put_u64(block, 72, self.row.row);
        put_u32(block, 80, self.payload_crc);
        let kind = match self.kind {
            EntryKind::Writes => 0,
            EntryKind::Intent { payload_bytes } => {
                assert!(
                    payload_bytes > 0 && payload_bytes.is_multiple_of(BLOCK_BYTES),
                    "an intent's payload is whole blocks"
                );
                1
            }
            EntryKind::Records { payload_bytes } => {
                assert!(
                    payload_bytes > 0 && payload_bytes.is_multiple_of(BLOCK_BYTES),
                    "a records payload is whole blocks"
                );
                2
            }
        };
        put_u32(block, 84, kind);
        for (i, target) in self.targets.iter().enumerate() {
            let at = TARGETS_AT + i * TARGET_BYTES;
            put_u64(block, at, target.pv);
            put_u64(block, at + 8, target.offset_bytes);
            put_u64(block, at + 16, target.len_bytes);
        }
        seal(block);
    }

    /// Decodes and checks the block on its own. Whether the entry is the
    /// one expected at this place (generation, epoch, sequence) and whether
    /// its payload matches is the scanner's business.
    pub fn decode(block: &[u8]) -> Result<EntryHeader, DecodeError> {
        open_block(block, &ENTRY_MAGIC)?;
        let count = get_u32(block, 12) as usize;
        if count == 0 || count > MAX_WRITES {
            return Err(DecodeError::Invalid("write count out of range"));
        }
        let mut targets = Vec::with_capacity(count);
        let mut payload_bytes = 0u64;
        for i in 0..count {
            let at = TARGETS_AT + i * TARGET_BYTES;
            let target = Target {
                pv: get_u64(block, at),
                offset_bytes: get_u64(block, at + 8),
                len_bytes: get_u64(block, at + 16),
            };
            if target.len_bytes == 0
                || !target.len_bytes.is_multiple_of(BLOCK_BYTES)
                || !target.offset_bytes.is_multiple_of(BLOCK_BYTES)
                || target.offset_bytes.checked_add(target.len_bytes).is_none()
            {
                return Err(DecodeError::Invalid("target not block-aligned"));
            }
            payload_bytes = payload_bytes
                .checked_add(target.len_bytes)
                .ok_or(DecodeError::Invalid("payload size overflows"))?;
            targets.push(target);
        }
        let entry_bytes = get_u64(block, 48);
        let version = get_u32(block, 8);
        let table_bytes = || {
            let payload_bytes = entry_bytes.saturating_sub(BLOCK_BYTES);
            if payload_bytes == 0 || !payload_bytes.is_multiple_of(BLOCK_BYTES) {
                return Err(DecodeError::Invalid("checksum payload not whole blocks"));
            }
            Ok(payload_bytes)
        };
        let kind = match get_u32(block, 84) {
            0 => {
                if BLOCK_BYTES.checked_add(payload_bytes) != Some(entry_bytes) {
                    return Err(DecodeError::Invalid("entry size disagrees with targets"));
                }
                EntryKind::Writes
            }
            1 if version >= 2 => EntryKind::Intent {
                payload_bytes: table_bytes()?,
            },
            2 if version >= 3 => EntryKind::Records {
                payload_bytes: table_bytes()?,
            },
            _ => return Err(DecodeError::Invalid("unknown entry kind")),
        };
        Ok(EntryHeader {
            generation: get_u64(block, 16),
            epoch: get_u64(block, 24),
            seq: get_u64(block, 32),
            id: get_u64(block, 40),
            row: RowKey {
                pe: PeAddr {
                    pv: get_u64(block, 56),
                    pe: get_u64(block, 64),
                },
                row: get_u64(block, 72),
            },
            payload_crc: get_u32(block, 80),
            kind,
            targets,
        })
    }
}

/// Checks magic, checksum and version, in that order: the magic tells
/// "nothing here" from "a damaged block", and the version is trusted only
/// once the checksum says the block is whole.
fn open_block(block: &[u8], magic: &[u8; 8]) -> Result<(), DecodeError> {
    if block.len() != BLOCK_BYTES as usize {
        return Err(DecodeError::Invalid("not a 4 KiB block"));
    }
    if block[0..8] != magic[..] {
        return Err(DecodeError::NoMagic);
    }
    if crc32c::crc32c(&block[..CRC_AT]) != get_u32(block, CRC_AT) {
        return Err(DecodeError::BadChecksum);
    }
    match get_u32(block, 8) {
        1..=FORMAT_VERSION => Ok(()),
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

fn seal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..CRC_AT]);
    put_u32(block, CRC_AT, crc);
}

/// CRC-32C of a payload given as pieces, as if they were one buffer.
pub fn payload_crc<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    pieces.into_iter().fold(0, crc32c::crc32c_append)
}

fn put_u32(block: &mut [u8], at: usize, value: u32) {
    block[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(block: &mut [u8], at: usize, value: u64) {
    block[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Reads a field of a block already known to be 4 KiB long.
fn get_u32(block: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&block[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn get_u64(block: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&block[at..at + 8]);
    u64::from_le_bytes(bytes)
}
