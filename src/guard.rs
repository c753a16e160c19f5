//! RAII sections and the guard wrapper that turns any lock guard into a
//! deferring one.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use crate::queue;

/// An open section without a lock. While it lives, [`defer`](crate::defer)ed
/// values wait; dropping the outermost section frees them.
///
/// `Section` is `!Send`: it must close on the thread that opened it.
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
    _not_send: PhantomData<*const ()>,
}

/// Opens a section on this thread; see [`Section`].
#[inline]
pub fn section() -> Section {
    queue::enter();
    Section {
        _not_send: PhantomData,
    }
}

impl Drop for Section {
    #[inline]
    fn drop(&mut self) {
        queue::leave();
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
/// thread that took it.
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
    #[inline]
    pub fn new(guard: G) -> Self {
        LockGuard {
            guard,
            _section: section(),
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
