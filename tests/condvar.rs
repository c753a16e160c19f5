//! Condition variables and the freeq contract: `freeq::Condvar` with
//! `freeq::Mutex` (std's API, poisoning kept) and
//! `freeq::parking_lot::Condvar` with `freeq::parking_lot::Mutex`
//! (parking_lot's API, exact notify counts).
//!
//! While a thread waits its lock is released; if that lock was its only
//! section, its pending items are freed after the release and before it
//! blocks; the section is re-entered when the wait returns with the lock.
//! Tests that need another thread to act wait for it with a deadline, so a
//! broken condvar fails a test instead of hanging it.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex as StdMutex, TryLockError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use freeq::{defer, in_section, pending};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// How long a test waits for another thread before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a [`Probe`] saw when it was freed.
#[derive(Default)]
struct Record {
    /// Times the probe was freed.
    freed: AtomicUsize,
    /// The probe was freed while its thread was inside a section.
    freed_in_section: AtomicBool,
}

impl Record {
    fn new() -> Arc<Record> {
        Arc::new(Record::default())
    }

    fn freed(&self) -> usize {
        self.freed.load(SeqCst)
    }

    fn freed_in_section(&self) -> bool {
        self.freed_in_section.load(SeqCst)
    }
}

/// A deferred value that records its free and runs an extra action then.
struct Probe {
    rec: Arc<Record>,
    then: Option<Box<dyn FnOnce() + Send>>,
}

impl Probe {
    fn new(rec: &Arc<Record>) -> Probe {
        Probe {
            rec: rec.clone(),
            then: None,
        }
    }

