//! Blockvirt's protocol gateways. A gateway speaks a client protocol on one
//! side and the `blockvirt::BlockDevice` contract on the other; it keeps no
//! volume state of its own.
//!
//! - [`nbd`]: the NBD server, the VM-disk path.
//! - [`observe`]: what a gateway reports about the requests it answers.

pub mod nbd;
pub mod observe;
