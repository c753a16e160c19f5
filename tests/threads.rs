//! Several threads contend on one freeq lock and defer values under it.
//! Every value's drop checks, from the freeing thread's point of view, that
//! it runs outside any section and that the lock is not held by this thread
//! (it can take the lock, then releases it); the number of frees must match
//! the number of deferrals exactly.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;

use freeq::{defer, defer_fn, defer_with, in_section, pending};

const THREADS: usize = if cfg!(miri) { 2 } else { 4 };
const ROUNDS: usize = if cfg!(miri) { 15 } else { 2_000 };
/// Values deferred per critical section.
const PER_SECTION: usize = 3;

/// The bits of a lock the test needs, for each kind under test.
trait Shared: Send + Sync + 'static {
    /// Runs `f` with the lock held (exclusively) and the data borrowed.
    fn with(&self, f: &mut dyn FnMut(&mut Vec<u64>));
    /// Tries to take the lock once; releases it at once if that worked.
    fn try_take(&self) -> bool;
}

impl Shared for freeq::Mutex<Vec<u64>> {
    fn with(&self, f: &mut dyn FnMut(&mut Vec<u64>)) {
        f(&mut self.lock().unwrap());
    }
    fn try_take(&self) -> bool {
        match self.try_lock() {
            Ok(g) => {
                assert!(in_section());
                drop(g);
                true
            }
            Err(_) => false,
        }
    }
}

impl Shared for freeq::parking_lot::Mutex<Vec<u64>> {
    fn with(&self, f: &mut dyn FnMut(&mut Vec<u64>)) {
        f(&mut self.lock());
    }
    fn try_take(&self) -> bool {
        match self.try_lock() {
            Some(g) => {
                assert!(in_section());
                drop(g);
                true
            }
            None => false,
        }
    }
}

impl Shared for freeq::parking_lot::RwLock<Vec<u64>> {
    fn with(&self, f: &mut dyn FnMut(&mut Vec<u64>)) {
        f(&mut self.write());
    }
    fn try_take(&self) -> bool {
        match self.try_write() {
            Some(g) => {
                assert!(in_section());
                drop(g);
                true
            }
            None => false,
        }
    }
}

impl Shared for freeq::RwLock<Vec<u64>> {
    fn with(&self, f: &mut dyn FnMut(&mut Vec<u64>)) {
        f(&mut self.write().unwrap());
    }
    fn try_take(&self) -> bool {
        match self.try_write() {
            Ok(g) => {
                assert!(in_section());
                drop(g);
                true
            }
            Err(_) => false,
        }
    }
}

/// Per-lock bookkeeping shared by all threads.
struct Stats {
    /// Token of the thread holding the lock, 0 when none (set and cleared
    /// inside the critical section).
    holder: AtomicUsize,
    deferred: AtomicUsize,
    freed: AtomicUsize,
    /// Frees that took the lock themselves.
    retook: AtomicUsize,
}

/// Deferred under the lock; checks the lock is free from this thread's view
/// when dropped.
struct Retired<L: Shared> {
    me: usize,
    payload: Vec<u64>,
    lock: Arc<L>,
    stats: Arc<Stats>,
}

impl<L: Shared> Retired<L> {
    fn check_and_count(&self) {
        assert!(!in_section(), "freed inside a section");
        assert_ne!(
            self.stats.holder.load(SeqCst),
            self.me,
            "freed while this thread still held the lock"
        );
        // Another thread may hold the lock for a moment; this thread never
        // does here, so the lock is eventually ours.
        let mut tries = 0u64;
        while !self.lock.try_take() {
            tries += 1;
            assert!(tries < 10_000_000, "the lock never became free");
            thread::yield_now();
        }
        assert!(!in_section());
        self.stats.retook.fetch_add(1, SeqCst);
        self.stats.freed.fetch_add(1, SeqCst);
    }
}

impl<L: Shared> Drop for Retired<L> {
    fn drop(&mut self) {
        self.check_and_count();
        // The payload (a heap value, possibly built by another thread) is
        // dropped right after, still outside the lock.
        assert_eq!(self.payload.len() % 4, 0);
    }
}

