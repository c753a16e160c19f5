//! The `defer_frees` example with jemalloc as the global allocator.

#[global_allocator]
static ALLOC: freeq::alloc::DeferFrees<tikv_jemallocator::Jemalloc> =
    freeq::alloc::DeferFrees::new(tikv_jemallocator::Jemalloc);

#[path = "../../../examples/common/args.rs"]
mod args;
#[path = "../../../examples/common/defer_frees_bench.rs"]
mod bench;
#[path = "../../../examples/common/workload.rs"]
mod workload;

fn main() {
    bench::main("jemalloc", || tikv_jemallocator::Jemalloc);
}
