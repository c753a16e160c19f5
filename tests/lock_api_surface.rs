//! The lock_api surface of `freeq::RawDeferred` and `freeq::parking_lot`:
//! timed locks, fair unlocks, bumps, `unlocked`, upgradable reads, mapped
//! and `Arc` guards, re-entrant and fair mutexes, and `RawDeferred` used
//! through lock_api types directly.
//!
//! Every acquisition is one section. A value deferred inside it is freed
//! when the thread's outermost section is released, after the lock is
//! released, never while the thread is inside a section; upgrades,
//! downgrades and bumps keep the section open. Each deferred value is a
//! [`Probe`] that records whether, and how, it was freed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use freeq::parking_lot::{
    ArcMutexGuard, ArcRwLockUpgradableReadGuard, ArcRwLockWriteGuard, FairMutex, FairMutexGuard,
    MappedMutexGuard, Mutex, MutexGuard, ReentrantMutex, ReentrantMutexGuard, RwLock,
    RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard,
};
use freeq::{defer, in_section, pending};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// What a [`Probe`] saw when it was freed.
#[derive(Default)]
struct Record {
    freed: AtomicUsize,
    /// Freed while its thread was inside a section.
    in_section: AtomicBool,
    /// The extra check given to [`Probe::checking`] failed.
    check_failed: AtomicBool,
}

impl Record {
    fn new() -> Arc<Record> {
        Arc::new(Record::default())
    }

    fn freed(&self) -> usize {
        self.freed.load(SeqCst)
    }

    /// Asserts the probe was freed exactly once, outside any section, and
    /// that its extra check (if any) held.
    #[track_caller]
    fn assert_freed_well(&self) {
        assert_eq!(self.freed(), 1, "freed {} times", self.freed());
        assert!(!self.in_section.load(SeqCst), "freed inside a section");
        assert!(!self.check_failed.load(SeqCst), "lock still held at free");
    }

    #[track_caller]
    fn assert_not_freed(&self) {
        assert_eq!(self.freed(), 0, "freed while its section was still open");
    }
}

/// A deferred value that records its free in a [`Record`].
struct Probe {
    rec: Arc<Record>,
    check: Option<Box<dyn FnOnce() -> bool + Send>>,
}

impl Probe {
    fn new(rec: &Arc<Record>) -> Probe {
        Probe {
            rec: rec.clone(),
            check: None,
        }
    }

    /// Also runs `check` when freed (e.g. "the lock is free now") and
    /// records a failure if it returns `false`.
    fn checking(rec: &Arc<Record>, check: impl FnOnce() -> bool + Send + 'static) -> Probe {
        Probe {
            rec: rec.clone(),
            check: Some(Box::new(check)),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if in_section() {
            self.rec.in_section.store(true, SeqCst);
        }
        if let Some(check) = self.check.take()
            && !check()
        {
            self.rec.check_failed.store(true, SeqCst);
        }
        self.rec.freed.fetch_add(1, SeqCst);
    }
}

/// Defers a fresh probe and returns its record.
fn defer_probe() -> Arc<Record> {
    let rec = Record::new();
    defer(Probe::new(&rec));
    rec
}

/// Runs `hold` on another thread, which keeps whatever it returns (a
/// guard) until the returned sender is dropped or sent to.
fn hold_elsewhere<F, G>(hold: F) -> (mpsc::Sender<()>, thread::JoinHandle<()>)
where
    F: FnOnce() -> G + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let t = thread::spawn(move || {
        let held = hold();
        ready_tx.send(()).unwrap();
        let _ = done_rx.recv();
        drop(held);
    });
    ready_rx.recv().unwrap();
    (done_tx, t)
}

const SHORT: Duration = Duration::from_millis(15);

// ---------------------------------------------------------------------------
// Trait coverage
// ---------------------------------------------------------------------------

