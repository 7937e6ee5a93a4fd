//! PV leaves: the devices at the bottom of every stack.

mod file;
mod uring;

pub use file::{EngineChoice, FileDevice, FileOptions};
