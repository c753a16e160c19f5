//! loom models of freeq's core: sections, drains, `RawDeferred`,
//! `LockGuard` and `FreeQueue`, with two threads contending on the locks.
//!
//! Every deferred value is a [`Probe`]: freeing one records it in a [`Log`]
//! and asserts that it was not freed before, that its thread is not in a
//! section, and that it is not freed from inside another free on the same
//! thread; `not_under(&m)` adds that the freeing thread does not hold `m`.
//!
//! Run with `scripts/loom.sh`.
#![cfg(loom)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::{
    Arc, DeferMutex, Log, Owned, Owner, Probe, assert_not_held_here, defer_mutex, panic_msg,
    quiet_panic,
};
use loom::thread;

/// Id of probe `n` of thread `t`.
fn id(t: usize, n: usize) -> usize {
    Probe::id(t, n)
}

/// One critical section on `m` that defers probe `n` of thread `me`, then
/// checks that the unlock freed it.
fn lock_defer_unlock(me: usize, n: usize, m: &Arc<DeferMutex<usize>>, log: &Arc<Log>) {
    let mut g = m.lock();
    *g += 1;
    freeq::defer(Probe::new(log, me, n).not_under(m));
    assert!(freeq::in_section());
    assert_eq!(freeq::pending(), 1);
    assert_eq!(log.freed(id(me, n)), 0, "freed under the lock");
    drop(g);
    assert!(!freeq::in_section());
    assert_eq!(freeq::pending(), 0);
    assert_eq!(
        log.freed(id(me, n)),
        1,
        "not freed when the lock was released"
    );
}

// Catches a drain that runs before the lock is released (or not at all):
// the free would find its own thread still holding the mutex.
#[test]
fn contended_lock_frees_after_unlock() {
    loom::model(|| {
        let log = Log::new(2);
        let m = defer_mutex(0usize);
        let t = {
            let (m, log) = (m.clone(), log.clone());
            thread::spawn(move || lock_defer_unlock(1, 0, &m, &log))
        };
        lock_defer_unlock(0, 0, &m, &log);
        t.join().unwrap();
        log.assert_freed_once(&[id(0, 0), id(1, 0)]);
        assert_eq!(*m.lock(), 2);
    });
}

// Catches a drain that loses, repeats or reorders items (queue and spare
// buffers swapped wrongly, a grown buffer copied wrongly), for every way
// of deferring.
#[test]
fn every_item_freed_once_in_order() {
    fn work(me: usize, m: &Arc<DeferMutex<usize>>, log: &Arc<Log>) {
        // Two critical sections, so the second reuses the first's buffers.
        {
            let mut g = m.lock();
            *g += 1;
            freeq::defer(Probe::new(log, me, 0).not_under(m));
            freeq::defer_with(Probe::new(log, me, 1), drop);
            let p = Probe::new(log, me, 2);
            freeq::defer_fn(move || drop(p));
            assert_eq!(freeq::pending(), 3);
        }
        {
            let _g = m.lock();
            freeq::defer(Probe::new(log, me, 3));
            freeq::defer(Probe::new(log, me, 4).not_under(m));
        }
        assert_eq!(freeq::pending(), 0);
        let want: Vec<usize> = (0..5).map(|n| id(me, n)).collect();
        assert_eq!(log.order_of(me), want, "not freed in FIFO order");
    }
    loom::model(|| {
        let log = Log::new(2);
        let m = defer_mutex(0usize);
        let t = {
            let (m, log) = (m.clone(), log.clone());
            thread::spawn(move || work(1, &m, &log))
        };
        work(0, &m, &log);
        t.join().unwrap();
        let all: Vec<usize> = (0..2).flat_map(|t| (0..5).map(move |n| id(t, n))).collect();
        log.assert_freed_once(&all);
    });
}

