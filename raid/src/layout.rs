//! The layouts, shared with the metadata that records them per LV.

pub use metadata::layout::{
    GeometryError, Layout, Limits, DEFAULT_UNIT_BYTES, MAX_LEGS, MAX_PE_BYTES, MIN_PE_BYTES,
    MIN_UNIT_BYTES,
};
