//! freeq's locks as drop-in replacements, and the edges of the contract:
//!
//! - threads are readied before a lock is taken: a fresh thread's first
//!   section allocates nothing while the lock is held (a counting global
//!   allocator, per thread);
//! - a raw lock whose release unwinds (after releasing, as lock_api allows)
//!   still closes the section, so the thread keeps draining;
//! - guards are `Sync` like std's and parking_lot's: `&guard` crosses into a
//!   scoped thread;
//! - a leaked guard keeps its thread in a section, visibly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Once};
use std::thread;

use freeq::{RawDeferred, defer, in_section, pending};
use lock_api::RawRwLock as _;

// ---------------------------------------------------------------------------
// A per-thread counting allocator
// ---------------------------------------------------------------------------

struct Counting;

thread_local! {
    /// Allocation calls (alloc, alloc_zeroed, realloc) on this thread.
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    let _ = CALLS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: (1) every call is forwarded unchanged to `System`, which upholds
// the `GlobalAlloc` contract; the bookkeeping touches only a `const`
// thread-local without a destructor, which never allocates or unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: (2) forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: (3) as in (2).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: (4) as in (2).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: (5) as in (2).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn calls() -> usize {
    CALLS.with(Cell::get)
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Counts its drops and checks each one happens outside any section.
struct Probe(Arc<AtomicUsize>);

impl Drop for Probe {
    fn drop(&mut self) {
        assert!(!in_section(), "freed inside a section");
        self.0.fetch_add(1, SeqCst);
    }
}

#[derive(Debug)]
struct Injected;

fn quiet_injected() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Injected>() {
                default(info);
            }
        }));
    });
}

/// Runs `f` on a fresh thread and returns its result.
fn fresh<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(f).join().unwrap()
}

// ---------------------------------------------------------------------------
// Ready before the lock
// ---------------------------------------------------------------------------

/// Items deferred in each measured section: small enough to fit the room a
/// thread is readied with.
const ITEMS: usize = 8;

fn defer_items() {
    for i in 0..ITEMS {
        defer(i as u64);
    }
}

#[test]
fn a_fresh_thread_allocates_nothing_under_a_freeq_mutex() {
    let m = Arc::new(freeq::Mutex::new(0u64));
    let under = fresh(move || {
        let g = m.lock().unwrap();
        let before = calls();
        defer_items();
        let under = calls() - before;
        drop(g);
        assert_eq!(pending(), 0);
        under
    });
    assert_eq!(under, 0, "allocations while the lock was held");
}

#[test]
fn a_fresh_thread_allocates_nothing_under_each_freeq_lock() {
    let under = fresh(|| {
        let rw = freeq::RwLock::new(0u64);
        let pl = freeq::parking_lot::Mutex::new(0u64);
        let plrw = freeq::parking_lot::RwLock::new(0u64);
        let mut under = Vec::new();
        let mut measure = |name: &'static str| {
            let before = calls();
            defer_items();
            under.push((name, calls() - before));
        };
        {
            let _g = rw.write().unwrap();
            measure("RwLock::write");
        }
        {
            let _g = rw.read().unwrap();
            measure("RwLock::read");
        }
        {
            let _g = pl.lock();
            measure("parking_lot::Mutex::lock");
        }
        {
            let _g = pl.try_lock().unwrap();
            measure("parking_lot::Mutex::try_lock");
        }
        {
            let _g = plrw.upgradable_read();
            measure("parking_lot::RwLock::upgradable_read");
        }
        {
            let _s = freeq::section();
            measure("section");
        }
        under
    });
    for (name, n) in under {
        assert_eq!(n, 0, "{name}: allocations while the lock was held");
    }
}

#[test]
fn a_fresh_thread_allocates_nothing_under_a_raw_deferred_lock() {
    // The first acquisition on the thread is `try_lock`, the second `lock`.
    type M = lock_api::Mutex<RawDeferred<parking_lot::RawMutex>, u64>;
    let under = fresh(|| {
        let m = M::new(0);
        let g = m.try_lock().unwrap();
        let before = calls();
        defer_items();
        let under = calls() - before;
        drop(g);
        under
    });
    assert_eq!(under, 0);
}

