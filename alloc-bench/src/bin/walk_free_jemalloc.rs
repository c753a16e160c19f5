//! Destructor walk against `free` calls under jemalloc; see
//! `src/common/walk_free.rs`.

#[global_allocator]
static ALLOC: freeq::alloc::DeferFrees<tikv_jemallocator::Jemalloc> =
    freeq::alloc::DeferFrees::new(tikv_jemallocator::Jemalloc);

#[path = "../common/walk_free.rs"]
mod walk_free;

fn main() {
    walk_free::main("jemalloc");
}
