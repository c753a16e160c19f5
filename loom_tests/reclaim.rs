//! loom models of the offload path: a `Reclaimer` (freeq's per-CPU reclaimer
//! type, driven here by model threads), its lock-free inbox, the park /
//! unpark handshake, `quiesce` and the outstanding-item count.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test
//! --release --test loom_reclaim --target-dir target/loom`.
//!
//! The process-wide offload API (`Policy::Offload`, `freeq::quiesce`) keeps
//! its reclaimers in a static and starts real threads, so the models use the
//! `Reclaimer` instance API only. The bound check itself
//! (`try_hand_off`) is internal; the models check the `outstanding` count it
//! relies on.
//!
//! Two groups of models. The first drives the reclaimer with `run_once`
//! from model threads: the inbox, FIFO reversal, the outstanding count and
//! the final drop, without parking. The second runs the real loop (`run`,
//! park / unpark, `shutdown`, `quiesce`). loom reports a lost wake-up in
//! every model of the second group as long as the handshake between
//! `push`, `sleep` and `shutdown` orders its store-then-load pairs with
//! `SeqCst` accesses alone: loom treats those as `AcqRel` (see its README),
//! so it explores the store-buffering outcome, and for `shutdown` racing
//! the start of `run` (a `SeqCst` store, then the `OnceLock` read of the
//! thread handle, against the `OnceLock` write, then a `SeqCst` load) that
//! outcome is allowed by the memory model itself. A `fence(SeqCst)` after
//! the inbox push in `push`, after `sleeping.store(true)` in `sleep` and
//! after `shutdown.store(true)` in `shutdown` makes all of them pass; until
//! then they are ignored. Run them one at a time (`-- --ignored NAME`): a
//! model that loom finds deadlocked aborts the whole test binary.
//!
//! Frees on a reclaimer run under `catch_unwind`, so an assertion failing
//! inside a destructor there would be swallowed: destructors record what
//! they saw, and the model thread asserts afterwards. That bookkeeping uses
//! `std` atomics on purpose (loom runs one model thread at a time), which
//! keeps the explored interleavings down to freeq's own operations.
#![cfg(loom)]

use std::sync::atomic::AtomicBool as StdAtomicBool;
use std::sync::atomic::Ordering::SeqCst as StdSeqCst;

use freeq::{__Reclaimer as Reclaimer, FreeQueue};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::thread;

/// Counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn queue_of(count: &Arc<AtomicUsize>, n: usize) -> FreeQueue {
    let mut q = FreeQueue::new();
    for _ in 0..n {
        q.push(Counted(count.clone()));
    }
    q
}

/// Starts a model thread running the reclaimer's loop.
fn spawn_runner(r: &Arc<Reclaimer>) -> thread::JoinHandle<()> {
    let r = r.clone();
    thread::spawn(move || r.run())
}

/// Shuts the reclaimer down and waits for its loop to return.
fn stop(r: &Reclaimer, runner: thread::JoinHandle<()>) {
    r.shutdown();
    runner.join().unwrap();
}

/// Checks, while it is freed, that the reclaimer still counts its batch as
/// outstanding and never more than `max` items.
struct Watch {
    r: Arc<Reclaimer>,
    max: usize,
    bad: std::sync::Arc<StdAtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let now = self.r.outstanding();
        if now == 0 || now > self.max {
            self.bad.store(true, StdSeqCst);
        }
    }
}

/// A queue of `n` [`Watch`]es on `r`, allowing at most `max` outstanding.
fn watched(
    r: &Arc<Reclaimer>,
    bad: &std::sync::Arc<StdAtomicBool>,
    n: usize,
    max: usize,
) -> FreeQueue {
    let mut q = FreeQueue::new();
    for _ in 0..n {
        q.push(Watch {
            r: r.clone(),
            max,
            bad: bad.clone(),
        });
    }
    q
}

// ---------------------------------------------------------------------------
// The inbox, driven with run_once
// ---------------------------------------------------------------------------

