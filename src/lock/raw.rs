//! `RawDeferred<R>`: any lock_api raw lock, made deferring.
//!
//! Every acquisition readies the thread before it calls the inner lock (so
//! nothing is set up or allocated while the lock is held) and opens a
//! section once the inner lock is taken; every release closes it after the
//! inner lock is let go, even if the inner release unwinds. lock_api builds
//! the guards (plain, mapped, upgradable, Arc-owned, `unlocked`, `bump`) on
//! top, unchanged. Upgrades, downgrades and bumps keep the one section
//! open: the guard is still held, so nothing drains. With feature
//! `lock_api_04`, the same holds for lock_api 0.4 raw locks (`raw04.rs`).
//!
//! Every acquisition is `#[track_caller]`, as lock_api 0.5's methods
//! are, so the profile files a section under the user's `lock()` call.
//!
//! This file calls the dispatcher's section entries, the profile's lock
//! kinds and lock_api.

use std::fmt;
use std::marker::PhantomData;

use lock_api::{
    GetThreadId, RawMutex, RawMutexFair, RawMutexTimed, RawRwLock, RawRwLockDowngrade,
    RawRwLockFair, RawRwLockTimed, RawRwLockUpgrade, RawRwLockUpgradeDowngrade,
    RawRwLockUpgradeFair, RawRwLockUpgradeTimed,
};

use std::panic::Location;

use crate::profile::table::LockKind;
use crate::reclaim::dispatch::{cancel_sample, enter, enter_sampled, leave, prepare_at};

/// A lock_api raw lock `R` whose acquisitions are freeq sections.
///
/// Build any lock_api lock on it: `lock_api::Mutex<RawDeferred<R>, T>`,
/// `lock_api::RwLock<RawDeferred<R>, T>`, `lock_api::ReentrantMutex<...>`.
/// [`freeq::parking_lot`](crate::parking_lot) does exactly that for
/// parking_lot's raw locks. Guards are `!Send` whatever `R` says, because a
/// section belongs to one thread.
///
/// ```
/// type Mutex<T> = lock_api::Mutex<freeq::RawDeferred<parking_lot::RawMutex>, T>;
/// let m = Mutex::new(vec![String::from("x")]);
/// let mut g = m.lock();
/// freeq::defer(std::mem::take(&mut *g));
/// assert!(freeq::in_section());
/// drop(g);
/// assert_eq!(freeq::pending(), 0);
/// ```
///
/// ```compile_fail
/// type Mutex<T> = lock_api::Mutex<freeq::RawDeferred<parking_lot::RawMutex>, T>;
/// fn assert_send<T: Send>(_: T) {}
/// let m = Mutex::new(0);
/// assert_send(m.lock());
/// ```
#[derive(Default)]
pub struct RawDeferred<R> {
    pub(crate) inner: R,
}

impl<R> RawDeferred<R> {
    /// Wraps an existing raw lock.
    pub const fn from_raw(inner: R) -> Self {
        RawDeferred { inner }
    }

    /// The wrapped raw lock.
    pub const fn inner(&self) -> &R {
        &self.inner
    }
}

impl<R> fmt::Debug for RawDeferred<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawDeferred").finish_non_exhaustive()
    }
}

/// Guard state of a [`RawDeferred`] acquisition: the inner lock's state,
/// made `!Send` so the section closes on the thread that opened it. It is
/// `Sync` when `G` is, so lock_api's guards are `Sync` exactly when they
/// would be over `R`.
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<freeq::DeferredGuard<lock_api::GuardSend>>();
/// ```
///
/// ```
/// type Mutex<T> = lock_api::Mutex<freeq::RawDeferred<parking_lot::RawMutex>, T>;
/// let m = Mutex::new(7);
/// let g = m.lock();
/// std::thread::scope(|s| {
///     s.spawn(|| assert_eq!(*g, 7));
/// });
/// ```
pub struct DeferredGuard<G> {
    inner: G,
    // `!Send` but `Sync` (what `std::sync::MutexGuard` is).
    _not_send: PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl<G> DeferredGuard<G> {
    #[inline]
    fn new(inner: G) -> Self {
        DeferredGuard {
            inner,
            _not_send: PhantomData,
        }
    }

    /// The inner lock's guard state.
    pub fn inner(&self) -> &G {
        &self.inner
    }

    /// The inner lock's guard state, mutably (for condvar adapters that
    /// hand it to the inner lock's own wait).
    pub fn inner_mut(&mut self) -> &mut G {
        &mut self.inner
    }
}

impl<G> fmt::Debug for DeferredGuard<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferredGuard").finish_non_exhaustive()
    }
}

