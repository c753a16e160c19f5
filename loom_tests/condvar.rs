//! loom models of `freeq::RawDeferredCondvar`: wait and notify through
//! `lock_api::Condvar` with a `lock_api::Mutex<freeq::RawDeferred<_>, _>`
//! over a loom spin lock, so every interleaving of the waiter's register,
//! release, drain, park and re-lock with the notifier's lock and notify is
//! explored.
//!
//! Run with `scripts/loom.sh` (every model), or this target alone:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test
//! --release --test loom_condvar --target-dir target/loom`.
//!
//! Without `--cfg loom` the whole file compiles to nothing, so a plain
//! `cargo test` lists this target with `running 0 tests`; that is expected.
#![cfg(loom)]

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::time::{Duration, Instant};

use loom::sync::atomic::AtomicBool;
use loom::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use loom::thread::{self, ThreadId};

/// A lock_api 0.5 raw spin lock over a loom `AtomicBool`; waiting threads
/// `yield_now`, which tells loom to run someone else. It records which
/// loom thread holds it, so a free can check that its own thread does not.
/// The record is a `std` mutex: loom runs one model thread at a time, and
/// leaving the bookkeeping untracked keeps the interleavings down to the
/// lock and the condvar.
struct LoomRawMutex {
    locked: AtomicBool,
    owner: StdMutex<Option<ThreadId>>,
}

impl LoomRawMutex {
    /// An unlocked mutex; only callable inside a loom model.
    fn new() -> Self {
        LoomRawMutex {
            locked: AtomicBool::new(false),
            owner: StdMutex::new(None),
        }
    }

    /// Whether the calling thread holds this lock.
    fn held_here(&self) -> bool {
        *self.owner.lock().unwrap() == Some(thread::current().id())
    }
}

// SAFETY: the flag goes false -> true only through a successful
// compare-exchange (Acquire), so one guard state exists at a time, and
// `unlock` publishes the critical section with a Release store.
unsafe impl lock_api::RawMutex for LoomRawMutex {
    // A loom atomic registers itself with the running model, so it cannot
    // be built in a `const`: mutexes are built with `LoomRawMutex::new()`
    // and `lock_api::Mutex::from_raw`.
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = panic!("LoomRawMutex needs a running loom model");

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
                *self.owner.lock().unwrap() = Some(thread::current().id());
                lock_api::GuardNoSend::new()
            })
    }

    unsafe fn unlock(&self, _guard: Self::Guard) {
        *self.owner.lock().unwrap() = None;
        self.locked.store(false, Release);
    }

    fn is_locked(&self) -> bool {
        self.locked.load(Relaxed)
    }
}

// SAFETY: both methods acquire only through `try_lock`, as above.
unsafe impl lock_api::RawMutexTimed for LoomRawMutex {
    type Duration = Duration;
    type Instant = Instant;

    // loom has no clock: a timed attempt is one attempt. The models only
    // need the trait for timed condvar waits, which re-lock with `lock`.
    fn try_lock_for(&self, _timeout: Duration) -> Option<Self::Guard> {
        lock_api::RawMutex::try_lock(self)
    }

    fn try_lock_until(&self, _timeout: Instant) -> Option<Self::Guard> {
        lock_api::RawMutex::try_lock(self)
    }
}

type Mutex<T> = lock_api::Mutex<freeq::RawDeferred<LoomRawMutex>, T>;
type Condvar = lock_api::Condvar<freeq::RawDeferredCondvar<LoomRawMutex>>;

/// A mutex and a condvar shared by the model's threads.
fn pair<T>(value: T) -> Arc<(Mutex<T>, Condvar)> {
    Arc::new((
        lock_api::Mutex::from_raw(freeq::RawDeferred::from_raw(LoomRawMutex::new()), value),
        Condvar::new(),
    ))
}

/// Whether the calling thread holds `m`.
fn held_here<T>(m: &Mutex<T>) -> bool {
    // SAFETY: the raw lock is only inspected, never locked or unlocked.
    unsafe { m.raw() }.inner().held_here()
}

/// A deferred value that counts its frees and asserts, when freed, that
/// its thread is outside every section and does not hold the mutex.
struct Probe<T: Send + 'static> {
    freed: Arc<StdAtomicUsize>,
    pair: Arc<(Mutex<T>, Condvar)>,
}

impl<T: Send + 'static> Drop for Probe<T> {
    fn drop(&mut self) {
        assert!(!freeq::in_section(), "freed inside a section");
        assert!(!held_here(&self.pair.0), "freed while holding the lock");
        let prev = self.freed.fetch_add(1, Relaxed);
        assert_eq!(prev, 0, "freed twice");
    }
}

