//! Unit tests of the journal's parts: the on-disk format, the ring, and
//! the scan (on a simulated disk).

mod format;
mod records;
mod ring;
mod scan;
