//! parking_lot's locks, deferring (feature `parking_lot`, on by default).
//!
//! Each type is the lock_api type over [`RawDeferred`] of parking_lot's raw
//! lock, so the whole parking_lot API is here unchanged: `lock`,
//! `try_lock_for`, `upgradable_read`, mapped guards, `unlocked`, `bump`,
//! `lock_arc`. Every acquisition is a section; the queue drains when the
//! thread's outermost section is released.
//!
//! ```
//! use freeq::parking_lot::{Mutex, RwLock};
//! let m = Mutex::new(vec![String::from("a")]);
//! let rw = RwLock::new(0u32);
//! {
//!     let r = rw.read();          // section 1
//!     let mut g = m.lock();       // section 2
//!     freeq::defer(std::mem::take(&mut *g));
//!     drop(g);                    // inner release: nothing freed yet
//!     assert_eq!(freeq::pending(), 1);
//!     drop(r);                    // outermost release: freed now
//! }
//! assert_eq!(freeq::pending(), 0);
//! ```

#![cfg_attr(docsrs, doc(cfg(feature = "parking_lot")))]

// This file names `RawDeferred`, the condvar adapter and, under loom, the
// loom raw locks; nothing else in freeq.

use crate::lock::raw::RawDeferred;

/// The lock_api crate these types are built on, as parking_lot re-exports it.
pub use ::lock_api;

/// `Arc`-owned guards (`lock_arc`, `read_arc`, ...), lock_api's types as
/// parking_lot re-exports them: the raw lock is the first parameter, e.g.
/// `ArcMutexGuard<freeq::parking_lot::RawMutex, T>`.
pub use lock_api::{
    ArcMutexGuard, ArcReentrantMutexGuard, ArcRwLockReadGuard, ArcRwLockUpgradableReadGuard,
    ArcRwLockWriteGuard,
};

// Under loom the same types are built on loom-aware raw locks.
#[cfg(loom)]
use crate::lock::loom as parking_lot;

/// parking_lot's raw mutex, deferring.
pub type RawMutex = RawDeferred<parking_lot::RawMutex>;
/// parking_lot's eventually-fair raw mutex, with every unlock fair, deferring.
pub type RawFairMutex = RawDeferred<parking_lot::RawFairMutex>;
/// parking_lot's raw reader-writer lock, deferring.
pub type RawRwLock = RawDeferred<parking_lot::RawRwLock>;
/// parking_lot's raw reader-writer lock that permits recursive reads,
/// deferring.
pub type RawRwLockRecursive = RawDeferred<parking_lot::RawRwLockRecursive>;
/// parking_lot's thread id source, for [`ReentrantMutex`].
pub type RawThreadId = parking_lot::RawThreadId;

/// A deferring mutex.
pub type Mutex<T> = lock_api::Mutex<RawMutex, T>;
/// Guard of a [`Mutex`].
pub type MutexGuard<'a, T> = lock_api::MutexGuard<'a, RawMutex, T>;
/// A [`MutexGuard`] narrowed to part of the data.
pub type MappedMutexGuard<'a, T> = lock_api::MappedMutexGuard<'a, RawMutex, T>;

/// A deferring fair mutex.
pub type FairMutex<T> = lock_api::Mutex<RawFairMutex, T>;
/// Guard of a [`FairMutex`].
pub type FairMutexGuard<'a, T> = lock_api::MutexGuard<'a, RawFairMutex, T>;
/// A [`FairMutexGuard`] narrowed to part of the data.
pub type MappedFairMutexGuard<'a, T> = lock_api::MappedMutexGuard<'a, RawFairMutex, T>;

/// A deferring reader-writer lock.
pub type RwLock<T> = lock_api::RwLock<RawRwLock, T>;
/// Shared guard of a [`RwLock`].
pub type RwLockReadGuard<'a, T> = lock_api::RwLockReadGuard<'a, RawRwLock, T>;
/// Exclusive guard of a [`RwLock`].
pub type RwLockWriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawRwLock, T>;
/// Upgradable shared guard of a [`RwLock`].
pub type RwLockUpgradableReadGuard<'a, T> = lock_api::RwLockUpgradableReadGuard<'a, RawRwLock, T>;
/// A [`RwLockReadGuard`] narrowed to part of the data.
pub type MappedRwLockReadGuard<'a, T> = lock_api::MappedRwLockReadGuard<'a, RawRwLock, T>;
/// A [`RwLockWriteGuard`] narrowed to part of the data.
pub type MappedRwLockWriteGuard<'a, T> = lock_api::MappedRwLockWriteGuard<'a, RawRwLock, T>;

