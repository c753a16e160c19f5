//! How long is the lock held, and how much work gets done, when values
//! replaced under a lock are freed in different ways?
//!
//! The workload is a cache: a `Vec` of records behind one mutex. Every
//! critical section replaces a few records (8 by default) with fresh ones
//! built beforehand, outside the lock. Each record owns many heap strings
//! (17 by default), so freeing a replaced record is what costs. The
//! strategies differ only in what happens to the replaced records:
//!
//! | strategy          | the replaced records are...                                   |
//! | ----------------- | ------------------------------------------------------------- |
//! | drop-under-lock   | dropped in place, with the `std` mutex held                   |
//! | hand-written      | pushed to a local `Vec`, cleared after the unlock             |
//! | freeq std         | `freeq::defer`red under a `freeq::Mutex`; freed after unlock  |
//! | freeq parking_lot | the same under a `freeq::parking_lot::Mutex`                  |
//! | freeq offload     | as freeq std, with `Policy::Offload`: freed by a reclaimer    |
//! |                   | thread instead of the unlocking thread                        |
//! | crossbeam-epoch   | `guard.defer(..)`ed under the lock; freed when epochs advance |
//! | defer-drop        | wrapped in `DeferDrop` and dropped under the lock, which      |
//! |                   | sends them to defer-drop's global thread                      |
//!
//! *Hold time* runs from just after the lock is acquired to just before the
//! guard is dropped, so work done after the unlock (the hand-written clear,
//! freeq's drain) is not in it. *Throughput* is critical sections per second
//! of wall time, where the clock stops only once every replaced record has
//! been freed: freeq offload waits in `freeq::quiesce()`, crossbeam-epoch is
//! flushed with repeated `pin().flush()`, and since defer-drop has no way to
//! wait for its thread, the example polls a count of freed records until
//! that thread has caught up.
//!
//! With `--fresh-threads` every run spawns new threads instead (8 by
//! default, `--threads N`): each runs `--sections` critical sections (100
//! by default) and exits, generation after generation, and nothing is
//! warmed up, so the first critical sections of fresh threads are part of
//! every figure. This is the churn of thread-per-connection servers,
//! scoped threads, rayon scopes and test harnesses; the extra `1st max`
//! column is the longest hold of any thread's first critical section.
//!
//! The run prints what it measures and how long it takes, a legend, one
//! table per thread count, and a verdict in plain words.
//!
//! ```text
//! cargo run --release --example lock_hold -- [--threads 1,2] [--seconds 16]
//!     [--records 8] [--strings 17] [--cache 4096] [--rounds 5]
//!     [--only hand,freeq,...] [--fresh-threads [--sections 100]] [--svg hold.svg]
//! ```
//!
//! `--help` lists the options; values may be given as `--name value` or
//! `--name=value`.

use std::fmt::Write as _;
use std::mem;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_epoch as epoch;
use defer_drop::DeferDrop;
use hdrhistogram::Histogram;

#[path = "common/args.rs"]
mod args;

#[path = "common/workload.rs"]
mod workload;
use workload::{Fresh, Record, Rng, freed};

// ---------------------------------------------------------------------------
// The strategies: one critical section each, returning the lock hold time
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    DropUnderLock,
    HandWritten,
    FreeqStd,
    FreeqParkingLot,
    FreeqOffload,
    Epoch,
    DeferDrop,
}

impl Strategy {
    const ALL: [Strategy; 7] = [
        Strategy::DropUnderLock,
        Strategy::HandWritten,
        Strategy::FreeqStd,
        Strategy::FreeqParkingLot,
        Strategy::FreeqOffload,
        Strategy::Epoch,
        Strategy::DeferDrop,
    ];

    /// The name `--only` takes.
    fn key(self) -> &'static str {
        match self {
            Strategy::DropUnderLock => "drop",
            Strategy::HandWritten => "hand",
            Strategy::FreeqStd => "freeq",
            Strategy::FreeqParkingLot => "freeq-pl",
            Strategy::FreeqOffload => "offload",
            Strategy::Epoch => "epoch",
            Strategy::DeferDrop => "defer-drop",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Strategy::DropUnderLock => "drop-under-lock",
            Strategy::HandWritten => "hand-written Vec",
            Strategy::FreeqStd => "freeq std",
            Strategy::FreeqParkingLot => "freeq parking_lot",
            Strategy::FreeqOffload => "freeq offload",
            Strategy::Epoch => "crossbeam-epoch",
            Strategy::DeferDrop => "defer-drop",
        }
    }
}

