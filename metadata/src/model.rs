//! The records the metadata service keeps, and how they are keyed.
//!
//! Vocabulary is LVM's: a PV (physical volume) is a backing device split
//! into PEs (physical extents); a VG (volume group) pools PVs; an LV
//! (logical volume) is a virtual disk whose logical extents map to PEs.
//! Records are encoded with postcard behind a one-byte format version;
//! keys are big-endian ids so scans come back in id order.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{MetaError, MetaResult};
use crate::layout::Layout;

pub type PvId = u64;
pub type VgId = u64;
pub type LvId = u64;

/// Bits in [`ExtentEntry::written`]: an extent is tracked in 64 chunks.
pub const CHUNKS_PER_EXTENT: u64 = 64;

/// Default extent size (LVM's default PE size is also 4 MiB).
pub const DEFAULT_EXTENT_BYTES: u64 = 4 << 20;
/// Smallest extent: a 4 KiB chunk, the I/O block size.
pub const MIN_EXTENT_BYTES: u64 = 256 << 10;
/// Largest extent: keeps a chunk (extent / 64) at 1 MiB or less, so first
/// writes into a chunk do not amplify much.
pub const MAX_EXTENT_BYTES: u64 = 64 << 20;

/// The label area at the start of every PV.
pub const PV_LABEL_AREA_BYTES: u64 = 1 << 20;

/// Where a PV's extents start: after the label area and the PV's stripe
/// journal (1/64 of the PV, between 1 and 64 MiB, whole MiB), which
/// parity layouts use to close the write hole.
pub fn pv_data_offset(size_bytes: u64) -> u64 {
    PV_LABEL_AREA_BYTES + pv_journal_bytes(size_bytes)
}

/// The smallest PV (in whole MiB) that holds `pes` extents of `extent_bytes`.
pub fn pv_bytes_for(pes: u64, extent_bytes: u64) -> u64 {
    let mib = 1 << 20;
    let mut size = pes * extent_bytes + PV_LABEL_AREA_BYTES + mib;
    while size.saturating_sub(pv_data_offset(size)) / extent_bytes < pes {
        size += mib;
    }
    size
}

/// Size of the stripe journal of a PV of `size_bytes`.
pub fn pv_journal_bytes(size_bytes: u64) -> u64 {
    let mib = 1 << 20;
    (size_bytes / 64).clamp(mib, 64 * mib) / mib * mib
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PvRecord {
    pub id: PvId,
    pub uuid: Uuid,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub data_offset_bytes: u64,
    /// The VG this PV belongs to, and its PE count in that VG's extent size.
    pub vg: Option<VgId>,
    pub pe_count: u64,
    /// Set when the PV failed (I/O errors, gone): nothing is allocated on
    /// it any more, and its LVs run degraded until repaired.
    pub failed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgRecord {
    pub id: VgId,
    pub uuid: Uuid,
    pub name: String,
    /// The PE size.
    pub extent_bytes: u64,
    pub fault_policy: FaultPolicy,
}

/// What the server does when a PV of the VG fails (LVM's
/// `raid_fault_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FaultPolicy {
    /// Report the degraded LVs; repair waits for `lvconvert --repair`.
    #[default]
    Warn,
    /// Rebuild the lost legs onto free PEs of the other PVs at once.
    Allocate,
}

impl FaultPolicy {
    pub fn name(self) -> &'static str {
        match self {
            FaultPolicy::Warn => "warn",
            FaultPolicy::Allocate => "allocate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvRecord {
    pub id: LvId,
    pub uuid: Uuid,
    pub vg: VgId,
    pub name: String,
    pub size_bytes: u64,
    /// Thin LVs get extents on first write; thick ones at creation.
    pub thin: bool,
    pub layout: Layout,
    /// Bumped at every lease grant; a commit carrying an older epoch is fenced.
    pub epoch: u64,
    /// Bytes per second a repair, pvmove or scrub copies or checks of each
    /// leg at most (LVM's `--maxrecoveryrate`); 0: as fast as it can.
    pub max_recovery_rate: u64,
    /// Mirror writes log their checksums ahead of the copies (LVM's
    /// `--raidintegrity y`), so a power loss never lets a spoiled copy
    /// pass for an unfinished write.
    pub raid_integrity: bool,
}

/// Creation options of an LV beyond its size and layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LvOptions {
    pub max_recovery_rate: u64,
    pub raid_integrity: bool,
}

/// An LV record as written before it had `raid_integrity`.
#[derive(Deserialize)]
struct LvRecordWithoutIntegrity {
    id: LvId,
    uuid: Uuid,
    vg: VgId,
    name: String,
    size_bytes: u64,
    thin: bool,
    layout: Layout,
    epoch: u64,
    max_recovery_rate: u64,
}

/// An LV record as written before it had a recovery rate.
#[derive(Deserialize)]
struct LvRecordWithoutRate {
    id: LvId,
    uuid: Uuid,
    vg: VgId,
    name: String,
    size_bytes: u64,
    thin: bool,
    layout: Layout,
    epoch: u64,
}

/// An LV record, in its current form or one of the older ones, longest
/// first (a shorter form would read a longer record and drop its tail):
/// before integrity (reads back without), before recovery rates (reads
/// back as unlimited).
pub(crate) fn decode_lv(bytes: &[u8]) -> MetaResult<LvRecord> {
    decode::<LvRecord>(bytes, "LV record").or_else(|e| {
        if let Ok(old) = decode::<LvRecordWithoutIntegrity>(bytes, "LV record") {
            return Ok(LvRecord {
                id: old.id,
                uuid: old.uuid,
                vg: old.vg,
                name: old.name,
                size_bytes: old.size_bytes,
                thin: old.thin,
                layout: old.layout,
                epoch: old.epoch,
                max_recovery_rate: old.max_recovery_rate,
                raid_integrity: false,
            });
        }
        let old = decode::<LvRecordWithoutRate>(bytes, "LV record").map_err(|_| e)?;
        Ok(LvRecord {
            id: old.id,
            uuid: old.uuid,
            vg: old.vg,
            name: old.name,
            size_bytes: old.size_bytes,
            thin: old.thin,
            layout: old.layout,
            epoch: old.epoch,
            max_recovery_rate: 0,
            raid_integrity: false,
        })
    })
}

/// A physical extent: PE number `pe` on PV `pv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeAddr {
    pub pv: PvId,
    pub pe: u64,
}

