//! The drain contract for every kind of freeq lock, each checked the same
//! way: values deferred under the lock are freed after the unlock, in FIFO
//! order, by a drop that finds the lock already free and the thread outside
//! any section. Then each lock family's own API (std poisoning, lock_api
//! mapped/upgradable/Arc guards, `unlocked`, `bump`, re-entrant locking) and
//! nests of mixed kinds that drain only at the outermost release.

use std::any::Any;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex as StdMutex, Once, TryLockError};
use std::thread;
use std::time::Duration;

use freeq::{defer, defer_fn, defer_with, in_section, pending};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Log(Arc<StdMutex<Vec<u32>>>);

impl Log {
    fn push(&self, id: u32) {
        self.0.lock().unwrap().push(id);
    }

    fn get(&self) -> Vec<u32> {
        self.0.lock().unwrap().clone()
    }
}

/// Records its id when dropped, after running a check.
struct Probe {
    id: u32,
    log: Log,
    check: Box<dyn Fn() + Send>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        (self.check)();
        self.log.push(self.id);
    }
}

#[derive(Debug, PartialEq)]
struct Boom(u32);

fn quiet_booms() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Boom>() {
                default(info);
            }
        }));
    });
}

fn boom_id(payload: Box<dyn Any + Send>) -> u32 {
    match payload.downcast::<Boom>() {
        Ok(b) => b.0,
        Err(other) => panic::resume_unwind(other),
    }
}

/// One way of taking a freeq lock, plus a way to ask, from the current
/// thread, whether that lock is free right now.
trait Kind: Send + Sync + 'static {
    type Guard<'a>;
    fn make() -> Self;
    fn acquire(&self) -> Self::Guard<'_>;
    /// Whether the lock is free now. Must be callable from inside a drain.
    fn is_free(&self) -> bool;
}

/// Whether a std `try_lock`-like result means "free": only `WouldBlock`
/// means someone holds it (poisoning does not).
fn std_ok<G>(r: Result<G, TryLockError<G>>) -> bool {
    !matches!(r, Err(TryLockError::WouldBlock))
}

struct StdMutexKind(freeq::Mutex<u32>);
impl Kind for StdMutexKind {
    type Guard<'a> = freeq::MutexGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::Mutex::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn is_free(&self) -> bool {
        std_ok(self.0.try_lock())
    }
}

struct StdWriteKind(freeq::RwLock<u32>);
impl Kind for StdWriteKind {
    type Guard<'a> = freeq::RwLockWriteGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::RwLock::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
    fn is_free(&self) -> bool {
        std_ok(self.0.try_write())
    }
}

struct StdReadKind(freeq::RwLock<u32>);
impl Kind for StdReadKind {
    type Guard<'a> = freeq::RwLockReadGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::RwLock::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    fn is_free(&self) -> bool {
        std_ok(self.0.try_write())
    }
}

struct PlMutexKind(freeq::parking_lot::Mutex<u32>);
impl Kind for PlMutexKind {
    type Guard<'a> = freeq::parking_lot::MutexGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::parking_lot::Mutex::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.lock()
    }
    fn is_free(&self) -> bool {
        self.0.try_lock().is_some()
    }
}

struct PlFairMutexKind(freeq::parking_lot::FairMutex<u32>);
impl Kind for PlFairMutexKind {
    type Guard<'a> = freeq::parking_lot::FairMutexGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::parking_lot::const_fair_mutex(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.lock()
    }
    fn is_free(&self) -> bool {
        self.0.try_lock().is_some()
    }
}

struct PlWriteKind(freeq::parking_lot::RwLock<u32>);
impl Kind for PlWriteKind {
    type Guard<'a> = freeq::parking_lot::RwLockWriteGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::parking_lot::RwLock::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.write()
    }
    fn is_free(&self) -> bool {
        self.0.try_write().is_some()
    }
}

struct PlReadKind(freeq::parking_lot::RwLock<u32>);
impl Kind for PlReadKind {
    type Guard<'a> = freeq::parking_lot::RwLockReadGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::parking_lot::const_rwlock(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.read()
    }
    fn is_free(&self) -> bool {
        self.0.try_write().is_some()
    }
}

