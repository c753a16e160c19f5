//! The `defer_frees` example with mimalloc as the global allocator.

#[global_allocator]
static ALLOC: freeq::alloc::DeferFrees<mimalloc::MiMalloc> =
    freeq::alloc::DeferFrees::new(mimalloc::MiMalloc);

#[path = "../../../examples/common/args.rs"]
mod args;
#[path = "../../../examples/common/defer_frees_bench.rs"]
mod bench;
#[path = "../../../examples/common/workload.rs"]
mod workload;

fn main() {
    bench::main("mimalloc", || mimalloc::MiMalloc);
}