/// Where one logical extent lives: one PE per leg of the LV's layout, each
/// on a distinct PV.
pub type Placement = Vec<PeAddr>;

/// Checksums of the 4 KiB blocks of one chunk of a logical extent (LVs
/// with a redundant layout), for verified reads and scrub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkChecksums {
    pub le: u64,
    pub chunk: u8,
    pub values: Vec<u32>,
    /// Blocks of the chunk (index within it) known bad: no copy matched
    /// their checksum when a write had to encode parity from them as they
    /// stood. A resync never adopts them (md keeps a bad-block log for
    /// the same reason). Cleared by the next write of the block.
    pub known_bad: Vec<u32>,
}

/// A mapped logical extent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentEntry {
    pub placement: Placement,
    /// Bit i set: chunk i holds written data. Clear chunks read as zeroes,
    /// whatever the PE holds (a PE may hold another LV's old data).
    pub written: u64,
}

pub(crate) const FORMAT_VERSION: u8 = 2;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    out.extend(postcard::to_stdvec(value).expect("records always serialize"));
    out
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> MetaResult<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| MetaError::Corrupt(format!("{what}: {e}")))
        }
        Some((version, _)) => Err(MetaError::Corrupt(format!(
            "{what}: unknown format version {version}"
        ))),
        None => Err(MetaError::Corrupt(format!("{what}: empty record"))),
    }
}

pub(crate) fn id_key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub(crate) fn pair_key(a: u64, b: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&a.to_be_bytes());
    key.extend_from_slice(&b.to_be_bytes());
    key
}

/// Key of a chunk's checksums: (lv, le, chunk).
pub(crate) fn checksum_key(lv: u64, le: u64, chunk: u8) -> Vec<u8> {
    let mut key = pair_key(lv, le);
    key.push(chunk);
    key
}

/// A chunk's checksum record: the checksums alone while no block is known
/// bad (the only form before known-bad blocks were recorded), else the
/// checksums and the known-bad blocks.
pub(crate) fn encode_checksums(values: &[u32], known_bad: &[u32]) -> Vec<u8> {
    if known_bad.is_empty() {
        encode(&values)
    } else {
        encode(&(values, known_bad))
    }
}

