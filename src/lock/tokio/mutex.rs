//! [`Mutex`]: tokio's mutex, whose guards free what they defer after the
//! release, and the `map` and `try_map` of those guards. This file calls
//! nothing else in freeq but [`AsyncGuard`] (and its lock futures' wrapper
//! and profile sample) and the profile's lock kinds.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio::sync as tk;
use tokio::sync::TryLockError;

use crate::lock::async_guard::{AsyncGuard, WrapGuard, sample};
use crate::profile::table::LockKind;

/// Guard of [`Mutex::lock`]: tokio's guard with a bin of deferred frees.
pub type MutexGuard<'a, T> = AsyncGuard<tk::MutexGuard<'a, T>>;
/// Guard of [`Mutex::lock_owned`]: holds the `Arc`, so it is `'static`.
pub type OwnedMutexGuard<T> = AsyncGuard<tk::OwnedMutexGuard<T>>;
/// A [`MutexGuard`] mapped to a part of the value; keeps the bin.
pub type MappedMutexGuard<'a, T> = AsyncGuard<tk::MappedMutexGuard<'a, T>>;
/// An [`OwnedMutexGuard`] mapped to a part of the value; keeps the bin.
pub type OwnedMappedMutexGuard<T, U = T> = AsyncGuard<tk::OwnedMappedMutexGuard<T, U>>;

/// tokio's `Mutex`, whose guards free what they defer after the release.
/// Fair (FIFO), like tokio's; the same methods.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let m = freeq::tokio::Mutex::new(vec![0u8; 1 << 20]);
/// let mut g = m.lock().await;
/// let old = std::mem::take(&mut *g);
/// g.defer(old);
/// drop(g); // release, then free the megabyte
/// assert!(m.try_lock().is_ok());
/// # }
/// ```
#[repr(transparent)]
pub struct Mutex<T: ?Sized> {
    inner: tk::Mutex<T>,
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex.
    pub fn new(value: T) -> Self {
        Mutex {
            inner: tk::Mutex::new(value),
        }
    }

    /// A new, unlocked mutex, in a `const` context (a `static`).
    ///
    /// ```
    /// static M: freeq::tokio::Mutex<u32> = freeq::tokio::Mutex::const_new(0);
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() { *M.lock().await += 1; }
    /// ```
    pub const fn const_new(value: T) -> Self {
        Mutex {
            inner: tk::Mutex::const_new(value),
        }
    }

    /// The value, taking the mutex apart.
    ///
    /// ```
    /// let m = freeq::tokio::Mutex::new(7);
    /// assert_eq!(m.into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks, waiting (asynchronously, in FIFO order) while it is held.
    /// Cancel-safe, as tokio's: a cancelled `lock()` has not locked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let m = freeq::tokio::Mutex::new(1);
    /// *m.lock().await += 1;
    /// assert_eq!(*m.lock().await, 2);
    /// # }
    /// ```
    #[track_caller]
    pub fn lock(&self) -> impl Future<Output = MutexGuard<'_, T>> {
        WrapGuard::at(sample(LockKind::AsyncMutex), || self.inner.lock())
    }

    /// Locks if it is free now.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let m = freeq::tokio::Mutex::new(1);
    /// let g = m.lock().await;
    /// assert!(m.try_lock().is_err());
    /// drop(g);
    /// assert!(m.try_lock().is_ok());
    /// # }
    /// ```
    #[track_caller]
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, TryLockError> {
        let sample = sample(LockKind::AsyncMutex);
        self.inner
            .try_lock()
            .map(|g| AsyncGuard::sampled(g, sample))
    }

    /// Locks, returning a guard that owns an `Arc` of the mutex (`'static`,
    /// so it may move into a spawned task).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// let m = Arc::new(freeq::tokio::Mutex::new(vec![1, 2, 3]));
    /// let mut g = m.clone().lock_owned().await;
    /// tokio::spawn(async move {
    ///     let old = std::mem::take(&mut *g);
    ///     g.defer(old);
    /// })
    /// .await
    /// .unwrap();
    /// assert!(m.lock().await.is_empty());
    /// # }
    /// ```
    #[track_caller]
    pub fn lock_owned(self: Arc<Self>) -> impl Future<Output = OwnedMutexGuard<T>> {
        WrapGuard::at(sample(LockKind::AsyncMutex), || {
            Self::into_tokio(self).lock_owned()
        })
    }

    /// [`lock_owned`](Mutex::lock_owned) if the mutex is free now.
    #[track_caller]
    pub fn try_lock_owned(self: Arc<Self>) -> Result<OwnedMutexGuard<T>, TryLockError> {
        let sample = sample(LockKind::AsyncMutex);
        Self::into_tokio(self)
            .try_lock_owned()
            .map(|g| AsyncGuard::sampled(g, sample))
    }

    /// Locks from synchronous code, blocking the thread (never call it on
    /// a runtime's worker: tokio panics there).
    #[track_caller]
    pub fn blocking_lock(&self) -> MutexGuard<'_, T> {
        AsyncGuard::sampled(self.inner.blocking_lock(), sample(LockKind::AsyncMutex))
    }

    /// The value, through `&mut` (no locking needed).
    ///
    /// ```
    /// let mut m = freeq::tokio::Mutex::new(1);
    /// *m.get_mut() = 2;
    /// assert_eq!(m.into_inner(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    fn into_tokio(this: Arc<Self>) -> Arc<tk::Mutex<T>> {
        let raw = Arc::into_raw(this) as *const tk::Mutex<T>;
        // SAFETY: (1) `Mutex<T>` is `repr(transparent)` over
        // `tk::Mutex<T>`: same layout, size, alignment and pointer
        // metadata, so the allocation of an `Arc<Mutex<T>>` is one of an
        // `Arc<tk::Mutex<T>>`, and the count is handed over unchanged.
        unsafe { Arc::from_raw(raw) }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(value: T) -> Self {
        Mutex::new(value)
    }
}