#[test]
fn lock_guard_new_after_prepare_thread_allocates_nothing_under_the_lock() {
    let under = fresh(|| {
        let m = std::sync::Mutex::new(0u64);
        freeq::prepare_thread();
        let g = freeq::LockGuard::new(m.lock().unwrap());
        let before = calls();
        defer_items();
        let under = calls() - before;
        drop(g);
        under
    });
    assert_eq!(under, 0);
}

// ---------------------------------------------------------------------------
// Releases that unwind
// ---------------------------------------------------------------------------

/// parking_lot's raw locks, with releases and transitions that panic after
/// doing their work when armed (lock_api 0.5 lets an operation that
/// consumes guard state unwind once it has released the acquisition).
struct Panicky<R> {
    inner: R,
    armed: AtomicBool,
}

impl<R> Panicky<R> {
    fn arm(&self) {
        self.armed.store(true, SeqCst);
    }

    fn maybe_panic(&self) {
        if self.armed.swap(false, SeqCst) {
            panic::panic_any(Injected);
        }
    }
}

// SAFETY: (6) every operation delegates to parking_lot's raw mutex and only
// panics after the delegated release has completed, which releases the
// acquisition as lock_api requires of an unwinding release.
unsafe impl lock_api::RawMutex for Panicky<parking_lot::RawMutex> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Panicky {
        inner: parking_lot::RawMutex::INIT,
        armed: AtomicBool::new(false),
    };
    type Guard = <parking_lot::RawMutex as lock_api::RawMutex>::Guard;

    fn lock(&self) -> Self::Guard {
        self.inner.lock()
    }

    fn try_lock(&self) -> Option<Self::Guard> {
        self.inner.try_lock()
    }

    unsafe fn unlock(&self, guard: Self::Guard) {
        // SAFETY: (7) forwarded from the caller.
        unsafe { self.inner.unlock(guard) };
        self.maybe_panic();
    }

    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}

type PRw = <parking_lot::RawRwLock as lock_api::RawRwLock>::SharedGuard;
type PRwX = <parking_lot::RawRwLock as lock_api::RawRwLock>::ExclusiveGuard;
type PRwU = <parking_lot::RawRwLock as lock_api::RawRwLockUpgrade>::UpgradableGuard;

// SAFETY: (8) as in (6), for parking_lot's raw reader-writer lock.
unsafe impl lock_api::RawRwLock for Panicky<parking_lot::RawRwLock> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Panicky {
        inner: parking_lot::RawRwLock::INIT,
        armed: AtomicBool::new(false),
    };
    type SharedGuard = PRw;
    type ExclusiveGuard = PRwX;

    fn lock_shared(&self) -> PRw {
        self.inner.lock_shared()
    }

    fn try_lock_shared(&self) -> Option<PRw> {
        self.inner.try_lock_shared()
    }

    unsafe fn unlock_shared(&self, guard: PRw) {
        // SAFETY: (9) forwarded from the caller.
        unsafe { self.inner.unlock_shared(guard) };
        self.maybe_panic();
    }

    fn lock_exclusive(&self) -> PRwX {
        self.inner.lock_exclusive()
    }

    fn try_lock_exclusive(&self) -> Option<PRwX> {
        self.inner.try_lock_exclusive()
    }

    unsafe fn unlock_exclusive(&self, guard: PRwX) {
        // SAFETY: (10) forwarded from the caller.
        unsafe { self.inner.unlock_exclusive(guard) };
        self.maybe_panic();
    }

    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    fn is_locked_exclusive(&self) -> bool {
        self.inner.is_locked_exclusive()
    }
}

// SAFETY: (11) a transition that panics first releases what it returned,
// so the acquisition it consumed is released, as lock_api requires.
unsafe impl lock_api::RawRwLockDowngrade for Panicky<parking_lot::RawRwLock> {
    unsafe fn downgrade(&self, guard: PRwX) -> PRw {
        // SAFETY: (12) forwarded from the caller.
        let shared = unsafe { self.inner.downgrade(guard) };
        if self.armed.load(SeqCst) {
            // SAFETY: (13) `shared` is the acquisition just made.
            unsafe { self.inner.unlock_shared(shared) };
            self.maybe_panic();
            unreachable!();
        }
        shared
    }
}

// SAFETY: (14) as in (11).
unsafe impl lock_api::RawRwLockUpgrade for Panicky<parking_lot::RawRwLock> {
    type UpgradableGuard = PRwU;

