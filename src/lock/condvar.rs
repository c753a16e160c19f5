//! Condition variables that keep the freeq contract: while a thread waits,
//! its lock is released; if that lock was the thread's only open section,
//! the thread's pending items are freed after the release and before it
//! blocks; the section is re-entered when the wait returns with the lock.
//!
//! Both condvars share one [`WaitQueue`]: a waiter registers while it still
//! holds the lock, then releases the lock (draining as any release does),
//! then parks until a notifier takes its registration. Registering before
//! the release is what makes the release and the start of the wait atomic
//! with respect to notifications: a notifier that changes state under the
//! lock and then notifies always finds the waiter. Waits never wake
//! spuriously; a wait that times out just as it is notified counts as
//! notified. A notify run by a waiter's own release drain (a
//! `defer_fn(move || cv.notify_one())` before `cv.wait(guard)`, meant for
//! other threads) never takes that waiter: it wakes another one, or none.
//!
//! A wait's re-acquisition is a site of its own for the profile (kind
//! `Condvar`): the `wait` call for [`Condvar`], lock_api's for
//! [`RawDeferredCondvar`] (whose `wait` does not pass its caller on).
//!
//! This file calls the std-backed and raw locks of this layer, the queue's
//! panic helpers, the profile's lock kinds and the `sync` shim.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe, Location};
use std::ptr;
use std::sync::{LockResult, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use lock_api::{RawCondvar, RawCondvarTimed, RawMutex, RawMutexTimed};

use crate::lock::raw::{DeferredGuard, RawDeferred};
use crate::lock::std_lock::MutexGuard as FreeqMutexGuard;
use crate::profile::table::LockKind;
use crate::queue::panic::{Panic, drop_quietly, resume};
use crate::sync::{Arc, AtomicBool, Mutex, MutexGuard, Ordering::*, park_timeout, thread};

struct Waiter {
    notified: AtomicBool,
    thread: thread::Thread,
}

/// The registered waiters, oldest first, and the mutex they wait with.
#[derive(Default)]
struct Waiters {
    list: VecDeque<Arc<Waiter>>,
    /// Address of the mutex every current waiter uses; 0 while none waits.
    mutex: usize,
}

impl Waiters {
    /// Forgets the mutex once no one waits any more: a condvar may be used
    /// with another mutex after all its waiters are gone.
    fn settle_mutex(&mut self) {
        if self.list.is_empty() {
            self.mutex = 0;
        }
    }
}

/// The panic message when a condvar is used with two mutexes at once
/// (parking_lot's).
const TWO_MUTEXES: &str = "attempted to use a condition variable with more than one mutex";

/// Registered waiters, oldest first.
#[derive(Default)]
pub(crate) struct WaitQueue {
    // Lazily built so that `new` is `const` with loom's non-const types too.
    waiters: OnceLock<Mutex<Waiters>>,
}

impl WaitQueue {
    pub(crate) const fn new() -> Self {
        WaitQueue {
            waiters: OnceLock::new(),
        }
    }

    fn list(&self) -> MutexGuard<'_, Waiters> {
        self.waiters
            .get_or_init(|| Mutex::new(Waiters::default()))
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the calling thread as waiting with the mutex at address
    /// `mutex`. Panics, registering nothing, if other threads wait with a
    /// different mutex.
    fn register(&self, mutex: usize) -> Arc<Waiter> {
        let w = Arc::new(Waiter {
            notified: AtomicBool::new(false),
            thread: thread::current(),
        });
        let mut waiters = self.list();
        if waiters.mutex != 0 && waiters.mutex != mutex {
            drop(waiters);
            panic!("{TWO_MUTEXES}");
        }
        waiters.mutex = mutex;
        waiters.list.push_back(w.clone());
        w
    }

    /// Parks until notified (`true`) or past `deadline` (`false`).
    fn block(&self, w: &Arc<Waiter>, deadline: Option<Instant>) -> bool {
        loop {
            if w.notified.load(Acquire) {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        // Timed out, unless a notifier took us meanwhile.
                        return !self.withdraw(w) && self.settle(w);
                    }
                    park_timeout(deadline - now);
                }
            }
        }
    }

    /// Removes `w` if it is still registered (a timeout); `false` if a
    /// notifier already took it.
    fn withdraw(&self, w: &Arc<Waiter>) -> bool {
        let mut waiters = self.list();
        match waiters.list.iter().position(|x| Arc::ptr_eq(x, w)) {
            Some(i) => {
                waiters.list.remove(i);
                waiters.settle_mutex();
                true
            }
            None => false,
        }
    }

    /// A notifier took `w` but may not have flagged it yet: wait for the flag.
    fn settle(&self, w: &Arc<Waiter>) -> bool {
        while !w.notified.load(Acquire) {
            thread::park();
        }
        true
    }

    fn wake(w: Arc<Waiter>) {
        w.notified.store(true, Release);
        w.thread.unpark();
    }

    /// Whether `w` is the calling thread's own registration. A thread is
    /// registered only from the start of its wait to its wake-up, so a
    /// notify that finds its own registration runs in the release drain of
    /// its own wait: it is meant for other threads.
    fn is_mine(w: &Waiter, me: thread::ThreadId) -> bool {
        w.thread.id() == me
    }

    pub(crate) fn notify_one(&self) -> bool {
        let w = {
            let mut waiters = self.list();
            if waiters.list.is_empty() {
                return false;
            }
            let me = thread::current().id();
            let w = match waiters.list.iter().position(|w| !Self::is_mine(w, me)) {
                Some(i) => waiters.list.remove(i),
                None => None,
            };
            waiters.settle_mutex();
            w
        };
        match w {
            Some(w) => {
                Self::wake(w);
                true
            }
            None => false,
        }
    }

    pub(crate) fn notify_all(&self) -> usize {
        let all = {
            let mut waiters = self.list();
            if waiters.list.is_empty() {
                return 0;
            }
            let me = thread::current().id();
            let (mine, others): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut waiters.list)
                .into_iter()
                .partition(|w| Self::is_mine(w, me));
            waiters.list = mine;
            waiters.settle_mutex();
            others
        };
        let n = all.len();
        all.into_iter().for_each(Self::wake);
        n
    }

    /// The rest of a wait once `w` is registered (see [`register`]):
    /// `release` (catching a panic from the drain it may run), block,
    /// `reacquire`. Returns whether it was notified, and the release's
    /// panic for the caller to resume once it holds the lock again.
    ///
    /// [`register`]: WaitQueue::register
    fn wait<R>(
        &self,
        w: Arc<Waiter>,
        release: impl FnOnce(),
        reacquire: impl FnOnce() -> R,
        deadline: Option<Instant>,
    ) -> (R, bool, Option<Panic>) {
        let released = panic::catch_unwind(AssertUnwindSafe(release)).err();
        let notified = self.block(&w, deadline);
        (reacquire(), notified, released)
    }
}

