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
//!   act at once.
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
//!   thread; [`Policy::Offload`] hands the whole batch, in O(1), to a
//!   per-CPU reclaimer thread ([`set_policy`], [`quiesce`]). Reclaimers
//!   run at idle priority (`SCHED_IDLE` on Linux) so they never preempt a
//!   producer; when they fall behind, the backlog bound
//!   ([`set_offload_bound`]) sends producers back to inline frees.
//! - **Epochs.** [`retire`] also waits for lock-free readers pinned with
//!   [`epoch::pin`].
//! - **Stats.** [`stats`] sums counters over all threads.
//! - **Memory.** Each thread's queue reuses its buffer; what it keeps after
//!   a spike is capped ([`set_max_retained`], 64 KiB by default).
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod condvar;
mod defer;
mod free_queue;
mod guard;
mod item;
mod offload;
mod policy;
mod queue;
mod raw;
mod retire;
mod stats;
mod std_lock;
mod sync;

#[cfg(feature = "parking_lot")]
pub mod parking_lot;

pub use condvar::{Condvar, RawDeferredCondvar, WaitTimeoutResult};
pub use defer::{defer, defer_fn, defer_with};
pub use free_queue::FreeQueue;
pub use guard::{section, LockGuard, Section};
pub use offload::{offload_bound, quiesce, set_offload_bound, DEFAULT_OFFLOAD_BOUND};
pub use policy::{default_policy, set_default_policy, Policy};
#[doc(hidden)]
pub use queue::queue_bytes;
pub use queue::{
    flush, in_section, max_retained, pending, policy, prepare_thread, set_max_retained, set_policy,
    DEFAULT_MAX_RETAINED,
};
pub use raw::{DeferredGuard, RawDeferred};
pub use retire::retire;
pub use stats::{stats, Stats};
pub use std_lock::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, StdMutexGuard};

/// Re-export of the `lock_api` crate freeq builds on.
pub use lock_api;

/// crossbeam-epoch, re-exported: pin lock-free readers with
/// `freeq::epoch::pin()`; [`retire`] waits for them.
pub use crossbeam_epoch as epoch;

#[doc(hidden)]
pub use offload::Reclaimer as __Reclaimer;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
