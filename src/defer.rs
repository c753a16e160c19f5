//! The deferral entry points: hand a value (or an action) to this thread's
//! free queue, its retired list, or another thread.
//!
//! Each goes through the dispatcher in `reclaim`, which queues it and
//! decides where the batch goes when it drains.

use crate::queue::buffer::Buffer;
use crate::queue::panic::resume;
use crate::reclaim::cost::Learn;
use crate::reclaim::dispatch;

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
    dispatch::push(move || drop(value));
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
    dispatch::push(move || free(value));
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
    dispatch::push(action);
}

/// Frees `value` after this thread leaves its outermost section **and**
/// after every reader pinned (with [`freeq::epoch::pin`](crate::epoch::pin))
/// at that moment has unpinned. Use it for values that lock-free readers may
/// still be reading: the writer unlinks under the lock, retires, and
/// neither the lock nor the readers wait for the free.
///
/// A drain hands all of its retired values to the epoch as **one** deferred
/// call. Once the epoch lets them go, they are freed like deferred values
/// on the thread that collects them, after its own sections close.
/// crossbeam-epoch collects garbage as threads pin; a program that wants
/// retired values gone at a given point can call
/// `freeq::epoch::pin().flush()` a few times once its readers have left.
/// Outside a section the value goes to the epoch at once; so does a value
/// retired during thread exit, after the thread's freeq state is gone (from
/// a free run by the exit path, or a late thread-local destructor): a
/// retired value is never freed before its readers have unpinned.
///
/// A retired value whose destructor panics does not unwind out of the
/// `epoch::pin()` or `flush()` that happened to collect it: freed there
/// (outside any section), the panic is reported by the panic hook and
/// discarded, as on a reclaimer. Collected inside a section, the values
/// join that thread's queue, and a panic surfaces from its drain like any
/// free's.
///
/// ```
/// use freeq::epoch::{self, Atomic, Owned};
/// use std::sync::atomic::Ordering::{AcqRel, Acquire};
///
/// let current = Atomic::new(String::from("v1"));
/// let lock = freeq::Mutex::new(());
///
/// // A lock-free reader.
/// let guard = epoch::pin();
/// let seen = unsafe { current.load(Acquire, &guard).deref() }.clone();
/// assert_eq!(seen, "v1");
/// drop(guard);
///
/// // A writer: swap under the lock, retire the old version.
/// {
///     let _w = lock.lock().unwrap();
///     let g = epoch::pin();
///     let old = current.swap(Owned::new(String::from("v2")), AcqRel, &g);
///     // SAFETY: `old` is unlinked; readers that can still see it are
///     // pinned, and `retire` waits for them.
///     let old = unsafe { old.into_owned() };
///     freeq::retire(old);
/// }
/// # unsafe { drop(current.into_owned()) };
/// ```
#[inline]
pub fn retire<T: Send + 'static>(value: T) {
    dispatch::retire(move || drop(value));
}

/// Drops `value` on another thread, whatever this thread's policy: on one
/// of freeq's reclaimers, or on the executor set with
/// [`set_offload_executor`](crate::set_offload_executor). Inside a section it leaves when the outermost
/// section closes, after the unlock, like [`defer`](crate::defer); outside
/// one, at once. Use it for the one value whose drop is slow (a big tree,
/// a memtable, the last `Arc` of a large structure) in a thread that
/// otherwise frees inline.
///
/// The value is freed inline instead when it cannot leave: on a reclaimer
/// (or in a free run by [`Batch::free`](crate::Batch::free) or [`quiesce`](crate::quiesce)), past the backlog
/// bound, or at process exit. [`quiesce`](crate::quiesce) waits for it like any other
/// offloaded item.
///
/// ```
/// let m = freeq::Mutex::new(vec![0u64; 1 << 16]);
/// {
///     let mut g = m.lock().unwrap();
///     let old = std::mem::replace(&mut *g, Vec::new());
///     freeq::defer_heavy(old); // leaves this thread after the unlock
/// }
/// freeq::quiesce();
/// ```
pub fn defer_heavy<T: Send + 'static>(value: T) {
    defer_fn(move || {
        let mut one = Buffer::new();
        one.push(move || drop(value));
        let mut first = None;
        match dispatch::hand_off(one, &mut first, dispatch::sampled_mark()) {
            // The value now travels as an item of its own, which the
            // reclaimer counts as freed: count it as deferred too, so that
            // `stats()` balances (this action and the value, two items).
            Ok(_) => crate::stats::count_late(1, 0, 0),
            Err(mut back) => back.run_all::<Learn>(&mut first),
        }
        resume(first);
    });
}