    fn lock_upgradable(&self) -> PRwU {
        self.inner.lock_upgradable()
    }

    fn try_lock_upgradable(&self) -> Option<PRwU> {
        self.inner.try_lock_upgradable()
    }

    unsafe fn unlock_upgradable(&self, guard: PRwU) {
        // SAFETY: (15) forwarded from the caller.
        unsafe { self.inner.unlock_upgradable(guard) };
        self.maybe_panic();
    }

    unsafe fn upgrade(&self, guard: PRwU) -> PRwX {
        // SAFETY: (16) forwarded from the caller.
        let exclusive = unsafe { self.inner.upgrade(guard) };
        if self.armed.load(SeqCst) {
            // SAFETY: (17) `exclusive` is the acquisition just made.
            unsafe { self.inner.unlock_exclusive(exclusive) };
            self.maybe_panic();
            unreachable!();
        }
        exclusive
    }

    unsafe fn try_upgrade(&self, guard: PRwU) -> Result<PRwX, PRwU> {
        // SAFETY: (18) forwarded from the caller.
        unsafe { self.inner.try_upgrade(guard) }
    }
}

type PanickyMutex<T> = lock_api::Mutex<RawDeferred<Panicky<parking_lot::RawMutex>>, T>;
type PanickyRwLock<T> = lock_api::RwLock<RawDeferred<Panicky<parking_lot::RawRwLock>>, T>;

/// Defers a probe inside `section`, which must end with a release that
/// panics; then checks the panic came out, the probe was freed, the thread
/// left its section and still drains.
fn release_unwinds(section: impl FnOnce(Probe)) {
    quiet_injected();
    let freed = Arc::new(AtomicUsize::new(0));
    let probe = Probe(freed.clone());
    let err = panic::catch_unwind(AssertUnwindSafe(move || section(probe))).unwrap_err();
    assert!(err.is::<Injected>());
    assert!(!in_section(), "the section leaked");
    assert_eq!(pending(), 0);
    assert_eq!(freed.load(SeqCst), 1, "the deferred probe was not freed");
    // The thread still drains at its next release.
    let m = freeq::parking_lot::Mutex::new(());
    let g = m.lock();
    defer(Probe(freed.clone()));
    assert_eq!(freed.load(SeqCst), 1);
    drop(g);
    assert_eq!(freed.load(SeqCst), 2);
}

#[test]
fn a_panicking_unlock_still_closes_the_section() {
    let m = PanickyMutex::new(0);
    release_unwinds(|probe| {
        let g = m.lock();
        defer(probe);
        unsafe { m.raw() }.inner().arm();
        drop(g);
    });
    assert!(m.try_lock().is_some(), "the lock was not released");
}

#[test]
fn a_panicking_shared_and_exclusive_unlock_still_close_the_section() {
    let rw = PanickyRwLock::new(0);
    release_unwinds(|probe| {
        let g = rw.read();
        defer(probe);
        unsafe { rw.raw() }.inner().arm();
        drop(g);
    });
    release_unwinds(|probe| {
        let g = rw.write();
        defer(probe);
        unsafe { rw.raw() }.inner().arm();
        drop(g);
    });
    release_unwinds(|probe| {
        let g = rw.upgradable_read();
        defer(probe);
        unsafe { rw.raw() }.inner().arm();
        drop(g);
    });
    assert!(rw.try_write().is_some(), "the lock was not released");
}

#[test]
fn a_panicking_downgrade_or_upgrade_still_closes_the_section() {
    let rw = PanickyRwLock::new(0);
    release_unwinds(|probe| {
        let g = rw.write();
        defer(probe);
        unsafe { rw.raw() }.inner().arm();
        let _r = lock_api::RwLockWriteGuard::downgrade(g);
        unreachable!();
    });
    release_unwinds(|probe| {
        let g = rw.upgradable_read();
        defer(probe);
        unsafe { rw.raw() }.inner().arm();
        let _w = lock_api::RwLockUpgradableReadGuard::upgrade(g);
        unreachable!();
    });
    assert!(rw.try_write().is_some(), "the lock was not released");
}