/// The address of a mutex, which identifies it while waiters use it.
fn address<M: ?Sized>(mutex: &M) -> usize {
    ptr::from_ref(mutex).cast::<()>().addr()
}

/// Aborts if dropped: guards the window in which a lock_api guard state has
/// been moved out and not yet restored.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        std::process::abort();
    }
}

/// A lock_api raw condition variable for [`RawDeferred<M>`] mutexes, with
/// the freeq contract described in the module docs. No spurious wakeups:
/// `notify_one` and `notify_all` report the waiters they woke. Like
/// parking_lot's, a wait panics ("attempted to use a condition variable
/// with more than one mutex", the lock still held) if other threads wait
/// on it with a different mutex.
pub struct RawDeferredCondvar<M> {
    queue: WaitQueue,
    _mutex: PhantomData<fn() -> M>,
}

impl<M> RawDeferredCondvar<M> {
    /// A condvar with no waiters.
    pub const fn new() -> Self {
        RawDeferredCondvar {
            queue: WaitQueue::new(),
            _mutex: PhantomData,
        }
    }

    /// # Safety
    /// As for [`RawCondvar::wait`].
    #[track_caller]
    unsafe fn wait_deadline(
        &self,
        mutex: &RawDeferred<M>,
        guard: &mut DeferredGuard<M::Guard>,
        deadline: Option<Instant>,
    ) -> bool
    where
        M: RawMutex,
    {
        // Before anything is moved out: a wait with a second mutex panics
        // with the lock held and `guard` intact, as lock_api allows.
        let w = self.queue.register(address(mutex));
        let at = Location::caller();
        // SAFETY: (1) the caller holds `mutex` with state `guard`. The state
        // is moved out here and a fresh one written back below before anyone
        // can observe `guard`; `AbortOnUnwind` turns any unwind in between
        // (only `lock` could) into an abort, as lock_api requires.
        let state = unsafe { ptr::read(guard) };
        let bomb = AbortOnUnwind;
        let (fresh, notified, released) = self.queue.wait(
            w,
            // SAFETY: (2) `state` is this thread's acquisition of `mutex`.
            move || unsafe { mutex.unlock(state) },
            || mutex.lock_at(at, LockKind::Condvar),
            deadline,
        );
        // SAFETY: (3) `guard` holds a stale copy of the released state,
        // which must not be dropped; overwrite it without dropping.
        unsafe { ptr::write(guard, fresh) };
        std::mem::forget(bomb);
        if let Some(payload) = released {
            resume(Some(payload));
        }
        !notified
    }
}

