//! Under `Policy::Offload`, only batches worth moving leave the thread: the
//! rule judges a batch by the learned drop cost of its items, not by their
//! count, and a batch holding a type whose cost is not known yet leaves so
//! that its first free is timed on a reclaimer. One test in this binary, so
//! the process-wide statistics it reads are its own.

use std::cell::Cell;

use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use freeq::Policy;

mod common;
use common::{PATIENCE, quiesce, within};

thread_local! {
    static FREED_HERE: Cell<usize> = const { Cell::new(0) };
}

/// Cheap to drop; deferred nowhere else, so freeq has not timed it before
/// this test defers it.
struct Cheap(#[allow(dead_code)] u64);

impl Drop for Cheap {
    fn drop(&mut self) {
        let _ = FREED_HERE.try_with(|n| n.set(n.get() + 1));
    }
}

/// Takes about a millisecond to drop, far above the default threshold.
struct Heavy;

impl Drop for Heavy {
    fn drop(&mut self) {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Busy for 2 ms when dropped (asleep under Miri, whose clock a busy loop
/// would crawl through), and reports the name of the thread that dropped
/// it. Deferred nowhere else.
struct Slow(mpsc::Sender<String>);

impl Drop for Slow {
    fn drop(&mut self) {
        let t = Instant::now();
        if cfg!(miri) {
            thread::sleep(Duration::from_millis(2));
        }
        while t.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let name = thread::current().name().unwrap_or("<unnamed>").to_owned();
        let _ = self.0.send(name);
    }
}

/// Defers `make()` inside a section on this thread; returns the counts
/// the section's drain added.
fn one_section(make: impl FnOnce()) -> freeq::Stats {
    let before = freeq::stats();
    {
        let _s = freeq::section();
        make();
    }
    freeq::stats().since(&before)
}

/// The first value of a type with a slow drop leaves the thread the first
/// time it is deferred, and that one free teaches freeq its cost.
fn a_slow_type_leaves_on_first_sight_and_is_timed_there() {
    let (tx, rx) = mpsc::channel();
    let d = one_section(|| freeq::defer(Slow(tx.clone())));
    assert_eq!(d.offloaded, 1, "an untimed type was freed inline: {d:?}");
    // Wait for a reclaimer (at normal priority) to free it, without
    // `quiesce`, which would free it on the calling thread.
    let by = rx.recv_timeout(PATIENCE).expect("no reclaimer freed it");
    assert!(by.starts_with("freeq-reclaim"), "freed on {by}");
    quiesce();

    // Learned: with the threshold above 2 ms the next one stays here ...
    freeq::set_offload_threshold_ns(1_000_000_000);
    let d = one_section(|| freeq::defer(Slow(tx.clone())));
    assert_eq!(d.offloaded, 0, "still untimed after its first free");
    let here = thread::current().name().map(str::to_owned);
    assert_eq!(rx.try_recv().ok(), here, "freed here");
    // ... and with the default one it leaves, by its learned cost.
    freeq::set_offload_threshold_ns(freeq::DEFAULT_OFFLOAD_THRESHOLD_NS);
    let d = one_section(|| freeq::defer(Slow(tx.clone())));
    assert_eq!(d.offloaded, 1, "learned a 2 ms drop as cheap");
    quiesce();
    assert!(rx.try_recv().is_ok());
}

/// A cheap type's first batch may leave (its cost is unknown); once it has
/// been timed, cheap batches are freed inline.
fn cheap_batches_stay_inline_once_timed() {
    let eight = || {
        for i in 0..8 {
            freeq::defer(Cheap(i));
        }
    };
    one_section(eight);
    quiesce(); // wherever the first batch went, it has been freed and timed
    if cfg!(miri) {
        // Miri's clock makes every drop slow: judge them by a threshold
        // that a cheap batch stays under there too.
        freeq::set_offload_threshold_ns(1_000_000_000);
    }
    for round in 0..3 {
        FREED_HERE.with(|n| n.set(0));
        let d = one_section(eight);
        assert_eq!(d.offloaded, 0, "round {round}: a cheap batch was moved");
        assert_eq!(FREED_HERE.with(Cell::get), 8, "round {round}");
    }
    freeq::set_offload_threshold_ns(freeq::DEFAULT_OFFLOAD_THRESHOLD_NS);
}

/// One heavy value among eight cheap ones: the whole batch of nine leaves,
/// whatever the count of cheap items.
fn a_heavy_value_makes_its_batch_leave() {
    FREED_HERE.with(|n| n.set(0));
    let d = one_section(|| {
        for i in 0..4 {
            freeq::defer(Cheap(i));
        }
        freeq::defer(Heavy);
        for i in 4..8 {
            freeq::defer(Cheap(i));
        }
    });
    assert_eq!(d.offloaded, 9);
    assert_eq!(FREED_HERE.with(Cell::get), 0, "the batch was freed here");
    // quiesce frees, on the calling thread, whatever no reclaimer has
    // started on.
    quiesce();
}

/// Items of a [`freeq::FreeQueue`] freed through a hidden reclaimer:
/// counted as freed, never as deferred.
static QUEUED_ONLY: AtomicU64 = AtomicU64::new(0);

/// Asserts that every item deferred so far has been freed exactly once.
fn assert_balanced(when: &str) {
    let s = freeq::stats();
    let queued = QUEUED_ONLY.load(SeqCst);
    assert_eq!(
        s.deferred + queued,
        s.freed,
        "{when} ({queued} queued): {s:?}"
    );
}

/// Handed-off batches freed on a thread that is inside a section (by
/// `quiesce` or `Batch::free`) count once as freed.
fn batches_freed_inside_a_section_count_once() {
    quiesce();
    assert_balanced("before");

    // `quiesce` inside a section, right after the hand-off: it frees the
    // batch itself unless a reclaimer was quicker; the counts balance
    // either way. On a helper thread, so a stuck reclaimer fails the test.
    within("quiesce inside a section", || {
        freeq::set_policy(Policy::Offload);
        for _ in 0..4 {
            let d = one_section(|| {
                freeq::defer(Heavy);
                freeq::defer(Cheap(0));
            });
            assert_eq!(d.offloaded, 2);
            let _s = freeq::section();
            freeq::quiesce();
        }
    });
    assert_balanced("after quiesce inside a section");

    // A hidden reclaimer with no thread of its own: its `quiesce` always
    // frees the batch on the caller, here inside a section. A `FreeQueue`
    // is counted when its items are freed, once.
    let r = freeq::__Reclaimer::new();
    let mut q = freeq::FreeQueue::new();
    for i in 0..5 {
        q.push(Cheap(i));
    }
    r.hand_off_queue(q);
    let before = freeq::stats();
    {
        let _s = freeq::section();
        r.quiesce();
        assert_eq!(r.outstanding(), 0);
    }
    let d = freeq::stats().since(&before);
    assert_eq!((d.deferred, d.freed), (0, 5), "{d:?}");
    QUEUED_ONLY.fetch_add(5, SeqCst);

    // `Batch::free` inside a section, on this thread.
    let batches = std::sync::Arc::new(StdMutex::new(Vec::new()));
    let keep = batches.clone();
    freeq::set_offload_executor(move |b| keep.lock().unwrap().push(b));
    let d = one_section(|| {
        freeq::defer(Heavy);
        freeq::defer(Cheap(1));
        freeq::defer(Cheap(2));
    });
    freeq::clear_offload_executor();
    assert_eq!(d.offloaded, 3);
    let taken: Vec<freeq::Batch> = std::mem::take(&mut *batches.lock().unwrap());
    assert_eq!(taken.len(), 1);
    {
        let _s = freeq::section();
        for b in taken {
            b.free();
        }
    }
    assert_balanced("after Batch::free inside a section");
}

/// An executor that frees each batch right where the drain called it, on
/// the draining thread (by `Batch::free` or by dropping it), is called
/// once per batch: the items run then and there, instead of rejoining the
/// drain in progress and going back to the executor again, forever.
fn an_executor_that_frees_in_place_gets_each_batch_once() {
    quiesce();
    assert_balanced("before");
    let ways: [fn(freeq::Batch); 2] = [|b| b.free(), drop];
    for in_place in ways {
        within("a drain whose executor frees in place", move || {
            let calls = std::sync::Arc::new(AtomicU64::new(0));
            let seen = calls.clone();
            freeq::set_offload_executor(move |b| {
                seen.fetch_add(1, SeqCst);
                in_place(b);
            });
            freeq::set_policy(Policy::Offload);
            let freed_before = FREED_HERE.with(Cell::get);
            let d = one_section(|| {
                freeq::defer(Heavy);
                freeq::defer(Cheap(3));
            });
            freeq::clear_offload_executor();
            assert_eq!(calls.load(SeqCst), 1, "one batch, one call");
            assert_eq!(d.offloaded, 2);
            assert_eq!(
                FREED_HERE.with(Cell::get) - freed_before,
                1,
                "freed on the draining thread, once"
            );
        });
    }
    assert_balanced("after an executor that frees in place");
}

/// Threads of this process named `freeq-reclaim*`, where `/proc` tells.
fn reclaimer_threads() -> Option<usize> {
    if cfg!(miri) {
        return None;
    }
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("freeq-reclaim"))
            .count(),
    )
}

/// A kernel CPU list (`0-2,5`) as CPU numbers.
fn cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(lo.parse::<usize>().unwrap()..=hi.parse::<usize>().unwrap());
    }
    cpus
}

