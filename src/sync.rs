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
    AtomicPtr as StaticAtomicPtr, AtomicU8 as StaticAtomicU8, AtomicU32 as StaticAtomicU32,
    AtomicU64 as StaticAtomicU64, AtomicUsize as StaticAtomicUsize,
};

/// What `slot` has published, if anything: see [`publish_once`].
#[inline]
pub(crate) fn published<T>(slot: &'static StaticAtomicPtr<T>) -> Option<&'static T> {
    let p = slot.load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: (1) a non-null `slot` holds a `Box<T>` leaked by
    // `publish_once`, written before it was published (release; read
    // here with acquire) and never freed: it lives as long as the process.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// A process-wide value built once, on first use, and published by a
/// compare-and-swap (a `Box` leaked for the process's lifetime), where a
/// `OnceLock` would not do: a child forked while another thread of its
/// parent was inside `OnceLock::get_or_init` inherits it half built and
/// waits on it forever, while here it finds either nothing (and builds its
/// own) or the finished value. Threads that race build one each; the
/// first published is kept and the others dropped.
pub(crate) fn publish_once<T>(
    slot: &'static StaticAtomicPtr<T>,
    build: impl FnOnce() -> T,
) -> &'static T {
    use std::sync::atomic::Ordering::{AcqRel, Acquire};
    if let Some(v) = published(slot) {
        return v;
    }
    let mine = Box::into_raw(Box::new(build()));
    match slot.compare_exchange(std::ptr::null_mut(), mine, AcqRel, Acquire) {
        // SAFETY: (2) `mine` is the box just leaked, now published: never
        // freed.
        Ok(_) => unsafe { &*mine },
        Err(first) => {
            // SAFETY: (3) `mine` came from `Box::into_raw` above and was
            // never published: this thread owns it.
            drop(unsafe { Box::from_raw(mine) });
            // SAFETY: (4) as in (1), for the value another thread published.
            unsafe { &*first }
        }
    }
}

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

#[cfg(all(test, unix, not(miri), not(loom)))]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    /// A child forked while another thread of its parent is inside
    /// `publish_once`'s build gets a value of its own, and does not wait
    /// for that build (which, in the child, never ends: its thread was not
    /// forked). The same test over a `OnceLock` has its child killed at
    /// the deadline.
    #[test]
    fn a_child_forked_during_a_build_builds_its_own() {
        static SLOT: StaticAtomicPtr<u64> = StaticAtomicPtr::new(std::ptr::null_mut());
        static BUILDING: Barrier = Barrier::new(2);
        static FORKED: Barrier = Barrier::new(2);
        let builder = std::thread::spawn(|| {
            *publish_once(&SLOT, || {
                BUILDING.wait();
                FORKED.wait();
                1
            })
        });
        BUILDING.wait();
        // SAFETY: the child only reads and builds the slot (a
        // compare-and-swap and an allocation; glibc's allocator is
        // fork-safe) and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let v = *publish_once(&SLOT, || 2);
            // SAFETY: `_exit` ends the child without running the parent's
            // exit handlers or tests.
            unsafe { libc::_exit(if v == 2 { 0 } else { 1 }) };
        }
        FORKED.wait();
        assert_eq!(builder.join().unwrap(), 1);
        assert_eq!(*published(&SLOT).unwrap(), 1);
        // The child has 10 s (it needs microseconds): past that it waits
        // on the build it inherited, and is killed.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        loop {
            // SAFETY: `pid` is this process's child; `status` is writable.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                panic!("the forked child waited on the build it inherited");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's own build was not published: status {status}"
        );
    }
}
