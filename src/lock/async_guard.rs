//! `AsyncGuard<G>`: a guard that may cross `.await` and threads, carrying
//! its own bin of deferred frees, freed after the release.
//!
//! A bin is a pair of the queue layer's buffers (deferred and retired
//! items). Freeing it hands both to the thread that frees it, through the
//! dispatcher, exactly as if they had been deferred there: that thread's
//! policy decides where they are freed. `with` catches what a synchronous
//! closure queues on its thread (the dispatcher's catch entries) and what
//! the allocator holds back meanwhile (`alloc::take_held`). This file calls
//! the dispatcher, the queue's buffer and the allocator's held frees.

use std::fmt;
use std::future::Future;
use std::mem::{self, ManuallyDrop, MaybeUninit};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::alloc::take_held;
use crate::queue::buffer::Buffer;
use crate::reclaim::dispatch::{self, BIN_BUDGET_NS, UNLOCK_AT_ONCE_NS};

/// Words of a deferred closure a bin keeps in itself: a `Vec`, a
/// `String`, a `Box` or an `Arc` with room to spare.
const ONE_WORDS: usize = 3;

/// Where a bin keeps its first item when it is small.
type OneSlot = [MaybeUninit<usize>; ONE_WORDS];

/// What a bin knows of the item in its [`OneSlot`]: one `'static` per
/// closure type.
struct OneMeta {
    /// Moves the item into `to`, at its tail.
    spill: unsafe fn(*mut OneSlot, &mut Buffer),
    /// Frees the item here and now where [`dispatch::free_one`] takes it
    /// (within [`BIN_BUDGET_NS`]), else moves it into `to`, at its tail.
    free: unsafe fn(*mut OneSlot, &mut Buffer),
    /// Frees the item here and now where [`dispatch::free_one`] takes it
    /// within the given budget (returns `true`), else leaves it in place.
    free_within: unsafe fn(*mut OneSlot, u64) -> bool,
}

/// Whether an `F` fits a [`OneSlot`].
const fn fits<F>() -> bool {
    mem::size_of::<F>() <= mem::size_of::<OneSlot>()
        && mem::align_of::<F>() <= mem::align_of::<OneSlot>()
}

/// [`OneMeta::spill`] for `F`.
///
/// # Safety
/// `one` holds an `F` written by [`Bin::push`], not read since; the
/// caller treats it as empty from now on.
unsafe fn spill_one<F: FnOnce() + Send + 'static>(one: *mut OneSlot, to: &mut Buffer) {
    // SAFETY: (2) the caller's promise: an `F` is there, aligned (checked
    // by `fits` when it was written), and read exactly once.
    let f = unsafe { one.cast::<F>().read() };
    Bin::push_queued(to, f);
}

/// [`OneMeta::free`] for `F`.
///
/// # Safety
/// As for [`spill_one`].
unsafe fn free_one<F: FnOnce() + Send + 'static>(one: *mut OneSlot, to: &mut Buffer) {
    // SAFETY: (3) as in (2).
    let f = unsafe { one.cast::<F>().read() };
    if let Err(f) = dispatch::free_one(f, BIN_BUDGET_NS) {
        Bin::push_queued(to, f);
    }
}

/// [`OneMeta::free_within`] for `F`.
///
/// # Safety
/// `one` holds an `F` written by [`Bin::push`], not read since. If this
/// returns `true`, the caller treats it as empty from now on; if `false`,
/// it holds the same item again.
unsafe fn free_one_within<F: FnOnce() + Send + 'static>(one: *mut OneSlot, limit_ns: u64) -> bool {
    // SAFETY: (3a) as in (2).
    let f = unsafe { one.cast::<F>().read() };
    match dispatch::free_one(f, limit_ns) {
        Ok(()) => true,
        Err(f) => {
            // SAFETY: (3b) put back where it was read from: the slot fits
            // an `F` and holds nothing live since the read.
            unsafe { one.cast::<F>().write(f) };
            false
        }
    }
}

/// A guard's own bin of deferred work: what its holder deferred and what
/// its `with` calls caught (retired items among them travel as one item
/// that hands them on). Dropping it frees it (see [`Bin::free`]).
///
/// A small first item (a closure of up to [`ONE_WORDS`] words: a `Vec`,
/// a `String` or a `Box` deferred) is kept in the bin itself, `one`, and
/// a bin that holds only it frees it without the queue
/// ([`dispatch::free_one`]) when it is cheap: no block, no hand-over to
/// the thread's queue, no drain. Any other item goes to `queue`, the
/// queue layer's buffer, after `one` has moved there: `one` holds an item
/// only while `queue` holds none, so the order stays the push order.
pub(crate) struct Bin {
    /// The type of the item in `one`, if it holds one.
    one_meta: Option<&'static OneMeta>,
    one: OneSlot,
    /// Every item when `one` holds none. Dropped only where it owns a
    /// block (a guard that deferred nothing, or one item, skips it).
    queue: ManuallyDrop<Buffer>,
}