impl<M> Default for RawDeferredCondvar<M> {
    fn default() -> Self {
        RawDeferredCondvar::new()
    }
}

impl<M> fmt::Debug for RawDeferredCondvar<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawDeferredCondvar").finish_non_exhaustive()
    }
}

// SAFETY: (4) a waiter registers before it releases the mutex, so a
// notification issued after the release always finds it (the atomicity
// lock_api asks for); `wait_deadline` re-locks before returning or
// unwinding and restores valid guard state, aborting otherwise. Waits end
// only on a notification or timeout, so the counts returned are exact.
unsafe impl<M: RawMutex> RawCondvar for RawDeferredCondvar<M> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawDeferredCondvar::new();
    type RawMutex = RawDeferred<M>;

    #[track_caller]
    unsafe fn wait(&self, mutex: &Self::RawMutex, guard: &mut DeferredGuard<M::Guard>) {
        // SAFETY: (5) forwarded from the caller.
        unsafe { self.wait_deadline(mutex, guard, None) };
    }

    fn notify_one(&self) -> bool {
        self.queue.notify_one()
    }

    fn notify_all(&self) -> usize {
        self.queue.notify_all()
    }
}

// SAFETY: (6) as in (4), with a deadline.
unsafe impl<M> RawCondvarTimed for RawDeferredCondvar<M>
where
    M: RawMutexTimed<Duration = Duration, Instant = Instant>,
{
    fn checked_duration_to_instant(timeout: &Duration) -> Option<Instant> {
        Instant::now().checked_add(*timeout)
    }

    #[track_caller]
    unsafe fn wait_until(
        &self,
        mutex: &Self::RawMutex,
        guard: &mut DeferredGuard<M::Guard>,
        timeout: &Instant,
    ) -> bool {
        // SAFETY: (7) forwarded from the caller.
        unsafe { self.wait_deadline(mutex, guard, Some(*timeout)) }
    }
}

/// Whether a timed wait on a [`Condvar`] returned because of its timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// `true` if the wait ended because the timeout elapsed.
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

/// A condition variable for [`freeq::Mutex`](crate::Mutex), with `std`'s
/// API (poisoning included) and the freeq contract: while a thread waits
/// its lock is released, and if that was its only section, its pending
/// items are freed before it blocks. No spurious wakeups.
///
/// ```
/// use std::sync::Arc;
/// let pair = Arc::new((freeq::Mutex::new(Vec::<String>::new()), freeq::Condvar::new()));
/// let p2 = pair.clone();
/// let consumer = std::thread::spawn(move || {
///     let (m, cv) = &*p2;
///     let mut q = cv.wait_while(m.lock().unwrap(), |q| q.is_empty()).unwrap();
///     let item = q.pop().unwrap();
///     freeq::defer(std::mem::take(&mut *q)); // freed after the unlock
///     item
/// });
/// let (m, cv) = &*pair;
/// m.lock().unwrap().push("job".into());
/// cv.notify_one();
/// assert_eq!(consumer.join().unwrap(), "job");
/// ```
#[derive(Default)]
pub struct Condvar {
    queue: WaitQueue,
}

