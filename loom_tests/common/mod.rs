//! Helpers shared by the loom models.
//!
//! - [`LoomRawMutex`]: a lock_api 0.5 raw spin lock over a loom `AtomicBool`,
//!   so `lock_api::Mutex<freeq::RawDeferred<LoomRawMutex>, T>` runs under
//!   loom. It remembers which loom thread holds it, so a free can tell "the
//!   lock is taken by someone else" from "my own thread still holds it".
//! - [`Log`] and [`Probe`]: deferred values that record when, where and how
//!   often they are freed, and check the free-time invariants as they go.
//!
//! Bookkeeping (the log, owner records, the `Arc`s that share locks between
//! model threads) uses `std` types on purpose: loom runs one model thread at
//! a time, so they are race-free, and leaving them untracked keeps the
//! explored interleavings down to freeq's own operations and the locks.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool as StdAtomicBool, AtomicUsize as StdAtomicUsize};

use loom::sync::atomic::AtomicBool;
use loom::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use loom::thread::{self, ThreadId};

pub use std::sync::Arc;

/// Which loom thread currently holds a lock, if any.
///
/// Uses `loom::thread::current()`, so it must not be set or cleared from a
/// thread-exit destructor (loom has torn down the thread's locals by then).
#[derive(Default)]
pub struct Owner(StdMutex<Option<ThreadId>>);

impl Owner {
    pub fn set(&self) {
        let me = thread::current().id();
        let prev = self.0.lock().unwrap().replace(me);
        assert!(prev.is_none(), "lock acquired while already held");
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().take();
    }

    /// Whether the calling thread holds the lock.
    pub fn is_me(&self) -> bool {
        *self.0.lock().unwrap() == Some(thread::current().id())
    }
}

/// A raw spin lock for lock_api 0.5 built on a loom `AtomicBool`; waiting
/// threads `yield_now`, which tells loom to run someone else.
pub struct LoomRawMutex {
    locked: AtomicBool,
    owner: Owner,
}

impl LoomRawMutex {
    /// An unlocked mutex. Only callable inside a loom model.
    pub fn new() -> Self {
        LoomRawMutex {
            locked: AtomicBool::new(false),
            owner: Owner::default(),
        }
    }

    /// Whether the calling thread holds this lock.
    pub fn held_here(&self) -> bool {
        self.owner.is_me()
    }
}

impl Default for LoomRawMutex {
    fn default() -> Self {
        LoomRawMutex::new()
    }
}

// SAFETY: the flag goes false -> true only through a successful
// compare-exchange (Acquire), so one guard state exists at a time, and
// `unlock` publishes the critical section with a Release store.
unsafe impl lock_api::RawMutex for LoomRawMutex {
    // A loom atomic registers itself with the running model, so it cannot be
    // built in a `const`: build mutexes with `LoomRawMutex::new()` and
    // `lock_api::Mutex::from_raw` (see `defer_mutex`), never `Mutex::new`.
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = panic!("LoomRawMutex needs a running loom model: use LoomRawMutex::new()");

    type Guard = lock_api::GuardNoSend;

    fn lock(&self) -> Self::Guard {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            thread::yield_now();
        }
    }

    fn try_lock(&self) -> Option<Self::Guard> {
        self.locked
            .compare_exchange(false, true, Acquire, Relaxed)
            .ok()
            .map(|_| {
                self.owner.set();
                lock_api::GuardNoSend::new()
            })
    }

    unsafe fn unlock(&self, _guard: Self::Guard) {
        self.owner.clear();
        self.locked.store(false, Release);
    }

    fn is_locked(&self) -> bool {
        self.locked.load(Relaxed)
    }
}

/// A deferring mutex over the loom spin lock.
pub type DeferMutex<T> = lock_api::Mutex<freeq::RawDeferred<LoomRawMutex>, T>;

/// A [`DeferMutex`] shared between model threads.
pub fn defer_mutex<T>(value: T) -> Arc<DeferMutex<T>> {
    Arc::new(lock_api::Mutex::from_raw(
        freeq::RawDeferred::from_raw(LoomRawMutex::new()),
        value,
    ))
}

/// Whether the calling thread holds `m`.
pub fn held_here<T>(m: &DeferMutex<T>) -> bool {
    // SAFETY: the raw lock is only inspected, never locked or unlocked here.
    unsafe { m.raw() }.inner().held_here()
}

/// Asserts that the calling thread does not hold `m`: `try_lock` succeeds,
/// or fails only because another thread holds it.
pub fn assert_not_held_here<T>(m: &DeferMutex<T>) {
    match m.try_lock() {
        Some(guard) => drop(guard),
        None => assert!(!held_here(m), "value freed while its thread holds the lock"),
    }
}

/// A guard wrapper that records its holder in an [`Owner`] and clears the
/// record just before the wrapped guard unlocks; for locks (loom's `Mutex`)
/// that cannot say who holds them.
pub struct Owned<'a, G> {
    guard: G,
    owner: &'a Owner,
}

impl<'a, G> Owned<'a, G> {
    pub fn new(guard: G, owner: &'a Owner) -> Self {
        owner.set();
        Owned { guard, owner }
    }
}

