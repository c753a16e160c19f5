//! `Deferred<T>`: a value that defers its own drop.
//!
//! Its drop asks the queue layer whether the thread is in a section and
//! calls `defer` if so; it calls nothing else in freeq.

use std::borrow::{Borrow, BorrowMut};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem::{self, ManuallyDrop};
use std::ops::{Deref, DerefMut};

/// A value whose drop is a [`defer`](crate::defer) when its thread is in a
/// section, and a plain drop otherwise.
///
/// Store `Deferred<V>` instead of `V` and every value displaced under a
/// lock (by `insert`, `*slot = new`, `clear`, `retain`, `remove`, a drop in
/// one branch) waits for the unlock, with no call at the drop site.
/// Outside a section it drops at once, like `V`. It derefs to `V` and has
/// `V`'s `Clone`, `Debug`, `Display`, `PartialEq`, `Eq`, `PartialOrd`,
/// `Ord`, `Hash` and `Default`; `Borrow<V>` lets a map keyed by
/// `Deferred<K>` be searched with `&K`.
///
/// ```
/// use std::collections::HashMap;
/// use freeq::Deferred;
///
/// let cache = freeq::Mutex::new(HashMap::<u32, Deferred<Vec<String>>>::new());
/// cache.lock().unwrap().insert(1, Deferred::new(vec!["old".into(); 64]));
/// {
///     let mut map = cache.lock().unwrap();
///     map.insert(1, vec!["new".into()].into()); // the old Vec is queued...
///     assert_eq!(freeq::pending(), 1);
///     map.clear(); // ...and so is this one
///     assert_eq!(freeq::pending(), 2);
/// } // unlock, then both are freed
/// assert_eq!(freeq::pending(), 0);
/// ```
///
/// [`Deferred::into_inner`] takes the value back out; it never defers.
/// The layout is `T`'s (`#[repr(transparent)]`).
#[repr(transparent)]
pub struct Deferred<T: Send + 'static> {
    value: ManuallyDrop<T>,
}

impl<T: Send + 'static> Deferred<T> {
    /// Wraps `value`.
    #[inline]
    pub const fn new(value: T) -> Self {
        Deferred {
            value: ManuallyDrop::new(value),
        }
    }

    /// Unwraps the value; nothing is deferred or dropped. (An associated
    /// function, so it never shadows a method of `T`.)
    ///
    /// ```
    /// let s = freeq::section();
    /// let v = freeq::Deferred::into_inner(freeq::Deferred::new(vec![1, 2, 3]));
    /// assert_eq!(freeq::pending(), 0);
    /// assert_eq!(v, [1, 2, 3]);
    /// # drop(s);
    /// ```
    #[inline]
    pub fn into_inner(this: Self) -> T {
        let mut this = ManuallyDrop::new(this);
        // SAFETY: (1) `this` is never dropped (it is in a `ManuallyDrop`),
        // so the value is taken out exactly once and never touched again.
        unsafe { ManuallyDrop::take(&mut this.value) }
    }
}

impl<T: Send + 'static> Drop for Deferred<T> {
    #[inline]
    fn drop(&mut self) {
        if !mem::needs_drop::<T>() {
            return;
        }
        // SAFETY: (2) this is the drop of `self`: the value is taken out
        // once, here, and `self.value` is never used again.
        let value = unsafe { ManuallyDrop::take(&mut self.value) };
        if crate::queue::section::in_section() {
            crate::defer::defer(value);
        } else {
            drop(value);
        }
    }
}

impl<T: Send + 'static> Deref for Deferred<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Send + 'static> DerefMut for Deferred<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Send + 'static> AsRef<T> for Deferred<T> {
    fn as_ref(&self) -> &T {
        &self.value
    }
}

impl<T: Send + 'static> AsMut<T> for Deferred<T> {
    fn as_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Send + 'static> Borrow<T> for Deferred<T> {
    fn borrow(&self) -> &T {
        &self.value
    }
}

impl<T: Send + 'static> BorrowMut<T> for Deferred<T> {
    fn borrow_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Send + 'static> From<T> for Deferred<T> {
    fn from(value: T) -> Self {
        Deferred::new(value)
    }
}

impl<T: Send + 'static + Default> Default for Deferred<T> {
    fn default() -> Self {
        Deferred::new(T::default())
    }
}

impl<T: Send + 'static + Clone> Clone for Deferred<T> {
    fn clone(&self) -> Self {
        Deferred::new(T::clone(&self.value))
    }

    fn clone_from(&mut self, source: &Self) {
        T::clone_from(&mut self.value, &source.value)
    }
}

impl<T: Send + 'static + fmt::Debug> fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.value, f)
    }
}

impl<T: Send + 'static + fmt::Display> fmt::Display for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.value, f)
    }
}

impl<T: Send + 'static + PartialEq> PartialEq for Deferred<T> {
    fn eq(&self, other: &Self) -> bool {
        *self.value == *other.value
    }
}

impl<T: Send + 'static + Eq> Eq for Deferred<T> {}

impl<T: Send + 'static + PartialOrd> PartialOrd for Deferred<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        T::partial_cmp(&self.value, &other.value)
    }
}

impl<T: Send + 'static + Ord> Ord for Deferred<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        T::cmp(&self.value, &other.value)
    }
}

impl<T: Send + 'static + Hash> Hash for Deferred<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Hashes as `T` does, which `Borrow<T>` requires.
        T::hash(&self.value, state)
    }
}
