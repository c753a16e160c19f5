//! `std`-backed deferring locks with `std`'s API, poisoning included.
//!
//! Every acquisition readies the thread (`prepare_at`, which also tells
//! the profile the caller's site) before it calls the inner lock, so
//! nothing is set up or allocated while it is held. This file calls the
//! dispatcher's section entries, [`LockGuard`], the profile's lock kinds,
//! `defer` and the `sync` shim's std-or-loom locks.

use std::fmt;
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

#[cfg(loom)]
use crate::sync::NoPoison as _;
use crate::sync::std_locks as stdsync;

use std::panic::Location;

use crate::lock::guard::LockGuard;
use crate::profile::table::LockKind;
use crate::reclaim::dispatch::{cancel_sample, prepare_at};

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

/// Wraps an acquisition's result; `sampled`: what `prepare_at` said.
fn wrap<G, H>(r: LockResult<G>, sampled: bool, f: impl FnOnce(G) -> H) -> LockResult<LockGuard<H>> {
    match r {
        Ok(g) => Ok(LockGuard::entered(f(g), sampled)),
        Err(e) => Err(PoisonError::new(LockGuard::entered(
            f(e.into_inner()),
            sampled,
        ))),
    }
}

fn wrap_try<G, H>(
    r: TryLockResult<G>,
    sampled: bool,
    f: impl FnOnce(G) -> H,
) -> TryLockResult<LockGuard<H>> {
    match r {
        Ok(g) => Ok(LockGuard::entered(f(g), sampled)),
        Err(TryLockError::WouldBlock) => {
            if sampled {
                cancel_sample();
            }
            Err(TryLockError::WouldBlock)
        }
        Err(TryLockError::Poisoned(e)) => Err(TryLockError::Poisoned(PoisonError::new(
            LockGuard::entered(f(e.into_inner()), sampled),
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
    #[track_caller]
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
    #[track_caller]
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
    #[track_caller]
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
    /// is still inside it). For [`freeq::profile`](crate::profile), the
    /// call is the section's site (as for every acquisition below).
    #[track_caller]
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        Self::relock(&self.inner, Location::caller(), LockKind::Mutex)
    }

    /// Locks `mutex`, an acquisition at `at` of `kind` for the profile.
    pub(crate) fn relock<'a>(
        mutex: &'a stdsync::Mutex<T>,
        at: &'static Location<'static>,
        kind: LockKind,
    ) -> LockResult<MutexGuard<'a, T>> {
        let sampled = prepare_at(at, kind);
        wrap(mutex.lock(), sampled, |guard| StdMutexGuard {
            mutex,
            guard,
        })
    }

    /// Acquires the lock if it is free.
    #[track_caller]
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        let mutex = &self.inner;
        let sampled = prepare_at(Location::caller(), LockKind::Mutex);
        wrap_try(mutex.try_lock(), sampled, |guard| StdMutexGuard {
            mutex,
            guard,
        })
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
    #[track_caller]
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
    #[track_caller]
    pub fn replace(&self, value: T) -> LockResult<T> {
        match self.write() {
            Ok(mut guard) => Ok(std::mem::replace(&mut *guard, value)),
            Err(_) => Err(PoisonError::new(value)),
        }
    }

    /// A clone of the value, under a read lock; an error if poisoned.
    #[track_caller]
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
    /// Shared access, blocking. For [`freeq::profile`](crate::profile),
    /// the call is the section's site (as for every acquisition below).
    #[track_caller]
    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
        let sampled = prepare_at(Location::caller(), LockKind::RwLockRead);
        wrap(self.inner.read(), sampled, same)
    }

    /// Shared access if available now.
    #[track_caller]
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
        let sampled = prepare_at(Location::caller(), LockKind::RwLockRead);
        wrap_try(self.inner.try_read(), sampled, same)
    }

    /// Exclusive access, blocking.
    #[track_caller]
    pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        let sampled = prepare_at(Location::caller(), LockKind::RwLockWrite);
        wrap(self.inner.write(), sampled, same)
    }

    /// Exclusive access if available now.
    #[track_caller]
    pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
        let sampled = prepare_at(Location::caller(), LockKind::RwLockWrite);
        wrap_try(self.inner.try_write(), sampled, same)
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
