//! `RawDeferred<R>` over lock_api 0.4 raw locks (feature `lock_api_04`):
//! spin 0.9's `SpinMutex` and `RwLock` through lock_api 0.4's `Mutex` and
//! `RwLock`. The same contract as with lock_api 0.5: every acquisition is a
//! section; values deferred inside it are freed after the unlock, outside
//! any section; nested sections drain only at the outermost release; a
//! failed `try_lock` opens none; transitions keep the section open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread;

use freeq::{RawDeferred, defer, in_section, pending};

type SpinMutex<T> = lock_api04::Mutex<RawDeferred<spin::mutex::SpinMutex<()>>, T>;
type SpinRwLock<T> = lock_api04::RwLock<RawDeferred<spin::rwlock::RwLock<()>>, T>;

/// Records its drop, and whether anything looked wrong when it happened.
struct Probe {
    freed: Arc<AtomicUsize>,
    bad: Arc<AtomicBool>,
    check: Box<dyn Fn() -> bool + Send>,
}

#[derive(Clone, Default)]
struct Record {
    freed: Arc<AtomicUsize>,
    bad: Arc<AtomicBool>,
}

impl Record {
    fn probe(&self, check: impl Fn() -> bool + Send + 'static) -> Probe {
        Probe {
            freed: self.freed.clone(),
            bad: self.bad.clone(),
            check: Box::new(check),
        }
    }

    fn freed(&self) -> usize {
        assert!(!self.bad.load(SeqCst), "a probe was freed too early");
        self.freed.load(SeqCst)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if in_section() || !(self.check)() {
            self.bad.store(true, SeqCst);
        }
        self.freed.fetch_add(1, SeqCst);
    }
}

#[test]
fn defer_under_a_spin_mutex_frees_after_the_unlock() {
    let m = Arc::new(SpinMutex::new(vec![String::from("old")]));
    let rec = Record::default();
    {
        let mut g = m.lock();
        assert!(in_section());
        let m2 = m.clone();
        // Freed with the lock free again.
        defer(rec.probe(move || m2.try_lock().is_some()));
        defer(std::mem::take(&mut *g));
        assert_eq!(pending(), 2);
        assert_eq!(rec.freed(), 0);
    }
    assert!(!in_section());
    assert_eq!(pending(), 0);
    assert_eq!(rec.freed(), 1);
}

#[test]
fn try_lock_opens_a_section_only_when_it_succeeds() {
    let m = SpinMutex::new(0u32);
    let g = m.try_lock().expect("free");
    assert!(in_section());
    // Held (by this thread): the attempt fails and opens nothing more.
    assert!(m.try_lock().is_none());
    let rec = Record::default();
    defer(rec.probe(|| true));
    drop(g);
    assert!(!in_section());
    assert_eq!(rec.freed(), 1);
    assert!(!m.is_locked());
}

#[test]
fn nested_locks_drain_only_at_the_outermost_release() {
    let outer = SpinMutex::new(());
    let inner = SpinRwLock::new(1u32);
    let rec = Record::default();
    let o = outer.lock();
    {
        let r = inner.read();
        defer(rec.probe(|| true));
        assert_eq!(*r, 1);
    }
    assert!(in_section());
    assert_eq!((pending(), rec.freed()), (1, 0));
    {
        let mut w = inner.write();
        *w = 2;
        defer(rec.probe(|| true));
    }
    assert_eq!(rec.freed(), 0);
    drop(o);
    assert_eq!((pending(), rec.freed()), (0, 2));
    assert!(!in_section());
}

#[test]
fn upgrades_and_downgrades_keep_the_section() {
    use lock_api04::{RwLockUpgradableReadGuard, RwLockWriteGuard};
    let rw = SpinRwLock::new(0u32);
    let rec = Record::default();
    let u = rw.upgradable_read();
    defer(rec.probe(|| true));
    let mut w = RwLockUpgradableReadGuard::upgrade(u);
    *w += 1;
    assert_eq!(rec.freed(), 0);
    let r = RwLockWriteGuard::downgrade(w);
    assert!(in_section());
    assert_eq!(rec.freed(), 0);
    assert!(rw.try_read().is_some());
    drop(r);
    assert_eq!(rec.freed(), 1);
    assert!(!in_section());

    let u = rw.upgradable_read();
    let u = RwLockUpgradableReadGuard::try_upgrade(u).map(RwLockWriteGuard::downgrade);
    assert!(u.is_ok());
    drop(u);
    assert!(!in_section());
    assert!(!rw.is_locked());
}

#[test]
fn threads_share_a_spin_mutex_and_free_their_own_queues() {
    const THREADS: usize = 2;
    const ROUNDS: usize = if cfg!(miri) { 20 } else { 500 };
    let m = Arc::new(SpinMutex::new(Vec::<String>::new()));
    let rec = Record::default();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (m, rec) = (m.clone(), rec.clone());
            thread::spawn(move || {
                for i in 0..ROUNDS {
                    let mut g = m.lock();
                    let old = std::mem::replace(&mut *g, vec![i.to_string(); 4]);
                    defer(old);
                    defer(rec.probe(|| true));
                    drop(g);
                    assert_eq!(pending(), 0);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(rec.freed(), THREADS * ROUNDS);
    assert_eq!(m.lock().len(), 4);
}

#[test]
fn const_init_through_lock_api_04() {
    static M: SpinMutex<u32> = SpinMutex::const_new(
        <RawDeferred<spin::mutex::SpinMutex<()>> as lock_api04::RawMutex>::INIT,
        7,
    );
    let g = M.lock();
    assert!(in_section());
    assert_eq!(*g, 7);
    drop(g);
    assert!(!in_section());
}
