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

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

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

fn main() {
    let cfg = Config {
        seconds: arg("seconds", 3.0),
        rounds: arg::<u32>("rounds", 3).max(1),
        workers: arg::<usize>("workers", 4).max(1),
        batch: arg::<usize>("batch", 4).max(1),
        work: Duration::from_micros(arg("work-us", 20)),
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
    println!(
        "The hold time and the found-locked rate are the direct effects of waking\n\
         under the lock. Pickup latency and throughput also depend on whether a\n\
         woken worker has a core to run on: here {} threads share {} core(s).",
        cfg.workers + 1,
        cores
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

/// `--name value` or `--name=value` from the command line, else `default`.
fn arg<T: FromStr>(name: &str, default: T) -> T {
    let flag = format!("--{name}");
    let args: Vec<String> = std::env::args().collect();
    for (i, a) in args.iter().enumerate() {
        let value = if *a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_owned)
        };
        if let Some(v) = value {
            return v
                .parse()
                .unwrap_or_else(|_| panic!("--{name}: cannot parse {v:?}"));
        }
    }
    default
}
