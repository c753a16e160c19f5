//! Black-box tests of freeq's contract, one module per numbered point of the
//! design: sections, `defer`, drains, custom frees, re-entrancy, panics,
//! thread exit and memory, then the explicit [`freeq::FreeQueue`].
//!
//! Per-lock-kind coverage lives in `tests/locks.rs`; this file uses sections,
//! `freeq::Mutex` and the parking_lot mutex as representatives.

use std::any::Any;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex as StdMutex, Once};
use std::thread;

use freeq::{defer, defer_fn, defer_with, flush, in_section, pending, section};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The order in which probes were freed.
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

type Check = Box<dyn Fn() + Send>;

/// A value whose drop runs `check` and then records its id.
struct Probe {
    id: u32,
    log: Log,
    check: Option<Check>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(check) = &self.check {
            check();
        }
        self.log.push(self.id);
    }
}

fn probe(id: u32, log: &Log) -> Probe {
    Probe {
        id,
        log: log.clone(),
        check: None,
    }
}

fn probe_with(id: u32, log: &Log, check: impl Fn() + Send + 'static) -> Probe {
    Probe {
        id,
        log: log.clone(),
        check: Some(Box::new(check)),
    }
}

/// Payload of the panics these tests provoke on purpose.
#[derive(Debug, PartialEq)]
struct Boom(u32);

/// A value whose drop records its id and then panics with `Boom(id)`.
struct Bomb {
    id: u32,
    log: Log,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.log.push(self.id);
        panic::panic_any(Boom(self.id));
    }
}

/// Keeps the panic hook quiet for `Boom` payloads (expected panics) while
/// leaving every other panic to the default hook.
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

/// Counts how many times each id is freed.
struct Tally(Vec<AtomicUsize>);

impl Tally {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Tally((0..n).map(|_| AtomicUsize::new(0)).collect()))
    }

    fn counts(&self) -> Vec<usize> {
        self.0.iter().map(|c| c.load(SeqCst)).collect()
    }
}

struct Counted {
    id: usize,
    tally: Arc<Tally>,
    panics: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.tally.0[self.id].fetch_add(1, SeqCst);
        if self.panics {
            panic::panic_any(Boom(self.id as u32));
        }
    }
}

/// Whether a `freeq::Mutex` can be taken right now by this thread. A
/// poisoned lock counts as free: poisoning does not hold the lock.
fn std_free<T>(m: &freeq::Mutex<T>) -> bool {
    !matches!(m.try_lock(), Err(std::sync::TryLockError::WouldBlock))
}

/// Whether a type is `Send`, decided at compile time for a concrete type.
macro_rules! is_send {
    ($t:ty) => {{
        #[allow(dead_code)]
        struct Check<T: ?Sized>(std::marker::PhantomData<T>);
        #[allow(dead_code)]
        trait Fallback {
            fn is_send(&self) -> bool {
                false
            }
        }
        impl<T: ?Sized> Fallback for Check<T> {}
        #[allow(dead_code)]
        impl<T: ?Sized + Send> Check<T> {
            fn is_send(&self) -> bool {
                true
            }
        }
        Check::<$t>(std::marker::PhantomData).is_send()
    }};
}

// ---------------------------------------------------------------------------
// 1. Sections
// ---------------------------------------------------------------------------
mod sections {
    use super::*;

