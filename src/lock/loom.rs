//! Raw locks for loom models (only built with `--cfg loom`).
//!
//! Under `--cfg loom` every lock freeq exports is built on loom's
//! primitives, so a crate that model-checks its own code with loom can keep
//! using freeq's locks: [`Mutex`](crate::Mutex), [`RwLock`](crate::RwLock)
//! and [`Condvar`](crate::Condvar) wrap `loom::sync`, and every
//! [`freeq::parking_lot`](crate::parking_lot) type is the same lock_api type
//! over [`RawDeferred`](crate::RawDeferred) of the raw locks in this module
//! instead of parking_lot's. Build your own deferring lock_api locks on them
//! the same way:
//!
//! ```ignore
//! type Mutex<T> = lock_api::Mutex<freeq::RawDeferred<freeq::loom::RawMutex>, T>;
//! ```
//!
//! Each raw lock is a small state machine kept in a `loom::sync::Mutex` and
//! waited on with a `loom::sync::Condvar`, so loom sees every acquisition
//! and release, never spins, and reports a deadlock when every thread of a
//! model waits. Loom behaviours, documented on each item:
//! - the loom state is created on first use, so `INIT` (and the `const`
//!   constructors built on it) still work; like every loom object, a lock
//!   must be created inside the `loom::model` closure that uses it, not in
//!   a `static` shared by several executions;
//! - loom has no clock: a timed attempt (`try_lock_for`, `try_lock_until`
//!   and their rwlock forms) tries once, yields to the other threads, and
//!   tries once more, so a model sees both a timeout and a late success;
//! - fair unlocks are plain unlocks (loom explores every wake-up order
//!   anyway), and [`RawFairMutex`] is [`RawMutex`].

// This file calls loom and lock_api only, nothing else in freeq.