// SAFETY: (1) a `&Bin` only reads (`is_empty`, `len` walk the items
// without running or moving them, and read `one_meta` only); every change
// takes `&mut Bin`. Sharing a bin between threads is then like sharing a
// `&Vec` of `Send` items. (`Bin` is `Send` by its fields: the item in
// `one` is `Send`, as `push` requires.)
unsafe impl Sync for Bin {}

impl Bin {
    pub(crate) const fn new() -> Self {
        Bin {
            one_meta: None,
            one: [MaybeUninit::uninit(); ONE_WORDS],
            queue: ManuallyDrop::new(Buffer::new()),
        }
    }

    #[inline]
    fn push<F: FnOnce() + Send + 'static>(&mut self, f: F) {
        if fits::<F>() && self.one_meta.is_none() && self.queue.is_empty() {
            // SAFETY: (4) `one` holds no item (`one_meta` is `None`), and
            // an `F` fits it, size and alignment (`fits`).
            unsafe { self.one.as_mut_ptr().cast::<F>().write(f) };
            self.one_meta = Some(
                const {
                    &OneMeta {
                        spill: spill_one::<F>,
                        free: free_one::<F>,
                        free_within: free_one_within::<F>,
                    }
                },
            );
            return;
        }
        self.spill();
        Bin::push_queued(&mut self.queue, f);
    }

    /// Pushes `f` into `queue`, lending it a spare block of this thread's
    /// queue rather than allocating under the lock, where one is at hand.
    #[inline]
    fn push_queued<F: FnOnce() + Send + 'static>(queue: &mut Buffer, f: F) {
        if !queue.is_ready() {
            dispatch::lend_block(queue);
        }
        queue.push(f);
    }

    /// Moves the item in `one`, if any, into `queue` (which is empty then):
    /// before anything else joins the queue.
    #[inline]
    fn spill(&mut self) {
        if let Some(meta) = self.one_meta.take() {
            // SAFETY: (5) `one_meta` was `Some`: `one` holds the item it
            // describes, written by `push`; taking `one_meta` first makes
            // it read once.
            unsafe { (meta.spill)(&raw mut self.one, &mut self.queue) };
        }
    }

    fn is_empty(&self) -> bool {
        self.one_meta.is_none() && self.queue.is_empty()
    }

    fn len(&self) -> usize {
        usize::from(self.one_meta.is_some()) + self.queue.len()
    }

    /// Frees the item in `one`, if any: here and now if it is cheap and
    /// this thread is outside any section, else it moves into `queue`.
    #[inline]
    fn free_one(&mut self) {
        if let Some(meta) = self.one_meta.take() {
            // SAFETY: (6) as in (5).
            unsafe { (meta.free)(&raw mut self.one, &mut self.queue) };
        }
    }

    /// Frees the bin here and now if it is one item whose type is known to
    /// cost less than `limit_ns` and this thread is outside any section:
    /// whether it did (the bin is then empty).
    #[inline]
    fn free_if_within(&mut self, limit_ns: u64) -> bool {
        match self.one_meta {
            Some(meta) if self.queue.is_empty() => {
                // SAFETY: (6a) `one_meta` is `Some`: `one` holds the item it
                // describes, written by `push`; on `true` it has been read
                // and `one_meta` is cleared, on `false` it is back.
                let freed = unsafe { (meta.free_within)(&raw mut self.one, limit_ns) };
                if freed {
                    self.one_meta = None;
                }
                freed
            }
            _ => false,
        }
    }

    /// Hands everything to this thread's queue, whatever it costs: freed
    /// now, by the thread's policy (inline, or offloaded to a reclaimer),
    /// or, if this thread is inside a section, when it leaves it. A lone
    /// cheap item is freed right here, as that would free it.
    #[inline]
    fn free(&mut self) {
        self.free_one();
        // A guard that deferred nothing owns no block: nothing to do.
        if self.queue.capacity_bytes() != 0 {
            // Dropped at the end, also while unwinding.
            let mut queue = mem::take(&mut *self.queue);
            dispatch::queue_batch(&mut queue, &mut Buffer::new());
        }
    }

    /// Runs `f` inside a section of this thread's and moves into the bin
    /// what the thread queued meanwhile (deferred and retired items) and
    /// the frees the allocator held back meanwhile. Unwinding out of `f`
    /// moves them too.
    fn catch<R>(&mut self, f: impl FnOnce() -> R) -> R {
        // Frees held for an enclosing section stay that section's: they
        // become items of its queue, set aside with the rest of it.
        if let Some(outer) = take_held() {
            dispatch::push(move || {
                outer.free_all();
            });
        }
        // What is caught joins the queue, behind the bin's items.
        self.spill();
        let catch = Catch {
            bin: self,
            aside: Some(dispatch::catch_start()),
        };
        let result = f();
        drop(catch);
        result
    }
}

