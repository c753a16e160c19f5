//! `freeq::AsyncGuard` over other crates' async locks: async-lock's
//! `Mutex` and futures' `lock::Mutex`. A plain drop releases, then frees
//! the bin; a costly bin leaves the thread, so that a waiter queued on
//! the lock takes it before those frees, whatever runs the tasks (here
//! futures' single-thread executor and a tokio current-thread runtime).
//! Neither needs the runtime's help: the bin goes to freeq's reclaimers.

#![cfg(not(loom))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use freeq::AsyncGuard;

/// The two locks, behind one interface for the tests.
#[derive(Clone)]
enum Lock {
    AsyncLock(Arc<async_lock::Mutex<u32>>),
    Futures(Arc<futures::lock::Mutex<u32>>),
}

/// A held guard of either lock, wrapped.
enum Held<'a> {
    AsyncLock(AsyncGuard<async_lock::MutexGuard<'a, u32>>),
    Futures(AsyncGuard<futures::lock::MutexGuard<'a, u32>>),
}

impl Held<'_> {
    fn defer<V: Send + 'static>(&mut self, v: V) {
        match self {
            Held::AsyncLock(g) => g.defer(v),
            Held::Futures(g) => g.defer(v),
        }
    }

    fn with(&mut self, f: impl FnOnce()) {
        match self {
            Held::AsyncLock(g) => g.with(|_| f()),
            Held::Futures(g) => g.with(|_| f()),
        }
    }
}

impl Lock {
    fn both() -> [Lock; 2] {
        [
            Lock::AsyncLock(Arc::new(async_lock::Mutex::new(0))),
            Lock::Futures(Arc::new(futures::lock::Mutex::new(0))),
        ]
    }

    async fn lock(&self) -> Held<'_> {
        match self {
            Lock::AsyncLock(m) => Held::AsyncLock(AsyncGuard::new(m.lock().await)),
            Lock::Futures(m) => Held::Futures(AsyncGuard::new(m.lock().await)),
        }
    }

    fn is_free(&self) -> bool {
        match self {
            Lock::AsyncLock(m) => m.try_lock().is_some(),
            Lock::Futures(m) => m.try_lock().is_some(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Lock::AsyncLock(_) => "async-lock",
            Lock::Futures(_) => "futures",
        }
    }
}

/// Records, when dropped, whether its lock could be taken then.
struct Probe(Lock, Arc<StdMutex<Vec<bool>>>);

impl Drop for Probe {
    fn drop(&mut self) {
        let free = self.0.is_free();
        self.1.lock().unwrap().push(free);
    }
}

#[test]
fn a_plain_drop_releases_then_frees() {
    for lock in Lock::both() {
        futures::executor::block_on(async {
            let seen = Arc::new(StdMutex::new(Vec::new()));
            let mut g = lock.lock().await;
            g.defer(Probe(lock.clone(), seen.clone()));
            g.defer(Probe(lock.clone(), seen.clone()));
            assert!(seen.lock().unwrap().is_empty(), "{}", lock.name());
            drop(g);
            assert_eq!(*seen.lock().unwrap(), [true, true], "{}", lock.name());
        });
    }
}

#[test]
fn unlock_await_releases_then_frees() {
    for lock in Lock::both() {
        futures::executor::block_on(async {
            let seen = Arc::new(StdMutex::new(Vec::new()));
            let mut g = lock.lock().await;
            g.defer(Probe(lock.clone(), seen.clone()));
            match g {
                Held::AsyncLock(g) => g.unlock().await,
                Held::Futures(g) => g.unlock().await,
            }
            assert_eq!(*seen.lock().unwrap(), [true], "{}", lock.name());
        });
    }
}

/// Takes a few milliseconds to drop. With a flag, its drop first waits
/// (up to 5 s) for the flag, and records whether it was set.
struct Costly(Option<WaiterFirst>);

/// The waiter's flag, and what costly drops saw of it.
type WaiterFirst = (Arc<AtomicBool>, Arc<StdMutex<Vec<bool>>>);

