//! Black-box tests of the reclaim policies: contract point 9 (offloading to
//! per-CPU reclaimer threads, `quiesce`, the backlog bound) and point 10
//! (epoch retirement through `retire`), plus the hidden `Reclaimer` type
//! driven directly.
//!
//! The offload bound and the default policy are process-wide, and reclaimer
//! threads are shared by the whole process, so every test here takes
//! [`serial`] first: the tests of this binary run one at a time, and each
//! restores the process-wide settings it changed, even when it fails.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant};

use freeq::{Policy, epoch};

mod common;
use common::{HELPER, PATIENCE, RestorePolicy, quiesce, serial, thread_name, within};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn is_reclaimer(name: &str) -> bool {
    name.starts_with("freeq-reclaim")
}

/// Whether a value freed on thread `name` left its producer: freed by a
/// reclaimer, or by a `quiesce` caller, which frees the batches no
/// reclaimer has started on (so that it never waits on an idle-priority
/// thread that gets no CPU).
fn freed_elsewhere(name: &str) -> bool {
    is_reclaimer(name) || name == HELPER
}

/// Records how many probes were freed and the name of the thread that freed
/// each of them, in order.
#[derive(Default)]
struct Log {
    freed: AtomicUsize,
    threads: StdMutex<Vec<String>>,
}

impl Log {
    fn new() -> Arc<Log> {
        Arc::default()
    }

    fn freed(&self) -> usize {
        self.freed.load(SeqCst)
    }

    fn threads(&self) -> Vec<String> {
        self.threads.lock().unwrap().clone()
    }
}

/// A value that records, when dropped, which thread dropped it.
struct Probe(Arc<Log>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.threads.lock().unwrap().push(thread_name());
        self.0.freed.fetch_add(1, SeqCst);
    }
}

fn probe(log: &Arc<Log>) -> Probe {
    Probe(log.clone())
}

/// A value whose drop panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("freeq test: a free that panics on purpose");
    }
}