// Catches a drain on an inner unlock: releasing the inner of two nested
// locks must not free anything while the outer one is still held.
#[test]
fn nested_locks_drain_at_outermost_release() {
    fn work(me: usize, a: &Arc<DeferMutex<()>>, b: &Arc<DeferMutex<()>>, log: &Arc<Log>) {
        let ga = a.lock();
        freeq::defer(Probe::new(log, me, 0).not_under(a).not_under(b));
        let gb = b.lock();
        freeq::defer(Probe::new(log, me, 1).not_under(a).not_under(b));
        drop(gb);
        assert!(freeq::in_section(), "inner unlock closed the outer section");
        assert_eq!(freeq::pending(), 2, "inner unlock drained");
        drop(ga);
        assert!(!freeq::in_section());
        assert_eq!(freeq::pending(), 0);
        assert_eq!(log.order_of(me), [id(me, 0), id(me, 1)]);
    }
    loom::model(|| {
        let log = Log::new(2);
        let a = defer_mutex(());
        let b = defer_mutex(());
        let t = {
            let (a, b, log) = (a.clone(), b.clone(), log.clone());
            thread::spawn(move || work(1, &a, &b, &log))
        };
        work(0, &a, &b, &log);
        t.join().unwrap();
        log.assert_freed_once(&[id(0, 0), id(0, 1), id(1, 0), id(1, 1)]);
    });
}

// Catches a drain that runs before the unlock: a free that returns its
// value to a pool behind the same lock would deadlock on it.
#[test]
fn free_returns_value_to_pool_behind_same_lock() {
    // Slots 0 and 1 belong to threads 0 and 1; replaced buffers are pushed
    // after them by their deferred free.
    fn work(me: usize, pool: &Arc<DeferMutex<Vec<Vec<usize>>>>) {
        let mut g = pool.lock();
        let old = std::mem::replace(&mut g[me], vec![me]);
        let pool2 = pool.clone();
        freeq::defer_with(old, move |old| pool2.lock().push(old));
        drop(g);
        assert_eq!(freeq::pending(), 0);
    }
    loom::model(|| {
        let pool = defer_mutex(vec![vec![10usize], vec![11]]);
        let t = {
            let pool = pool.clone();
            thread::spawn(move || work(1, &pool))
        };
        work(0, &pool);
        t.join().unwrap();
        let mut all: Vec<usize> = pool.lock().iter().map(|b| b[0]).collect();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 10, 11], "a value did not come back to the pool");
    });
}

// Catches a recursive drain (a free that takes a deferring lock and defers
// more must queue, not drain inside itself) and deferrals lost mid-drain.
#[test]
fn free_that_locks_and_defers() {
    fn work(me: usize, a: &Arc<DeferMutex<()>>, b: &Arc<DeferMutex<usize>>, log: &Arc<Log>) {
        let parent = {
            let (b, log) = (b.clone(), log.clone());
            Probe::new(&log, me, 0).not_under(a).then(move || {
                let mut g = b.lock();
                *g += 1;
                freeq::defer(Probe::new(&log, me, 2).not_under(&b));
                drop(g);
                assert_eq!(
                    log.freed(id(me, 2)),
                    0,
                    "value deferred by a free was freed inside that free"
                );
            })
        };
        let g = a.lock();
        freeq::defer(parent);
        freeq::defer(Probe::new(log, me, 1).not_under(a));
        drop(g);
        assert_eq!(freeq::pending(), 0);
        assert!(!freeq::in_section());
        assert_eq!(log.order_of(me), [id(me, 0), id(me, 1), id(me, 2)]);
    }
    loom::model(|| {
        let log = Log::new(2);
        let a = defer_mutex(());
        let b = defer_mutex(0usize);
        let t = {
            let (a, b, log) = (a.clone(), b.clone(), log.clone());
            thread::spawn(move || work(1, &a, &b, &log))
        };
        work(0, &a, &b, &log);
        t.join().unwrap();
        let all: Vec<usize> = (0..2).flat_map(|t| (0..3).map(move |n| id(t, n))).collect();
        log.assert_freed_once(&all);
        assert_eq!(*b.lock(), 2);
    });
}