struct PlUpgradableKind(freeq::parking_lot::RwLock<u32>);
impl Kind for PlUpgradableKind {
    type Guard<'a> = freeq::parking_lot::RwLockUpgradableReadGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::parking_lot::RwLock::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.upgradable_read()
    }
    fn is_free(&self) -> bool {
        self.0.try_write().is_some()
    }
}

struct ReentrantKind(freeq::parking_lot::ReentrantMutex<u32>);
impl Kind for ReentrantKind {
    type Guard<'a> = freeq::parking_lot::ReentrantMutexGuard<'a, u32>;
    fn make() -> Self {
        Self(freeq::parking_lot::ReentrantMutex::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        self.0.lock()
    }
    fn is_free(&self) -> bool {
        // `try_lock` would succeed re-entrantly on the owning thread, so ask
        // the lock itself.
        !self.0.is_locked()
    }
}

/// A plain `std` guard wrapped with `LockGuard::new`.
struct WrappedStdKind(std::sync::Mutex<u32>);
impl Kind for WrappedStdKind {
    type Guard<'a> = freeq::LockGuard<std::sync::MutexGuard<'a, u32>>;
    fn make() -> Self {
        Self(std::sync::Mutex::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        freeq::LockGuard::new(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn is_free(&self) -> bool {
        std_ok(self.0.try_lock())
    }
}

/// A plain `std` read guard wrapped with `LockGuard::new`.
struct WrappedStdReadKind(std::sync::RwLock<u32>);
impl Kind for WrappedStdReadKind {
    type Guard<'a> = freeq::LockGuard<std::sync::RwLockReadGuard<'a, u32>>;
    fn make() -> Self {
        Self(std::sync::RwLock::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        freeq::LockGuard::new(self.0.read().unwrap_or_else(|e| e.into_inner()))
    }
    fn is_free(&self) -> bool {
        std_ok(self.0.try_write())
    }
}

/// A plain (non-deferring) parking_lot guard wrapped with `LockGuard::new`.
struct WrappedPlKind(parking_lot::Mutex<u32>);
impl Kind for WrappedPlKind {
    type Guard<'a> = freeq::LockGuard<parking_lot::MutexGuard<'a, u32>>;
    fn make() -> Self {
        Self(parking_lot::Mutex::new(0))
    }
    fn acquire(&self) -> Self::Guard<'_> {
        freeq::LockGuard::new(self.0.lock())
    }
    fn is_free(&self) -> bool {
        self.0.try_lock().is_some()
    }
}

/// A probe that, when freed, checks the thread is outside any section and
/// every lock in `locks` is free.
fn probe<K: Kind>(id: u32, log: &Log, locks: &[&Arc<K>]) -> Probe {
    let locks: Vec<Arc<K>> = locks.iter().map(|l| Arc::clone(l)).collect();
    Probe {
        id,
        log: log.clone(),
        check: Box::new(move || {
            assert!(!in_section(), "item {id} freed inside a section");
            for l in &locks {
                assert!(l.is_free(), "item {id} freed while a lock was held");
            }
        }),
    }
}

// ---------------------------------------------------------------------------
// The suite every lock kind runs
// ---------------------------------------------------------------------------

/// defer, defer_with and defer_fn under one guard: nothing is freed while it
/// is held; everything is freed, oldest first, after it is released.
fn drains_after_unlock_in_fifo_order<K: Kind>() {
    let log = Log::default();
    let lock = Arc::new(K::make());
    let guard = lock.acquire();
    assert!(in_section());
    assert!(!lock.is_free());
    for i in 0..12u32 {
        match i % 3 {
            0 => defer(probe(i, &log, &[&lock])),
            1 => defer_with(probe(i, &log, &[&lock]), |p| {
                assert!(!in_section());
                drop(p);
            }),
            _ => {
                let (log, lock) = (log.clone(), lock.clone());
                defer_fn(move || {
                    assert!(!in_section());
                    assert!(lock.is_free());
                    log.push(i);
                });
            }
        }
    }
    assert_eq!(pending(), 12);
    assert!(log.get().is_empty());
    drop(guard);
    assert!(!in_section());
    assert_eq!(pending(), 0);
    assert_eq!(log.get(), (0..12).collect::<Vec<_>>());
    assert!(lock.is_free());
}

/// Two locks of the kind, released in either order: only the release that
/// leaves no lock held drains.
fn nested_pairs_drain_at_the_outermost_release<K: Kind>() {
    for inner_first in [true, false] {
        let log = Log::default();
        let a = Arc::new(K::make());
        let b = Arc::new(K::make());
        let ga = a.acquire();
        defer(probe(1, &log, &[&a, &b]));
        let gb = b.acquire();
        defer(probe(2, &log, &[&a, &b]));
        if inner_first {
            drop(gb);
            assert!(log.get().is_empty());
            assert!(in_section());
            drop(ga);
        } else {
            drop(ga);
            assert!(log.get().is_empty());
            assert!(in_section());
            drop(gb);
        }
        assert_eq!(log.get(), [1, 2]);
        assert_eq!(pending(), 0);
    }
}

/// A free run by the drain takes the same lock again and defers more; the
/// new item is freed later in the same drain, again after the unlock.
fn a_free_may_retake_the_lock<K: Kind>() {
    let log = Log::default();
    let lock = Arc::new(K::make());
    {
        let _g = lock.acquire();
        let (l, lk) = (log.clone(), lock.clone());
        defer_fn(move || {
            assert!(lk.is_free());
            let g = lk.acquire();
            assert!(in_section());
            defer(probe(2, &l, &[&lk]));
            drop(g);
            assert!(!in_section());
            l.push(1);
        });
    }
    assert_eq!(log.get(), [1, 2]);
    assert_eq!(pending(), 0);
}

struct Link<K: Kind> {
    left: usize,
    lock: Arc<K>,
    count: Arc<AtomicUsize>,
}

impl<K: Kind> Drop for Link<K> {
    fn drop(&mut self) {
        assert!(!in_section());
        self.count.fetch_add(1, SeqCst);
        if self.left > 0 {
            let _g = self.lock.acquire();
            defer(Link {
                left: self.left - 1,
                lock: self.lock.clone(),
                count: self.count.clone(),
            });
        }
    }
}

/// A chain of frees, each taking the lock and deferring the next, runs on a
/// small stack.
fn chains_run_in_constant_stack<K: Kind>() {
    let n = if cfg!(miri) { 100 } else { 20_000 };
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let lock = Arc::new(K::make());
            {
                let _g = lock.acquire();
                defer(Link {
                    left: n,
                    lock: lock.clone(),
                    count: c,
                });
            }
            assert_eq!(pending(), 0);
            assert!(lock.is_free());
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(count.load(SeqCst), n + 1);
}

/// One panicking free: the rest are freed, the panic resumes from the guard's
/// release, and the lock was released before any of it.
fn a_panicking_free_resumes_after_the_rest<K: Kind>() {
    quiet_booms();
    let log = Log::default();
    let lock = Arc::new(K::make());
    let guard = lock.acquire();
    defer(probe(0, &log, &[&lock]));
    {
        let (l, lk) = (log.clone(), lock.clone());
        defer_fn(move || {
            assert!(lk.is_free());
            l.push(1);
            panic::panic_any(Boom(1));
        });
    }
    defer(probe(2, &log, &[&lock]));
    let r = panic::catch_unwind(AssertUnwindSafe(move || drop(guard)));
    assert_eq!(boom_id(r.unwrap_err()), 1);
    assert_eq!(log.get(), [0, 1, 2]);
    assert!(lock.is_free());
    assert!(!in_section());
}

/// A guard dropped while unwinding unlocks and drains.
fn a_guard_dropped_while_unwinding_drains<K: Kind>() {
    quiet_booms();
    let log = Log::default();
    let lock = Arc::new(K::make());
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        let _g = lock.acquire();
        defer(probe(1, &log, &[&lock]));
        panic::panic_any(Boom(7));
    }));
    assert_eq!(boom_id(r.unwrap_err()), 7);
    assert_eq!(log.get(), [1]);
    assert!(lock.is_free());
    assert!(!in_section());
}

/// A leaked guard keeps its thread in a section; what it queued is freed
/// when the thread exits.
fn a_leaked_guard_is_drained_at_thread_exit<K: Kind>() {
    let log = Log::default();
    let l = log.clone();
    thread::spawn(move || {
        let lock = K::make();
        mem::forget(lock.acquire());
        let l2 = l.clone();
        defer_fn(move || l2.push(1));
        assert_eq!(pending(), 1);
        assert!(l.get().is_empty());
    })
    .join()
    .unwrap();
    assert_eq!(log.get(), [1]);
}

macro_rules! suite {
    ($($module:ident: $kind:ty,)*) => {$(
        mod $module {
            use super::*;

            #[test]
            fn drains_after_unlock_in_fifo_order() {
                super::drains_after_unlock_in_fifo_order::<$kind>();
            }

            #[test]
            fn nested_pairs_drain_at_the_outermost_release() {
                super::nested_pairs_drain_at_the_outermost_release::<$kind>();
            }

            #[test]
            fn a_free_may_retake_the_lock() {
                super::a_free_may_retake_the_lock::<$kind>();
            }

            #[test]
            fn chains_run_in_constant_stack() {
                super::chains_run_in_constant_stack::<$kind>();
            }

            #[test]
            fn a_panicking_free_resumes_after_the_rest() {
                super::a_panicking_free_resumes_after_the_rest::<$kind>();
            }

            #[test]
            fn a_guard_dropped_while_unwinding_drains() {
                super::a_guard_dropped_while_unwinding_drains::<$kind>();
            }

            #[test]
            fn a_leaked_guard_is_drained_at_thread_exit() {
                super::a_leaked_guard_is_drained_at_thread_exit::<$kind>();
            }
        }
    )*};
}

suite! {
    std_mutex: StdMutexKind,
    std_rwlock_write: StdWriteKind,
    std_rwlock_read: StdReadKind,
    pl_mutex: PlMutexKind,
    pl_fair_mutex: PlFairMutexKind,
    pl_rwlock_write: PlWriteKind,
    pl_rwlock_read: PlReadKind,
    pl_rwlock_upgradable: PlUpgradableKind,
    pl_reentrant: ReentrantKind,
    wrapped_std_mutex: WrappedStdKind,
    wrapped_std_read: WrappedStdReadKind,
    wrapped_parking_lot: WrappedPlKind,
}

// ---------------------------------------------------------------------------
// Mixed nests
// ---------------------------------------------------------------------------

mod mixed {
    use super::*;

