//! The `heavy_drop` benchmark with mimalloc as the global allocator.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../../benches/heavy_drop.rs"]
mod heavy_drop;

fn main() {
    heavy_drop::main();
}