// Catches a batch lost or freed twice when two producers push onto the
// inbox while a consumer swaps it out and reverses it.
#[test]
fn hand_offs_racing_run_once_are_each_freed_once() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let counts = [counter(), counter()];
        let producers: Vec<_> = counts
            .iter()
            .map(|count| {
                let (r, count) = (r.clone(), count.clone());
                thread::spawn(move || r.hand_off_queue(queue_of(&count, 1)))
            })
            .collect();
        r.run_once();
        for p in producers {
            p.join().unwrap();
        }
        while r.run_once() {}
        for count in &counts {
            assert_eq!(count.load(SeqCst), 1);
        }
        assert_eq!(r.outstanding(), 0);
    });
}

// Catches batches freed out of order: what one producer hands off first is
// freed first, whichever run_once call takes it.
#[test]
fn one_producers_batches_are_freed_in_order() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let order = Arc::new(AtomicUsize::new(0));
        let bad = std::sync::Arc::new(StdAtomicBool::new(false));
        let producer = {
            let (r, order, bad) = (r.clone(), order.clone(), bad.clone());
            thread::spawn(move || {
                for expected in 0..2 {
                    let (order, bad) = (order.clone(), bad.clone());
                    let mut q = FreeQueue::new();
                    q.push_fn(move || {
                        if order.fetch_add(1, SeqCst) != expected {
                            bad.store(true, StdSeqCst);
                        }
                    });
                    r.hand_off_queue(q);
                }
            })
        };
        r.run_once();
        producer.join().unwrap();
        while r.run_once() {}
        assert_eq!(order.load(SeqCst), 2);
        assert!(!bad.load(StdSeqCst), "batches freed out of order");
    });
}

// Catches outstanding() going down before a batch is freed (the bound would
// then admit more than it should), wrapping below zero, or not returning to
// zero once everything is freed.
#[test]
fn outstanding_counts_each_batch_until_it_is_freed() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let bad = std::sync::Arc::new(StdAtomicBool::new(false));
        let (one, two) = (watched(&r, &bad, 1, 3), watched(&r, &bad, 2, 3));
        let producer = {
            let r = r.clone();
            thread::spawn(move || {
                r.hand_off_queue(one);
                let now = r.outstanding();
                assert!(now <= 3, "outstanding {now} with 3 items handed off");
            })
        };
        let consumer = {
            let r = r.clone();
            thread::spawn(move || {
                r.run_once();
            })
        };
        r.hand_off_queue(two);
        let now = r.outstanding();
        assert!(now <= 3, "outstanding {now} with 3 items handed off");
        producer.join().unwrap();
        consumer.join().unwrap();
        while r.run_once() {}
        assert_eq!(r.outstanding(), 0);
        assert!(
            !bad.load(StdSeqCst),
            "a batch stopped counting before it was freed"
        );
    });
}

// Catches a batch leaked when the reclaimer is dropped: whatever is still
// in the inbox (handed off while a consumer ran) is freed by the drop.
#[test]
fn dropping_a_reclaimer_frees_what_is_left() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let count = counter();
        let producer = {
            let (r, count) = (r.clone(), count.clone());
            thread::spawn(move || {
                r.hand_off_queue(queue_of(&count, 1));
                r.hand_off_queue(queue_of(&count, 1));
            })
        };
        r.run_once();
        producer.join().unwrap();
        drop(r);
        assert_eq!(count.load(SeqCst), 2);
    });
}

// ---------------------------------------------------------------------------
// The reclaimer loop: run, park / unpark, shutdown, quiesce
// ---------------------------------------------------------------------------

// Catches a batch lost or freed twice when two producers push onto the
// inbox while the reclaimer swaps it out and reverses it.
#[test]
fn batches_from_two_producers_are_each_freed_once() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let runner = spawn_runner(&r);
        let counts = [counter(), counter()];
        let producers: Vec<_> = counts
            .iter()
            .map(|count| {
                let (r, count) = (r.clone(), count.clone());
                thread::spawn(move || r.hand_off_queue(queue_of(&count, 1)))
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        stop(&r, runner);
        for count in &counts {
            assert_eq!(count.load(SeqCst), 1);
        }
        assert_eq!(r.outstanding(), 0);
    });
}

