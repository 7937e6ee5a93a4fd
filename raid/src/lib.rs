//! Blockvirt's redundancy core: stripe geometry, erasure codecs and block
//! checksums. Pure functions and pure data; no I/O.
