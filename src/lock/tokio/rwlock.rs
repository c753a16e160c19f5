//! [`RwLock`]: tokio's reader-writer lock, whose guards free what they
//! defer after the release, and the `map`, `try_map` and `downgrade` of
//! those guards. This file calls nothing else in freeq but
//! [`AsyncGuard`] (and its lock futures' wrapper and profile sample) and
//! the profile's lock kinds.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio::sync as tk;
use tokio::sync::TryLockError;

use crate::lock::async_guard::{AsyncGuard, WrapGuard, sample};
use crate::profile::table::LockKind;

/// Guard of [`RwLock::read`].
pub type RwLockReadGuard<'a, T> = AsyncGuard<tk::RwLockReadGuard<'a, T>>;
/// Guard of [`RwLock::write`].
pub type RwLockWriteGuard<'a, T> = AsyncGuard<tk::RwLockWriteGuard<'a, T>>;
/// A [`RwLockWriteGuard`] mapped to a part of the value; keeps the bin.
pub type RwLockMappedWriteGuard<'a, T> = AsyncGuard<tk::RwLockMappedWriteGuard<'a, T>>;
/// Guard of [`RwLock::read_owned`].
pub type OwnedRwLockReadGuard<T, U = T> = AsyncGuard<tk::OwnedRwLockReadGuard<T, U>>;
/// Guard of [`RwLock::write_owned`].
pub type OwnedRwLockWriteGuard<T> = AsyncGuard<tk::OwnedRwLockWriteGuard<T>>;
/// An [`OwnedRwLockWriteGuard`] mapped to a part of the value.
pub type OwnedRwLockMappedWriteGuard<T, U = T> = AsyncGuard<tk::OwnedRwLockMappedWriteGuard<T, U>>;

/// tokio's `RwLock`, whose guards free what they defer after the release.
/// Fair (FIFO), like tokio's; the same methods. A write guard
/// [downgraded](AsyncGuard::downgrade) to a read guard keeps its bin,
/// freed after the read guard's release.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let lock = freeq::tokio::RwLock::new(vec![String::from("v1"); 100]);
/// let mut w = lock.write().await;
/// let old = std::mem::replace(&mut *w, vec![String::from("v2"); 100]);
/// w.defer(old);
/// let r = w.downgrade(); // still holds the old vector
/// assert_eq!(r[0], "v2");
/// assert_eq!(r.pending(), 1);
/// drop(r); // release, then free
/// # }
/// ```
#[repr(transparent)]
pub struct RwLock<T: ?Sized> {
    inner: tk::RwLock<T>,
}

impl<T> RwLock<T> {
    /// A new, unlocked lock.
    pub fn new(value: T) -> Self {
        RwLock {
            inner: tk::RwLock::new(value),
        }
    }

    /// A new lock that admits at most `max_reads` readers at once.
    pub fn with_max_readers(value: T, max_reads: u32) -> Self {
        RwLock {
            inner: tk::RwLock::with_max_readers(value, max_reads),
        }
    }

    /// A new, unlocked lock, in a `const` context.
    pub const fn const_new(value: T) -> Self {
        RwLock {
            inner: tk::RwLock::const_new(value),
        }
    }

