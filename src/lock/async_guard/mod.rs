//! `AsyncGuard<G>`: a guard that may cross `.await` and threads, carrying
//! its own bin of deferred frees, freed after the release.
//!
//! The guard's bin (`bin.rs`) keeps a small first item in itself and the
//! rest in a queue layer's buffer. Freeing it frees a lone cheap item
//! right there, and hands anything else to the thread that frees it,
//! through the dispatcher, exactly as if it had been deferred there: that
//! thread's policy decides where it is freed. `with` catches what a
//! synchronous closure queues on its thread (the dispatcher's catch
//! entries) and what the allocator holds back meanwhile
//! (`alloc::take_held`). This file has [`AsyncGuard`], its lock futures'
//! wrapper and its yield, and calls the bin, the dispatcher (its budget,
//! and the profile's sample of an acquisition) and the profile's sample.

mod bin;

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::lock::async_guard::bin::Bin;
use crate::profile::sample::AsyncSample;
use crate::profile::table::LockKind;
use crate::reclaim::dispatch;

/// The profile's sample of an async acquisition of `kind` called at the
/// caller's location, if this thread's countdown picks it (for the
/// acquisitions of `freeq::tokio` and [`AsyncGuard::new`]).
#[inline]
#[track_caller]
pub(crate) fn sample(kind: LockKind) -> Option<Box<AsyncSample>> {
    dispatch::sample_async(Location::caller(), kind)
}

/// A future that yields what `F` yields, a guard, wrapped in an
/// [`AsyncGuard`]: the lock futures of
#[cfg_attr(feature = "tokio", doc = "[`freeq::tokio`](crate::tokio),")]
#[cfg_attr(not(feature = "tokio"), doc = "`freeq::tokio`,")]
/// with no state of their own around tokio's but the profile's sample of
/// the acquisition, if it is sampled.
#[cfg(feature = "tokio")]
#[must_use = "futures do nothing unless polled"]
pub(crate) struct WrapGuard<F> {
    fut: F,
    /// Dropped by hand (see the `Drop` impl): only a cancelled sampled
    /// acquisition has one left, and the fast path keeps no drop glue.
    sample: std::mem::ManuallyDrop<Option<Box<AsyncSample>>>,
}

#[cfg(feature = "tokio")]
impl<F> Drop for WrapGuard<F> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.sample.is_some() {
            // SAFETY: (9) `sample` is taken here, once: nothing reads it
            // after `drop`.
            drop(unsafe { std::mem::ManuallyDrop::take(&mut self.sample) });
        }
    }
}

#[cfg(feature = "tokio")]
impl<F> WrapGuard<F> {
    /// Wraps the acquisition `fut` builds, whose `sample` (taken first,
    /// before the lock is taken) the guard carries. The future is built in
    /// place.
    #[inline(always)]
    pub(crate) fn at(sample: Option<Box<AsyncSample>>, fut: impl FnOnce() -> F) -> Self {
        WrapGuard {
            fut: fut(),
            sample: std::mem::ManuallyDrop::new(sample),
        }
    }
}

#[cfg(feature = "tokio")]
impl<F: Future> Future for WrapGuard<F> {
    type Output = AsyncGuard<F::Output>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: (7) structural pinning of `fut` only: `WrapGuard` never
        // moves it out (its `Drop` touches `sample` only), and is `Unpin`
        // only when `F` is (the auto impl, `sample` being `Unpin`).
        // `sample` is not pinned: it is only taken, never pinned anywhere.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: (8) `fut` is pinned as `self` was: see (7).
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        fut.poll(cx)
            .map(|guard| AsyncGuard::sampled(guard, this.sample.take()))
    }
}