impl Drop for Costly {
    fn drop(&mut self) {
        if let Some((flag, seen)) = &self.0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !flag.load(SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(100));
            }
            seen.lock().unwrap().push(flag.load(SeqCst));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One round on `spawn`'s executor: a guard's costly bin, a waiter queued
/// on the lock, a plain drop; returns whether the waiter had the lock
/// before the bin was freed.
async fn waiter_goes_first(
    lock: Lock,
    spawn: impl Fn(Pin<Box<dyn Future<Output = ()> + Send>>),
    heavy: bool,
) -> Vec<bool> {
    if !heavy {
        // Teach freeq the type's cost: the first bin is freed inline.
        let mut g = lock.lock().await;
        g.defer(Costly(None));
        drop(g);
    }
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let started = Arc::new(AtomicBool::new(false));
    let mut g = lock.lock().await;
    let costly = Costly(Some((flag.clone(), seen.clone())));
    if heavy {
        // Sent off whatever freeq has learned of the type.
        g.with(move || freeq::defer_heavy(costly));
    } else {
        g.defer(costly);
    }
    let (l2, f2, s2) = (lock.clone(), flag.clone(), started.clone());
    spawn(Box::pin(async move {
        s2.store(true, SeqCst);
        let _g = l2.lock().await;
        f2.store(true, SeqCst);
    }));
    // Let the waiter run up to its `lock().await`, and queue there.
    while !started.load(SeqCst) {
        yield_once().await;
    }
    drop(g);
    while !flag.load(SeqCst) {
        yield_once().await;
    }
    freeq::quiesce();
    seen.lock().unwrap().clone()
}

/// Returns `Pending` once, waking the task first.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// [`waiter_goes_first`] on a tokio current-thread runtime.
fn on_tokio(lock: &Lock, heavy: bool) -> Vec<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(waiter_goes_first(
        lock.clone(),
        |f| {
            tokio::spawn(f);
        },
        heavy,
    ))
}

/// A plain drop of a guard whose bin is costly to free lets a waiter
/// queued on the lock take it before the bin is freed, on futures'
/// single-thread executor and on a tokio current-thread runtime: the bin
/// goes to freeq's reclaimers. (Freed in place, the drop would wait 5 s
/// for a waiter that cannot run on that one thread, and record `false`.)
#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked"
)]
fn a_plain_drop_lets_a_queued_waiter_in_before_a_costly_bin() {
    // The test waits for the reclaimers: at idle priority they may get no
    // CPU on a busy machine.
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    for lock in Lock::both() {
        let mut pool = futures::executor::LocalPool::new();
        let spawner = pool.spawner();
        let seen = pool.run_until(waiter_goes_first(
            lock.clone(),
            move |f| {
                futures::task::LocalSpawnExt::spawn_local(&spawner, f).unwrap();
            },
            false,
        ));
        assert_eq!(seen, [true], "{} on futures' executor", lock.name());

        assert_eq!(on_tokio(&lock, false), [true], "{} on tokio", lock.name());
    }
}

/// `defer_heavy` inside `with` sends a value off the releasing thread
/// whatever freeq has learned of its type (here: nothing yet), so the
/// waiter goes first from the very first value.
#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked"
)]
fn defer_heavy_inside_with_sends_a_value_off_from_the_first() {
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    for lock in Lock::both() {
        assert_eq!(on_tokio(&lock, true), [true], "{}", lock.name());
    }
}

/// Logs its number when dropped; `panics` makes its drop panic after
/// logging, `defers` makes it defer another that logs `defers`.
struct Step {
    n: u32,
    log: Arc<StdMutex<Vec<u32>>>,
    panics: bool,
    defers: Option<u32>,
}

impl Drop for Step {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(self.n);
        if let Some(n) = self.defers {
            freeq::defer(Step {
                n,
                log: self.log.clone(),
                panics: false,
                defers: None,
            });
        }
        if self.panics {
            panic!("step {}", self.n);
        }
    }
}

fn step(n: u32, log: &Arc<StdMutex<Vec<u32>>>) -> Step {
    Step {
        n,
        log: log.clone(),
        panics: false,
        defers: None,
    }
}