/// `RawDeferred<R>` implements every lock_api raw trait `R` implements.
#[test]
fn raw_deferred_implements_the_raw_traits() {
    use freeq::RawDeferred;
    use freeq::lock_api::*;

    fn mutex<R: RawMutex + RawMutexFair + RawMutexTimed>() {}
    fn rwlock<
        R: RawRwLock
            + RawRwLockFair
            + RawRwLockTimed
            + RawRwLockDowngrade
            + RawRwLockUpgrade
            + RawRwLockUpgradeFair
            + RawRwLockUpgradeTimed
            + RawRwLockUpgradeDowngrade,
    >() {
    }
    fn thread_id<R: GetThreadId>() {}

    mutex::<RawDeferred<parking_lot::RawMutex>>();
    mutex::<RawDeferred<parking_lot::RawFairMutex>>();
    rwlock::<RawDeferred<parking_lot::RawRwLock>>();
    thread_id::<RawDeferred<parking_lot::RawThreadId>>();
}

// ---------------------------------------------------------------------------
// Timed locks
// ---------------------------------------------------------------------------

#[test]
fn try_lock_for_on_a_held_mutex_times_out_without_a_section() {
    let m = Arc::new(Mutex::new(0u32));
    let (release, t) = {
        let m = m.clone();
        hold_elsewhere(move || m.lock_arc())
    };
    let start = Instant::now();
    assert!(m.try_lock_for(SHORT).is_none());
    assert!(start.elapsed() >= SHORT);
    assert!(m.try_lock_until(Instant::now() + SHORT).is_none());
    assert!(m.try_lock_arc_for(SHORT).is_none());
    assert!(!in_section(), "a failed timed lock left a section open");
    drop(release);
    t.join().unwrap();

    // Succeeding, it is a section like any other.
    let mut g = m.try_lock_for(SHORT).expect("free mutex");
    assert!(in_section());
    *g += 1;
    let rec = defer_probe();
    // A failed attempt while holding it changes nothing either.
    assert!(m.try_lock_for(Duration::from_millis(1)).is_none());
    drop(g);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn rwlock_timed_locks() {
    let rw = Arc::new(RwLock::new(0u32));

    // Readers elsewhere: writers time out; readers and upgradable readers
    // get in.
    let (release, t) = {
        let rw = rw.clone();
        hold_elsewhere(move || rw.read_arc())
    };
    assert!(rw.try_write_for(SHORT).is_none());
    assert!(rw.try_write_until(Instant::now() + SHORT).is_none());
    assert!(!in_section());
    {
        let r = rw.try_read_for(SHORT).expect("shared");
        let rec = defer_probe();
        drop(r);
        rec.assert_freed_well();
        let u = rw.try_upgradable_read_for(SHORT).expect("upgradable");
        let rec = defer_probe();
        // The other reader blocks the upgrade.
        let u = RwLockUpgradableReadGuard::try_upgrade_for(u, SHORT).unwrap_err();
        assert!(in_section());
        rec.assert_not_freed();
        drop(u);
        rec.assert_freed_well();
    }
    drop(release);
    t.join().unwrap();

    // A writer elsewhere: everything times out.
    let (release, t) = {
        let rw = rw.clone();
        hold_elsewhere(move || rw.write_arc())
    };
    assert!(rw.try_read_for(SHORT).is_none());
    assert!(rw.try_read_until(Instant::now() + SHORT).is_none());
    assert!(rw.try_upgradable_read_for(SHORT).is_none());
    assert!(rw.try_write_for(SHORT).is_none());
    assert!(!in_section());
    drop(release);
    t.join().unwrap();

    let w = rw.try_write_for(SHORT).expect("free");
    let rec = defer_probe();
    drop(w);
    rec.assert_freed_well();
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// Upgradable reads: one section across upgrade and downgrade
// ---------------------------------------------------------------------------

#[test]
fn upgradable_read_is_one_section() {
    let rw = Arc::new(RwLock::new(vec![1u32]));
    let u = rw.upgradable_read();
    assert!(in_section());
    let rec = {
        let rw = rw.clone();
        let rec = Record::new();
        defer(Probe::checking(&rec, move || rw.try_write().is_some()));
        rec
    };
    let mut w = RwLockUpgradableReadGuard::upgrade(u);
    w.push(2);
    rec.assert_not_freed();
    assert!(in_section());
    let u = RwLockWriteGuard::downgrade_to_upgradable(w);
    rec.assert_not_freed();
    let w = RwLockUpgradableReadGuard::try_upgrade(u).expect("no other readers");
    rec.assert_not_freed();
    let r = RwLockWriteGuard::downgrade(w);
    rec.assert_not_freed();
    assert!(in_section());
    assert_eq!(*r, [1, 2]);
    assert_eq!(pending(), 1);
    drop(r);
    rec.assert_freed_well();
    assert!(!in_section());

    // Upgradable down to a plain read guard.
    let u = rw.upgradable_read();
    let rec = defer_probe();
    let r = RwLockUpgradableReadGuard::downgrade(u);
    rec.assert_not_freed();
    drop(r);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn try_upgrade_failing_keeps_the_section() {
    let rw = Arc::new(RwLock::new(0u32));
    let (release, t) = {
        let rw = rw.clone();
        hold_elsewhere(move || rw.read_arc())
    };
    let u = rw.upgradable_read();
    let rec = defer_probe();
    let u = RwLockUpgradableReadGuard::try_upgrade(u).unwrap_err();
    assert!(in_section());
    let mut u =
        RwLockUpgradableReadGuard::try_upgrade_until(u, Instant::now() + SHORT).unwrap_err();
    assert!(u.try_with_upgraded(|v| *v += 1).is_none());
    rec.assert_not_freed();
    drop(release);
    t.join().unwrap();
    // Now the upgrade succeeds, still in the same section.
    u.with_upgraded(|v| {
        *v += 1;
        assert!(in_section());
    });
    let w = RwLockUpgradableReadGuard::upgrade(u);
    rec.assert_not_freed();
    assert_eq!(*w, 1);
    drop(w);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn arc_upgradable_guards() {
    let rw = Arc::new(RwLock::new(0u32));
    let u = rw.upgradable_read_arc();
    let rec = defer_probe();
    let mut w = ArcRwLockUpgradableReadGuard::upgrade(u);
    *w = 7;
    let r = ArcRwLockWriteGuard::downgrade(w);
    rec.assert_not_freed();
    assert!(in_section());
    drop(r);
    rec.assert_freed_well();
    assert!(!in_section());
    assert_eq!(*rw.read(), 7);
}

// ---------------------------------------------------------------------------
// unlock_fair drains at release; bump does not drain
// ---------------------------------------------------------------------------

#[test]
fn unlock_fair_drains_at_release() {
    let m = Arc::new(Mutex::new(0u32));
    let g = m.lock();
    let rec = Record::new();
    {
        let m = m.clone();
        defer(Probe::checking(&rec, move || m.try_lock().is_some()));
    }
    rec.assert_not_freed();
    MutexGuard::unlock_fair(g);
    rec.assert_freed_well();
    assert!(!in_section());

    let rw = Arc::new(RwLock::new(0u32));
    let w = rw.write();
    let rec = Record::new();
    {
        let rw = rw.clone();
        defer(Probe::checking(&rec, move || rw.try_write().is_some()));
    }
    RwLockWriteGuard::unlock_fair(w);
    rec.assert_freed_well();

    let r = rw.read();
    let rec = defer_probe();
    RwLockReadGuard::unlock_fair(r);
    rec.assert_freed_well();

    let u = rw.upgradable_read();
    let rec = defer_probe();
    RwLockUpgradableReadGuard::unlock_fair(u);
    rec.assert_freed_well();

    let g = MutexGuard::map(m.lock(), |v| v);
    let rec = defer_probe();
    MappedMutexGuard::unlock_fair(g);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn bump_does_not_drain() {
    let m = Arc::new(Mutex::new(0u32));
    let mut g = m.lock();
    let rec = defer_probe();
    MutexGuard::bump(&mut g);
    assert_eq!(pending(), 1);
    rec.assert_not_freed();
    assert!(in_section());

    // With a thread queued on the lock, bump hands it over and takes it
    // back: still one section, still nothing freed.
    let (tx, rx) = mpsc::channel();
    let t = {
        let m = m.clone();
        thread::spawn(move || {
            tx.send(()).unwrap();
            *m.lock() += 1;
        })
    };
    rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while *g == 0 && Instant::now() < deadline {
        MutexGuard::bump(&mut g);
        thread::yield_now();
    }
    assert_eq!(*g, 1, "the queued thread never got the lock");
    assert_eq!(pending(), 1);
    rec.assert_not_freed();
    assert!(in_section());
    drop(g);
    rec.assert_freed_well();
    t.join().unwrap();

    let rw = RwLock::new(0u32);
    let mut w = rw.write();
    let rec = defer_probe();
    RwLockWriteGuard::bump(&mut w);
    drop(w);
    rec.assert_freed_well();
    let mut r = rw.read();
    let rec = defer_probe();
    RwLockReadGuard::bump(&mut r);
    rec.assert_not_freed();
    drop(r);
    rec.assert_freed_well();
    let mut u = rw.upgradable_read();
    let rec = defer_probe();
    RwLockUpgradableReadGuard::bump(&mut u);
    rec.assert_not_freed();
    drop(u);
    rec.assert_freed_well();
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// unlocked: drains inside the closure, re-enters after
// ---------------------------------------------------------------------------

#[test]
fn unlocked_drains_inside_the_closure() {
    let m = Mutex::new(0u32);
    let mut g = m.lock();
    let rec = defer_probe();
    MutexGuard::unlocked(&mut g, || {
        rec.assert_freed_well();
        assert!(!in_section());
        assert_eq!(pending(), 0);
        // The lock is free: take it here.
        *m.try_lock().expect("released for the closure") += 1;
    });
    assert!(in_section());
    assert_eq!(*g, 1);
    let after = defer_probe();
    after.assert_not_freed();
    drop(g);
    after.assert_freed_well();

    let mut g = m.lock();
    let rec = defer_probe();
    MutexGuard::unlocked_fair(&mut g, || {
        rec.assert_freed_well();
        assert!(!in_section());
    });
    assert!(in_section());
    drop(g);

    // Inside another section, `unlocked` releases the lock but frees
    // nothing.
    let outer = freeq::section();
    let mut g = m.lock();
    let rec = defer_probe();
    MutexGuard::unlocked(&mut g, || {
        assert!(m.try_lock().is_some());
        rec.assert_not_freed();
        assert!(in_section());
    });
    drop(g);
    rec.assert_not_freed();
    drop(outer);
    rec.assert_freed_well();
}

#[test]
fn unlocked_on_rwlock_and_arc_and_reentrant_guards() {
    let rw = RwLock::new(0u32);
    let mut w = rw.write();
    let rec = defer_probe();
    RwLockWriteGuard::unlocked(&mut w, || {
        rec.assert_freed_well();
        assert!(rw.try_write().is_some());
    });
    assert!(in_section());
    drop(w);
    let mut r = rw.read();
    let rec = defer_probe();
    RwLockReadGuard::unlocked(&mut r, || {
        rec.assert_freed_well();
        assert!(rw.try_write().is_some());
    });
    drop(r);

    let m = Arc::new(Mutex::new(0u32));
    let mut g = m.lock_arc();
    let rec = defer_probe();
    ArcMutexGuard::unlocked(&mut g, || {
        rec.assert_freed_well();
        assert!(m.try_lock().is_some());
    });
    assert!(in_section());
    drop(g);

    let rm = ReentrantMutex::new(0u32);
    let mut g = rm.lock();
    let rec = defer_probe();
    ReentrantMutexGuard::unlocked(&mut g, || {
        rec.assert_freed_well();
        assert!(!rm.is_locked());
        assert!(!in_section());
    });
    assert!(in_section());
    drop(g);
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// Mapped and Arc guards drain at release
// ---------------------------------------------------------------------------

#[test]
fn mapped_guards_drain_at_release() {
    let m = Arc::new(Mutex::new((1u32, String::from("x"))));
    let g = MutexGuard::map(m.lock(), |v| &mut v.1);
    let rec = Record::new();
    {
        let m = m.clone();
        defer(Probe::checking(&rec, move || m.try_lock().is_some()));
    }
    assert!(in_section());
    assert_eq!(*g, "x");
    rec.assert_not_freed();
    drop(g);
    rec.assert_freed_well();

    let g = MutexGuard::try_map(m.lock(), |v| Some(&mut v.0)).unwrap_or_else(|_| panic!());
    let rec = defer_probe();
    drop(g);
    rec.assert_freed_well();

    // A failed try_map hands back the guard, section and all.
    let g = MutexGuard::try_map(m.lock(), |_| None::<&mut u32>).unwrap_err();
    let rec = defer_probe();
    drop(g);
    rec.assert_freed_well();

    let rw = RwLock::new((0u32, 0u32));
    let w = RwLockWriteGuard::map(rw.write(), |v| &mut v.0);
    let rec = defer_probe();
    drop(w);
    rec.assert_freed_well();
    let r = RwLockReadGuard::map(rw.read(), |v| &v.1);
    let rec = defer_probe();
    drop(r);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn arc_guards_drain_at_release() {
    let m = Arc::new(Mutex::new(0u32));
    let g = m.lock_arc();
    let rec = Record::new();
    {
        let m = m.clone();
        defer(Probe::checking(&rec, move || m.try_lock().is_some()));
    }
    assert!(in_section());
    rec.assert_not_freed();
    drop(g);
    rec.assert_freed_well();

    let g = m.try_lock_arc().expect("free");
    let rec = defer_probe();
    ArcMutexGuard::unlock_fair(g);
    rec.assert_freed_well();

    let rw = Arc::new(RwLock::new(0u32));
    let r = rw.read_arc();
    let rec = defer_probe();
    drop(r);
    rec.assert_freed_well();
    let w = rw.write_arc();
    let rec = defer_probe();
    drop(w);
    rec.assert_freed_well();

    let rm = Arc::new(ReentrantMutex::new(0u32));
    let g1 = rm.lock_arc();
    let g2 = rm.lock_arc();
    let rec = defer_probe();
    drop(g2);
    rec.assert_not_freed();
    drop(g1);
    rec.assert_freed_well();
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// Re-entrant and fair mutexes
// ---------------------------------------------------------------------------

#[test]
fn reentrant_mutex_drains_only_at_outermost() {
    let rm = Arc::new(ReentrantMutex::new(0u32));
    let outer = rm.lock();
    let inner = rm.lock();
    let innermost = rm.try_lock().expect("re-entrant");
    assert!(in_section());
    let rec = Record::new();
    {
        let rm = rm.clone();
        defer(Probe::checking(&rec, move || !rm.is_locked()));
    }
    drop(innermost);
    rec.assert_not_freed();
    drop(inner);
    rec.assert_not_freed();
    assert!(in_section());
    drop(outer);
    rec.assert_freed_well();
    assert!(!in_section());

    // Mapped, and with a timed acquisition in the middle.
    let outer = rm.lock();
    let inner = ReentrantMutexGuard::map(rm.try_lock_for(SHORT).unwrap(), |v| v);
    let rec = defer_probe();
    drop(inner);
    rec.assert_not_freed();
    ReentrantMutexGuard::unlock_fair(outer);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn fair_mutex() {
    let m = Arc::new(FairMutex::new(0u32));
    let g = m.lock();
    let rec = Record::new();
    {
        let m = m.clone();
        defer(Probe::checking(&rec, move || m.try_lock().is_some()));
    }
    drop(g);
    rec.assert_freed_well();

    let mut g = m.lock();
    let rec = defer_probe();
    FairMutexGuard::bump(&mut g);
    rec.assert_not_freed();
    FairMutexGuard::unlock_fair(g);
    rec.assert_freed_well();

    let (release, t) = {
        let m = m.clone();
        hold_elsewhere(move || m.lock_arc())
    };
    assert!(m.try_lock_for(SHORT).is_none());
    assert!(!in_section());
    drop(release);
    t.join().unwrap();
    let g = m.try_lock_for(SHORT).expect("free");
    let rec = defer_probe();
    drop(g);
    rec.assert_freed_well();
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// Nesting across locks
// ---------------------------------------------------------------------------

#[test]
fn nested_reads_with_a_write_on_another_lock() {
    let a = Arc::new(RwLock::new(0u32));
    let b = Arc::new(RwLock::new(0u32));
    let r1 = a.read();
    let r2 = a.try_read().expect("second read");
    let mut w = b.write();
    *w += 1;
    let rec = Record::new();
    {
        let (a, b) = (a.clone(), b.clone());
        defer(Probe::checking(&rec, move || {
            a.try_write().is_some() && b.try_write().is_some()
        }));
    }
    drop(w);
    rec.assert_not_freed();
    drop(r2);
    rec.assert_not_freed();
    assert!(in_section());
    drop(r1);
    rec.assert_freed_well();
    assert!(!in_section());

    // Released out of order: still only the last release drains.
    let r = a.read();
    let w = b.write();
    let rec = defer_probe();
    drop(r);
    rec.assert_not_freed();
    drop(w);
    rec.assert_freed_well();
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// RawDeferred through lock_api types directly
// ---------------------------------------------------------------------------

type DirectRwLock<T> = freeq::lock_api::RwLock<freeq::RawDeferred<parking_lot::RawRwLock>, T>;
type DirectFairMutex<T> = freeq::lock_api::Mutex<freeq::RawDeferred<parking_lot::RawFairMutex>, T>;
type DirectReentrant<T> = freeq::lock_api::ReentrantMutex<
    freeq::RawDeferred<parking_lot::RawMutex>,
    freeq::RawDeferred<parking_lot::RawThreadId>,
    T,
>;

#[test]
fn raw_deferred_over_parking_lot_raw_rwlock() {
    let rw = Arc::new(DirectRwLock::new(0u32));
    let w = rw.write();
    let rec = Record::new();
    {
        let rw = rw.clone();
        defer(Probe::checking(&rec, move || rw.try_read().is_some()));
    }
    drop(w);
    rec.assert_freed_well();

    let u = rw.upgradable_read();
    let rec = defer_probe();
    let w = freeq::lock_api::RwLockUpgradableReadGuard::upgrade(u);
    let r = freeq::lock_api::RwLockWriteGuard::downgrade(w);
    rec.assert_not_freed();
    freeq::lock_api::RwLockReadGuard::unlock_fair(r);
    rec.assert_freed_well();

    let r = rw.try_read_for(SHORT).expect("free");
    assert!(rw.try_write_for(Duration::from_millis(1)).is_none());
    let rec = defer_probe();
    drop(r);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn raw_deferred_over_parking_lot_raw_fair_mutex() {
    let m = Arc::new(DirectFairMutex::new(0u32));
    let mut g = m.lock();
    let rec = Record::new();
    {
        let m = m.clone();
        defer(Probe::checking(&rec, move || m.try_lock().is_some()));
    }
    freeq::lock_api::MutexGuard::bump(&mut g);
    rec.assert_not_freed();
    freeq::lock_api::MutexGuard::unlock_fair(g);
    rec.assert_freed_well();

    let g = m.try_lock_for(SHORT).expect("free");
    assert!(m.try_lock_for(Duration::from_millis(1)).is_none());
    let rec = defer_probe();
    drop(g);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn raw_deferred_thread_id_for_reentrant_mutex() {
    let rm = DirectReentrant::new(0u32);
    let g1 = rm.lock();
    let g2 = rm.lock();
    assert!(rm.is_owned_by_current_thread());
    let rec = defer_probe();
    drop(g2);
    rec.assert_not_freed();
    drop(g1);
    rec.assert_freed_well();
    assert!(!in_section());
}

#[test]
fn const_constructors() {
    static M: Mutex<u32> = freeq::parking_lot::const_mutex(0);
    static F: FairMutex<u32> = freeq::parking_lot::const_fair_mutex(0);
    static RW: RwLock<u32> = freeq::parking_lot::const_rwlock(0);
    let g = M.lock();
    let f = F.lock();
    let r = RW.read();
    let rec = defer_probe();
    drop(g);
    drop(f);
    rec.assert_not_freed();
    drop(r);
    rec.assert_freed_well();
    assert!(!in_section());
}

// ---------------------------------------------------------------------------
// parking_lot 0.13 names: RecursiveRwLock, two-parameter Arc guards
// ---------------------------------------------------------------------------

#[test]
fn recursive_reads_nest_sections_and_drain_at_the_outermost() {
    use freeq::parking_lot::{RecursiveRwLock, RecursiveRwLockUpgradableReadGuard};
    let lock = Arc::new(RecursiveRwLock::new(1u32));
    let first = lock.read();
    // A writer queues up behind the first read; recursive reads still get in.
    let (tx, rx) = mpsc::channel();
    let writer = {
        let lock = lock.clone();
        thread::spawn(move || {
            tx.send(()).unwrap();
            *lock.write() += 1;
        })
    };
    rx.recv().unwrap();
    let second = lock.read();
    assert!(lock.try_read().is_some());
    let rec = defer_probe();
    drop(second);
    rec.assert_not_freed();
    drop(first);
    rec.assert_freed_well();
    writer.join().unwrap();
    assert_eq!(*lock.read(), 2);

    let up = lock.upgradable_read();
    let read = lock.read();
    drop(read);
    let rec = defer_probe();
    let mut w = RecursiveRwLockUpgradableReadGuard::upgrade(up);
    *w = 3;
    rec.assert_not_freed();
    drop(w);
    rec.assert_freed_well();
    assert!(!in_section());
    let c = freeq::parking_lot::const_recursive_rwlock(5);
    assert_eq!(*c.read(), 5);
}

#[test]
fn arc_guard_aliases_take_the_raw_lock_and_the_value() {
    use freeq::parking_lot::{
        ArcReentrantMutexGuard, ArcRwLockReadGuard, RawMutex, RawRwLock, RawThreadId,
    };
    let m = Arc::new(Mutex::new(1u32));
    let g: ArcMutexGuard<RawMutex, u32> = m.lock_arc();
    assert!(in_section());
    drop(g);
    let rw = Arc::new(RwLock::new(2u32));
    let r: ArcRwLockReadGuard<RawRwLock, u32> = rw.read_arc();
    drop(r);
    let u: ArcRwLockUpgradableReadGuard<RawRwLock, u32> = rw.upgradable_read_arc();
    let w: ArcRwLockWriteGuard<RawRwLock, u32> = ArcRwLockUpgradableReadGuard::upgrade(u);
    drop(w);
    let rm = Arc::new(ReentrantMutex::new(3u32));
    let g: ArcReentrantMutexGuard<RawMutex, RawThreadId, u32> = rm.lock_arc();
    assert_eq!(*g, 3);
    drop(g);
    assert!(!in_section());
    // The lock_api crate, re-exported as parking_lot does.
    let _: &freeq::parking_lot::lock_api::Mutex<RawMutex, u32> = &m;
}