/// The future of [`AsyncGuard::unlock`]: the lock is released already;
/// awaited, it yields once (waking its task first: the runtime runs
/// whatever is queued ahead of it, a waiter just handed the lock, before
/// polling it again; runtime-agnostic), then frees the guard's bin in
/// place. Dropped before that, it frees the bin as a plain drop of the
/// guard would. It holds no part of the guard: it is `Send` and `Sync`
/// whatever the guard was.
///
/// ```
/// fn send_sync<T: Send + Sync>(_: &T) {}
/// let m = std::sync::Mutex::new(Vec::<String>::new());
/// let mut g = freeq::AsyncGuard::new(m.lock().unwrap()); // a std guard is not `Send`
/// g.defer(String::from("x"));
/// let unlocking = g.unlock();
/// send_sync(&unlocking);
/// assert!(m.try_lock().is_ok()); // released by the call
/// drop(unlocking); // frees the string, as a plain drop would
/// ```
#[must_use = "the lock is released; awaiting this lets a waiter run before the frees"]
pub struct AsyncUnlock {
    /// The bin left to free after the yield; `None` once there is
    /// nothing left to do (ready at the next poll).
    bin: Option<Bin>,
    yielded: bool,
}

impl Future for AsyncUnlock {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.bin.is_none() {
            return Poll::Ready(());
        }
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut bin = self.bin.take().expect("checked above");
        // Freed here, on this thread, whatever it costs: the waiter ran
        // during the yield (which is not `moved` time).
        let timed = bin.released();
        bin.free();
        drop(timed);
        Poll::Ready(())
    }
}

impl fmt::Debug for AsyncUnlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncUnlock")
            .field("pending", &self.bin.as_ref().map_or(0, Bin::len))
            .finish()
    }
}

