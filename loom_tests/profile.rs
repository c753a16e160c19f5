//! loom models of `freeq::profile` where it crosses threads: each thread
//! records its sampled sections in its own table while another thread
//! takes snapshots or resets, and a thread's table joins the exited
//! threads' sums when it exits.
//!
//! The profile is process-wide: the models take `SERIAL` (the test
//! harness runs them on parallel threads), and each model iteration
//! resets the profile first.
//!
//! Run with `scripts/loom.sh`.
#![cfg(loom)]

mod common;

use common::{Arc, defer_mutex};
use loom::thread;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One sampled critical section on a deferring mutex, deferring a value.
fn one_section(m: &Arc<common::DeferMutex<u32>>) {
    let mut g = m.lock();
    *g += 1;
    freeq::defer(vec![*g]);
}

// A snapshot taken while another thread records, and after that thread
// exits, sees each finished section once: live tables and exited sums
// are never both counted, nor neither.
#[test]
fn snapshots_count_each_section_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    loom::model(|| {
        freeq::profile::enable(1);
        freeq::profile::reset();
        let m = defer_mutex(0u32);
        let t = {
            let m = m.clone();
            thread::spawn(move || one_section(&m))
        };
        one_section(&m);
        let during = freeq::profile::snapshot();
        assert!((1..=2).contains(&during.sections()), "{during}");
        t.join().unwrap();
        let after = freeq::profile::snapshot();
        assert_eq!(after.sections(), 2, "{after}");
        assert_eq!(after.sites().iter().map(|s| s.values()).sum::<u64>(), 2);
    });
}

// A reset racing a section on another thread never panics and never
// blocks it; the section is counted after the reset or forgotten with
// the rest, and what follows the reset is counted.
#[test]
fn reset_races_a_section() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    loom::model(|| {
        freeq::profile::enable(1);
        freeq::profile::reset();
        let m = defer_mutex(0u32);
        let t = {
            let m = m.clone();
            thread::spawn(move || one_section(&m))
        };
        freeq::profile::reset();
        t.join().unwrap();
        let raced = freeq::profile::snapshot().sections();
        assert!(raced <= 1);
        one_section(&m);
        assert_eq!(freeq::profile::snapshot().sections(), raced + 1);
    });
}

/// Batches the models' offload executor was handed.
static BATCHES: std::sync::Mutex<Vec<freeq::Batch>> = std::sync::Mutex::new(Vec::new());

/// A sampled section on `m` whose value leaves the thread (`defer_heavy`):
/// the batch lands in `BATCHES`, marked with the section's site.
fn one_offloaded_section(m: &Arc<common::DeferMutex<u32>>) -> freeq::Batch {
    freeq::set_offload_executor(|b| BATCHES.lock().unwrap().push(b));
    {
        let g = m.lock();
        freeq::defer_heavy(vec![*g]);
    }
    freeq::clear_offload_executor();
    BATCHES
        .lock()
        .unwrap()
        .pop()
        .expect("the batch went to the executor")
}

// A handed-off batch of a sampled section, freed on another thread while
// a snapshot runs: its time is added to the site once, and a snapshot
// taken meanwhile sees it added or not, never twice.
#[test]
fn an_offloaded_batch_is_added_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    loom::model(|| {
        freeq::profile::enable(1);
        freeq::profile::reset();
        let m = defer_mutex(0u32);
        let batch = one_offloaded_section(&m);
        let t = thread::spawn(move || batch.free());
        let during = freeq::profile::snapshot();
        let added = |p: &freeq::profile::Profile| {
            p.sites().iter().map(|s| s.offloaded_batches()).sum::<u64>()
        };
        assert!(added(&during) <= 1, "{during}");
        t.join().unwrap();
        let after = freeq::profile::snapshot();
        assert_eq!(added(&after), 1, "{after}");
        assert_eq!(after.sections(), 1, "{after}");
    });
}

// A reset racing the free of a handed-off batch: the batch's time is
// forgotten with the rest, whichever comes first, and nothing panics.
#[test]
fn a_reset_races_an_offloaded_free() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    loom::model(|| {
        freeq::profile::enable(1);
        freeq::profile::reset();
        let m = defer_mutex(0u32);
        let batch = one_offloaded_section(&m);
        let t = thread::spawn(move || batch.free());
        freeq::profile::reset();
        t.join().unwrap();
        let after = freeq::profile::snapshot();
        assert_eq!(after.sites().len(), 0, "{after}");
    });
}
