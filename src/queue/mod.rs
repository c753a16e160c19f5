//! The queue layer: per-thread state, sections and the block storage.
//!
//! The bottom of freeq. Sections fill a thread's queue; closing the
//! outermost one yields a batch, which a drain offers to the caller's
//! [`Sink`](sink::Sink) and otherwise frees here. `block.rs` and
//! `buffer/` hold the only serious `unsafe` (type-erased items in chains
//! of blocks), and `hooks.rs` what a run of items is handed from outside;
//! `held.rs` the array in which the allocator's held frees wait;
//! `local.rs` the thread's state and its exit path; `section.rs` the
//! entries (push, enter, leave, flush, the "free this batch here" calls
//! the layer above uses, and the allocator's entry that holds a free
//! until the outermost section closes); `sink.rs` the trait through which
//! the queue calls up; `panic.rs` the panic bookkeeping of a drain.
//! Nothing here imports the reclaim or lock layers: what the queue needs
//! from above, the caller supplies as a `Sink` (or, for held frees, the
//! function that frees a block).

pub(crate) mod block;
pub(crate) mod buffer;
pub(crate) mod held;
pub(crate) mod hooks;
pub(crate) mod local;
pub(crate) mod panic;
pub(crate) mod section;
pub(crate) mod sink;
