//! The PV label: the first block of every PV says which PV it is.
//!
//! ```text
//!  offset 0      4 KiB label            1 MiB
//!  |magic|version|uuid|size|data offset|checksum|  ...  |PE 0|PE 1|...
//! ```
//!
//! The metadata service knows PVs by path, but paths move (a disk renamed,
//! a file replaced). At start the server reads each PV's label and refuses
//! to do I/O to a device whose UUID is not the one on record. The label
//! carries a BLAKE3 checksum so a torn or foreign block is not mistaken for
//! a label.

use uuid::Uuid;

use crate::buf::{IoBuf, IoBufMut, IO_ALIGN};
use crate::device::{BlockDevice, WriteFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};

const MAGIC: &[u8; 16] = b"BLOCKVIRT-PV\0\0\0\0";
const VERSION: u32 = 1;
/// magic 16 + version 4 + uuid 16 + size 8 + data offset 8.
const BODY_BYTES: usize = 52;
const CHECKSUM_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvLabel {
    pub uuid: Uuid,
    pub size_bytes: u64,
    pub data_offset_bytes: u64,
}

impl PvLabel {
    fn encode(&self) -> IoBuf {
        let mut block = IoBufMut::zeroed(IO_ALIGN);
        block[..16].copy_from_slice(MAGIC);
        block[16..20].copy_from_slice(&VERSION.to_le_bytes());
        block[20..36].copy_from_slice(self.uuid.as_bytes());
        block[36..44].copy_from_slice(&self.size_bytes.to_le_bytes());
        block[44..52].copy_from_slice(&self.data_offset_bytes.to_le_bytes());
        let checksum = blake3::hash(&block[..BODY_BYTES]);
        block[BODY_BYTES..BODY_BYTES + CHECKSUM_BYTES]
            .copy_from_slice(&checksum.as_bytes()[..CHECKSUM_BYTES]);
        block.freeze()
    }

    /// `Ok(None)` when the block is not a label at all.
    fn decode(block: &[u8]) -> BlockResult<Option<PvLabel>> {
        if &block[..16] != MAGIC {
            return Ok(None);
        }
        let corrupt = |why: &str| BlockError::new(ErrorKind::Corrupt, format!("PV label: {why}"));
        let checksum = blake3::hash(&block[..BODY_BYTES]);
        if block[BODY_BYTES..BODY_BYTES + CHECKSUM_BYTES] != checksum.as_bytes()[..CHECKSUM_BYTES] {
            return Err(corrupt("checksum mismatch"));
        }
        let version = u32::from_le_bytes(block[16..20].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(corrupt(&format!("unknown version {version}")));
        }
        Ok(Some(PvLabel {
            uuid: Uuid::from_bytes(block[20..36].try_into().expect("16 bytes")),
            size_bytes: u64::from_le_bytes(block[36..44].try_into().expect("8 bytes")),
            data_offset_bytes: u64::from_le_bytes(block[44..52].try_into().expect("8 bytes")),
        }))
    }
}

/// Reads the label in the first block; `Ok(None)` if there is none.
pub async fn read_label(device: &dyn BlockDevice) -> BlockResult<Option<PvLabel>> {
    let (result, block) = device.read_at(0, IoBufMut::zeroed(IO_ALIGN)).await;
    result?;
    PvLabel::decode(&block)
}

/// Writes `label` durably (FUA) into the first block.
pub async fn write_label(device: &dyn BlockDevice, label: &PvLabel) -> BlockResult<()> {
    device.write_at(0, label.encode(), WriteFlags::FUA).await.0
}

/// Overwrites the label with zeroes (pvremove).
pub async fn wipe_label(device: &dyn BlockDevice) -> BlockResult<()> {
    device
        .write_at(0, IoBuf::zeroed(IO_ALIGN), WriteFlags::FUA)
        .await
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_detect_damage() {
        let label = PvLabel {
            uuid: Uuid::from_u128(0x1234),
            size_bytes: 1 << 30,
            data_offset_bytes: 1 << 20,
        };
        let block = label.encode();
        assert_eq!(PvLabel::decode(&block).unwrap(), Some(label));
        let mut torn = block.to_vec();
        torn[40] ^= 1;
        assert_eq!(
            PvLabel::decode(&torn).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(PvLabel::decode(&[0u8; IO_ALIGN]).unwrap(), None);
    }
}