/// Readies the thread (before the inner lock is taken, so nothing is set
/// up or allocated while it is held), runs the acquisition, and opens its
/// section; the caller's call is the profile's site.
#[inline]
#[track_caller]
fn acquire<G>(kind: LockKind, lock: impl FnOnce() -> G) -> DeferredGuard<G> {
    acquire_at(Location::caller(), kind, lock)
}

#[inline]
fn acquire_at<G>(
    at: &'static Location<'static>,
    kind: LockKind,
    lock: impl FnOnce() -> G,
) -> DeferredGuard<G> {
    let sampled = prepare_at(at, kind);
    let inner = lock();
    if sampled {
        enter_sampled();
    } else {
        enter();
    }
    DeferredGuard::new(inner)
}

/// [`acquire`] for an attempt that may fail: a section only on success.
#[inline]
#[track_caller]
fn acquire_opt<G>(kind: LockKind, lock: impl FnOnce() -> Option<G>) -> Option<DeferredGuard<G>> {
    let sampled = prepare_at(Location::caller(), kind);
    let Some(inner) = lock() else {
        if sampled {
            cancel_sample();
        }
        return None;
    };
    if sampled {
        enter_sampled();
    } else {
        enter();
    }
    Some(DeferredGuard::new(inner))
}

impl<R: RawMutex> RawDeferred<R> {
    /// Locks, as [`RawMutex::lock`], for an acquisition the profile files
    /// under `at`, of `kind` (a condvar's re-acquisition).
    pub(crate) fn lock_at(
        &self,
        at: &'static Location<'static>,
        kind: LockKind,
    ) -> DeferredGuard<R::Guard> {
        acquire_at(at, kind, || self.inner.lock())
    }
}

/// Re-wraps a state that changes kind (upgrade, downgrade): same section.
#[inline]
fn same<G>(inner: G) -> DeferredGuard<G> {
    DeferredGuard::new(inner)
}

#[inline]
fn same_res<A, B>(r: Result<A, B>) -> Result<DeferredGuard<A>, DeferredGuard<B>> {
    r.map(same).map_err(same)
}

/// Closes the acquisition's section when dropped: after the inner release
/// returns, and also when it unwinds (lock_api lets an operation that
/// consumes guard state panic once it has released the lock). Transitions
/// (upgrade, downgrade) forget it when they return: the section carries
/// over.
pub(crate) struct Leave;

impl Drop for Leave {
    #[inline]
    fn drop(&mut self) {
        leave();
    }
}

// (1) Every operation below delegates to `R`, which provides the exclusion,
// ordering and unwinding guarantees lock_api asks for; freeq only adds
// section bookkeeping: the thread is readied before each acquisition, a
// section opens after a successful one and closes after a release, also
// when the release (or a transition that consumes guard state) unwinds, as
// lock_api 0.5 allows once the lock is released. `leave` may run user
// destructors and panic, but only once the inner lock is released, which is
// what lock_api requires of an unwinding release. A bump that unwinds keeps
// the lock held (lock_api requires that too), so its section stays open.
// SAFETY: see (1).
unsafe impl<R: RawMutex> RawMutex for RawDeferred<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawDeferred { inner: R::INIT };
    type Guard = DeferredGuard<R::Guard>;

    #[inline]
    #[track_caller]
    fn lock(&self) -> Self::Guard {
        acquire(LockKind::RawMutex, || self.inner.lock())
    }

    #[inline]
    #[track_caller]
    fn try_lock(&self) -> Option<Self::Guard> {
        acquire_opt(LockKind::RawMutex, || self.inner.try_lock())
    }

    #[inline]
    unsafe fn unlock(&self, guard: Self::Guard) {
        let _leave = Leave;
        // SAFETY: (2) the caller hands us the state of its acquisition of
        // this lock, which wraps the inner lock's state for the same one.
        unsafe { self.inner.unlock(guard.inner) };
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}

// SAFETY: see (1).
unsafe impl<R: RawMutexFair> RawMutexFair for RawDeferred<R> {
    unsafe fn unlock_fair(&self, guard: Self::Guard) {
        let _leave = Leave;
        // SAFETY: (3) as in (2).
        unsafe { self.inner.unlock_fair(guard.inner) };
    }

    unsafe fn bump(&self, guard: &mut Self::Guard) {
        // SAFETY: (4) as in (2); the guard stays held, so does the section.
        unsafe { self.inner.bump(&mut guard.inner) }
    }
}

// SAFETY: see (1).
unsafe impl<R: RawMutexTimed> RawMutexTimed for RawDeferred<R> {
    type Duration = R::Duration;
    type Instant = R::Instant;

    #[track_caller]
    fn try_lock_for(&self, timeout: Self::Duration) -> Option<Self::Guard> {
        acquire_opt(LockKind::RawMutex, || self.inner.try_lock_for(timeout))
    }

