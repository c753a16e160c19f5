//! `freeq::stats()` sums the counters of every thread, live or exited.
//!
//! Counters are process-wide, so the tests of this binary run one at a time
//! ([`serial`]) and check deltas between two snapshots. Exact figures are
//! not asserted: the runtime may count more than a test does (for instance
//! reclaimer threads count their own drains), but never less.

use std::mem;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex as StdMutex, MutexGuard as StdMutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use freeq::{Policy, Stats};

fn serial() -> StdMutexGuard<'static, ()> {
    static SERIAL: StdMutex<()> = StdMutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// `after - before` for the summed counters; `max_pending` is a maximum,
/// so it is taken from `after` as is.
fn delta(before: Stats, after: Stats) -> Stats {
    let mut d = after;
    d.deferred -= before.deferred;
    d.freed -= before.freed;
    d.drains -= before.drains;
    d.offloaded -= before.offloaded;
    d.retired -= before.retired;
    d.inline_fallbacks -= before.inline_fallbacks;
    d
}

/// Checks that no counter went down between two snapshots.
fn assert_monotonic(before: Stats, after: Stats) {
    assert!(after.deferred >= before.deferred, "{before:?} -> {after:?}");
    assert!(after.freed >= before.freed, "{before:?} -> {after:?}");
    assert!(after.drains >= before.drains, "{before:?} -> {after:?}");
    assert!(
        after.max_pending >= before.max_pending,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.offloaded >= before.offloaded,
        "{before:?} -> {after:?}"
    );
    assert!(after.retired >= before.retired, "{before:?} -> {after:?}");
    assert!(
        after.inline_fallbacks >= before.inline_fallbacks,
        "{before:?} -> {after:?}"
    );
}

