//! tokio's async locks, with guards that free what they defer after the
//! release (feature `tokio`).
//!
//! [`Mutex`] and [`RwLock`] wrap `tokio::sync`'s and keep their API; every
//! guard is an [`AsyncGuard`](crate::AsyncGuard) around tokio's guard, so it may be held
//! across `.await` and moved between worker threads exactly when tokio's
//! is. Each guard carries its own bin of deferred work: nothing
//! thread-local spans an await. Dropping a guard releases the lock first
//! and then frees the bin, on whichever thread drops it;
//! [`AsyncGuard::unlock`](crate::AsyncGuard::unlock)`.await` releases, lets a task already queued on
//! the lock run, then frees.
//!
//! ```
//! use freeq::tokio::Mutex;
//! use std::sync::Arc;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() {
//!     let cache = Arc::new(Mutex::new(vec![String::from("old"); 10_000]));
//!     let mut g = cache.lock().await;
//!     let old = std::mem::replace(&mut *g, vec![String::from("new"); 10_000]);
//!     g.defer(old); // 10k strings, freed after the release
//!     g.unlock().await; // release, let a waiter in, then free
//! }
//! ```
//!
//! Why it matters where the frees run: tokio hands a released mutex
//! straight to the first queued waiter and wakes it into the releasing
//! worker's next slot, which runs only when the releasing task's poll
//! ends. Frees made in that poll delay the waiter. So a plain drop frees a
//! cheap bin in place (one small value with no queue at all) and hands a
//! costly one (by its types' learned drop cost) to freeq's reclaimers, and
//! `unlock().await` yields once, letting the waiter run, before it frees
//! in place (one cheap value it frees at once, as a plain drop does). Whatever
//! else the releasing task does in the same poll delays the waiter too:
//! where it goes on working after the release, `unlock().await` (which
//! ends the poll there) is the one to write.
//!
//! The lock futures wrap tokio's and add no state of their own.
//!
//! `mutex.rs` has [`Mutex`] and its guards, `rwlock.rs` [`RwLock`] and its
//! guards. Both wrap `tokio::sync` and build each guard's `map`, `try_map`
//! and `downgrade` on
//! [`AsyncGuard::map_guard`](crate::AsyncGuard::map_guard). This file
//! re-exports them and calls nothing in freeq.
//!
//! Every acquisition (`lock`, `read`, `write`, their `_owned` and `try_`
//! forms, `blocking_*`) is a site of [`freeq::profile`](crate::profile):
//! a sampled one reports its wait from the call to holding the lock, its
//! hold until the release, and the time its bin took to free (`moved`;
//! a bin a plain drop sent to a reclaimer is added when the reclaimer has
//! freed it).

mod mutex;
mod rwlock;

pub use tokio::sync::TryLockError;

pub use crate::lock::tokio::mutex::{
    MappedMutexGuard, Mutex, MutexGuard, OwnedMappedMutexGuard, OwnedMutexGuard,
};
pub use crate::lock::tokio::rwlock::{
    OwnedRwLockMappedWriteGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock,
    RwLockMappedWriteGuard, RwLockReadGuard, RwLockWriteGuard,
};
