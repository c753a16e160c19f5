//! `freeq::tokio` and `freeq::AsyncGuard`: frees after the release, across
//! awaits and threads, through cancellation, and by the thread's policy.
//!
//! Every probe here records, when it is dropped, whether the lock it was
//! deferred under could be taken at that moment (`try_lock` from its own
//! `Drop`): true means it was freed after the release. No test depends on
//! timing: orderings are forced on current-thread runtimes or by polling
//! futures by hand.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use freeq::alloc::DeferFrees;
use freeq::tokio::{Mutex, RwLock};
use freeq::{AsyncGuard, Deferred};

/// Counts frees of blocks of [`MARK`] bytes: only the tests' own boxes
/// have that size, so the count is theirs whatever else runs.
struct Counting;

const MARK: usize = 4093;
static MARKED_FREES: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    /// Allocations made by this thread.
    static ALLOCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

// SAFETY: forwards everything to `System`; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() == MARK {
            MARKED_FREES.fetch_add(1, SeqCst);
        }
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: DeferFrees<Counting> = DeferFrees::new(Counting);

/// The lock a probe checks when it is dropped.
#[derive(Clone)]
enum Target {
    Mutex(Arc<Mutex<u32>>),
    Tokio(Arc<tokio::sync::Mutex<u32>>),
    Std(Arc<StdMutex<u32>>),
    RwLock(Arc<RwLock<u32>>),
}

impl Target {
    fn is_free(&self) -> bool {
        match self {
            Target::Mutex(m) => m.try_lock().is_ok(),
            Target::Tokio(m) => m.try_lock().is_ok(),
            Target::Std(m) => m.try_lock().is_ok(),
            Target::RwLock(l) => l.try_write().is_ok(),
        }
    }
}

/// What probes saw: one entry per drop, `true` if the lock was free.
#[derive(Clone, Default)]
struct Log(Arc<StdMutex<Vec<(&'static str, bool)>>>);

impl Log {
    fn probe(&self, name: &'static str, target: &Target) -> Probe {
        Probe {
            name,
            target: target.clone(),
            log: self.clone(),
        }
    }
    fn note(&self, name: &'static str) {
        self.0.lock().unwrap().push((name, true));
    }
    fn seen(&self) -> Vec<(&'static str, bool)> {
        self.0.lock().unwrap().clone()
    }
}

struct Probe {
    name: &'static str,
    target: Target,
    log: Log,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let free = self.target.is_free();
        self.log.0.lock().unwrap().push((self.name, free));
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

/// Polls `f` once with a waker that does nothing.
fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so the probes are learned as costly: a plain drop sends them to freeq's reclaimer threads, and they are freed later, elsewhere"
)]
fn drop_releases_then_frees() {
    current_thread().block_on(async {
        let m = Arc::new(Mutex::new(0));
        let t = Target::Mutex(m.clone());
        let log = Log::default();
        let mut g = m.lock().await;
        g.defer(log.probe("lock", &t));
        g.defer_with(log.probe("with", &t), drop);
        let l = log.clone();
        g.defer_fn(move || l.note("fn"));
        assert_eq!(g.pending(), 3);
        assert!(log.seen().is_empty());
        drop(g);
        assert_eq!(log.seen(), [("lock", true), ("with", true), ("fn", true)]);

        // The owned guard, and a mapped one.
        let mut g = m.clone().lock_owned().await;
        g.defer(log.probe("owned", &t));
        let g = freeq::tokio::OwnedMutexGuard::map(g, |v| v);
        drop(g);
        let mut g = m.lock().await;
        g.defer(log.probe("mapped", &t));
        let mut g = freeq::tokio::MutexGuard::map(g, |v| v);
        *g += 1;
        drop(g);
        let seen = log.seen();
        assert_eq!(&seen[3..], [("owned", true), ("mapped", true)]);
        assert_eq!(*m.lock().await, 1);
    });
}

#[test]
fn unlock_await_releases_then_frees() {
    current_thread().block_on(async {
        let m = Arc::new(Mutex::new(0));
        let t = Target::Mutex(m.clone());
        let log = Log::default();
        let mut g = m.lock().await;
        g.defer(log.probe("a", &t));
        g.unlock().await;
        assert_eq!(log.seen(), [("a", true)]);
        // An empty bin: no yield needed, nothing to free.
        m.lock().await.unlock().await;
    });
}

#[test]
fn guards_are_send_across_awaits_on_a_multi_thread_runtime() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<freeq::tokio::MutexGuard<'static, Vec<u8>>>();
    send_sync::<freeq::tokio::OwnedMutexGuard<Vec<u8>>>();
    send_sync::<freeq::tokio::MappedMutexGuard<'static, Vec<u8>>>();
    send_sync::<freeq::tokio::RwLockReadGuard<'static, Vec<u8>>>();
    send_sync::<freeq::tokio::RwLockWriteGuard<'static, Vec<u8>>>();
    send_sync::<freeq::tokio::OwnedRwLockWriteGuard<Vec<u8>>>();
    send_sync::<freeq::tokio::OwnedRwLockReadGuard<Vec<u8>>>();
    send_sync::<AsyncGuard<tokio::sync::MutexGuard<'static, Vec<u8>>>>();

    let rt = multi_thread();
    let m = Arc::new(Mutex::new(0u32));
    let t = Target::Mutex(m.clone());
    let log = Log::default();
    let (n_tasks, n_ops) = if cfg!(miri) { (4, 3) } else { (16, 20) };
    let tasks: Vec<_> = (0..n_tasks)
        .map(|_| {
            let (m, t, log) = (m.clone(), t.clone(), log.clone());
            rt.spawn(async move {
                for _ in 0..n_ops {
                    let mut g = m.lock().await;
                    g.defer(log.probe("p", &t));
                    // Held across awaits, maybe resumed on another worker.
                    tokio::task::yield_now().await;
                    *g += 1;
                    tokio::task::yield_now().await;
                    g.unlock().await;
                }
            })
        })
        .collect();
    rt.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
    });
    let total = n_tasks * n_ops;
    assert_eq!(*rt.block_on(m.lock()), total as u32);
    let seen = log.seen();
    assert_eq!(seen.len(), total, "every probe freed exactly once");
    // Another task may have taken the lock by the time a probe is freed,
    // but the probe's own guard was always released first: the guard of
    // a task never frees under itself (checked single-threaded above).
}