    /// Every lock in the nest is checked free at each free.
    fn all_free(
        a: &Arc<PlReadKind>,
        b: &Arc<StdMutexKind>,
        c: &Arc<WrappedStdKind>,
        d: &Arc<ReentrantKind>,
    ) -> Box<dyn Fn() + Send> {
        let (a, b, c, d) = (a.clone(), b.clone(), c.clone(), d.clone());
        Box::new(move || {
            assert!(!in_section());
            assert!(a.is_free() && b.is_free() && c.is_free() && d.is_free());
        })
    }

    #[test]
    fn std_inside_parking_lot_read_drains_only_at_the_outermost_release() {
        let log = Log::default();
        let a = Arc::new(PlReadKind::make());
        let b = Arc::new(StdMutexKind::make());
        let c = Arc::new(WrappedStdKind::make());
        let d = Arc::new(ReentrantKind::make());
        let item = |id| Probe {
            id,
            log: log.clone(),
            check: all_free(&a, &b, &c, &d),
        };

        let ga = a.acquire();
        defer(item(1));
        let gb = b.acquire();
        defer(item(2));
        let gc = c.acquire();
        let gd = d.acquire();
        let gd2 = d.acquire();
        defer(item(3));
        drop(gd2);
        drop(gc);
        drop(gb);
        drop(gd);
        assert!(log.get().is_empty());
        assert_eq!(pending(), 3);
        assert!(in_section());
        drop(ga);
        assert_eq!(log.get(), [1, 2, 3]);
    }