use std::num::NonZeroUsize;
use std::sync::{OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ::loom::sync::{Condvar, Mutex, MutexGuard};
use lock_api::{
    GetThreadId, GuardNoSend, RawMutexFair, RawMutexTimed, RawRwLockDowngrade, RawRwLockFair,
    RawRwLockTimed, RawRwLockUpgrade, RawRwLockUpgradeDowngrade, RawRwLockUpgradeFair,
    RawRwLockUpgradeTimed,
};

/// Who holds a lock. A mutex only uses `writer`.
#[derive(Clone, Copy, Debug, Default)]
struct State {
    writer: bool,
    upgradable: bool,
    readers: usize,
}

impl State {
    fn free_for_writer(&self) -> bool {
        !self.writer && !self.upgradable && self.readers == 0
    }

    fn free_for_reader(&self) -> bool {
        !self.writer
    }

    fn free_for_upgradable(&self) -> bool {
        !self.writer && !self.upgradable
    }
}

/// The loom objects behind one lock.
#[derive(Debug)]
struct Loom {
    state: Mutex<State>,
    changed: Condvar,
}

/// A lock state machine whose loom objects are created on first use.
#[derive(Debug)]
struct Lock {
    loom: OnceLock<Loom>,
}

impl Lock {
    const fn new() -> Self {
        Lock {
            loom: OnceLock::new(),
        }
    }

    fn state(&self) -> (MutexGuard<'_, State>, &Condvar) {
        let loom = self.loom.get_or_init(|| Loom {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let state = loom.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state, &loom.changed)
    }

    /// Waits until `free` holds, then applies `take`.
    fn acquire(&self, free: fn(&State) -> bool, take: fn(&mut State)) {
        let (mut state, changed) = self.state();
        while !free(&state) {
            state = changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        take(&mut state);
    }

    /// Applies `take` if `free` holds now.
    fn try_acquire(&self, free: fn(&State) -> bool, take: fn(&mut State)) -> bool {
        let (mut state, _) = self.state();
        let ok = free(&state);
        if ok {
            take(&mut state);
        }
        ok
    }

    /// A timed attempt without a clock: try, let the others run, try again.
    fn timed_acquire(&self, free: fn(&State) -> bool, take: fn(&mut State)) -> bool {
        self.try_acquire(free, take) || {
            ::loom::thread::yield_now();
            self.try_acquire(free, take)
        }
    }

    /// Applies `give` and wakes every waiter to re-check.
    fn release(&self, give: fn(&mut State)) {
        let (mut state, changed) = self.state();
        give(&mut state);
        drop(state);
        changed.notify_all();
    }

    fn peek(&self, f: fn(&State) -> bool) -> bool {
        f(&self.state().0)
    }
}

fn take_writer(s: &mut State) {
    s.writer = true;
}

fn give_writer(s: &mut State) {
    debug_assert!(s.writer, "unlock of a lock that is not held");
    s.writer = false;
}

fn take_reader(s: &mut State) {
    s.readers += 1;
}

fn give_reader(s: &mut State) {
    debug_assert!(s.readers > 0, "shared unlock of a lock not held shared");
    s.readers -= 1;
}

fn take_upgradable(s: &mut State) {
    s.upgradable = true;
}

fn give_upgradable(s: &mut State) {
    debug_assert!(s.upgradable, "upgradable unlock of a lock not held so");
    s.upgradable = false;
}

/// A lock_api raw mutex on loom's primitives; see the [module docs](self).
///
/// ```ignore
/// loom::model(|| {
///     let m = lock_api::Mutex::<freeq::RawDeferred<freeq::loom::RawMutex>, _>::new(0);
///     *m.lock() += 1;
/// });
/// ```
#[derive(Debug)]
pub struct RawMutex {
    lock: Lock,
}

impl RawMutex {
    /// An unlocked mutex; its loom state is created on first use, inside
    /// the running model.
    pub const fn new() -> Self {
        RawMutex { lock: Lock::new() }
    }
}

impl Default for RawMutex {
    fn default() -> Self {
        RawMutex::new()
    }
}

/// The fair mutex is the plain one: loom explores every order in which
/// waiting threads get the lock.
pub type RawFairMutex = RawMutex;

// SAFETY: (1) `writer` is set and cleared only under the loom mutex that
// guards the state, and only set while it is clear, so one acquisition
// exists at a time. Locking and unlocking that loom mutex gives the
// acquire and release ordering lock_api asks for, and loom checks it. Guard
// state is a marker that points at nothing, so moving, dropping or
// forgetting the lock or a guard is safe; no operation here unwinds while
// changing ownership.
unsafe impl lock_api::RawMutex for RawMutex {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawMutex::new();
    type Guard = GuardNoSend;

    fn lock(&self) -> GuardNoSend {
        self.lock.acquire(State::free_for_writer, take_writer);
        GuardNoSend::new()
    }

    fn try_lock(&self) -> Option<GuardNoSend> {
        self.lock
            .try_acquire(State::free_for_writer, take_writer)
            .then(GuardNoSend::new)
    }

    unsafe fn unlock(&self, _guard: GuardNoSend) {
        self.lock.release(give_writer);
    }

    fn is_locked(&self) -> bool {
        self.lock.peek(|s| s.writer)
    }
}

// SAFETY: (2) as in (1); a fair unlock is a plain unlock.
unsafe impl RawMutexFair for RawMutex {
    unsafe fn unlock_fair(&self, guard: GuardNoSend) {
        // SAFETY: (3) forwarded from the caller.
        unsafe { lock_api::RawMutex::unlock(self, guard) }
    }
}

// SAFETY: (4) as in (1); a timed attempt is two plain attempts.
unsafe impl RawMutexTimed for RawMutex {
    type Duration = Duration;
    type Instant = Instant;

    /// Under loom, which has no clock: try, yield, try once more.
    fn try_lock_for(&self, _timeout: Duration) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_writer, take_writer)
            .then(GuardNoSend::new)
    }

    /// Under loom, which has no clock: try, yield, try once more.
    fn try_lock_until(&self, _timeout: Instant) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_writer, take_writer)
            .then(GuardNoSend::new)
    }
}

/// The raw lock behind `freeq::parking_lot::RecursiveRwLock` under loom:
/// [`RawRwLock`] itself, whose readers never queue behind waiting writers,
/// so recursive reads cannot deadlock.
pub type RawRwLockRecursive = RawRwLock;