#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so the probes are learned as costly: a plain drop sends them to freeq's reclaimer threads, and they are freed later, elsewhere"
)]
fn unlock_await_lets_a_queued_waiter_in_before_the_frees() {
    current_thread().block_on(async {
        let m = Arc::new(Mutex::new(0));
        let t = Target::Mutex(m.clone());
        for explicit in [true, false] {
            let log = Log::default();
            let mut g = m.lock().await;
            g.defer(log.probe("freed", &t));
            let (m2, l2) = (m.clone(), log.clone());
            let waiter = tokio::spawn(async move {
                let _g = m2.lock().await;
                l2.note("waiter got the lock");
            });
            // The waiter runs up to its `lock().await` and queues.
            tokio::task::yield_now().await;
            if explicit {
                g.unlock().await;
            } else {
                drop(g);
            }
            waiter.await.unwrap();
            let order: Vec<_> = log.seen().into_iter().map(|(n, _)| n).collect();
            if explicit {
                assert_eq!(order, ["waiter got the lock", "freed"]);
            } else {
                // A cheap bin is freed in the same poll by a plain drop:
                // the waiter, handed the lock, runs after those frees.
                assert_eq!(order, ["freed", "waiter got the lock"]);
            }
        }
    });
}

#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so the probes are learned as costly: a plain drop sends them to freeq's reclaimer threads, and they are freed later, elsewhere"
)]
fn a_cancelled_unlock_frees_once_where_it_is_dropped() {
    let m = Arc::new(Mutex::new(0));
    let t = Target::Mutex(m.clone());
    let log = Log::default();
    let mut g = m.try_lock().unwrap();
    g.defer(log.probe("p", &t));
    {
        let mut unlock = pin!(g.unlock());
        assert!(poll_once(unlock.as_mut()).is_pending(), "it yields");
        assert!(m.try_lock().is_ok(), "released before the yield");
        assert!(log.seen().is_empty(), "freed after the yield");
    } // cancelled here
    assert_eq!(log.seen(), [("p", true)]);

    // Never polled: dropping the future drops the guard.
    let mut g = m.try_lock().unwrap();
    g.defer(log.probe("q", &t));
    drop(g.unlock());
    assert_eq!(log.seen()[1], ("q", true));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so the probes are learned as costly: a plain drop sends them to freeq's reclaimer threads, and they are freed later, elsewhere"
)]
fn cancelled_tasks_release_then_free_exactly_once() {
    let rt = current_thread();
    let m = Arc::new(Mutex::new(0));
    let t = Target::Mutex(m.clone());
    let log = Log::default();
    rt.block_on(async {
        // select!: the branch holding the guard loses.
        let holder = async {
            let mut g = m.lock().await;
            g.defer(log.probe("select", &t));
            std::future::pending::<()>().await;
        };
        tokio::select! {
            biased;
            _ = holder => unreachable!(),
            _ = std::future::ready(()) => {}
        }
        assert_eq!(log.seen(), [("select", true)]);

        // A timeout.
        let holder = async {
            let mut g = m.lock().await;
            g.defer(log.probe("timeout", &t));
            std::future::pending::<()>().await;
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(1), holder)
                .await
                .is_err()
        );
        assert_eq!(log.seen()[1], ("timeout", true));

        // An aborted task.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (m2, t2, l2) = (m.clone(), t.clone(), log.clone());
        let task = tokio::spawn(async move {
            let mut g = m2.lock().await;
            g.defer(l2.probe("abort", &t2));
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        rx.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(log.seen()[2], ("abort", true));

        // A task left holding a guard when its runtime shuts down.
        let (tx, rx) = std::sync::mpsc::channel();
        let (m2, t2, l2) = (m.clone(), t.clone(), log.clone());
        std::thread::spawn(move || {
            let inner = current_thread();
            let (started, holding) = tokio::sync::oneshot::channel();
            inner.spawn(async move {
                let mut g = m2.lock().await;
                g.defer(l2.probe("shutdown", &t2));
                started.send(()).unwrap();
                std::future::pending::<()>().await;
            });
            inner.block_on(holding).unwrap();
            tx.send(()).unwrap();
            drop(inner);
        })
        .join()
        .unwrap();
        rx.recv().unwrap();
        assert_eq!(log.seen()[3], ("shutdown", true));
    });
    assert_eq!(log.seen().len(), 4, "each freed exactly once");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so the probes are learned as costly: a plain drop sends them to freeq's reclaimer threads, and they are freed later, elsewhere"
)]
fn with_catches_implicit_drops_of_deferred_values() {
    current_thread().block_on(async {
        let m = Arc::new(Mutex::new(0));
        let t = Target::Mutex(m.clone());
        let log = Log::default();
        let map = Mutex::new(HashMap::<u32, Deferred<Probe>>::new());
        map.lock()
            .await
            .insert(1, Deferred::new(log.probe("old", &t)));
        let hold = m.lock().await; // the probe's lock, held with `map`'s
        let mut g = map.lock().await;
        let replaced = g.with(|map| map.insert(1, Deferred::new(log.probe("new", &t))));
        drop(replaced); // dropped outside `with`, no section: freed now
        assert_eq!(log.seen(), [("old", false)]);
        g.with(|map| map.clear());
        assert_eq!(g.pending(), 1, "the cleared value is in the bin");
        assert_eq!(freeq::pending(), 0, "nothing left on the thread");
        assert!(!freeq::in_section());
        drop(hold);
        drop(g);
        assert_eq!(log.seen(), [("old", false), ("new", true)]);

        // A panic inside `with`: what it queued still lands in the bin.
        let mut g = m.lock().await;
        let caught = catch_unwind(AssertUnwindSafe(|| {
            g.with(|_| {
                drop(Deferred::new(log.probe("panicked", &t)));
                panic!("inside with");
            })
        }));
        assert!(caught.is_err());
        // The probe, and the frees the panic's own allocations made inside
        // `with` (held by `DeferFrees`, the global allocator here).
        assert!(g.pending() >= 1);
        assert_eq!(log.seen().len(), 2);
        assert!(!freeq::in_section());
        drop(g);
        assert_eq!(log.seen()[2], ("panicked", true));
    });
}