    fn then(rec: &Arc<Record>, f: impl FnOnce() + Send + 'static) -> Probe {
        Probe {
            rec: rec.clone(),
            then: Some(Box::new(f)),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if in_section() {
            self.rec.freed_in_section.store(true, SeqCst);
        }
        self.rec.freed.fetch_add(1, SeqCst);
        if let Some(f) = self.then.take() {
            f();
        }
    }
}

/// Polls `cond` until it holds or [`PATIENCE`] runs out; returns whether it
/// held.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Runs a test body on its own thread and fails the test if it has not
/// finished within three times [`PATIENCE`], so a wait that never returns
/// fails instead of hanging the run.
fn within(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(PATIENCE * 3) {
        Ok(()) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: report its panic.
            panic::resume_unwind(t.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test body hung"),
    }
}

/// An ordered log of named events, shared between threads.
#[derive(Clone, Default)]
struct Events(Arc<StdMutex<Vec<&'static str>>>);

impl Events {
    fn push(&self, e: &'static str) {
        self.0.lock().unwrap().push(e);
    }

    fn get(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().clone()
    }
}

/// Payload of the panics these tests raise on purpose.
#[derive(Debug, PartialEq)]
struct Boom(u32);

/// Panics with `Boom(id)` without running the panic hook (no noise).
fn boom(id: u32) -> ! {
    panic::resume_unwind(Box::new(Boom(id)))
}

fn boom_id(payload: Box<dyn std::any::Any + Send>) -> u32 {
    match payload.downcast::<Boom>() {
        Ok(b) => b.0,
        Err(other) => panic::resume_unwind(other),
    }
}

type StdPair<T> = Arc<(freeq::Mutex<T>, freeq::Condvar)>;
type PlPair<T> = Arc<(freeq::parking_lot::Mutex<T>, freeq::parking_lot::Condvar)>;

fn std_pair<T>(v: T) -> StdPair<T> {
    Arc::new((freeq::Mutex::new(v), freeq::Condvar::new()))
}

fn pl_pair<T>(v: T) -> PlPair<T> {
    Arc::new((
        freeq::parking_lot::Mutex::new(v),
        freeq::parking_lot::Condvar::new(),
    ))
}

// ---------------------------------------------------------------------------
// Producer / consumer
// ---------------------------------------------------------------------------

const PRODUCERS: usize = 2;
const CONSUMERS: usize = 2;
const ITEMS: usize = 200;

#[derive(Default)]
struct Jobs {
    queue: VecDeque<(usize, Probe)>,
    done: bool,
}

/// Producers push probes, consumers pop them and `defer` them: every item
/// is consumed once and freed once, outside any section.
#[test]
fn std_producer_consumer() {
    within(|| {
        let pair = std_pair(Jobs::default());
        let rec = Record::new();
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let pair = pair.clone();
                thread::spawn(move || {
                    let (m, cv) = &*pair;
                    let mut got = Vec::new();
                    loop {
                        let mut g = cv
                            .wait_while(m.lock().unwrap(), |j| j.queue.is_empty() && !j.done)
                            .unwrap();
                        assert!(in_section());
                        match g.queue.pop_front() {
                            Some((n, probe)) => {
                                got.push(n);
                                defer(probe);
                                assert_eq!(pending(), 1);
                            }
                            None => {
                                assert!(g.done);
                                break;
                            }
                        }
                        drop(g);
                        assert_eq!(pending(), 0);
                    }
                    got
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (pair, rec) = (pair.clone(), rec.clone());
                thread::spawn(move || {
                    let (m, cv) = &*pair;
                    for i in 0..ITEMS {
                        m.lock()
                            .unwrap()
                            .queue
                            .push_back((p * ITEMS + i, Probe::new(&rec)));
                        cv.notify_one();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        pair.0.lock().unwrap().done = true;
        pair.1.notify_all();
        let mut all: Vec<usize> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..PRODUCERS * ITEMS).collect::<Vec<_>>());
        assert_eq!(rec.freed(), PRODUCERS * ITEMS);
        assert!(!rec.freed_in_section());
    });
}

#[test]
fn parking_lot_producer_consumer() {
    within(|| {
        let pair = pl_pair(Jobs::default());
        let rec = Record::new();
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let pair = pair.clone();
                thread::spawn(move || {
                    let (m, cv) = &*pair;
                    let mut got = Vec::new();
                    loop {
                        let mut g = m.lock();
                        cv.wait_while(&mut g, |j| j.queue.is_empty() && !j.done);
                        assert!(in_section());
                        match g.queue.pop_front() {
                            Some((n, probe)) => {
                                got.push(n);
                                defer(probe);
                                assert_eq!(pending(), 1);
                            }
                            None => {
                                assert!(g.done);
                                break;
                            }
                        }
                        drop(g);
                        assert_eq!(pending(), 0);
                    }
                    got
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (pair, rec) = (pair.clone(), rec.clone());
                thread::spawn(move || {
                    let (m, cv) = &*pair;
                    for i in 0..ITEMS {
                        m.lock().queue.push_back((p * ITEMS + i, Probe::new(&rec)));
                        cv.notify_one();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        pair.0.lock().done = true;
        pair.1.notify_all();
        let mut all: Vec<usize> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..PRODUCERS * ITEMS).collect::<Vec<_>>());
        assert_eq!(rec.freed(), PRODUCERS * ITEMS);
        assert!(!rec.freed_in_section());
    });
}

// ---------------------------------------------------------------------------
// Timeouts: the lock is held again and the section re-entered
// ---------------------------------------------------------------------------

/// Whether another thread can take the std-backed lock right now
/// (poisoned or not).
fn std_free_elsewhere<T: Send>(m: &freeq::Mutex<T>) -> bool {
    thread::scope(|s| {
        s.spawn(|| !matches!(m.try_lock(), Err(TryLockError::WouldBlock)))
            .join()
            .unwrap()
    })
}

fn pl_free_elsewhere<T: Send>(m: &freeq::parking_lot::Mutex<T>) -> bool {
    thread::scope(|s| s.spawn(|| m.try_lock().is_some()).join().unwrap())
}

#[test]
fn std_wait_timeout_expires_holding_the_lock() {
    within(|| {
        let m = freeq::Mutex::new(5u32);
        let cv = freeq::Condvar::new();
        let before = Record::new();
        let after = Record::new();

        let mut g = m.lock().unwrap();
        defer(Probe::new(&before));
        let start = Instant::now();
        let (mut g2, res) = cv.wait_timeout(g, Duration::from_millis(30)).unwrap();
        assert!(res.timed_out());
        assert!(start.elapsed() >= Duration::from_millis(30));
        // Freed during the wait (the mutex was the only section), not in one.
        assert_eq!(before.freed(), 1);
        assert!(!before.freed_in_section());
        // The lock is held again and the section re-entered.
        assert!(in_section());
        assert!(!std_free_elsewhere(&m));
        *g2 += 1;
        defer(Probe::new(&after));
        assert_eq!(pending(), 1);
        assert_eq!(after.freed(), 0);
        drop(g2);
        assert_eq!(after.freed(), 1);
        assert!(!after.freed_in_section());
        assert!(!in_section());
        assert!(std_free_elsewhere(&m));

        // wait_timeout_while: times out while the condition holds...
        g = m.lock().unwrap();
        let (g, res) = cv
            .wait_timeout_while(g, Duration::from_millis(20), |v| *v == 6)
            .unwrap();
        assert!(res.timed_out());
        assert!(in_section());
        assert_eq!(*g, 6);
        // ...and returns at once when it does not.
        let (g, res) = cv
            .wait_timeout_while(g, Duration::from_secs(3600), |v| *v != 6)
            .unwrap();
        assert!(!res.timed_out());
        assert!(in_section());
        drop(g);
        assert!(!in_section());
    });
}

#[test]
fn parking_lot_wait_for_expires_holding_the_lock() {
    within(|| {
        let m = freeq::parking_lot::Mutex::new(5u32);
        let cv = freeq::parking_lot::Condvar::new();
        let before = Record::new();
        let after = Record::new();

        let mut g = m.lock();
        defer(Probe::new(&before));
        let start = Instant::now();
        let res = cv.wait_for(&mut g, Duration::from_millis(30));
        assert!(res.timed_out());
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(before.freed(), 1);
        assert!(!before.freed_in_section());
        assert!(in_section());
        assert!(!pl_free_elsewhere(&m));
        *g += 1;
        defer(Probe::new(&after));
        assert_eq!(pending(), 1);
        drop(g);
        assert_eq!(after.freed(), 1);
        assert!(!after.freed_in_section());
        assert!(!in_section());

        // wait_until, and the wait_while_* forms.
        let mut g = m.lock();
        let res = cv.wait_until(&mut g, Instant::now() + Duration::from_millis(10));
        assert!(res.timed_out());
        assert!(in_section());
        assert!(!pl_free_elsewhere(&m));
        let res = cv.wait_while_for(&mut g, |v| *v == 6, Duration::from_millis(10));
        assert!(res.timed_out());
        let res = cv.wait_while_until(
            &mut g,
            |v| *v == 6,
            Instant::now() + Duration::from_millis(10),
        );
        assert!(res.timed_out());
        let res = cv.wait_while_for(&mut g, |v| *v != 6, Duration::from_secs(3600));
        assert!(!res.timed_out());
        assert!(in_section());
        drop(g);
        assert!(!in_section());
        assert!(pl_free_elsewhere(&m));
    });
}

/// A notification sent while nobody waits is not remembered.
#[test]
fn notifications_are_not_buffered() {
    within(|| {
        let (m, cv) = (freeq::Mutex::new(()), freeq::Condvar::new());
        cv.notify_one();
        cv.notify_all();
        let (_g, res) = cv
            .wait_timeout(m.lock().unwrap(), Duration::from_millis(10))
            .unwrap();
        assert!(res.timed_out());

        let (m, cv) = (
            freeq::parking_lot::Mutex::new(()),
            freeq::parking_lot::Condvar::new(),
        );
        assert!(!cv.notify_one());
        assert_eq!(cv.notify_all(), 0);
        let mut g = m.lock();
        assert!(cv.wait_for(&mut g, Duration::from_millis(10)).timed_out());
    });
}

// ---------------------------------------------------------------------------
// Pending items are freed after the release and before the wait blocks
// ---------------------------------------------------------------------------

/// Shared by the drain-before-block tests: the notifier waits until the
/// waiter's deferred probe has been freed and only then notifies, so the
/// waiter can only wake if the free happened while it was (about to be)
/// blocked. If the free never comes, the notifier notifies anyway after
/// [`PATIENCE`] and the test fails instead of hanging.
struct DrainBeforeBlock {
    rec: Arc<Record>,
    events: Events,
    /// Set by the probe's drop: whether the mutex was free at that moment.
    lock_was_free: Arc<AtomicBool>,
}

impl DrainBeforeBlock {
    fn new() -> Self {
        DrainBeforeBlock {
            rec: Record::new(),
            events: Events::default(),
            lock_was_free: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The notifier's half: wait for the free, then `notify`.
    fn notifier(&self, notify: impl FnOnce() + Send + 'static) -> thread::JoinHandle<bool> {
        let events = self.events.clone();
        thread::spawn(move || {
            // The probe records "freed" last in its drop, so this also waits
            // for the free to finish.
            let seen = eventually(|| events.get().contains(&"freed"));
            events.push("notify");
            notify();
            seen
        })
    }

    fn check(self, notifier: thread::JoinHandle<bool>) {
        assert!(
            notifier.join().unwrap(),
            "the waiter's pending item was not freed while it waited"
        );
        assert_eq!(self.events.get(), ["freed", "notify", "woke"]);
        assert_eq!(self.rec.freed(), 1);
        assert!(!self.rec.freed_in_section());
        assert!(self.lock_was_free.load(SeqCst));
    }
}

#[test]
fn std_wait_frees_pending_before_blocking() {
    within(|| {
        let t = DrainBeforeBlock::new();
        let pair = std_pair(false);
        let notifier = {
            let pair = pair.clone();
            t.notifier(move || {
                *pair.0.lock().unwrap() = true;
                pair.1.notify_one();
            })
        };
        let (m, cv) = &*pair;
        let g = m.lock().unwrap();
        let probe = {
            let (pair, events, free) = (pair.clone(), t.events.clone(), t.lock_was_free.clone());
            Probe::then(&t.rec, move || {
                // Nobody else takes the lock before this free is seen, so
                // `try_lock` fails only if this thread still holds it.
                free.store(pair.0.try_lock().is_ok(), SeqCst);
                events.push("freed");
            })
        };
        defer(probe);
        let g = cv.wait_while(g, |ready| !*ready).unwrap();
        t.events.push("woke");
        assert!(*g);
        assert!(in_section());
        assert_eq!(pending(), 0);
        drop(g);
        t.check(notifier);
    });
}

#[test]
fn parking_lot_wait_frees_pending_before_blocking() {
    within(|| {
        let t = DrainBeforeBlock::new();
        let pair = pl_pair(false);
        let notifier = {
            let pair = pair.clone();
            t.notifier(move || {
                *pair.0.lock() = true;
                pair.1.notify_one();
            })
        };
        let (m, cv) = &*pair;
        let mut g = m.lock();
        let probe = {
            let (pair, events, free) = (pair.clone(), t.events.clone(), t.lock_was_free.clone());
            Probe::then(&t.rec, move || {
                free.store(pair.0.try_lock().is_some(), SeqCst);
                events.push("freed");
            })
        };
        defer(probe);
        cv.wait_while(&mut g, |ready| !*ready);
        t.events.push("woke");
        assert!(*g);
        assert!(in_section());
        assert_eq!(pending(), 0);
        drop(g);
        t.check(notifier);
    });
}

// ---------------------------------------------------------------------------
// Another open section keeps pending items queued during the wait
// ---------------------------------------------------------------------------

/// Sets the flag and notifies all after a short pause.
fn std_notify_later(pair: &StdPair<bool>) -> thread::JoinHandle<()> {
    let pair = pair.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        *pair.0.lock().unwrap() = true;
        pair.1.notify_all();
    })
}

fn pl_notify_later(pair: &PlPair<bool>) -> thread::JoinHandle<()> {
    let pair = pair.clone();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        *pair.0.lock() = true;
        pair.1.notify_all();
    })
}

#[test]
fn std_wait_inside_outer_section_keeps_pending() {
    within(|| {
        let pair = std_pair(false);
        let rec = Record::new();
        let notifier = std_notify_later(&pair);
        let (m, cv) = &*pair;
        let outer = freeq::section();
        let g = m.lock().unwrap();
        defer(Probe::new(&rec));
        let g = cv.wait_while(g, |ready| !*ready).unwrap();
        assert_eq!(rec.freed(), 0, "freed during a wait inside another section");
        assert_eq!(pending(), 1);
        drop(g);
        assert_eq!(rec.freed(), 0);
        assert!(in_section());
        drop(outer);
        assert_eq!(rec.freed(), 1);
        assert!(!rec.freed_in_section());
        notifier.join().unwrap();
    });
}

#[test]
fn parking_lot_wait_holding_another_lock_keeps_pending() {
    within(|| {
        // Another freeq lock held outside the mutex.
        let pair = pl_pair(false);
        let other = freeq::parking_lot::RwLock::new(());
        let rec = Record::new();
        let notifier = pl_notify_later(&pair);
        let (m, cv) = &*pair;
        let outer = other.read();
        let mut g = m.lock();
        defer(Probe::new(&rec));
        cv.wait_while(&mut g, |ready| !*ready);
        assert_eq!(
            rec.freed(),
            0,
            "freed during a wait while another lock is held"
        );
        assert_eq!(pending(), 1);
        drop(g);
        assert_eq!(rec.freed(), 0);
        drop(outer);
        assert_eq!(rec.freed(), 1);
        assert!(!rec.freed_in_section());
        notifier.join().unwrap();

        // A bare `Section` outside the mutex.
        let pair = pl_pair(false);
        let rec = Record::new();
        let notifier = pl_notify_later(&pair);
        let (m, cv) = &*pair;
        let s = freeq::section();
        let mut g = m.lock();
        defer(Probe::new(&rec));
        cv.wait_while(&mut g, |ready| !*ready);
        assert_eq!(rec.freed(), 0, "freed during a wait inside another section");
        drop(g);
        assert_eq!(rec.freed(), 0);
        drop(s);
        assert_eq!(rec.freed(), 1);
        assert!(!rec.freed_in_section());
        notifier.join().unwrap();
    });
}

/// Waits that time out keep another section's items queued too.
#[test]
fn timed_out_waits_inside_another_section_keep_pending() {
    within(|| {
        let (m, cv) = (freeq::Mutex::new(()), freeq::Condvar::new());
        let rec = Record::new();
        let outer = freeq::section();
        let g = m.lock().unwrap();
        defer(Probe::new(&rec));
        let (g, res) = cv.wait_timeout(g, Duration::from_millis(10)).unwrap();
        assert!(res.timed_out());
        assert_eq!(rec.freed(), 0);
        assert_eq!(pending(), 1);
        drop(g);
        drop(outer);
        assert_eq!(rec.freed(), 1);

        let (m, cv) = (
            freeq::parking_lot::Mutex::new(()),
            freeq::parking_lot::Condvar::new(),
        );
        let other = freeq::parking_lot::Mutex::new(());
        let rec = Record::new();
        let outer = other.lock();
        let mut g = m.lock();
        defer(Probe::new(&rec));
        assert!(cv.wait_for(&mut g, Duration::from_millis(10)).timed_out());
        assert_eq!(rec.freed(), 0);
        drop(g);
        assert_eq!(rec.freed(), 0);
        drop(outer);
        assert_eq!(rec.freed(), 1);
        assert!(!rec.freed_in_section());
    });
}

// ---------------------------------------------------------------------------
// notify counts (parking_lot) and wait_while
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Gate {
    /// Waiters that have called `wait_while` (counted under the lock, so a
    /// notifier that sees the count under the lock sees them registered).
    waiting: usize,
    open: bool,
    /// Wake-up tokens handed out one at a time.
    tokens: usize,
    taken: usize,
}

#[test]
fn parking_lot_notify_all_counts_exactly() {
    within(|| {
        const N: usize = 3;
        let pair = pl_pair(Gate::default());
        let waiters: Vec<_> = (0..N)
            .map(|_| {
                let pair = pair.clone();
                thread::spawn(move || {
                    let (m, cv) = &*pair;
                    let mut g = m.lock();
                    g.waiting += 1;
                    cv.wait_while(&mut g, |g| !g.open);
                    assert!(in_section());
                })
            })
            .collect();
        let (m, cv) = &*pair;
        assert!(eventually(|| m.lock().waiting == N));
        let mut g = m.lock();
        // A waiter that counted itself has registered with the condvar before
        // it released the lock, so all N are waiting now.
        g.open = true;
        assert_eq!(cv.notify_all(), N);
        assert_eq!(cv.notify_all(), 0);
        assert!(!cv.notify_one());
        drop(g);
        for w in waiters {
            w.join().unwrap();
        }
    });
}

#[test]
fn parking_lot_notify_one_wakes_exactly_one() {
    within(|| {
        const N: usize = 2;
        let pair = pl_pair(Gate::default());
        let waiters: Vec<_> = (0..N)
            .map(|_| {
                let pair = pair.clone();
                thread::spawn(move || {
                    let (m, cv) = &*pair;
                    let mut g = m.lock();
                    g.waiting += 1;
                    cv.wait_while(&mut g, |g| g.tokens == 0);
                    g.tokens -= 1;
                    g.taken += 1;
                })
            })
            .collect();
        let (m, cv) = &*pair;
        assert!(eventually(|| m.lock().waiting == N));
        for round in 1..=N {
            let mut g = m.lock();
            g.tokens = 1;
            assert!(cv.notify_one(), "round {round}: nobody to wake");
            drop(g);
            assert!(eventually(|| m.lock().taken == round));
            // No spurious wakeups: exactly one waiter left per round.
            thread::sleep(Duration::from_millis(10));
            assert_eq!(m.lock().taken, round);
        }
        assert!(!cv.notify_one());
        assert_eq!(cv.notify_all(), 0);
        for w in waiters {
            w.join().unwrap();
        }
    });
}

/// `wait_while` re-checks its condition once per wakeup, and wakeups only
/// come from notifications: with a counter bumped three times (one notify
/// each), the condition runs at most four times.
#[test]
fn wait_while_wakes_only_when_notified() {
    within(|| {
        const BUMPS: usize = 3;

        let pair = std_pair(0usize);
        let notifier = {
            let pair = pair.clone();
            thread::spawn(move || {
                for _ in 0..BUMPS {
                    thread::sleep(Duration::from_millis(5));
                    *pair.0.lock().unwrap() += 1;
                    pair.1.notify_one();
                }
            })
        };
        let (m, cv) = &*pair;
        let mut checks = 0;
        let g = cv
            .wait_while(m.lock().unwrap(), |n| {
                checks += 1;
                *n < BUMPS
            })
            .unwrap();
        assert_eq!(*g, BUMPS);
        assert!((1..=BUMPS + 1).contains(&checks), "{checks} checks");
        drop(g);
        notifier.join().unwrap();

        let pair = pl_pair(0usize);
        let notifier = {
            let pair = pair.clone();
            thread::spawn(move || {
                for _ in 0..BUMPS {
                    thread::sleep(Duration::from_millis(5));
                    *pair.0.lock() += 1;
                    pair.1.notify_one();
                }
            })
        };
        let (m, cv) = &*pair;
        let mut checks = 0;
        let mut g = m.lock();
        cv.wait_while(&mut g, |n| {
            checks += 1;
            *n < BUMPS
        });
        assert_eq!(*g, BUMPS);
        assert!((1..=BUMPS + 1).contains(&checks), "{checks} checks");
        drop(g);
        notifier.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// Poisoning (std)
// ---------------------------------------------------------------------------

/// A thread panics while holding the lock the waiter is waiting for: the
/// wait returns `Err` with the re-acquired guard inside.
#[test]
fn std_wait_reports_poison_with_the_guard() {
    within(|| {
        for timed in [false, true] {
            let pair = std_pair(false);
            let (m, cv) = &*pair;
            let g = m.lock().unwrap();
            // The panicking thread can only take the lock once the waiter has
            // released it by waiting.
            let panicker = {
                let pair = pair.clone();
                thread::spawn(move || {
                    let mut g = pair.0.lock().unwrap();
                    *g = true;
                    pair.1.notify_all();
                    boom(1);
                })
            };
            let g = if timed {
                match cv.wait_timeout_while(g, PATIENCE, |ready| !*ready) {
                    Ok(_) => panic!("poison not reported"),
                    Err(e) => {
                        let (g, res) = e.into_inner();
                        assert!(!res.timed_out());
                        g
                    }
                }
            } else {
                cv.wait_while(g, |ready| !*ready)
                    .expect_err("poison not reported")
                    .into_inner()
            };
            assert!(*g);
            assert!(in_section());
            assert!(m.is_poisoned());
            drop(g);
            assert!(!in_section());
            assert_eq!(boom_id(panicker.join().unwrap_err()), 1);
        }
    });
}

/// A timed wait on an already poisoned mutex reports the poison, with the
/// guard and the (not timed out) result inside.
#[test]
fn std_wait_timeout_on_poisoned_mutex() {
    within(|| {
        let pair = std_pair(false);
        let p2 = pair.clone();
        let _ = thread::spawn(move || {
            let _g = p2.0.lock().unwrap();
            boom(2);
        })
        .join();
        let (m, cv) = &*pair;
        assert!(m.is_poisoned());
        let notifier = {
            let pair = pair.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                *pair.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
                pair.1.notify_all();
            })
        };
        let g = m.lock().unwrap_err().into_inner();
        let (g, res) = cv
            .wait_timeout_while(g, PATIENCE, |ready| !*ready)
            .unwrap_err()
            .into_inner();
        assert!(!res.timed_out());
        assert!(*g);
        assert!(in_section());
        drop(g);
        assert!(!in_section());
        notifier.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// A free that panics while the wait has released the lock
// ---------------------------------------------------------------------------

/// The first deferred item panics when freed by the wait's release; the
/// second is still freed; the panic resumes from `wait` once the lock is
/// held again, and the guard's unwinding drop unlocks and leaves the
/// section, so the mutex is free and usable afterwards.
#[test]
fn std_panicking_free_during_wait_resumes_after_relock() {
    within(|| {
        let pair = std_pair(0u32);
        let rest = Record::new();
        let panicked = Arc::new(AtomicBool::new(false));
        let notifier = {
            let (pair, rest) = (pair.clone(), rest.clone());
            thread::spawn(move || {
                let seen = eventually(|| rest.freed() == 1);
                *pair.0.lock().unwrap_or_else(|e| e.into_inner()) = 1;
                pair.1.notify_all();
                seen
            })
        };
        let (m, cv) = &*pair;
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut g = m.lock().unwrap();
            *g = 0;
            let p = panicked.clone();
            defer(Probe::then(&Record::new(), move || {
                p.store(true, SeqCst);
                boom(3);
            }));
            defer(Probe::new(&rest));
            let g = cv.wait_while(g, |v| *v == 0);
            // Not reached: the free's panic resumes out of the wait.
            drop(g);
        }));
        assert_eq!(boom_id(result.unwrap_err()), 3);
        assert!(panicked.load(SeqCst));
        assert!(
            notifier.join().unwrap(),
            "the waiter's items were not freed"
        );
        assert_eq!(rest.freed(), 1);
        assert!(!rest.freed_in_section());
        assert!(!in_section());
        assert_eq!(pending(), 0);
        // Unlocked, usable and not poisoned: the wait releases the lock it
        // re-acquired before the free's panic resumes.
        assert!(std_free_elsewhere(m));
        assert!(!m.is_poisoned());
        let mut g = m.lock().unwrap();
        assert_eq!(*g, 1);
        *g = 2;
        drop(g);
        assert_eq!(*m.lock().unwrap(), 2);
    });
}

/// With lock_api's `wait(&mut guard)` the caller keeps the guard: after the
/// panic resumes out of the wait, the guard still holds the lock and its
/// section; dropping it unlocks.
#[test]
fn parking_lot_panicking_free_during_wait_resumes_after_relock() {
    within(|| {
        let pair = pl_pair(0u32);
        let rest = Record::new();
        let notifier = {
            let (pair, rest) = (pair.clone(), rest.clone());
            thread::spawn(move || {
                let seen = eventually(|| rest.freed() == 1);
                *pair.0.lock() = 1;
                pair.1.notify_all();
                seen
            })
        };
        let (m, cv) = &*pair;
        let mut g = m.lock();
        defer(Probe::then(&Record::new(), || boom(4)));
        defer(Probe::new(&rest));
        let result = panic::catch_unwind(AssertUnwindSafe(|| cv.wait_while(&mut g, |v| *v == 0)));
        assert_eq!(boom_id(result.unwrap_err()), 4);
        assert!(
            notifier.join().unwrap(),
            "the waiter's items were not freed"
        );
        assert_eq!(rest.freed(), 1);
        assert!(!rest.freed_in_section());
        // The guard holds the lock again, inside its section.
        assert!(in_section());
        assert!(!pl_free_elsewhere(m));
        assert_eq!(*g, 1);
        let after = Record::new();
        defer(Probe::new(&after));
        drop(g);
        assert_eq!(after.freed(), 1);
        assert!(!in_section());
        assert_eq!(pending(), 0);
        assert!(pl_free_elsewhere(m));
        *m.lock() = 2;
        assert_eq!(*m.lock(), 2);
    });
}

// ---------------------------------------------------------------------------
// One mutex at a time
// ---------------------------------------------------------------------------

const TWO_MUTEXES: &str = "attempted to use a condition variable with more than one mutex";

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().unwrap_or(&"").to_string(),
    }
}

/// `(started, go)`: the waiter sets `started` under the lock and then waits
/// for `go`. Once another thread takes the lock and sees `started`, the
/// waiter has released it inside its wait, so it is registered (waiters
/// register before they release).
type Started = (bool, bool);

#[test]
fn std_condvar_with_a_second_mutex_panics() {
    within(|| {
        let m1 = Arc::new(freeq::Mutex::new((false, false)));
        let m2 = freeq::Mutex::new(0);
        let cv = Arc::new(freeq::Condvar::new());
        let waiter = {
            let (m1, cv) = (m1.clone(), cv.clone());
            thread::spawn(move || {
                let mut g = m1.lock().unwrap();
                g.0 = true;
                drop(cv.wait_while(g, |g: &mut Started| !g.1).unwrap());
            })
        };
        assert!(eventually(|| m1.lock().unwrap().0));
        let err = panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = cv.wait(m2.lock().unwrap());
        }))
        .unwrap_err();
        assert_eq!(panic_message(err), TWO_MUTEXES);
        assert!(!in_section());
        assert!(m2.is_poisoned(), "the guard dropped while panicking");
        m2.clear_poison();
        m1.lock().unwrap().1 = true;
        cv.notify_all();
        waiter.join().unwrap();
        // No one waits any more: the condvar may move to m2.
        let g = m2.lock().unwrap();
        let (g, res) = cv.wait_timeout(g, Duration::from_millis(1)).unwrap();
        assert!(res.timed_out());
        drop(g);
    });
}

#[test]
fn parking_lot_condvar_with_a_second_mutex_panics_holding_the_lock() {
    within(|| {
        let m1 = Arc::new(freeq::parking_lot::Mutex::new((false, false)));
        let m2 = freeq::parking_lot::Mutex::new(0);
        let cv = Arc::new(freeq::parking_lot::Condvar::new());
        let waiter = {
            let (m1, cv) = (m1.clone(), cv.clone());
            thread::spawn(move || {
                let mut g = m1.lock();
                g.0 = true;
                cv.wait_while(&mut g, |g: &mut Started| !g.1);
            })
        };
        assert!(eventually(|| m1.lock().0));
        let mut g2 = m2.lock();
        let err = panic::catch_unwind(AssertUnwindSafe(|| cv.wait(&mut g2))).unwrap_err();
        assert_eq!(panic_message(err), TWO_MUTEXES);
        // The guard is intact and still holds the lock and its section.
        assert!(in_section());
        *g2 += 1;
        assert!(m2.is_locked());
        drop(g2);
        assert!(!in_section());
        m1.lock().1 = true;
        assert_eq!(cv.notify_all(), 1);
        waiter.join().unwrap();
        // No one waits any more: the condvar may move to m2.
        let mut g2 = m2.lock();
        assert!(cv.wait_for(&mut g2, Duration::from_millis(1)).timed_out());
        assert_eq!(*g2, 1);
    });
}

// ---------------------------------------------------------------------------
// A waiter's own deferred notify (wait after unlock)
// ---------------------------------------------------------------------------

/// How long the waits below last when, correctly, nobody notifies them.
const SHORT: Duration = Duration::from_millis(50);

#[test]
fn a_waiters_own_deferred_notify_one_does_not_wake_it() {
    let m = freeq::Mutex::new(());
    let cv = Arc::new(freeq::Condvar::new());
    let g = m.lock().unwrap();
    let c = cv.clone();
    freeq::defer_fn(move || c.notify_one()); // meant for other threads
    let (_g, r) = cv.wait_timeout(g, SHORT).unwrap();
    assert!(r.timed_out(), "woken by its own release's notify_one");
}

#[test]
fn a_waiters_own_deferred_notify_all_does_not_wake_it() {
    let m = freeq::Mutex::new(());
    let cv = Arc::new(freeq::Condvar::new());
    let g = m.lock().unwrap();
    let c = cv.clone();
    freeq::defer_fn(move || c.notify_all());
    let (_g, r) = cv.wait_timeout(g, SHORT).unwrap();
    assert!(r.timed_out(), "woken by its own release's notify_all");
}

#[test]
fn parking_lot_a_waiters_own_deferred_notify_does_not_wake_it() {
    let m = freeq::parking_lot::Mutex::new(());
    let cv = Arc::new(freeq::parking_lot::Condvar::new());
    for all in [false, true] {
        let mut g = m.lock();
        let c = cv.clone();
        freeq::defer_fn(move || {
            let woke = if all {
                c.notify_all()
            } else {
                usize::from(c.notify_one())
            };
            assert_eq!(woke, 0, "nobody else waits");
        });
        let r = cv.wait_for(&mut g, SHORT);
        assert!(
            r.timed_out(),
            "woken by its own release's notify (all: {all})"
        );
    }
}

/// The deferred notify reaches the consumer it was meant for, even when
/// the notifier waits on the same condvar right after.
#[test]
fn a_deferred_notify_reaches_the_other_waiter() {
    for all in [false, true] {
        let pair = Arc::new((freeq::Mutex::new((false, false)), freeq::Condvar::new()));
        let p = pair.clone();
        let consumer = thread::spawn(move || {
            let (m, cv) = &*p;
            let mut g = m.lock().unwrap();
            g.0 = true; // waiting (registered before the lock is released)
            let mut g = cv.wait_while(g, |s| !s.1).unwrap();
            g.1 = false;
            drop(g);
            cv.notify_all();
        });
        let (m, cv) = &*pair;
        let deadline = Instant::now() + PATIENCE;
        let mut g = loop {
            let g = m.lock().unwrap();
            if g.0 {
                break g;
            }
            drop(g);
            assert!(Instant::now() < deadline, "the consumer never waited");
            thread::yield_now();
        };
        g.1 = true; // work for the consumer
        let p = pair.clone();
        freeq::defer_fn(move || {
            if all {
                p.1.notify_all();
            } else {
                p.1.notify_one();
            }
        });
        // Wait for the consumer to take the work (it clears the flag).
        let (g, r) = cv.wait_timeout_while(g, PATIENCE, |s| s.1).unwrap();
        assert!(!r.timed_out(), "the consumer was never woken (all: {all})");
        drop(g);
        consumer.join().unwrap();
    }
}
