//! loom models of a crate built on freeq's locks. Each model puts a loom
//! atomic inside its critical sections and defers a value whose free
//! checks that its thread is outside every section; each counts the
//! executions loom ran and asserts there was more than one, so a lock that
//! loom cannot see (which would hang or hide every interleaving) fails
//! here. `racy_insert_is_caught` seeds a bug that loom must find.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test
//! --release` in this crate (scripts/loom.sh does).
#![cfg(loom)]

use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use freeq_downstream_loom::Cache;
use loom::sync::atomic::AtomicUsize;
use loom::sync::atomic::Ordering::SeqCst;
use loom::sync::Arc;
use loom::thread;

/// Runs `model` under loom and returns how many executions loom explored,
/// failing if it was only one.
fn explore(model: impl Fn() + Send + Sync + 'static) -> usize {
    let runs = std::sync::Arc::new(StdAtomicUsize::new(0));
    let counted = runs.clone();
    loom::model(move || {
        counted.fetch_add(1, Relaxed);
        model();
    });
    let runs = runs.load(Relaxed);
    assert!(
        runs > 1,
        "loom explored {runs} execution(s): it cannot see the locks"
    );
    println!("loom explored {runs} executions");
    runs
}

/// A deferred value: its free asserts that the freeing thread is outside
/// every section (so after the unlock) and counts itself.
struct Probe {
    id: usize,
    freed: std::sync::Arc<StdAtomicUsize>,
}

impl Probe {
    fn new(id: usize, freed: &std::sync::Arc<StdAtomicUsize>) -> Self {
        Probe {
            id,
            freed: freed.clone(),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        assert!(
            !freeq::in_section(),
            "probe {} freed inside a section",
            self.id
        );
        self.freed.fetch_add(1, Relaxed);
    }
}

fn counter() -> std::sync::Arc<StdAtomicUsize> {
    std::sync::Arc::new(StdAtomicUsize::new(0))
}

// `freeq::Mutex` (through the crate's `Cache`): two writers replace the
// same key; each gets its own version, and both replaced values are freed
// after their writer's unlock.
#[test]
fn cache_writers_get_distinct_versions() {
    explore(|| {
        let freed = counter();
        let cache = Arc::new(Cache::new());
        assert_eq!(cache.insert(1, Probe::new(0, &freed)), 1);
        let other = {
            let (cache, freed) = (cache.clone(), freed.clone());
            thread::spawn(move || cache.insert(1, Probe::new(1, &freed)))
        };
        let mine = cache.insert(1, Probe::new(2, &freed));
        let theirs = other.join().unwrap();
        assert_ne!(mine, theirs, "two writers got the same version");
        assert_eq!(mine + theirs, 2 + 3);
        assert_eq!(cache.writes(), 3);
        assert_eq!(freed.load(Relaxed), 2);
        assert_eq!(freeq::pending(), 0);
    });
}

// The seeded bug: `insert_racy` reads the version under one lock and
// writes under another. loom must find the schedule in which both writers
// read the same version, so this model must fail.
#[test]
#[should_panic(expected = "two writers got the same version")]
fn racy_insert_is_caught() {
    loom::model(|| {
        let cache = Arc::new(Cache::new());
        let other = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert_racy(1, String::from("theirs")))
        };
        let mine = cache.insert_racy(1, String::from("mine"));
        let theirs = other.join().unwrap();
        assert_ne!(mine, theirs, "two writers got the same version");
    });
}

// `freeq::RwLock`: a writer swaps the value and bumps a version inside its
// write section; a reader must see the value and version that belong
// together, and the old value is freed after the write unlock.
#[test]
fn rwlock_readers_see_consistent_state() {
    explore(|| {
        let freed = counter();
        let state = Arc::new((
            freeq::RwLock::new(Probe::new(0, &freed)),
            AtomicUsize::new(0),
        ));
        let writer = {
            let (state, freed) = (state.clone(), freed.clone());
            thread::spawn(move || {
                let (lock, version) = &*state;
                let mut value = lock.write().unwrap();
                let old = std::mem::replace(&mut *value, Probe::new(1, &freed));
                version.fetch_add(1, SeqCst);
                freeq::defer(old);
                assert_eq!(freed.load(Relaxed), 0, "freed under the write lock");
            })
        };
        {
            let (lock, version) = &*state;
            let value = lock.read().unwrap();
            assert_eq!(value.id, version.load(SeqCst));
        }
        writer.join().unwrap();
        assert_eq!(freed.load(Relaxed), 1);
    });
}

// `freeq::Condvar`: a consumer waits for an item; the producer pushes it
// and counts it inside the lock, then notifies. The consumer defers the
// item, which is freed after the consumer's unlock.
#[test]
fn condvar_hands_an_item_over() {
    explore(|| {
        let freed = counter();
        let shared = Arc::new((
            freeq::Mutex::new(Vec::<Probe>::new()),
            freeq::Condvar::new(),
            AtomicUsize::new(0),
        ));
        let producer = {
            let (shared, freed) = (shared.clone(), freed.clone());
            thread::spawn(move || {
                let (queue, ready, pushed) = &*shared;
                queue.lock().unwrap().push(Probe::new(1, &freed));
                pushed.fetch_add(1, SeqCst);
                ready.notify_one();
            })
        };
        let (queue, ready, pushed) = &*shared;
        let mut items = ready
            .wait_while(queue.lock().unwrap(), |q| q.is_empty())
            .unwrap();
        let item = items.pop().unwrap();
        assert_eq!(item.id, 1);
        freeq::defer(item);
        assert_eq!(freeq::pending(), 1);
        drop(items);
        assert_eq!(freed.load(Relaxed), 1);
        producer.join().unwrap();
        assert_eq!(pushed.load(SeqCst), 1);
    });
}

