//! Deferred wake-ups: wake a waiting thread after the unlock, not under it.
//!
//! A job queue behind a `freeq::Mutex` feeds a pool of worker threads.
//! Idle workers put themselves on the queue's idle list and park
//! (`std::thread::park` in a loop on a flag). The producer pushes jobs and,
//! for each, takes an idle worker off the list and wakes it.
//!
//! Where it wakes it matters. Woken *under the lock*, the worker may start
//! running on another core (or preempt the producer on this one) while the
//! producer still holds the mutex: its first move is to block on that
//! mutex, to be woken a second time when the producer unlocks. The wake-up
//! system calls also lengthen the producer's critical section. The Linux
//! kernel avoids both with `wake_q`: collect wake-ups under the lock, issue
//! them after it. `freeq::defer_fn(move || thread.unpark())` is the same
//! thing, with the "after" automatic: the action runs when the guard drops,
//! right after the unlock.
//!
//! The example runs rounds: the producer pushes a batch of jobs in one
//! critical section, waking one idle worker per job, then waits for the
//! batch to be done. It runs once waking under the lock and once with
//! `defer_fn`, and reports how often a woken worker found the mutex still
//! held on its first `try_lock`, the producer's lock hold time, the
//! push-to-pickup latency of jobs and the throughput.
//!
//! ```text
//! cargo run --release --example wake_after_unlock -- [--seconds 3] [--rounds 3]
//!     [--workers 4] [--batch 4] [--work-us 20]
//! ```
//!
//! Each variant runs for `--seconds` in all, split into `--rounds` that
//! alternate between the two, so that a busy machine disturbs both alike.
//! The run ends with a verdict derived from the figures: where deferring
//! helped (hold time, futile wake-ups, throughput) and where waking under
//! the lock did better (an early wake-up can shorten pickup latency when a
//! core is idle, since the worker's scheduling latency overlaps the rest of
//! the critical section). `--help` lists the options.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[path = "common/args.rs"]
mod args;

// ---------------------------------------------------------------------------
// The job queue
// ---------------------------------------------------------------------------

struct Job {
    pushed: Instant,
}

/// A parked worker: its thread, and the flag that tells it the wake-up is
/// real (`park` may return spuriously).
struct Waiter {
    thread: Thread,
    notified: Arc<AtomicBool>,
}

impl Waiter {
    fn wake(self) {
        self.notified.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    idle: Vec<Waiter>,
    shutdown: bool,
}

/// How the producer wakes a worker it took off the idle list, with the
/// queue locked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// `unpark` right there, with the mutex held.
    UnderLock,
    /// `freeq::defer_fn(|| unpark)`: after the mutex unlocks.
    Deferred,
}

impl Wake {
    fn wake(self, waiter: Waiter) {
        match self {
            Wake::UnderLock => waiter.wake(),
            Wake::Deferred => freeq::defer_fn(move || waiter.wake()),
        }
    }
}

struct Queue {
    state: freeq::Mutex<State>,
    wake: Wake,
}

impl Queue {
    /// Pushes `n` jobs in one critical section, waking an idle worker for
    /// each. Returns how long the mutex was held.
    fn push_batch(&self, n: usize) -> Duration {
        let mut state = self.state.lock().unwrap();
        let start = Instant::now();
        for _ in 0..n {
            state.jobs.push_back(Job {
                pushed: Instant::now(),
            });
            if let Some(waiter) = state.idle.pop() {
                self.wake.wake(waiter);
            }
        }
        start.elapsed()
    } // unlock; with `Wake::Deferred`, the wake-ups happen here

    fn shutdown(&self) {
        let mut state = self.state.lock().unwrap();
        state.shutdown = true;
        for waiter in state.idle.drain(..) {
            self.wake.wake(waiter);
        }
    }
}

// ---------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct WorkerStats {
    wakes: u64,
    /// Wake-ups after which the first `try_lock` found the mutex held.
    found_locked: u64,
    /// From `park` returning to holding the mutex, after a wake-up.
    relock: Histogram<u64>,
    /// Push-to-pickup latency of every job this worker took.
    pickup: Histogram<u64>,
}

impl WorkerStats {
    fn new() -> WorkerStats {
        WorkerStats {
            wakes: 0,
            found_locked: 0,
            relock: histogram(),
            pickup: histogram(),
        }
    }

    fn add(&mut self, other: &WorkerStats) {
        self.wakes += other.wakes;
        self.found_locked += other.found_locked;
        self.relock.add(&other.relock).unwrap();
        self.pickup.add(&other.pickup).unwrap();
    }
}

