//! lock_api 0.4's raw traits (feature `lock_api_04`), so that lock_api 0.4
//! raw locks (spin, parking_lot 0.12, a database's own) become deferring
//! too: `lock_api04::Mutex<RawDeferred<spin::mutex::SpinMutex<()>>, T>`.
//! lock_api 0.4 keeps no per-acquisition state; the sections are the same
//! as above, and guards are `!Send` (`GuardMarker = GuardNoSend`).
//!
//! ```
//! type Mutex<T> = lock_api04::Mutex<freeq::RawDeferred<spin::mutex::SpinMutex<()>>, T>;
//! let m = Mutex::new(vec![String::from("x")]);
//! let mut g = m.lock();
//! freeq::defer(std::mem::take(&mut *g));
//! assert_eq!(freeq::pending(), 1);
//! drop(g);
//! assert_eq!(freeq::pending(), 0);
//! ```
//!
//! ```compile_fail
//! type Mutex<T> = lock_api04::Mutex<freeq::RawDeferred<spin::mutex::SpinMutex<()>>, T>;
//! fn assert_send<T: Send>(_: T) {}
//! let m = Mutex::new(0);
//! assert_send(m.lock());
//! ```
//!
//! This file calls the reclaim layer's section entries, the profile's
//! lock kinds and `raw.rs`.

use lock_api04 as la;

use std::panic::Location;

use crate::lock::raw::{Leave, RawDeferred};
use crate::profile::table::LockKind;
use crate::reclaim::dispatch::{cancel_sample, enter, enter_sampled, prepare_at};

/// Readies the thread, takes the inner lock, opens the section. lock_api
/// 0.4's methods do not pass their caller on: the profile's site is the
/// line of lock_api 0.4 that called here.
#[inline]
#[track_caller]
fn acquire(kind: LockKind, lock: impl FnOnce()) {
    let sampled = prepare_at(Location::caller(), kind);
    lock();
    if sampled {
        enter_sampled();
    } else {
        enter();
    }
}

/// [`acquire`] for an attempt: a section only on success.
#[inline]
#[track_caller]
fn acquire_if(kind: LockKind, lock: impl FnOnce() -> bool) -> bool {
    let sampled = prepare_at(Location::caller(), kind);
    let got = lock();
    match (got, sampled) {
        (true, true) => enter_sampled(),
        (true, false) => enter(),
        (false, true) => cancel_sample(),
        (false, false) => {}
    }
    got
}

/// A transition (upgrade, downgrade) keeps the section; if it unwinds,
/// the acquisition is gone and so is the section.
#[inline]
fn transition<T>(f: impl FnOnce() -> T) -> T {
    let leave = Leave;
    let r = f();
    std::mem::forget(leave);
    r
}