/// Any lock guard, async or not, with its own bin of deferred frees:
/// dropping it releases the lock first (by dropping the wrapped guard) and
/// then frees the bin, on whichever thread drops it.
///
/// Unlike [`LockGuard`](crate::LockGuard), it opens no thread-local
/// section: it may be held across `.await`, moved between threads, and is
/// `Send` and `Sync` exactly when `G` is. What it frees late is what it is
/// given:
///
/// - [`defer`](AsyncGuard::defer) (and `defer_with`, `defer_fn`) put a
///   value in the bin;
/// - [`with`](AsyncGuard::with) runs a synchronous closure inside a
///   section of its thread and moves what the closure queued there
///   ([`Deferred`](crate::Deferred) values dropped, [`defer`](crate::defer)
///   calls, frees held by [`DeferFrees`](crate::alloc::DeferFrees)) into
///   the bin;
/// - [`unlock`](AsyncGuard::unlock)`.await` releases, lets a task already
///   queued on the lock run, then frees (one cheap value it frees at
///   once, with no trip through the scheduler).
///
/// # Dropping a guard
///
/// A plain drop releases the lock, then looks at what the bin is expected
/// to cost to free (freeq learns each type's drop cost the first time it
/// frees one):
///
/// - a cheap bin (under 10 µs, the usual case: a few boxes), and one
///   holding a type freeq has not timed yet (so that it is timed), is
///   freed right there, in order, by the dropping thread's
///   [`Policy`](crate::Policy), with no allocation. A bin of one small
///   value (a closure of up to three words: a `Vec`, a `String`, a `Box`
///   deferred) keeps it in the guard itself and frees it with no queue at
///   all, as cheaply as dropping it under the lock (outside a section of
///   the dropping thread; inside one it waits for the section's end);
/// - a costly bin leaves the thread whatever its policy: to the executor
///   set with
///   [`set_offload_executor`](crate::set_offload_executor), or else to
///   freeq's reclaimer threads. The waiter the release woke (which tokio
///   queues to run on the same worker, after the releasing task's poll)
///   then takes the lock without waiting for those frees. Bins that leave
///   are freed in order within each bin, not with respect to one another,
///   and after the drop returns ([`freeq::quiesce`](crate::quiesce)
///   waits for those given to freeq's reclaimers).
///
/// The estimate is per type: a type whose values vary widely in cost (a
/// `Vec` of any length) is estimated from its recent frees. After a run
/// of small values, large ones are freed in place until the estimate
/// catches up: one free in 16 is timed, and each timing can raise the
/// estimate by at most 1.4x, so from 1 µs to 10 µs takes about a hundred
/// frees. A guard that is known to hold a costly value can go to a
/// reclaimer whatever the estimate with
/// [`defer_heavy`](crate::defer_heavy) inside [`with`](AsyncGuard::with).
///
/// A costly bin is freed right there after all where it cannot leave:
/// inside a section of the dropping thread (it then waits for the
/// section's end), on a reclaimer, while unwinding, and when the
/// reclaimers are past their backlog bound or have left batches untaken
/// for longer than [`offload_max_wait`](crate::offload_max_wait) (on a
/// machine whose CPUs are all busy, idle-priority reclaimers may get no
/// time: an async server on such a machine runs them at
/// [`ReclaimerPriority::Normal`](crate::ReclaimerPriority::Normal)).
///
/// A plain drop cannot end the releasing task's poll: the waiter the
/// release woke runs when that poll ends (tokio queues it on the same
/// worker, in the slot it polls next, and no other worker takes it from
/// there). Code that goes on working after the release in the same poll
/// (building its next value, say) keeps the waiter, which holds the lock
/// by then, waiting that long, and with many tasks the waits chain into
/// a convoy. [`unlock`](AsyncGuard::unlock)`.await` is worth writing
/// there: it releases and yields once, so that the waiter runs first,
/// then frees the bin in place whatever it costs (with an empty bin, or
/// one value of a type known to be cheap, which it frees at once as a
/// plain drop would, it does not yield: follow it with
/// `tokio::task::yield_now().await` where the poll must end there
/// whatever the bin holds). Write it too where the
/// frees should stay on the releasing task's thread (memory a per-thread
/// allocator should get back there, or a machine with no CPU to spare for
/// a reclaimer).
///
/// A guard dropped by cancellation (its future dropped by `select!`, a
/// timeout, an abort, a runtime shutting down) releases and frees like
/// any drop; each value is freed exactly once. Forgetting a guard
/// (`mem::forget`) leaks its lock and its bin.
///
/// Works with tokio's, async-lock's, futures' and `std`'s guards alike;
#[cfg_attr(feature = "tokio", doc = "[`freeq::tokio`](crate::tokio)")]
#[cfg_attr(not(feature = "tokio"), doc = "`freeq::tokio`")]
/// (feature `tokio`) has tokio's locks with these guards built in.
///
/// ```
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let waker = std::task::Waker::noop();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// let cache = std::sync::Mutex::new(vec![String::from("old"); 1000]);
/// block_on(async {
///     let mut g = freeq::AsyncGuard::new(cache.lock().unwrap());
///     let old = std::mem::replace(&mut *g, vec![String::from("new"); 1000]);
///     g.defer(old); // freed after the release
///     assert_eq!(g.pending(), 1);
///     g.unlock().await; // release, yield once, then free
/// });
/// ```
///
/// # Never hold freeq's synchronous guards across `.await`
///
/// [`LockGuard`](crate::LockGuard) (so [`MutexGuard`](crate::MutexGuard)
/// and every freeq guard but this one) and [`Section`](crate::Section)
/// keep their thread inside a section: held across an `.await`, the other
/// tasks polled on that worker would run "inside" it and their frees would
/// wait for it. They are `!Send`, so a future holding one cannot be
/// spawned on a multi-threaded runtime:
///
/// ```compile_fail
/// fn assert_send<T: Send>(_: T) {}
/// let m = freeq::Mutex::new(0);
/// assert_send(async {
///     let g = m.lock().unwrap();
///     std::future::ready(()).await; // the guard lives across the await
///     drop(g);
/// });
/// ```
///
/// A current-thread runtime or a `LocalSet` does not ask for `Send`; have
/// clippy catch the misuse there with its `await_holding_invalid_type`
/// lint, configured in `clippy.toml` (the guards of
/// [`freeq::parking_lot`](crate::parking_lot) and every lock_api guard
/// are flagged by clippy's `await_holding_lock` already):
///
/// ```toml
/// await-holding-invalid-types = [
///     { path = "freeq::LockGuard", reason = "a freeq section must not span an .await: use freeq::AsyncGuard or freeq::tokio" },
///     { path = "freeq::Section", reason = "a freeq section must not span an .await" },
///     { path = "freeq::DeferredGuard", reason = "a freeq section must not span an .await" },
/// ]
/// ```
#[must_use = "if unused the lock is released (and the bin freed) at once"]
#[clippy::has_significant_drop]
pub struct AsyncGuard<G> {
    // Field order is the drop order: the lock is released first, then the
    // bin is freed (also when releasing panics).
    guard: G,
    bin: Bin,
}