/// Ends a catch (even while unwinding): see [`Bin::catch`].
struct Catch<'a> {
    bin: &'a mut Bin,
    aside: Option<crate::queue::section::Aside>,
}

impl Drop for Catch<'_> {
    fn drop(&mut self) {
        let Some(aside) = self.aside.take() else {
            return;
        };
        // Still inside the catch's section: pushing here holds nothing.
        // Into the queue (`one` is empty: `catch` spilled it), so that the
        // caught items stay behind these.
        if let Some(frees) = take_held() {
            Bin::push_queued(&mut self.bin.queue, move || {
                frees.free_all();
            });
        }
        let mut retired = Buffer::new();
        dispatch::catch_end(aside, &mut self.bin.queue, &mut retired);
        if !retired.is_empty() {
            // Retired items wait for the epoch too: when the bin is freed,
            // they join that thread's retired list.
            Bin::push_queued(&mut self.bin.queue, move || {
                let mut retired = retired;
                dispatch::queue_batch(&mut Buffer::new(), &mut retired);
            });
        }
    }
}

impl Drop for Bin {
    /// A plain drop of the guard: a costly bin leaves this thread, so
    /// that the waiter the release woke runs first (see
    /// [`AsyncGuard`]'s "Dropping a guard"); a lone cheap item is freed
    /// right here.
    fn drop(&mut self) {
        self.free_one();
        // A guard that deferred nothing, or one cheap item, owns no block:
        // nothing more to do.
        if self.queue.capacity_bytes() != 0 {
            // Dropped at the end, also while unwinding.
            let mut queue = mem::take(&mut *self.queue);
            dispatch::release_bin(&mut queue);
        }
    }
}

/// A future that returns `Pending` once, waking its task first: the
/// runtime runs whatever is queued ahead of it (a waiter just handed the
/// lock) before polling it again. Runtime-agnostic.
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
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
///   queued on the lock run, then frees.
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
///   [`Policy`](crate::Policy), with no allocation;
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
/// [`unlock`](AsyncGuard::unlock)`.await` is still worth writing where the
/// frees should stay on the releasing task's thread (memory a per-thread
/// allocator should get back there, or a machine with no CPU to spare for
/// a reclaimer): it releases, yields once so that the waiter runs, and
/// then frees the bin in place, whatever it costs. A guard dropped by cancellation (its future dropped by
/// `select!`, a timeout, an abort, a runtime shutting down) releases and
/// frees like any drop; each value is freed exactly once. Forgetting a
/// guard (`mem::forget`) leaks its lock and its bin.
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
    #[inline]
    pub const fn new(guard: G) -> Self {
        AsyncGuard {
            guard,
            bin: Bin::new(),
        }
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

    /// Releases the lock, lets a task already waiting for it run (it
    /// yields once to the runtime, only if the bin holds anything), then
    /// frees the bin.
    ///
    /// A plain drop moves a costly bin off the thread instead (see
    /// [`AsyncGuard`], "Dropping a guard"); `unlock().await` keeps the
    /// frees on this task, after the waiter has run. Cancelled (the future
    /// dropped before it finished), it still releases and frees exactly
    /// once: the bin is freed as a plain drop frees it, where the future is
    /// dropped.
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
    pub async fn unlock(self) {
        let AsyncGuard { guard, mut bin } = self;
        drop(guard);
        // A bin that costs less to free than the yield (one value of a
        // type known to be that cheap) is freed at once.
        if bin.is_empty() || bin.free_if_within(UNLOCK_AT_ONCE_NS) {
            return;
        }
        YieldOnce { yielded: false }.await;
        // Freed here, on this thread, whatever it costs: the waiter ran
        // during the yield. If this future is dropped instead of coming
        // back from the yield, the bin is freed as a plain drop frees it.
        bin.free();
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
