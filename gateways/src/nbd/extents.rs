//! Turning a device's allocation map into NBD replies: block status
//! descriptors for `NBD_CMD_BLOCK_STATUS`, and the data/hole layout of a
//! structured `NBD_CMD_READ`.
//!
//! Both are pure functions of the extents `BlockDevice::block_status`
//! returned, so the protocol's rules are checked by property tests here
//! rather than by hoping a client notices:
//! - descriptors are nonzero, fit in 32 bits, number at most 2^20, and
//!   cover at most the requested length (the "sum of the first N-1 is less
//!   than the request" rule), exactly one with `REQ_ONE`;
//! - read pieces tile the request exactly, in order, data and holes
//!   alternating, every hole at least the threshold long.
//!
//! Extents are not trusted blindly: a device that answers short, long or
//! with empty extents still produces a valid reply (short answers are
//! completed as data, which is always a correct thing to claim).

use blockvirt::{BlockStatus, StatusExtent};

use super::proto::{state, Descriptor};

/// The protocol's recommended cap on descriptors in one chunk.
pub(crate) const MAX_DESCRIPTORS: usize = 1 << 20;

/// `base:allocation` flags for a device status.
pub(crate) fn allocation_flags(status: BlockStatus) -> u32 {
    let mut flags = 0;
    if status.contains(BlockStatus::HOLE) {
        flags |= state::HOLE;
    }
    if status.contains(BlockStatus::ZERO) {
        flags |= state::ZERO;
    }
    flags
}

/// The descriptors answering a block status request of `requested_bytes`
/// (nonzero) given the device's extents for that range.
pub(crate) fn descriptors(
    extents: &[StatusExtent],
    requested_bytes: u32,
    req_one: bool,
) -> Vec<Descriptor> {
    let limit = if req_one { 1 } else { MAX_DESCRIPTORS };
    let mut out: Vec<Descriptor> = Vec::new();
    let mut covered_bytes: u32 = 0;
    for extent in extents {
        if covered_bytes == requested_bytes {
            break;
        }
        let remaining = u64::from(requested_bytes - covered_bytes);
        // `remaining` fits in u32, so the clamped length does too.
        let len_bytes = extent.len_bytes.min(remaining) as u32;
        if len_bytes == 0 {
            continue;
        }
        let flags = allocation_flags(extent.status);
        let full = out.len() == limit;
        match out.last_mut() {
            Some(last) if last.flags == flags => last.len_bytes += len_bytes,
            _ if full => break,
            _ => out.push(Descriptor { len_bytes, flags }),
        }
        covered_bytes += len_bytes;
    }
    if out.is_empty() {
        // Status 0 ("allocated, contents unknown") is always a true answer.
        out.push(Descriptor {
            len_bytes: requested_bytes,
            flags: 0,
        });
    }
    out
}

/// One piece of a structured read reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadPiece {
    pub offset_bytes: u64,
    pub len_bytes: u32,
    /// Reads as zeroes: sent as `OFFSET_HOLE` without touching the device.
    pub hole: bool,
}