    #[track_caller]
    fn try_lock_until(&self, timeout: Self::Instant) -> Option<Self::Guard> {
        acquire_opt(LockKind::RawMutex, || self.inner.try_lock_until(timeout))
    }
}

// SAFETY: see (1).
unsafe impl<R: RawRwLock> RawRwLock for RawDeferred<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawDeferred { inner: R::INIT };
    type SharedGuard = DeferredGuard<R::SharedGuard>;
    type ExclusiveGuard = DeferredGuard<R::ExclusiveGuard>;

    #[inline]
    #[track_caller]
    fn lock_shared(&self) -> Self::SharedGuard {
        acquire(LockKind::RawRead, || self.inner.lock_shared())
    }

    #[inline]
    #[track_caller]
    fn try_lock_shared(&self) -> Option<Self::SharedGuard> {
        acquire_opt(LockKind::RawRead, || self.inner.try_lock_shared())
    }

    #[inline]
    unsafe fn unlock_shared(&self, guard: Self::SharedGuard) {
        let _leave = Leave;
        // SAFETY: (5) as in (2).
        unsafe { self.inner.unlock_shared(guard.inner) };
    }

    #[inline]
    #[track_caller]
    fn lock_exclusive(&self) -> Self::ExclusiveGuard {
        acquire(LockKind::RawWrite, || self.inner.lock_exclusive())
    }

    #[inline]
    #[track_caller]
    fn try_lock_exclusive(&self) -> Option<Self::ExclusiveGuard> {
        acquire_opt(LockKind::RawWrite, || self.inner.try_lock_exclusive())
    }

    #[inline]
    unsafe fn unlock_exclusive(&self, guard: Self::ExclusiveGuard) {
        let _leave = Leave;
        // SAFETY: (6) as in (2).
        unsafe { self.inner.unlock_exclusive(guard.inner) };
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

// SAFETY: see (1).
unsafe impl<R: RawRwLockFair> RawRwLockFair for RawDeferred<R> {
    unsafe fn unlock_shared_fair(&self, guard: Self::SharedGuard) {
        let _leave = Leave;
        // SAFETY: (7) as in (2).
        unsafe { self.inner.unlock_shared_fair(guard.inner) };
    }

    unsafe fn unlock_exclusive_fair(&self, guard: Self::ExclusiveGuard) {
        let _leave = Leave;
        // SAFETY: (8) as in (2).
        unsafe { self.inner.unlock_exclusive_fair(guard.inner) };
    }

    unsafe fn bump_shared(&self, guard: &mut Self::SharedGuard) {
        // SAFETY: (9) as in (4).
        unsafe { self.inner.bump_shared(&mut guard.inner) }
    }

    unsafe fn bump_exclusive(&self, guard: &mut Self::ExclusiveGuard) {
        // SAFETY: (10) as in (4).
        unsafe { self.inner.bump_exclusive(&mut guard.inner) }
    }
}

// SAFETY: see (1).
unsafe impl<R: RawRwLockDowngrade> RawRwLockDowngrade for RawDeferred<R> {
    unsafe fn downgrade(&self, guard: Self::ExclusiveGuard) -> Self::SharedGuard {
        let leave = Leave;
        // SAFETY: (11) as in (2); the section carries over.
        let state = unsafe { self.inner.downgrade(guard.inner) };
        std::mem::forget(leave);
        same(state)
    }
}

// SAFETY: see (1).
unsafe impl<R: RawRwLockTimed> RawRwLockTimed for RawDeferred<R> {
    type Duration = R::Duration;
    type Instant = R::Instant;

    #[track_caller]
    fn try_lock_shared_for(&self, timeout: Self::Duration) -> Option<Self::SharedGuard> {
        acquire_opt(LockKind::RawRead, || {
            self.inner.try_lock_shared_for(timeout)
        })
    }

    #[track_caller]
    fn try_lock_shared_until(&self, timeout: Self::Instant) -> Option<Self::SharedGuard> {
        acquire_opt(LockKind::RawRead, || {
            self.inner.try_lock_shared_until(timeout)
        })
    }

    #[track_caller]
    fn try_lock_exclusive_for(&self, timeout: Self::Duration) -> Option<Self::ExclusiveGuard> {
        acquire_opt(LockKind::RawWrite, || {
            self.inner.try_lock_exclusive_for(timeout)
        })
    }

    #[track_caller]
    fn try_lock_exclusive_until(&self, timeout: Self::Instant) -> Option<Self::ExclusiveGuard> {
        acquire_opt(LockKind::RawWrite, || {
            self.inner.try_lock_exclusive_until(timeout)
        })
    }
}

// SAFETY: see (1).
unsafe impl<R: RawRwLockUpgrade> RawRwLockUpgrade for RawDeferred<R> {
    type UpgradableGuard = DeferredGuard<R::UpgradableGuard>;

    #[track_caller]
    fn lock_upgradable(&self) -> Self::UpgradableGuard {
        acquire(LockKind::RawUpgradable, || self.inner.lock_upgradable())
    }

    #[track_caller]
    fn try_lock_upgradable(&self) -> Option<Self::UpgradableGuard> {
        acquire_opt(LockKind::RawUpgradable, || self.inner.try_lock_upgradable())
    }

    unsafe fn unlock_upgradable(&self, guard: Self::UpgradableGuard) {
        let _leave = Leave;
        // SAFETY: (12) as in (2).
        unsafe { self.inner.unlock_upgradable(guard.inner) };
    }

    unsafe fn upgrade(&self, guard: Self::UpgradableGuard) -> Self::ExclusiveGuard {
        let leave = Leave;
        // SAFETY: (13) as in (2); the section carries over.
        let state = unsafe { self.inner.upgrade(guard.inner) };
        std::mem::forget(leave);
        same(state)
    }

    unsafe fn try_upgrade(
        &self,
        guard: Self::UpgradableGuard,
    ) -> Result<Self::ExclusiveGuard, Self::UpgradableGuard> {
        let leave = Leave;
        // SAFETY: (14) as in (13).
        let state = unsafe { self.inner.try_upgrade(guard.inner) };
        std::mem::forget(leave);
        same_res(state)
    }
}

// SAFETY: see (1).
unsafe impl<R: RawRwLockUpgradeFair> RawRwLockUpgradeFair for RawDeferred<R> {
    unsafe fn unlock_upgradable_fair(&self, guard: Self::UpgradableGuard) {
        let _leave = Leave;
        // SAFETY: (15) as in (2).
        unsafe { self.inner.unlock_upgradable_fair(guard.inner) };
    }

    unsafe fn bump_upgradable(&self, guard: &mut Self::UpgradableGuard) {
        // SAFETY: (16) as in (4).
        unsafe { self.inner.bump_upgradable(&mut guard.inner) }
    }
}

// SAFETY: see (1).
unsafe impl<R: RawRwLockUpgradeDowngrade> RawRwLockUpgradeDowngrade for RawDeferred<R> {
    unsafe fn downgrade_upgradable(&self, guard: Self::UpgradableGuard) -> Self::SharedGuard {
        let leave = Leave;
        // SAFETY: (17) as in (13).
        let state = unsafe { self.inner.downgrade_upgradable(guard.inner) };
        std::mem::forget(leave);
        same(state)
    }

    unsafe fn downgrade_to_upgradable(&self, guard: Self::ExclusiveGuard) -> Self::UpgradableGuard {
        let leave = Leave;
        // SAFETY: (18) as in (13).
        let state = unsafe { self.inner.downgrade_to_upgradable(guard.inner) };
        std::mem::forget(leave);
        same(state)
    }
}

// SAFETY: see (1).
unsafe impl<R: RawRwLockUpgradeTimed> RawRwLockUpgradeTimed for RawDeferred<R> {
    #[track_caller]
    fn try_lock_upgradable_for(&self, timeout: Self::Duration) -> Option<Self::UpgradableGuard> {
        acquire_opt(LockKind::RawUpgradable, || {
            self.inner.try_lock_upgradable_for(timeout)
        })
    }

    #[track_caller]
    fn try_lock_upgradable_until(&self, timeout: Self::Instant) -> Option<Self::UpgradableGuard> {
        acquire_opt(LockKind::RawUpgradable, || {
            self.inner.try_lock_upgradable_until(timeout)
        })
    }

    unsafe fn try_upgrade_for(
        &self,
        guard: Self::UpgradableGuard,
        timeout: Self::Duration,
    ) -> Result<Self::ExclusiveGuard, Self::UpgradableGuard> {
        let leave = Leave;
        // SAFETY: (19) as in (13).
        let state = unsafe { self.inner.try_upgrade_for(guard.inner, timeout) };
        std::mem::forget(leave);
        same_res(state)
    }

    unsafe fn try_upgrade_until(
        &self,
        guard: Self::UpgradableGuard,
        timeout: Self::Instant,
    ) -> Result<Self::ExclusiveGuard, Self::UpgradableGuard> {
        let leave = Leave;
        // SAFETY: (20) as in (13).
        let state = unsafe { self.inner.try_upgrade_until(guard.inner, timeout) };
        std::mem::forget(leave);
        same_res(state)
    }
}

// SAFETY: (21) thread ids come straight from `R`, which guarantees them.
unsafe impl<R: GetThreadId> GetThreadId for RawDeferred<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawDeferred { inner: R::INIT };

    fn nonzero_thread_id(&self) -> std::num::NonZeroUsize {
        self.inner.nonzero_thread_id()
    }
}