#[test]
fn a_panicking_inner_release_in_a_nest_keeps_the_outer_section() {
    quiet_injected();
    let freed = Arc::new(AtomicUsize::new(0));
    let outer = freeq::parking_lot::Mutex::new(());
    let m = PanickyMutex::new(0);
    let o = outer.lock();
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        let g = m.lock();
        defer(Probe(freed.clone()));
        unsafe { m.raw() }.inner().arm();
        drop(g);
    }))
    .unwrap_err();
    assert!(err.is::<Injected>());
    assert!(in_section(), "the outer section must stay open");
    assert_eq!(pending(), 1);
    drop(o);
    assert_eq!(freed.load(SeqCst), 1);
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// Guards are Sync, and stay !Send
// ---------------------------------------------------------------------------

fn assert_sync<T: Sync>(_: &T) {}

#[test]
fn guards_are_shared_with_scoped_threads() {
    let m = freeq::Mutex::new(1);
    let rw = freeq::RwLock::new(2);
    let pm = freeq::parking_lot::Mutex::new(3);
    let prw = freeq::parking_lot::RwLock::new(4);
    let rm = freeq::parking_lot::ReentrantMutex::new(5);
    let g1 = m.lock().unwrap();
    let g2 = rw.read().unwrap();
    let g3 = pm.lock();
    let g4 = prw.upgradable_read();
    let g5 = rm.lock();
    let s = freeq::section();
    assert_sync(&g1);
    assert_sync(&s);
    thread::scope(|sc| {
        sc.spawn(|| {
            assert_eq!(*g1 + *g2 + *g3 + *g4 + *g5, 15);
            let _ = &s;
            // The sections belong to the owning thread, not this one.
            assert!(!in_section());
        });
    });
    drop((g1, g2, g3, g4, g5, s));
    assert!(!in_section());
    let w = rw.write().unwrap();
    thread::scope(|sc| {
        sc.spawn(|| assert_eq!(*w, 2));
    });
}

// ---------------------------------------------------------------------------
// Leaked guards
// ---------------------------------------------------------------------------

#[test]
fn a_leaked_guard_keeps_its_thread_in_a_section_until_exit() {
    let freed = Arc::new(AtomicUsize::new(0));
    let f2 = freed.clone();
    // A static, so that the leaked lock leaks no memory (Miri checks).
    static M: freeq::parking_lot::Mutex<u32> = freeq::parking_lot::const_mutex(0);
    let m = &M;
    let seen = thread::spawn(move || {
        std::mem::forget(m.lock());
        assert!(in_section(), "a forgotten guard keeps the section open");
        // Everything deferred from now on waits for thread exit.
        let other = freeq::Mutex::new(());
        drop(other.lock().unwrap());
        defer(Probe(f2.clone()));
        {
            let _g = other.lock().unwrap();
            defer(Probe(f2.clone()));
        }
        (in_section(), pending(), f2.load(SeqCst))
    })
    .join()
    .unwrap();
    assert_eq!(seen, (true, 2, 0));
    // Thread exit freed what the leaked section held back.
    assert_eq!(freed.load(SeqCst), 2);
    assert!(m.is_locked(), "the leaked guard never unlocks");
}

// ---------------------------------------------------------------------------
// std's API: set, replace, get_cloned, downgrade
// ---------------------------------------------------------------------------

/// Poisons a std-backed lock: takes it with `lock` and panics holding it.
fn poison<G>(lock: impl FnOnce() -> G + Send) {
    quiet_injected();
    thread::scope(|s| {
        assert!(
            s.spawn(|| {
                let _held = lock();
                panic::panic_any(Injected)
            })
            .join()
            .is_err()
        );
    });
}

#[test]
fn mutex_set_replace_and_get_cloned_follow_std() {
    let freed = Arc::new(AtomicUsize::new(0));
    let m = freeq::Mutex::new(Some(Probe(freed.clone())));
    // Inside a section the old value waits for the outermost release.
    let s = freeq::section();
    m.set(None).unwrap();
    assert_eq!((freed.load(SeqCst), pending()), (0, 1));
    drop(s);
    assert_eq!(freed.load(SeqCst), 1);
    // Outside, it is freed after the unlock, at once.
    m.set(Some(Probe(freed.clone()))).unwrap();
    m.set(None).unwrap();
    assert_eq!(freed.load(SeqCst), 2);

    let m = freeq::Mutex::new(String::from("a"));
    assert_eq!(m.replace(String::from("b")).unwrap(), "a");
    assert_eq!(m.get_cloned().unwrap(), "b");

    // Poisoned: nothing is stored, the value comes back.
    poison(|| m.lock());
    let guard = m.lock();
    assert!(guard.is_err());
    drop(guard);
    let err = m.set(String::from("c")).unwrap_err();
    assert_eq!(err.into_inner(), "c");
    assert_eq!(m.replace(String::from("d")).unwrap_err().into_inner(), "d");
    assert!(m.get_cloned().is_err());
    m.clear_poison();
    assert_eq!(m.get_cloned().unwrap(), "b");
}

