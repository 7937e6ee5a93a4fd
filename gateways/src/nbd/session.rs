//! What one connection negotiated, and how an export's advertised flags and
//! size constraints follow from its device.
//!
//! The derivations are pure so the handshake (which advertises them) and the
//! transmission phase (which enforces them) cannot disagree.
//!
//! # Size constraints
//!
//! - minimum block = the device's `block_bytes` (4096 for the file leaf).
//!   This is not the protocol default (1), so the server always sends
//!   `NBD_INFO_BLOCK_SIZE` and, for clients that never asked for it
//!   (`NBD_OPT_EXPORT_NAME`, or `NBD_OPT_GO` without the request), serves
//!   them anyway and fails misaligned requests cleanly with `NBD_EINVAL`,
//!   as the spec requires of a server that does not refuse such clients.
//! - preferred block = `max(block_bytes, 4096)`. The contract promises that
//!   every block-aligned request is served without read-modify-write, which
//!   is exactly what "preferred" measures, and it has no larger "optimal
//!   size" field to report. Advertising more (64 KiB, say) is not free:
//!   QEMU aligns discards and write-zeroes to the preferred size, so
//!   smaller ones would be dropped or turned into data writes.
//! - maximum payload = `min(io_bytes_max, 32 MiB)`, rounded down to whole
//!   blocks: the largest request the device takes in one piece, capped at
//!   the size the spec says every client and server handles.

use blockvirt::DeviceInfo;

use super::exports::Export;
use super::proto::{transmission_flag as tf, BlockSizes};

/// The metadata context ID handed out for `base:allocation`.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;
pub(crate) const BASE_ALLOCATION: &str = "base:allocation";

/// The protocol's cap on the minimum block size.
const MIN_BLOCK_LIMIT_BYTES: u32 = 1 << 16;
/// Payloads up to this size must never be treated as abuse (spec).
pub(crate) const PORTABLE_PAYLOAD_BYTES: u32 = 1 << 25;

/// State carried from the handshake into the transmission phase.
pub(crate) struct Session {
    pub export_name: String,
    pub export: Export,
    pub size_bytes: u64,
    pub transmission_flags: u16,
    pub sizes: BlockSizes,
    pub structured_replies: bool,
    /// The ID of `base:allocation` when the client selected it for this export.
    pub allocation_context: Option<u32>,
}

/// Why a device cannot be exported over NBD as it is.
pub(crate) fn unexportable(info: &DeviceInfo) -> Option<String> {
    if !info.block_bytes.is_power_of_two() || info.block_bytes > MIN_BLOCK_LIMIT_BYTES {
        return Some(format!(
            "block size {} is not a power of two up to 64 KiB, which NBD requires",
            info.block_bytes
        ));
    }
    None
}

/// The size constraints advertised for a device (see the module docs).
pub(crate) fn block_sizes(info: &DeviceInfo) -> BlockSizes {
    let min_bytes = info.block_bytes.max(1);
    let preferred_bytes = min_bytes.max(4096);
    let max_payload_bytes = info.io_bytes_max.min(PORTABLE_PAYLOAD_BYTES);
    let max_payload_bytes =
        (max_payload_bytes - max_payload_bytes % min_bytes).max(preferred_bytes);
    BlockSizes {
        min_bytes,
        preferred_bytes,
        max_payload_bytes,
    }
}

/// The transmission flags advertised for a device.
///
/// - FLUSH and FUA are always offered on writable exports: on a device
///   without a volatile cache (no `Caps::FLUSH`) they are no-ops, which is
///   correct; on one without `Caps::FUA` a FUA write becomes write + flush.
/// - WRITE_ZEROES is part of every device's contract; FAST_ZERO is always
///   offered because the answer is honest either way: a device without
///   `Caps::FAST_ZERO` gets an immediate `NBD_ENOTSUP`, which the spec counts
///   as a fast response.
/// - TRIM follows `Caps::DISCARD`.
/// - DF needs structured replies, so it depends on the negotiation.
/// - CACHE is accepted everywhere (see `commands`), MULTI_CONN is sound
///   because flush is device-wide (see `exports`).
/// - A read-only export offers no write-side operation at all.
pub(crate) fn transmission_flags(info: &DeviceInfo, structured_replies: bool) -> u16 {
    let mut flags = tf::HAS_FLAGS | tf::SEND_CACHE | tf::CAN_MULTI_CONN;
    if structured_replies {
        flags |= tf::SEND_DF;
    }
    if info.read_only {
        flags |= tf::READ_ONLY;
    } else {
        flags |= tf::SEND_FLUSH | tf::SEND_FUA | tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO;
        if info.caps.contains(blockvirt::Caps::DISCARD) {
            flags |= tf::SEND_TRIM;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockvirt::Caps;

    fn info(block_bytes: u32, io_bytes_max: u32, caps: Caps, read_only: bool) -> DeviceInfo {
        DeviceInfo {
            size_bytes: 1 << 30,
            block_bytes,
            io_bytes_max,
            caps,
            read_only,
        }
    }

    #[test]
    fn sizes_follow_the_device_within_protocol_limits() {
        let file_leaf = info(4096, 32 << 20, Caps::all(), false);
        assert_eq!(
            block_sizes(&file_leaf),
            BlockSizes {
                min_bytes: 4096,
                preferred_bytes: 4096,
                max_payload_bytes: 32 << 20
            }
        );
        let small = info(512, 1 << 20, Caps::all(), false);
        assert_eq!(block_sizes(&small).preferred_bytes, 4096);
        assert_eq!(block_sizes(&small).max_payload_bytes, 1 << 20);
        let huge = info(4096, u32::MAX, Caps::all(), false);
        assert_eq!(block_sizes(&huge).max_payload_bytes, 32 << 20);
        let odd = info(4096, 100_000, Caps::all(), false);
        assert_eq!(block_sizes(&odd).max_payload_bytes, 98_304);
        assert!(unexportable(&info(1 << 17, 32 << 20, Caps::all(), false)).is_some());
        assert!(unexportable(&file_leaf).is_none());
    }

    #[test]
    fn flags_follow_caps_and_negotiation() {
        let writable = transmission_flags(&info(4096, 1 << 20, Caps::all(), false), true);
        for flag in [
            tf::HAS_FLAGS,
            tf::SEND_FLUSH,
            tf::SEND_FUA,
            tf::SEND_TRIM,
            tf::SEND_WRITE_ZEROES,
            tf::SEND_FAST_ZERO,
            tf::SEND_DF,
            tf::SEND_CACHE,
            tf::CAN_MULTI_CONN,
        ] {
            assert_ne!(writable & flag, 0, "flag {flag:#x}");
        }
        assert_eq!(writable & tf::READ_ONLY, 0);
        let simple = transmission_flags(&info(4096, 1 << 20, Caps::empty(), false), false);
        assert_eq!(simple & (tf::SEND_DF | tf::SEND_TRIM), 0);
        let read_only = transmission_flags(&info(4096, 1 << 20, Caps::all(), true), true);
        assert_ne!(read_only & tf::READ_ONLY, 0);
        assert_eq!(
            read_only & (tf::SEND_TRIM | tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO | tf::SEND_FUA),
            0
        );
    }
}