// (v1) As (1) above: every operation delegates to `R`, which provides
// the exclusion and ordering lock_api 0.4 asks for; freeq adds section
// bookkeeping around it, and makes guards `!Send` so a section closes
// on the thread that opened it. Bumps delegate to `R`'s own bump, so
// the section stays open across them.
// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawMutex> la::RawMutex for RawDeferred<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawDeferred { inner: R::INIT };
    type GuardMarker = la::GuardNoSend;

    #[inline]
    #[track_caller]
    fn lock(&self) {
        acquire(LockKind::RawMutex, || self.inner.lock())
    }

    #[inline]
    #[track_caller]
    fn try_lock(&self) -> bool {
        acquire_if(LockKind::RawMutex, || self.inner.try_lock())
    }

    #[inline]
    unsafe fn unlock(&self) {
        let _leave = Leave;
        // SAFETY: (v2) the caller holds this lock, so it holds `R`.
        unsafe { self.inner.unlock() }
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawMutexFair> la::RawMutexFair for RawDeferred<R> {
    unsafe fn unlock_fair(&self) {
        let _leave = Leave;
        // SAFETY: (v3) as in (v2).
        unsafe { self.inner.unlock_fair() }
    }

    unsafe fn bump(&self) {
        // SAFETY: (v4) as in (v2); the lock stays held, so does the section.
        unsafe { self.inner.bump() }
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawMutexTimed> la::RawMutexTimed for RawDeferred<R> {
    type Duration = R::Duration;
    type Instant = R::Instant;

    #[track_caller]
    fn try_lock_for(&self, timeout: Self::Duration) -> bool {
        acquire_if(LockKind::RawMutex, || self.inner.try_lock_for(timeout))
    }

    #[track_caller]
    fn try_lock_until(&self, timeout: Self::Instant) -> bool {
        acquire_if(LockKind::RawMutex, || self.inner.try_lock_until(timeout))
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLock> la::RawRwLock for RawDeferred<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawDeferred { inner: R::INIT };
    type GuardMarker = la::GuardNoSend;

    #[inline]
    #[track_caller]
    fn lock_shared(&self) {
        acquire(LockKind::RawRead, || self.inner.lock_shared())
    }

    #[inline]
    #[track_caller]
    fn try_lock_shared(&self) -> bool {
        acquire_if(LockKind::RawRead, || self.inner.try_lock_shared())
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        let _leave = Leave;
        // SAFETY: (v5) as in (v2), shared.
        unsafe { self.inner.unlock_shared() }
    }

    #[inline]
    #[track_caller]
    fn lock_exclusive(&self) {
        acquire(LockKind::RawWrite, || self.inner.lock_exclusive())
    }

    #[inline]
    #[track_caller]
    fn try_lock_exclusive(&self) -> bool {
        acquire_if(LockKind::RawWrite, || self.inner.try_lock_exclusive())
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        let _leave = Leave;
        // SAFETY: (v6) as in (v2), exclusive.
        unsafe { self.inner.unlock_exclusive() }
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    #[inline]
    fn is_locked_exclusive(&self) -> bool {
        self.inner.is_locked_exclusive()
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockFair> la::RawRwLockFair for RawDeferred<R> {
    unsafe fn unlock_shared_fair(&self) {
        let _leave = Leave;
        // SAFETY: (v7) as in (v5).
        unsafe { self.inner.unlock_shared_fair() }
    }

    unsafe fn unlock_exclusive_fair(&self) {
        let _leave = Leave;
        // SAFETY: (v8) as in (v6).
        unsafe { self.inner.unlock_exclusive_fair() }
    }

    unsafe fn bump_shared(&self) {
        // SAFETY: (v9) as in (v4).
        unsafe { self.inner.bump_shared() }
    }

    unsafe fn bump_exclusive(&self) {
        // SAFETY: (v10) as in (v4).
        unsafe { self.inner.bump_exclusive() }
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockDowngrade> la::RawRwLockDowngrade for RawDeferred<R> {
    unsafe fn downgrade(&self) {
        // SAFETY: (v11) as in (v6); the section carries over.
        transition(|| unsafe { self.inner.downgrade() })
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockTimed> la::RawRwLockTimed for RawDeferred<R> {
    type Duration = R::Duration;
    type Instant = R::Instant;

    #[track_caller]
    fn try_lock_shared_for(&self, timeout: Self::Duration) -> bool {
        acquire_if(LockKind::RawRead, || {
            self.inner.try_lock_shared_for(timeout)
        })
    }

    #[track_caller]
    fn try_lock_shared_until(&self, timeout: Self::Instant) -> bool {
        acquire_if(LockKind::RawRead, || {
            self.inner.try_lock_shared_until(timeout)
        })
    }

    #[track_caller]
    fn try_lock_exclusive_for(&self, timeout: Self::Duration) -> bool {
        acquire_if(LockKind::RawWrite, || {
            self.inner.try_lock_exclusive_for(timeout)
        })
    }

    #[track_caller]
    fn try_lock_exclusive_until(&self, timeout: Self::Instant) -> bool {
        acquire_if(LockKind::RawWrite, || {
            self.inner.try_lock_exclusive_until(timeout)
        })
    }
}

// SAFETY: see (v1); a recursive read is one more section.
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockRecursive> la::RawRwLockRecursive for RawDeferred<R> {
    #[track_caller]
    fn lock_shared_recursive(&self) {
        acquire(LockKind::RawRead, || self.inner.lock_shared_recursive())
    }

    #[track_caller]
    fn try_lock_shared_recursive(&self) -> bool {
        acquire_if(LockKind::RawRead, || self.inner.try_lock_shared_recursive())
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockRecursiveTimed> la::RawRwLockRecursiveTimed for RawDeferred<R> {
    #[track_caller]
    fn try_lock_shared_recursive_for(&self, timeout: Self::Duration) -> bool {
        acquire_if(LockKind::RawRead, || {
            self.inner.try_lock_shared_recursive_for(timeout)
        })
    }

    #[track_caller]
    fn try_lock_shared_recursive_until(&self, timeout: Self::Instant) -> bool {
        acquire_if(LockKind::RawRead, || {
            self.inner.try_lock_shared_recursive_until(timeout)
        })
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockUpgrade> la::RawRwLockUpgrade for RawDeferred<R> {
    fn lock_upgradable(&self) {
        acquire(LockKind::RawMutex, || self.inner.lock_upgradable())
    }

    #[track_caller]
    fn try_lock_upgradable(&self) -> bool {
        acquire_if(LockKind::RawMutex, || self.inner.try_lock_upgradable())
    }

    unsafe fn unlock_upgradable(&self) {
        let _leave = Leave;
        // SAFETY: (v12) as in (v2), upgradable.
        unsafe { self.inner.unlock_upgradable() }
    }

    unsafe fn upgrade(&self) {
        // SAFETY: (v13) as in (v12); the section carries over.
        transition(|| unsafe { self.inner.upgrade() })
    }

    unsafe fn try_upgrade(&self) -> bool {
        // SAFETY: (v14) as in (v13); on failure the upgradable lock,
        // and so the section, is still held.
        transition(|| unsafe { self.inner.try_upgrade() })
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockUpgradeFair> la::RawRwLockUpgradeFair for RawDeferred<R> {
    unsafe fn unlock_upgradable_fair(&self) {
        let _leave = Leave;
        // SAFETY: (v15) as in (v12).
        unsafe { self.inner.unlock_upgradable_fair() }
    }

    unsafe fn bump_upgradable(&self) {
        // SAFETY: (v16) as in (v4).
        unsafe { self.inner.bump_upgradable() }
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockUpgradeDowngrade> la::RawRwLockUpgradeDowngrade for RawDeferred<R> {
    unsafe fn downgrade_upgradable(&self) {
        // SAFETY: (v17) as in (v13).
        transition(|| unsafe { self.inner.downgrade_upgradable() })
    }

    unsafe fn downgrade_to_upgradable(&self) {
        // SAFETY: (v18) as in (v13).
        transition(|| unsafe { self.inner.downgrade_to_upgradable() })
    }
}

// SAFETY: see (v1).
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::RawRwLockUpgradeTimed> la::RawRwLockUpgradeTimed for RawDeferred<R> {
    #[track_caller]
    fn try_lock_upgradable_for(&self, timeout: Self::Duration) -> bool {
        acquire_if(LockKind::RawMutex, || {
            self.inner.try_lock_upgradable_for(timeout)
        })
    }

    #[track_caller]
    fn try_lock_upgradable_until(&self, timeout: Self::Instant) -> bool {
        acquire_if(LockKind::RawMutex, || {
            self.inner.try_lock_upgradable_until(timeout)
        })
    }

    unsafe fn try_upgrade_for(&self, timeout: Self::Duration) -> bool {
        // SAFETY: (v19) as in (v14).
        transition(|| unsafe { self.inner.try_upgrade_for(timeout) })
    }

    unsafe fn try_upgrade_until(&self, timeout: Self::Instant) -> bool {
        // SAFETY: (v20) as in (v14).
        transition(|| unsafe { self.inner.try_upgrade_until(timeout) })
    }
}

// SAFETY: (v21) thread ids come straight from `R`, which guarantees them.
#[cfg_attr(docsrs, doc(cfg(feature = "lock_api_04")))]
unsafe impl<R: la::GetThreadId> la::GetThreadId for RawDeferred<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawDeferred { inner: R::INIT };

    fn nonzero_thread_id(&self) -> std::num::NonZeroUsize {
        self.inner.nonzero_thread_id()
    }
}