#[test]
#[cfg(not(loom))] // loom's RwLock has no downgrade
fn rwlock_set_replace_get_cloned_and_downgrade() {
    let freed = Arc::new(AtomicUsize::new(0));
    let rw = freeq::RwLock::new(Some(Probe(freed.clone())));
    rw.set(None).unwrap();
    assert_eq!(freed.load(SeqCst), 1);
    assert!(rw.replace(None).unwrap().is_none());

    let rw = freeq::RwLock::new(vec![Probe(freed.clone())]);
    let mut w = rw.write().unwrap();
    defer(std::mem::take(&mut *w));
    let r = freeq::RwLockWriteGuard::downgrade(w);
    // Still one section: nothing freed, other readers may enter, no writer.
    assert!(in_section());
    assert_eq!((pending(), freed.load(SeqCst)), (1, 1));
    assert!(rw.try_read().is_ok());
    assert!(rw.try_write().is_err());
    drop(r);
    assert!(!in_section());
    assert_eq!(freed.load(SeqCst), 2);
    assert!(rw.read().unwrap().is_empty());

    let rw = freeq::RwLock::new(1);
    poison(|| rw.write());
    assert_eq!(rw.set(2).unwrap_err().into_inner(), 2);
    assert!(rw.get_cloned().is_err());
}

// ---------------------------------------------------------------------------
// serde (feature `serde`)
// ---------------------------------------------------------------------------

#[cfg(feature = "serde")]
#[test]
fn locks_serialize_and_deserialize_like_their_values() {
    let m = freeq::Mutex::new(vec![1, 2]);
    let rw = freeq::RwLock::new(String::from("x"));
    let pm = freeq::parking_lot::Mutex::new(3u8);
    let prw = freeq::parking_lot::RwLock::new((4u8, 5u8));
    let json = serde_json::to_string(&(&m, &rw, &pm, &prw)).unwrap();
    assert_eq!(json, r#"[[1,2],"x",3,[4,5]]"#);
    assert!(!in_section());
    type All = (
        freeq::Mutex<Vec<i32>>,
        freeq::RwLock<String>,
        freeq::parking_lot::Mutex<u8>,
        freeq::parking_lot::RwLock<(u8, u8)>,
    );
    let (m2, rw2, pm2, prw2): All = serde_json::from_str(&json).unwrap();
    assert_eq!(*m2.lock().unwrap(), [1, 2]);
    assert_eq!(*rw2.read().unwrap(), "x");
    assert_eq!(*pm2.lock(), 3);
    assert_eq!(*prw2.read(), (4, 5));

    poison(|| m.lock());
    assert!(serde_json::to_string(&m).is_err());
}

#[test]
fn a_guard_leaked_with_mutex_guard_leak_shows_in_pending() {
    let freed = Arc::new(AtomicUsize::new(0));
    let f2 = freed.clone();
    let seen = thread::spawn(move || {
        static M: freeq::parking_lot::Mutex<u32> = freeq::parking_lot::const_mutex(5);
        let m = &M;
        let value: &'static mut u32 = freeq::parking_lot::MutexGuard::leak(m.lock());
        *value += 1;
        let before = (in_section(), pending());
        for _ in 0..3 {
            defer(Probe(f2.clone()));
        }
        // Closing another lock is an inner release: nothing drains.
        drop(freeq::Mutex::new(()).lock().unwrap());
        (before, in_section(), pending(), f2.load(SeqCst))
    })
    .join()
    .unwrap();
    assert_eq!(seen, ((true, 0), true, 3, 0));
    assert_eq!(freed.load(SeqCst), 3, "thread exit frees what waited");
}
