//! Blockvirt's redundancy core: stripe geometry, erasure codecs, block
//! checksums, and the stripe journal. The geometry and the codecs are pure
//! functions and pure data, no I/O: the redundancy layer that drives legs
//! builds on these, and they are tested here exhaustively. The journal does
//! I/O to the PVs' journal regions and is tested on simulated disks that
//! crash.
//!
//! - [`layout`]: the layouts (linear, raid0/1/10, raid5, ec K+M) and their
//!   validation.
//! - [`geometry`]: where each user byte of a placed extent lives, and what
//!   each leg byte holds.
//! - [`codec`]: XOR and Reed-Solomon parity: encode, reconstruct, update.
//! - [`journal`]: the stripe journal that closes the write hole of parity
//!   rows (log, write in place, retire; replay after a crash).

pub mod codec;
pub mod geometry;
pub mod journal;
pub mod layout;

pub use codec::{codec_for, CodecError, ErasureCodec, ReedSolomon, Xor};
pub use geometry::{
    LegContent, LegPiece, LegPieces, ParityGeometry, RowSpan, RowSpans, Span, Spans,
    StripeGeometry, StripedGeometry,
};
pub use layout::{GeometryError, Layout};
