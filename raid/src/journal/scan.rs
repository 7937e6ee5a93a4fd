//! Reading a journal back after a crash: from the durable tail, entry
//! after entry, until the first block that is not the valid next entry.
//!
//! ```text
//!  header.tail ─▶ [seq 7 ✓] ─▶ [seq 8: payload bad] ─▶ [seq 9: bad header]  stop
//!                                 └─ if nothing valid where seq 8 ended, look at ring offset 0
//! ```
//!
//! An entry is found if its header block decodes (magic, CRC), it belongs
//! to this journal's generation and epoch, has the sequence number that
//! comes next and fits the ring. Anything else ends the scan: appends are
//! acknowledged only once every older entry is durable, so nothing after
//! a gap was ever acknowledged.
//!
//! An entry whose header holds but whose payload fails its checksum is
//! found *damaged*, and the scan goes on past it (the header says where
//! the next one starts). Damage is either an append the crash tore (never
//! acknowledged; whatever follows was not either, and replaying it writes
//! a consistent row) or a durable entry the disk spoiled since, after
//! which acknowledged entries follow that must be replayed. Either way the
//! header still names the rows it changed, which recovery needs (see
//! `recover.rs`).
//!
//! The record ring (`records.rs`) is read the same way, from its own tail.

use blockvirt::BlockResult;

use super::format::{
    payload_crc, DecodeError, EntryHeader, EntryKind, JournalHeader, BLOCK_BYTES, HEADER_AREA_BYTES,
};
use super::io::read_exact;
use super::pv_journal::{ring_capacity_bytes, PvJournal};
use super::ring::{max_entry_bytes, next_candidates};

/// Which of a region's two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Stripe entries (writes and intents), after the header slots.
    Stripes,
    /// Record entries, at the region's end.
    Records,
}

/// A valid entry found by a scan.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub lane: Lane,
    pub header: EntryHeader,
    pub offset_bytes: u64,
    /// The payload matched its checksum when scanned.
    pub payload_sound: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Scan {
    pub entries: Vec<Found>,
    /// The scan ended at a started but invalid entry (its header bad).
    pub torn: bool,
    /// The sequence after the last valid entry.
    pub next_seq: u64,
}

/// What one candidate place held.
enum Looked {
    Entry(Found),
    /// Something of ours that is not a valid next entry: torn or damaged.
    Torn,
    /// Nothing of this journal's current life.
    Nothing,
}

impl PvJournal {
    /// Where `lane` lies on the device and how big it is: (device offset
    /// of its start, capacity).
    pub fn lane_area(&self, header: &JournalHeader, lane: Lane) -> (u64, u64) {
        match lane {
            Lane::Stripes => (
                self.region.offset_bytes + HEADER_AREA_BYTES,
                ring_capacity_bytes(self.region, header),
            ),
            Lane::Records => (
                self.region.offset_bytes + self.region.len_bytes - header.records_bytes,
                header.records_bytes,
            ),
        }
    }

    /// Scans the entries of `lane` from the durable tail of `header`.
    pub async fn scan(&self, header: &JournalHeader, lane: Lane) -> BlockResult<Scan> {
        let (_, capacity) = self.lane_area(header, lane);
        let (tail_seq, tail_offset_bytes) = match lane {
            Lane::Stripes => (header.tail_seq, header.tail_offset_bytes),
            Lane::Records => (header.records_tail_seq, header.records_tail_offset_bytes),
        };
        let mut scan = Scan {
            next_seq: tail_seq,
            ..Scan::default()
        };
        if capacity == 0 {
            return Ok(scan);
        }
        let mut end = tail_offset_bytes;
        let mut candidates = if end == 0 { vec![0] } else { vec![end, 0] };
        // Bytes of ring the entries found so far take, gaps included: a
        // bound on the scan even if the checks above were fooled.
        let mut footprint = 0u64;
        loop {
            let mut found = None;
            let mut torn = false;
            for &offset in &candidates {
                match self.look(header, lane, offset, scan.next_seq).await? {
                    Looked::Entry(entry) => {
                        found = Some(entry);
                        break;
                    }
                    Looked::Torn => torn = true,
                    Looked::Nothing => {}
                }
            }
            let Some(entry) = found else {
                scan.torn = torn;
                return Ok(scan);
            };
            let len = entry.header.entry_bytes();
            footprint += if entry.offset_bytes == end {
                len
            } else {
                capacity - end + len
            };
            if footprint > capacity {
                tracing::error!(
                    "journal on PV id {}: entries past one full ring at seq {}; scan stopped",
                    self.pv,
                    scan.next_seq
                );
                scan.torn = true;
                return Ok(scan);
            }
            end = entry.offset_bytes + len;
            candidates = next_candidates(capacity, end);
            end %= capacity;
            scan.next_seq += 1;
            scan.entries.push(entry);
        }
    }

    /// Reads the block at ring offset `offset_bytes` of `lane` and, if it
    /// heads the entry `seq`, its payload.
    async fn look(
        &self,
        header: &JournalHeader,
        lane: Lane,
        offset_bytes: u64,
        seq: u64,
    ) -> BlockResult<Looked> {
        let (base, capacity) = self.lane_area(header, lane);
        let at = base + offset_bytes;
        let block = read_exact(&self.device, self.pv, "journal scan", at, BLOCK_BYTES).await?;
        let entry = match EntryHeader::decode(&block) {
            Ok(entry) => entry,
            Err(DecodeError::NoMagic) => return Ok(Looked::Nothing),
            Err(e) => {
                tracing::debug!(
                    "journal on PV id {} at ring offset {offset_bytes}: {e}",
                    self.pv
                );
                return Ok(Looked::Torn);
            }
        };
        if entry.generation != header.generation || entry.epoch != header.epoch || entry.seq != seq
        {
            // An entry of an earlier lap, epoch or journal: not ours to read.
            return Ok(Looked::Nothing);
        }
        let len = entry.entry_bytes();
        let in_its_lane =
            matches!(entry.kind, EntryKind::Records { .. }) == (lane == Lane::Records);
        if len > max_entry_bytes(capacity) || offset_bytes + len > capacity || !in_its_lane {
            return Ok(Looked::Torn);
        }
        let payload_sound = self
            .read_payload(header, lane, offset_bytes, &entry)
            .await?
            .is_some();
        Ok(Looked::Entry(Found {
            lane,
            header: entry,
            offset_bytes,
            payload_sound,
        }))
    }

    /// The payload of `entry` at ring offset `offset_bytes` of `lane`, or
    /// `None` if it does not match its checksum.
    pub async fn read_payload(
        &self,
        header: &JournalHeader,
        lane: Lane,
        offset_bytes: u64,
        entry: &EntryHeader,
    ) -> BlockResult<Option<blockvirt::IoBuf>> {
        let (base, _) = self.lane_area(header, lane);
        let at = base + offset_bytes + BLOCK_BYTES;
        let payload = read_exact(
            &self.device,
            self.pv,
            "journal scan",
            at,
            entry.payload_bytes(),
        )
        .await?;
        Ok((payload_crc([&payload[..]]) == entry.payload_crc).then_some(payload))
    }
}