/// The shared cache, behind the kind of lock the strategy uses.
enum Cache {
    Std(StdMutex<Vec<Record>>),
    Freeq(freeq::Mutex<Vec<Record>>),
    FreeqParkingLot(freeq::parking_lot::Mutex<Vec<Record>>),
}

impl Cache {
    fn new(strategy: Strategy, records: Vec<Record>) -> Cache {
        match strategy {
            Strategy::FreeqStd | Strategy::FreeqOffload => Cache::Freeq(freeq::Mutex::new(records)),
            Strategy::FreeqParkingLot => {
                Cache::FreeqParkingLot(freeq::parking_lot::Mutex::new(records))
            }
            _ => Cache::Std(StdMutex::new(records)),
        }
    }
}

/// The old records are dropped in place, with the lock held.
fn drop_under_lock(cache: &StdMutex<Vec<Record>>, fresh: &mut Fresh) -> Duration {
    let mut cache = cache.lock().unwrap();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        cache[slot] = record; // frees the old record here
    }
    let held = start.elapsed();
    drop(cache);
    held
}

/// The pattern written by hand: collect the old records, free them after
/// the unlock.
fn hand_written(
    cache: &StdMutex<Vec<Record>>,
    fresh: &mut Fresh,
    dead: &mut Vec<Record>,
) -> Duration {
    let mut cache = cache.lock().unwrap();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        dead.push(mem::replace(&mut cache[slot], record));
    }
    let held = start.elapsed();
    drop(cache);
    dead.clear(); // frees the old records, lock released
    held
}

/// freeq with its `std`-backed mutex: the same pattern, automatically.
/// Under `Policy::Offload` the unlock hands the deferred records to a
/// reclaimer thread instead of freeing them here.
fn freeq_std(cache: &freeq::Mutex<Vec<Record>>, fresh: &mut Fresh) -> Duration {
    let mut cache = cache.lock().unwrap();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        freeq::defer(mem::replace(&mut cache[slot], record));
    }
    let held = start.elapsed();
    drop(cache); // unlocks, then frees what was deferred
    held
}

/// freeq with its parking_lot mutex.
fn freeq_parking_lot(
    cache: &freeq::parking_lot::Mutex<Vec<Record>>,
    fresh: &mut Fresh,
) -> Duration {
    let mut cache = cache.lock();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        freeq::defer(mem::replace(&mut cache[slot], record));
    }
    let held = start.elapsed();
    drop(cache);
    held
}

/// crossbeam-epoch: pin and defer the drops under the lock; they run once
/// the global epoch has advanced, on whichever thread collects them.
fn epoch_defer(cache: &StdMutex<Vec<Record>>, fresh: &mut Fresh) -> Duration {
    let mut cache = cache.lock().unwrap();
    let start = Instant::now();
    let guard = epoch::pin();
    for (slot, record) in fresh.drain(..) {
        let old = mem::replace(&mut cache[slot], record);
        guard.defer(move || drop(old));
    }
    let held = start.elapsed();
    drop(cache);
    drop(guard);
    held
}

/// defer-drop: each old record is boxed into a channel message for
/// defer-drop's single global thread, which frees it.
fn defer_drop(cache: &StdMutex<Vec<Record>>, fresh: &mut Fresh) -> Duration {
    let mut cache = cache.lock().unwrap();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        drop(DeferDrop::new(mem::replace(&mut cache[slot], record)));
    }
    let held = start.elapsed();
    drop(cache);
    held
}

// ---------------------------------------------------------------------------
// Running one strategy on N threads
// ---------------------------------------------------------------------------

struct Config {
    threads: Vec<usize>,
    seconds: f64,
    records: usize,
    strings: usize,
    cache: usize,
    rounds: usize,
    strategies: Vec<Strategy>,
    /// Where the chart goes; opened before the run so a bad path fails early.
    svg: Option<(String, std::fs::File)>,
    /// Fresh-thread churn: every run starts new threads, measured from their
    /// first critical section.
    fresh: bool,
    /// Critical sections each fresh thread runs before it exits.
    sections: usize,
}

