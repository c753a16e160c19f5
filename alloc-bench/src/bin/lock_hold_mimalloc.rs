//! The `lock_hold` example with mimalloc as the global allocator.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../../examples/lock_hold.rs"]
mod lock_hold;

fn main() {
    lock_hold::main();
}
