//! Destructor walk against `free` calls under glibc (the system
//! allocator); see `src/common/walk_free.rs`.

#[global_allocator]
static ALLOC: freeq::alloc::DeferFrees<std::alloc::System> =
    freeq::alloc::DeferFrees::new(std::alloc::System);

#[path = "../common/walk_free.rs"]
mod walk_free;

fn main() {
    walk_free::main("glibc");
}