/// Phases of a run, shared with the worker threads.
const WARM_UP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Outcome {
    strategy: Strategy,
    /// Lock hold time per critical section, in nanoseconds.
    hold: Histogram<u64>,
    /// Critical sections completed while measuring.
    ops: u64,
    /// Wall time from the start of measuring until everything was freed.
    elapsed: Duration,
    /// The part of `elapsed` after the workers stopped, waiting for frees.
    reclaim_wait: Duration,
    /// What freeq's own counters saw during the run.
    freeq: freeq::Stats,
    /// Hold times of each thread's first critical section (fresh-thread
    /// mode only; empty otherwise).
    first: Histogram<u64>,
}

impl Outcome {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Folds another run of the same strategy into this one.
    fn merge(&mut self, other: Outcome) {
        self.hold.add(&other.hold).unwrap();
        self.first.add(&other.first).unwrap();
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.reclaim_wait += other.reclaim_wait;
        self.freeq.deferred += other.freeq.deferred;
        self.freeq.offloaded += other.freeq.offloaded;
        self.freeq.inline_fallbacks += other.freeq.inline_fallbacks;
    }
}

fn run(strategy: Strategy, threads: usize, slice: Duration, cfg: &Config) -> Outcome {
    let mut rng = Rng::new(7);
    let records = (0..cfg.cache)
        .map(|_| Record::new(cfg.strings, &mut rng))
        .collect();
    let cache = Cache::new(strategy, records);
    let phase = AtomicU8::new(WARM_UP);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    freed::reset();
    let stats_before = freeq::stats();

    let (start, results) = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (cache, phase, core) =
                    (&cache, &phase, cores.get(t % cores.len().max(1)).copied());
                s.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker(strategy, cache, phase, t as u64, cfg)
                })
            })
            .collect();
        thread::sleep(slice / 5);
        let start = Instant::now();
        phase.store(MEASURE, Relaxed);
        thread::sleep(slice);
        phase.store(STOP, Relaxed);
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (start, results)
    });

    let stopped = Instant::now();
    let retired: u64 = results.iter().map(|r| r.retired).sum();
    wait_until_freed(strategy, retired);
    let elapsed = start.elapsed();
    let reclaim_wait = stopped.elapsed();
    drop(cache);

    let mut hold = new_histogram();
    for r in &results {
        hold.add(&r.hold).unwrap();
    }
    Outcome {
        strategy,
        hold,
        ops: results.iter().map(|r| r.ops).sum(),
        elapsed,
        reclaim_wait,
        freeq: freeq::stats().since(&stats_before),
        first: new_histogram(),
    }
}

/// Fresh-thread churn: generation after generation of `threads` newly
/// spawned threads, each running `cfg.sections` critical sections and
/// exiting, until `slice` has passed. Nothing is warmed up: every thread's
/// first sections are measured, as in a thread-per-connection server, a
/// scoped-thread or rayon-scope workload, or a test harness.
fn run_fresh(strategy: Strategy, threads: usize, slice: Duration, cfg: &Config) -> Outcome {
    let mut rng = Rng::new(7);
    let records = (0..cfg.cache)
        .map(|_| Record::new(cfg.strings, &mut rng))
        .collect();
    let cache = Cache::new(strategy, records);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    freed::reset();
    let stats_before = freeq::stats();
    let (mut hold, mut first) = (new_histogram(), new_histogram());
    let (mut ops, mut retired, mut generation) = (0, 0, 0u64);

    let start = Instant::now();
    // At least one generation, however short the slice.
    while generation == 0 || start.elapsed() < slice {
        // All threads of a generation start their first section together.
        let ready = std::sync::Barrier::new(threads);
        let results: Vec<WorkerResult> = thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (cache, ready, core) =
                        (&cache, &ready, cores.get(t % cores.len().max(1)).copied());
                    let seed = generation * threads as u64 + t as u64;
                    s.spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        fresh_worker(strategy, cache, ready, seed, cfg)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for r in results {
            hold.add(&r.hold).unwrap();
            first.add(&r.first).unwrap();
            ops += r.ops;
            retired += r.retired;
        }
        generation += 1;
    }

    let stopped = Instant::now();
    wait_until_freed(strategy, retired);
    let elapsed = start.elapsed();
    let reclaim_wait = stopped.elapsed();
    drop(cache);
    Outcome {
        strategy,
        hold,
        ops,
        elapsed,
        reclaim_wait,
        freeq: freeq::stats().since(&stats_before),
        first,
    }
}

