//! Blockvirt's redundancy: stripe geometry and erasure codecs (pure, and
//! tested exhaustively), the stripe journal that closes the parity write
//! hole (tested on simulated disks that crash), and the layouts that drive
//! a placed extent's legs with them.
//!
//! - [`layout`]: the layouts (linear, raid0/1/10, raid5, ec K+M) and their
//!   validation.
//! - [`geometry`]: where each user byte of a placed extent lives, and what
//!   each leg byte holds.
//! - [`codec`]: XOR and Reed-Solomon parity: encode, reconstruct, update.
//! - [`journal`]: the stripe journal of parity rows (log, write in place,
//!   retire; replay after a crash).
//! - [`io`]: the layouts as block I/O over a placed extent's legs.

pub mod codec;
pub mod geometry;
pub mod io;
pub mod journal;
pub mod layout;

pub use codec::{codec_for, CodecError, ErasureCodec, ReedSolomon, Xor};
pub use geometry::{
    LegContent, LegPiece, LegPieces, ParityGeometry, RowSpan, RowSpans, Span, Spans,
    StripeGeometry, StripedGeometry,
};
pub use layout::{GeometryError, Layout};
