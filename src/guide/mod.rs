//! The guide: what freeq promises, where its edges are, and how to use it
//! well. Reference material beyond the API docs; this module holds no
//! code, only chapters.
//!
//! | chapter | what it covers |
//! | --- | --- |
//! | [`contract`] | the full contract: sections, `defer`, drains, custom frees, re-entrancy, panics, thread and process exit, memory, policies, epochs |
//! | [`locks`] | which lock to use, condition variables, wrapping guards of your own |
//! | [`pitfalls`] | things users trip on: why `T: Send + 'static`, async code, large values in debug builds |
//! | [`edges`] | edges to know: leaked guards, thread-locals, process exit, `fork()`, condvar waits with your own notify |
//! | [`offload`] | `Policy::Offload` and its reclaimers, the cost rule, executors, `quiesce`, and which policy per allocator |
//! | [`allocator`] | [`DeferFrees`](crate::alloc::DeferFrees): every `free` under a lock made after the unlock, its rules, and its physics per allocator |
//! | [`profile`] | [`freeq::profile`](crate::profile): reading its table per lock site, what `moved` estimates, and what it costs |
//! | [`comparison`] | freeq beside the hand-written `Vec` pattern, crossbeam-epoch, defer-drop, basedrop and parking_lot's `unlocked` |
//! | [`platforms`] | what each platform provides and what freeq falls back to |
//! | [`loom`] | testing your own code with loom on freeq's locks, and what differs under loom |
//! | [`examples`] | the runnable examples in the repository |
//! | [`layout`] | the source tree as freeq's layers, and the checks that keep it so (loom, Miri, sanitizers, cross builds) |
//!
//! # When to use freeq, and when not
//!
//! Use it when values are replaced or removed under a lock and are costly
//! to drop: records with many heap parts, `Vec`s of `String`s, tree nodes,
//! memtables, file handles, `Arc`s whose last reference may go under the
//! lock. Also for wake-ups: `defer_fn(|| t.unpark())` wakes a thread after
//! the unlock, so it does not immediately block on the lock you still
//! hold.
//!
//! - **Cheap drops.** A `u64` or a small `Copy` struct costs nothing to
//!   drop; deferring it costs a few nanoseconds and saves nothing.
//! - **Uncontended locks nobody waits on.** freeq moves the frees out of
//!   the critical section; if no other thread ever waits for the lock, that
//!   only moves latency around.
//! - **Frees that must happen before the unlock**, because another thread
//!   checks for them while the lock is held: keep those drops in place.
//! - **`Policy::Offload` on busy cores.** Reclaimers run only where a CPU
//!   is idle; when every core is busy, a handed-off batch waits up to
//!   `offload_max_wait()` (10 ms) and the producer then frees its later
//!   batches itself, at `Inline`'s cost. Offload pays off with spare cores
//!   or single values that are heavy to drop, and under glibc's malloc it
//!   helps little (see [which policy, per
//!   allocator](crate::guide::offload#which-policy-per-allocator)).
//!
//! `BENCHMARKS.md` in the repository, "When freeq does not help", has the
//! figures.

#[doc = include_str!("contract.md")]
pub mod contract {}

#[doc = include_str!("locks.md")]
pub mod locks {}

#[doc = include_str!("pitfalls.md")]
pub mod pitfalls {}

#[doc = include_str!("edges.md")]
pub mod edges {}

#[doc = include_str!("offload.md")]
pub mod offload {}

#[doc = include_str!("allocator.md")]
pub mod allocator {}

#[doc = include_str!("profile.md")]
pub mod profile {}

#[doc = include_str!("comparison.md")]
pub mod comparison {}

#[doc = include_str!("platforms.md")]
pub mod platforms {}

#[doc = include_str!("loom.md")]
pub mod loom {}

#[doc = include_str!("examples.md")]
pub mod examples {}

#[doc = include_str!("layout.md")]
pub mod layout {}