/// One fresh thread: `cfg.sections` critical sections, all measured.
fn fresh_worker(
    strategy: Strategy,
    cache: &Cache,
    ready: &std::sync::Barrier,
    seed: u64,
    cfg: &Config,
) -> WorkerResult {
    if strategy == Strategy::FreeqOffload {
        freeq::set_policy(freeq::Policy::Offload);
    }
    let mut rng = Rng::new(seed + 1);
    let (mut hold, mut first) = (new_histogram(), new_histogram());
    let mut fresh: Fresh = Vec::with_capacity(cfg.records);
    let mut dead = Vec::with_capacity(cfg.records);
    ready.wait();
    for i in 0..cfg.sections {
        for _ in 0..cfg.records {
            fresh.push((rng.below(cfg.cache), Record::new(cfg.strings, &mut rng)));
        }
        let held = one_section(strategy, cache, &mut fresh, &mut dead).as_nanos() as u64;
        hold.saturating_record(held);
        if i == 0 {
            first.saturating_record(held);
        }
    }
    WorkerResult {
        hold,
        first,
        ops: cfg.sections as u64,
        retired: (cfg.sections * cfg.records) as u64,
    }
}

struct WorkerResult {
    hold: Histogram<u64>,
    /// The hold time of the thread's first critical section (fresh-thread
    /// mode only).
    first: Histogram<u64>,
    /// Critical sections completed while measuring.
    ops: u64,
    /// Records replaced in every phase, all of which must be freed.
    retired: u64,
}

fn worker(
    strategy: Strategy,
    cache: &Cache,
    phase: &AtomicU8,
    seed: u64,
    cfg: &Config,
) -> WorkerResult {
    if strategy == Strategy::FreeqOffload {
        freeq::set_policy(freeq::Policy::Offload);
    }
    let mut rng = Rng::new(seed + 1);
    let mut hold = new_histogram();
    let (mut ops, mut retired) = (0, 0);
    let mut fresh: Fresh = Vec::with_capacity(cfg.records);
    let mut dead = Vec::with_capacity(cfg.records);
    let mut measuring = false;
    loop {
        match phase.load(Relaxed) {
            STOP => break,
            MEASURE if !measuring => {
                measuring = true;
                hold.reset();
            }
            _ => {}
        }
        // Build the new records before taking the lock.
        for _ in 0..cfg.records {
            fresh.push((rng.below(cfg.cache), Record::new(cfg.strings, &mut rng)));
        }
        let held = one_section(strategy, cache, &mut fresh, &mut dead);
        hold.saturating_record(held.as_nanos() as u64);
        retired += cfg.records as u64;
        ops += u64::from(measuring);
    }
    WorkerResult {
        hold,
        first: new_histogram(),
        ops,
        retired,
    }
}

/// One critical section of `strategy`: replaces the records in `fresh` and
/// returns the lock hold time.
fn one_section(
    strategy: Strategy,
    cache: &Cache,
    fresh: &mut Fresh,
    dead: &mut Vec<Record>,
) -> Duration {
    match (strategy, cache) {
        (Strategy::DropUnderLock, Cache::Std(c)) => drop_under_lock(c, fresh),
        (Strategy::HandWritten, Cache::Std(c)) => hand_written(c, fresh, dead),
        (Strategy::FreeqStd | Strategy::FreeqOffload, Cache::Freeq(c)) => freeq_std(c, fresh),
        (Strategy::FreeqParkingLot, Cache::FreeqParkingLot(c)) => freeq_parking_lot(c, fresh),
        (Strategy::Epoch, Cache::Std(c)) => epoch_defer(c, fresh),
        (Strategy::DeferDrop, Cache::Std(c)) => defer_drop(c, fresh),
        _ => unreachable!("each strategy is paired with its lock in Cache::new"),
    }
}