/// Lays out a read of `len_bytes` at `offset_bytes` (the range the extents
/// describe) as data pieces and holes. Only zero runs of at least
/// `min_hole_bytes` become holes: a short hole saves a few bytes on the
/// wire but costs an extra device read for the data after it.
pub(crate) fn plan_read(
    extents: &[StatusExtent],
    offset_bytes: u64,
    len_bytes: u32,
    min_hole_bytes: u32,
) -> Vec<ReadPiece> {
    let mut pieces: Vec<ReadPiece> = Vec::new();
    let push =
        |pieces: &mut Vec<ReadPiece>, piece_offset: u64, piece_len: u32, hole: bool| match pieces
            .last_mut()
        {
            Some(last) if last.hole == hole => last.len_bytes += piece_len,
            _ => pieces.push(ReadPiece {
                offset_bytes: piece_offset,
                len_bytes: piece_len,
                hole,
            }),
        };
    let mut covered_bytes: u32 = 0;
    for extent in extents {
        if covered_bytes == len_bytes {
            break;
        }
        let piece_len = extent.len_bytes.min(u64::from(len_bytes - covered_bytes)) as u32;
        if piece_len == 0 {
            continue;
        }
        let hole = extent.status.contains(BlockStatus::ZERO) && piece_len >= min_hole_bytes;
        push(
            &mut pieces,
            offset_bytes + u64::from(covered_bytes),
            piece_len,
            hole,
        );
        covered_bytes += piece_len;
    }
    if covered_bytes < len_bytes {
        push(
            &mut pieces,
            offset_bytes + u64::from(covered_bytes),
            len_bytes - covered_bytes,
            false,
        );
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn extent(len_bytes: u64, status: BlockStatus) -> StatusExtent {
        StatusExtent { len_bytes, status }
    }

    const HOLE: BlockStatus = BlockStatus::HOLE.union(BlockStatus::ZERO);
    const DATA: BlockStatus = BlockStatus::empty();

    #[test]
    fn req_one_returns_the_first_extent_only() {
        let extents = [extent(8192, DATA), extent(4096, HOLE)];
        assert_eq!(
            descriptors(&extents, 12288, true),
            vec![Descriptor {
                len_bytes: 8192,
                flags: 0
            }]
        );
        assert_eq!(descriptors(&extents, 12288, false).len(), 2);
        assert_eq!(descriptors(&extents, 12288, false)[1].flags, 3);
    }

    #[test]
    fn answers_are_clamped_and_never_empty() {
        // A device answering more than asked is cut to the request.
        let long = [extent(1 << 40, HOLE)];
        assert_eq!(
            descriptors(&long, 4096, false),
            vec![Descriptor {
                len_bytes: 4096,
                flags: 3
            }]
        );
        assert_eq!(
            descriptors(&[], 4096, false),
            vec![Descriptor {
                len_bytes: 4096,
                flags: 0
            }]
        );
    }

    #[test]
    fn short_zero_runs_are_read_as_data() {
        let extents = [extent(4096, DATA), extent(4096, HOLE), extent(65536, HOLE)];
        let pieces = plan_read(&extents, 1 << 20, 8192 + 65536, 65536);
        assert_eq!(
            pieces,
            vec![
                ReadPiece {
                    offset_bytes: 1 << 20,
                    len_bytes: 8192,
                    hole: false
                },
                ReadPiece {
                    offset_bytes: (1 << 20) + 8192,
                    len_bytes: 65536,
                    hole: true
                },
            ]
        );
    }

    #[test]
    fn short_device_answers_are_completed_as_data() {
        let pieces = plan_read(&[extent(65536, HOLE)], 0, 131072, 4096);
        assert_eq!(pieces.len(), 2);
        assert!(pieces[0].hole);
        assert!(!pieces[1].hole);
        assert_eq!(pieces[1].len_bytes, 65536);
    }

    fn arbitrary_extents() -> impl Strategy<Value = Vec<StatusExtent>> {
        proptest::collection::vec(
            (0u64..200_000, 0u32..4).prop_map(|(len, bits)| StatusExtent {
                len_bytes: len,
                status: BlockStatus::from_bits_truncate(bits),
            }),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn descriptors_obey_the_sum_rules(
            extents in arbitrary_extents(),
            requested in 1u32..2_000_000,
            req_one in any::<bool>(),
        ) {
            let out = descriptors(&extents, requested, req_one);
            prop_assert!(!out.is_empty());
            prop_assert!(out.len() <= MAX_DESCRIPTORS);
            if req_one {
                prop_assert_eq!(out.len(), 1);
            }
            prop_assert!(out.iter().all(|d| d.len_bytes > 0 && d.flags <= 3));
            let total: u64 = out.iter().map(|d| u64::from(d.len_bytes)).sum();
            prop_assert!(total <= u64::from(requested));
            prop_assert!(out.windows(2).all(|w| w[0].flags != w[1].flags));
        }

        #[test]
        fn read_pieces_tile_the_request(
            extents in arbitrary_extents(),
            offset in 0u64..(1 << 40),
            len in 0u32..2_000_000,
            min_hole in 1u32..100_000,
        ) {
            let pieces = plan_read(&extents, offset, len, min_hole);
            let mut next = offset;
            for piece in &pieces {
                prop_assert_eq!(piece.offset_bytes, next);
                prop_assert!(piece.len_bytes > 0);
                if piece.hole {
                    prop_assert!(piece.len_bytes >= min_hole);
                }
                next += u64::from(piece.len_bytes);
            }
            prop_assert_eq!(next, offset + u64::from(len));
            prop_assert!(pieces.windows(2).all(|w| w[0].hole != w[1].hole));
        }
    }
}