    #[test]
    fn every_release_order_of_four_kinds_drains_once_at_the_end() {
        let a = Arc::new(PlReadKind::make());
        let b = Arc::new(StdMutexKind::make());
        let c = Arc::new(WrappedStdKind::make());
        let d = Arc::new(ReentrantKind::make());
        // All 24 release orders.
        let mut orders = Vec::new();
        for i in 0..4 {
            for j in 0..4 {
                for k in 0..4 {
                    let l = 6 - i - j - k;
                    if i != j && i != k && j != k && l < 4 && l != i && l != j && l != k {
                        orders.push([i, j, k, l]);
                    }
                }
            }
        }
        assert_eq!(orders.len(), 24);
        for order in orders {
            let log = Log::default();
            let mut ga = Some(a.acquire());
            let mut gb = Some(b.acquire());
            let mut gc = Some(c.acquire());
            let mut gd = Some(d.acquire());
            for id in 0..4 {
                defer(Probe {
                    id,
                    log: log.clone(),
                    check: all_free(&a, &b, &c, &d),
                });
            }
            for (n, &which) in order.iter().enumerate() {
                match which {
                    0 => drop(ga.take()),
                    1 => drop(gb.take()),
                    2 => drop(gc.take()),
                    _ => drop(gd.take()),
                }
                if n < 3 {
                    assert!(log.get().is_empty(), "order {order:?}: drained early");
                    assert!(in_section());
                }
            }
            assert!(ga.is_none() && gb.is_none() && gc.is_none() && gd.is_none());
            assert_eq!(log.get(), [0, 1, 2, 3], "order {order:?}");
            assert!(!in_section());
        }
    }

