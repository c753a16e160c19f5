//! `std`-backed deferring locks with `std`'s API, poisoning included.

use std::fmt;
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

use crate::sync::std_locks as stdsync;
#[cfg(loom)]
use crate::sync::NoPoison as _;

use crate::guard::LockGuard;

/// Guard of a [`Mutex`]: `std`'s guard (with its mutex, for
/// [`Condvar`](crate::Condvar) waits) in a [`LockGuard`].
pub type MutexGuard<'a, T> = LockGuard<StdMutexGuard<'a, T>>;

/// `std`'s mutex guard together with the mutex it locks, which a
/// [`Condvar`](crate::Condvar) wait needs to re-acquire it. Derefs to the
/// protected value; dropping it unlocks.
pub struct StdMutexGuard<'a, T: ?Sized> {
    pub(crate) mutex: &'a stdsync::Mutex<T>,
    guard: stdsync::MutexGuard<'a, T>,
}

impl<T: ?Sized> std::ops::Deref for StdMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> std::ops::DerefMut for StdMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for StdMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.guard, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for StdMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.guard, f)
    }
}
/// Shared guard of a [`RwLock`].
pub type RwLockReadGuard<'a, T> = LockGuard<stdsync::RwLockReadGuard<'a, T>>;
/// Exclusive guard of a [`RwLock`].
pub type RwLockWriteGuard<'a, T> = LockGuard<stdsync::RwLockWriteGuard<'a, T>>;

fn wrap<G, H>(r: LockResult<G>, f: impl FnOnce(G) -> H) -> LockResult<LockGuard<H>> {
    match r {
        Ok(g) => Ok(LockGuard::new(f(g))),
        Err(e) => Err(PoisonError::new(LockGuard::new(f(e.into_inner())))),
    }
}

fn wrap_try<G, H>(r: TryLockResult<G>, f: impl FnOnce(G) -> H) -> TryLockResult<LockGuard<H>> {
    match r {
        Ok(g) => Ok(LockGuard::new(f(g))),
        Err(TryLockError::WouldBlock) => Err(TryLockError::WouldBlock),
        Err(TryLockError::Poisoned(e)) => Err(TryLockError::Poisoned(PoisonError::new(
            LockGuard::new(f(e.into_inner())),
        ))),
    }
}

fn same<G>(g: G) -> G {
    g
}

/// [`std::sync::Mutex`], deferring: each guard is a section, and values
/// [`defer`](crate::defer)red while it is held are freed after it unlocks.
///
/// The API is `std`'s, poisoning included.
///
/// ```
/// use std::sync::Arc;
/// let m = Arc::new(freeq::Mutex::new(vec![String::from("a")]));
/// let m2 = m.clone();
/// std::thread::spawn(move || {
///     let mut v = m2.lock().unwrap();
///     let old = std::mem::replace(&mut *v, vec![String::from("b")]);
///     freeq::defer(old);
/// })
/// .join()
/// .unwrap();
/// assert_eq!(*m.lock().unwrap(), ["b"]);
/// ```
#[derive(Default)]
pub struct Mutex<T: ?Sized> {
    inner: stdsync::Mutex<T>,
}

impl<T> Mutex<T> {
    /// A new unlocked mutex.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Mutex {
            inner: stdsync::Mutex::new(value),
        }
    }

    /// A new unlocked mutex (under loom: not `const`, and only inside a
    /// running model, like every loom object).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Mutex {
            inner: stdsync::Mutex::new(value),
        }
    }

    /// Consumes the mutex, returning the value (an error if poisoned).
    pub fn into_inner(self) -> LockResult<T> {
        self.inner.into_inner()
    }
}

impl<T: Send + 'static> Mutex<T> {
    /// Replaces the value and frees the old one after the unlock.
    ///
    /// ```
    /// let m = freeq::Mutex::new(vec![1, 2, 3]);
    /// m.set(Vec::new());
    /// assert!(m.lock().unwrap().is_empty());
    /// ```
    pub fn set(&self, value: T) {
        let mut g = self.lock().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *g, value);
        crate::defer(old);
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Blocks until the lock is acquired; an error if poisoned (the guard
    /// is still inside it).
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        Self::relock(&self.inner)
    }

    pub(crate) fn relock(mutex: &stdsync::Mutex<T>) -> LockResult<MutexGuard<'_, T>> {
        wrap(mutex.lock(), |guard| StdMutexGuard { mutex, guard })
    }

    /// Acquires the lock if it is free.
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        let mutex = &self.inner;
        wrap_try(mutex.try_lock(), |guard| StdMutexGuard { mutex, guard })
    }

    /// Whether a thread panicked while holding the lock. Under loom always
    /// `false`: loom's locks do not poison, a panic fails the model.
    pub fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    /// Clears the poisoned state (under loom, nothing to clear).
    pub fn clear_poison(&self) {
        self.inner.clear_poison()
    }

    /// Mutable access without locking.
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
        self.inner.get_mut()
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(value: T) -> Self {
        Mutex::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

/// [`std::sync::RwLock`], deferring: read and write guards are both
/// sections.
///
/// ```
/// let map = freeq::RwLock::new(std::collections::HashMap::new());
/// map.write().unwrap().insert(1, String::from("one"));
/// {
///     let mut w = map.write().unwrap();
///     if let Some(old) = w.insert(1, String::from("uno")) {
///         freeq::defer(old);
///     }
/// }
/// assert_eq!(map.read().unwrap()[&1], "uno");
/// ```
#[derive(Default)]
pub struct RwLock<T: ?Sized> {
    inner: stdsync::RwLock<T>,
}

impl<T> RwLock<T> {
    /// A new unlocked lock.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        RwLock {
            inner: stdsync::RwLock::new(value),
        }
    }

    /// A new unlocked lock (under loom: not `const`, and only inside a
    /// running model, like every loom object).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        RwLock {
            inner: stdsync::RwLock::new(value),
        }
    }

    /// Consumes the lock, returning the value (an error if poisoned).
    pub fn into_inner(self) -> LockResult<T> {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Shared access, blocking.
    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
        wrap(self.inner.read(), same)
    }

    /// Shared access if available now.
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
        wrap_try(self.inner.try_read(), same)
    }

    /// Exclusive access, blocking.
    pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        wrap(self.inner.write(), same)
    }

    /// Exclusive access if available now.
    pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
        wrap_try(self.inner.try_write(), same)
    }

    /// Whether a writer panicked while holding the lock. Under loom always
    /// `false`: loom's locks do not poison, a panic fails the model.
    pub fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    /// Clears the poisoned state (under loom, nothing to clear).
    pub fn clear_poison(&self) {
        self.inner.clear_poison()
    }

    /// Mutable access without locking.
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
        self.inner.get_mut()
    }
}

impl<T> From<T> for RwLock<T> {
    fn from(value: T) -> Self {
        RwLock::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}
