//! The one place that chooses between `std` and loom.
//!
//! Every atomic, cell, thread-local and thread primitive in freeq comes from
//! here, so the loom models (`--cfg loom`) exercise exactly the code that
//! ships. Thread-confined cells (`Cell`, `UnsafeCell` inside the per-thread
//! state) stay `std` in both modes: they are never shared, so loom has
//! nothing to track there.
#![allow(unused_imports)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread;

pub(crate) use std::cell::{Cell, UnsafeCell};

/// Atomics for process-wide settings held in `static`s. loom atomics cannot
/// live in statics, and settings are not what the models check, so these
/// are `std`'s in both modes.
pub(crate) use std::sync::atomic::{AtomicU8 as StaticAtomicU8, AtomicUsize as StaticAtomicUsize};

/// `thread_local!` with a `const` initialiser under `std` (the fast,
/// lazily-registered kind) and loom's tracked thread-locals under loom.
macro_rules! freeq_thread_local {
    ($(#[$m:meta])* static $name:ident: $t:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local!($(#[$m])* static $name: $t = const { $init });
        #[cfg(loom)]
        loom::thread_local!($(#[$m])* static $name: $t = $init);
    };
}
pub(crate) use freeq_thread_local;

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
    if cfg!(any(loom, miri)) {
        small
    } else {
        normal
    }
}