/// Returns once every replaced record has been freed.
fn wait_until_freed(strategy: Strategy, retired: u64) {
    while freed::total() < retired {
        match strategy {
            // Advance the epoch and collect garbage on this thread.
            Strategy::FreeqOffload => freeq::quiesce(),
            Strategy::Epoch => epoch::pin().flush(),
            // defer-drop offers no flush: wait for its thread to catch up.
            _ => thread::sleep(Duration::from_micros(100)),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// The cost of the two `Instant::now()` calls every hold time includes.
fn timer_floor() -> u64 {
    let lock = StdMutex::new(());
    let mut h = new_histogram();
    for _ in 0..100_000 {
        let g = lock.lock().unwrap();
        let start = Instant::now();
        let held = start.elapsed();
        drop(g);
        h.saturating_record(held.as_nanos() as u64);
    }
    h.value_at_quantile(0.5)
}

/// The 1-minute load average where the OS reports it: other work on the
/// machine skews every figure, throughput most.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn fmt_rate(ops: f64) -> String {
    if ops >= 1e6 {
        format!("{:.2} M", ops / 1e6)
    } else {
        format!("{:.1} k", ops / 1e3)
    }
}

fn print_table(threads: usize, cfg: &Config, outcomes: &[Outcome]) {
    let base = outcomes
        .iter()
        .find(|o| o.strategy == Strategy::HandWritten);
    let base_p50 = base.map(|b| b.hold.value_at_quantile(0.5) as f64);
    let base_ops = base.map(|b| b.ops_per_sec());
    let per_run = outcomes[0].elapsed.as_secs_f64() / cfg.rounds as f64;
    if cfg.fresh {
        println!(
            "\n{threads} fresh thread(s) at a time, {} critical sections each, then they exit; \
             {} records x {} strings replaced per critical section; {} rounds of {per_run:.2} s \
             per strategy",
            cfg.sections, cfg.records, cfg.strings, cfg.rounds,
        );
    } else {
        println!(
            "\n{threads} thread(s): {} records x {} strings replaced per critical section; \
             {} rounds of {per_run:.2} s per strategy",
            cfg.records, cfg.strings, cfg.rounds,
        );
    }
    print!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>8} {:>11} {:>8} {:>9}",
        "strategy",
        "hold p50",
        "hold p99",
        "hold max",
        "hold mean",
        "p50/hand",
        "sections/s",
        "tput/hand",
        "free wait"
    );
    if cfg.fresh {
        print!(" {:>9}", "1st max");
    }
    println!();
    for o in outcomes {
        let p50 = o.hold.value_at_quantile(0.5) as f64;
        let ratio = |x: Option<f64>, f: &dyn Fn(f64) -> f64| {
            x.map_or("-".into(), |b| format!("{:.2}x", f(b)))
        };
        print!(
            "{:<18} {:>9} {:>9} {:>9} {:>9} {:>8} {:>11} {:>8} {:>9}",
            o.strategy.name(),
            fmt_ns(p50),
            fmt_ns(o.hold.value_at_quantile(0.99) as f64),
            fmt_ns(o.hold.max() as f64),
            fmt_ns(o.hold.mean()),
            ratio(base_p50, &|b| p50 / b),
            fmt_rate(o.ops_per_sec()),
            ratio(base_ops, &|b| o.ops_per_sec() / b),
            format!("{:.0} ms", o.reclaim_wait.as_secs_f64() * 1e3),
        );
        if cfg.fresh {
            print!(" {:>9}", fmt_ns(o.first.max() as f64));
        }
        println!();
    }
    if let Some(o) = outcomes
        .iter()
        .find(|o| o.strategy == Strategy::FreeqOffload)
    {
        println!(
            "freeq offload: {:.0}% of the deferred records went to a reclaimer; {} batches were \
             freed inline because the reclaimers were behind",
            100.0 * o.freeq.offloaded as f64 / o.freeq.deferred.max(1) as f64,
            o.freeq.inline_fallbacks,
        );
    }
    verdict(threads, cfg, outcomes);
}

/// What the columns mean, printed once before the first table.
fn legend(cfg: &Config) {
    println!(
        "\nColumns:\n\
         \x20 hold p50/p99/max/mean  lock hold time per critical section (lock acquired to\n\
         \x20                        guard dropped): median, 99th percentile, worst, average\n\
         \x20 p50/hand               hold p50 divided by the hand-written Vec pattern's\n\
         \x20                        (1.00x = as short as freeing after the unlock by hand)\n\
         \x20 sections/s             critical sections per second of wall time; the clock\n\
         \x20                        stops only once every replaced record has been freed\n\
         \x20 tput/hand              sections/s divided by the hand-written pattern's\n\
         \x20 free wait              time after the workers stopped until the last replaced\n\
         \x20                        record was freed (part of the sections/s wall time)"
    );
    if cfg.fresh {
        println!(
            "\x20 1st max                the longest hold of any thread's first critical section"
        );
    }
}

