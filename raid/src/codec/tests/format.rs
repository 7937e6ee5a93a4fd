//! The parity format is on disk from the first write: these known answers
//! fail if a dependency update (or a change here) alters what is written.

use super::encoded;
use crate::codec::{ErasureCodec, ReedSolomon, Xor};

/// Fixed, irregular data: byte `j` of shard `i` is `(8i + j) * 167 + 13`.
fn sample(k: usize, len: usize) -> Vec<Vec<u8>> {
    (0..k)
        .map(|i| {
            (0..len)
                .map(|j| ((8 * i + j) as u8).wrapping_mul(167).wrapping_add(13))
                .collect()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parity_hex(codec: &dyn ErasureCodec, len: usize) -> Vec<String> {
    encoded(codec, &sample(codec.data_shards(), len))[codec.data_shards()..]
        .iter()
        .map(|p| hex(p))
        .collect()
}

#[test]
fn xor_parity_is_pinned() {
    // Byte 0: 0x0d ^ 0x45 ^ 0x7d = 0x35.
    let codec = Xor::new(3).expect("xor");
    assert_eq!(parity_hex(&codec, 8), ["357c034a5118bf46"]);
}

/// K, M, parity hex, coefficient rows.
type Known = (
    usize,
    usize,
    &'static [&'static str],
    &'static [&'static [u8]],
);

/// Coefficients and parity of the shapes we expect to meet. They follow
/// Backblaze's construction (Vandermonde rows `[1, r, r^2, ..]` times the
/// inverse of the top square): for 2+1 that is row `[1, 2]` times
/// `[[1, 0], [1, 1]]^-1 = [[1, 0], [1, 1]]`, so `[3, 2]`; byte 0 of the
/// 2+1 parity is `3 * 0x0d + 2 * 0x45 = 0x17 ^ 0x8a = 0x9d` in GF(2^8).
#[test]
fn reed_solomon_parity_is_pinned() {
    let known: [Known; 4] = [
        (2, 1, &["9d04d67239fd5a0e"], &[&[3, 2]]),
        (4, 1, &["98b312e3549884a3"], &[&[27, 28, 18, 20]]),
        (
            4,
            2,
            &["98b312e3549884a3", "f72bdaa11c3a9ceb"],
            &[&[27, 28, 18, 20], &[28, 27, 20, 18]],
        ),
        (
            8,
            3,
            &["732ada79806710c3", "1311ddfc11eb7244", "b4364ab5946d8e53"],
            &[
                &[26, 132, 186, 51, 231, 16, 198, 39],
                &[132, 26, 51, 186, 16, 231, 39, 198],
                &[186, 51, 26, 132, 198, 39, 231, 16],
            ],
        ),
    ];
    for (k, m, parity, coefficients) in known {
        let codec = ReedSolomon::new(k, m).expect("rs");
        assert_eq!(parity_hex(&codec, 8), parity, "{k}+{m}");
        assert_eq!(codec.coefficients, coefficients, "{k}+{m}");
    }
}
