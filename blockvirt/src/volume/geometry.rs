//! Pure address math of a volume: splitting byte ranges into per-extent
//! pieces, and pieces into chunks of the "written" bitmap.
//!
//! ```text
//!  volume bytes  |---- extent 0 ----|---- extent 1 ----|--
//!  request             [=====================]
//!  pieces              [= piece 0 ==][= p1 ==]
//!  chunks (64/extent)  |c|c|c|c|...
//! ```

use metadata::model::CHUNKS_PER_EXTENT;

/// The I/O block.
const BLOCK_BYTES: u64 = 4096;

/// A part of a request that falls inside one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Logical extent number.
    pub le: u64,
    /// Offset within the extent.
    pub offset_bytes: u64,
    pub len_bytes: u64,
    /// Offset of this piece within the whole request.
    pub request_offset_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub extent_bytes: u64,
    pub chunk_bytes: u64,
}

impl Geometry {
    /// An extent of `extent_bytes` user bytes: a multiple of 64 blocks
    /// (a striped extent of 3 × 4 MiB PEs is not a power of two).
    pub fn new(extent_bytes: u64) -> Self {
        assert!(
            extent_bytes > 0 && extent_bytes.is_multiple_of(CHUNKS_PER_EXTENT * BLOCK_BYTES),
            "extent of {extent_bytes} bytes is not 64 whole-block chunks"
        );
        Geometry {
            extent_bytes,
            chunk_bytes: extent_bytes / CHUNKS_PER_EXTENT,
        }
    }

    pub fn blocks_per_chunk(&self) -> usize {
        (self.chunk_bytes / BLOCK_BYTES) as usize
    }

    pub fn blocks_per_extent(&self) -> usize {
        (self.extent_bytes / BLOCK_BYTES) as usize
    }

    /// Splits `[offset, offset + len)` at extent boundaries.
    pub fn pieces(&self, offset_bytes: u64, len_bytes: u64) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut done = 0;
        while done < len_bytes {
            let at = offset_bytes + done;
            let within = at % self.extent_bytes;
            let len = (self.extent_bytes - within).min(len_bytes - done);
            pieces.push(Piece {
                le: at / self.extent_bytes,
                offset_bytes: within,
                len_bytes: len,
                request_offset_bytes: done,
            });
            done += len;
        }
        pieces
    }

    /// Chunks a piece touches at all.
    pub fn touched(&self, piece: &Piece) -> u64 {
        let first = piece.offset_bytes / self.chunk_bytes;
        let last = (piece.offset_bytes + piece.len_bytes - 1) / self.chunk_bytes;
        mask(first, last + 1)
    }

    /// Chunks a piece covers completely.
    pub fn covered(&self, piece: &Piece) -> u64 {
        let first = piece.offset_bytes.div_ceil(self.chunk_bytes);
        let end = (piece.offset_bytes + piece.len_bytes) / self.chunk_bytes;
        if first >= end {
            0
        } else {
            mask(first, end)
        }
    }

    /// Maximal runs of chunks within a piece that are all set or all clear in
    /// `bits`, as (offset within the piece, length, set) triples.
    pub fn runs(&self, piece: &Piece, bits: u64) -> Vec<(u64, u64, bool)> {
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let end = piece.offset_bytes + piece.len_bytes;
        let mut at = piece.offset_bytes;
        while at < end {
            let chunk = at / self.chunk_bytes;
            let chunk_end = ((chunk + 1) * self.chunk_bytes).min(end);
            let set = bits & (1 << chunk) != 0;
            let len = chunk_end - at;
            match runs.last_mut() {
                Some(last) if last.2 == set => last.1 += len,
                _ => runs.push((at - piece.offset_bytes, len, set)),
            }
            at = chunk_end;
        }
        runs
    }

    /// The byte range a write must cover so that chunks in `init` (touched
    /// but not yet written) are written whole: the piece, widened to chunk
    /// boundaries on each side whose chunk needs initializing.
    pub fn widen(&self, piece: &Piece, init: u64) -> (u64, u64) {
        let first = piece.offset_bytes / self.chunk_bytes;
        let end = piece.offset_bytes + piece.len_bytes;
        let last = (end - 1) / self.chunk_bytes;
        let start = if init & (1 << first) != 0 {
            first * self.chunk_bytes
        } else {
            piece.offset_bytes
        };
        let stop = if init & (1 << last) != 0 {
            (last + 1) * self.chunk_bytes
        } else {
            end
        };
        (start, stop)
    }
}