// Catches a panicking free that loses the rest of the batch, frees an item
// twice, reports a later panic instead of the first, or leaves the thread
// in a section, draining, or holding the lock.
#[test]
fn panicking_free_inside_drain() {
    loom::model(|| {
        let log = Log::new(2);
        let m = defer_mutex(0usize);
        let t = {
            let (m, log) = (m.clone(), log.clone());
            thread::spawn(move || lock_defer_unlock(1, 0, &m, &log))
        };
        let g = m.lock();
        freeq::defer(Probe::new(&log, 0, 0).not_under(&m));
        freeq::defer(Probe::new(&log, 0, 1).then(|| quiet_panic("first")));
        freeq::defer(Probe::new(&log, 0, 2).not_under(&m));
        freeq::defer(Probe::new(&log, 0, 3).then(|| quiet_panic("second")));
        freeq::defer(Probe::new(&log, 0, 4).not_under(&m));
        let err =
            catch_unwind(AssertUnwindSafe(|| drop(g))).expect_err("the free's panic was lost");
        assert_eq!(panic_msg(&*err), "first");
        assert!(!freeq::in_section());
        assert_eq!(freeq::pending(), 0);
        assert_not_held_here(&m);
        let want: Vec<usize> = (0..5).map(|n| id(0, n)).collect();
        assert_eq!(log.order_of(0), want);
        // The thread's queue still works afterwards.
        lock_defer_unlock(0, 5, &m, &log);
        t.join().unwrap();
        log.assert_freed_once(&[
            id(0, 0),
            id(0, 1),
            id(0, 2),
            id(0, 3),
            id(0, 4),
            id(0, 5),
            id(1, 0),
        ]);
    });
}

// Catches items leaked when a thread exits with a section still open (a
// forgotten guard or `Section`), and deferrals lost during that exit.
#[test]
fn leaked_section_freed_at_thread_exit() {
    loom::model(|| {
        let log = Log::new(2);
        let m = defer_mutex(0usize);
        let t = {
            let (m, log) = (m.clone(), log.clone());
            thread::spawn(move || {
                let private = defer_mutex(());
                std::mem::forget(private.lock());
                std::mem::forget(freeq::section());
                {
                    let mut g = m.lock();
                    *g += 1;
                    freeq::defer(Probe::new(&log, 1, 0));
                }
                let log2 = log.clone();
                freeq::defer(
                    Probe::new(&log, 1, 1)
                        .then(move || freeq::defer(Probe::new(&log2, 1, 2).inline_ok())),
                );
                assert!(freeq::in_section());
                assert_eq!(freeq::pending(), 2);
                assert_eq!(log.freed(id(1, 0)), 0, "freed inside a leaked section");
                // Exit with both sections open.
            })
        };
        lock_defer_unlock(0, 0, &m, &log);
        t.join().unwrap();
        log.assert_freed_once(&[id(0, 0), id(1, 0), id(1, 1), id(1, 2)]);
        assert_eq!(log.order_of(1), [id(1, 0), id(1, 1), id(1, 2)]);
    });
}

// Catches a `FreeQueue` that frees at push time, loses or repeats items
// when moved to another thread, or does not free on `drain`, on drop, or
// (after `defer_all`) when that thread's section closes.
#[test]
fn free_queue_moved_to_another_thread() {
    loom::model(|| {
        let log = Log::new(2);
        let m = defer_mutex(0usize);
        // Filled on this thread under the lock, freed on thread 1.
        let mut q = freeq::FreeQueue::new();
        let mut q2 = freeq::FreeQueue::new();
        let mut q3 = freeq::FreeQueue::new();
        {
            let mut g = m.lock();
            *g += 1;
            q.push(Probe::new(&log, 1, 0).not_under(&m));
            q.push_with(Probe::new(&log, 1, 1), drop);
            let p = Probe::new(&log, 1, 2);
            q.push_fn(move || drop(p));
            q2.push(Probe::new(&log, 1, 3));
            q3.push(Probe::new(&log, 1, 4));
        }
        assert_eq!(freeq::pending(), 0);
        assert_eq!(q.len(), 3);
        assert_eq!(log.order_of(1), [], "freed at push time");
        let t = {
            let (m, log) = (m.clone(), log.clone());
            thread::spawn(move || {
                let mut g = m.lock();
                *g += 1;
                drop(g);
                q.drain();
                assert!(q.is_empty());
                assert_eq!(log.order_of(1), [id(1, 0), id(1, 1), id(1, 2)]);
                drop(q2);
                assert_eq!(log.freed(id(1, 3)), 1, "dropped queue did not free");
                let s = freeq::section();
                q3.defer_all();
                assert_eq!(log.freed(id(1, 4)), 0, "defer_all freed inside a section");
                drop(s);
                assert_eq!(log.freed(id(1, 4)), 1);
            })
        };
        lock_defer_unlock(0, 0, &m, &log);
        t.join().unwrap();
        log.assert_freed_once(&[id(0, 0), id(1, 0), id(1, 1), id(1, 2), id(1, 3), id(1, 4)]);
        assert_eq!(*m.lock(), 3);
    });
}