impl Condvar {
    /// A condvar with no waiters.
    pub const fn new() -> Self {
        Condvar {
            queue: WaitQueue::new(),
        }
    }

    #[track_caller]
    fn wait_deadline<'a, T: ?Sized>(
        &self,
        guard: FreeqMutexGuard<'a, T>,
        deadline: Option<Instant>,
    ) -> (LockResult<FreeqMutexGuard<'a, T>>, bool) {
        let mutex = guard.guard.mutex;
        let at = Location::caller();
        // A wait with a second mutex panics here, still holding the lock.
        let w = self.queue.register(address(mutex));
        let (fresh, notified, released) = self.queue.wait(
            w,
            move || drop(guard),
            || crate::lock::std_lock::Mutex::relock(mutex, at, LockKind::Condvar),
            deadline,
        );
        match released {
            Some(payload) if !std::thread::panicking() => {
                // Release the re-acquired lock before resuming, so the
                // free's panic does not poison the mutex; a panic from that
                // release's own drain yields to the first one.
                let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(fresh)));
                panic::resume_unwind(payload)
            }
            Some(payload) => drop_quietly(payload),
            None => {}
        }
        (fresh, notified)
    }

    /// Releases the lock, waits for a notification, re-acquires the lock.
    ///
    /// # Panics
    ///
    /// If other threads are waiting on this condvar with a different
    /// mutex: "attempted to use a condition variable with more than one
    /// mutex" (the guard is dropped, unlocking and poisoning the mutex). A
    /// condvar may move to another mutex once no one waits on it. The same
    /// holds for every wait below.
    #[track_caller]
    pub fn wait<'a, T: ?Sized>(
        &self,
        guard: FreeqMutexGuard<'a, T>,
    ) -> LockResult<FreeqMutexGuard<'a, T>> {
        self.wait_deadline(guard, None).0
    }

    /// Waits while `condition` holds.
    #[track_caller]
    pub fn wait_while<'a, T: ?Sized, F>(
        &self,
        mut guard: FreeqMutexGuard<'a, T>,
        mut condition: F,
    ) -> LockResult<FreeqMutexGuard<'a, T>>
    where
        F: FnMut(&mut T) -> bool,
    {
        while condition(&mut *guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// Waits for a notification or until `timeout` has elapsed.
    #[track_caller]
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        guard: FreeqMutexGuard<'a, T>,
        timeout: Duration,
    ) -> LockResult<(FreeqMutexGuard<'a, T>, WaitTimeoutResult)> {
        let deadline = Instant::now().checked_add(timeout);
        let (res, notified) = self.wait_deadline(guard, deadline);
        let timed_out = WaitTimeoutResult(!notified);
        match res {
            Ok(g) => Ok((g, timed_out)),
            Err(e) => Err(PoisonError::new((e.into_inner(), timed_out))),
        }
    }

    /// Waits while `condition` holds, for at most `timeout` in all. Times
    /// out if the condition still holds when the time is up.
    #[track_caller]
    pub fn wait_timeout_while<'a, T: ?Sized, F>(
        &self,
        mut guard: FreeqMutexGuard<'a, T>,
        timeout: Duration,
        mut condition: F,
    ) -> LockResult<(FreeqMutexGuard<'a, T>, WaitTimeoutResult)>
    where
        F: FnMut(&mut T) -> bool,
    {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if !condition(&mut *guard) {
                return Ok((guard, WaitTimeoutResult(false)));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((guard, WaitTimeoutResult(true)));
            }
            let (res, _) = self.wait_deadline(guard, deadline);
            guard = match res {
                Ok(g) => g,
                Err(e) => {
                    let g = e.into_inner();
                    return Err(PoisonError::new((g, WaitTimeoutResult(false))));
                }
            };
        }
    }

    /// Wakes the longest-waiting thread, if any.
    pub fn notify_one(&self) {
        self.queue.notify_one();
    }

    /// Wakes every waiting thread.
    pub fn notify_all(&self) {
        self.queue.notify_all();
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar").finish_non_exhaustive()
    }
}
