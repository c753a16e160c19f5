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
//!   lock_api raw lock deferring; [`LockGuard::new`] wraps any guard
//!   ([which to use](guide::locks)).
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
//!   inbox, freed by idle-priority reclaimer threads, one pinned to each
//!   CPU, the producer waking another CPU's first ([`set_policy`],
//!   [`quiesce`]); cheap batches stay inline. [`defer_heavy`] sends one value off the thread whatever the
//!   policy, and [`set_offload_executor`] routes batches to your own
//!   threads. Reclaimers run at idle priority (`SCHED_IDLE` on Linux,
//!   background QoS on macOS, idle thread priority on Windows) so
//!   they never preempt a producer; when they fall behind, the backlog
//!   bounds send producers back to inline frees: too many items waiting
//!   ([`set_offload_bound`]), or a batch waiting too long with no reclaimer
//!   taking it ([`set_offload_max_wait`], 10 ms by default). See
//!   [`guide::offload`].
//! - **Epochs.** [`retire`] also waits for lock-free readers pinned with
//!   [`epoch::pin`](https://docs.rs/crossbeam-epoch/0.9/crossbeam_epoch/fn.pin.html).
//! - **Stats.** [`stats`] sums counters over all threads.
//! - **Memory.** Each thread's queue reuses its buffer; what it keeps after
//!   a spike is capped ([`set_max_retained`], 64 KiB by default).
//! - **Allocator.** [`alloc::DeferFrees`] as the global allocator holds
//!   every `free` made inside a section until the unlock, whatever code
//!   dropped the value.
//!
//! ## The guide
//!
//! [`guide`] carries the depth, every example a doctest:
//! [the contract](guide::contract) point by point,
//! [which lock to use](guide::locks), [things users trip
//! on](guide::pitfalls) (`T: Send + 'static`, async code, large values),
//! [edges to know](guide::edges) (leaked guards, thread-locals, exit,
//! `fork`, condvars), [Offload](guide::offload) and its physics per
//! allocator, [`DeferFrees`](guide::allocator),
//! [the alternatives](guide::comparison), [platforms](guide::platforms),
//! [loom](guide::loom), [examples](guide::examples) and [the source
//! tree](guide::layout). [When freeq does not
//! help](guide#when-to-use-freeq-and-when-not): cheap drops, locks nobody
//! waits on, frees that must happen under the lock.
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
pub mod guide;
mod lock;
// Under loom, freeq registers no process hooks and sets no priorities.
#[cfg_attr(loom, allow(dead_code))]
mod platform;
pub mod profile;
mod queue;
mod reclaim;
mod stats;
mod sync;

#[cfg(loom)]
pub use lock::loom;
#[cfg(feature = "parking_lot")]
#[cfg_attr(docsrs, doc(cfg(feature = "parking_lot")))]
pub use lock::parking_lot;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use lock::tokio;

pub use defer::{defer, defer_fn, defer_heavy, defer_with, retire};
pub use deferred::Deferred;
pub use free_queue::FreeQueue;
pub use lock::async_guard::{AsyncGuard, AsyncUnlock};
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
    DEFAULT_OFFLOAD_BOUND, DEFAULT_OFFLOAD_MAX_WAIT, DEFAULT_OFFLOAD_THRESHOLD_NS, offload_bound,
    offload_max_wait, offload_threshold_ns, set_offload_bound, set_offload_max_wait,
    set_offload_threshold_ns,
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
