//! The NBD server against real clients (nbdinfo, nbdcopy and libnbd's
//! Python bindings from libnbd; qemu-io and qemu-img from QEMU) and against
//! hand-built protocol bytes.
//!
//! Every test starts its own server on an ephemeral loopback port over
//! sparse temp files, bounds its own time, and cleans up after itself.

mod harness;
mod nbdcopy;
mod nbdinfo;
mod nbdsh;
mod observe;
mod qemu;
mod raw_client;
mod raw_handshake;
mod raw_transmission;