#[test]
fn with_leaves_an_enclosing_sections_items_to_it() {
    let m = Arc::new(Mutex::new(0));
    let t = Target::Mutex(m.clone());
    let log = Log::default();
    let other = Target::Std(Arc::new(StdMutex::new(0)));
    let section = freeq::section();
    freeq::defer(log.probe("outer", &other));
    let mut g = m.try_lock().unwrap();
    g.with(|_| freeq::defer(log.probe("inner", &t)));
    assert_eq!(freeq::pending(), 1, "the outer item is back on the thread");
    assert_eq!(g.pending(), 1);
    drop(g); // the bin joins the open section's queue
    assert!(log.seen().is_empty(), "nothing freed inside the section");
    drop(section);
    assert_eq!(log.seen(), [("outer", true), ("inner", true)]);
}

fn marked() -> Box<[u8; MARK]> {
    Box::new([7u8; MARK])
}

#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so the probes are learned as costly: a plain drop sends them to freeq's reclaimer threads, and they are freed later, elsewhere"
)]
fn with_moves_held_allocator_frees_into_the_bin() {
    let m = Mutex::new(vec![marked(), marked(), marked()]);
    let before = MARKED_FREES.load(SeqCst);
    let mut g = m.try_lock().unwrap();
    g.with(|v| {
        *v = Vec::new(); // three marked blocks freed: held
        assert_eq!(MARKED_FREES.load(SeqCst), before);
        assert!(freeq::alloc::held().frees >= 4);
    });
    assert_eq!(freeq::alloc::held().frees, 0, "taken off the thread");
    assert_eq!(MARKED_FREES.load(SeqCst), before, "not freed yet");
    assert!(g.pending() >= 1);
    drop(g);
    assert_eq!(MARKED_FREES.load(SeqCst), before + 3);

    // Inside an enclosing section: its held frees stay its own, the
    // closure's go to the bin.
    let mut g = m.try_lock().unwrap();
    *g = vec![marked()];
    let before = MARKED_FREES.load(SeqCst);
    let section = freeq::section();
    drop(marked()); // held for the section
    g.with(|v| v.clear()); // held, then moved to the bin
    drop(g); // the bin joins the section's queue
    assert_eq!(MARKED_FREES.load(SeqCst), before);
    drop(section);
    assert_eq!(MARKED_FREES.load(SeqCst), before + 2);
}