/// A few plain sentences on the table just printed.
fn verdict(threads: usize, cfg: &Config, outcomes: &[Outcome]) {
    let find = |s: Strategy| outcomes.iter().find(|o| o.strategy == s);
    let p50 = |o: &Outcome| o.hold.value_at_quantile(0.5).max(1) as f64;
    let p99 = |o: &Outcome| o.hold.value_at_quantile(0.99).max(1) as f64;
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let mut lines = Vec::new();
    let freeq = find(Strategy::FreeqStd).or(find(Strategy::FreeqParkingLot));
    if let (Some(f), Some(h)) = (freeq, find(Strategy::HandWritten)) {
        let r = p50(f) / p50(h);
        let t = f.ops_per_sec() / h.ops_per_sec();
        lines.push(format!(
            "{}: median hold {r:.2}x the hand-written pattern's ({}), throughput {t:.2}x ({}).",
            f.strategy.name(),
            if r <= 1.1 {
                "the same as by hand, automatically"
            } else if r <= 1.5 {
                "close to it; sub-microsecond medians move 10-20% between runs"
            } else {
                "longer than by hand"
            },
            if t >= 1.05 {
                "ahead of it"
            } else if t >= 0.95 {
                "on par"
            } else {
                "behind the hand-written pattern"
            },
        ));
    }
    if let (Some(f), Some(d)) = (freeq, find(Strategy::DropUnderLock)) {
        lines.push(format!(
            "drop-under-lock held the lock {:.0}x longer on average than {} (mean {} vs {}): \
             freeing under the lock is what freeq moves out.",
            d.hold.mean() / f.hold.mean().max(1.0),
            f.strategy.name(),
            fmt_ns(d.hold.mean()),
            fmt_ns(f.hold.mean()),
        ));
    }
    for other in [Strategy::Epoch, Strategy::DeferDrop] {
        if let (Some(f), Some(o)) = (freeq, find(other)) {
            lines.push(format!(
                "{}: p99 hold {:.1}x freeq's ({}).",
                o.strategy.name(),
                p99(o) / p99(f),
                match other {
                    Strategy::Epoch => "pin() may run other threads' garbage inside the section",
                    _ => "a box and a channel send per record under the lock",
                }
            ));
        }
    }
    if let (Some(o), Some(f)) = (find(Strategy::FreeqOffload), find(Strategy::FreeqStd)) {
        let t = o.ops_per_sec() / f.ops_per_sec();
        let load = load_average().parse::<f64>().unwrap_or(0.0);
        let busy = threads >= cores || load >= cores as f64;
        lines.push(format!(
            "freeq offload: throughput {t:.2}x freeq std's. Its clock includes waiting until \
             the reclaimers have freed every record (free wait {:.0} ms); reclaimers run at idle \
             priority, so they get a CPU only when a core has nothing else to do. {}",
            o.reclaim_wait.as_secs_f64() * 1e3,
            if busy {
                format!(
                    "Here {threads} worker(s) ran on {cores} core(s) at load average {load:.1}: \
                     with no core idle the frees wait, or the workers free inline once the \
                     backlog bound is hit. Offload pays when cores are spare or single values \
                     are heavy to drop; for cheap records on busy cores keep Policy::Inline."
                )
            } else {
                format!(
                    "Here {threads} worker(s) leave {} of {cores} core(s) for the reclaimers.",
                    cores - threads
                )
            }
        ));
    }
    if cfg.fresh
        && let (Some(f), Some(h)) = (freeq, find(Strategy::HandWritten))
    {
        lines.push(format!(
            "fresh threads: the longest first critical section was {} under {} and {} by \
                 hand.",
            fmt_ns(f.first.max() as f64),
            f.strategy.name(),
            fmt_ns(h.first.max() as f64),
        ));
    }
    let load = load_average().parse::<f64>().unwrap_or(0.0);
    if load > cores as f64 {
        lines.push(format!(
            "the machine was busy (load average {load:.1} on {cores} core(s)): throughput \
             ratios and maxima move a lot between runs; the medians are steadier."
        ));
    }
    if !lines.is_empty() {
        println!("verdict:");
        for l in lines {
            println!("  - {l}");
        }
    }
}

