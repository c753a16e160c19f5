//! RAII sections and the guard wrapper that turns any lock guard into a
//! deferring one.
//!
//! Opening and closing a section goes through the dispatcher in `reclaim`
//! (closing the outermost one drains); each names its caller and kind to
//! the profile. This file calls nothing else.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::Location;

use crate::profile::table::LockKind;
use crate::reclaim::dispatch;

/// An open section without a lock. While it lives, [`defer`](crate::defer)ed
/// values wait; dropping the outermost section frees them.
///
/// `Section` is `!Send`: it must close on the thread that opened it. It is
/// `Sync`, like `std`'s guards, so `&Section` may be shared.
///
/// A section that is never dropped (`mem::forget`, a leaked guard) stays
/// open: everything its thread defers afterwards waits for thread exit.
/// [`in_section`](crate::in_section) and [`pending`](crate::pending) show
/// it. A thread-local destructor that runs after freeq's own per-thread
/// state is gone has no queue: its deferrals free at once, even under a
/// freeq lock.
///
/// ```
/// let s = freeq::section();
/// freeq::defer(vec![0u8; 4096]);
/// assert_eq!(freeq::pending(), 1);
/// drop(s);
/// assert_eq!(freeq::pending(), 0);
/// ```
///
/// ```compile_fail
/// fn assert_send<T: Send>(_: T) {}
/// assert_send(freeq::section());
/// ```
#[must_use = "a section closes (and drains) as soon as it is dropped"]
#[clippy::has_significant_drop]
pub struct Section {
    // `!Send` but `Sync`: a section closes on the thread that opened it,
    // while `&Section` (and so `&LockGuard`) may be shared freely.
    _not_send: PhantomData<std::sync::MutexGuard<'static, ()>>,
}

/// Opens a section on this thread; see [`Section`]. For
/// [`freeq::profile`](crate::profile), the call is the section's site.
#[inline]
#[track_caller]
pub fn section() -> Section {
    Section::open(Location::caller(), LockKind::Section)
}

impl Section {
    /// Opens a section whose profile site is `at`.
    #[inline]
    pub(crate) fn open(at: &'static Location<'static>, kind: LockKind) -> Section {
        dispatch::prepare_and_enter(at, kind);
        Section::entered()
    }

    /// The section the caller has just entered.
    #[inline]
    pub(crate) fn entered() -> Section {
        Section {
            _not_send: PhantomData,
        }
    }
}

impl Drop for Section {
    #[inline]
    fn drop(&mut self) {
        dispatch::leave();
    }
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section").finish_non_exhaustive()
    }
}

/// Any lock guard, made deferring: while it lives the thread is in a
/// section; dropping it releases the lock first (by dropping the wrapped
/// guard) and then, if it was the outermost section, frees the queue.
///
/// `LockGuard` is `!Send` whatever `G` is, so it is always released on the
/// thread that took it. It is `Sync` when `G` is, as `std`'s and
/// parking_lot's guards are: `&guard` may be read from a scoped thread.
///
/// Forgetting a guard (`mem::forget`) leaks its lock and keeps its thread
/// in a section for good: see [`Section`].
///
/// ```
/// let m = std::sync::Mutex::new(5);
/// let g = freeq::LockGuard::new(m.lock().unwrap());
/// std::thread::scope(|s| {
///     s.spawn(|| assert_eq!(*g, 5));
/// });
/// ```
///
/// ```
/// let m = std::sync::Mutex::new(Vec::<String>::new());
/// let mut g = freeq::LockGuard::new(m.lock().unwrap());
/// g.push("kept".into());
/// freeq::defer(String::from("dropped after unlock"));
/// drop(g);
/// assert_eq!(freeq::pending(), 0);
/// ```
///
/// ```compile_fail
/// fn assert_send<T: Send>(_: T) {}
/// let m = std::sync::Mutex::new(0);
/// assert_send(freeq::LockGuard::new(m.lock().unwrap()));
/// ```
#[must_use = "if unused the lock is released (and the queue drained) at once"]
#[clippy::has_significant_drop]
pub struct LockGuard<G> {
    // Field order is the release order: the lock first, then the section.
    pub(crate) guard: G,
    pub(crate) _section: Section,
}

impl<G> LockGuard<G> {
    /// Wraps `guard`, opening a section; call it right after locking.
    ///
    /// `guard` is already held when it arrives here, so this cannot ready
    /// the thread before the lock is taken as freeq's own locks do: call
    /// [`freeq::prepare_thread`](crate::prepare_thread) before taking the
    /// lock you wrap, and the section's first
    /// [`defer`](crate::defer) allocates nothing while the lock is held.
    ///
    /// ```
    /// let m = std::sync::Mutex::new(Vec::<String>::new());
    /// freeq::prepare_thread(); // before the lock
    /// let mut g = freeq::LockGuard::new(m.lock().unwrap());
    /// freeq::defer(std::mem::take(&mut *g));
    /// ```
    ///
    /// For [`freeq::profile`](crate::profile), the call to `new` is the
    /// section's site; the lock was taken before, so no wait is measured.
    #[inline]
    #[track_caller]
    pub fn new(guard: G) -> Self {
        LockGuard {
            guard,
            _section: Section::open(Location::caller(), LockKind::Guard),
        }
    }

    /// Wraps `guard`, whose acquisition readied the thread and may have
    /// been sampled by the profile (`dispatch::prepare_at`): opens its
    /// section.
    #[inline]
    pub(crate) fn entered(guard: G, sampled: bool) -> Self {
        if sampled {
            dispatch::enter_sampled();
        } else {
            dispatch::enter();
        }
        LockGuard {
            guard,
            _section: Section::entered(),
        }
    }

    /// The wrapped guard (an associated function, so it cannot shadow a
    /// method of the protected value).
    #[inline]
    pub fn inner(this: &Self) -> &G {
        &this.guard
    }

    /// The wrapped guard, mutably.
    #[inline]
    pub fn inner_mut(this: &mut Self) -> &mut G {
        &mut this.guard
    }
}

impl<G: Deref> Deref for LockGuard<G> {
    type Target = G::Target;
    #[inline]
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for LockGuard<G> {
    #[inline]
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

impl<G: fmt::Debug> fmt::Debug for LockGuard<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.guard, f)
    }
}

impl<G: fmt::Display> fmt::Display for LockGuard<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.guard, f)
    }
}