#[test]
fn held_frees_moved_by_with_may_be_freed_on_another_thread() {
    let m = Arc::new(Mutex::new(vec![marked(), marked()]));
    let before = MARKED_FREES.load(SeqCst);
    let mut g = m.clone().try_lock_owned().unwrap();
    g.with(|v| v.clear());
    std::thread::spawn(move || drop(g)).join().unwrap();
    assert_eq!(MARKED_FREES.load(SeqCst), before + 2);
}

#[test]
fn a_downgraded_guard_frees_after_the_read_release() {
    current_thread().block_on(async {
        let lock = Arc::new(RwLock::new(0));
        let t = Target::RwLock(lock.clone());
        let log = Log::default();
        let mut w = lock.write().await;
        w.defer(log.probe("borrowed", &t));
        let r = w.downgrade();
        assert!(lock.try_read().is_ok());
        assert!(log.seen().is_empty());
        drop(r);
        assert_eq!(log.seen(), [("borrowed", true)]);

        // Owned, and through a mapped write guard.
        let mut w = lock.clone().write_owned().await;
        w.defer(log.probe("owned", &t));
        let r = w.downgrade();
        let r = freeq::tokio::OwnedRwLockReadGuard::map(r, |v| v);
        drop(r);
        let mut w = lock.write().await;
        w.defer(log.probe("mapped", &t));
        let mut w = freeq::tokio::RwLockWriteGuard::map(w, |v| v);
        *w += 1;
        w.unlock().await;
        assert_eq!(&log.seen()[1..], [("owned", true), ("mapped", true)]);
        let mut r = lock.read().await;
        r.defer(log.probe("read", &t));
        drop(r);
        assert_eq!(log.seen()[3], ("read", true));
    });
}