    #[test]
    fn sections_and_locks_nest_together() {
        let log = Log::default();
        let m = Arc::new(freeq::Mutex::new(()));
        let s = freeq::section();
        {
            let _g = m.lock().unwrap();
            let m2 = m.clone();
            defer(Probe {
                id: 1,
                log: log.clone(),
                check: Box::new(move || {
                    assert!(!in_section());
                    assert!(m2.try_lock().is_ok());
                }),
            });
        }
        assert!(log.get().is_empty(), "the section is still open");
        drop(s);
        assert_eq!(log.get(), [1]);
    }
}

// ---------------------------------------------------------------------------
// std-backed locks: std's API, poisoning included
// ---------------------------------------------------------------------------

mod std_api {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_hands_out_a_deferring_guard() {
        quiet_booms();
        let m = Arc::new(freeq::Mutex::new(1u32));
        let m2 = m.clone();
        let r = thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic::panic_any(Boom(0));
        })
        .join();
        assert!(r.is_err());
        assert!(m.is_poisoned());

        let log = Log::default();
        let mut g = m.lock().unwrap_err().into_inner();
        assert!(in_section());
        *g += 1;
        let m3 = m.clone();
        defer(Probe {
            id: 1,
            log: log.clone(),
            check: Box::new(move || assert!(std_ok(m3.try_lock()))),
        });
        drop(g);
        assert_eq!(log.get(), [1]);