/// A guard that deferred one small value (kept in the guard itself, and
/// freed without the thread's queue once its type is timed) frees it
/// after the release, in order with what else the bin holds and with
/// what its free defers, and keeps a panicking free's semantics: the rest
/// runs, the first panic resumes after, the lock is released.
#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so learned as costly: a plain drop sends it to freeq's reclaimer threads, which Miri reports as leaked"
)]
fn one_small_value_frees_in_order_after_the_release() {
    for lock in Lock::both() {
        let name = lock.name();
        futures::executor::block_on(async {
            let log = Arc::new(StdMutex::new(Vec::new()));
            // The first rounds time the type; the later ones free it in
            // place, without the queue.
            for _ in 0..3 {
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                drop(g);
                assert!(lock.is_free(), "{name}");
                assert_eq!(*log.lock().unwrap(), [1], "{name}");

                // With what `with` caught behind it.
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                let l = log.clone();
                g.with(move || freeq::defer(step(2, &l)));
                g.defer(step(3, &log));
                drop(g);
                assert_eq!(*log.lock().unwrap(), [1, 2, 3], "{name}");

                // What its free defers is freed after it, before the drop
                // returns.
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                let mut s = step(1, &log);
                s.defers = Some(2);
                g.defer(s);
                drop(g);
                assert_eq!(*log.lock().unwrap(), [1, 2], "{name}");

                // A panicking free: the drop panics with it, after the
                // release and after the rest.
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                let mut s = step(1, &log);
                s.panics = true;
                s.defers = Some(2);
                g.defer(s);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(g)));
                let msg = r.unwrap_err().downcast::<String>().unwrap();
                assert_eq!(*msg, "step 1", "{name}");
                assert!(lock.is_free(), "{name}");
                assert_eq!(*log.lock().unwrap(), [1, 2], "{name}");

                // Inside a section of the dropping thread, it waits for
                // the section's end.
                log.lock().unwrap().clear();
                let section = freeq::section();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                drop(g);
                assert!(lock.is_free(), "{name}");
                assert!(log.lock().unwrap().is_empty(), "{name}");
                drop(section);
                assert_eq!(*log.lock().unwrap(), [1], "{name}");

                // Freed by `unlock().await` (by the call once the type is
                // known to be cheap, after the yield before), a panicking
                // value is dropped once, the panic resumed.
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                let mut s = step(1, &log);
                s.panics = true;
                g.defer(s);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut f = std::pin::pin!(unlock(g));
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    while f.as_mut().poll(&mut cx).is_pending() {}
                }));
                assert!(r.is_err(), "{name}");
                assert!(lock.is_free(), "{name}");
                assert_eq!(*log.lock().unwrap(), [1], "{name}");

                // `unlock().await` frees it.
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                match g {
                    Held::AsyncLock(g) => g.unlock().await,
                    Held::Futures(g) => g.unlock().await,
                }
                assert_eq!(*log.lock().unwrap(), [1], "{name}");
            }
        });
    }
}

/// `unlock().await` on either guard.
async fn unlock(g: Held<'_>) {
    unlock_now(g).await
}

/// `unlock()` on either guard: released now; the future frees the bin.
fn unlock_now(g: Held<'_>) -> freeq::AsyncUnlock {
    match g {
        Held::AsyncLock(g) => g.unlock(),
        Held::Futures(g) => g.unlock(),
    }
}

