//! The soak's cycles: start every kind of thread on a fresh shared world,
//! let them run, stop them, free everything, and check the drop counts
//! and the memory.

use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind, panic_any};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use freeq::{Deferred, Policy};

use crate::actions::{self, World, message, step};
use crate::alloc::live_bytes;
use crate::epoch;
use crate::values::{self, Inject, Planned, Rng, Tracked, fail, failures};

/// Threads the soak started (workers, readers, churned threads, executor
/// threads, forker), over the whole run.
pub static THREADS: AtomicU64 = AtomicU64::new(0);
pub static FORKS: AtomicU64 = AtomicU64::new(0);
pub static EXECUTOR_BATCHES: AtomicU64 = AtomicU64::new(0);
pub static EXECUTOR_SWITCHES: AtomicU64 = AtomicU64::new(0);
pub static LEAKED_SECTIONS: AtomicU64 = AtomicU64::new(0);

/// Memory after a cycle may exceed memory after the first cycle by at
/// most this much: what freeq keeps is capped (each thread's queue, the
/// reclaimers' and the epoch's bookkeeping), so repeated cycles do not
/// grow it.
pub const DRIFT_BOUND: isize = 1 << 20;
/// Memory after any cycle may exceed memory before the first by at most
/// this much: freeq's one-time state (reclaimer threads, inboxes, the
/// stats registry, crossbeam-epoch's collector, learned costs).
pub const START_BOUND: isize = 8 << 20;

/// What the soak is told to do (from the environment).
#[derive(Clone, Debug)]
pub struct Config {
    pub secs: f64,
    pub workers: usize,
    pub readers: usize,
    pub fork: bool,
    pub inject: Inject,
    pub seed: u64,
}

impl Config {
    pub fn from_env() -> Config {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let inject = match var("FREEQ_SOAK_INJECT").as_deref() {
            None | Some("none") => Inject::None,
            Some("leak") => Inject::Leak,
            Some("double") => Inject::Double,
            Some(other) => panic!("FREEQ_SOAK_INJECT={other}: expected leak or double"),
        };
        Config {
            secs: var("FREEQ_SOAK_SECS").map_or(2.5, |s| {
                s.parse().expect("FREEQ_SOAK_SECS: seconds, e.g. 60 or 2.5")
            }),
            workers: var("FREEQ_SOAK_THREADS").map_or(4, |s| {
                s.parse()
                    .expect("FREEQ_SOAK_THREADS: a number of worker threads")
            }),
            readers: 2,
            fork: cfg!(unix) && var("FREEQ_SOAK_FORK").as_deref() != Some("0"),
            inject,
            seed: var("FREEQ_SOAK_SEED").map_or_else(
                || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_nanos() as u64)
                },
                |s| s.parse().expect("FREEQ_SOAK_SEED: a number"),
            ),
        }
    }
}

/// The figures of a whole run.
#[derive(Debug, Default)]
pub struct Report {
    pub cycles: u64,
    pub values: u64,
    pub secs: f64,
    pub max_drift: isize,
    pub max_above_start: isize,
}

/// Runs the soak; `Err` lists what failed.
pub fn soak(cfg: &Config) -> Result<Report, String> {
    values::init(4 << 20);
    values::set_inject(cfg.inject);
    silence_planned_panics();
    let mut rng = Rng::new(cfg.seed);
    let start = live_bytes();
    let t0 = Instant::now();
    let total = Duration::from_secs_f64(cfg.secs);
    let cycle = Duration::from_secs_f64((cfg.secs / 4.0).clamp(0.2, 2.0));
    let mut report = Report::default();
    let mut settled = None;
    println!(
        "soak: {:.1} s, {} workers, {} readers, fork {}, seed {}, cycles of {:.2} s",
        cfg.secs,
        cfg.workers,
        cfg.readers,
        if cfg.fork { "on" } else { "off" },
        cfg.seed,
        cycle.as_secs_f64()
    );
    while report.cycles < 2 || t0.elapsed() < total {
        let left = total
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(100));
        run_cycle(cfg, rng.next(), cycle.min(left));
        let verdict = values::verify_and_reset();
        let live = live_bytes();
        let base = *settled.get_or_insert(live);
        report.cycles += 1;
        report.values += verdict.values;
        report.max_drift = report.max_drift.max(live - base);
        report.max_above_start = report.max_above_start.max(live - start);
        if live - base > DRIFT_BOUND {
            fail(format!(
                "memory after cycle {} is {} B above the first cycle's (bound {DRIFT_BOUND} B)",
                report.cycles,
                live - base
            ));
        }
        if live - start > START_BOUND {
            fail(format!(
                "memory after cycle {} is {} B above the start (bound {START_BOUND} B)",
                report.cycles,
                live - start
            ));
        }
        println!(
            "soak: cycle {} at {:.1} s: values {} (total {}), steps {}, memory {:+} B from the first cycle, {:+} B from the start",
            report.cycles,
            t0.elapsed().as_secs_f64(),
            verdict.values,
            report.values,
            actions::STEPS.load(SeqCst),
            live - base,
            live - start,
        );
        if failures() > 0 {
            break;
        }
    }
    report.secs = t0.elapsed().as_secs_f64();
    let s = freeq::stats();
    let longest = *actions::LONGEST.lock().unwrap();
    println!(
        "soak: {} after {:.1} s: {} cycles, {} steps, {} values, {} threads, {} forks, \
         {} retired ({} reads, {} of a value retired while held), {} planned panics, \
         {} policy switches, {} executor switches ({} batches), {} leaked sections, {} condvar waits, \
         longest step {:?} ({}); \
         freeq: {} deferred, {} freed, {} offloaded, {} retired, {} deferred frees; \
         memory: at most {} B above the first cycle, {} B above the start",
        if failures() == 0 { "PASS" } else { "FAIL" },
        report.secs,
        report.cycles,
        actions::STEPS.load(SeqCst),
        report.values,
        THREADS.load(SeqCst),
        FORKS.load(SeqCst),
        epoch::RETIRED.load(SeqCst),
        epoch::READS.load(SeqCst),
        epoch::HELD_RETIRED.load(SeqCst),
        actions::PANICS.load(SeqCst),
        actions::POLICY_SWITCHES.load(SeqCst),
        EXECUTOR_SWITCHES.load(SeqCst),
        EXECUTOR_BATCHES.load(SeqCst),
        LEAKED_SECTIONS.load(SeqCst),
        actions::WAITS.load(SeqCst),
        longest.0,
        longest.1,
        s.deferred,
        s.freed,
        s.offloaded,
        s.retired,
        s.deferred_frees,
        report.max_drift,
        report.max_above_start,
    );
    if failures() == 0 {
        Ok(report)
    } else {
        Err(values::failure_report())
    }
}