#[test]
fn async_guard_over_a_plain_tokio_guard_and_a_std_guard() {
    current_thread().block_on(async {
        let log = Log::default();
        let m = Arc::new(tokio::sync::Mutex::new(0));
        let t = Target::Tokio(m.clone());
        let mut g = AsyncGuard::new(m.lock().await);
        g.defer(log.probe("tokio", &t));
        *g += 1;
        let g = AsyncGuard::map_guard(g, |g| tokio::sync::MutexGuard::map(g, |v| v));
        g.unlock().await;
        assert_eq!(log.seen(), [("tokio", true)]);

        let s = Arc::new(StdMutex::new(0));
        let t = Target::Std(s.clone());
        let mut g = AsyncGuard::new(s.lock().unwrap());
        g.defer(log.probe("std", &t));
        g.with(|v| *v += 1);
        drop(g);
        assert_eq!(log.seen()[1], ("std", true));
        assert_eq!(*s.lock().unwrap(), 1);
    });
}

/// Serialises the tests that set the process-wide offload executor or
/// hand bins to freeq's reclaimers.
static OFFLOAD: StdMutex<()> = StdMutex::new(());

/// Takes a few milliseconds to drop. With a flag, its drop first waits
/// (up to 5 s) for the flag to be set, and records whether it was.
struct Costly {
    waiter_first: Option<WaiterFirst>,
}

/// The waiter's flag, and what costly drops saw of it.
type WaiterFirst = (Arc<std::sync::atomic::AtomicBool>, Arc<StdMutex<Vec<bool>>>);

impl Drop for Costly {
    fn drop(&mut self) {
        if let Some((flag, seen)) = &self.waiter_first {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !flag.load(SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(100));
            }
            seen.lock().unwrap().push(flag.load(SeqCst));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A plain drop of a guard whose bin is costly to free (its type's drop
/// cost learned by a first, inline free) lets the waiter the release woke
/// take the lock before the bin is freed, on a current-thread and on a
/// multi-thread runtime: the bin leaves the thread. (Freed in place, the
/// drop would wait 5 s for a waiter that cannot run, and record `false`.)
#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's reclaimer threads, which Miri calls leaked: run in the Tree Borrows pass"
)]
fn a_plain_drop_lets_a_queued_waiter_in_before_a_costly_bin() {
    let _serial = OFFLOAD.lock().unwrap_or_else(|e| e.into_inner());
    // The test waits for the reclaimers: at idle priority they may get no
    // CPU on a busy machine.
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    for rt in [current_thread(), multi_thread()] {
        rt.block_on(async {
            let m = Arc::new(Mutex::new(0));
            // Teach freeq the type's cost: the first bin is freed inline.
            let mut g = m.lock().await;
            g.defer(Costly { waiter_first: None });
            drop(g);
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = Arc::new(StdMutex::new(Vec::new()));
            let mut g = m.lock().await;
            g.defer(Costly {
                waiter_first: Some((flag.clone(), seen.clone())),
            });
            let (m2, f2) = (m.clone(), flag.clone());
            let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let s2 = started.clone();
            let waiter = tokio::spawn(async move {
                s2.store(true, SeqCst);
                let _g = m2.lock().await;
                f2.store(true, SeqCst);
            });
            // The waiter runs up to its `lock().await` and queues (on a
            // multi-thread runtime, on the other worker: give it time to
            // queue; if it has not, it takes the lock later, and the
            // outcome is the same).
            while !started.load(SeqCst) {
                tokio::task::yield_now().await;
            }
            std::thread::sleep(Duration::from_millis(20));
            drop(g);
            waiter.await.unwrap();
            freeq::quiesce();
            assert_eq!(*seen.lock().unwrap(), [true], "the waiter went first");
        });
    }
}

#[test]
fn the_bin_obeys_offload() {
    let _serial = OFFLOAD.lock().unwrap_or_else(|e| e.into_inner());
    // On a thread of its own: the policy is per thread.
    std::thread::spawn(|| {
        let handed: Arc<StdMutex<Vec<(usize, std::thread::ThreadId)>>> = Arc::default();
        let h = handed.clone();
        freeq::set_offload_executor(move |batch: freeq::Batch| {
            let n = batch.len();
            let h = h.clone();
            std::thread::spawn(move || {
                let id = std::thread::current().id();
                batch.free();
                h.lock().unwrap().push((n, id));
            })
            .join()
            .unwrap();
        });
        freeq::set_policy(freeq::Policy::Offload);
        /// A type the cost model has never timed: its batch is offloaded.
        struct Untimed {
            _probe: Probe,
        }
        let m = Arc::new(Mutex::new(0));
        let t = Target::Mutex(m.clone());
        let log = Log::default();
        let mut g = m.try_lock().unwrap();
        g.defer(Untimed {
            _probe: log.probe("offloaded", &t),
        });
        g.defer(Untimed {
            _probe: log.probe("offloaded", &t),
        });
        drop(g);
        freeq::set_policy(freeq::Policy::Inline);
        freeq::clear_offload_executor();
        let handed = handed.lock().unwrap();
        assert_eq!(handed.len(), 1, "one batch");
        assert_eq!(handed[0].0, 2, "with both items");
        assert_ne!(handed[0].1, std::thread::current().id());
        assert_eq!(log.seen(), [("offloaded", true), ("offloaded", true)]);
    })
    .join()
    .unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "crossbeam-epoch: run in the Tree Borrows pass")]