    /// The value, taking the lock apart.
    ///
    /// ```
    /// assert_eq!(freeq::tokio::RwLock::new(3).into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Takes a shared lock, waiting while a writer holds or waits for it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lock = freeq::tokio::RwLock::new(5);
    /// let (a, b) = (lock.read().await, lock.read().await);
    /// assert_eq!(*a + *b, 10);
    /// # }
    /// ```
    #[track_caller]
    pub fn read(&self) -> impl Future<Output = RwLockReadGuard<'_, T>> {
        WrapGuard::at(sample(LockKind::AsyncRead), || self.inner.read())
    }

    /// Takes a shared lock if no writer holds or waits for it now.
    #[track_caller]
    pub fn try_read(&self) -> Result<RwLockReadGuard<'_, T>, TryLockError> {
        let sample = sample(LockKind::AsyncRead);
        self.inner
            .try_read()
            .map(|g| AsyncGuard::sampled(g, sample))
    }

    /// Takes the exclusive lock, waiting for readers and writers ahead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lock = freeq::tokio::RwLock::new(vec![1u8; 64]);
    /// let mut w = lock.write().await;
    /// let old = std::mem::take(&mut *w);
    /// w.defer(old);
    /// assert!(lock.try_read().is_err());
    /// # }
    /// ```
    #[track_caller]
    pub fn write(&self) -> impl Future<Output = RwLockWriteGuard<'_, T>> {
        WrapGuard::at(sample(LockKind::AsyncWrite), || self.inner.write())
    }

    /// Takes the exclusive lock if it is free now.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lock = freeq::tokio::RwLock::new(0);
    /// let r = lock.read().await;
    /// assert!(lock.try_write().is_err());
    /// drop(r);
    /// assert!(lock.try_write().is_ok());
    /// # }
    /// ```
    #[track_caller]
    pub fn try_write(&self) -> Result<RwLockWriteGuard<'_, T>, TryLockError> {
        let sample = sample(LockKind::AsyncWrite);
        self.inner
            .try_write()
            .map(|g| AsyncGuard::sampled(g, sample))
    }

    /// [`read`](RwLock::read), with a guard that owns an `Arc` of the lock.
    #[track_caller]
    pub fn read_owned(self: Arc<Self>) -> impl Future<Output = OwnedRwLockReadGuard<T>> {
        WrapGuard::at(sample(LockKind::AsyncRead), || {
            Self::into_tokio(self).read_owned()
        })
    }

    /// [`try_read`](RwLock::try_read), with a guard that owns an `Arc`.
    #[track_caller]
    pub fn try_read_owned(self: Arc<Self>) -> Result<OwnedRwLockReadGuard<T>, TryLockError> {
        let sample = sample(LockKind::AsyncRead);
        Self::into_tokio(self)
            .try_read_owned()
            .map(|g| AsyncGuard::sampled(g, sample))
    }

    /// [`write`](RwLock::write), with a guard that owns an `Arc` of the
    /// lock.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// let lock = Arc::new(freeq::tokio::RwLock::new(String::from("a")));
    /// let mut w = lock.clone().write_owned().await;
    /// w.push('b');
    /// let r = w.downgrade();
    /// assert_eq!(*r, "ab");
    /// # }
    /// ```
    #[track_caller]
    pub fn write_owned(self: Arc<Self>) -> impl Future<Output = OwnedRwLockWriteGuard<T>> {
        WrapGuard::at(sample(LockKind::AsyncWrite), || {
            Self::into_tokio(self).write_owned()
        })
    }

    /// [`try_write`](RwLock::try_write), with a guard that owns an `Arc`.
    #[track_caller]
    pub fn try_write_owned(self: Arc<Self>) -> Result<OwnedRwLockWriteGuard<T>, TryLockError> {
        let sample = sample(LockKind::AsyncWrite);
        Self::into_tokio(self)
            .try_write_owned()
            .map(|g| AsyncGuard::sampled(g, sample))
    }

    /// Blocks the thread for a shared lock (never on a runtime's worker).
    #[track_caller]
    pub fn blocking_read(&self) -> RwLockReadGuard<'_, T> {
        AsyncGuard::sampled(self.inner.blocking_read(), sample(LockKind::AsyncRead))
    }

    /// Blocks the thread for the exclusive lock (never on a runtime's
    /// worker).
    #[track_caller]
    pub fn blocking_write(&self) -> RwLockWriteGuard<'_, T> {
        AsyncGuard::sampled(self.inner.blocking_write(), sample(LockKind::AsyncWrite))
    }

    /// The value, through `&mut` (no locking needed).
    ///
    /// ```
    /// let mut lock = freeq::tokio::RwLock::new(1);
    /// *lock.get_mut() += 1;
    /// assert_eq!(lock.into_inner(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    fn into_tokio(this: Arc<Self>) -> Arc<tk::RwLock<T>> {
        let raw = Arc::into_raw(this) as *const tk::RwLock<T>;
        // SAFETY: (2) as in (1): `RwLock<T>` is `repr(transparent)` over
        // `tk::RwLock<T>`.
        unsafe { Arc::from_raw(raw) }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> Self {
        RwLock::new(T::default())
    }
}

impl<T> From<T> for RwLock<T> {
    fn from(value: T) -> Self {
        RwLock::new(value)
    }
}

/// `map` and `try_map` for read guards.
impl<'a, T: ?Sized> AsyncGuard<tk::RwLockReadGuard<'a, T>> {
    /// Narrows the guard to a part of the value; the bin goes along.
    pub fn map<U: ?Sized>(this: Self, f: impl FnOnce(&T) -> &U) -> RwLockReadGuard<'a, U> {
        AsyncGuard::map_guard(this, |g| tk::RwLockReadGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&T) -> Option<&U>,
    ) -> Result<RwLockReadGuard<'a, U>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::RwLockReadGuard::try_map(g, f))
    }
}

/// `map` and `try_map` for owned read guards.
impl<T: ?Sized, U: ?Sized> AsyncGuard<tk::OwnedRwLockReadGuard<T, U>> {
    /// Narrows the guard further; the bin goes along.
    pub fn map<V: ?Sized>(this: Self, f: impl FnOnce(&U) -> &V) -> OwnedRwLockReadGuard<T, V> {
        AsyncGuard::map_guard(this, |g| tk::OwnedRwLockReadGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<V: ?Sized>(
        this: Self,
        f: impl FnOnce(&U) -> Option<&V>,
    ) -> Result<OwnedRwLockReadGuard<T, V>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::OwnedRwLockReadGuard::try_map(g, f))
    }
}