/// The panic hook stays quiet for planned panics (freeq's reclaimers
/// report a panicking free through it) and reports the rest.
fn silence_planned_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<Planned>() {
            default(info);
        }
    }));
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    THREADS.fetch_add(1, Relaxed);
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn a soak thread")
}

fn join(h: JoinHandle<()>) {
    if let Err(payload) = h.join() {
        fail(format!("a soak thread panicked: {}", message(&*payload)));
    }
}

/// One cycle: a fresh world, every kind of thread on it for `len`, then
/// everything stopped and freed.
fn run_cycle(cfg: &Config, seed: u64, len: Duration) {
    let mut rng = Rng::new(seed);
    let world = World::new(&mut rng);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..cfg.workers {
        let (world, stop, seed) = (world.clone(), stop.clone(), rng.next());
        handles.push(spawn("soak-worker", move || {
            let mut rng = Rng::new(seed);
            if w % 2 == 1 {
                freeq::set_policy(Policy::Offload);
            }
            while !stop.load(Relaxed) && !values::full() {
                step(&world, &mut rng);
            }
        }));
    }
    for r in 0..cfg.readers.min(epoch::READERS) {
        let (world, stop, seed) = (world.clone(), stop.clone(), rng.next());
        handles.push(spawn("soak-reader", move || {
            let mut rng = Rng::new(seed);
            while !stop.load(Relaxed) {
                world.slots.read(r, &mut rng);
                if rng.one_in(64) {
                    freeq::epoch::pin().flush();
                }
            }
        }));
    }
    {
        let (world, stop, seed) = (world.clone(), stop.clone(), rng.next());
        handles.push(spawn("soak-churn", move || {
            let mut rng = Rng::new(seed);
            while !stop.load(Relaxed) && !values::full() {
                let a = churn(&world, rng.next());
                let b = churn(&world, rng.next());
                join(a);
                join(b);
            }
        }));
    }
    #[cfg(unix)]
    if cfg.fork {
        let (world, stop, seed) = (world.clone(), stop.clone(), rng.next());
        handles.push(spawn("soak-forker", move || {
            let mut rng = Rng::new(seed);
            while !stop.load(Relaxed) && !values::full() {
                thread::sleep(Duration::from_millis(20 + rng.below(100)));
                crate::fork::fork_once(&world, &mut rng);
            }
        }));
    }
    // This thread switches the user executor on and off.
    let deadline = Instant::now() + len;
    let mut executor = None;
    while Instant::now() < deadline && !values::full() && failures() == 0 {
        thread::sleep(Duration::from_millis(5 + rng.below(20)));
        match rng.below(24) {
            0..=3 => toggle_executor(&mut executor),
            // Every batch worth moving, or only costly ones (the default).
            4 => freeq::set_offload_threshold_ns(0),
            5 => freeq::set_offload_threshold_ns(freeq::DEFAULT_OFFLOAD_THRESHOLD_NS),
            // A small backlog bound (producers fall back to inline frees),
            // or the default.
            6 => freeq::set_offload_bound(16),
            7 => freeq::set_offload_bound(freeq::DEFAULT_OFFLOAD_BOUND),
            // A small retention cap, or the default.
            8 => freeq::set_max_retained(4096),
            9 => freeq::set_max_retained(freeq::DEFAULT_MAX_RETAINED),
            // The profile: sampling switched, reset and read while every
            // path runs (offloaded batches and async-free sites included).
            10 => freeq::profile::enable(1 + rng.below(16) as u32),
            11 => freeq::profile::disable(),
            12 => freeq::profile::reset(),
            13 => check_profile(),
            _ => {}
        }
    }
    stop.store(true, SeqCst);
    for h in handles {
        join(h);
    }
    if executor.is_some() {
        toggle_executor(&mut executor);
    }
    // Everything the world holds goes to freeq; then every hand-off, every
    // retired value and the world itself must be freed.
    contain(|| world.empty());
    contain(freeq::quiesce);
    let mut world = Some(world);
    for _ in 0..1000 {
        match Arc::try_unwrap(world.take().unwrap()) {
            Ok(w) => {
                drop(w);
                break;
            }
            Err(w) => {
                world = Some(w);
                contain(freeq::quiesce);
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    if world.is_some() {
        fail(
            "the shared world is still referenced after quiesce (a deferred action was not run)"
                .into(),
        );
    }
    let left = epoch::collect_all(20_000);
    if left != 0 {
        fail(format!(
            "{left} retired value(s) never freed after every reader left"
        ));
    }
    contain(freeq::quiesce);
    actions::after_step();
    // Every item handed to freeq was freed (the counters balance once
    // every thread has drained or exited).
    let s = freeq::stats();
    if s.deferred != s.freed {
        fail(format!(
            "stats do not balance after quiesce: {} deferred, {} freed",
            s.deferred, s.freed
        ));
    }
}

/// Runs `f`, letting planned panics (a panicking free reaching this
/// thread) through and recording others.
fn contain(f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f))
        && !payload.is::<Planned>()
    {
        fail(format!("unplanned panic: {}", message(&*payload)));
    }
}

/// A snapshot of the profile taken while sections run: sorted by moved
/// time, its table printable, and no site with more values than it could
/// hold.
fn check_profile() {
    let p = freeq::profile::snapshot();
    let moved: Vec<Duration> = p.sites().iter().map(|s| s.moved()).collect();
    if moved.windows(2).any(|w| w[0] < w[1]) {
        values::fail(format!("profile sites not sorted by moved time:\n{p}"));
    }
    for s in p.sites() {
        if s.offloaded() > s.moved() {
            values::fail(format!(
                "offloaded above moved at {}:{}:\n{p}",
                s.file(),
                s.line()
            ));
        }
    }
    let _ = p.to_string();
}

/// Sets a user executor (a thread fed through a channel, which now and
/// then panics instead of taking a batch), or clears the one set.
fn toggle_executor(executor: &mut Option<JoinHandle<()>>) {
    EXECUTOR_SWITCHES.fetch_add(1, Relaxed);
    if let Some(h) = executor.take() {
        freeq::clear_offload_executor();
        join(h);
        return;
    }
    let (tx, rx) = mpsc::channel::<freeq::Batch>();
    *executor = Some(spawn("soak-executor", move || {
        for batch in rx {
            contain(|| batch.free());
        }
    }));
    let calls = AtomicU64::new(0);
    freeq::set_offload_executor(move |batch| {
        EXECUTOR_BATCHES.fetch_add(1, Relaxed);
        if calls.fetch_add(1, Relaxed) % 256 == 255 {
            // A panicking executor: the batch is freed on the draining
            // thread as this unwinds.
            panic_any(Planned);
        }
        // If the executor thread is gone, the batch is freed here, on drop.
        let _ = tx.send(batch);
    });
}

/// A short-lived thread: some steps, then maybe a leaked section with
/// work queued in it, freed by the thread's exit path.
fn churn(world: &Arc<World>, seed: u64) -> JoinHandle<()> {
    let world = world.clone();
    spawn("soak-churn-child", move || {
        let mut rng = Rng::new(seed);
        if rng.one_in(2) {
            freeq::set_policy(Policy::Offload);
        }
        for _ in 0..rng.below(40) + 1 {
            step(&world, &mut rng);
        }
        match rng.below(3) {
            0 => {}
            1 => {
                LEAKED_SECTIONS.fetch_add(1, Relaxed);
                mem::forget(freeq::section());
                for _ in 0..rng.below(6) + 1 {
                    freeq::defer(rng.value());
                }
                drop(Deferred::new(rng.value()));
                drop(vec![0u8; rng.payload()]); // a held free
            }
            _ => {
                LEAKED_SECTIONS.fetch_add(1, Relaxed);
                let m = freeq::parking_lot::Mutex::new(Vec::<Tracked>::new());
                mem::forget(m.lock());
                freeq::defer(rng.value());
                freeq::defer_fn({
                    let v = rng.value();
                    move || drop(v)
                });
                let k = rng.below(world.slots.len() as u64) as usize;
                world.slots.replace(k, rng.value());
            }
        }
    })
}
