//! `std`-backed deferring locks with `std`'s API, poisoning included.
//!
//! Every acquisition readies the thread ([`prepare_thread`]) before it
//! calls the inner lock, so nothing is set up or allocated while it is held.
//! This file calls the dispatcher's section entries, [`LockGuard`],
//! `defer` and the `sync` shim's std-or-loom locks.

use std::fmt;
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

#[cfg(loom)]
use crate::sync::NoPoison as _;
use crate::sync::std_locks as stdsync;

use crate::lock::guard::LockGuard;
use crate::reclaim::dispatch::prepare_thread;

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

// SAFETY: (1) through `&StdMutexGuard` another thread reaches only `&T`
// (`Deref`, `Debug`, `Display`); the mutex reference is used only by a
// condvar wait, which takes the guard by value on the thread that holds
// it. So sharing the guard is exactly as safe as sharing `std`'s guard,
// which is `Sync` when `T: Sync`.
unsafe impl<T: ?Sized + Sync> Sync for StdMutexGuard<'_, T> {}

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
    /// Replaces the value and frees the old one after the unlock (deferred
    /// to the outermost section if the thread is in one). `std`'s
    /// signature: if the mutex is poisoned nothing is stored, and `value`
    /// comes back in the error.
    ///
    /// ```
    /// let m = freeq::Mutex::new(vec![1, 2, 3]);
    /// m.set(Vec::new()).unwrap();
    /// assert!(m.lock().unwrap().is_empty());
    /// ```
    pub fn set(&self, value: T) -> Result<(), PoisonError<T>> {
        let old = self.replace(value)?;
        free_after_unlock(old);
        Ok(())
    }
}

/// Frees a value taken out under a lock that is now released: deferred if
/// the thread is still inside a section, at once otherwise.
fn free_after_unlock<T: Send + 'static>(old: T) {
    if crate::queue::section::in_section() {
        crate::defer::defer(old);
    } else {
        drop(old);
    }
}

impl<T> Mutex<T> {
    /// Replaces the value, returning the old one (after the unlock). `std`'s
    /// signature: if the mutex is poisoned nothing is stored, and `value`
    /// comes back in the error.
    ///
    /// ```
    /// let m = freeq::Mutex::new(String::from("old"));
    /// assert_eq!(m.replace(String::from("new")).unwrap(), "old");
    /// ```
    pub fn replace(&self, value: T) -> LockResult<T> {
        match self.lock() {
            Ok(mut guard) => Ok(std::mem::replace(&mut *guard, value)),
            Err(_) => Err(PoisonError::new(value)),
        }
    }

    /// A clone of the value. `std`'s signature: an error if poisoned.
    ///
    /// ```
    /// let m = freeq::Mutex::new(7);
    /// assert_eq!(m.get_cloned().unwrap(), 7);
    /// ```
    pub fn get_cloned(&self) -> Result<T, PoisonError<()>>
    where
        T: Clone,
    {
        match self.lock() {
            Ok(guard) => Ok((*guard).clone()),
            Err(_) => Err(PoisonError::new(())),
        }
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Blocks until the lock is acquired; an error if poisoned (the guard
    /// is still inside it).
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        Self::relock(&self.inner)
    }

    pub(crate) fn relock(mutex: &stdsync::Mutex<T>) -> LockResult<MutexGuard<'_, T>> {
        prepare_thread();
        wrap(mutex.lock(), |guard| StdMutexGuard { mutex, guard })
    }

    /// Acquires the lock if it is free.
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        let mutex = &self.inner;
        prepare_thread();
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

impl<T: Send + 'static> RwLock<T> {
    /// Replaces the value and frees the old one after the unlock, as
    /// [`Mutex::set`] does. If the lock is poisoned nothing is stored, and
    /// `value` comes back in the error.
    ///
    /// ```
    /// let rw = freeq::RwLock::new(vec![1, 2, 3]);
    /// rw.set(Vec::new()).unwrap();
    /// assert!(rw.read().unwrap().is_empty());
    /// ```
    pub fn set(&self, value: T) -> Result<(), PoisonError<T>> {
        let old = self.replace(value)?;
        free_after_unlock(old);
        Ok(())
    }
}

impl<T> RwLock<T> {
    /// Replaces the value, returning the old one (after the unlock). If the
    /// lock is poisoned nothing is stored, and `value` comes back in the
    /// error.
    pub fn replace(&self, value: T) -> LockResult<T> {
        match self.write() {
            Ok(mut guard) => Ok(std::mem::replace(&mut *guard, value)),
            Err(_) => Err(PoisonError::new(value)),
        }
    }

    /// A clone of the value, under a read lock; an error if poisoned.
    pub fn get_cloned(&self) -> Result<T, PoisonError<()>>
    where
        T: Clone,
    {
        match self.read() {
            Ok(guard) => Ok((*guard).clone()),
            Err(_) => Err(PoisonError::new(())),
        }
    }
}

impl<'a, T: ?Sized> LockGuard<stdsync::RwLockWriteGuard<'a, T>> {
    /// Turns a write lock into a read lock without letting another writer
    /// in, as `std`'s `RwLockWriteGuard::downgrade` does (an associated
    /// function, like `std`'s). The section stays open across it: nothing
    /// is freed until the read guard is released.
    ///
    /// ```
    /// use freeq::RwLockWriteGuard;
    /// let rw = freeq::RwLock::new(vec![String::from("old")]);
    /// let mut w = rw.write().unwrap();
    /// freeq::defer(std::mem::take(&mut *w));
    /// let r = RwLockWriteGuard::downgrade(w);
    /// assert!(r.is_empty());
    /// assert_eq!(freeq::pending(), 1); // still in the section
    /// drop(r);
    /// assert_eq!(freeq::pending(), 0);
    /// ```
    ///
    /// Not available in loom builds (`--cfg loom`): loom's `RwLock` has no
    /// atomic downgrade. Models that need one can use
    /// `freeq::parking_lot::RwLock`, whose loom lock downgrades.
    #[cfg(not(loom))]
    pub fn downgrade(s: Self) -> RwLockReadGuard<'a, T> {
        let LockGuard { guard, _section } = s;
        LockGuard {
            guard: stdsync::RwLockWriteGuard::downgrade(guard),
            _section,
        }
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Shared access, blocking.
    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
        prepare_thread();
        wrap(self.inner.read(), same)
    }

    /// Shared access if available now.
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
        prepare_thread();
        wrap_try(self.inner.try_read(), same)
    }

    /// Exclusive access, blocking.
    pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        prepare_thread();
        wrap(self.inner.write(), same)
    }

    /// Exclusive access if available now.
    pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
        prepare_thread();
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

/// With feature `serde`: serializes the value under the lock (a section);
/// an error if the mutex is poisoned.
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<T: ?Sized + serde::Serialize> serde::Serialize for Mutex<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.lock() {
            Ok(guard) => (*guard).serialize(serializer),
            Err(_) => Err(serde::ser::Error::custom(
                "lock poison error while serializing",
            )),
        }
    }
}

/// With feature `serde`: deserializes the value into a new mutex.
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Mutex<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Mutex::new)
    }
}

/// With feature `serde`: serializes the value under a read lock (a
/// section); an error if the lock is poisoned.
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<T: ?Sized + serde::Serialize> serde::Serialize for RwLock<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.read() {
            Ok(guard) => (*guard).serialize(serializer),
            Err(_) => Err(serde::ser::Error::custom(
                "lock poison error while serializing",
            )),
        }
    }
}

/// With feature `serde`: deserializes the value into a new lock.
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for RwLock<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(RwLock::new)
    }
}
