//! # freeq: free it after you unlock, automatically
//!
//! Code inside a critical section hands the values it would drop to its
//! thread's *free queue*; the queue drains the moment the thread leaves its
//! outermost critical section, after the lock is released. Lock hold times
//! shrink to the work that needs the lock.
//!
//! ```
//! use std::collections::HashMap;
//! let cache = freeq::Mutex::new(HashMap::<u64, Vec<String>>::new());
//! {
//!     let mut map = cache.lock().unwrap();
//!     if let Some(old) = map.insert(7, vec!["fresh".into(); 16]) {
//!         freeq::defer(old); // not freed here, under the lock...
//!     }
//! } // ...but here: unlock first, then free.
//! ```
//!
//! ## The tour
//! - **Sections.** A thread is in a section while it holds a freeq lock
//!   guard or a [`Section`]. Sections nest; only closing the outermost one
//!   drains. Guards are `!Send`.
//! - **Deferring.** [`defer`] queues a value (O(1), no allocation once
//!   warm), [`defer_with`] frees it with your function (return it to a
//!   pool), [`defer_fn`] runs an action (a wake-up). Outside a section they
//!   are freed at once by the thread's policy (dropped there under
//!   `Inline`, possibly handed off under `Offload`). [`Deferred<T>`] defers its own drop: store it in a map
//!   and every value displaced under a lock waits for the unlock.
//! - **Locks.** [`Mutex`] and [`RwLock`] are `std`'s with the same API;
//!   [`parking_lot`] has parking_lot's locks; [`RawDeferred`] makes any
//!   lock_api raw lock deferring; [`LockGuard::new`] wraps any guard.
//! - **Condition variables.** [`Condvar`] (for [`Mutex`]) and
//!   `freeq::parking_lot::Condvar` release the lock while waiting and, if
//!   it was the thread's only section, free its queue before blocking.
//! - **Drains** free in FIFO order, run in constant stack however many
//!   frees defer more, keep going when one panics (the first panic resumes
//!   afterwards), and happen at thread exit for anything left queued.
//! - **Explicit queues.** [`FreeQueue`] is an owned, `Send` queue for code
//!   that prefers to say when.
//! - **Policies.** [`Policy::Inline`] (default) frees on the unlocking
//!   thread; [`Policy::Offload`] hands a batch that is worth moving (its
//!   learned drop cost is at least [`offload_threshold_ns`], or it holds a
//!   type not timed yet, timed where it is freed), in O(1), to its CPU's
//!   inbox, freed by idle-priority reclaimer threads wherever a CPU has
//!   time ([`set_policy`], [`quiesce`]); cheap batches stay inline. [`defer_heavy`] sends one value off the thread whatever the
//!   policy, and [`set_offload_executor`] routes batches to your own
//!   threads. Reclaimers run at idle priority (`SCHED_IDLE` on Linux,
//!   background QoS on macOS, idle thread priority on Windows) so
//!   they never preempt a producer; when they fall behind, the backlog
//!   bound ([`set_offload_bound`]) sends producers back to inline frees.
//! - **Epochs.** [`retire`] also waits for lock-free readers pinned with
//!   [`epoch::pin`](https://docs.rs/crossbeam-epoch/0.9/crossbeam_epoch/fn.pin.html).
//! - **Stats.** [`stats`] sums counters over all threads.
//! - **Memory.** Each thread's queue reuses its buffer; what it keeps after
//!   a spike is capped ([`set_max_retained`], 64 KiB by default).
//!
//! ## Which lock do I use
//!
//! | you have | use | notes |
//! | --- | --- | --- |
//! | `std::sync::Mutex` / `RwLock` | [`Mutex`] / [`RwLock`] | std's API, poisoning kept; [`Condvar`] pairs with [`Mutex`] |
//! | parking_lot's `Mutex`, `RwLock`, `ReentrantMutex`, `FairMutex` | the types in [`parking_lot`] | same API: timed, fair, upgradable, mapped and `Arc` guards; a `Condvar` too |
//! | another lock_api lock (spin, custom) | `lock_api::Mutex<freeq::RawDeferred<R>, T>` | [`RawDeferred`] forwards every raw trait `R` implements |
//! | any other guard | [`LockGuard::new`] | releases the guard, then drains; call [`prepare_thread`] before taking the lock |
//! | an async lock (tokio, async-lock, futures) held across `.await` | `freeq::tokio::{Mutex, RwLock}` (feature `tokio`) or [`AsyncGuard::new`] | the guard's own bin, freed after the release; `unlock().await` hands off first |
//! | no lock, just a scope | [`section`] | RAII section |
//! | an explicit batch to free later, maybe elsewhere | [`FreeQueue`] | owned, `Send`; `drain()` or drop |
//!
//! ## When not to use it
//!
//! - **Cheap drops.** A `u64` or a small `Copy` struct costs nothing to
//!   drop; deferring it costs a few nanoseconds and saves nothing.
//! - **Uncontended locks nobody waits on.** freeq moves the frees out of
//!   the critical section; if no other thread ever waits for the lock, that
//!   only moves latency around.
//! - **Frees that must happen before the unlock**, because another thread
//!   checks for them while the lock is held: keep those drops in place.
//! - **`Policy::Offload` on busy cores.** Reclaimers run only where a CPU
//!   is idle; when every core is busy with producers, the frees wait or
//!   fall back inline. Offload pays off with spare cores or single values
//!   that are heavy to drop.
//!
//! ## Why `defer` needs `T: Send + 'static`, even under `Policy::Inline`
//!
//! - **`Send`: the batch may be freed on another thread.** The policy is
//!   read when the batch drains, not when a value is deferred: a
//!   [`set_policy`] or [`set_default_policy`] (from any thread) in between
//!   sends values deferred under `Inline` to a reclaimer thread.
//!   [`FreeQueue`]s are `Send` and may be drained anywhere.
//! - **`'static`: a queued value outlives the scope that deferred it.** It
//!   is freed when the *outermost* section closes, which may be in a
//!   caller's frame long after the deferring function returned, or, if a
//!   guard is leaked, at thread exit. A borrow inside it could dangle by
//!   then. Defer an owned value (clone it, or wrap it in an `Arc`).
//!
//! ## Async code
//!
//! freeq's guards are `!Send`, so a future that holds one across an
//! `.await` is `!Send` too: a multi-threaded runtime (`tokio::spawn`)
//! refuses it at compile time, which is what you want, since the guard
//! must be released on the thread that took it.
//!
//! A current-thread runtime or a `LocalSet` accepts such a future, and
//! then all tasks on that thread share one section: while one task holds a
//! guard (or a [`Section`]) over an `.await`, every other task's `defer`
//! on that thread is queued behind it and nothing is freed until that task
//! releases its guard. Release guards before awaiting (scope them in a
//! block), as you would a `std` mutex guard; clippy's
//! `await_holding_invalid_type` lint can enforce it (see [`AsyncGuard`]).
//!
//! For locks held across `.await`, use [`AsyncGuard`] (any guard) or the
//! locks of `freeq::tokio` (feature `tokio`: tokio's `Mutex` and `RwLock`).
//! Their guards open no thread-local section: each carries its own bin,
//! filled by `guard.defer(v)` or by `guard.with(|v| ..)` (which catches
//! what a synchronous closure drops), freed after the release on whichever
//! thread drops the guard; `guard.unlock().await` lets a queued task take
//! the lock before the frees.
//!
//! ## Large values
//!
//! `defer` takes its value by value, and the value travels through a few
//! calls before it lands in the queue. In debug builds each of those calls
//! may keep its own copy on the stack, so deferring a very large value
//! (a 1 MiB array, say) can overflow a thread's stack where the same code in
//! release does not. Box large values first, before taking the lock: the
//! queue then carries a pointer. (The queue stores values up to 256 bytes
//! in place and boxes larger ones itself, which is an allocation under the
//! lock; boxing them beforehand keeps that out of the critical section.)
//!
//! ```
//! let table = freeq::Mutex::new(vec![0u8; 16]);
//! // Built on the heap, never on the stack:
//! let big: Box<[u8]> = vec![7u8; 1 << 20].into_boxed_slice();
//! {
//!     let _guard = table.lock().unwrap();
//!     freeq::defer(big); // the queue holds a pointer and a length
//! }
//! // An array already on the stack: one move into a Box, then defer the Box.
//! let array = [0u64; 4096];
//! {
//!     let _guard = table.lock().unwrap();
//!     freeq::defer(Box::new(array));
//! }
//! assert_eq!(freeq::pending(), 0);
//! ```
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::undocumented_unsafe_blocks)]

