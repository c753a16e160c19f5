//! `Deferred<T>`: values displaced under a lock wait for the unlock, with
//! no call at the drop site; outside a section they drop at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Once};

use freeq::{Deferred, in_section, pending, section};

/// Counts its drops and records whether any ran inside a section.
#[derive(Debug)]
struct Probe {
    drops: Arc<AtomicUsize>,
    under: Arc<AtomicUsize>,
}

#[derive(Clone, Default)]
struct Counter {
    drops: Arc<AtomicUsize>,
    under: Arc<AtomicUsize>,
}

impl Counter {
    fn probe(&self) -> Deferred<Probe> {
        Deferred::new(Probe {
            drops: self.drops.clone(),
            under: self.under.clone(),
        })
    }

    fn drops(&self) -> usize {
        self.drops.load(SeqCst)
    }

    fn under(&self) -> usize {
        self.under.load(SeqCst)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if in_section() {
            self.under.fetch_add(1, SeqCst);
        }
        self.drops.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_value_displaced_from_a_map_is_freed_after_the_unlock() {
    let c = Counter::default();
    let map = freeq::Mutex::new(HashMap::new());
    map.lock().unwrap().insert(1, c.probe());
    {
        let mut m = map.lock().unwrap();
        m.insert(1, c.probe()); // the result is discarded
        assert_eq!(c.drops(), 0);
        assert_eq!(pending(), 1);
        m.remove(&1);
        assert_eq!(pending(), 2);
    }
    assert_eq!((c.drops(), c.under()), (2, 0));
    assert_eq!(pending(), 0);
}

#[test]
fn clear_and_retain_defer_every_value() {
    let c = Counter::default();
    let map = freeq::parking_lot::RwLock::new(BTreeMap::new());
    {
        let mut m = map.write();
        for i in 0..10 {
            m.insert(i, c.probe());
        }
    }
    assert_eq!(c.drops(), 0);
    {
        let mut m = map.write();
        m.retain(|k, _| k % 2 == 0);
        assert_eq!(pending(), 5);
        m.clear();
        assert_eq!(pending(), 10);
        assert_eq!(c.drops(), 0);
    }
    assert_eq!((c.drops(), c.under()), (10, 0));
}

#[test]
fn assigning_through_a_guard_defers_the_old_value() {
    let c = Counter::default();
    let slot = freeq::Mutex::new(c.probe());
    {
        let mut g = slot.lock().unwrap();
        *g = c.probe();
        assert_eq!(pending(), 1);
        assert_eq!(c.drops(), 0);
    }
    assert_eq!((c.drops(), c.under()), (1, 0));
    drop(slot);
    assert_eq!((c.drops(), c.under()), (2, 0));
}

#[test]
fn a_drop_in_one_branch_is_deferred() {
    let c = Counter::default();
    let m = freeq::parking_lot::Mutex::new(Some(c.probe()));
    {
        let mut g = m.lock();
        if g.is_some() {
            *g = None;
        }
        assert_eq!(pending(), 1);
    }
    assert_eq!((c.drops(), c.under()), (1, 0));
}

#[test]
fn outside_a_section_it_drops_at_once() {
    let c = Counter::default();
    assert!(!in_section());
    drop(c.probe());
    assert_eq!(c.drops(), 1);
    let mut map = HashMap::new();
    map.insert(1, c.probe());
    map.insert(1, c.probe());
    assert_eq!(c.drops(), 2);
    assert_eq!(pending(), 0);
}

#[test]
fn into_inner_never_defers() {
    let c = Counter::default();
    let s = section();
    let probe = Deferred::into_inner(c.probe());
    assert_eq!(pending(), 0);
    drop(probe); // a plain `Probe` now: dropped at once, in the section
    assert_eq!((c.drops(), c.under()), (1, 1));
    drop(s);
    assert_eq!(c.drops(), 1);
}

#[test]
fn values_without_drop_glue_are_not_queued() {
    let s = section();
    drop(Deferred::new(5u64));
    drop(Deferred::new([0u8; 64]));
    assert_eq!(pending(), 0);
    drop(s);
}

#[derive(Debug)]
struct Boom;

struct Bomb(Arc<AtomicUsize>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
        panic::panic_any(Boom);
    }
}

fn quiet_booms() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Boom>() {
                default(info);
            }
        }));
    });
}

#[test]
fn a_panicking_drop_surfaces_after_the_unlock_and_the_rest_are_freed() {
    quiet_booms();
    let c = Counter::default();
    let bombs = Arc::new(AtomicUsize::new(0));
    let m = freeq::Mutex::new(Vec::new());
    {
        let mut g = m.lock().unwrap();
        g.push(Deferred::new((Some(Bomb(bombs.clone())), None)));
        g.push(Deferred::new((None, Some(c.probe()))));
    }
    let err = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut g = m.lock().unwrap();
        g.clear();
        assert_eq!(bombs.load(SeqCst), 0, "dropped under the lock");
    }))
    .unwrap_err();
    assert!(err.is::<Boom>());
    assert_eq!(bombs.load(SeqCst), 1);
    assert_eq!((c.drops(), c.under()), (1, 0));
    assert!(!in_section());
    // The panic came after the unlock: the mutex is not poisoned.
    assert!(!m.is_poisoned());
    assert!(m.lock().unwrap().is_empty());
}

#[test]
fn a_panicking_drop_outside_a_section_panics_at_once() {
    quiet_booms();
    let bombs = Arc::new(AtomicUsize::new(0));
    let d = Deferred::new(Bomb(bombs.clone()));
    let err = panic::catch_unwind(AssertUnwindSafe(move || drop(d))).unwrap_err();
    assert!(err.is::<Boom>());
    assert_eq!(bombs.load(SeqCst), 1);
    assert_eq!(pending(), 0);
}

#[test]
fn it_behaves_like_the_value() {
    let a: Deferred<String> = "abc".to_string().into();
    let b = a.clone();
    assert_eq!(a, b);
    assert_eq!(format!("{a} {b:?}"), "abc \"abc\"");
    assert!(Deferred::new(String::from("a")) < Deferred::new(String::from("b")));
    assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
    assert_eq!(a.len(), 3);
    assert_eq!(Deferred::<Vec<u8>>::default().len(), 0);

    // `Borrow<T>`: a set of `Deferred<String>` looked up by `&String`.
    let mut set = HashSet::new();
    set.insert(a);
    assert!(set.contains(&String::from("abc")));

    let mut d = Deferred::new(vec![1]);
    d.push(2);
    d.as_mut().push(3);
    assert_eq!(d.as_ref(), &[1, 2, 3]);
    let mut e = Deferred::new(Vec::new());
    e.clone_from(&d);
    assert_eq!(*e, [1, 2, 3]);
    assert_eq!(std::mem::size_of::<Deferred<u64>>(), 8);
}