/// A one-shot gate: `wait` blocks until `open` (or until [`PATIENCE`]
/// passes, so that a failing test cannot wedge a reclaimer for good).
#[derive(Clone, Default)]
struct Gate(Arc<(StdMutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        let (flag, cv) = &*self.0;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    fn wait(&self) {
        let (flag, cv) = &*self.0;
        let deadline = Instant::now() + PATIENCE;
        let mut open = flag.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            open = cv
                .wait_timeout(open, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Opens its gate when dropped, so that the gate opens even when the test
/// fails before it gets there.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A value whose drop reports the thread it runs on and then blocks until
/// its gate opens: it keeps a reclaimer busy.
struct Blocker {
    gate: Gate,
    started: mpsc::Sender<String>,
}

impl Drop for Blocker {
    fn drop(&mut self) {
        let _ = self.started.send(thread_name());
        self.gate.wait();
    }
}

/// Restores the process-wide settings these tests change.
struct RestoreDefaults;

impl Drop for RestoreDefaults {
    fn drop(&mut self) {
        freeq::set_offload_bound(freeq::DEFAULT_OFFLOAD_BOUND);
        freeq::set_offload_max_wait(freeq::DEFAULT_OFFLOAD_MAX_WAIT);
        freeq::set_default_policy(Policy::Inline);
    }
}

/// Pins the calling thread to one core, so that every batch it offloads
/// goes to the same per-CPU reclaimer. `false` if the platform refused.
fn pin_to_one_core() -> bool {
    match core_affinity::get_core_ids().and_then(|cores| cores.first().copied()) {
        Some(core) => core_affinity::set_for_current(core),
        None => false,
    }
}

/// Pins crossbeam-epoch and flushes, `rounds` times: each call seals this
/// thread's garbage and tries to advance the epoch and collect.
fn flush_epoch(rounds: usize) {
    for _ in 0..rounds {
        epoch::pin().flush();
    }
}

/// Flushes the epoch until `done()` holds; fails after [`PATIENCE`].
fn flush_epoch_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        flush_epoch(16);
        thread::yield_now();
    }
}

/// A thread that pins crossbeam-epoch and stays pinned until released.
struct PinnedReader {
    release: mpsc::Sender<()>,
    handle: thread::JoinHandle<()>,
}

impl PinnedReader {
    /// Returns once the reader is pinned.
    fn start() -> PinnedReader {
        let (pinned_tx, pinned_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let handle = thread::spawn(move || {
            let guard = epoch::pin();
            pinned_tx.send(()).unwrap();
            // Unpins when released, or when the test fails and drops the
            // sender.
            let _ = release_rx.recv();
            drop(guard);
        });
        pinned_rx.recv().expect("reader thread died before pinning");
        PinnedReader { release, handle }
    }

    fn unpin(self) {
        self.release.send(()).unwrap();
        self.handle.join().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Policy::Offload
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn offload_frees_on_a_reclaimer_thread() {
    let _serial = serial();
    let _restore = RestorePolicy::set(Policy::Offload);
    assert_eq!(freeq::policy(), Policy::Offload);
    let log = Log::new();
    let before = freeq::stats();
    let m = freeq::Mutex::new(());
    {
        let _g = m.lock().unwrap();
        for _ in 0..8 {
            freeq::defer(probe(&log));
        }
    }
    quiesce();
    assert_eq!(log.freed(), 8);
    let threads = log.threads();
    assert!(
        threads.iter().all(|t| freed_elsewhere(t)),
        "freed on {threads:?}, expected freeq-reclaim-N threads"
    );
    let after = freeq::stats();
    assert!(
        after.offloaded >= before.offloaded + 8,
        "{before:?} -> {after:?}"
    );
    assert!(after.freed >= before.freed + 8, "{before:?} -> {after:?}");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn offload_outside_a_section_frees_on_a_reclaimer_thread() {
    let _serial = serial();
    let _restore = RestorePolicy::set(Policy::Offload);
    let log = Log::new();
    freeq::defer(probe(&log));
    quiesce();
    assert_eq!(log.freed(), 1);
    assert!(freed_elsewhere(&log.threads()[0]), "{:?}", log.threads());
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn offloaded_frees_that_defer_more_are_all_freed_on_the_reclaimer() {
    let _serial = serial();
    let _restore = RestorePolicy::set(Policy::Offload);
    let log = Log::new();
    {
        let _s = freeq::section();
        for _ in 0..4 {
            let inner = log.clone();
            freeq::defer_fn(move || {
                // Runs on the reclaimer: what it defers is freed there too.
                let _s = freeq::section();
                freeq::defer(Probe(inner.clone()));
                freeq::defer(Probe(inner));
            });
        }
    }
    quiesce();
    assert_eq!(log.freed(), 8);
    assert!(
        log.threads().iter().all(|t| freed_elsewhere(t)),
        "{:?}",
        log.threads()
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn quiesce_waits_for_everything_handed_off_before_it() {
    const PRODUCERS: usize = 4;
    const SECTIONS: usize = 200;
    const PER_SECTION: usize = 10;

    /// A value whose drop takes a little while now and then, so that
    /// reclaimers fall behind the producers.
    struct Slow(Arc<AtomicUsize>, usize);

    impl Drop for Slow {
        fn drop(&mut self) {
            if self.1.is_multiple_of(97) {
                thread::sleep(Duration::from_micros(200));
            }
            self.0.fetch_add(1, SeqCst);
        }
    }

    let _serial = serial();
    let total = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let total = total.clone();
            thread::spawn(move || {
                // Every batch, however cheap, is worth offloading here.
                freeq::set_offload_threshold_ns(0);
                freeq::set_policy(Policy::Offload);
                let mine = Arc::new(AtomicUsize::new(0));
                let m = freeq::Mutex::new(());
                for s in 0..SECTIONS {
                    {
                        let _g = m.lock().unwrap();
                        for i in 0..PER_SECTION {
                            freeq::defer(Slow(mine.clone(), s * PER_SECTION + i));
                            freeq::defer(Slow(total.clone(), 1));
                        }
                    }
                    if s % 50 == 49 {
                        // Other producers keep handing off meanwhile.
                        quiesce();
                        assert_eq!(
                            mine.load(SeqCst),
                            (s + 1) * PER_SECTION,
                            "producer {p}: quiesce returned before its batches were freed"
                        );
                    }
                }
                quiesce();
                assert_eq!(mine.load(SeqCst), SECTIONS * PER_SECTION, "producer {p}");
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    quiesce();
    assert_eq!(total.load(SeqCst), PRODUCERS * SECTIONS * PER_SECTION);
}

#[test]
fn quiesce_without_offloading_returns_at_once() {
    let _serial = serial();
    quiesce();
    {
        let _s = freeq::section();
        freeq::defer(vec![1u8; 16]);
    }
    quiesce();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn backpressure_frees_inline_past_the_bound() {
    const BOUND: usize = 4;
    const BATCH: usize = 2;
    const BATCHES: usize = 20;

    let _serial = serial();
    let _restore = RestoreDefaults;

    let producer = thread::Builder::new()
        .name("backpressure-producer".into())
        .spawn(|| {
            // Per-CPU reclaimers: stay on one CPU so that every batch goes
            // to the reclaimer kept busy below.
            if !pin_to_one_core() {
                eprintln!("backpressure test skipped: cannot pin a thread to a core");
                return;
            }
            // Every batch, however cheap, is worth offloading here.
            freeq::set_offload_threshold_ns(0);
            freeq::set_policy(Policy::Offload);
            let me = thread_name();

            // Keep every reclaimer busy (each takes work from any CPU's
            // inbox): one blocker each, handed off one at a time so that
            // each lands alone in this CPU's inbox and a free reclaimer
            // takes it.
            let gate = Gate::default();
            let open = OpenOnDrop(gate.clone());
            let blockers = freeq::__reclaimer_count();
            for _ in 0..blockers {
                let (started_tx, started_rx) = mpsc::channel();
                {
                    let _s = freeq::section();
                    freeq::defer(Blocker {
                        gate: gate.clone(),
                        started: started_tx,
                    });
                }
                let blocked = started_rx
                    .recv_timeout(PATIENCE)
                    .expect("the blocker was never freed");
                assert!(is_reclaimer(&blocked), "blocker freed on {blocked}");
            }
            // The inbox holds `blockers` items; allow `BOUND` more.
            freeq::set_offload_bound(blockers + BOUND);
            assert_eq!(freeq::offload_bound(), blockers + BOUND);

            let log = Log::new();
            let before = freeq::stats();
            let mut deferred = 0;
            let mut inline_batches = 0;
            for b in 0..BATCHES {
                let freed_before = log.freed();
                {
                    let _s = freeq::section();
                    for _ in 0..BATCH {
                        freeq::defer(probe(&log));
                    }
                }
                deferred += BATCH;
                let freed = log.freed();
                // The reclaimer is blocked: whatever was freed, this thread
                // freed, and a batch goes one way as a whole.
                match freed - freed_before {
                    0 => {}
                    BATCH => inline_batches += 1,
                    n => panic!("batch {b}: {n} of its {BATCH} items freed inline"),
                }
                let outstanding = deferred - freed;
                assert!(
                    outstanding <= BOUND + BATCH,
                    "batch {b}: {outstanding} items outstanding, bound {BOUND}, batch {BATCH}"
                );
            }
            let threads = log.threads();
            assert!(threads.iter().all(|t| *t == me), "freed on {threads:?}");
            assert!(
                inline_batches >= BATCHES - BOUND.div_ceil(BATCH),
                "only {inline_batches} of {BATCHES} batches freed inline"
            );
            let after = freeq::stats();
            assert!(
                after.inline_fallbacks >= before.inline_fallbacks + inline_batches as u64,
                "{inline_batches} batches freed inline: {before:?} -> {after:?}"
            );

            // Release the reclaimer: the accepted batches are freed there.
            drop(open);
            quiesce();
            assert_eq!(log.freed(), deferred);
            // Everything freed after the release was offloaded before it.
            let late = &log.threads()[inline_batches * BATCH..];
            assert!(late.iter().all(|t| freed_elsewhere(t)), "{late:?}");

            // The backlog is gone: batches are offloaded again.
            let again = Log::new();
            {
                let _s = freeq::section();
                freeq::defer(probe(&again));
            }
            quiesce();
            assert!(
                freed_elsewhere(&again.threads()[0]),
                "{:?}",
                again.threads()
            );
        })
        .unwrap();
    producer.join().unwrap();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn an_idle_reclaimer_accepts_a_batch_larger_than_the_bound() {
    let _serial = serial();
    let _restore = RestoreDefaults;
    freeq::set_offload_bound(2);
    let _policy = RestorePolicy::set(Policy::Offload);
    quiesce();
    let log = Log::new();
    {
        let _s = freeq::section();
        for _ in 0..10 {
            freeq::defer(probe(&log));
        }
    }
    quiesce();
    assert_eq!(log.freed(), 10);
    assert!(
        log.threads().iter().all(|t| freed_elsewhere(t)),
        "{:?}",
        log.threads()
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn a_panicking_free_does_not_stop_the_reclaimer() {
    let _serial = serial();
    let _restore = RestorePolicy::set(Policy::Offload);
    let log = Log::new();
    for round in 0..3 {
        {
            let _s = freeq::section();
            freeq::defer(probe(&log));
            freeq::defer(Bomb);
            freeq::defer(probe(&log));
            freeq::defer(Bomb);
            freeq::defer(probe(&log));
        }
        quiesce();
        assert_eq!(log.freed(), 3 * (round + 1), "round {round}");
    }
    // Later batches still reach a live reclaimer.
    {
        let _s = freeq::section();
        freeq::defer(probe(&log));
    }
    quiesce();
    assert_eq!(log.freed(), 10);
    let threads = log.threads();
    assert!(threads.iter().all(|t| freed_elsewhere(t)), "{threads:?}");
}

// ---------------------------------------------------------------------------
// Epoch retirement
// ---------------------------------------------------------------------------

/// Retires a value under a lock while a reader is pinned (beside a plain
/// deferred value when `with_defer`), checks that the epoch holds it back
/// until the reader unpins, then that it is freed.
fn retire_under_a_lock_while_a_reader_is_pinned(with_defer: bool) {
    let _serial = serial();
    let log = Log::new();
    let plain = Log::new();
    let reader = PinnedReader::start();
    let before = freeq::stats();
    let m = freeq::Mutex::new(());
    {
        let _g = m.lock().unwrap();
        freeq::retire(probe(&log));
        if with_defer {
            freeq::defer(probe(&plain));
        }
        assert_eq!(log.freed(), 0);
    }
    assert_eq!(plain.freed(), usize::from(with_defer));
    // Unlocked, but the reader is still pinned.
    flush_epoch(1000);
    assert_eq!(
        log.freed(),
        0,
        "retired value freed while a reader was pinned"
    );
    let after = freeq::stats();
    assert!(after.retired > before.retired, "{before:?} -> {after:?}");
    assert!(after.deferred > before.deferred, "{before:?} -> {after:?}");

    reader.unpin();
    flush_epoch_until("retired value freed after the reader unpinned", || {
        log.freed() == 1
    });
    assert_eq!(log.freed(), 1);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn retire_waits_for_a_pinned_reader() {
    retire_under_a_lock_while_a_reader_is_pinned(false);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn retire_beside_a_defer_waits_for_a_pinned_reader() {
    retire_under_a_lock_while_a_reader_is_pinned(true);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn a_section_holding_only_retired_values_hands_them_to_the_epoch_when_it_closes() {
    let _serial = serial();
    let log = Log::new();
    let before = freeq::stats();
    {
        let _s = freeq::section();
        freeq::retire(probe(&log));
    }
    // The close published the drain's counts...
    let after = freeq::stats();
    assert!(after.retired > before.retired, "{before:?} -> {after:?}");
    // ...and the value reached the epoch: with no reader pinned, flushing
    // the epoch frees it (without any further freeq call on this thread).
    flush_epoch_until("retired value freed", || log.freed() == 1);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn retire_outside_a_section_goes_to_the_epoch_at_once() {
    let _serial = serial();
    assert!(!freeq::in_section());
    let log = Log::new();
    let reader = PinnedReader::start();
    freeq::retire(probe(&log));
    assert_eq!(freeq::pending(), 0);
    flush_epoch(1000);
    assert_eq!(
        log.freed(),
        0,
        "retired value freed while a reader was pinned"
    );
    reader.unpin();
    flush_epoch_until("retired value freed", || log.freed() == 1);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn retire_hands_a_whole_batch_to_the_epoch() {
    let _serial = serial();
    let log = Log::new();
    let reader = PinnedReader::start();
    {
        let _s = freeq::section();
        for _ in 0..100 {
            freeq::retire(probe(&log));
        }
        freeq::defer(probe(&log));
    }
    // The plain defer is freed at once; the retired ones wait.
    assert_eq!(log.freed(), 1);
    flush_epoch(1000);
    assert_eq!(log.freed(), 1);
    reader.unpin();
    flush_epoch_until("retired batch freed", || log.freed() == 101);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn a_retired_value_collected_inside_a_section_waits_for_it_to_close() {
    let _serial = serial();
    let log = Log::new();
    freeq::retire(probe(&log));
    let me = thread_name();
    let s = freeq::section();
    let deadline = Instant::now() + PATIENCE;
    // Collect until this thread picks the value up (it then waits in this
    // thread's queue) or another thread frees it.
    while freeq::pending() == 0 && log.freed() == 0 {
        assert!(Instant::now() < deadline, "retired value never collected");
        flush_epoch(16);
    }
    if log.freed() == 0 {
        flush_epoch(100);
        assert_eq!(log.freed(), 0, "collected inside a section and freed there");
        drop(s);
        assert_eq!(log.freed(), 1);
        assert_eq!(log.threads(), [me]);
    } else {
        drop(s);
        assert_ne!(log.threads(), [me], "freed inside a section on this thread");
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "crossbeam-epoch is not Stacked Borrows clean (crossbeam#545): scripts/miri.sh runs this under Tree Borrows"
)]
fn retire_under_offload() {
    let _serial = serial();
    let _restore = RestorePolicy::set(Policy::Offload);
    let retired = Log::new();
    let deferred = Log::new();
    let reader = PinnedReader::start();
    {
        let _s = freeq::section();
        freeq::retire(probe(&retired));
        freeq::defer(probe(&deferred));
    }
    quiesce();
    assert_eq!(deferred.freed(), 1);
    assert!(
        freed_elsewhere(&deferred.threads()[0]),
        "{:?}",
        deferred.threads()
    );
    flush_epoch(1000);
    quiesce();
    assert_eq!(
        retired.freed(),
        0,
        "retired value freed while a reader was pinned"
    );
    reader.unpin();
    flush_epoch_until("retired value freed under Policy::Offload", || {
        quiesce();
        retired.freed() == 1
    });
}

// ---------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn default_policy_applies_to_threads_without_their_own() {
    let _serial = serial();
    let _restore = RestoreDefaults;
    assert_eq!(freeq::default_policy(), Policy::Inline);
    assert_eq!(thread::spawn(freeq::policy).join().unwrap(), Policy::Inline);

    // Every batch, however cheap, is worth offloading here.
    freeq::set_offload_threshold_ns(0);
    freeq::set_default_policy(Policy::Offload);
    assert_eq!(freeq::default_policy(), Policy::Offload);

    // A thread that never chose follows the default...
    let log = Log::new();
    let follower = {
        let log = log.clone();
        thread::spawn(move || {
            assert_eq!(freeq::policy(), Policy::Offload);
            let _s = freeq::section();
            freeq::defer(Probe(log));
        })
    };
    follower.join().unwrap();
    quiesce();
    assert_eq!(log.freed(), 1);
    assert!(freed_elsewhere(&log.threads()[0]), "{:?}", log.threads());

    // ...a thread that chose keeps its choice.
    let log = Log::new();
    let chooser = {
        let log = log.clone();
        thread::Builder::new()
            .name("chooses-inline".into())
            .spawn(move || {
                freeq::set_policy(Policy::Inline);
                assert_eq!(freeq::policy(), Policy::Inline);
                {
                    let _s = freeq::section();
                    freeq::defer(Probe(log.clone()));
                }
                assert_eq!(log.freed(), 1);
            })
            .unwrap()
    };
    chooser.join().unwrap();
    assert_eq!(log.threads(), ["chooses-inline"]);

    freeq::set_default_policy(Policy::Inline);
    assert_eq!(freeq::default_policy(), Policy::Inline);
    assert_eq!(thread::spawn(freeq::policy).join().unwrap(), Policy::Inline);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn set_policy_is_per_thread() {
    let _serial = serial();
    let _restore = RestorePolicy::set(Policy::Offload);
    assert_eq!(freeq::policy(), Policy::Offload);
    assert_eq!(thread::spawn(freeq::policy).join().unwrap(), Policy::Inline);
    freeq::set_policy(Policy::Inline);
    assert_eq!(freeq::policy(), Policy::Inline);
}

// ---------------------------------------------------------------------------
// The reclaimer type, driven directly
// ---------------------------------------------------------------------------

fn queue_of(log: &Arc<Log>, n: usize) -> freeq::FreeQueue {
    let mut q = freeq::FreeQueue::new();
    for _ in 0..n {
        q.push(probe(log));
    }
    q
}

#[test]
fn a_reclaimer_frees_what_several_producers_hand_it() {
    let _serial = serial();
    let r = Arc::new(freeq::__Reclaimer::new());
    let runner = {
        let r = r.clone();
        thread::Builder::new()
            .name("own-reclaimer".into())
            .spawn(move || r.run())
            .unwrap()
    };
    let log = Log::new();
    let producers: Vec<_> = (0..3)
        .map(|_| {
            let (r, log) = (r.clone(), log.clone());
            thread::spawn(move || {
                for _ in 0..50 {
                    r.hand_off_queue(queue_of(&log, 3));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    {
        let r = r.clone();
        within("Reclaimer::quiesce", move || r.quiesce());
    }
    assert_eq!(log.freed(), 450);
    assert_eq!(r.outstanding(), 0);
    // Freed by the runner, or by the quiesce caller (batches no runner
    // had started on yet).
    let threads = log.threads();
    assert!(
        threads.iter().all(|t| t == "own-reclaimer" || t == HELPER),
        "{threads:?}"
    );
    r.shutdown();
    within("Reclaimer::run after shutdown", move || {
        runner.join().unwrap()
    });
}

#[test]
fn a_reclaimer_keeps_going_after_a_panicking_free() {
    let _serial = serial();
    let r = Arc::new(freeq::__Reclaimer::new());
    let runner = {
        let r = r.clone();
        thread::spawn(move || r.run())
    };
    let log = Log::new();
    let mut q = queue_of(&log, 1);
    q.push(Bomb);
    q.push(probe(&log));
    r.hand_off_queue(q);
    r.hand_off_queue(queue_of(&log, 2));
    {
        let r = r.clone();
        within("Reclaimer::quiesce", move || r.quiesce());
    }
    assert_eq!(log.freed(), 4);
    assert_eq!(r.outstanding(), 0);
    r.shutdown();
    within("Reclaimer::run after shutdown", move || {
        runner.join().unwrap()
    });
}

#[test]
fn run_once_and_outstanding_without_a_thread() {
    let _serial = serial();
    let r = freeq::__Reclaimer::new();
    assert!(!r.run_once());
    let log = Log::new();
    r.hand_off_queue(queue_of(&log, 3));
    r.hand_off_queue(queue_of(&log, 2));
    assert_eq!(r.outstanding(), 5);
    assert_eq!(log.freed(), 0);
    assert!(r.run_once());
    assert_eq!(log.freed(), 5);
    assert_eq!(r.outstanding(), 0);
    assert!(!r.run_once());
    // An empty hand-off counts for nothing but still goes through the inbox.
    r.hand_off_queue(freeq::FreeQueue::new());
    assert_eq!(r.outstanding(), 0);
    assert!(r.run_once());
}

#[test]
fn a_reclaimer_dropped_with_work_frees_it() {
    let _serial = serial();
    let log = Log::new();
    let r = freeq::__Reclaimer::new();
    r.hand_off_queue(queue_of(&log, 4));
    r.shutdown();
    drop(r);
    assert_eq!(log.freed(), 4);
}

#[test]
fn shutdown_before_run_returns_once_the_inbox_is_empty() {
    let _serial = serial();
    let log = Log::new();
    let r = Arc::new(freeq::__Reclaimer::new());
    r.hand_off_queue(queue_of(&log, 2));
    r.shutdown();
    let runner = {
        let r = r.clone();
        thread::spawn(move || r.run())
    };
    within("Reclaimer::run after shutdown", move || {
        runner.join().unwrap()
    });
    assert_eq!(log.freed(), 2);
    assert_eq!(r.outstanding(), 0);
}

/// Whether thread `tid` of this process is asleep in the kernel (a parked
/// runner), where `/proc` tells; `None` elsewhere.
fn asleep(tid: i64) -> Option<bool> {
    if tid < 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The state follows the parenthesised name, which may hold spaces.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    Some(state == "S")
}

/// The kernel's id of the calling thread, where there is one.
fn tid() -> i64 {
    #[cfg(all(target_os = "linux", not(miri)))]
    // SAFETY: `gettid` takes no arguments and cannot fail.
    return unsafe { libc::gettid() } as i64;
    #[cfg(not(all(target_os = "linux", not(miri))))]
    return -1;
}

/// Waits until runners whose kernel thread ids are in `tids` are all
/// parked: asleep where `/proc` tells, else marked as parking and given a
/// moment to get there.
fn wait_parked(r: &freeq::__Reclaimer, tids: &[Arc<std::sync::atomic::AtomicI64>]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let marked = r.parked_runners() == tids.len();
        let asleep: Option<Vec<bool>> = tids
            .iter()
            .map(|t| match t.load(SeqCst) {
                0 => Some(false),
                t => asleep(t),
            })
            .collect();
        match asleep {
            Some(a) if marked && a.iter().all(|&s| s) => return,
            None if marked => {
                thread::sleep(Duration::from_millis(50));
                return;
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "the runners never parked");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Inbox `i` takes the batches drained on CPU `i`, whose runner freeq pins
/// to CPU `i`: that runner is the one that cannot run while the producer
/// keeps CPU `i` busy (it has idle priority). A hand-off wakes another
/// CPU's runner first, so that an idle CPU frees the batch at once.
#[test]
fn a_hand_off_wakes_another_cpus_runner_before_its_own() {
    let _serial = serial();
    let r = Arc::new(freeq::__Reclaimer::with_shape(2, 2));
    let tids: Vec<_> = (0..2)
        .map(|_| Arc::new(std::sync::atomic::AtomicI64::new(0)))
        .collect();
    let runners: Vec<_> = (0..2)
        .map(|i| {
            let (r, tid_slot) = (r.clone(), tids[i].clone());
            thread::Builder::new()
                .name(format!("runner-{i}"))
                .spawn(move || {
                    tid_slot.store(tid(), SeqCst);
                    r.run_as(i)
                })
                .unwrap()
        })
        .collect();
    let log = Log::new();
    for (inbox, expect) in [(0, "runner-1"), (1, "runner-0"), (0, "runner-1")] {
        wait_parked(&r, &tids);
        let before = log.freed();
        r.hand_off_queue_to(inbox, queue_of(&log, 1));
        let deadline = Instant::now() + PATIENCE;
        while log.freed() == before {
            assert!(Instant::now() < deadline, "nobody freed the batch");
            thread::sleep(Duration::from_millis(1));
        }
        let by = log.threads().last().cloned().unwrap();
        assert_eq!(by, expect, "a batch drained on CPU {inbox}");
    }
    r.shutdown();
    for runner in runners {
        within("Reclaimer::run_as after shutdown", move || {
            runner.join().unwrap()
        });
    }
}

/// The item bound counts items, not what they cost: a heavy value is one
/// item. When no reclaimer comes for what waits in an inbox (every CPU
/// busy, so idle-priority reclaimers get no time), a batch that has
/// waited longer than `offload_max_wait()` sends later batches back to
/// their producer, instead of piling up for `quiesce`.
#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn a_batch_nobody_comes_for_sends_later_ones_inline_after_the_max_wait() {
    let _serial = serial();
    let _restore = RestoreDefaults;

    let producer = thread::Builder::new()
        .name("max-wait-producer".into())
        .spawn(|| {
            if !pin_to_one_core() {
                eprintln!("max-wait test skipped: cannot pin a thread to a core");
                return;
            }
            freeq::set_offload_threshold_ns(0);
            freeq::set_policy(Policy::Offload);
            let me = thread_name();
            // Keep every reclaimer busy, as in the backpressure test: no
            // reclaimer comes for what lands in this CPU's inbox.
            let gate = Gate::default();
            let open = OpenOnDrop(gate.clone());
            for _ in 0..freeq::__reclaimer_count() {
                let (started_tx, started_rx) = mpsc::channel();
                {
                    let _s = freeq::section();
                    freeq::defer(Blocker {
                        gate: gate.clone(),
                        started: started_tx,
                    });
                }
                let blocked = started_rx
                    .recv_timeout(PATIENCE)
                    .expect("the blocker was never freed");
                assert!(is_reclaimer(&blocked), "blocker freed on {blocked}");
            }
            let one = |log: &Arc<Log>| {
                let _s = freeq::section();
                freeq::defer(probe(log));
            };
            let log = Log::new();
            let before = freeq::stats();

            // Far below the item bound, and the wait check off: every batch
            // is handed off, however long the first has waited.
            freeq::set_offload_max_wait(Duration::ZERO);
            one(&log);
            thread::sleep(Duration::from_millis(5));
            one(&log);
            assert_eq!(log.freed(), 0, "handed off: {:?}", log.threads());

            // With a 1 ms bound, the batches waiting for 5 ms and more send
            // the next one inline.
            freeq::set_offload_max_wait(Duration::from_millis(1));
            one(&log);
            assert_eq!(log.freed(), 1, "freed inline past the wait bound");
            assert_eq!(log.threads(), [me]);
            let after = freeq::stats();
            assert!(
                after.inline_fallbacks > before.inline_fallbacks,
                "{before:?} -> {after:?}"
            );

            // The reclaimers come back and empty the inbox: batches leave
            // again.
            drop(open);
            quiesce();
            assert_eq!(log.freed(), 3);
            let again = Log::new();
            one(&again);
            quiesce();
            assert!(
                freed_elsewhere(&again.threads()[0]),
                "{:?}",
                again.threads()
            );
        })
        .unwrap();
    producer.join().unwrap();
}
