//! Case studies: freeq on real registry crates, pinned, unchanged or with
//! only their lock aliases swapped. See README.md beside Cargo.toml.
//!
//! Every binary is one study built on the shared [`harness`]:
//!
//! ```ignore
//! static STUDY: harness::Study = harness::Study {
//!     name: "lru",
//!     configs: &[harness::Config::published("lru as published, plain calls"), ..],
//!     defaults: harness::Defaults::SHORT,
//!     ..
//! };
//! fn main() -> std::process::ExitCode { harness::main(&STUDY, run) }
//! fn run(job: &harness::Job) -> harness::Sample {
//!     harness::run(job, job.waiters, |i| move || { /* one timed waiting op */ }, || move || { /* one freeing op */ })
//! }
//! ```
//!
//! This crate also sets the global allocator of every binary that links
//! it: [`harness::alloc::Dispatch`], which picks glibc's, jemalloc or
//! mimalloc, wrapped in `freeq::alloc::DeferFrees` or not, once per
//! process from `CASE_STUDIES_ALLOC` (the driver sets it per child).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod harness;
pub mod results;