/// The notifier's half: set the flag under the lock, then notify.
fn notify_flag(pair: Arc<(Mutex<bool>, Condvar)>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let (m, cv) = &*pair;
        *m.lock() = true;
        cv.notify_one();
    })
}

// Catches a lost wakeup: a waiter that releases the lock before it is
// registered can miss a notify sent in between and park forever (loom
// reports the deadlock), and a wait that returns without the flag set
// would be a spurious wakeup.
#[test]
fn wait_while_sees_the_flag() {
    loom::model(|| {
        let pair = pair(false);
        let notifier = notify_flag(pair.clone());
        let (m, cv) = &*pair;
        let mut g = m.lock();
        cv.wait_while(&mut g, |ready| !*ready);
        assert!(*g);
        assert!(freeq::in_section());
        assert!(held_here(m));
        drop(g);
        assert!(!freeq::in_section());
        notifier.join().unwrap();
    });
}

// Catches a wait that frees the waiter's pending items while it still
// holds the lock or its section (before the release), frees them twice,
// or only after it wakes: the probe must be freed, once, outside any
// section and without the lock, by the time the wait returns.
#[test]
fn wait_frees_pending_after_release_before_return() {
    loom::model(|| {
        let pair = pair(false);
        let freed = Arc::new(StdAtomicUsize::new(0));
        let notifier = notify_flag(pair.clone());
        let (m, cv) = &*pair;
        let mut g = m.lock();
        freeq::defer(Probe {
            freed: freed.clone(),
            pair: pair.clone(),
        });
        assert_eq!(freeq::pending(), 1);
        cv.wait_while(&mut g, |ready| !*ready);
        if freeq::pending() == 1 {
            // The flag was already set when the waiter first checked it:
            // no wait, so nothing was freed yet.
            assert_eq!(freed.load(Relaxed), 0);
        } else {
            assert_eq!(freed.load(Relaxed), 1, "not freed by the wait");
        }
        assert!(freeq::in_section());
        drop(g);
        assert_eq!(freeq::pending(), 0);
        assert_eq!(freed.load(Relaxed), 1);
        notifier.join().unwrap();
    });
}

// Catches a wait that drains although the thread is still inside another
// section (here a bare `Section` around the lock): the probe's drop would
// find itself in a section.
#[test]
fn wait_inside_another_section_keeps_pending() {
    loom::model(|| {
        let pair = pair(false);
        let freed = Arc::new(StdAtomicUsize::new(0));
        let notifier = notify_flag(pair.clone());
        let (m, cv) = &*pair;
        let outer = freeq::section();
        let mut g = m.lock();
        freeq::defer(Probe {
            freed: freed.clone(),
            pair: pair.clone(),
        });
        cv.wait_while(&mut g, |ready| !*ready);
        drop(g);
        assert_eq!(freed.load(Relaxed), 0, "freed inside the outer section");
        drop(outer);
        assert_eq!(freed.load(Relaxed), 1);
        notifier.join().unwrap();
    });
}

// Catches a timed wait that never returns once its deadline has passed
// (loom reports the parked waiter as a deadlock), and a wait whose
// timed-out result disagrees with the notifier's count: the notify and the
// timeout race, and exactly one of them must win.
#[test]
fn timed_wait_racing_notify_agrees_on_who_won() {
    loom::model(|| {
        let pair = pair(());
        let notifier = {
            let pair = pair.clone();
            thread::spawn(move || pair.1.notify_one())
        };
        let (m, cv) = &*pair;
        let mut g = m.lock();
        // A zero timeout: the deadline has passed at the first check, so
        // the outcome does not depend on the clock.
        let res = cv.wait_for(&mut g, Duration::ZERO);
        assert!(freeq::in_section());
        assert!(held_here(m));
        drop(g);
        let notified = notifier.join().unwrap();
        assert_eq!(notified, !res.timed_out());
    });
}

// Catches a notify_all that miscounts or misses a waiter: the waiter must
// wake (loom reports a deadlock otherwise), and the count is exact: 1 if
// the waiter had registered (it counts itself under the lock and registers
// before releasing it), else 0.
#[test]
fn notify_all_counts_exactly() {
    loom::model(|| {
        let pair = pair((false, 0usize));
        let waiter = {
            let pair = pair.clone();
            thread::spawn(move || {
                let (m, cv) = &*pair;
                let mut g = m.lock();
                g.1 += 1;
                cv.wait_while(&mut g, |s| !s.0);
            })
        };
        let (m, cv) = &*pair;
        let mut g = m.lock();
        g.0 = true;
        let waiting = g.1;
        assert_eq!(cv.notify_all(), waiting);
        assert_eq!(cv.notify_all(), 0);
        drop(g);
        waiter.join().unwrap();
    });
}
