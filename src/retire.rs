//! Epoch retirement: frees that must also wait for lock-free readers.

use std::panic::{self, AssertUnwindSafe};

use crate::item::{self, Buffer};
use crate::queue;

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
    queue::retire(move || drop(value));
}

/// Hands a drained batch of retired items to crossbeam-epoch as one
/// deferred call, and pushes it on to the global queue at once (with a
/// collection attempt), so that a thread that retires rarely does not keep
/// its batch in crossbeam's per-thread bag indefinitely.
pub(crate) fn defer_batch(batch: Buffer) {
    let guard = crossbeam_epoch::pin();
    guard.defer(move || {
        // Runs inside whatever pin or flush collected it: contained.
        let freed = panic::catch_unwind(AssertUnwindSafe(move || {
            let mut batch = batch;
            queue::free_here(&mut batch);
        }));
        if let Err(payload) = freed {
            item::drop_quietly(payload);
        }
    });
    guard.flush();
}