/// A deferring reader-writer lock that permits recursive read locking
/// (writers may starve). Each read, recursive or not, is a section; the
/// queue drains when the thread's outermost one is released.
///
/// ```
/// use freeq::parking_lot::RecursiveRwLock;
/// let lock = RecursiveRwLock::new(vec![String::from("x")]);
/// let first = lock.read();
/// let second = lock.read(); // no deadlock, even with a writer waiting
/// assert_eq!(*first, *second);
/// ```
pub type RecursiveRwLock<T> = lock_api::RwLock<RawRwLockRecursive, T>;
/// Shared guard of a [`RecursiveRwLock`].
pub type RecursiveRwLockReadGuard<'a, T> = lock_api::RwLockReadGuard<'a, RawRwLockRecursive, T>;
/// Exclusive guard of a [`RecursiveRwLock`].
pub type RecursiveRwLockWriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawRwLockRecursive, T>;
/// Upgradable shared guard of a [`RecursiveRwLock`].
pub type RecursiveRwLockUpgradableReadGuard<'a, T> =
    lock_api::RwLockUpgradableReadGuard<'a, RawRwLockRecursive, T>;
/// A [`RecursiveRwLockReadGuard`] narrowed to part of the data.
pub type MappedRecursiveRwLockReadGuard<'a, T> =
    lock_api::MappedRwLockReadGuard<'a, RawRwLockRecursive, T>;
/// A [`RecursiveRwLockWriteGuard`] narrowed to part of the data.
pub type MappedRecursiveRwLockWriteGuard<'a, T> =
    lock_api::MappedRwLockWriteGuard<'a, RawRwLockRecursive, T>;

/// A deferring re-entrant mutex: only the outermost acquisition by a thread
/// opens a section.
pub type ReentrantMutex<T> = lock_api::ReentrantMutex<RawMutex, RawThreadId, T>;
/// Guard of a [`ReentrantMutex`].
pub type ReentrantMutexGuard<'a, T> = lock_api::ReentrantMutexGuard<'a, RawMutex, RawThreadId, T>;
/// A [`ReentrantMutexGuard`] narrowed to part of the data.
pub type MappedReentrantMutexGuard<'a, T> =
    lock_api::MappedReentrantMutexGuard<'a, RawMutex, RawThreadId, T>;

/// The raw condition variable behind [`Condvar`].
pub type RawCondvar = crate::lock::condvar::RawDeferredCondvar<parking_lot::RawMutex>;
/// A condition variable for [`Mutex`], with parking_lot's API
/// (`wait(&mut guard)`, `wait_while`, `wait_for`, `wait_until`,
/// `notify_one -> bool`, `notify_all -> usize`). While a thread waits its
/// lock is released, and if that was its only section, its pending items
/// are freed before it blocks; no spurious wakeups.
///
/// ```
/// use freeq::parking_lot::{Condvar, Mutex};
/// use std::sync::Arc;
/// let pair = Arc::new((Mutex::new(false), Condvar::new()));
/// let p2 = pair.clone();
/// let t = std::thread::spawn(move || {
///     let (m, cv) = &*p2;
///     *m.lock() = true;
///     cv.notify_one();
/// });
/// let (m, cv) = &*pair;
/// let mut ready = m.lock();
/// cv.wait_while(&mut ready, |r| !*r);
/// assert!(*ready);
/// # drop(ready); t.join().unwrap();
/// ```
pub type Condvar = lock_api::Condvar<RawCondvar>;
/// Whether a timed [`Condvar`] wait timed out.
pub type WaitTimeoutResult = lock_api::WaitTimeoutResult;

/// A new [`Mutex`] in a `const` context.
pub const fn const_mutex<T>(value: T) -> Mutex<T> {
    Mutex::from_raw(<RawMutex as lock_api::RawMutex>::INIT, value)
}

/// A new [`FairMutex`] in a `const` context.
pub const fn const_fair_mutex<T>(value: T) -> FairMutex<T> {
    FairMutex::from_raw(<RawFairMutex as lock_api::RawMutex>::INIT, value)
}

/// A new [`RecursiveRwLock`] in a `const` context.
pub const fn const_recursive_rwlock<T>(value: T) -> RecursiveRwLock<T> {
    RecursiveRwLock::from_raw(<RawRwLockRecursive as lock_api::RawRwLock>::INIT, value)
}

/// A new [`RwLock`] in a `const` context.
pub const fn const_rwlock<T>(value: T) -> RwLock<T> {
    RwLock::from_raw(<RawRwLock as lock_api::RawRwLock>::INIT, value)
}