/// Bits `first..end` set.
pub fn mask(first: u64, end: u64) -> u64 {
    debug_assert!(first <= end && end <= 64);
    if end - first == 64 {
        u64::MAX
    } else {
        ((1u64 << (end - first)) - 1) << first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: Geometry = Geometry {
        extent_bytes: 4 << 20,
        chunk_bytes: 64 << 10,
    };

    proptest! {
        #[test]
        fn pieces_tile_the_request(offset in 0u64..(64 << 20), len in 1u64..(32 << 20)) {
            let pieces = G.pieces(offset, len);
            let mut expect = 0;
            for p in &pieces {
                prop_assert_eq!(p.request_offset_bytes, expect);
                prop_assert!(p.len_bytes > 0);
                prop_assert!(p.offset_bytes + p.len_bytes <= G.extent_bytes);
                prop_assert_eq!(p.le * G.extent_bytes + p.offset_bytes, offset + expect);
                expect += p.len_bytes;
            }
            prop_assert_eq!(expect, len);
        }

        #[test]
        fn chunk_masks_agree_with_byte_model(off_blocks in 0u64..1024, len_blocks in 1u64..1024, bits in any::<u64>()) {
            let off = off_blocks * 4096;
            let len = (len_blocks * 4096).min(G.extent_bytes - off);
            prop_assume!(len > 0);
            let piece = Piece { le: 0, offset_bytes: off, len_bytes: len, request_offset_bytes: 0 };
            let (touched, covered) = (G.touched(&piece), G.covered(&piece));
            for chunk in 0..64 {
                let (cs, ce) = (chunk * G.chunk_bytes, (chunk + 1) * G.chunk_bytes);
                let overlaps = cs < off + len && off < ce;
                let inside = off <= cs && ce <= off + len;
                prop_assert_eq!(touched & (1 << chunk) != 0, overlaps);
                prop_assert_eq!(covered & (1 << chunk) != 0, inside);
            }
            // Runs tile the piece and follow the bits.
            let mut at = 0;
            for (start, run_len, set) in G.runs(&piece, bits) {
                prop_assert_eq!(start, at);
                let first_chunk = (off + start) / G.chunk_bytes;
                let last_chunk = (off + start + run_len - 1) / G.chunk_bytes;
                for chunk in first_chunk..=last_chunk {
                    prop_assert_eq!(bits & (1 << chunk) != 0, set);
                }
                at += run_len;
            }
            prop_assert_eq!(at, len);
            // Widening covers the piece, stays in the extent, and makes every
            // partially touched init chunk whole.
            let init = touched & !covered & bits;
            let (start, stop) = G.widen(&piece, init);
            prop_assert!(start <= off && stop >= off + len && stop <= G.extent_bytes);
            for chunk in 0..64u64 {
                if init & (1 << chunk) != 0 {
                    prop_assert!(start <= chunk * G.chunk_bytes && (chunk + 1) * G.chunk_bytes <= stop);
                }
            }
        }
    }

    #[test]
    fn masks_at_the_edges() {
        assert_eq!(mask(0, 64), u64::MAX);
        assert_eq!(mask(63, 64), 1 << 63);
        assert_eq!(mask(3, 3), 0);
        assert_eq!(mask(0, 2), 0b11);
    }
}