impl<G> AsyncGuard<G> {
    /// Wraps a guard that is held: its bin starts empty, allocates on its
    /// first deferred item, and opens nothing.
    ///
    /// ```
    /// let m = std::sync::Mutex::new(1);
    /// let g = freeq::AsyncGuard::new(m.lock().unwrap());
    /// assert_eq!(*g, 1);
    /// ```
    ///
    /// The call is the guard's site for [`freeq::profile`](crate::profile)
    /// ([`LockKind::AsyncGuard`](crate::profile::LockKind::AsyncGuard), no
    /// wait measured). With the lock already held, a sampled call
    /// allocates here: its sample (one small box, in one call of N while
    /// the profile samples one in N), and, the first time, its site's row.
    /// The acquisitions of `freeq::tokio` do both before they lock.
    #[inline]
    #[track_caller]
    pub fn new(guard: G) -> Self {
        Self::sampled(guard, sample(LockKind::AsyncGuard))
    }

    /// Wraps a guard whose acquisition `sample` (if any) timed: the lock
    /// is held from now on.
    #[inline]
    pub(crate) fn sampled(guard: G, mut sample: Option<Box<AsyncSample>>) -> Self {
        let mut bin = Bin::new();
        if let Some(s) = &mut sample {
            s.acquired();
            *bin.sample = sample;
        }
        AsyncGuard { guard, bin }
    }