// `freeq::parking_lot::Mutex`: two threads replace the value; a loom
// atomic inside the critical section checks mutual exclusion.
#[test]
fn parking_lot_mutex_excludes_and_defers() {
    explore(|| {
        let freed = counter();
        let shared = Arc::new((
            freeq::parking_lot::Mutex::new(Probe::new(0, &freed)),
            AtomicUsize::new(0),
        ));
        fn replace(shared: &(freeq::parking_lot::Mutex<Probe>, AtomicUsize), id: usize) {
            let (lock, inside) = shared;
            let mut value = lock.lock();
            assert_eq!(
                inside.fetch_add(1, SeqCst),
                0,
                "two threads inside the lock"
            );
            let new = Probe::new(id, &value.freed);
            let old = std::mem::replace(&mut *value, new);
            freeq::defer(old);
            inside.fetch_sub(1, SeqCst);
        }
        let other = {
            let shared = shared.clone();
            thread::spawn(move || replace(&shared, 1))
        };
        replace(&shared, 2);
        other.join().unwrap();
        assert_eq!(freed.load(Relaxed), 2);
        assert!(!shared.0.is_locked());
    });
}

// `freeq::parking_lot::Condvar`: as above, with parking_lot's API. The
// consumer's deferred value, queued before it waits, is freed by the wait
// (its only section is released) or, if it never waited, at its unlock.
#[test]
fn parking_lot_condvar_hands_an_item_over() {
    explore(|| {
        let freed = counter();
        let shared = Arc::new((
            freeq::parking_lot::Mutex::new(None::<Probe>),
            freeq::parking_lot::Condvar::new(),
            AtomicUsize::new(0),
        ));
        let producer = {
            let (shared, freed) = (shared.clone(), freed.clone());
            thread::spawn(move || {
                let (slot, ready, pushed) = &*shared;
                *slot.lock() = Some(Probe::new(1, &freed));
                pushed.fetch_add(1, SeqCst);
                ready.notify_one();
            })
        };
        let (slot, ready, pushed) = &*shared;
        let mut item = slot.lock();
        freeq::defer(Probe::new(0, &freed));
        ready.wait_while(&mut item, |item| item.is_none());
        freeq::defer(item.take().unwrap());
        drop(item);
        assert_eq!(freed.load(Relaxed), 2);
        producer.join().unwrap();
        assert_eq!(pushed.load(SeqCst), 1);
    });
}

// `freeq::parking_lot::RwLock` with an upgradable read against a plain
// writer, and `freeq::parking_lot::ReentrantMutex` taken twice by one
// thread while another contends.
#[test]
fn parking_lot_upgrade_and_reentrancy() {
    explore(|| {
        let freed = counter();
        let shared = Arc::new((
            freeq::parking_lot::RwLock::new(Probe::new(0, &freed)),
            freeq::parking_lot::ReentrantMutex::new(AtomicUsize::new(0)),
        ));
        let other = {
            let (shared, freed) = (shared.clone(), freed.clone());
            thread::spawn(move || {
                let mut value = shared.0.write();
                let old = std::mem::replace(&mut *value, Probe::new(1, &freed));
                freeq::defer(old);
                drop(value);
                let count = shared.1.lock();
                count.fetch_add(1, SeqCst);
            })
        };
        {
            let read = shared.0.upgradable_read();
            let seen = read.id;
            let mut value = freeq::parking_lot::RwLockUpgradableReadGuard::upgrade(read);
            assert_eq!(value.id, seen, "a writer got in during the upgrade");
            let old = std::mem::replace(&mut *value, Probe::new(2, &freed));
            freeq::defer(old);
        }
        {
            let outer = shared.1.lock();
            let inner = shared.1.lock();
            inner.fetch_add(1, SeqCst);
            assert!(freeq::in_section());
            drop(inner);
            outer.fetch_add(1, SeqCst);
        }
        other.join().unwrap();
        assert_eq!(freed.load(Relaxed), 2);
        assert_eq!(shared.1.lock().load(SeqCst), 3);
    });
}

// Thread exit: a thread that leaves a section open (a leaked `Section`)
// still frees what it deferred when it exits.
#[test]
fn thread_exit_frees_what_a_leaked_section_held() {
    explore(|| {
        let freed = counter();
        let flag = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (freed, flag) = (freed.clone(), flag.clone());
            thread::spawn(move || {
                std::mem::forget(freeq::section());
                freeq::defer(Probe::new(1, &freed));
                flag.store(1, SeqCst);
                assert_eq!(freeq::pending(), 1);
            })
        };
        let _ = flag.load(SeqCst);
        worker.join().unwrap();
        assert_eq!(freed.load(Relaxed), 1);
    });
}
