//! Timed runs inside a child process: threads pinned to distinct cores,
//! every waiting operation timed into an HDR histogram, the freeing
//! thread's operations counted and timed too, and a study's own counts
//! of what its waiting operations found.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::driver::Job;

/// The CPUs this process may run on, read once, before any thread is
/// pinned (a pinned thread sees only its own core).
pub fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: OnceLock<Vec<core_affinity::CoreId>> = OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

/// Pins the calling thread to the `i`-th core of [`cores`] (modulo their
/// number). Returns whether it was pinned.
pub fn pin(i: usize) -> bool {
    let cores = cores();
    if cores.is_empty() {
        return false;
    }
    core_affinity::set_for_current(cores[i % cores.len()])
}

/// Latency percentiles of one kind of operation, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Operations timed.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Worst.
    pub max: f64,
}

impl Latency {
    /// Reads a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            p9999: h.value_at_quantile(0.9999) as f64,
            max: h.max() as f64,
        }
    }
}

/// The quantiles of a [`Sample`]'s `wait_curve`: p50 to p99.999, the
/// points a latency-percentile plot draws.
pub const CURVE_QUANTILES: [f64; 11] = [
    0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 0.99999,
];

/// The latency at each of [`CURVE_QUANTILES`], in nanoseconds.
pub fn curve(h: &Histogram<u64>) -> Vec<f64> {
    if h.is_empty() {
        return Vec::new();
    }
    CURVE_QUANTILES
        .iter()
        .map(|&q| h.value_at_quantile(q) as f64)
        .collect()
}

/// What the kernel counted for one thread over the timed window
/// (`getrusage(RUSAGE_THREAD)`): the events that no timer load moves in
/// number, unlike latencies.
#[derive(Clone, Copy, Debug, Default)]
struct Kernel {
    /// Voluntary context switches: the thread slept (a lock's futex wait).
    sleeps: i64,
    /// Involuntary ones: it was preempted.
    preempted: i64,
    /// Minor page faults: pages touched first (after a heap trim, too).
    faults: i64,
}

