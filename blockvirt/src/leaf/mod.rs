//! PV leaves: the devices at the bottom of every stack, and `Faulty`, the
//! wrapper that injects faults in front of one at run time.

mod faulty;
mod file;
mod uring;

pub use faulty::{FaultCounters, FaultMode, FaultModeError, Faulty, SLOW_DELAY_MS_MAX};
pub use file::{EngineChoice, FileDevice, FileOptions};