/// Flushes crossbeam-epoch until `done()` holds (a few seconds at most).
fn flush_epoch_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: timed out");
        for _ in 0..16 {
            freeq::epoch::pin().flush();
        }
        thread::yield_now();
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn counters_add_up_across_threads() {
    const THREADS: usize = 4;
    const SECTIONS: usize = 50;
    const PER_SECTION: usize = 6;
    const OUTSIDE: usize = 10;
    const RETIRED: usize = 3;

    let _serial = serial();
    let freed = Arc::new(AtomicUsize::new(0));
    let before = freeq::stats();
    let start = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (freed, start) = (freed.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let m = freeq::Mutex::new(());
                for _ in 0..SECTIONS {
                    let _g = m.lock().unwrap();
                    for _ in 0..PER_SECTION {
                        freeq::defer(Counted(freed.clone()));
                    }
                }
                for _ in 0..OUTSIDE {
                    freeq::defer(Counted(freed.clone()));
                }
                let _s = freeq::section();
                for _ in 0..RETIRED {
                    freeq::retire(Counted(freed.clone()));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let inline = THREADS * (SECTIONS * PER_SECTION + OUTSIDE);
    let total = inline + THREADS * RETIRED;
    // Retired values may already be gone too, if the epoch moved on.
    let now = freed.load(SeqCst);
    assert!(
        (inline..=total).contains(&now),
        "{now} freed, expected {inline}..={total}"
    );

    let after = freeq::stats();
    assert_monotonic(before, after);
    let d = delta(before, after);
    let all = (inline + THREADS * RETIRED) as u64;
    assert!(d.deferred >= all, "deferred: {d:?}, expected >= {all}");
    assert!(
        d.freed >= inline as u64,
        "freed: {d:?}, expected >= {inline}"
    );
    // Every outermost close that found work drains (the last one holds
    // only retired values), and so does every defer outside a section.
    let drains = (THREADS * (SECTIONS + OUTSIDE + 1)) as u64;
    assert!(d.drains >= drains, "drains: {d:?}, expected >= {drains}");
    assert!(d.max_pending >= PER_SECTION as u64, "max_pending: {d:?}");
    let retired = (THREADS * RETIRED) as u64;
    assert!(
        d.retired >= retired,
        "retired: {d:?}, expected >= {retired}"
    );

    // Once the epoch lets the retired values go, they count as freed too.
    flush_epoch_until("retired values freed", || freed.load(SeqCst) == total);
    let d = delta(before, freeq::stats());
    assert!(d.freed >= total as u64, "freed: {d:?}, expected >= {total}");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn offloaded_items_are_counted_by_producer_and_reclaimer() {
    const THREADS: usize = 3;
    const SECTIONS: usize = 20;
    const PER_SECTION: usize = 5;

    let _serial = serial();
    let freed = Arc::new(AtomicUsize::new(0));
    let before = freeq::stats();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let freed = freed.clone();
            thread::spawn(move || {
                // Every batch, however cheap, is worth offloading here.
                freeq::set_offload_threshold_ns(0);
                freeq::set_policy(Policy::Offload);
                for _ in 0..SECTIONS {
                    let _s = freeq::section();
                    for _ in 0..PER_SECTION {
                        freeq::defer(Counted(freed.clone()));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    freeq::quiesce();
    let n = THREADS * SECTIONS * PER_SECTION;
    assert_eq!(freed.load(SeqCst), n);
    let d = delta(before, freeq::stats());
    let n = n as u64;
    assert!(d.deferred >= n, "{d:?}");
    // Each item is either offloaded or freed inline by a fallback batch.
    let inline_max = d.inline_fallbacks * PER_SECTION as u64;
    assert!(d.offloaded + inline_max >= n, "{d:?}");
    // Freed on the reclaimers, published by them before quiesce returned.
    assert!(d.freed >= n, "{d:?}");
    assert!(d.drains >= (THREADS * SECTIONS) as u64, "{d:?}");
    assert!(d.max_pending >= PER_SECTION as u64, "{d:?}");
}

#[test]
fn an_exited_threads_counts_are_kept() {
    let _serial = serial();
    let freed = Arc::new(AtomicUsize::new(0));
    let before = freeq::stats();
    let f = freed.clone();
    thread::spawn(move || {
        let _s = freeq::section();
        for _ in 0..7 {
            freeq::defer(Counted(f.clone()));
        }
    })
    .join()
    .unwrap();
    assert_eq!(freed.load(SeqCst), 7);
    // Spawn and exit more threads, so that exited threads' storage is
    // reused; the first thread's counts must survive that.
    for _ in 0..8 {
        thread::spawn(|| freeq::defer(vec![0u8; 8])).join().unwrap();
    }
    let d = delta(before, freeq::stats());
    assert!(d.deferred >= 15, "{d:?}");
    assert!(d.freed >= 15, "{d:?}");
    assert!(d.drains >= 9, "{d:?}");
    assert!(d.max_pending >= 7, "{d:?}");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn counts_published_only_at_thread_exit_are_kept() {
    const THREADS: usize = 4;
    const ITEMS: usize = 5;

    let _serial = serial();
    let freed = Arc::new(AtomicUsize::new(0));
    let before = freeq::stats();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let freed = freed.clone();
            thread::spawn(move || {
                // A leaked section: nothing drains, nothing is published,
                // until the thread exits and frees what is left.
                mem::forget(freeq::section());
                for _ in 0..ITEMS {
                    freeq::defer(Counted(freed.clone()));
                }
                freeq::retire(Counted(freed.clone()));
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // The deferred values are freed by each thread's exit; the retired
    // ones once the epoch lets them go.
    assert!(freed.load(SeqCst) >= THREADS * ITEMS);
    let d = delta(before, freeq::stats());
    let deferred = (THREADS * (ITEMS + 1)) as u64;
    assert!(
        d.deferred >= deferred,
        "deferred: {d:?}, expected >= {deferred}"
    );
    let freed_n = (THREADS * ITEMS) as u64;
    assert!(d.freed >= freed_n, "freed: {d:?}, expected >= {freed_n}");
    let retired = THREADS as u64;
    assert!(
        d.retired >= retired,
        "retired: {d:?}, expected >= {retired}"
    );
    let all = THREADS * (ITEMS + 1);
    flush_epoch_until("retired values freed", || freed.load(SeqCst) == all);
}

#[test]
fn counters_never_go_down() {
    let _serial = serial();
    let mut last = freeq::stats();
    for i in 0..100 {
        {
            let _s = freeq::section();
            for _ in 0..(i % 7) {
                freeq::defer(String::from("x"));
            }
        }
        let now = freeq::stats();
        assert_monotonic(last, now);
        last = now;
    }
}

/// Each one, dropped, defers a `Counted` and retires another.
struct DeferOnDrop(Arc<AtomicUsize>);

impl Drop for DeferOnDrop {
    fn drop(&mut self) {
        freeq::defer(Counted(self.0.clone()));
        freeq::retire(Counted(self.0.clone()));
    }
}

std::thread_local! {
    /// Dropped after freeq's state on the threads below.
    static LATE: std::cell::Cell<Option<DeferOnDrop>> = const { std::cell::Cell::new(None) };
}

/// Items deferred, retired and freed after a thread's freeq state is gone
/// (a late thread-local destructor, frees run by the exit path) count.
#[test]
#[cfg_attr(miri, ignore = "crossbeam-epoch: run in the Tree Borrows pass")]
fn the_exit_fallbacks_are_counted() {
    const THREADS: usize = 4;
    let _serial = serial();
    let freed = Arc::new(AtomicUsize::new(0));
    let before = freeq::stats();
    for _ in 0..THREADS {
        let freed = freed.clone();
        thread::spawn(move || {
            // Registered before freeq's state, so destroyed after it.
            LATE.with(|l| l.set(Some(DeferOnDrop(freed.clone()))));
            mem::forget(freeq::section());
            freeq::defer(DeferOnDrop(freed)); // freed by the exit path
        })
        .join()
        .unwrap();
    }
    // Per thread: two `DeferOnDrop` (one from the queue, one late), each
    // deferring and retiring one `Counted`.
    let d = delta(before, freeq::stats());
    let per = 1 + 2 * 2;
    assert!(d.deferred >= (THREADS * per) as u64, "{d:?}");
    assert!(d.retired >= (THREADS * 2) as u64, "{d:?}");
    assert!(d.freed >= (THREADS * 3) as u64, "{d:?}");
    flush_epoch_until("retired values freed", || freed.load(SeqCst) == THREADS * 4);
}