/// `map`, `try_map` and `downgrade` for write guards.
impl<'a, T: ?Sized> AsyncGuard<tk::RwLockWriteGuard<'a, T>> {
    /// Narrows the guard to a part of the value; the bin goes along.
    pub fn map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> &mut U,
    ) -> RwLockMappedWriteGuard<'a, U> {
        AsyncGuard::map_guard(this, |g| tk::RwLockWriteGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> Option<&mut U>,
    ) -> Result<RwLockMappedWriteGuard<'a, U>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::RwLockWriteGuard::try_map(g, f))
    }

    /// Turns the write lock into a read lock without letting a writer in
    /// between (readers waiting may enter). The bin goes along: what was
    /// deferred under the write lock is freed after the read lock's
    /// release.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lock = freeq::tokio::RwLock::new(vec![0u8; 256]);
    /// let mut w = lock.write().await;
    /// let old = std::mem::replace(&mut *w, vec![1u8; 256]);
    /// w.defer(old);
    /// let r = w.downgrade();
    /// assert!(lock.try_read().is_ok()); // readers may enter now
    /// assert_eq!(r.pending(), 1); // the old vector waits for `r`
    /// # }
    /// ```
    pub fn downgrade(self) -> RwLockReadGuard<'a, T> {
        AsyncGuard::map_guard(self, tk::RwLockWriteGuard::downgrade)
    }

    /// Downgrades and maps in one step; the bin goes along.
    pub fn downgrade_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&T) -> &U,
    ) -> RwLockReadGuard<'a, U> {
        AsyncGuard::map_guard(this, |g| tk::RwLockWriteGuard::downgrade_map(g, f))
    }
}

/// `map` and `try_map` for mapped write guards.
impl<'a, T: ?Sized> AsyncGuard<tk::RwLockMappedWriteGuard<'a, T>> {
    /// Narrows the guard further; the bin goes along.
    pub fn map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> &mut U,
    ) -> RwLockMappedWriteGuard<'a, U> {
        AsyncGuard::map_guard(this, |g| tk::RwLockMappedWriteGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> Option<&mut U>,
    ) -> Result<RwLockMappedWriteGuard<'a, U>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::RwLockMappedWriteGuard::try_map(g, f))
    }
}

/// `map`, `try_map` and `downgrade` for owned write guards.
impl<T: ?Sized> AsyncGuard<tk::OwnedRwLockWriteGuard<T>> {
    /// Narrows the guard to a part of the value; the bin goes along.
    pub fn map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> &mut U,
    ) -> OwnedRwLockMappedWriteGuard<T, U> {
        AsyncGuard::map_guard(this, |g| tk::OwnedRwLockWriteGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut T) -> Option<&mut U>,
    ) -> Result<OwnedRwLockMappedWriteGuard<T, U>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::OwnedRwLockWriteGuard::try_map(g, f))
    }

    /// Turns the write lock into a read lock; the bin goes along, freed
    /// after the read lock's release.
    pub fn downgrade(self) -> OwnedRwLockReadGuard<T> {
        AsyncGuard::map_guard(self, tk::OwnedRwLockWriteGuard::downgrade)
    }

    /// Downgrades and maps in one step; the bin goes along.
    pub fn downgrade_map<U: ?Sized>(
        this: Self,
        f: impl FnOnce(&T) -> &U,
    ) -> OwnedRwLockReadGuard<T, U> {
        AsyncGuard::map_guard(this, |g| tk::OwnedRwLockWriteGuard::downgrade_map(g, f))
    }
}

/// `map` and `try_map` for owned mapped write guards.
impl<T: ?Sized, U: ?Sized> AsyncGuard<tk::OwnedRwLockMappedWriteGuard<T, U>> {
    /// Narrows the guard further; the bin goes along.
    pub fn map<V: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut U) -> &mut V,
    ) -> OwnedRwLockMappedWriteGuard<T, V> {
        AsyncGuard::map_guard(this, |g| tk::OwnedRwLockMappedWriteGuard::map(g, f))
    }

    /// [`map`](AsyncGuard::map) where `f` may find nothing.
    pub fn try_map<V: ?Sized>(
        this: Self,
        f: impl FnOnce(&mut U) -> Option<&mut V>,
    ) -> Result<OwnedRwLockMappedWriteGuard<T, V>, Self> {
        AsyncGuard::try_map_guard(this, |g| tk::OwnedRwLockMappedWriteGuard::try_map(g, f))
    }
}