        let g = m.try_lock().unwrap_err();
        match g {
            TryLockError::Poisoned(p) => {
                assert!(in_section());
                assert_eq!(*p.into_inner(), 2);
            }
            TryLockError::WouldBlock => panic!("the lock is free"),
        }
        assert!(!in_section());
        m.clear_poison();
        assert!(!m.is_poisoned());
        assert_eq!(*m.lock().unwrap(), 2);
    }

    #[test]
    fn a_failed_try_lock_opens_no_section() {
        let m = Arc::new(freeq::Mutex::new(()));
        let rw = Arc::new(freeq::RwLock::new(()));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let (m, rw) = (m.clone(), rw.clone());
            thread::spawn(move || {
                let _g = m.lock().unwrap();
                let _w = rw.write().unwrap();
                held_tx.send(()).unwrap();
                done_rx.recv().unwrap();
            })
        };
        held_rx.recv().unwrap();
        assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
        assert!(matches!(rw.try_read(), Err(TryLockError::WouldBlock)));
        assert!(matches!(rw.try_write(), Err(TryLockError::WouldBlock)));
        assert!(!in_section());
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        let g = m.try_lock().unwrap();
        assert!(in_section());
        drop(g);
        assert!(!in_section());
    }

    #[test]
    fn set_frees_the_old_value_after_the_unlock() {
        let log = Log::default();
        let m = Arc::new(freeq::Mutex::new(None::<Probe>));
        let m2 = m.clone();
        m.set(Some(Probe {
            id: 1,
            log: log.clone(),
            check: Box::new(move || assert!(std_ok(m2.try_lock()))),
        }))
        .unwrap();
        assert!(log.get().is_empty());
        m.set(None).unwrap();
        assert_eq!(log.get(), [1]);
        assert_eq!(pending(), 0);
    }

    #[test]
    fn into_inner_get_mut_from_and_debug() {
        let mut m = freeq::Mutex::from(vec![1, 2]);
        m.get_mut().unwrap().push(3);
        assert!(format!("{m:?}").contains("[1, 2, 3]"));
        assert_eq!(m.into_inner().unwrap(), [1, 2, 3]);

        let mut rw = freeq::RwLock::from(5);
        *rw.get_mut().unwrap() += 1;
        assert!(!rw.is_poisoned());
        assert_eq!(rw.into_inner().unwrap(), 6);

        let d: freeq::Mutex<u8> = Default::default();
        let g = d.lock().unwrap();
        assert_eq!(format!("{g:?}"), "0");
        assert_eq!(format!("{g}"), "0");
        assert_eq!(**freeq::LockGuard::inner(&g), 0);
    }

    #[test]
    fn lock_guard_inner_mut_reaches_the_wrapped_guard() {
        let m = std::sync::Mutex::new(1);
        let mut g = freeq::LockGuard::new(m.lock().unwrap());
        **freeq::LockGuard::inner_mut(&mut g) += 1;
        *g += 1;
        drop(g);
        assert_eq!(*m.lock().unwrap(), 3);
    }

    #[test]
    fn rwlock_readers_share_and_the_last_one_drains() {
        let log = Log::default();
        let rw = Arc::new(freeq::RwLock::new(0));
        let r1 = rw.read().unwrap();
        let r2 = rw.try_read().unwrap();
        let rw2 = rw.clone();
        defer(Probe {
            id: 1,
            log: log.clone(),
            check: Box::new(move || assert!(rw2.try_write().is_ok())),
        });
        drop(r1);
        assert!(log.get().is_empty());
        drop(r2);
        assert_eq!(log.get(), [1]);
    }
}

// ---------------------------------------------------------------------------
// lock_api locks: the whole parking_lot API keeps working
// ---------------------------------------------------------------------------

mod lock_api_api {
    use super::*;
    use freeq::parking_lot::{
        ArcMutexGuard, Mutex, MutexGuard, ReentrantMutex, ReentrantMutexGuard, RwLock,
        RwLockUpgradableReadGuard, RwLockWriteGuard,
    };

    fn checked(id: u32, log: &Log, check: impl Fn() + Send + 'static) -> Probe {
        Probe {
            id,
            log: log.clone(),
            check: Box::new(check),
        }
    }

    #[test]
    fn unlocked_drains_before_running_the_closure_and_relocks() {
        let log = Log::default();
        let m = Arc::new(Mutex::new(0));
        let mut g = m.lock();
        let m2 = m.clone();
        defer(checked(1, &log, move || assert!(!m2.is_locked())));
        let seen = MutexGuard::unlocked(&mut g, || {
            assert!(!in_section());
            assert!(!m.is_locked());
            log.get()
        });
        assert_eq!(seen, [1], "released outermost: drained before the closure");
        assert!(in_section());
        assert!(m.is_locked());
        *g += 1;
        drop(g);
        assert_eq!(*m.lock(), 1);
    }

