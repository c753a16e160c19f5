//! The harness every study shares; see the crate docs.

pub mod alloc;
pub mod args;
pub mod driver;
pub mod measure;
pub mod report;
pub mod values;

pub use alloc::{Alloc, active};
pub use driver::{Config, Flag, Job, Study, main};
pub use measure::{Latency, Sample, cores, pin, run, untimed};
pub use values::{Rng, value};
