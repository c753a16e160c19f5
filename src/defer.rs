//! The deferral entry points: hand a value (or an action) to this thread's
//! free queue.

use crate::queue;

/// Drops `value` once this thread leaves its outermost section, after the
/// lock that opened it is released. Outside a section it is freed at once
/// by the thread's policy: dropped here under `Policy::Inline`, handed to
/// a reclaimer under `Policy::Offload`.
///
/// Queueing is O(1) and, once the thread's queue has warmed up, allocates
/// nothing for any `T` up to 256 bytes with alignment up to 16. Values of
/// up to 8 bytes take 16 bytes of queue. A long section grows the queue a
/// 4 KiB block at a time and never copies what is queued.
///
/// ```
/// let cache = freeq::Mutex::new(vec![String::from("old")]);
/// {
///     let mut entries = cache.lock().unwrap();
///     let old = std::mem::replace(&mut *entries, vec![String::from("new")]);
///     freeq::defer(old); // freed after `entries` unlocks
///     assert_eq!(freeq::pending(), 1);
/// }
/// assert_eq!(freeq::pending(), 0);
/// ```
#[inline]
pub fn defer<T: Send + 'static>(value: T) {
    queue::push(move || drop(value));
}

/// Like [`defer`], but frees `value` by calling `free(value)` instead of
/// dropping it: return a buffer to a pool, a handle to its owner.
///
/// ```
/// use std::sync::{Arc, Mutex as StdMutex};
/// let pool: Arc<StdMutex<Vec<Vec<u8>>>> = Arc::default();
/// let state = freeq::Mutex::new(vec![0u8; 1024]);
/// {
///     let mut buf = state.lock().unwrap();
///     let old = std::mem::take(&mut *buf);
///     let pool = pool.clone();
///     freeq::defer_with(old, move |mut v| {
///         v.clear();
///         pool.lock().unwrap().push(v);
///     });
/// }
/// assert_eq!(pool.lock().unwrap().len(), 1);
/// ```
#[inline]
pub fn defer_with<T, F>(value: T, free: F)
where
    T: Send + 'static,
    F: FnOnce(T) + Send + 'static,
{
    queue::push(move || free(value));
}

/// Runs `action` once this thread leaves its outermost section, after the
/// lock is released; outside a section, at once by the thread's policy
/// (here under `Policy::Inline`, on a reclaimer under `Policy::Offload`). This is the wake-up half of
/// the idea: a thread woken after the unlock does not block on the lock
/// straight away.
///
/// ```
/// let ready = freeq::Mutex::new(false);
/// let waiter = std::thread::current();
/// {
///     let mut r = ready.lock().unwrap();
///     *r = true;
///     freeq::defer_fn(move || waiter.unpark());
/// } // unlock, then unpark
/// std::thread::park(); // returns at once: the token was set
/// ```
#[inline]
pub fn defer_fn<F: FnOnce() + Send + 'static>(action: F) {
    queue::push(action);
}