impl Kernel {
    #[cfg(target_os = "linux")]
    fn now() -> Kernel {
        // SAFETY: `getrusage` writes the struct it is given; zeroed is a
        // valid `rusage`. 1 is `RUSAGE_THREAD` on Linux.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(1, &mut u) } != 0 {
            return Kernel::default();
        }
        Kernel {
            sleeps: u.ru_nvcsw,
            preempted: u.ru_nivcsw,
            faults: u.ru_minflt,
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn now() -> Kernel {
        Kernel::default()
    }

    fn since(self, start: Kernel) -> Kernel {
        Kernel {
            sleeps: self.sleeps - start.sleeps,
            preempted: self.preempted - start.preempted,
            faults: self.faults - start.faults,
        }
    }

    fn add(self, o: Kernel) -> Kernel {
        Kernel {
            sleeps: self.sleeps + o.sleeps,
            preempted: self.preempted + o.preempted,
            faults: self.faults + o.faults,
        }
    }

    /// Into `extra` as `{who}_sleeps`, `{who}_preempted`, `{who}_faults`.
    fn record(self, who: &str, extra: &mut BTreeMap<String, f64>) {
        extra.insert(format!("{who}_sleeps"), self.sleeps as f64);
        extra.insert(format!("{who}_preempted"), self.preempted as f64);
        extra.insert(format!("{who}_faults"), self.faults as f64);
    }
}

/// One child's result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// The waiting threads' operations (all waiting threads together).
    pub wait: Latency,
    /// The waiting threads' operations per second (all together).
    pub wait_ops_per_s: f64,
    /// The freeing thread's operations, each timed whole (its drain
    /// included).
    pub free: Latency,
    /// The freeing thread's operations per second.
    pub free_ops_per_s: f64,
    /// Whether every thread got a core of its own.
    pub pinned_apart: bool,
    /// The waiting operations' latency at each of [`CURVE_QUANTILES`]
    /// (ns).
    #[serde(default)]
    pub wait_curve: Vec<f64>,
    /// Study-specific figures (counts, sizes), reported as medians.
    pub extra: BTreeMap<String, f64>,
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

std::thread_local! {
    /// Nanoseconds of the current operation spent in [`untimed`].
    static UNTIMED_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f` inside a timed operation without counting its time in the
/// operation's latency (throughput still counts it): a waiting thread's
/// own work between calls into the crate (think time), so that the
/// latencies are those of the calls alone.
pub fn untimed<R>(f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    let ns = t.elapsed().as_nanos() as u64;
    UNTIMED_NS.with(|c| c.set(c.get() + ns));
    r
}

/// Runs `f` inside a `freeq::section()` when `section` is set: a
/// study's call into its crate, in the configurations that open one.
#[inline(always)]
pub fn section_if<R>(section: bool, f: impl FnOnce() -> R) -> R {
    if section {
        let _s = freeq::section();
        f()
    } else {
        f()
    }
}

/// Times `op` into `h`, less what it ran in [`untimed`].
#[inline(always)]
fn timed(h: &mut Histogram<u64>, op: &mut impl FnMut()) {
    UNTIMED_NS.with(|c| c.set(0));
    let t = Instant::now();
    op();
    let ns = (t.elapsed().as_nanos() as u64).saturating_sub(UNTIMED_NS.with(|c| c.replace(0)));
    h.saturating_record(ns.max(1));
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Runs one timed window: `waiters` waiting threads, each repeating the
/// operation that `make_waiter(i)` returns, and one freeing thread
/// repeating `make_freer()`'s. Each thread is pinned to a core of its own
/// where there are enough (the freeing thread to the first); all start
/// together, run a warm-up of a quarter of the window untimed, then
/// `job.ms` milliseconds timed.
///
/// The operations themselves decide what they contend on; the harness
/// only times them. Put a `freeq::section()` inside an operation (not
/// around the loop) for the configurations that need one.
pub fn run<WF, W, FF, F>(job: &Job, waiters: usize, make_waiter: WF, make_freer: FF) -> Sample
where
    WF: Fn(usize) -> W + Sync,
    W: FnMut(),
    FF: FnOnce() -> F + Send,
    F: FnMut(),
{
    let threads = waiters + 1;
    let n_cores = cores().len();
    let phase = AtomicU8::new(WARMUP);
    let start = Barrier::new(threads + 1);
    let pinned = AtomicBool::new(true);
    let window = Duration::from_millis(job.ms);
    let (wait_hist, wait_ops, free_hist, free_ops, elapsed, kernel) = std::thread::scope(|s| {
        let freer = s.spawn(|| {
            if !pin(0) {
                pinned.store(false, Ordering::Relaxed);
            }
            let mut op = make_freer();
            let mut h = histogram();
            start.wait();
            while phase.load(Ordering::Relaxed) == WARMUP {
                op();
            }
            h.reset();
            let mut n = 0u64;
            let k0 = Kernel::now();
            while phase.load(Ordering::Relaxed) == MEASURE {
                timed(&mut h, &mut op);
                n += 1;
            }
            (h, n, Kernel::now().since(k0))
        });
        let waiting: Vec<_> = (0..waiters)
            .map(|i| {
                let (start, phase, pinned, make_waiter) = (&start, &phase, &pinned, &make_waiter);
                s.spawn(move || {
                    if !pin(i + 1) {
                        pinned.store(false, Ordering::Relaxed);
                    }
                    let mut op = make_waiter(i);
                    let mut h = histogram();
                    start.wait();
                    while phase.load(Ordering::Relaxed) == WARMUP {
                        op();
                    }
                    let mut n = 0u64;
                    let k0 = Kernel::now();
                    while phase.load(Ordering::Relaxed) == MEASURE {
                        timed(&mut h, &mut op);
                        n += 1;
                    }
                    (h, n, Kernel::now().since(k0))
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(window / 4);
        phase.store(MEASURE, Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(window);
        phase.store(STOP, Ordering::Relaxed);
        let elapsed = t0.elapsed();
        let mut wait_hist = histogram();
        let mut wait_ops = 0;
        let mut wait_kernel = Kernel::default();
        for w in waiting {
            let (h, n, k) = w.join().expect("a waiting thread panicked");
            wait_hist.add(&h).expect("same histogram bounds");
            wait_ops += n;
            wait_kernel = wait_kernel.add(k);
        }
        let (free_hist, free_ops, free_kernel) = freer.join().expect("the freeing thread panicked");
        let kernel = (wait_kernel, free_kernel);
        (wait_hist, wait_ops, free_hist, free_ops, elapsed, kernel)
    });
    let mut extra = BTreeMap::new();
    kernel.0.record("wait", &mut extra);
    kernel.1.record("free", &mut extra);
    // The waiting threads' sleeps per 1000 timed operations: once above
    // 1, p99.9 is the duration of a sleep (tens of µs), not of a spin.
    if wait_ops > 0 {
        extra.insert(
            "wait_sleeps_per_kop".into(),
            kernel.0.sleeps as f64 * 1000.0 / wait_ops as f64,
        );
    }
    let secs = elapsed.as_secs_f64();
    Sample {
        wait: Latency::of(&wait_hist),
        wait_ops_per_s: wait_ops as f64 / secs,
        free: Latency::of(&free_hist),
        free_ops_per_s: free_ops as f64 / secs,
        pinned_apart: pinned.load(Ordering::Relaxed) && n_cores >= threads,
        wait_curve: curve(&wait_hist),
        extra,
    }
}

/// Counts of a study's waiting operations (gets and hits, polls and
/// messages received), shared by the waiting threads. Each thread counts
/// into its own [`Tally`], added here once, when the thread's operation
/// is dropped (warm-up included).
#[derive(Debug)]
pub struct Counters<const N: usize>([AtomicU64; N]);

impl<const N: usize> Counters<N> {
    /// `N` counters at zero.
    pub fn new() -> Self {
        Counters(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// A waiting thread's own counts, added to these when dropped.
    pub fn tally(&self) -> Tally<'_, N> {
        Tally {
            shared: self,
            local: [0; N],
        }
    }

    /// Records `names[i - 1]` = counter `i` / counter 0 in `sample`'s
    /// extra figures, for each counter after the first (the operations
    /// counted), when any operation was counted.
    pub fn ratios(&self, sample: &mut Sample, names: &[&str]) {
        assert_eq!(names.len() + 1, N, "one name per counter after the first");
        let total = self.0[0].load(Ordering::Relaxed) as f64;
        if total > 0.0 {
            for (name, c) in names.iter().zip(&self.0[1..]) {
                sample
                    .extra
                    .insert(name.to_string(), c.load(Ordering::Relaxed) as f64 / total);
            }
        }
    }
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters::new()
    }
}

/// One waiting thread's counts (see [`Counters`]).
#[derive(Debug)]
pub struct Tally<'a, const N: usize> {
    shared: &'a Counters<N>,
    local: [u64; N],
}

impl<const N: usize> Tally<'_, N> {
    /// Adds `n` to counter `i`.
    #[inline]
    pub fn add(&mut self, i: usize, n: u64) {
        self.local[i] += n;
    }
}

impl<const N: usize> Drop for Tally<'_, N> {
    fn drop(&mut self) {
        for (shared, &n) in self.shared.0.iter().zip(&self.local) {
            shared.fetch_add(n, Ordering::Relaxed);
        }
    }
}