    /// Puts `value` in the guard's bin: it is dropped after the lock is
    /// released, by the thread that releases it. O(1); the bin's first
    /// item allocates its first block.
    ///
    /// ```
    /// let m = std::sync::Mutex::new(vec![0u8; 1 << 20]);
    /// let mut g = freeq::AsyncGuard::new(m.lock().unwrap());
    /// let old = std::mem::take(&mut *g);
    /// g.defer(old);
    /// drop(g); // unlock, then free the megabyte
    /// ```
    #[inline]
    pub fn defer<V: Send + 'static>(&mut self, value: V) {
        self.bin.push(move || drop(value));
    }

    /// Puts `value` in the bin, to be freed by `free(value)` after the
    /// release (return it to a pool).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    /// let m = Mutex::new(vec![1u8; 64]);
    /// let mut g = freeq::AsyncGuard::new(m.lock().unwrap());
    /// let old = std::mem::take(&mut *g);
    /// let p = pool.clone();
    /// g.defer_with(old, move |v| p.lock().unwrap().push(v));
    /// drop(g);
    /// assert_eq!(pool.lock().unwrap().len(), 1);
    /// ```
    #[inline]
    pub fn defer_with<V, F>(&mut self, value: V, free: F)
    where
        V: Send + 'static,
        F: FnOnce(V) + Send + 'static,
    {
        self.bin.push(move || free(value));
    }

    /// Runs `action` after the release (a wake-up, a notification).
    ///
    /// ```
    /// let m = std::sync::Mutex::new(());
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut g = freeq::AsyncGuard::new(m.lock().unwrap());
    /// g.defer_fn(move || tx.send("released").unwrap());
    /// assert!(rx.try_recv().is_err());
    /// drop(g);
    /// assert_eq!(rx.try_recv(), Ok("released"));
    /// ```
    #[inline]
    pub fn defer_fn<F: FnOnce() + Send + 'static>(&mut self, action: F) {
        self.bin.push(action);
    }

    /// Items in the bin, deferred and retired. O(items).
    pub fn pending(&self) -> usize {
        self.bin.len()
    }

    /// Runs `f` on the guarded value inside a section of this thread, and
    /// moves what `f` queued there into the bin: [`Deferred`](crate::Deferred)
    /// values it dropped, its [`defer`](crate::defer) and
    /// [`retire`](crate::retire) calls, and, with
    /// [`DeferFrees`](crate::alloc::DeferFrees) as the global allocator,
    /// every free it made. This is how to catch the implicit drops of
    /// `*g = new`, `map.insert`, `v.clear()` under an async lock. `f` is
    /// synchronous, so the section never spans an `.await`.
    ///
    /// What the thread had queued before (an enclosing section's items) is
    /// set aside meanwhile and stays the enclosing section's. The frees
    /// held back by `DeferFrees` are moved into the bin too, and are freed
    /// with it, after the release, on the thread that frees the bin, which
    /// may not be the one that made them (a task may move between worker
    /// threads). Any thread may free any block, so this is always sound;
    /// allocators with per-thread heaps (mimalloc, jemalloc) then pay a
    /// remote free per block. If `f` panics, what it queued is moved into
    /// the bin all the same, and freed when the guard is dropped during
    /// unwinding.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use freeq::Deferred;
    /// let m = std::sync::Mutex::new(HashMap::<u32, Deferred<Vec<u8>>>::new());
    /// m.lock().unwrap().insert(1, Deferred::new(vec![0; 4096]));
    /// let mut g = freeq::AsyncGuard::new(m.lock().unwrap());
    /// g.with(|map| {
    ///     map.insert(1, Deferred::new(vec![1; 4096])); // the old Vec is dropped here...
    /// });
    /// assert_eq!(g.pending(), 1); // ...and caught
    /// assert_eq!(freeq::pending(), 0); // nothing left on the thread
    /// drop(g); // unlock, then free it
    /// ```
    pub fn with<R>(&mut self, f: impl FnOnce(&mut G::Target) -> R) -> R
    where
        G: DerefMut,
    {
        let AsyncGuard { guard, bin } = self;
        bin.catch(|| f(&mut **guard))
    }

    /// [`with`](AsyncGuard::with) for guards that give shared access only
    /// (read guards): drops of values reached through interior mutability,
    /// or of anything the closure builds and discards, are caught.
    ///
    /// ```
    /// use std::cell::RefCell;
    /// let m = std::sync::RwLock::new(RefCell::new(freeq::Deferred::new(vec![1u8; 64])));
    /// let mut g = freeq::AsyncGuard::new(m.read().unwrap());
    /// g.with_ref(|cell| *cell.borrow_mut() = freeq::Deferred::new(Vec::new()));
    /// assert_eq!(g.pending(), 1);
    /// ```
    pub fn with_ref<R>(&mut self, f: impl FnOnce(&G::Target) -> R) -> R
    where
        G: Deref,
    {
        let AsyncGuard { guard, bin } = self;
        bin.catch(|| f(&**guard))
    }

    /// Releases the lock now, and returns a future that lets a task
    /// already waiting for it run, then frees the bin: awaited, it yields
    /// once to the runtime and then frees the bin in place, whatever it
    /// costs (one cheap value as a plain drop frees it, with no queue).
    ///
    /// Where the yield would cost more than it saves, there is none, and
    /// the bin is freed before this returns (the future is then ready at
    /// once): an empty bin, and a bin of one value whose type freeq knows
    /// to cost less than 10 µs to free (a plain drop frees that in place
    /// too; a waiter waits that long at most). So a cheap value costs no
    /// more than a plain drop, and no trip through the scheduler.
    ///
    /// A plain drop moves a costly bin off the thread instead (see
    /// [`AsyncGuard`], "Dropping a guard"); `unlock().await` keeps the
    /// frees on this task, after the waiter has run, and ends the poll at
    /// the release (when it yields), which a plain drop cannot. Write
    /// `tokio::task::yield_now().await` after it where the poll must end
    /// there whatever the bin holds.
    ///
    /// The lock is released by the call, before the future is polled.
    /// Dropped before it finished (cancelled, or never awaited), the
    /// future frees the bin as a plain drop frees it, where it is dropped;
    /// each value is freed exactly once.
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let waker = std::task::Waker::noop();
    /// #     let mut cx = std::task::Context::from_waker(&waker);
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// let m = std::sync::Mutex::new(vec![0u64; 1 << 16]);
    /// block_on(async {
    ///     let mut g = freeq::AsyncGuard::new(m.lock().unwrap());
    ///     let old = std::mem::take(&mut *g);
    ///     g.defer(old);
    ///     g.unlock().await;
    /// });
    /// assert!(m.try_lock().is_ok());
    /// ```
    pub fn unlock(self) -> AsyncUnlock {
        let AsyncGuard { guard, mut bin } = self;
        drop(guard);
        bin.note_release();
        if bin.is_empty() || bin.free_if_cheap() {
            // Nothing left that a waiter should not wait for.
            return AsyncUnlock {
                bin: None,
                yielded: false,
            };
        }
        AsyncUnlock {
            bin: Some(bin),
            yielded: false,
        }
    }

    /// Turns the wrapped guard into another (a mapped or downgraded one),
    /// keeping the bin: what was deferred is freed after the new guard's
    /// release. The building block of the `map` and `downgrade` of the
    /// guards of
    #[cfg_attr(feature = "tokio", doc = "[`freeq::tokio`](crate::tokio)")]
    #[cfg_attr(not(feature = "tokio"), doc = "`freeq::tokio`")]
    /// (feature `tokio`); use it for other crates' guards.
    ///
    /// ```
    /// let m = std::sync::Mutex::new((1, String::from("x")));
    /// let mut g = freeq::AsyncGuard::new(m.lock().unwrap());
    /// g.defer(String::from("deferred"));
    /// let g = freeq::AsyncGuard::map_guard(g, |g| g); // a std guard cannot map; any `G -> H` can
    /// assert_eq!(g.pending(), 1);
    /// ```
    pub fn map_guard<H>(this: Self, f: impl FnOnce(G) -> H) -> AsyncGuard<H> {
        let AsyncGuard { guard, bin } = this;
        // If `f` panics, `bin` is dropped while unwinding: freed, after
        // whatever `f` did with the guard.
        AsyncGuard {
            guard: f(guard),
            bin,
        }
    }

    /// [`map_guard`](AsyncGuard::map_guard) for a mapping that may fail
    /// and give the guard back: then the original is returned, bin and
    /// all.
    pub fn try_map_guard<H>(
        this: Self,
        f: impl FnOnce(G) -> Result<H, G>,
    ) -> Result<AsyncGuard<H>, Self> {
        let AsyncGuard { guard, bin } = this;
        match f(guard) {
            Ok(guard) => Ok(AsyncGuard { guard, bin }),
            Err(guard) => Err(AsyncGuard { guard, bin }),
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

impl<G: Deref> Deref for AsyncGuard<G> {
    type Target = G::Target;
    #[inline]
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for AsyncGuard<G> {
    #[inline]
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

impl<G: fmt::Debug> fmt::Debug for AsyncGuard<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.guard, f)
    }
}

impl<G: fmt::Display> fmt::Display for AsyncGuard<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.guard, f)
    }
}
