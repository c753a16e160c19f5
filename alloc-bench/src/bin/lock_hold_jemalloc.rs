//! The `lock_hold` example with jemalloc as the global allocator.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../../../examples/lock_hold.rs"]
mod lock_hold;

fn main() {
    lock_hold::main();
}
