//! What freeq does on the one thread of a target without threads
//! (`wasm32-unknown-unknown`, `wasm32-wasip1`), checked on every target:
//! sections, drains, `Deferred`, `FreeQueue`, the locks and `retire` work
//! on one thread, and `Policy::Offload` frees inline where no reclaimer
//! can be started. Nothing here starts a thread, so the file also runs on
//! `wasm32-wasip1` (for example under a WASI runtime such as Node's).
#![cfg(not(miri))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use freeq::{Deferred, FreeQueue, Policy};

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

/// Whether this target can start threads (as freeq decides it).
const THREADS: bool = !cfg!(all(target_family = "wasm", not(target_feature = "atomics")));

#[test]
fn sections_locks_deferred_and_free_queues_on_one_thread() {
    let n = counter();
    {
        let _s = freeq::section();
        freeq::defer(Counted(n.clone()));
        assert!(freeq::in_section());
        assert_eq!(freeq::pending(), 1);
        assert_eq!(n.load(SeqCst), 0);
    }
    assert_eq!(n.load(SeqCst), 1, "freed when the section closed");

    let m = freeq::Mutex::new(Counted(n.clone()));
    {
        let mut g = m.lock().unwrap();
        let old = std::mem::replace(&mut *g, Counted(n.clone()));
        freeq::defer(old);
        assert_eq!(n.load(SeqCst), 1);
    }
    assert_eq!(n.load(SeqCst), 2, "freed after the unlock");

    #[cfg(feature = "parking_lot")]
    {
        let p = freeq::parking_lot::Mutex::new(0);
        let _g = p.lock();
        freeq::defer(Counted(n.clone()));
        assert_eq!(n.load(SeqCst), 2);
    }
    #[cfg(feature = "parking_lot")]
    assert_eq!(n.load(SeqCst), 3);
    let before = n.load(SeqCst);

    {
        let _s = freeq::section();
        drop(Deferred::new(Counted(n.clone())));
        assert_eq!(n.load(SeqCst), before);
    }
    assert_eq!(n.load(SeqCst), before + 1, "a Deferred's drop waited");

    let mut q = FreeQueue::new();
    q.push(Counted(n.clone()));
    q.push(Counted(n.clone()));
    assert_eq!(q.len(), 2);
    q.drain();
    assert_eq!(n.load(SeqCst), before + 3);
}

#[test]
fn offload_frees_inline_without_threads() {
    let n = counter();
    // Where reclaimers exist, let them run on a busy machine.
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    freeq::set_offload_threshold_ns(0);
    freeq::set_policy(Policy::Offload);
    {
        let _s = freeq::section();
        freeq::defer(Counted(n.clone()));
        freeq::defer_heavy(Counted(n.clone()));
    }
    if !THREADS {
        assert_eq!(n.load(SeqCst), 2, "no reclaimer: freed inline at once");
    }
    freeq::quiesce();
    assert_eq!(n.load(SeqCst), 2);
    freeq::set_policy(Policy::Inline);
}

#[test]
fn retire_frees_once_the_epoch_moves_on() {
    let n = counter();
    {
        let _s = freeq::section();
        freeq::retire(Counted(n.clone()));
    }
    for _ in 0..10_000 {
        if n.load(SeqCst) == 1 {
            break;
        }
        freeq::epoch::pin().flush();
    }
    assert_eq!(n.load(SeqCst), 1, "retired and freed");
}