/// A lock_api raw reader-writer lock (with upgradable reads, downgrades
/// and timed attempts) on loom's primitives; see the [module docs](self).
/// Readers do not queue behind waiting writers, so recursive reads never
/// deadlock.
#[derive(Debug)]
pub struct RawRwLock {
    lock: Lock,
}

impl RawRwLock {
    /// An unlocked lock; its loom state is created on first use, inside
    /// the running model.
    pub const fn new() -> Self {
        RawRwLock { lock: Lock::new() }
    }
}

impl Default for RawRwLock {
    fn default() -> Self {
        RawRwLock::new()
    }
}

// SAFETY: (5) as in (1): a writer excludes everyone, an upgradable reader
// excludes writers and other upgradable readers, readers exclude writers;
// every transition happens under the loom mutex.
unsafe impl lock_api::RawRwLock for RawRwLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawRwLock::new();
    type SharedGuard = GuardNoSend;
    type ExclusiveGuard = GuardNoSend;

    fn lock_shared(&self) -> GuardNoSend {
        self.lock.acquire(State::free_for_reader, take_reader);
        GuardNoSend::new()
    }

    fn try_lock_shared(&self) -> Option<GuardNoSend> {
        self.lock
            .try_acquire(State::free_for_reader, take_reader)
            .then(GuardNoSend::new)
    }

    unsafe fn unlock_shared(&self, _guard: GuardNoSend) {
        self.lock.release(give_reader);
    }

    fn lock_exclusive(&self) -> GuardNoSend {
        self.lock.acquire(State::free_for_writer, take_writer);
        GuardNoSend::new()
    }

    fn try_lock_exclusive(&self) -> Option<GuardNoSend> {
        self.lock
            .try_acquire(State::free_for_writer, take_writer)
            .then(GuardNoSend::new)
    }

    unsafe fn unlock_exclusive(&self, _guard: GuardNoSend) {
        self.lock.release(give_writer);
    }

    fn is_locked(&self) -> bool {
        self.lock.peek(|s| !s.free_for_writer())
    }

    fn is_locked_exclusive(&self) -> bool {
        self.lock.peek(|s| s.writer)
    }
}

// SAFETY: (6) as in (5); fair unlocks are plain unlocks.
unsafe impl RawRwLockFair for RawRwLock {
    unsafe fn unlock_shared_fair(&self, guard: GuardNoSend) {
        // SAFETY: (7) forwarded from the caller.
        unsafe { lock_api::RawRwLock::unlock_shared(self, guard) }
    }

    unsafe fn unlock_exclusive_fair(&self, guard: GuardNoSend) {
        // SAFETY: (8) forwarded from the caller.
        unsafe { lock_api::RawRwLock::unlock_exclusive(self, guard) }
    }
}

// SAFETY: (9) as in (5); the writer becomes a reader in one step under the
// loom mutex, so no writer can get in between.
unsafe impl RawRwLockDowngrade for RawRwLock {
    unsafe fn downgrade(&self, _guard: GuardNoSend) -> GuardNoSend {
        self.lock.release(|s| {
            give_writer(s);
            take_reader(s);
        });
        GuardNoSend::new()
    }
}

// SAFETY: (10) as in (5); timed attempts are two plain attempts.
unsafe impl RawRwLockTimed for RawRwLock {
    type Duration = Duration;
    type Instant = Instant;

    fn try_lock_shared_for(&self, _timeout: Duration) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_reader, take_reader)
            .then(GuardNoSend::new)
    }

    fn try_lock_shared_until(&self, _timeout: Instant) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_reader, take_reader)
            .then(GuardNoSend::new)
    }

    fn try_lock_exclusive_for(&self, _timeout: Duration) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_writer, take_writer)
            .then(GuardNoSend::new)
    }

    fn try_lock_exclusive_until(&self, _timeout: Instant) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_writer, take_writer)
            .then(GuardNoSend::new)
    }
}

fn free_to_upgrade(s: &State) -> bool {
    s.readers == 0
}

fn upgrade(s: &mut State) {
    give_upgradable(s);
    take_writer(s);
}