/// `map` and `try_map` for tokio's mutex guards: the bin goes along.
impl<'a, T: ?Sized> AsyncGuard<tk::MutexGuard<'a, T>> {
    /// Narrows the guard to a part of the value; the bin goes along.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use freeq::tokio::MutexGuard;
    /// let m = freeq::tokio::Mutex::new((1, vec![0u8; 64]));
    /// let mut g = m.lock().await;
    /// g.defer(vec![0u8; 64]);
    /// let mut part = MutexGuard::map(g, |pair| &mut pair.1);
    /// part.push(1);
    /// assert_eq!(part.pending(), 1);
    /// # }
    /// ```
    pub fn map<U: ?Sized>(this: Self, f: impl FnOnce(&mut T) -> &mut U) -> MappedMutexGuard<'a, U> {
        AsyncGuard::map_guard(this, |g| tk::MutexGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing: the guard
    /// comes back, bin and all.
    pub fn try_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> Option<&mut U>,
    ) -> Result<MappedMutexGuard<'a, U>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::MutexGuard::try_map(g, f))
    }
}

/// `map` and `try_map` for mapped mutex guards.
impl<'a, T: ?Sized> AsyncGuard<tk::MappedMutexGuard<'a, T>> {
    /// Narrows the guard further; the bin goes along.
    pub fn map<U>(this: Self, f: impl FnOnce(&mut T) -> &mut U) -> MappedMutexGuard<'a, U> {
        AsyncGuard::map_guard(this, |g| tk::MappedMutexGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<U>(
        this: Self,
        f: impl FnOnce(&mut T) -> Option<&mut U>,
    ) -> Result<MappedMutexGuard<'a, U>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::MappedMutexGuard::try_map(g, f))
    }
}

/// `map` and `try_map` for owned mutex guards.
impl<T: ?Sized> AsyncGuard<tk::OwnedMutexGuard<T>> {
    /// Narrows the guard to a part of the value; the bin goes along.
    pub fn map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> &mut U,
    ) -> OwnedMappedMutexGuard<T, U> {
        AsyncGuard::map_guard(this, |g| tk::OwnedMutexGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> Option<&mut U>,
    ) -> Result<OwnedMappedMutexGuard<T, U>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::OwnedMutexGuard::try_map(g, f))
    }
}

/// `map` and `try_map` for owned mapped mutex guards.
impl<T: ?Sized, U: ?Sized> AsyncGuard<tk::OwnedMappedMutexGuard<T, U>> {
    /// Narrows the guard further; the bin goes along.
    pub fn map<V>(this: Self, f: impl FnOnce(&mut U) -> &mut V) -> OwnedMappedMutexGuard<T, V> {
        AsyncGuard::map_guard(this, |g| tk::OwnedMappedMutexGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<V>(
        this: Self,
        f: impl FnOnce(&mut U) -> Option<&mut V>,
    ) -> Result<OwnedMappedMutexGuard<T, V>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::OwnedMappedMutexGuard::try_map(g, f))
    }
}