/// A horizontal bar chart of p50 and p99 hold times, log scale, one panel
/// per thread count.
fn svg_chart(results: &[(usize, Vec<Outcome>)]) -> String {
    const LEFT: f64 = 170.0; // bars start here; strategy names go to the left
    const WIDTH: f64 = 600.0;
    const ROW: f64 = 34.0;
    const BLUE: &str = "#4878d0";
    const ORANGE: &str = "#ee854a";
    let quantile = |o: &Outcome, q: f64| o.hold.value_at_quantile(q).max(1);
    let all = || results.iter().flat_map(|(_, o)| o);
    let lo = all().map(|o| quantile(o, 0.5)).min().unwrap_or(1);
    let hi = all().map(|o| quantile(o, 0.99)).max().unwrap_or(10);
    // Whole decades, at least one.
    let (d0, d1) = ((lo as f64).log10().floor(), (hi as f64).log10().ceil());
    let d1 = d1.max(d0 + 1.0);
    let x = |ns: u64| LEFT + WIDTH * (((ns as f64).log10() - d0) / (d1 - d0)).max(0.0);

    let mut svg = String::new();
    let mut y = 30.0;
    for (threads, outcomes) in results {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{y}" font-weight="bold">{threads} thread(s): lock hold time per critical section, log scale</text>"#
        );
        let top = y + 10.0;
        let bottom = top + ROW * outcomes.len() as f64;
        for d in d0 as i32..=d1 as i32 {
            let gx = x(10u64.pow(d as u32));
            let _ = writeln!(
                svg,
                r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{bottom}" stroke="#ccc"/><text x="{gx:.1}" y="{ty}" font-size="11" text-anchor="middle">{label}</text>"##,
                ty = bottom + 13.0,
                label = fmt_ns(10f64.powi(d)).replace(".00", ""),
            );
        }
        for (row, o) in outcomes.iter().enumerate() {
            let ry = top + ROW * row as f64 + 4.0;
            let _ = writeln!(
                svg,
                r#"<text x="10" y="{ty}">{name}</text>"#,
                ty = ry + 17.0,
                name = o.strategy.name()
            );
            for (i, (q, colour)) in [(0.5, BLUE), (0.99, ORANGE)].into_iter().enumerate() {
                let ns = quantile(o, q);
                let by = ry + 13.0 * i as f64;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{LEFT}" y="{by}" width="{w:.1}" height="12" fill="{colour}"/><text x="{tx:.1}" y="{ty}" font-size="11">{v}</text>"#,
                    w = x(ns) - LEFT,
                    tx = x(ns) + 4.0,
                    ty = by + 10.0,
                    v = fmt_ns(ns as f64),
                );
            }
        }
        y = bottom + 45.0;
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{y}" width="12" height="12" fill="{BLUE}"/><text x="{a}" y="{t}">p50</text><rect x="{b}" y="{y}" width="12" height="12" fill="{ORANGE}"/><text x="{c}" y="{t}">p99</text>"#,
        a = LEFT + 16.0,
        b = LEFT + 70.0,
        c = LEFT + 86.0,
        t = y + 11.0,
    );
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
{svg}</svg>
"#,
        w = LEFT + WIDTH + 90.0,
        h = y + 30.0,
    )
}

// ---------------------------------------------------------------------------

const CLI: args::Cli = args::Cli {
    program: "lock_hold",
    about: "\
lock_hold: how long a lock is held, and how much work gets done, when the
values replaced under it are freed in different ways: dropped under the lock,
collected by hand and freed after the unlock, freeq (std, parking_lot,
offload), crossbeam-epoch and defer-drop. The workload is a cache of records
with many heap strings; every critical section replaces a few of them.
Prints one table per thread count, a legend and a verdict. Takes about
--seconds in all, plus the waits for outstanding frees.",
    opts: &[
        args::Opt {
            name: "threads",
            value: "N,..",
            help: "thread counts to run, one table each (default 1,2; 8 with --fresh-threads)",
        },
        args::Opt {
            name: "seconds",
            value: "S",
            help: "time for all runs, warm-ups included (default 16)",
        },
        args::Opt {
            name: "rounds",
            value: "N",
            help: "turns each strategy takes, in rotating order (default 5)",
        },
        args::Opt {
            name: "records",
            value: "N",
            help: "records replaced per critical section (default 8)",
        },
        args::Opt {
            name: "strings",
            value: "N",
            help: "heap strings per record (default 17)",
        },
        args::Opt {
            name: "cache",
            value: "N",
            help: "records in the shared cache (default 4096)",
        },
        args::Opt {
            name: "only",
            value: "KEY,..",
            help: "strategies: drop, hand, freeq, freeq-pl, offload, epoch, defer-drop (default all)",
        },
        args::Opt {
            name: "fresh-threads",
            value: "",
            help: "churn: every run spawns new threads, measured from their first section",
        },
        args::Opt {
            name: "sections",
            value: "N",
            help: "critical sections per fresh thread before it exits (default 100)",
        },
        args::Opt {
            name: "svg",
            value: "FILE",
            help: "also write a bar chart of p50/p99 hold times (checked before the run)",
        },
    ],
};