// SAFETY: (11) as in (5); an upgrade waits for the readers to leave while
// it keeps the upgradable slot, so no writer gets in between.
unsafe impl RawRwLockUpgrade for RawRwLock {
    type UpgradableGuard = GuardNoSend;

    fn lock_upgradable(&self) -> GuardNoSend {
        self.lock
            .acquire(State::free_for_upgradable, take_upgradable);
        GuardNoSend::new()
    }

    fn try_lock_upgradable(&self) -> Option<GuardNoSend> {
        self.lock
            .try_acquire(State::free_for_upgradable, take_upgradable)
            .then(GuardNoSend::new)
    }

    unsafe fn unlock_upgradable(&self, _guard: GuardNoSend) {
        self.lock.release(give_upgradable);
    }

    unsafe fn upgrade(&self, _guard: GuardNoSend) -> GuardNoSend {
        self.lock.acquire(free_to_upgrade, upgrade);
        GuardNoSend::new()
    }

    unsafe fn try_upgrade(&self, guard: GuardNoSend) -> Result<GuardNoSend, GuardNoSend> {
        if self.lock.try_acquire(free_to_upgrade, upgrade) {
            Ok(GuardNoSend::new())
        } else {
            Err(guard)
        }
    }
}

// SAFETY: (12) as in (6).
unsafe impl RawRwLockUpgradeFair for RawRwLock {
    unsafe fn unlock_upgradable_fair(&self, guard: GuardNoSend) {
        // SAFETY: (13) forwarded from the caller.
        unsafe { RawRwLockUpgrade::unlock_upgradable(self, guard) }
    }
}

// SAFETY: (14) as in (9).
unsafe impl RawRwLockUpgradeDowngrade for RawRwLock {
    unsafe fn downgrade_upgradable(&self, _guard: GuardNoSend) -> GuardNoSend {
        self.lock.release(|s| {
            give_upgradable(s);
            take_reader(s);
        });
        GuardNoSend::new()
    }

    unsafe fn downgrade_to_upgradable(&self, _guard: GuardNoSend) -> GuardNoSend {
        self.lock.release(|s| {
            give_writer(s);
            take_upgradable(s);
        });
        GuardNoSend::new()
    }
}

// SAFETY: (15) as in (10) and (11).
unsafe impl RawRwLockUpgradeTimed for RawRwLock {
    fn try_lock_upgradable_for(&self, _timeout: Duration) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_upgradable, take_upgradable)
            .then(GuardNoSend::new)
    }

    fn try_lock_upgradable_until(&self, _timeout: Instant) -> Option<GuardNoSend> {
        self.lock
            .timed_acquire(State::free_for_upgradable, take_upgradable)
            .then(GuardNoSend::new)
    }

    unsafe fn try_upgrade_for(
        &self,
        guard: GuardNoSend,
        _timeout: Duration,
    ) -> Result<GuardNoSend, GuardNoSend> {
        if self.lock.timed_acquire(free_to_upgrade, upgrade) {
            Ok(GuardNoSend::new())
        } else {
            Err(guard)
        }
    }

    unsafe fn try_upgrade_until(
        &self,
        guard: GuardNoSend,
        _timeout: Instant,
    ) -> Result<GuardNoSend, GuardNoSend> {
        if self.lock.timed_acquire(free_to_upgrade, upgrade) {
            Ok(GuardNoSend::new())
        } else {
            Err(guard)
        }
    }
}

/// Thread ids for `lock_api::ReentrantMutex` under loom: loom runs a
/// model's threads on one OS thread, so ids come from a loom thread-local
/// (its address, unique among live model threads).
#[derive(Debug, Default)]
pub struct RawThreadId;

// SAFETY: (16) each live loom thread has its own instance of `ID`, boxed
// by loom, so its address is non-zero, stable for the thread's life and
// distinct from every other live thread's.
unsafe impl GetThreadId for RawThreadId {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawThreadId;

    fn nonzero_thread_id(&self) -> NonZeroUsize {
        ::loom::thread_local!(static ID: u8 = 0);
        ID.with(|id| NonZeroUsize::new(id as *const u8 as usize).expect("a reference is non-null"))
    }
}