/// `unlock()` releases the lock when it is called. Its future yields once
/// before it frees a bin a waiter should not wait for (a type freeq has
/// not timed yet, a costly one), and frees one value of a type known to
/// be cheap at the call, with no yield (a plain drop frees that in place
/// too). Dropped unawaited, it frees the bin as a plain drop does.
#[test]
#[cfg_attr(
    miri,
    ignore = "under Miri every free is slow, so never learned as cheap; and the plain drop of a costly bin starts freeq's reclaimer threads, which Miri reports as leaked"
)]
fn unlock_releases_at_the_call_and_yields_only_before_costly_frees() {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Waker};

    /// Takes a millisecond to drop: costly once timed.
    struct Slow(Arc<AtomicUsize>);
    impl Drop for Slow {
        fn drop(&mut self) {
            std::thread::sleep(Duration::from_millis(1));
            self.0.fetch_add(1, SeqCst);
        }
    }
    /// Cheap to drop.
    struct Quick(Arc<AtomicUsize>);
    impl Drop for Quick {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    for lock in Lock::both() {
        let name = lock.name();
        futures::executor::block_on(async {
            let mut cx = Context::from_waker(Waker::noop());
            let slow = Arc::new(AtomicUsize::new(0));
            // Not timed yet, then learned as costly: one yield, then the
            // free, on this thread.
            for round in 1..=3 {
                let mut g = lock.lock().await;
                g.defer(Slow(slow.clone()));
                let mut f = unlock_now(g);
                assert!(lock.is_free(), "{name}: released by the call");
                assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Pending, "{name}");
                assert_eq!(slow.load(SeqCst), round - 1, "{name}: not before the yield");
                assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(()), "{name}");
                assert_eq!(slow.load(SeqCst), round, "{name}: freed after it");
            }
            // Dropped unawaited: freed as a plain drop frees a costly bin
            // (by a reclaimer: `quiesce` waits for it).
            let mut g = lock.lock().await;
            g.defer(Slow(slow.clone()));
            let f = unlock_now(g);
            assert!(lock.is_free(), "{name}");
            drop(f);
            freeq::quiesce();
            assert_eq!(slow.load(SeqCst), 4, "{name}");

            // A cheap type: once timed as such (a first timing that caught
            // a preemption is corrected by the later ones), freed by the
            // call itself, and the future is ready at once.
            let quick = Arc::new(AtomicUsize::new(0));
            let mut freed_by_the_call = false;
            for round in 1..=2000 {
                let mut g = lock.lock().await;
                g.defer(Quick(quick.clone()));
                let mut f = unlock_now(g);
                assert!(lock.is_free(), "{name}");
                if quick.load(SeqCst) == round {
                    assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(()), "{name}");
                    freed_by_the_call = true;
                    break;
                }
                f.await;
                freeq::quiesce();
                assert_eq!(quick.load(SeqCst), round, "{name}");
            }
            assert!(freed_by_the_call, "{name}: never learned as cheap");
        });
    }
}

/// The guard's own slot for one small value, under Miri too: written,
/// read back once, put back when it may not be freed at once, moved into
/// the queue ahead of later values and caught ones, and freed by
/// `unlock().await` (whatever its type is learned to cost: in place, after
/// the yield) and at the end of an enclosing section.
#[test]
fn one_small_value_moves_and_frees_exactly_once() {
    for lock in Lock::both() {
        let name = lock.name();
        futures::executor::block_on(async {
            let log = Arc::new(StdMutex::new(Vec::new()));
            for _ in 0..3 {
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                unlock(g).await;
                assert_eq!(*log.lock().unwrap(), [1], "{name}");

                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                let l = log.clone();
                g.with(move || freeq::defer(step(2, &l)));
                g.defer(step(3, &log));
                unlock(g).await;
                assert_eq!(*log.lock().unwrap(), [1, 2, 3], "{name}");

                // Dropped inside a section: freed at its end, in place.
                log.lock().unwrap().clear();
                let section = freeq::section();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                drop(g);
                assert!(lock.is_free(), "{name}");
                assert!(log.lock().unwrap().is_empty(), "{name}");
                drop(section);
                assert_eq!(*log.lock().unwrap(), [1], "{name}");

                // A value cheap enough to free in place (in Miri too,
                // where most frees are learned as costly): it holds
                // nothing.
                static HITS: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                struct Hit;
                impl Drop for Hit {
                    fn drop(&mut self) {
                        HITS.fetch_add(1, SeqCst);
                    }
                }
                let before = HITS.load(SeqCst);
                for _ in 0..20 {
                    let mut g = lock.lock().await;
                    g.defer(Hit);
                    unlock(g).await;
                }
                assert_eq!(HITS.load(SeqCst) - before, 20, "{name}");

                // A guard mapped, keeping its slot.
                log.lock().unwrap().clear();
                let mut g = lock.lock().await;
                g.defer(step(1, &log));
                let g = match g {
                    Held::AsyncLock(g) => Held::AsyncLock(AsyncGuard::map_guard(g, |g| g)),
                    Held::Futures(g) => Held::Futures(AsyncGuard::map_guard(g, |g| g)),
                };
                unlock(g).await;
                assert_eq!(*log.lock().unwrap(), [1], "{name}");
            }
        });
    }
}