fn contend<L: Shared>(lock: L) {
    let lock = Arc::new(lock);
    let stats = Arc::new(Stats {
        holder: AtomicUsize::new(0),
        deferred: AtomicUsize::new(0),
        freed: AtomicUsize::new(0),
        retook: AtomicUsize::new(0),
    });
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (1..=THREADS)
        .map(|me| {
            let (lock, stats, start) = (lock.clone(), stats.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for round in 0..ROUNDS {
                    lock.with(&mut |data| {
                        assert_eq!(stats.holder.swap(me, SeqCst), 0, "exclusion broken");
                        assert!(in_section());
                        for k in 0..PER_SECTION {
                            // Retire what another thread may have put there.
                            let old = std::mem::replace(data, vec![(me * round + k) as u64; 4]);
                            let item = Retired {
                                me,
                                payload: old,
                                lock: lock.clone(),
                                stats: stats.clone(),
                            };
                            stats.deferred.fetch_add(1, SeqCst);
                            match k % 3 {
                                0 => defer(item),
                                1 => defer_with(item, drop),
                                _ => defer_fn(move || drop(item)),
                            }
                        }
                        assert_eq!(pending(), PER_SECTION);
                        assert_eq!(stats.holder.swap(0, SeqCst), me);
                    });
                    assert_eq!(pending(), 0);
                    assert!(!in_section());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let deferred = stats.deferred.load(SeqCst);
    assert_eq!(deferred, THREADS * ROUNDS * PER_SECTION);
    assert_eq!(stats.freed.load(SeqCst), deferred);
    assert_eq!(stats.retook.load(SeqCst), deferred);
}

#[test]
fn std_mutex_under_contention() {
    contend(freeq::Mutex::new(Vec::new()));
}

#[test]
fn std_rwlock_writers_under_contention() {
    contend(freeq::RwLock::new(Vec::new()));
}

#[test]
fn parking_lot_mutex_under_contention() {
    contend(freeq::parking_lot::Mutex::new(Vec::new()));
}

#[test]
fn parking_lot_rwlock_writers_under_contention() {
    contend(freeq::parking_lot::RwLock::new(Vec::new()));
}

/// Readers and writers mixed on one parking_lot RwLock: values retired under
/// a shared guard are freed only once that reader's section closes, while
/// other readers may still hold the lock.
#[test]
fn parking_lot_readers_and_writers() {
    let rw = Arc::new(freeq::parking_lot::RwLock::new(0u64));
    let freed = Arc::new(AtomicUsize::new(0));
    let deferred = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (rw, freed, deferred) = (rw.clone(), freed.clone(), deferred.clone());
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let section_open = {
                        let f = freed.clone();
                        move || {
                            assert!(!in_section());
                            f.fetch_add(1, SeqCst);
                        }
                    };
                    if (t + round) % 4 == 0 {
                        let mut w = rw.write();
                        *w += 1;
                        defer_fn(section_open);
                    } else {
                        let r = rw.read();
                        assert!(*r <= (THREADS * ROUNDS) as u64);
                        defer_fn(section_open);
                        assert_eq!(pending(), 1);
                        drop(r);
                        assert_eq!(pending(), 0);
                    }
                    deferred.fetch_add(1, SeqCst);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(freed.load(SeqCst), deferred.load(SeqCst));
    assert_eq!(deferred.load(SeqCst), THREADS * ROUNDS);
}

/// Sections are per thread: while one thread sits in a section with items
/// queued, others defer, drain and exit independently.
#[test]
fn one_threads_open_section_does_not_hold_back_others() {
    let freed = Arc::new(AtomicUsize::new(0));
    let s = freeq::section();
    let mine = freed.clone();
    defer_fn(move || {
        mine.fetch_add(1000, SeqCst);
    });
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let freed = freed.clone();
            thread::spawn(move || {
                assert!(!in_section());
                for _ in 0..ROUNDS {
                    let _s = freeq::section();
                    let f = freed.clone();
                    defer_fn(move || {
                        f.fetch_add(1, SeqCst);
                    });
                }
                assert_eq!(pending(), 0);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(freed.load(SeqCst), THREADS * ROUNDS);
    assert_eq!(pending(), 1);
    drop(s);
    assert_eq!(freed.load(SeqCst), THREADS * ROUNDS + 1000);
}