    #[test]
    fn a_fresh_thread_is_outside_any_section() {
        thread::spawn(|| {
            assert!(!in_section());
            assert_eq!(pending(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn sections_nest_and_only_the_outermost_drains() {
        let log = Log::default();
        let a = section();
        let b = section();
        let c = section();
        assert!(in_section());
        defer(probe(1, &log));
        drop(c);
        assert!(in_section());
        assert_eq!(pending(), 1);
        drop(b);
        assert!(in_section());
        assert_eq!(pending(), 1);
        assert!(log.get().is_empty());
        drop(a);
        assert!(!in_section());
        assert_eq!(pending(), 0);
        assert_eq!(log.get(), [1]);
    }

    #[test]
    fn sections_may_close_in_any_order() {
        let log = Log::default();
        let a = section();
        let b = section();
        defer(probe(1, &log));
        drop(a); // the older one first
        assert!(in_section());
        assert!(log.get().is_empty());
        drop(b);
        assert!(!in_section());
        assert_eq!(log.get(), [1]);
    }

    #[test]
    fn lock_guards_are_sections() {
        let m = freeq::Mutex::new(0);
        let rw = freeq::RwLock::new(0);
        let pm = freeq::parking_lot::Mutex::new(0);
        let prw = freeq::parking_lot::RwLock::new(0);
        let re = freeq::parking_lot::ReentrantMutex::new(0);
        let sm = std::sync::Mutex::new(0);

        assert!(!in_section());
        {
            let _g = m.lock().unwrap();
            assert!(in_section());
        }
        {
            let _g = rw.read().unwrap();
            assert!(in_section());
        }
        {
            let _g = rw.write().unwrap();
            assert!(in_section());
        }
        {
            let _g = pm.lock();
            assert!(in_section());
        }
        {
            let _g = prw.read();
            assert!(in_section());
        }
        {
            let _g = prw.write();
            assert!(in_section());
        }
        {
            let _g = re.lock();
            assert!(in_section());
        }
        {
            let _g = freeq::LockGuard::new(sm.lock().unwrap());
            assert!(in_section());
        }
        assert!(!in_section());
    }

    #[test]
    fn depth_is_per_thread() {
        let log = Log::default();
        let outer = section();
        defer(probe(1, &log));
        thread::scope(|s| {
            s.spawn(|| {
                assert!(!in_section(), "another thread's section is not ours");
                assert_eq!(pending(), 0, "another thread's queue is not ours");
                defer(probe(2, &log));
                assert_eq!(log.get(), [2], "outside a section: freed at once");
                let inner = section();
                defer(probe(3, &log));
                assert_eq!(log.get(), [2]);
                drop(inner);
                assert_eq!(log.get(), [2, 3]);
            });
        });
        assert!(in_section());
        assert_eq!(pending(), 1);
        drop(outer);
        assert_eq!(log.get(), [2, 3, 1]);
    }

    #[test]
    fn guards_and_sections_are_not_send() {
        assert!(!is_send!(freeq::Section));
        assert!(!is_send!(freeq::MutexGuard<'static, u32>));
        assert!(!is_send!(freeq::RwLockReadGuard<'static, u32>));
        assert!(!is_send!(freeq::RwLockWriteGuard<'static, u32>));
        assert!(!is_send!(
            freeq::LockGuard<std::sync::MutexGuard<'static, u32>>
        ));
        assert!(!is_send!(freeq::LockGuard<u32>));
        assert!(!is_send!(freeq::parking_lot::MutexGuard<'static, u32>));
        assert!(!is_send!(freeq::parking_lot::RwLockReadGuard<'static, u32>));
        assert!(!is_send!(
            freeq::parking_lot::RwLockWriteGuard<'static, u32>
        ));
        assert!(!is_send!(
            freeq::parking_lot::RwLockUpgradableReadGuard<'static, u32>
        ));
        assert!(!is_send!(
            freeq::parking_lot::ReentrantMutexGuard<'static, u32>
        ));
        assert!(!is_send!(freeq::parking_lot::ArcMutexGuard<freeq::parking_lot::RawMutex, u32>));
        assert!(!is_send!(
            freeq::parking_lot::MappedMutexGuard<'static, u32>
        ));
        // The locks themselves are shareable, and so is an owned queue.
        assert!(is_send!(freeq::Mutex<u32>));
        assert!(is_send!(freeq::parking_lot::Mutex<u32>));
        assert!(is_send!(freeq::FreeQueue));
        fn sync<T: Sync>() {}
        sync::<freeq::Mutex<u32>>();
        sync::<freeq::RwLock<u32>>();
        sync::<freeq::parking_lot::Mutex<u32>>();
        sync::<freeq::parking_lot::RwLock<u32>>();
        sync::<freeq::parking_lot::ReentrantMutex<u32>>();
    }
}

// ---------------------------------------------------------------------------
// 2. defer
// ---------------------------------------------------------------------------
mod defer_ {
    use super::*;

    #[test]
    fn outside_a_section_frees_at_once() {
        let log = Log::default();
        assert!(!in_section());
        defer(probe(1, &log));
        assert_eq!(log.get(), [1]);
        assert_eq!(pending(), 0);
    }

    #[test]
    fn inside_a_section_queues_one_item_per_call() {
        let log = Log::default();
        let s = section();
        for i in 0..100 {
            assert_eq!(pending(), i as usize);
            defer(probe(i, &log));
        }
        assert_eq!(pending(), 100);
        assert!(log.get().is_empty());
        drop(s);
        assert_eq!(log.get(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn many_values_of_mixed_types_are_all_freed() {
        let count = Arc::new(AtomicUsize::new(0));
        struct Big([u64; 64], Arc<AtomicUsize>);
        impl Drop for Big {
            fn drop(&mut self) {
                assert_eq!(self.0[63], 63);
                self.1.fetch_add(1, SeqCst);
            }
        }
        #[repr(align(64))]
        struct OverAligned(u8, Arc<AtomicUsize>);
        impl Drop for OverAligned {
            fn drop(&mut self) {
                assert_eq!(self.0, 7);
                assert_eq!(self as *const Self as usize % 64, 0);
                self.1.fetch_add(1, SeqCst);
            }
        }
        let n = if cfg!(miri) { 50 } else { 10_000 };
        let s = section();
        for i in 0..n {
            match i % 5 {
                0 => defer(vec![i; 3]),
                1 => defer(String::from("text")),
                2 => defer(Big(std::array::from_fn(|k| k as u64), count.clone())),
                3 => defer(OverAligned(7, count.clone())),
                _ => defer(()),
            }
        }
        assert_eq!(pending(), n);
        drop(s);
        assert_eq!(pending(), 0);
        assert_eq!(count.load(SeqCst), n / 5 * 2);
    }
}

// ---------------------------------------------------------------------------
// 3. Drain: after the unlock, FIFO, never inside a section
// ---------------------------------------------------------------------------
mod drain {
    use super::*;

    #[test]
    fn drains_after_the_unlock_in_fifo_order() {
        let log = Log::default();
        let m = Arc::new(freeq::Mutex::new(0u32));
        {
            let mut g = m.lock().unwrap();
            for i in 0..20 {
                *g += 1;
                let m = m.clone();
                defer(probe_with(i, &log, move || {
                    assert!(!in_section());
                    assert!(std_free(&m), "freed while the lock was still held");
                }));
            }
            assert_eq!(pending(), 20);
            assert!(log.get().is_empty());
        }
        assert_eq!(pending(), 0);
        assert_eq!(log.get(), (0..20).collect::<Vec<_>>());
        assert_eq!(*m.lock().unwrap(), 20);
    }

    #[test]
    fn defer_defer_with_and_defer_fn_share_one_fifo() {
        let log = Log::default();
        let m = Arc::new(freeq::parking_lot::Mutex::new(()));
        {
            let _g = m.lock();
            for i in 0..30u32 {
                let check = {
                    let m = m.clone();
                    move || {
                        assert!(!in_section());
                        assert!(!m.is_locked());
                    }
                };
                match i % 3 {
                    0 => defer(probe_with(i, &log, check)),
                    1 => defer_with(probe(i, &log), move |p| {
                        check();
                        drop(p);
                    }),
                    _ => {
                        let log = log.clone();
                        defer_fn(move || {
                            check();
                            log.push(i);
                        });
                    }
                }
            }
            assert_eq!(pending(), 30);
        }
        assert_eq!(log.get(), (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn inner_releases_do_not_drain() {
        let log = Log::default();
        let a = Arc::new(freeq::Mutex::new(()));
        let b = Arc::new(freeq::parking_lot::Mutex::new(()));
        let ga = a.lock().unwrap();
        let gb = b.lock();
        {
            let (a, b) = (a.clone(), b.clone());
            defer(probe_with(1, &log, move || {
                assert!(std_free(&a) && !b.is_locked());
            }));
        }
        drop(gb);
        assert!(log.get().is_empty());
        assert_eq!(pending(), 1);
        let gb = b.lock();
        drop(ga);
        assert!(log.get().is_empty(), "b is still held");
        drop(gb);
        assert_eq!(log.get(), [1]);
    }

    #[test]
    fn flush_frees_now_inside_a_section_and_the_section_goes_on() {
        let log = Log::default();
        let s = section();
        defer(probe_with(1, &log, || assert!(in_section())));
        defer(probe(2, &log));
        assert_eq!(pending(), 2);
        flush();
        assert_eq!(pending(), 0);
        assert_eq!(log.get(), [1, 2]);
        assert!(in_section());
        defer(probe(3, &log));
        assert_eq!(pending(), 1);
        assert_eq!(log.get(), [1, 2]);
        drop(s);
        assert_eq!(log.get(), [1, 2, 3]);
    }

    #[test]
    fn flush_outside_a_section_is_harmless() {
        flush();
        assert_eq!(pending(), 0);
        assert!(!in_section());
    }

    #[test]
    fn a_free_that_leaves_a_section_open_holds_back_the_rest() {
        // No item is freed while its thread is inside a section, even when
        // the section was opened (and leaked) by an earlier free.
        let log = Log::default();
        let l = log.clone();
        thread::spawn(move || {
            let s = section();
            defer(probe_with(1, &l, || mem::forget(section())));
            defer(probe(2, &l));
            drop(s);
            assert_eq!(l.get(), [1]);
            assert!(in_section());
            assert_eq!(pending(), 1);
            defer(probe(3, &l));
            assert_eq!(pending(), 2);
        })
        .join()
        .unwrap();
        // Thread exit frees what was held back, oldest first.
        assert_eq!(log.get(), [1, 2, 3]);
    }

    #[test]
    fn pending_counts_what_frees_defer_during_a_drain() {
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let s = section();
        for _ in 0..3 {
            let seen = seen.clone();
            defer_fn(move || {
                seen.lock().unwrap().push(pending());
                defer(());
            });
        }
        drop(s);
        assert_eq!(pending(), 0);
        // Each action sees (at least) the items the earlier ones deferred.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().enumerate().all(|(i, &p)| p >= i), "{seen:?}");
    }
}

// ---------------------------------------------------------------------------
// 4. Custom frees and deferred actions
// ---------------------------------------------------------------------------
mod custom {
    use super::*;

    #[test]
    fn defer_with_hands_the_value_to_the_free_function_after_unlock() {
        let pool: Arc<StdMutex<Vec<Vec<u8>>>> = Arc::default();
        let state = Arc::new(freeq::Mutex::new(vec![1u8; 128]));
        {
            let mut g = state.lock().unwrap();
            let old = mem::take(&mut *g);
            let (pool2, state2) = (pool.clone(), state.clone());
            defer_with(old, move |mut v| {
                assert!(std_free(&state2));
                assert_eq!(v.len(), 128);
                v.clear();
                pool2.lock().unwrap().push(v);
            });
            assert!(pool.lock().unwrap().is_empty());
        }
        let pool = pool.lock().unwrap();
        assert_eq!(pool.len(), 1);
        assert!(pool[0].is_empty() && pool[0].capacity() >= 128);
    }

    #[test]
    fn defer_with_does_not_also_drop_the_value() {
        let log = Log::default();
        let kept = Arc::new(StdMutex::new(Vec::new()));
        {
            let _s = section();
            let kept = kept.clone();
            defer_with(probe(1, &log), move |p| kept.lock().unwrap().push(p));
        }
        assert!(log.get().is_empty(), "the free function kept the value");
        assert_eq!(kept.lock().unwrap().len(), 1);
        kept.lock().unwrap().clear();
        assert_eq!(log.get(), [1]);
    }

    #[test]
    fn defer_with_and_defer_fn_act_at_once_outside_a_section() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        defer_with(5usize, move |v| {
            h.fetch_add(v, SeqCst);
        });
        assert_eq!(hits.load(SeqCst), 5);
        let h = hits.clone();
        defer_fn(move || {
            h.fetch_add(1, SeqCst);
        });
        assert_eq!(hits.load(SeqCst), 6);
    }

    #[test]
    fn deferred_wake_up_runs_after_the_unlock() {
        // Only this thread takes `state`, so whether it is free when the
        // wake-up runs is decided by freeq alone; the waiter just waits for
        // the wake-up.
        let state = Arc::new(freeq::Mutex::new(0u32));
        let woken = Arc::new(AtomicBool::new(false));
        let unlocked_when_woken = Arc::new(AtomicBool::new(false));
        let waiter = {
            let woken = woken.clone();
            thread::spawn(move || {
                while !woken.load(SeqCst) {
                    thread::park();
                }
            })
        };
        {
            let mut s = state.lock().unwrap();
            *s += 1;
            let (state, wake, unlocked, t) = (
                state.clone(),
                woken.clone(),
                unlocked_when_woken.clone(),
                waiter.thread().clone(),
            );
            defer_fn(move || {
                unlocked.store(std_free(&state) && !in_section(), SeqCst);
                wake.store(true, SeqCst);
                t.unpark();
            });
            assert!(!woken.load(SeqCst), "not woken under the lock");
        }
        waiter.join().unwrap();
        assert!(woken.load(SeqCst));
        assert!(unlocked_when_woken.load(SeqCst));
    }
}

// ---------------------------------------------------------------------------
// 5. Re-entrancy
// ---------------------------------------------------------------------------
mod reentrancy {
    use super::*;

    #[test]
    fn a_free_may_lock_and_defer_more() {
        let log = Log::default();
        let m = Arc::new(freeq::Mutex::new(0u32));
        {
            let _g = m.lock().unwrap();
            let (m2, l2) = (m.clone(), log.clone());
            defer(probe_with(1, &log, move || {
                // The lock this drain follows is free again: taking it
                // neither deadlocks nor drains recursively.
                let mut g = m2.lock().unwrap();
                *g += 1;
                let m3 = m2.clone();
                defer(probe_with(3, &l2, move || {
                    assert!(std_free(&m3));
                    assert!(!in_section());
                }));
                assert_eq!(l2.get(), Vec::<u32>::new());
            }));
            defer(probe(2, &log));
        }
        assert_eq!(pending(), 0);
        // Item 3 was queued behind everything already waiting.
        assert_eq!(log.get(), [1, 2, 3]);
        assert_eq!(*m.lock().unwrap(), 1);
    }

    #[test]
    fn a_free_may_open_a_section_and_flush() {
        let log = Log::default();
        {
            let _s = section();
            let l = log.clone();
            defer_fn(move || {
                let s = section();
                defer(probe(2, &l));
                flush();
                drop(s);
                defer(probe(3, &l));
            });
            defer(probe(1, &log));
        }
        assert_eq!(pending(), 0);
        let freed = log.get();
        let mut sorted = freed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3], "nothing lost, nothing doubled");
    }

    /// Each link, when freed, takes the lock and defers the next link.
    struct Link {
        left: usize,
        lock: Arc<freeq::Mutex<usize>>,
    }

    impl Drop for Link {
        fn drop(&mut self) {
            if self.left > 0 {
                let mut g = self.lock.lock().unwrap();
                *g += 1;
                defer(Link {
                    left: self.left - 1,
                    lock: self.lock.clone(),
                });
            }
        }
    }

    #[test]
    fn a_million_frees_that_each_defer_the_next_run_in_constant_stack() {
        let n = if cfg!(miri) { 1_000 } else { 1_000_000 };
        let lock = Arc::new(freeq::Mutex::new(0));
        // A small stack: recursion of even a few thousand frames would
        // overflow it.
        let l = lock.clone();
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                {
                    let _g = l.lock().unwrap();
                    defer(Link {
                        left: n,
                        lock: l.clone(),
                    });
                }
                assert_eq!(pending(), 0);
                assert!(!in_section());
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(*lock.lock().unwrap(), n);
    }

    fn chain_fn(left: usize, count: Arc<AtomicUsize>) {
        count.fetch_add(1, SeqCst);
        if left > 0 {
            let lock = freeq::parking_lot::Mutex::new(());
            let _g = lock.lock();
            defer_fn(move || chain_fn(left - 1, count));
        }
    }

    #[test]
    fn a_long_chain_of_deferred_actions_runs_in_constant_stack() {
        let n = if cfg!(miri) { 500 } else { 200_000 };
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let s = section();
                defer_fn(move || chain_fn(n, c));
                drop(s);
                assert_eq!(pending(), 0);
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(count.load(SeqCst), n + 1);
    }
}

// ---------------------------------------------------------------------------
// 6. Panics
// ---------------------------------------------------------------------------
mod panics {
    use super::*;

    #[test]
    fn one_panicking_free_does_not_stop_the_batch_and_the_first_panic_resumes() {
        quiet_booms();
        let log = Log::default();
        let m = Arc::new(freeq::Mutex::new(()));
        let g = m.lock().unwrap();
        defer(probe(0, &log));
        defer(Bomb {
            id: 1,
            log: log.clone(),
        });
        defer(probe(2, &log));
        defer(Bomb {
            id: 3,
            log: log.clone(),
        });
        defer(probe(4, &log));
        let r = panic::catch_unwind(AssertUnwindSafe(move || drop(g)));
        assert_eq!(boom_id(r.unwrap_err()), 1, "the first panic resumes");
        assert_eq!(log.get(), [0, 1, 2, 3, 4]);
        assert_eq!(pending(), 0);
        assert!(!in_section());
        // The panic happened after the unlock: the lock is free and not
        // poisoned.
        assert!(!m.is_poisoned());
        assert!(m.try_lock().is_ok());
    }

    #[test]
    fn nothing_is_freed_twice() {
        quiet_booms();
        let n = 40;
        let tally = Tally::new(n);
        let s = section();
        for id in 0..n {
            defer(Counted {
                id,
                tally: tally.clone(),
                panics: id % 7 == 3,
            });
        }
        let r = panic::catch_unwind(AssertUnwindSafe(move || drop(s)));
        assert_eq!(boom_id(r.unwrap_err()), 3);
        assert_eq!(tally.counts(), vec![1; n]);
        // The queue is empty and keeps working.
        let s = section();
        defer(Counted {
            id: 0,
            tally: tally.clone(),
            panics: false,
        });
        drop(s);
        assert_eq!(tally.counts()[0], 2);
    }

    #[test]
    fn a_panicking_free_may_defer_before_it_panics() {
        quiet_booms();
        let log = Log::default();
        let s = section();
        let l = log.clone();
        defer_fn(move || {
            defer(probe(10, &l));
            panic::panic_any(Boom(1));
        });
        defer(probe(2, &log));
        let r = panic::catch_unwind(AssertUnwindSafe(move || drop(s)));
        assert_eq!(boom_id(r.unwrap_err()), 1);
        assert_eq!(log.get(), [2, 10]);
        assert_eq!(pending(), 0);
    }

    #[test]
    fn flush_resumes_a_panic_after_freeing_everything() {
        quiet_booms();
        let log = Log::default();
        let s = section();
        defer(Bomb {
            id: 1,
            log: log.clone(),
        });
        defer(probe(2, &log));
        let r = panic::catch_unwind(flush);
        assert_eq!(boom_id(r.unwrap_err()), 1);
        assert_eq!(log.get(), [1, 2]);
        assert!(in_section(), "flush leaves the section open");
        assert_eq!(pending(), 0);
        drop(s);
    }

    #[test]
    fn a_guard_dropped_while_unwinding_unlocks_and_drains() {
        quiet_booms();
        let log = Log::default();
        let m = Arc::new(freeq::Mutex::new(()));
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let _g = m.lock().unwrap();
            let m2 = m.clone();
            defer(probe_with(1, &log, move || {
                assert!(!in_section());
                assert!(std_free(&m2));
            }));
            panic::panic_any(Boom(99));
        }));
        assert_eq!(boom_id(r.unwrap_err()), 99);
        assert_eq!(log.get(), [1]);
        assert!(!in_section());
        assert_eq!(pending(), 0);
        // std semantics: a guard dropped while panicking poisons.
        assert!(m.is_poisoned());
        assert!(std_free(&m));
    }

    #[test]
    fn a_panicking_free_during_unwinding_does_not_abort() {
        quiet_booms();
        let log = Log::default();
        let m = Arc::new(freeq::parking_lot::Mutex::new(()));
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let _g = m.lock();
            defer(probe(1, &log));
            defer(Bomb {
                id: 2,
                log: log.clone(),
            });
            defer(probe(3, &log));
            panic::panic_any(Boom(99));
        }));
        // The panic in flight wins; the free's panic is dropped.
        assert_eq!(boom_id(r.unwrap_err()), 99);
        assert_eq!(log.get(), [1, 2, 3]);
        assert!(!m.is_locked());
        assert_eq!(pending(), 0);
    }

    #[test]
    fn a_section_dropped_while_unwinding_drains() {
        quiet_booms();
        let log = Log::default();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let _outer = section();
            let _inner = section();
            defer(probe(1, &log));
            panic::panic_any(Boom(5));
        }));
        assert_eq!(boom_id(r.unwrap_err()), 5);
        assert_eq!(log.get(), [1]);
        assert!(!in_section());
    }

    #[test]
    fn a_panic_outside_a_section_comes_straight_from_defer() {
        quiet_booms();
        let log = Log::default();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            defer(Bomb {
                id: 4,
                log: log.clone(),
            })
        }));
        assert_eq!(boom_id(r.unwrap_err()), 4);
        assert_eq!(log.get(), [4]);
        assert_eq!(pending(), 0);
    }
}

// ---------------------------------------------------------------------------
// 7. Thread exit
// ---------------------------------------------------------------------------
mod thread_exit {
    use super::*;

    fn freed_at_exit(body: impl FnOnce(&Log) + Send + 'static) -> Vec<u32> {
        let log = Log::default();
        let l = log.clone();
        thread::spawn(move || {
            body(&l);
            assert!(l.get().is_empty(), "nothing freed before the thread exits");
        })
        .join()
        .unwrap();
        log.get()
    }

    #[test]
    fn a_leaked_section_is_drained_at_exit() {
        let freed = freed_at_exit(|log| {
            mem::forget(section());
            defer(probe(1, log));
            defer(probe(2, log));
            assert_eq!(pending(), 2);
        });
        assert_eq!(freed, [1, 2]);
    }

    #[test]
    fn a_leaked_std_guard_is_drained_at_exit() {
        let freed = freed_at_exit(|log| {
            let m = freeq::Mutex::new(());
            mem::forget(m.lock().unwrap());
            defer(probe(1, log));
            defer_fn({
                let log = log.clone();
                move || log.push(2)
            });
        });
        assert_eq!(freed, [1, 2]);
    }

    #[test]
    fn a_leaked_parking_lot_guard_is_drained_at_exit() {
        let freed = freed_at_exit(|log| {
            let m = Arc::new(freeq::parking_lot::RwLock::new(()));
            mem::forget(m.read());
            mem::forget(m.read());
            defer(probe(1, log));
        });
        assert_eq!(freed, [1]);
    }

    #[test]
    fn a_leaked_lock_guard_wrapper_is_drained_at_exit() {
        let freed = freed_at_exit(|log| {
            let m = std::sync::Mutex::new(());
            mem::forget(freeq::LockGuard::new(m.lock().unwrap()));
            defer(probe(1, log));
        });
        assert_eq!(freed, [1]);
    }

    #[test]
    fn frees_at_exit_may_defer_more() {
        let freed = freed_at_exit(|log| {
            mem::forget(section());
            let l = log.clone();
            defer_fn(move || {
                l.push(1);
                let m = freeq::Mutex::new(());
                let _g = m.lock().unwrap();
                defer(probe(3, &l));
            });
            defer(probe(2, log));
        });
        let mut sorted = freed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [1, 2, 3]);
        assert_eq!(freed[0], 1);
    }

    #[test]
    fn a_panicking_free_at_exit_does_not_abort_or_stop_the_rest() {
        quiet_booms();
        let freed = freed_at_exit(|log| {
            mem::forget(section());
            defer(probe(1, log));
            defer(Bomb {
                id: 2,
                log: log.clone(),
            });
            defer(probe(3, log));
        });
        assert_eq!(freed, [1, 2, 3]);
    }
}

// ---------------------------------------------------------------------------
// 8. Memory
// ---------------------------------------------------------------------------
mod memory {
    use super::*;

    #[test]
    fn the_default_cap_is_64_kib() {
        assert_eq!(freeq::DEFAULT_MAX_RETAINED, 64 * 1024);
        assert_eq!(freeq::max_retained(), freeq::DEFAULT_MAX_RETAINED);
    }

    #[test]
    fn a_long_loop_of_sections_leaves_nothing_behind() {
        let rounds = if cfg!(miri) { 20 } else { 10_000 };
        let freed = Arc::new(AtomicUsize::new(0));
        let m = freeq::Mutex::new(Vec::<String>::new());
        for round in 0..rounds {
            let mut g = m.lock().unwrap();
            for k in 0..(round % 17) {
                g.push(format!("{round}/{k}"));
                let old = mem::take(&mut *g);
                let f = freed.clone();
                defer_with(old, move |v| {
                    f.fetch_add(1, SeqCst);
                    drop(v);
                });
                assert_eq!(pending(), k + 1);
            }
            drop(g);
            assert_eq!(pending(), 0);
        }
        let expected: usize = (0..rounds).map(|r| r % 17).sum();
        assert_eq!(freed.load(SeqCst), expected);
    }

    #[test]
    fn a_spike_drains_completely() {
        let n = if cfg!(miri) { 300 } else { 200_000 };
        let count = Arc::new(AtomicUsize::new(0));
        let s = section();
        for _ in 0..n {
            let c = count.clone();
            defer_fn(move || {
                c.fetch_add(1, SeqCst);
            });
        }
        assert_eq!(pending(), n);
        drop(s);
        assert_eq!(pending(), 0);
        assert_eq!(count.load(SeqCst), n);
        // And the queue works as before afterwards.
        let s = section();
        defer(());
        assert_eq!(pending(), 1);
        drop(s);
        assert_eq!(pending(), 0);
    }
}

// ---------------------------------------------------------------------------
// FreeQueue
// ---------------------------------------------------------------------------
mod free_queue {
    use super::*;
    use freeq::FreeQueue;

    #[test]
    fn push_len_and_drain_in_fifo_order() {
        let log = Log::default();
        let mut q = FreeQueue::new();
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        q.push(probe(0, &log));
        q.push_with(probe(1, &log), drop);
        let l = log.clone();
        q.push_fn(move || l.push(2));
        q.push(probe(3, &log));
        assert_eq!(q.len(), 4);
        assert!(!q.is_empty());
        assert!(log.get().is_empty());
        q.drain();
        assert!(q.is_empty());
        assert_eq!(log.get(), [0, 1, 2, 3]);
        // Reusable after a drain.
        q.push(probe(4, &log));
        assert_eq!(q.len(), 1);
        q.drain();
        assert_eq!(log.get(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn push_with_calls_the_free_function() {
        let pool = Arc::new(StdMutex::new(Vec::new()));
        let mut q = FreeQueue::default();
        for i in 0..5 {
            let pool = pool.clone();
            q.push_with(vec![i; 4], move |v| pool.lock().unwrap().push(v));
        }
        q.drain();
        let pool = pool.lock().unwrap();
        assert_eq!(pool.len(), 5);
        assert_eq!(pool[4], [4; 4]);
    }

    #[test]
    fn is_independent_of_sections() {
        let log = Log::default();
        let s = section();
        let mut q = FreeQueue::new();
        q.push(probe(1, &log));
        assert_eq!(pending(), 0, "not the thread's queue");
        q.drain();
        assert_eq!(log.get(), [1], "drain frees even inside a section");
        drop(s);
    }

    #[test]
    fn dropping_the_queue_drains_it() {
        let log = Log::default();
        let mut q = FreeQueue::new();
        q.push(probe(1, &log));
        q.push(probe(2, &log));
        drop(q);
        assert_eq!(log.get(), [1, 2]);
    }

    #[test]
    fn is_send_and_drains_on_another_thread() {
        let log = Log::default();
        let mut q = FreeQueue::new();
        let filler = thread::current().id();
        for i in 0..10 {
            q.push(probe_with(i, &log, move || {
                assert_ne!(thread::current().id(), filler)
            }));
        }
        let handle = thread::spawn(move || {
            assert_eq!(q.len(), 10);
            q.drain();
            q
        });
        let q = handle.join().unwrap();
        assert!(q.is_empty());
        assert_eq!(log.get(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn dropped_on_another_thread_frees_there() {
        let log = Log::default();
        let mut q = FreeQueue::new();
        let filler = thread::current().id();
        q.push(probe_with(1, &log, move || {
            assert_ne!(thread::current().id(), filler)
        }));
        thread::spawn(move || drop(q)).join().unwrap();
        assert_eq!(log.get(), [1]);
    }

    #[test]
    fn a_panicking_free_does_not_stop_the_drain() {
        quiet_booms();
        let n = 10;
        let tally = Tally::new(n);
        let mut q = FreeQueue::new();
        for id in 0..n {
            q.push(Counted {
                id,
                tally: tally.clone(),
                panics: id == 2 || id == 6,
            });
        }
        let r = panic::catch_unwind(AssertUnwindSafe(|| q.drain()));
        assert_eq!(boom_id(r.unwrap_err()), 2);
        assert!(q.is_empty());
        assert_eq!(tally.counts(), vec![1; n]);
        // Still usable.
        q.push(Counted {
            id: 0,
            tally: tally.clone(),
            panics: false,
        });
        q.drain();
        assert_eq!(tally.counts()[0], 2);
    }

    #[test]
    fn a_panicking_free_in_drop_resumes_after_freeing_the_rest() {
        quiet_booms();
        let log = Log::default();
        let mut q = FreeQueue::new();
        q.push(Bomb {
            id: 1,
            log: log.clone(),
        });
        q.push(probe(2, &log));
        let r = panic::catch_unwind(AssertUnwindSafe(move || drop(q)));
        assert_eq!(boom_id(r.unwrap_err()), 1);
        assert_eq!(log.get(), [1, 2]);
    }

    #[test]
    fn defer_all_hands_the_items_to_the_thread_queue() {
        let log = Log::default();
        let m = Arc::new(freeq::Mutex::new(()));
        let mut q = FreeQueue::new();
        for i in 0..3 {
            let m = m.clone();
            q.push(probe_with(i, &log, move || assert!(std_free(&m))));
        }
        {
            let _g = m.lock().unwrap();
            defer(probe(100, &log));
            q.defer_all();
            defer(probe(101, &log));
            assert!(log.get().is_empty());
        }
        assert_eq!(log.get(), [100, 0, 1, 2, 101]);

        // Outside a section: freed at once.
        let mut q = FreeQueue::new();
        q.push(probe(7, &log));
        q.defer_all();
        assert_eq!(log.get().last(), Some(&7));
    }

    #[test]
    fn debug_shows_the_length() {
        let mut q = FreeQueue::new();
        q.push(1u8);
        assert!(format!("{q:?}").contains('1'));
    }
}
