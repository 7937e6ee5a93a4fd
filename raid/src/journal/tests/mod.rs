//! Unit tests of the journal's pure parts: the on-disk format and the ring.

mod format;
mod ring;