/// The CPUs a `/proc` status file allows, if it tells.
fn allowed(status: &str) -> Option<Vec<usize>> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(cpu_list(line))
}

/// Each reclaimer thread's index (from its name) and its allowed CPUs.
type RunnerCpus = Vec<(usize, Vec<usize>)>;

/// The reclaimers' [`RunnerCpus`], and the process's CPUs (the main
/// thread's and this one's), where `/proc` tells.
fn reclaimer_cpus() -> Option<(RunnerCpus, Vec<usize>)> {
    if cfg!(miri) {
        return None;
    }
    let mut process = allowed(&std::fs::read_to_string("/proc/self/status").ok()?)?;
    process.extend(allowed(
        &std::fs::read_to_string("/proc/thread-self/status").ok()?,
    )?);
    process.sort_unstable();
    process.dedup();
    let mut runners = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        let Some(index) = comm.trim().strip_prefix("freeq-reclaim-") else {
            continue;
        };
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        runners.push((index.parse().ok()?, allowed(&status)?));
    }
    Some((runners, process))
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn untimed_types_leave_timed_cheap_batches_stay_and_counts_balance() {
    // This test waits on freeq's own reclaimers: at idle priority they may
    // get no CPU at all while the machine is busy.
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    assert_eq!(
        freeq::offload_threshold_ns(),
        freeq::DEFAULT_OFFLOAD_THRESHOLD_NS
    );
    assert!(
        matches!(reclaimer_threads(), None | Some(0)),
        "nothing offloaded yet"
    );
    freeq::set_policy(Policy::Offload);
    // Choosing Offload starts the reclaimers, so that the first hand-off
    // (on a producer) does not.
    // (Each names itself once it runs: wait for that, not for a hand-off.)
    if reclaimer_threads().is_some() {
        let deadline = Instant::now() + PATIENCE;
        while reclaimer_threads() != Some(freeq::__reclaimer_count()) {
            assert!(
                Instant::now() < deadline,
                "set_policy started no reclaimers"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    // Runner `i` is pinned to the `i`-th CPU of the process: woken, it
    // runs there and nowhere else (the kernel cannot place it behind the
    // producer that woke it).
    if let Some((runners, process)) = reclaimer_cpus() {
        assert_eq!(runners.len(), process.len(), "one runner per CPU");
        for (index, cpus) in runners {
            assert_eq!(cpus, vec![process[index]], "freeq-reclaim-{index}");
        }
    }

    a_slow_type_leaves_on_first_sight_and_is_timed_there();
    cheap_batches_stay_inline_once_timed();
    a_heavy_value_makes_its_batch_leave();
    batches_freed_inside_a_section_count_once();
    an_executor_that_frees_in_place_gets_each_batch_once();

    freeq::set_policy(Policy::Inline);

    // defer_heavy under Inline: the value leaves the thread on its own, and
    // the counts balance once it is freed (the action and the value).
    {
        let _s = freeq::section();
        freeq::defer_heavy(Heavy);
    }
    quiesce();
    assert_balanced("after defer_heavy");
}