// The crate root declares the layers (queue at the bottom, reclaim above
// it, lock above that, the rest at the top level) and re-exports the
// public API. Inside src/ nothing reaches an item through the root: each
// file names the module that defines it (scripts/layers.py checks).
pub mod alloc;
mod defer;
mod deferred;
mod free_queue;
mod lock;
// Under loom, freeq registers no process hooks and sets no priorities.
#[cfg_attr(loom, allow(dead_code))]
mod platform;
mod queue;
mod reclaim;
mod stats;
mod sync;

#[cfg(loom)]
pub use lock::loom;
#[cfg(feature = "parking_lot")]
pub use lock::parking_lot;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use lock::tokio;

pub use defer::{defer, defer_fn, defer_heavy, defer_with, retire};
pub use deferred::Deferred;
pub use free_queue::FreeQueue;
pub use lock::async_guard::AsyncGuard;
pub use lock::condvar::{Condvar, RawDeferredCondvar, WaitTimeoutResult};
pub use lock::guard::{LockGuard, Section, section};
pub use lock::raw::{DeferredGuard, RawDeferred};
pub use lock::std_lock::{
    Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, StdMutexGuard,
};
#[doc(hidden)]
pub use queue::section::queue_bytes;
pub use queue::section::{
    DEFAULT_MAX_RETAINED, in_section, max_retained, pending, set_max_retained,
};
pub use reclaim::dispatch::{
    flush, policy, prepare_thread, quiesce, set_default_policy, set_policy,
};
pub use reclaim::executor::{Batch, clear_offload_executor, set_offload_executor};
pub use reclaim::policy::{Policy, default_policy};
pub use reclaim::priority::{ReclaimerPriority, reclaimer_priority, set_reclaimer_priority};
pub use reclaim::thresholds::{
    DEFAULT_OFFLOAD_BOUND, DEFAULT_OFFLOAD_THRESHOLD_NS, offload_bound, offload_threshold_ns,
    set_offload_bound, set_offload_threshold_ns,
};
pub use stats::{Stats, stats};

/// Re-export of the `lock_api` crate freeq builds on.
pub use lock_api;

/// crossbeam-epoch, re-exported: pin lock-free readers with
/// `freeq::epoch::pin()`; [`retire`] waits for them.
pub use crossbeam_epoch as epoch;

#[doc(hidden)]
pub use reclaim::dispatch::reclaimer_count as __reclaimer_count;
#[doc(hidden)]
pub use reclaim::reclaimer::Reclaimer as __Reclaimer;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