/// Takes jobs until shut down; parks whenever the queue is empty.
fn worker(
    queue: &Queue,
    outstanding: &AtomicUsize,
    producer: &Thread,
    work: Duration,
) -> WorkerStats {
    let mut stats = WorkerStats::new();
    let notified = Arc::new(AtomicBool::new(false));
    let mut woken_at = None;
    loop {
        let mut state = if let Some(woken_at) = woken_at.take() {
            stats.wakes += 1;
            let state = match queue.state.try_lock() {
                Ok(state) => state,
                Err(TryLockError::WouldBlock) => {
                    stats.found_locked += 1;
                    queue.state.lock().unwrap()
                }
                Err(TryLockError::Poisoned(e)) => panic!("{e}"),
            };
            stats.relock.saturating_record(nanos(woken_at));
            state
        } else {
            queue.state.lock().unwrap()
        };

        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            stats.pickup.saturating_record(nanos(job.pushed));
            spin_for(work);
            if outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                producer.unpark(); // the batch is done
            }
            continue;
        }
        if state.shutdown {
            return stats;
        }
        state.idle.push(Waiter {
            thread: thread::current(),
            notified: notified.clone(),
        });
        drop(state);
        while !notified.swap(false, Ordering::Acquire) {
            thread::park();
        }
        woken_at = Some(Instant::now());
    }
}

/// Busy work outside the lock, standing in for handling a job.
fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

struct Config {
    seconds: f64,
    rounds: u32,
    workers: usize,
    batch: usize,
    work: Duration,
}

struct Outcome {
    batches: u64,
    elapsed: Duration,
    hold: Histogram<u64>,
    workers: WorkerStats,
    deferred: u64,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.batches += other.batches;
        self.elapsed += other.elapsed;
        self.hold.add(&other.hold).unwrap();
        self.workers.add(&other.workers);
        self.deferred += other.deferred;
    }
}

fn run(cfg: &Config, wake: Wake) -> Outcome {
    let queue = Queue {
        state: freeq::Mutex::new(State::default()),
        wake,
    };
    let outstanding = AtomicUsize::new(0);
    let producer = thread::current();
    let mut hold = histogram();
    let mut batches = 0u64;
    let deferred_before = freeq::stats().deferred;

    let (elapsed, per_worker) = thread::scope(|s| {
        let workers: Vec<_> = (0..cfg.workers)
            .map(|_| {
                let (queue, outstanding, producer) = (&queue, &outstanding, &producer);
                s.spawn(move || worker(queue, outstanding, producer, cfg.work))
            })
            .collect();
        // Let every worker reach the idle list before the clock starts.
        while queue.state.lock().unwrap().idle.len() < cfg.workers {
            thread::yield_now();
        }

        let start = Instant::now();
        let run_for = Duration::from_secs_f64(cfg.seconds / cfg.rounds as f64);
        while start.elapsed() < run_for {
            outstanding.store(cfg.batch, Ordering::Release);
            let held = queue.push_batch(cfg.batch);
            hold.saturating_record(held.as_nanos().max(1) as u64);
            while outstanding.load(Ordering::Acquire) != 0 {
                thread::park();
            }
            batches += 1;
        }
        let elapsed = start.elapsed();
        queue.shutdown();
        let stats: Vec<WorkerStats> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (elapsed, stats)
    });

    let mut out = Outcome {
        batches,
        elapsed,
        hold,
        workers: WorkerStats::new(),
        deferred: freeq::stats().deferred - deferred_before,
    };
    for w in &per_worker {
        out.workers.add(w);
    }
    out
}

const CLI: args::Cli = args::Cli {
    program: "wake_after_unlock",
    about: "\
wake_after_unlock: deferred wake-ups. A producer pushes jobs to a queue
behind a freeq::Mutex and wakes one parked worker per job, either with
unpark() under the lock or with freeq::defer_fn, which unparks after the
unlock. Prints how often a woken worker found the mutex still held (a futile
wake-up), the producer's hold time, pickup latency and throughput, then a
verdict. Runs about 2 x --seconds.",
    opts: &[
        args::Opt {
            name: "seconds",
            value: "S",
            help: "time for each variant, all rounds together (default 3)",
        },
        args::Opt {
            name: "rounds",
            value: "N",
            help: "rounds, alternating the variants (default 3)",
        },
        args::Opt {
            name: "workers",
            value: "N",
            help: "worker threads (default 4)",
        },
        args::Opt {
            name: "batch",
            value: "N",
            help: "jobs pushed per critical section, one wake-up each (default 4)",
        },
        args::Opt {
            name: "work-us",
            value: "US",
            help: "microseconds of work per job, outside the lock (default 20)",
        },
    ],
};