// Catches a guard that skips its unlock or drain when dropped by unwinding,
// or turns a free's panic during that unwinding into an abort.
#[test]
fn guard_dropped_while_unwinding() {
    loom::model(|| {
        let log = Log::new(2);
        let m = defer_mutex(0usize);
        let t = {
            let (m, log) = (m.clone(), log.clone());
            thread::spawn(move || lock_defer_unlock(1, 0, &m, &log))
        };
        let err = catch_unwind(AssertUnwindSafe(|| {
            let mut g = m.lock();
            *g += 1;
            freeq::defer(
                Probe::new(&log, 0, 0)
                    .not_under(&m)
                    .then(|| assert!(std::thread::panicking(), "not freed by the unwinding")),
            );
            freeq::defer(Probe::new(&log, 0, 1).then(|| quiet_panic("free")));
            freeq::defer(Probe::new(&log, 0, 2).not_under(&m));
            quiet_panic("critical section");
        }))
        .expect_err("the panic was lost");
        assert_eq!(panic_msg(&*err), "critical section");
        assert!(!freeq::in_section());
        assert_eq!(freeq::pending(), 0);
        assert_not_held_here(&m);
        assert_eq!(log.order_of(0), [id(0, 0), id(0, 1), id(0, 2)]);
        t.join().unwrap();
        log.assert_freed_once(&[id(0, 0), id(0, 1), id(0, 2), id(1, 0)]);
        assert_eq!(*m.lock(), 2);
    });
}

// Catches a `LockGuard` that drains before its wrapped guard unlocks, or
// does not drain at all, over loom's own `Mutex`.
#[test]
fn lock_guard_over_loom_mutex() {
    fn work(me: usize, m: &Arc<loom::sync::Mutex<usize>>, owner: &Arc<Owner>, log: &Arc<Log>) {
        let mut g = freeq::LockGuard::new(Owned::new(m.lock().unwrap(), owner));
        *g += 1;
        let (m2, owner2) = (m.clone(), owner.clone());
        freeq::defer(Probe::new(log, me, 0).then(move || match m2.try_lock() {
            Ok(_) => {}
            Err(_) => assert!(
                !owner2.is_me(),
                "value freed while its thread holds the lock"
            ),
        }));
        assert!(freeq::in_section());
        assert_eq!(freeq::pending(), 1);
        drop(g);
        assert!(!freeq::in_section());
        assert_eq!(freeq::pending(), 0);
        assert_eq!(
            log.freed(id(me, 0)),
            1,
            "not freed when the guard was dropped"
        );
    }
    loom::model(|| {
        let log = Log::new(2);
        let m = Arc::new(loom::sync::Mutex::new(0usize));
        let owner = Arc::new(Owner::default());
        let t = {
            let (m, owner, log) = (m.clone(), owner.clone(), log.clone());
            thread::spawn(move || work(1, &m, &owner, &log))
        };
        work(0, &m, &owner, &log);
        t.join().unwrap();
        log.assert_freed_once(&[id(0, 0), id(1, 0)]);
        assert_eq!(*m.lock().unwrap(), 2);
    });
}