    #[test]
    fn a_panicking_drain_in_unlocked_relocks_and_the_guard_stays_usable() {
        quiet_booms();
        let log = Log::default();
        let m = Arc::new(Mutex::new(0));
        let mut g = m.lock();
        defer_fn(|| panic::panic_any(Boom(3)));
        defer(checked(1, &log, || {}));
        let ran = AtomicUsize::new(0);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            MutexGuard::unlocked(&mut g, || ran.fetch_add(1, SeqCst));
        }));
        assert_eq!(boom_id(r.unwrap_err()), 3);
        assert_eq!(ran.load(SeqCst), 0, "the panic left before the closure ran");
        assert_eq!(log.get(), [1], "the rest of the batch was freed");
        // The guard holds the lock again and is still a section.
        assert!(m.is_locked());
        assert!(in_section());
        *g += 1;
        defer(checked(2, &log, || {}));
        drop(g);
        assert_eq!(log.get(), [1, 2]);
        assert!(!m.is_locked());
        assert!(!in_section());
        assert_eq!(*m.lock(), 1);
    }

    #[test]
    fn unlocked_inside_an_outer_lock_does_not_drain() {
        let log = Log::default();
        let outer = freeq::Mutex::new(());
        let m = Mutex::new(());
        let o = outer.lock().unwrap();
        let mut g = m.lock();
        defer(checked(1, &log, || {}));
        MutexGuard::unlocked(&mut g, || {
            assert!(in_section());
            assert!(log.get().is_empty());
        });
        drop(g);
        assert!(log.get().is_empty());
        drop(o);
        assert_eq!(log.get(), [1]);
    }

    #[test]
    fn unlocked_fair_and_bump_keep_the_guard_and_its_queue() {
        let log = Log::default();
        let m = Mutex::new(());
        let mut g = m.lock();
        defer(checked(1, &log, || {}));
        MutexGuard::bump(&mut g);
        assert!(in_section());
        assert_eq!(pending(), 1, "bump keeps the lock: nothing drains");
        MutexGuard::unlocked_fair(&mut g, || assert!(!in_section()));
        assert_eq!(log.get(), [1]);
        defer(checked(2, &log, || {}));
        MutexGuard::unlock_fair(g);
        assert_eq!(log.get(), [1, 2]);
        assert!(!in_section());
    }

    #[test]
    fn mapped_guards_drain_when_released() {
        let log = Log::default();
        let m = Arc::new(Mutex::new((1u32, 2u32)));
        let g = m.lock();
        let mut mapped = MutexGuard::map(g, |pair| &mut pair.1);
        *mapped += 1;
        let m2 = m.clone();
        defer(checked(1, &log, move || assert!(!m2.is_locked())));
        assert!(in_section());
        drop(mapped);
        assert_eq!(log.get(), [1]);
        assert_eq!(*m.lock(), (1, 3));

        let rw = Arc::new(RwLock::new([0u8; 4]));
        let w = rw.write();
        let mut part = RwLockWriteGuard::map(w, |a| &mut a[2]);
        *part = 9;
        let rw2 = rw.clone();
        defer(checked(2, &log, move || assert!(!rw2.is_locked())));
        drop(part);
        assert_eq!(log.get(), [1, 2]);
        assert_eq!(rw.read()[2], 9);
    }

    #[test]
    fn upgrades_and_downgrades_keep_one_section() {
        let log = Log::default();
        let rw = Arc::new(RwLock::new(0));
        let up = rw.upgradable_read();
        defer(checked(1, &log, || {}));
        let mut w = RwLockUpgradableReadGuard::upgrade(up);
        *w += 1;
        assert!(in_section());
        let r = RwLockWriteGuard::downgrade(w);
        assert!(in_section());
        assert_eq!(*r, 1);
        assert!(log.get().is_empty());
        let rw2 = rw.clone();
        defer(checked(2, &log, move || assert!(!rw2.is_locked())));
        drop(r);
        assert_eq!(log.get(), [1, 2]);
        assert!(!in_section());

        let up = rw.upgradable_read();
        let up = match RwLockUpgradableReadGuard::try_upgrade(up) {
            Ok(w) => RwLockWriteGuard::downgrade_to_upgradable(w),
            Err(up) => up,
        };
        assert!(in_section());
        defer(checked(3, &log, || {}));
        let r = RwLockUpgradableReadGuard::downgrade(up);
        assert_eq!(pending(), 1);
        drop(r);
        assert_eq!(log.get(), [1, 2, 3]);
    }

    #[test]
    fn timed_acquisitions_are_sections_too() {
        let log = Log::default();
        let m = Mutex::new(());
        let rw = RwLock::new(());
        let g = m.try_lock_for(Duration::from_millis(10)).unwrap();
        assert!(in_section());
        let r = rw.try_read_for(Duration::from_millis(10)).unwrap();
        defer(checked(1, &log, || {}));
        drop(g);
        assert!(log.get().is_empty());
        drop(r);
        assert_eq!(log.get(), [1]);
        let w = rw.try_write_for(Duration::from_millis(10)).unwrap();
        assert!(m.try_lock_for(Duration::from_millis(1)).is_some());
        assert!(rw.try_read_for(Duration::from_millis(1)).is_none());
        assert!(in_section());
        drop(w);
        assert!(!in_section());
    }

    #[test]
    fn failed_try_locks_open_no_section() {
        let m = Mutex::new(());
        let rw = RwLock::new(());
        let g = m.lock();
        let w = rw.write();
        thread::scope(|s| {
            s.spawn(|| {
                assert!(m.try_lock().is_none());
                assert!(rw.try_read().is_none());
                assert!(rw.try_write().is_none());
                assert!(rw.try_upgradable_read().is_none());
                assert!(!in_section());
            });
        });
        drop((g, w));
        assert!(!in_section());
    }

    #[test]
    fn arc_guards_are_sections() {
        let log = Log::default();
        let m = Arc::new(Mutex::new(5));
        let g: ArcMutexGuard<freeq::parking_lot::RawMutex, u32> = m.lock_arc();
        assert!(in_section());
        let m2 = m.clone();
        defer(checked(1, &log, move || assert!(!m2.is_locked())));
        assert_eq!(*g, 5);
        drop(g);
        assert_eq!(log.get(), [1]);

        let rw = Arc::new(RwLock::new(0));
        let r = rw.read_arc();
        let w_try = rw.try_write_arc();
        assert!(w_try.is_none());
        defer(checked(2, &log, || {}));
        drop(r);
        assert_eq!(log.get(), [1, 2]);
    }

    #[test]
    fn reentrant_locking_opens_one_section_and_drains_at_the_last_release() {
        let log = Log::default();
        let m = Arc::new(ReentrantMutex::new(0));
        let g1 = m.lock();
        let g2 = m.lock();
        let g3 = m.try_lock().unwrap();
        let m2 = m.clone();
        defer(checked(1, &log, move || {
            assert!(!m2.is_locked());
            assert!(!in_section());
        }));
        drop(g3);
        drop(g1);
        assert!(log.get().is_empty());
        assert!(in_section());
        drop(g2);
        assert_eq!(log.get(), [1]);
        assert!(!in_section());

        // Mapped re-entrant guards too.
        let g = m.lock();
        let mapped = ReentrantMutexGuard::map(g, |v| v);
        defer(checked(2, &log, || {}));
        drop(mapped);
        assert_eq!(log.get(), [1, 2]);
    }

    #[test]
    fn a_reentrant_mutex_may_be_retaken_by_a_free() {
        let log = Log::default();
        let m = Arc::new(ReentrantMutex::new(()));
        {
            let _g = m.lock();
            let _g2 = m.lock();
            let (m2, l) = (m.clone(), log.clone());
            defer_fn(move || {
                let _a = m2.lock();
                let _b = m2.lock();
                defer(checked(2, &l, || {}));
                l.push(1);
            });
        }
        assert_eq!(log.get(), [1, 2]);
    }

    #[test]
    fn raw_deferred_wraps_any_raw_lock() {
        type Spin = lock_api::Mutex<freeq::RawDeferred<parking_lot::RawMutex>, u32>;
        let log = Log::default();
        let m = Arc::new(Spin::new(0));
        let mut g = m.lock();
        *g += 1;
        let m2 = m.clone();
        defer(checked(1, &log, move || assert!(!m2.is_locked())));
        assert!(in_section());
        drop(g);
        assert_eq!(log.get(), [1]);
        assert!(!in_section());
        assert!(format!("{:?}", freeq::RawDeferred::from_raw(())).contains("RawDeferred"));
    }

    #[test]
    fn const_constructors_work_in_statics() {
        static M: Mutex<u32> = freeq::parking_lot::const_mutex(0);
        static RW: RwLock<u32> = freeq::parking_lot::const_rwlock(0);
        let log = Log::default();
        {
            let _g = M.lock();
            let _r = RW.read();
            defer(checked(1, &log, || {
                assert!(!M.is_locked());
                assert!(!RW.is_locked());
            }));
        }
        assert_eq!(log.get(), [1]);
    }
}