/// (checksums, known-bad blocks) of a record [`encode_checksums`] wrote.
pub(crate) fn decode_checksums(bytes: &[u8]) -> MetaResult<(Vec<u32>, Vec<u32>)> {
    decode::<(Vec<u32>, Vec<u32>)>(bytes, "checksums")
        .or_else(|_| decode::<Vec<u32>>(bytes, "checksums").map(|values| (values, Vec::new())))
}

pub(crate) fn split_pair_key(key: &[u8]) -> MetaResult<(u64, u64)> {
    if key.len() != 16 {
        return Err(MetaError::Corrupt(format!(
            "key of {} bytes, expected 16",
            key.len()
        )));
    }
    let a = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let b = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
    Ok((a, b))
}

/// LVM's naming rule: letters, digits and `+_.-`, not starting with `-`,
/// not `.` or `..`, at most 127 bytes.
pub fn validate_name(kind: &str, name: &str) -> MetaResult<()> {
    let valid = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(MetaError::InvalidArgument(format!(
            "invalid {kind} name \"{name}\": use letters, digits and +_.- (not starting with -), at most 127 characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before known-bad blocks existed read back with none;
    /// a record with none is written in that same form.
    #[test]
    fn checksum_records_carry_known_bad_blocks_and_read_the_older_form() {
        let values = vec![7u32, 0xFFFF_FFFF, 0, 12345];
        let older = encode(&values);
        assert_eq!(decode_checksums(&older).unwrap(), (values.clone(), vec![]));
        assert_eq!(encode_checksums(&values, &[]), older);
        let with_bad = encode_checksums(&values, &[1, 3]);
        assert_eq!(decode_checksums(&with_bad).unwrap(), (values, vec![1, 3]));
        assert!(decode_checksums(&[]).is_err());
    }

    /// LV records written before recovery rates read back as unlimited,
    /// and those written before integrity without it.
    #[test]
    fn lv_records_read_the_older_forms() {
        let record = LvRecord {
            id: 4,
            uuid: Uuid::new_v4(),
            vg: 2,
            name: "disk".into(),
            size_bytes: 1 << 30,
            thin: true,
            layout: Layout::Linear,
            epoch: 7,
            max_recovery_rate: 0,
            raid_integrity: false,
        };
        let older = encode(&(
            record.id,
            record.uuid,
            record.vg,
            &record.name,
            record.size_bytes,
            record.thin,
            record.layout,
            record.epoch,
        ));
        assert_eq!(decode_lv(&older).unwrap(), record);
        let limited = LvRecord {
            max_recovery_rate: 64 << 20,
            ..record.clone()
        };
        let without_integrity = encode(&(
            limited.id,
            limited.uuid,
            limited.vg,
            &limited.name,
            limited.size_bytes,
            limited.thin,
            limited.layout,
            limited.epoch,
            limited.max_recovery_rate,
        ));
        assert_eq!(decode_lv(&without_integrity).unwrap(), limited);
        let checked = LvRecord {
            layout: Layout::Raid1 { copies: 2 },
            raid_integrity: true,
            ..limited
        };
        assert_eq!(decode_lv(&encode(&checked)).unwrap(), checked);
        assert!(decode_lv(&older[..older.len() - 1]).is_err());
    }

    #[test]
    fn records_round_trip_and_reject_unknown_versions() {
        let entry = ExtentEntry {
            placement: vec![PeAddr { pv: 3, pe: 17 }],
            written: 0b1011,
        };
        let bytes = encode(&entry);
        assert_eq!(decode::<ExtentEntry>(&bytes, "extent").unwrap(), entry);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode::<ExtentEntry>(&future, "extent"),
            Err(MetaError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<ExtentEntry>(&[], "extent"),
            Err(MetaError::Corrupt(_))
        ));
    }

    #[test]
    fn pair_keys_sort_by_first_then_second() {
        let mut keys = vec![pair_key(2, 0), pair_key(1, 300), pair_key(1, 2)];
        keys.sort();
        assert_eq!(keys, vec![pair_key(1, 2), pair_key(1, 300), pair_key(2, 0)]);
        assert_eq!(split_pair_key(&pair_key(7, 9)).unwrap(), (7, 9));
    }

    #[test]
    fn names_follow_lvm_rules() {
        for ok in ["vg0", "data_1", "a.b+c-d", "X"] {
            validate_name("LV", ok).unwrap();
        }
        for bad in ["", "-x", ".", "..", "a/b", "sp ace", &"x".repeat(128)] {
            assert!(validate_name("LV", bad).is_err(), "{bad:?} accepted");
        }
    }
}