// Catches quiesce returning before a batch handed off ahead of it is freed
// (a marker run out of FIFO order, or a wake-up that only the marker gets).
#[test]
fn quiesce_waits_for_a_batch_handed_off_before_it() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let runner = spawn_runner(&r);
        let (mine, theirs) = (counter(), counter());
        let other = {
            let (r, theirs) = (r.clone(), theirs.clone());
            thread::spawn(move || r.hand_off_queue(queue_of(&theirs, 1)))
        };
        r.hand_off_queue(queue_of(&mine, 1));
        r.quiesce();
        assert_eq!(mine.load(SeqCst), 1);
        other.join().unwrap();
        stop(&r, runner);
        assert_eq!(theirs.load(SeqCst), 1);
    });
}

// Catches the accounting faults above with the real loop doing the frees.
#[test]
fn outstanding_counts_each_batch_until_the_loop_frees_it() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let bad = std::sync::Arc::new(StdAtomicBool::new(false));
        let runner = spawn_runner(&r);
        let (one, two) = (watched(&r, &bad, 1, 3), watched(&r, &bad, 2, 3));
        let producer = {
            let r = r.clone();
            thread::spawn(move || {
                r.hand_off_queue(one);
                let now = r.outstanding();
                assert!(now <= 3, "outstanding {now} with 3 items handed off");
            })
        };
        r.hand_off_queue(two);
        let now = r.outstanding();
        assert!(now <= 3, "outstanding {now} with 3 items handed off");
        producer.join().unwrap();
        stop(&r, runner);
        assert_eq!(r.outstanding(), 0);
        assert!(
            !bad.load(StdSeqCst),
            "a batch stopped counting before it was freed"
        );
    });
}

// Catches a lost wake-up: the reclaimer goes idle and parks, a producer
// hands off, and nobody unparks it (the model then deadlocks).
#[test]
fn a_parked_reclaimer_wakes_for_each_hand_off() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let runner = spawn_runner(&r);
        for _ in 0..2 {
            // Only the free itself wakes this thread up: if the reclaimer
            // never runs it, both threads stay parked.
            let done = Arc::new(AtomicBool::new(false));
            let mut q = FreeQueue::new();
            let (flag, me) = (done.clone(), thread::current());
            q.push_fn(move || {
                flag.store(true, SeqCst);
                me.unpark();
            });
            r.hand_off_queue(q);
            while !done.load(SeqCst) {
                thread::park();
            }
        }
        stop(&r, runner);
    });
}

// Catches a batch handed off while the reclaimer shuts down being leaked:
// it must be freed by the loop or, failing that, when the reclaimer drops.
#[test]
fn a_hand_off_racing_shutdown_is_freed_once() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let runner = spawn_runner(&r);
        let count = counter();
        let producer = {
            let (r, count) = (r.clone(), count.clone());
            thread::spawn(move || r.hand_off_queue(queue_of(&count, 1)))
        };
        r.shutdown();
        runner.join().unwrap();
        producer.join().unwrap();
        drop(r);
        assert_eq!(count.load(SeqCst), 1);
    });
}

// ---------------------------------------------------------------------------
// Several inboxes and runners: stealing, quiesce helping, quiesce from a
// free on a runner
// ---------------------------------------------------------------------------

// Catches a batch lost or freed twice when a runner takes work from another
// runner's inbox while that runner and a producer race it.
#[test]
fn a_runner_stealing_from_another_inbox_frees_each_batch_once() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::with_shape(2, 2));
        let (a, b) = (counter(), counter());
        let producer = {
            let (r, a) = (r.clone(), a.clone());
            thread::spawn(move || r.hand_off_queue_to(0, queue_of(&a, 1)))
        };
        let thief = {
            let r = r.clone();
            thread::spawn(move || {
                r.run_once_as(1);
            })
        };
        r.hand_off_queue_to(0, queue_of(&b, 1));
        r.run_once_as(0);
        producer.join().unwrap();
        thief.join().unwrap();
        while r.run_once_as(0) {}
        assert_eq!(a.load(SeqCst), 1);
        assert_eq!(b.load(SeqCst), 1);
        assert_eq!(r.outstanding(), 0);
    });
}