fn with_carries_retired_values_to_the_epoch_after_the_release() {
    let m = Arc::new(Mutex::new(0));
    let t = Target::Mutex(m.clone());
    let log = Log::default();
    let mut g = m.try_lock().unwrap();
    g.with(|_| freeq::retire(log.probe("retired", &t)));
    assert_eq!(g.pending(), 1);
    assert_eq!(freeq::pending(), 0);
    drop(g);
    // Freed once the epoch lets it go: pinning advances it.
    for _ in 0..10_000 {
        if !log.seen().is_empty() {
            break;
        }
        freeq::epoch::pin().flush();
    }
    assert_eq!(log.seen(), [("retired", true)]);
}

/// In steady state a guard allocates nothing: neither for one small value
/// (kept in the guard) nor for a few (a spare block of the thread's
/// queue), freed by a plain drop or by `unlock().await`.
#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so the probes are learned as costly: a plain drop sends them to freeq's reclaimer threads, and they are freed later, elsewhere"
)]
fn guards_allocate_nothing_in_steady_state() {
    let rt = current_thread();
    rt.block_on(async {
        let m = Mutex::new(vec![Box::new(0u64)]);
        const ROUNDS: usize = 200;
        let round = |values: Vec<Vec<Box<u64>>>, unlock: bool| {
            let m = &m;
            async move {
                let before = allocs();
                for (i, v) in values.into_iter().enumerate() {
                    let mut g = m.lock().await;
                    let old = std::mem::replace(&mut *g, v);
                    g.defer(old);
                    if i % 2 == 1 {
                        // Two more: the bin takes a block of the thread's.
                        g.defer(String::new());
                        g.defer_fn(|| ());
                    }
                    if unlock {
                        g.unlock().await;
                    } else {
                        drop(g);
                    }
                }
                allocs() - before
            }
        };
        let build = || {
            (0..ROUNDS as u64)
                .map(|i| vec![Box::new(i)])
                .collect::<Vec<_>>()
        };
        for unlock in [false, true] {
            // Warm up: the types timed, the thread's queue holding blocks.
            round(build(), unlock).await;
            let values = build();
            assert_eq!(round(values, unlock).await, 0, "unlock: {unlock}");
        }
    });
}

/// Takes 30 µs to drop: a bin holding one goes to a reclaimer.
struct Slow;

impl Drop for Slow {
    fn drop(&mut self) {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_micros(30) {
            std::hint::spin_loop();
        }
    }
}

/// Nothing is allocated under the lock in steady state, also when each
/// bin is costly and leaves the thread with its blocks: the thread keeps
/// blocks for the next bin (recycled ones, or new ones taken after the
/// release).
#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's reclaimer threads, which Miri calls leaked: run in the Tree Borrows pass"
)]
fn costly_bins_leave_without_allocating_under_the_next_lock() {
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    let rt = current_thread();
    rt.block_on(async {
        let m = Mutex::new(0u32);
        let mut under = 0;
        for round in 0..60 {
            let mut g = m.lock().await;
            let before = allocs();
            g.defer(Slow);
            g.defer(String::new());
            g.defer_fn(|| ());
            if round >= 20 {
                // The types are timed and the thread has blocks by now.
                under += allocs() - before;
            }
            drop(g);
        }
        assert_eq!(under, 0, "allocations under the lock");
    });
}
