//! The checksum of a 4 KiB block, kept for every written block of an LV
//! with a redundant layout so that a bad copy is detected on read and in
//! scrub, and the good one served instead.
//!
//! CRC-32C: it detects the corruption a disk produces (flipped bits,
//! misdirected or lost writes), and SSE 4.2 computes it in hardware, much
//! faster than a cryptographic hash. The benchmark figures are in
//! docs/ARCHITECTURE.md.

/// The checksum of one block.
pub fn block_checksum(block: &[u8]) -> u32 {
    crc32c::crc32c(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_flipped_bit_changes_the_checksum() {
        let block = vec![0x5au8; 4096];
        let sum = block_checksum(&block);
        for bit in [0, 1, 4095 * 8 + 7, 2048 * 8 + 3] {
            let mut bad = block.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(block_checksum(&bad), sum);
        }
    }
}