// Catches a lost wake-up in the wake order of several runners: a hand-off
// to inbox 0 tries runner 1 first (the runner of another CPU) and runner 0,
// the inbox's own, last, and wakes a second one only if the first is busy
// or the inbox already held a batch. If runner 1 is awake but about to
// park, and runner 0 parked, the batch must still be freed by someone (the
// model deadlocks otherwise).
#[test]
fn a_hand_off_with_two_runners_wakes_one_that_frees_it() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::with_shape(2, 2));
        let runners: Vec<_> = (0..2)
            .map(|i| {
                let r = r.clone();
                thread::spawn(move || r.run_as(i))
            })
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let mut q = FreeQueue::new();
        let (flag, me) = (done.clone(), thread::current());
        q.push_fn(move || {
            flag.store(true, SeqCst);
            me.unpark();
        });
        r.hand_off_queue_to(0, q);
        while !done.load(SeqCst) {
            thread::park();
        }
        r.shutdown();
        for runner in runners {
            runner.join().unwrap();
        }
        assert_eq!(r.outstanding(), 0);
    });
}

// Catches quiesce returning while a runner still frees a batch it took
// from the inbox before quiesce looked (quiesce finds the inbox empty and
// must then wait for that runner): the runner announces the swap (`taken`)
// before it makes it, and publishes `done` only after the frees.
#[test]
fn quiesce_waits_for_a_batch_a_runner_took_and_frees_the_rest_itself() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::with_shape(2, 1));
        let (a, b) = (counter(), counter());
        r.hand_off_queue_to(0, queue_of(&a, 1));
        r.hand_off_queue_to(1, queue_of(&b, 1));
        let runner = {
            let r = r.clone();
            thread::spawn(move || {
                r.run_once_as(0);
            })
        };
        r.quiesce();
        assert_eq!(
            a.load(SeqCst),
            1,
            "quiesce returned before a runner's batch was freed"
        );
        assert_eq!(b.load(SeqCst), 1);
        runner.join().unwrap();
        assert_eq!(r.outstanding(), 0);
    });
}

// Catches two quiesce callers where one returns before the batches the
// other took (and is still freeing) are freed.
#[test]
fn quiesce_waits_for_batches_another_quiesce_took() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::new());
        let a = counter();
        r.hand_off_queue(queue_of(&a, 1));
        let other = {
            let r = r.clone();
            thread::spawn(move || r.quiesce())
        };
        r.quiesce();
        assert_eq!(
            a.load(SeqCst),
            1,
            "quiesce returned before another's batch was freed"
        );
        other.join().unwrap();
    });
}

/// Calls `quiesce` on its reclaimer when freed.
struct QuiesceOnDrop(Arc<Reclaimer>, Arc<AtomicUsize>);

impl Drop for QuiesceOnDrop {
    fn drop(&mut self) {
        self.0.quiesce();
        self.1.fetch_add(1, SeqCst);
    }
}

// Catches a deadlock when frees on two runners both call quiesce (each
// would wait for the other's batch), and a quiesce from a free that waits
// on its own runner.
#[test]
fn quiesce_from_frees_on_two_runners_does_not_deadlock() {
    loom::model(|| {
        let r = Arc::new(Reclaimer::with_shape(2, 2));
        let done = counter();
        for inbox in 0..2 {
            let mut q = FreeQueue::new();
            q.push(QuiesceOnDrop(r.clone(), done.clone()));
            r.hand_off_queue_to(inbox, q);
        }
        let other = {
            let r = r.clone();
            thread::spawn(move || {
                r.run_once_as(1);
            })
        };
        r.run_once_as(0);
        other.join().unwrap();
        while r.run_once_as(0) {}
        assert_eq!(done.load(SeqCst), 2);
        // The pool holds the reclaimer through the values above only while
        // they live: it is dropped here, with nothing left.
        assert_eq!(r.outstanding(), 0);
    });
}