impl<G> Drop for Owned<'_, G> {
    fn drop(&mut self) {
        // `guard` is dropped (unlocked) right after this.
        self.owner.clear();
    }
}

impl<G: Deref> Deref for Owned<'_, G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Owned<'_, G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

/// What the models know about each probe: how often it was freed, the order
/// of frees, and which threads are in the middle of a free.
pub struct Log {
    freed: Vec<StdAtomicUsize>,
    order: StdMutex<Vec<usize>>,
    /// Per model thread: a probe's free is running on that thread.
    freeing: Vec<StdAtomicBool>,
}

/// Probe ids are `thread * PER_THREAD + n`.
pub const PER_THREAD: usize = 16;

/// A probe id as `thread.n`, for messages.
pub fn name(id: usize) -> String {
    format!("{}.{}", id / PER_THREAD, id % PER_THREAD)
}

impl Log {
    /// A log for `threads` model threads with up to `PER_THREAD` probes each.
    pub fn new(threads: usize) -> Arc<Log> {
        Arc::new(Log {
            freed: (0..threads * PER_THREAD)
                .map(|_| StdAtomicUsize::new(0))
                .collect(),
            order: StdMutex::new(Vec::new()),
            freeing: (0..threads).map(|_| StdAtomicBool::new(false)).collect(),
        })
    }

    /// Times probe `id` was freed.
    pub fn freed(&self, id: usize) -> usize {
        self.freed[id].load(Relaxed)
    }

    /// The order in which `thread`'s probes were freed.
    pub fn order_of(&self, thread: usize) -> Vec<usize> {
        let range = thread * PER_THREAD..(thread + 1) * PER_THREAD;
        let order = self.order.lock().unwrap();
        order
            .iter()
            .copied()
            .filter(|id| range.contains(id))
            .collect()
    }

    /// Asserts that exactly `ids` were freed, each once, and nothing else.
    pub fn assert_freed_once(&self, ids: &[usize]) {
        for (id, count) in self.freed.iter().enumerate() {
            let want = usize::from(ids.contains(&id));
            assert_eq!(
                count.load(Relaxed),
                want,
                "probe {} freed {} times, expected {want}",
                name(id),
                count.load(Relaxed)
            );
        }
    }
}

/// An extra check or action run when a probe is freed.
type Check = Box<dyn FnOnce() + Send>;

/// A deferred value that records its free in a [`Log`], checks that it is
/// freed exactly once, not inside a section and not nested in another
/// probe's free on the same thread, then runs its extra checks and actions.
pub struct Probe {
    id: usize,
    thread: usize,
    log: Arc<Log>,
    then: Vec<Check>,
    inline_ok: bool,
}

impl Probe {
    /// Probe number `n` of model thread `thread`.
    pub fn new(log: &Arc<Log>, thread: usize, n: usize) -> Probe {
        assert!(n < PER_THREAD);
        Probe {
            id: thread * PER_THREAD + n,
            thread,
            log: log.clone(),
            then: Vec::new(),
            inline_ok: false,
        }
    }

    /// Probe id of probe `n` of `thread`.
    pub fn id(thread: usize, n: usize) -> usize {
        thread * PER_THREAD + n
    }

    /// Also asserts, when freed, that this thread does not hold `m`.
    pub fn not_under<T: Send + 'static>(self, m: &Arc<DeferMutex<T>>) -> Probe {
        let m = m.clone();
        self.then(move || assert_not_held_here(&m))
    }

    /// Allows this probe to be freed inside another probe's free: what
    /// happens, by design, to a value deferred after its thread's free
    /// queue is gone (at thread exit).
    pub fn inline_ok(mut self) -> Probe {
        self.inline_ok = true;
        self
    }

    /// Runs `f` (more checks, or more work) when freed, after the built-in
    /// checks.
    pub fn then(mut self, f: impl FnOnce() + Send + 'static) -> Probe {
        self.then.push(Box::new(f));
        self
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let prev = self.log.freed[self.id].fetch_add(1, Relaxed);
        assert_eq!(prev, 0, "probe {} freed twice", name(self.id));
        self.log.order.lock().unwrap().push(self.id);
        assert!(
            !freeq::in_section(),
            "probe {} freed inside a section",
            name(self.id)
        );
        let _freeing = if self.inline_ok {
            None
        } else {
            let flag = &self.log.freeing[self.thread];
            assert!(
                !flag.swap(true, Relaxed),
                "probe {} freed from inside another free on its thread (recursive drain)",
                name(self.id)
            );
            Some(Freeing(flag))
        };
        for f in self.then.drain(..) {
            f();
        }
    }
}

/// Clears a thread's "a free is running" flag, also when the free panics.
struct Freeing<'a>(&'a StdAtomicBool);

impl Drop for Freeing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// A payload for panics the models raise on purpose; `resume_unwind` skips
/// the panic hook, so expected panics print nothing.
pub fn quiet_panic(msg: &'static str) -> ! {
    std::panic::resume_unwind(Box::new(msg))
}

/// The `&'static str` inside a caught panic payload.
pub fn panic_msg(payload: &(dyn std::any::Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("<not a quiet_panic payload>")
}
