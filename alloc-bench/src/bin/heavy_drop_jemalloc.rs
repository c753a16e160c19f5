//! The `heavy_drop` benchmark with jemalloc as the global allocator.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../../../benches/heavy_drop.rs"]
mod heavy_drop;

fn main() {
    heavy_drop::main();
}
