//! Blockvirt's block layer: the contract every layer speaks, the PV leaves
//! at the bottom, and the thin volume layer that maps a logical volume's
//! addresses onto physical extents.
//!
//! ```text
//!  gateways (NBD, iSCSI, FUSE)
//!        │ BlockDevice
//!  volume::ThinVolume      LBA -> extent map, thin allocation, discard, status
//!        │ BlockDevice (Checked)
//!  leaf::FileDevice        io_uring or threads; O_DIRECT; punch-hole discard
//! ```
//!
//! For fault injection, `leaf::Faulty` wraps a live PV (modes set at run
//! time) and `testing::SimDisk` stands in for one in seeded simulation tests.
//! `Counted` counts the errors a device returns, for the server's metrics.

pub mod buf;
pub mod checked;
pub mod counted;
pub mod device;
pub mod error;
pub mod label;
pub mod leaf;
pub mod testing;
pub mod volume;

pub use buf::{IoBuf, IoBufMut, IO_ALIGN};
pub use checked::Checked;
pub use counted::Counted;
pub use device::{
    BlockDevice, BlockStatus, BufResult, ByteRange, Caps, DeviceInfo, StatusExtent, WriteFlags,
    ZeroFlags,
};
pub use error::{BlockError, BlockResult, ErrorKind};
