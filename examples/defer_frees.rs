//! `freeq::alloc::DeferFrees` as the global allocator, over the system
//! allocator (glibc on Linux): lock hold, throughput and CPU per section
//! for the same drop-under-lock code under `std::sync::Mutex` and under
//! `freeq::Mutex`, beside `freeq::defer` and `freeq::Deferred`; then the
//! cost `DeferFrees` adds to a `dealloc` outside any section.
//!
//! ```text
//! cargo run --release --example defer_frees -- [--threads 1,2] [--seconds 6]
//! ```
//!
//! The same measurement over jemalloc and mimalloc lives in the
//! `alloc-bench` package (`cd alloc-bench && cargo run --release --bin
//! defer_frees_jemalloc`), so that freeq's own builds never compile their C
//! sources.

use std::alloc::System;

use freeq::alloc::DeferFrees;

#[global_allocator]
static ALLOC: DeferFrees<System> = DeferFrees::new(System);

#[path = "common/args.rs"]
mod args;
#[path = "common/defer_frees_bench.rs"]
mod bench;
#[path = "common/workload.rs"]
mod workload;

fn main() {
    bench::main("system (glibc)", || System);
}
