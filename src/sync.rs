//! The one place that chooses between `std` and loom.
//!
//! Every atomic, cell, thread-local and thread primitive in freeq comes from
//! here, so the loom models (`--cfg loom`) exercise exactly the code that
//! ships. Thread-confined cells (`Cell`, `UnsafeCell` inside the per-thread
//! state) stay `std` in both modes: they are never shared, so loom has
//! nothing to track there.
//!
//! Every file may call it; it calls nothing in freeq.
#![allow(unused_imports)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread;

pub(crate) use std::cell::{Cell, UnsafeCell};

/// The locks behind `freeq::Mutex` and `freeq::RwLock` (`std_lock.rs`):
/// `std::sync` itself, and under loom the same names with loom's `Mutex`,
/// `RwLock` and their guards in place of `std`'s.
pub(crate) mod std_locks {
    #[cfg(not(loom))]
    pub(crate) use std::sync::*;

    #[cfg(loom)]
    pub(crate) use loom::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
    #[cfg(loom)]
    pub(crate) use std::sync::*;
}

/// Under loom, `std`'s poisoning methods for loom's locks, which do not
/// poison: a panic in a loom model fails the model, so no thread ever
/// sees a poisoned lock. `is_poisoned` is always `false` and
/// `clear_poison` does nothing.
#[cfg(loom)]
pub(crate) trait NoPoison {
    fn is_poisoned(&self) -> bool {
        false
    }
    fn clear_poison(&self) {}
}

#[cfg(loom)]
impl<T: ?Sized> NoPoison for loom::sync::Mutex<T> {}
#[cfg(loom)]
impl<T: ?Sized> NoPoison for loom::sync::RwLock<T> {}

/// Atomics for process-wide settings held in `static`s. loom atomics cannot
/// live in statics, and settings are not what the models check, so these
/// are `std`'s in both modes.
pub(crate) use std::sync::atomic::{
    AtomicU8 as StaticAtomicU8, AtomicU32 as StaticAtomicU32, AtomicU64 as StaticAtomicU64,
    AtomicUsize as StaticAtomicUsize,
};

/// `thread_local!` with a `const` initialiser under `std` (the fast,
/// lazily-registered kind) and loom's tracked thread-locals under loom.
macro_rules! freeq_thread_local {
    ($(#[$m:meta])* $vis:vis static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local!($(#[$m])* $vis static $name: $t = const { $init });
        #[cfg(loom)]
        $(#[$m])*
        $vis static $name: $crate::sync::LoomLocal<$t> = {
            loom::thread_local!(static KEY: $t = $init);
            $crate::sync::LoomLocal(&KEY)
        };
    };
}
pub(crate) use freeq_thread_local;

/// A loom thread-local with `std`'s `with`/`try_with`. When a model fails,
/// loom tears the execution down and then drops the model threads' locals
/// while the failure unwinds; a destructor that touches another
/// thread-local then finds no execution, and loom panics inside a panic,
/// which aborts the process and hides the model's own failure. `try_with`
/// reports that case as an error instead, as `std` does for a destroyed
/// thread-local.
#[cfg(loom)]
pub(crate) struct LoomLocal<T: 'static>(pub(crate) &'static loom::thread::LocalKey<T>);

/// The thread-local is out of reach (see [`LoomLocal`]).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct LocalGone;

#[cfg(loom)]
impl<T: 'static> LoomLocal<T> {
    #[allow(dead_code)]
    pub(crate) fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        self.0.with(f)
    }

    pub(crate) fn try_with<R>(&'static self, f: impl FnOnce(&T) -> R) -> Result<R, LocalGone> {
        if !std::thread::panicking() {
            return self.0.try_with(f).map_err(|_| LocalGone);
        }
        let key = self.0;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || key.try_with(f)))
            .map_err(|_| LocalGone)?
            .map_err(|_| LocalGone)
    }
}

/// Parks the current thread for at most `timeout`. Under loom, which has
/// no clock, it yields instead: a timed wait in a model returns spuriously
/// and its caller re-checks, which is what timed waits must handle anyway.
pub(crate) fn park_timeout(timeout: std::time::Duration) {
    #[cfg(not(loom))]
    std::thread::park_timeout(timeout);
    #[cfg(loom)]
    {
        let _ = timeout;
        loom::thread::yield_now();
    }
}

/// Shrinks a constant under loom and Miri, where every step costs.
pub(crate) const fn scaled(normal: usize, small: usize) -> usize {
    if cfg!(any(loom, miri)) { small } else { normal }
}