fn main() {
    let a = CLI.parse();
    let cfg = Config {
        seconds: a.seconds("seconds", 3.0),
        rounds: a.count("rounds", 3) as u32,
        workers: a.threads("workers", 4),
        batch: a.int("batch", 4, 1..=1_000_000),
        work: Duration::from_micros(a.int("work-us", 20, 0..=1_000_000) as u64),
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());

    println!(
        "A job queue behind a freeq::Mutex and {} parked workers, on {} core(s). The\n\
         producer pushes {} jobs per critical section and wakes an idle worker for\n\
         each, either with unpark() under the lock or with freeq::defer_fn, which\n\
         unparks after the unlock. Each job is {:?} of work outside the lock.\n\
         \"found locked\": how often a woken worker's first try_lock failed because\n\
         the mutex was still held; \"relock\": from a worker's park() returning to\n\
         it holding the mutex; \"hold\": the producer's critical section;\n\
         \"pickup\": from a job's push to its pop by a worker.\n",
        cfg.workers, cores, cfg.batch, cfg.work
    );

    let mut under = run(&cfg, Wake::UnderLock);
    let mut deferred = run(&cfg, Wake::Deferred);
    for _ in 1..cfg.rounds {
        under.merge(run(&cfg, Wake::UnderLock));
        deferred.merge(run(&cfg, Wake::Deferred));
    }

    println!(
        "{:<14} {:>9} {:>7} {:>13} {:>10} {:>9} {:>12} {:>12} {:>11} {:>11}",
        "wake-ups",
        "batches/s",
        "wakes",
        "found locked",
        "hold mean",
        "hold p99",
        "relock mean",
        "relock p99",
        "pickup p50",
        "pickup p99"
    );
    for (name, o) in [("under lock", &under), ("freeq defer_fn", &deferred)] {
        let w = &o.workers;
        println!(
            "{:<14} {:>9.0} {:>7} {:>12.1}% {:>10} {:>9} {:>12} {:>12} {:>11} {:>11}",
            name,
            o.batches as f64 / o.elapsed.as_secs_f64(),
            w.wakes,
            100.0 * w.found_locked as f64 / w.wakes.max(1) as f64,
            us(o.hold.mean()),
            us(o.hold.value_at_quantile(0.99) as f64),
            us(w.relock.mean()),
            us(w.relock.value_at_quantile(0.99) as f64),
            us(w.pickup.value_at_quantile(0.5) as f64),
            us(w.pickup.value_at_quantile(0.99) as f64),
        );
    }
    println!(
        "\nfreeq::stats(): {} wake-ups deferred in the defer_fn runs, {} in the others.",
        deferred.deferred, under.deferred
    );
    verdict(&under, &deferred, cfg.workers + 1, cores);
}

/// Plain sentences on the two rows, derived from the figures just printed.
fn verdict(under: &Outcome, deferred: &Outcome, threads: usize, cores: usize) {
    let rate = |o: &Outcome| o.batches as f64 / o.elapsed.as_secs_f64();
    let futile =
        |o: &Outcome| 100.0 * o.workers.found_locked as f64 / o.workers.wakes.max(1) as f64;
    let p50 = |o: &Outcome| o.workers.pickup.value_at_quantile(0.5) as f64;
    let hold = |o: &Outcome| o.hold.mean().max(1.0);
    println!("\nverdict:");
    println!(
        "  - hold: waking under the lock held the mutex {:.1}x as long (mean {} vs {}): \
         the unpark system calls ran inside the critical section, and a woken worker \
         sharing the producer's core may preempt it there.",
        hold(under) / hold(deferred),
        us(under.hold.mean()),
        us(deferred.hold.mean()),
    );
    println!(
        "  - futile wake-ups: {:.1}% of the workers woken under the lock ran, found the mutex \
         still held and blocked on it, to be woken a second time at the unlock; with \
         defer_fn {:.1}% did.",
        futile(under),
        futile(deferred),
    );
    let (pu, pd) = (p50(under), p50(deferred));
    if pd <= pu * 1.05 {
        println!(
            "  - pickup: jobs were picked up as fast or faster with defer_fn (p50 {} vs {}).",
            us(pd),
            us(pu)
        );
    } else {
        println!(
            "  - pickup: the p50 was shorter waking under the lock ({} vs {}): an early \
             wake-up lets the worker's scheduling latency overlap the rest of the critical \
             section. That head start is what deferring gives up, for the shorter hold and \
             fewer futile wake-ups.",
            us(pu),
            us(pd)
        );
    }
    let t = rate(deferred) / rate(under);
    println!(
        "  - throughput: defer_fn ran {t:.2}x the batches per second{}.",
        if t >= 1.03 {
            ", deferring the wake-ups helped"
        } else if t > 0.97 {
            ", no measurable difference"
        } else {
            ", waking under the lock did better here"
        }
    );
    println!(
        "  Deferring a wake-up helps when the woken thread would block on the lock still held \
         (here {threads} threads share {cores} core(s)). \
         It gains little when the wake-up is the last thing in a short critical section and \
         cores are idle: the wake under the lock then costs one system call, and its head \
         start can win on latency."
    );
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Nanoseconds since `t`, at least 1.
fn nanos(t: Instant) -> u64 {
    t.elapsed().as_nanos().max(1) as u64
}

/// Nanoseconds, printed as microseconds.
fn us(ns: f64) -> String {
    format!("{:.2}µs", ns / 1000.0)
}