fn parse_args() -> Config {
    let a = CLI.parse();
    let fresh = a.switch("fresh-threads");
    let strategies = match a.text("only") {
        None => Strategy::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|k| {
                let k = k.trim();
                match Strategy::ALL.iter().find(|s| s.key() == k) {
                    Some(&s) => s,
                    None => a.bad("only", &format!("unknown strategy {k:?}")),
                }
            })
            .collect(),
    };
    let cfg = Config {
        threads: a.thread_counts("threads", if fresh { &[8] } else { &[1, 2] }),
        seconds: a.seconds("seconds", 16.0),
        records: a.int("records", 8, 0..=10_000),
        strings: a.int("strings", 17, 0..=10_000),
        cache: a.int("cache", 4096, 1..=1_000_000),
        rounds: a.count("rounds", 5),
        strategies,
        svg: a.text("svg").map(|path| {
            // Open the file now: an unwritable path fails before the run,
            // not after it.
            match std::fs::File::create(&path) {
                Ok(file) => (path, file),
                Err(e) => a.bad("svg", &format!("cannot write {path:?}: {e}")),
            }
        }),
        fresh,
        sections: a.int("sections", 100, 1..=100_000),
    };
    let runs = cfg.threads.len() * cfg.strategies.len() * cfg.rounds;
    if cfg.seconds / (runs as f64) < 0.01 {
        a.bad(
            "seconds",
            &format!(
                "{} s is too short for {runs} runs (thread counts x strategies x rounds): \
                 give each run at least 10 ms",
                cfg.seconds
            ),
        );
    }
    if a.text("sections").is_some() && !fresh {
        a.bad("sections", "only applies with --fresh-threads");
    }
    cfg
}

pub fn main() {
    let cfg = parse_args();
    let strategies = &cfg.strategies;
    let runs = cfg.threads.len() * strategies.len() * cfg.rounds;
    // Each run measures for `slice` after warming up for a fifth of it
    // (fresh-thread runs do not warm up: they measure for all of it).
    let slice = if cfg.fresh {
        Duration::from_secs_f64(cfg.seconds / runs as f64)
    } else {
        Duration::from_secs_f64(cfg.seconds / runs as f64 / 1.2)
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "lock_hold: lock hold time per critical section, and throughput, for {} strateg{} \
         at {:?} thread(s){}.\n\
         This takes about {:.1} s ({} runs of {:.2} s), plus the waits for outstanding frees\n\
         (well under a second each on an idle machine, seconds on a busy one).\n\
         {cores} core(s), load average {}; hold times include ~{} ns of timer overhead.",
        strategies.len(),
        if strategies.len() == 1 { "y" } else { "ies" },
        cfg.threads,
        if cfg.fresh {
            ", fresh threads every run"
        } else {
            ""
        },
        cfg.seconds,
        runs,
        cfg.seconds / runs as f64,
        load_average(),
        timer_floor()
    );
    legend(&cfg);

    let mut results = Vec::new();
    for &threads in &cfg.threads {
        // Strategies take turns, in a rotating order, so that a noisy
        // moment on the machine does not land on one strategy only.
        let mut outcomes: Vec<Option<Outcome>> = strategies.iter().map(|_| None).collect();
        for round in 0..cfg.rounds {
            for k in 0..strategies.len() {
                let i = (k + round) % strategies.len();
                let outcome = if cfg.fresh {
                    run_fresh(strategies[i], threads, slice, &cfg)
                } else {
                    run(strategies[i], threads, slice, &cfg)
                };
                match &mut outcomes[i] {
                    Some(total) => total.merge(outcome),
                    empty => *empty = Some(outcome),
                }
            }
        }
        let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
        print_table(threads, &cfg, &outcomes);
        results.push((threads, outcomes));
    }
    println!("\nload average at the end: {}", load_average());
    if let Some((path, mut file)) = cfg.svg {
        use std::io::Write as _;
        match file.write_all(svg_chart(&results).as_bytes()) {
            Ok(()) => println!("wrote {path}"),
            Err(e) => args::fail("lock_hold", &format!("writing {path:?}: {e}")),
        }
    }
}
