//! Async locks: lock wait, hand-off and throughput when tasks replace
//! values that are expensive to drop under a tokio mutex.
//!
//! N tasks each loop: build a fresh value (outside the lock), think (a
//! short spin, then a yield), lock, swap the value in, unlock. The old
//! value owns `--allocs` heap boxes, so freeing it costs one `free` each.
//! The releasing task's poll goes on to build its next value; in the
//! `yielding` part tasks yield right after their release instead (and not
//! before they lock), so that their poll ends at the release.
//! Strategies, run interleaved in the same process (every other round in
//! reverse order), `--rounds` times each:
//!
//! - `under`: tokio's `Mutex`, the old value dropped under the lock;
//! - `freeq-drop`: `freeq::tokio::Mutex`, `defer(old)`, the guard dropped,
//!   as most code releases a lock (release; a bin whose learned cost is
//!   high leaves the thread, a cheap one is freed in the same poll);
//! - `freeq-unlock`: the same, then `unlock().await` (release, yield once,
//!   free);
//! - `defer-drop`: tokio's `Mutex` over `defer_drop::DeferDrop<Value>`:
//!   the old value is sent to defer-drop's background thread;
//! - `std-freeq`: `freeq::Mutex` (std-backed, blocking a worker while it
//!   waits) with `freeq::defer`: the synchronous reference;
//! - `freeq-nodefer` (cheap values only): `freeq::tokio::Mutex`, the old
//!   value dropped under the lock, nothing deferred: what the guard
//!   itself costs;
//! - `async-lock-drop` and `futures-drop`: `freeq::AsyncGuard` over
//!   async-lock's and futures' `Mutex` guards, `defer(old)`, the guard
//!   dropped.
//!
//! Reported per configuration, medians over the rounds: lock-wait
//! p50/p99/p99.9 (from calling `lock()` to holding the guard), hand-off
//! (from the end of a holder's work, the value swapped, to the next
//! acquisition by a task that was already waiting; it includes whatever
//! the strategy does before its release) p50/p99, and throughput to full
//! reclamation (until every replaced value is freed, by `quiesce` for
//! freeq's reclaimers and a marker for defer-drop's thread), the release's
//! p99 (from the end of the holder's work to the end of its release
//! statement: frees made in place included), the share of hand-offs whose
//! waiter ran on the releasing holder's thread, and the share of releases
//! over 100 µs (a costly value freed in place); then ratios against
//! `under` (throughput: each round's against `under`'s run of the same
//! round, the median over the rounds). The hand-off part counts its slow hand-offs (over 50 µs), those
//! on the releasing thread, and those during which that thread waited for
//! a CPU (`/proc/thread-self/schedstat`) for at least half the hand-off. A second
//! part runs the same on a current-thread runtime, and a third replaces a
//! cheap value (one small box) to check that freeq costs no throughput
//! when there is nothing expensive to free; freeq's strategies defer it as
//! a type of its own (`Cheap`), whose learned cost the costly values of
//! the other parts do not raise. `--parts` picks parts; `--count` runs one
//! strategy's cheap loop alone, for an instruction counter.
//!
//! Each process's figures depend on its heap and on where the runtime put
//! its tasks, so the bench runs itself `--processes` times (default 3),
//! each a fresh process, and prints every figure as the min–max range
//! over them; `--processes 1` prints one process's full tables.
//!
//! `cargo bench --bench async_lock --features tokio` (about 3–5 minutes on
//! 2 cores); `-- --help` for the options.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use defer_drop::DeferDrop;
use hdrhistogram::Histogram;

type Value = Vec<Box<u64>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    Under,
    FreeqDrop,
    FreeqUnlock,
    DeferDrop,
    StdFreeq,
    FreeqPlain,
    AsyncLockDrop,
    FuturesDrop,
}

impl Strategy {
    const ALL: [Strategy; 7] = [
        Strategy::Under,
        Strategy::FreeqDrop,
        Strategy::FreeqUnlock,
        Strategy::DeferDrop,
        Strategy::StdFreeq,
        Strategy::AsyncLockDrop,
        Strategy::FuturesDrop,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::Under => "under",
            Strategy::FreeqDrop => "freeq-drop",
            Strategy::FreeqUnlock => "freeq-unlock",
            Strategy::DeferDrop => "defer-drop",
            Strategy::StdFreeq => "std-freeq",
            Strategy::FreeqPlain => "freeq-nodefer",
            Strategy::AsyncLockDrop => "async-lock-drop",
            Strategy::FuturesDrop => "futures-drop",
        }
    }
}

/// The lock each strategy uses, around the same value.
enum Lock {
    Tokio(tokio::sync::Mutex<Value>),
    Freeq(freeq::tokio::Mutex<Value>),
    DeferDrop(tokio::sync::Mutex<DeferDrop<Value>>),
    Std(freeq::Mutex<Value>),
    AsyncMutex(async_lock::Mutex<Value>),
    Futures(futures::lock::Mutex<Value>),
}

struct Shared {
    lock: Lock,
    start: Instant,
    /// When the last holder finished its work (the value swapped; what
    /// follows is its strategy's frees and release), in ns since `start`.
    released: AtomicU64,
    /// The thread the last holder ran on ([`thread_no`]).
    releaser: AtomicU64,
    /// Time the releases, note the releasing thread and read its CPU time
    /// around the release: not in the cheap part, whose operations are
    /// shorter than that costs (its release columns are empty).
    detail: bool,
}

/// A number for the calling thread.
fn thread_no() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    std::thread_local! {
        static NO: u64 = NEXT.fetch_add(1, Relaxed);
    }
    NO.with(|n| *n)
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

#[derive(Clone, Copy)]
struct Config {
    tasks: usize,
    ops: usize,
    allocs: usize,
    think: Duration,
    /// freeq's strategies defer the old value as a [`Cheap`]: a type of
    /// its own, whose learned drop cost the costly values of the other
    /// parts do not raise.
    cheap: bool,
    /// Tasks yield right after their release (and not before they lock):
    /// the releasing poll ends at the release, as `unlock().await` ends
    /// it, whatever the strategy.
    yield_after: bool,
}

/// The cheap part's values, deferred under a type of their own (freeq
/// learns drop costs per type, and follows a type's recent frees).
#[allow(dead_code)]
struct Cheap(Value);

/// Defers `old` into `g`'s bin, as a [`Cheap`] in the cheap part.
fn defer_old<G>(g: &mut freeq::AsyncGuard<G>, old: Value, c: &Config) {
    if c.cheap {
        g.defer(Cheap(old));
    } else {
        g.defer(old);
    }
}

fn build(allocs: usize) -> Value {
    (0..allocs as u64).map(Box::new).collect()
}

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

struct Hists {
    wait: Histogram<u64>,
    handoff: Histogram<u64>,
    /// Time the holder spent on its release (from the end of its work to
    /// the end of the release statement: frees made in place included).
    release: Histogram<u64>,
    /// Hand-offs (waiters that were queued) and those on the releasing
    /// holder's thread.
    handoffs: u64,
    same_thread: u64,
    /// Releases over 100 µs, and those during which the holder's thread
    /// ran for at least half the time (work done in the release: frees
    /// made in place; the others waited: for a CPU, or for a lock).
    slow_releases: u64,
    worked_releases: u64,
    releases: u64,
}

impl Hists {
    fn new() -> Hists {
        let h = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        Hists {
            wait: h(),
            handoff: h(),
            release: h(),
            handoffs: 0,
            same_thread: 0,
            slow_releases: 0,
            worked_releases: 0,
            releases: 0,
        }
    }
}

/// One operation's lock: records the wait and, if this task was queued
/// when the lock was last released, the hand-off.
fn acquired(s: &Shared, h: &mut Hists, asked: u64) {
    let got = s.now();
    h.wait.saturating_record((got - asked).max(1));
    let released = s.released.load(Relaxed);
    if released > asked && got >= released {
        h.handoff.saturating_record((got - released).max(1));
        h.handoffs += 1;
        if s.releaser.load(Relaxed) == thread_no() {
            h.same_thread += 1;
        }
    }
}

/// CPU time of the calling thread, in ns (0 where unknown).
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the call only writes it.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    if ok {
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    } else {
        0
    }
}

/// When a holder's work was done, and its thread's CPU time then (read
/// only where [`Shared::detail`] asks for it: a system call per release).
struct Done {
    at: u64,
    cpu: u64,
}

/// The holder's work is done: from here on waiters wait for its release.
fn work_done(s: &Shared) -> Done {
    let now = s.now();
    if !s.detail {
        s.released.store(now, Relaxed);
        return Done { at: now, cpu: 0 };
    }
    let cpu = thread_cpu_ns();
    s.releaser.store(thread_no(), Relaxed);
    s.released.store(now, Relaxed);
    Done { at: now, cpu }
}

/// The holder's release statement ended (see [`Hists::release`]).
fn release_done(s: &Shared, h: &mut Hists, done: Done) {
    if !s.detail {
        return;
    }
    let took = s.now() - done.at;
    h.release.saturating_record(took.max(1));
    h.releases += 1;
    if took > 100_000 {
        h.slow_releases += 1;
        if thread_cpu_ns().saturating_sub(done.cpu) >= took / 2 {
            h.worked_releases += 1;
        }
    }
}

async fn task(s: Arc<Shared>, strategy: Strategy, c: Config, ops: usize) -> Hists {
    let mut h = Hists::new();
    for _ in 0..ops {
        let fresh = build(c.allocs);
        spin(c.think);
        if !c.yield_after {
            tokio::task::yield_now().await;
        }
        let asked = s.now();
        match (&s.lock, strategy) {
            (Lock::Tokio(m), _) => {
                let mut g = m.lock().await;
                acquired(&s, &mut h, asked);
                let old = std::mem::replace(&mut *g, fresh);
                let done = work_done(&s);
                drop(old); // freed here, under the lock
                drop(g);
                release_done(&s, &mut h, done);
            }
            (Lock::Freeq(m), Strategy::FreeqUnlock) => {
                let mut g = m.lock().await;
                acquired(&s, &mut h, asked);
                let old = std::mem::replace(&mut *g, fresh);
                defer_old(&mut g, old, &c);
                let done = work_done(&s);
                g.unlock().await;
                release_done(&s, &mut h, done);
            }
            (Lock::Freeq(m), Strategy::FreeqPlain) => {
                let mut g = m.lock().await;
                acquired(&s, &mut h, asked);
                let old = std::mem::replace(&mut *g, fresh);
                let done = work_done(&s);
                drop(old); // nothing deferred: the guard's bin stays empty
                drop(g);
                release_done(&s, &mut h, done);
            }
            (Lock::Freeq(m), _) => plain_drop(&s, &mut h, asked, m.lock().await, fresh, &c),
            (Lock::DeferDrop(m), _) => {
                let mut g = m.lock().await;
                acquired(&s, &mut h, asked);
                let old = std::mem::replace(&mut *g, DeferDrop::new(fresh));
                let done = work_done(&s);
                drop(old); // sent to defer-drop's thread, under the lock
                drop(g);
                release_done(&s, &mut h, done);
            }
            (Lock::AsyncMutex(m), _) => {
                let g = freeq::AsyncGuard::new(m.lock().await);
                plain_drop(&s, &mut h, asked, g, fresh, &c)
            }
            (Lock::Futures(m), _) => {
                let g = freeq::AsyncGuard::new(m.lock().await);
                plain_drop(&s, &mut h, asked, g, fresh, &c)
            }
            (Lock::Std(m), _) => {
                let mut g = m.lock().unwrap();
                acquired(&s, &mut h, asked);
                let old = std::mem::replace(&mut *g, fresh);
                freeq::defer(old);
                let done = work_done(&s);
                drop(g);
                release_done(&s, &mut h, done);
            }
        }
        if c.yield_after {
            tokio::task::yield_now().await;
        }
    }
    h
}

/// The plain drop most code writes: the old value deferred into the
/// guard's bin, the guard dropped.
fn plain_drop<G: std::ops::DerefMut<Target = Value>>(
    s: &Shared,
    h: &mut Hists,
    asked: u64,
    mut g: freeq::AsyncGuard<G>,
    fresh: Value,
    c: &Config,
) {
    acquired(s, h, asked);
    let old = std::mem::replace(&mut *g, fresh);
    defer_old(&mut g, old, c);
    let done = work_done(s);
    drop(g);
    release_done(s, h, done);
}

struct Run {
    wait: [u64; 3],
    handoff: [u64; 2],
    throughput: f64,
    /// Release p99 (ns), and the share of hand-offs to a waiter on the
    /// releasing holder's thread.
    release_p99: u64,
    same_thread: f64,
    /// The share of releases over 100 µs, and of those where the thread
    /// ran for at least half the time.
    slow_releases: f64,
    worked_releases: f64,
}

fn run(rt: &tokio::runtime::Runtime, strategy: Strategy, c: Config) -> Run {
    let initial = build(c.allocs);
    let lock = match strategy {
        Strategy::Under => Lock::Tokio(tokio::sync::Mutex::new(initial)),
        Strategy::FreeqDrop | Strategy::FreeqUnlock | Strategy::FreeqPlain => {
            Lock::Freeq(freeq::tokio::Mutex::new(initial))
        }
        Strategy::DeferDrop => Lock::DeferDrop(tokio::sync::Mutex::new(DeferDrop::new(initial))),
        Strategy::StdFreeq => Lock::Std(freeq::Mutex::new(initial)),
        Strategy::AsyncLockDrop => Lock::AsyncMutex(async_lock::Mutex::new(initial)),
        Strategy::FuturesDrop => Lock::Futures(futures::lock::Mutex::new(initial)),
    };
    let s = Arc::new(Shared {
        lock,
        start: Instant::now(),
        released: AtomicU64::new(0),
        releaser: AtomicU64::new(0),
        detail: !c.cheap,
    });
    let per_task = c.ops.div_ceil(c.tasks);
    let started = Instant::now();
    let hists = rt.block_on(async {
        let handles: Vec<_> = (0..c.tasks)
            .map(|_| tokio::spawn(task(s.clone(), strategy, c, per_task)))
            .collect();
        let mut all = Hists::new();
        for handle in handles {
            let h = handle.await.unwrap();
            all.wait.add(&h.wait).unwrap();
            all.handoff.add(&h.handoff).unwrap();
            all.release.add(&h.release).unwrap();
            all.handoffs += h.handoffs;
            all.same_thread += h.same_thread;
            all.slow_releases += h.slow_releases;
            all.worked_releases += h.worked_releases;
            all.releases += h.releases;
        }
        all
    });
    black_box(&s);
    // Throughput counts until every replaced value is freed: values still
    // waiting on a reclaimer or on defer-drop's thread are part of the run.
    freeq::quiesce();
    if strategy == Strategy::DeferDrop {
        // defer-drop's thread may still be freeing this run's values: wait
        // for it (it frees in order), so that its backlog counts in this
        // run and does not run into the next configuration.
        struct Marker(std::sync::mpsc::Sender<()>);
        impl Drop for Marker {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        drop(DeferDrop::new(Marker(tx)));
        rx.recv().unwrap();
    }
    let elapsed = started.elapsed();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    Run {
        wait: [
            q(&hists.wait, 0.5),
            q(&hists.wait, 0.99),
            q(&hists.wait, 0.999),
        ],
        handoff: [q(&hists.handoff, 0.5), q(&hists.handoff, 0.99)],
        throughput: (per_task * c.tasks) as f64 / elapsed.as_secs_f64(),
        release_p99: q(&hists.release, 0.99),
        same_thread: hists.same_thread as f64 / hists.handoffs.max(1) as f64,
        slow_releases: hists.slow_releases as f64 / hists.releases.max(1) as f64,
        worked_releases: hists.worked_releases as f64 / hists.releases.max(1) as f64,
    }
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// Runs every strategy `rounds` times, interleaved, and prints medians and
/// ratios against `under`.
fn compare(
    title: &str,
    rt: &tokio::runtime::Runtime,
    strategies: &[Strategy],
    c: Config,
    rounds: usize,
) {
    let mut runs: Vec<Vec<Run>> = strategies.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        // Every other round in reverse order (ABCD DCBA ...), so that a
        // drift of the machine over the rounds weighs on every strategy
        // alike, and each is paired with the base run of its own round.
        let mut order: Vec<usize> = (0..strategies.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            runs[i].push(run(rt, strategies[i], c));
        }
    }
    println!(
        "\n## {title}: {} tasks, {} ops, {} allocations per value, think {} us",
        c.tasks,
        c.ops,
        c.allocs,
        c.think.as_micros()
    );
    println!(
        "{:<13} {:>10} {:>10} {:>11} {:>12} {:>12} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "strategy",
        "wait p50",
        "wait p99",
        "wait p99.9",
        "handoff p50",
        "handoff p99",
        "ops/s",
        "release p99",
        "same thr",
        "slow rel",
        "worked"
    );
    let mut med = Vec::new();
    for (i, &s) in strategies.iter().enumerate() {
        let r = &runs[i];
        // Throughput against the base run of the same round, median over
        // the rounds: what the ratio columns quote.
        let paired = median_f64(
            r.iter()
                .zip(&runs[0])
                .map(|(r, b)| r.throughput / b.throughput)
                .collect(),
        );
        let m = |f: &dyn Fn(&Run) -> u64| median_u64(r.iter().map(f).collect());
        let row = (
            [m(&|r| r.wait[0]), m(&|r| r.wait[1]), m(&|r| r.wait[2])],
            [m(&|r| r.handoff[0]), m(&|r| r.handoff[1])],
            median_f64(r.iter().map(|r| r.throughput).collect()),
        );
        let release = m(&|r| r.release_p99);
        let same = median_f64(r.iter().map(|r| r.same_thread).collect());
        let slow = median_f64(r.iter().map(|r| r.slow_releases).collect());
        let worked = median_f64(r.iter().map(|r| r.worked_releases).collect());
        println!(
            "{:<13} {:>10} {:>10} {:>11} {:>12} {:>12} {:>10.0} {:>12} {:>8.0}% {:>8.1}% {:>8.1}%",
            s.name(),
            us(row.0[0]),
            us(row.0[1]),
            us(row.0[2]),
            us(row.1[0]),
            us(row.1[1]),
            row.2,
            us(release),
            same * 100.0,
            slow * 100.0,
            worked * 100.0
        );
        row_line(
            &format!("{title}, {} tasks", c.tasks),
            s.name(),
            &[
                row.0[0] as f64,
                row.0[1] as f64,
                row.0[2] as f64,
                row.1[0] as f64,
                row.1[1] as f64,
                row.2,
                if c.cheap { f64::NAN } else { release as f64 },
                if c.cheap { f64::NAN } else { same },
                if c.cheap { f64::NAN } else { slow },
                if c.cheap { f64::NAN } else { worked },
                paired,
            ],
        );
        med.push((row, paired));
    }
    println!("(times in us; medians of {rounds} interleaved rounds)");
    let base = &med[0].0;
    println!(
        "ratios to {}: wait p99 and p99.9 (base / this: higher is better), handoff p50 (base / this), throughput (this / base, the median of the rounds' ratios)",
        strategies[0].name()
    );
    for (i, &s) in strategies.iter().enumerate().skip(1) {
        let (r, paired) = &med[i];
        let div = |a: u64, b: u64| a as f64 / b.max(1) as f64;
        println!(
            "  {:<13} wait p99 {:>6.1}x  p99.9 {:>6.1}x  handoff p50 {:>7.1}x  throughput {:.3}x",
            s.name(),
            div(base.0[1], r.0[1]),
            div(base.0[2], r.0[2]),
            div(base.1[0], r.1[0]),
            paired
        );
    }
}

/// Hand-off to a waiter already queued: a holder replaces a value of
/// `allocs` allocations and releases while one task waits on the lock;
/// the time from the end of the holder's work (the value swapped) to the
/// waiter holding the lock, per strategy (p50 and p99 over `reps`), next
/// to the time the frees take. For `under` that includes the frees, made
/// before the release; freeq's strategies release first.
fn handoff(title: &str, rt: &tokio::runtime::Runtime, allocs: usize, reps: usize, rounds: usize) {
    let strategies = [Strategy::Under, Strategy::FreeqDrop, Strategy::FreeqUnlock];
    let mut med: Vec<Vec<(u64, u64)>> = strategies.iter().map(|_| Vec::new()).collect();
    let mut free_ns = Vec::new();
    let mut slow = [Slow::default(); 3];
    for _ in 0..rounds {
        for (i, &strategy) in strategies.iter().enumerate() {
            let (h, f, sl) = rt.block_on(handoff_run(strategy, allocs, reps));
            slow[i].slow += sl.slow;
            slow[i].same_thread += sl.same_thread;
            slow[i].preempted += sl.preempted;
            med[i].push((h.value_at_quantile(0.5), h.value_at_quantile(0.99)));
            if f > 0 {
                free_ns.push(f);
            }
        }
    }
    println!(
        "\n## hand-off to a queued waiter, {title}: {allocs} allocations freed per release, {reps} releases"
    );
    println!(
        "freeing one value takes {} us (median)",
        us(median_u64(free_ns))
    );
    println!(
        "{:<13} {:>12} {:>12}",
        "strategy", "handoff p50", "handoff p99"
    );
    let rows: Vec<(u64, u64)> = med
        .iter()
        .map(|r| {
            (
                median_u64(r.iter().map(|x| x.0).collect()),
                median_u64(r.iter().map(|x| x.1).collect()),
            )
        })
        .collect();
    for (i, &s) in strategies.iter().enumerate() {
        println!(
            "{:<13} {:>12} {:>12}",
            s.name(),
            us(rows[i].0),
            us(rows[i].1)
        );
        row_line(
            &format!("hand-off, {title}"),
            s.name(),
            &[
                f64::NAN,
                f64::NAN,
                f64::NAN,
                rows[i].0 as f64,
                rows[i].1 as f64,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                f64::NAN,
            ],
        );
    }
    for (i, &s) in strategies.iter().enumerate() {
        note(&format!(
            "hand-off, {title}, {}: over 50 us {} of {}; to a waiter on the releasing thread {}; \
             that thread waiting for a CPU for at least half of it {}",
            s.name(),
            slow[i].slow,
            reps * rounds,
            slow[i].same_thread,
            slow[i].preempted
        ));
    }
    for (i, &s) in strategies.iter().enumerate().skip(1) {
        println!(
            "  {:<13} handoff p50 {:.1}x, p99 {:.1}x lower than under",
            s.name(),
            rows[0].0 as f64 / rows[i].0.max(1) as f64,
            rows[0].1 as f64 / rows[i].1.max(1) as f64
        );
    }
}

/// Nanoseconds the calling thread has spent runnable but waiting for a
/// CPU (Linux's `/proc/thread-self/schedstat`), or 0 where unknown.
fn cpu_wait_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Slow hand-offs of a [`handoff_run`]: over 50 µs, those to a waiter on
/// the releasing holder's thread, and of those the ones where that thread
/// waited for a CPU for at least half the hand-off (it was preempted in
/// between: the waiter, queued to run next on that worker, waited with it).
#[derive(Clone, Copy, Default)]
struct Slow {
    slow: u64,
    same_thread: u64,
    preempted: u64,
}

async fn handoff_run(
    strategy: Strategy,
    allocs: usize,
    reps: usize,
) -> (Histogram<u64>, u64, Slow) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let start = Instant::now();
    let now = move || start.elapsed().as_nanos() as u64;
    let tokio_lock = Arc::new(tokio::sync::Mutex::new(build(1)));
    let freeq_lock = Arc::new(freeq::tokio::Mutex::new(build(1)));
    let mut frees = Vec::new();
    let mut slow = Slow::default();
    for _ in 0..reps {
        let fresh = build(allocs);
        let released = Arc::new(AtomicU64::new(0));
        // The holder's thread and its CPU wait, read before its release.
        let holder_at = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let (t, f, r) = (tokio_lock.clone(), freeq_lock.clone(), released.clone());
        let at = holder_at.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        // Takes the lock first, lets the waiter queue, then releases.
        let holder = async move {
            match strategy {
                Strategy::Under => {
                    let mut g = t.lock().await;
                    ready_rx.await.unwrap();
                    tokio::task::yield_now().await;
                    let old = std::mem::replace(&mut *g, fresh);
                    // The holder's work is done: from here on the waiter
                    // waits for the frees and the release.
                    at.0.store(thread_no(), Relaxed);
                    at.1.store(cpu_wait_ns(), Relaxed);
                    let t0 = now();
                    r.store(t0, Relaxed);
                    drop(old);
                    let took = now() - t0;
                    drop(g);
                    took
                }
                _ => {
                    let mut g = f.lock().await;
                    ready_rx.await.unwrap();
                    tokio::task::yield_now().await;
                    let old = std::mem::replace(&mut *g, fresh);
                    g.defer(old);
                    at.0.store(thread_no(), Relaxed);
                    at.1.store(cpu_wait_ns(), Relaxed);
                    r.store(now(), Relaxed);
                    if strategy == Strategy::FreeqUnlock {
                        g.unlock().await;
                    } else {
                        drop(g);
                    }
                    0
                }
            }
        };
        let holder = tokio::spawn(holder);
        // The waiter: queues on the lock (the holder has it), then records
        // when it gets it.
        let (t, f, r) = (tokio_lock.clone(), freeq_lock.clone(), released.clone());
        let at = holder_at.clone();
        let waiter = tokio::spawn(async move {
            // Let the holder take the lock first.
            while match strategy {
                Strategy::Under => t.try_lock().is_ok(),
                _ => f.try_lock().is_ok(),
            } {
                tokio::task::yield_now().await;
            }
            ready_tx.send(()).unwrap();
            match strategy {
                Strategy::Under => drop(t.lock().await),
                _ => drop(f.lock().await),
            }
            let waited = now().saturating_sub(r.load(Relaxed));
            let same = at.0.load(Relaxed) == thread_no();
            (
                waited,
                same,
                cpu_wait_ns().saturating_sub(at.1.load(Relaxed)),
            )
        });
        let took = holder.await.unwrap();
        let (waited, same, cpu_wait) = waiter.await.unwrap();
        hist.saturating_record(waited.max(1));
        if waited > 50_000 {
            slow.slow += 1;
            if same {
                slow.same_thread += 1;
                if cpu_wait >= waited / 2 {
                    slow.preempted += 1;
                }
            }
        }
        if took > 0 {
            frees.push(took);
        }
    }
    let free = if frees.is_empty() {
        0
    } else {
        median_u64(frees)
    };
    (hist, free, slow)
}

/// One strategy's medians in one table, for the parent process: the
/// section, the strategy, then wait p50/p99/p99.9 and hand-off p50/p99
/// (ns), throughput (ops/s), release p99 (ns), the share of hand-offs on
/// the releasing thread, the share of releases over 100 µs and of those
/// the holder's thread spent working; NaN where the table has no such
/// column.
fn row_line(section: &str, strategy: &str, values: &[f64; 11]) {
    if std::env::var_os(ONE_PROCESS).is_none() {
        return;
    }
    let v: Vec<String> = values.iter().map(|x| x.to_string()).collect();
    println!("@row\t{section}\t{strategy}\t{}", v.join("\t"));
}

/// A line for the reader that has no column: printed, or passed to the
/// parent process, which prints each process's after the tables.
fn note(line: &str) {
    if std::env::var_os(ONE_PROCESS).is_some() {
        println!("@note\t{line}");
    } else {
        println!("  {line}");
    }
}

/// Runs this bench `processes` times, each a fresh process with the same
/// options, and prints each figure as its min–max range over them, and
/// each ratio to the table's first strategy the same way.
fn over_processes(processes: usize) {
    type Rows = Vec<(String, String, Vec<Vec<f64>>)>;
    let mut rows: Rows = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let exe = std::env::current_exe().expect("the bench's own path");
    let args: Vec<String> = std::env::args().skip(1).collect();
    for p in 1..=processes {
        eprintln!("async_lock: process {p} of {processes}");
        let out = std::process::Command::new(&exe)
            .args(&args)
            .env(ONE_PROCESS, "1")
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the bench in a child process");
        if !out.status.success() {
            eprintln!("async_lock: process {p} failed: {}", out.status);
            std::process::exit(1);
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(n) = line.strip_prefix("@note\t") {
                notes.push(format!("process {p}: {n}"));
                continue;
            }
            let mut f = line.split('\t');
            if f.next() != Some("@row") {
                continue;
            }
            let (section, strategy) = (f.next().unwrap(), f.next().unwrap());
            let values: Vec<f64> = f.map(|x| x.parse().unwrap()).collect();
            match rows.iter_mut().find(|r| r.0 == section && r.1 == strategy) {
                Some(r) => r.2.push(values),
                None => rows.push((section.into(), strategy.into(), vec![values])),
            }
        }
    }
    let range = |v: &[f64], scale: f64, digits: usize| -> String {
        let v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return "-".into();
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min) / scale;
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max) / scale;
        format!("{lo:.digits$}–{hi:.digits$}")
    };
    println!("# async_lock over {processes} processes: min–max of each process's medians");
    let mut section = String::new();
    let mut base: Vec<Vec<f64>> = Vec::new();
    for (sec, strategy, runs) in &rows {
        if *sec != section {
            section = sec.clone();
            base = runs.clone();
            println!("\n## {sec}");
            println!(
                "{:<16} {:>13} {:>15} {:>15} {:>13} {:>15} {:>15} {:>15} {:>9} {:>11} {:>10} | {:>15} {:>13}",
                "strategy",
                "wait p50 us",
                "wait p99 us",
                "wait p99.9 us",
                "handoff p50",
                "handoff p99",
                "ops/s",
                "release p99",
                "same thr %",
                "slow rel %",
                "worked %",
                "wait p99 ratio",
                "ops/s ratio"
            );
        }
        let col = |i: usize| -> Vec<f64> { runs.iter().map(|r| r[i]).collect() };
        // Per process: the base's wait over this one's (higher is better).
        // Throughput's ratio is the process's own, paired by round.
        let wait_ratio = |i: usize| -> Vec<f64> {
            runs.iter()
                .zip(&base)
                .map(|(r, b)| b[i] / r[i].max(1.0))
                .collect()
        };
        println!(
            "{:<16} {:>13} {:>15} {:>15} {:>13} {:>15} {:>15} {:>15} {:>9} {:>11} {:>10} | {:>14}x {:>12}x",
            strategy,
            range(&col(0), 1e3, 1),
            range(&col(1), 1e3, 1),
            range(&col(2), 1e3, 1),
            range(&col(3), 1e3, 1),
            range(&col(4), 1e3, 1),
            range(&col(5), 1.0, 0),
            range(&col(6), 1e3, 1),
            range(&col(7), 0.01, 0),
            range(&col(8), 0.01, 1),
            range(&col(9), 0.01, 1),
            range(&wait_ratio(1), 1.0, 1),
            range(&col(10), 1.0, 3),
        );
    }
    println!(
        "\n(ratios per process against the section's first row: wait p99 base/this, higher is better; ops/s this/base in the same round, the median over the rounds)"
    );
    if !notes.is_empty() {
        println!();
        for n in &notes {
            println!("{n}");
        }
    }
}

/// Set in the child processes that [`over_processes`] starts.
const ONE_PROCESS: &str = "FREEQ_ASYNC_LOCK_ONE_PROCESS";

struct Options {
    processes: usize,
    /// freeq's reclaimers at normal priority instead of idle.
    normal_reclaimers: bool,
    /// freeq's reclaimers never give a batch back (no backlog bound, no
    /// wait bound): every costly bin leaves the releasing thread.
    unbounded: bool,
    tasks: Vec<usize>,
    ops: usize,
    allocs: usize,
    think_us: u64,
    rounds: usize,
    cheap_ops: usize,
    handoff_reps: usize,
    /// `--count STRATEGY`: only the cheap replace loop of one strategy, on
    /// a current-thread runtime, for an instruction counter.
    count: Option<Strategy>,
    /// Which parts run: hand-off, multi-thread, current-thread, cheap.
    parts: Vec<String>,
}

/// The bench's parts, in the order they run.
const PARTS: [&str; 5] = [
    "handoff",
    "multi-thread",
    "yielding",
    "current-thread",
    "cheap",
];

const HELP: &str = "async_lock: lock wait, hand-off and throughput of async locks whose
holders replace values that are expensive to drop.

Usage: cargo bench --bench async_lock --features tokio -- [OPTIONS]

Options:
  --tasks N,N,..   task counts on the multi-thread runtime, 16 to 256 each (default 16,256)
  --ops N          operations per configuration (default 600)
  --allocs N       heap allocations each replaced value frees, 10000 to 50000 (default 30000)
  --think US       spin between locks, in microseconds (default 20)
  --rounds N       interleaved rounds per configuration (default 3)
  --cheap-ops N    operations of the cheap-value run (default 100000)
  --handoff-reps N releases measured per hand-off round (default 100)
  --processes N    fresh processes, figures given as ranges over them (default 3;
                   1 prints that one process's full tables)
  --reclaimers P   freeq's reclaimer priority, idle or normal (default idle)
  --unbounded      freeq's reclaimers never give a bin back (no backlog or wait
                   bound): every costly bin leaves the releasing thread
  --parts P,P,..   which parts run: handoff, multi-thread, yielding (multi-thread,
                   tasks yielding right after their release), current-thread,
                   cheap (default all)
  --count S        only S's cheap replace loop (under, freeq-nodefer, freeq-drop,
                   freeq-unlock), --cheap-ops times by one task on a current-thread
                   runtime, nothing measured: run it under `valgrind --tool=callgrind`
                   with two --cheap-ops values and divide the difference of the
                   instruction counts by the difference of the ops
  -h, --help       this text
";

fn parse() -> Options {
    let mut o = Options {
        processes: 3,
        normal_reclaimers: false,
        unbounded: false,
        tasks: vec![16, 256],
        ops: 600,
        allocs: 30_000,
        think_us: 20,
        rounds: 3,
        cheap_ops: 100_000,
        handoff_reps: 100,
        count: None,
        parts: PARTS.iter().map(|p| p.to_string()).collect(),
    };
    let fail = |msg: String| -> ! {
        eprintln!("async_lock: {msg} (see --help)");
        std::process::exit(2)
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| fail(format!("{name} needs a value")))
        };
        let number = |v: String, lo: usize, hi: usize| -> usize {
            match v.parse::<usize>() {
                Ok(n) if (lo..=hi).contains(&n) => n,
                _ => fail(format!(
                    "{name}: expected a number from {lo} to {hi}, got {v:?}"
                )),
            }
        };
        match name.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0)
            }
            // cargo bench passes this to every harness = false bench.
            "--bench" => {}
            "--tasks" => {
                o.tasks = value()
                    .split(',')
                    .map(|t| number(t.to_string(), 16, 256))
                    .collect()
            }
            "--ops" => o.ops = number(value(), 1, 10_000_000),
            "--allocs" => o.allocs = number(value(), 10_000, 50_000),
            "--think" => o.think_us = number(value(), 0, 100_000) as u64,
            "--rounds" => o.rounds = number(value(), 1, 100),
            "--cheap-ops" => o.cheap_ops = number(value(), 1, 100_000_000),
            "--handoff-reps" => o.handoff_reps = number(value(), 1, 100_000),
            "--processes" => o.processes = number(value(), 1, 100),
            "--parts" => {
                o.parts = value().split(',').map(str::to_string).collect();
                if let Some(p) = o.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    fail(format!("--parts: {} expected, got {p:?}", PARTS.join(", ")))
                }
            }
            "--count" => {
                let v = value();
                o.count = Some(
                    [
                        Strategy::Under,
                        Strategy::FreeqPlain,
                        Strategy::FreeqDrop,
                        Strategy::FreeqUnlock,
                    ]
                    .into_iter()
                    .find(|s| s.name() == v)
                    .unwrap_or_else(|| {
                        fail(format!(
                            "--count: under, freeq-nodefer, freeq-drop or freeq-unlock, got {v:?}"
                        ))
                    }),
                )
            }
            "--unbounded" => o.unbounded = true,
            "--reclaimers" => {
                o.normal_reclaimers = match value().as_str() {
                    "idle" => false,
                    "normal" => true,
                    other => fail(format!("--reclaimers: idle or normal, got {other:?}")),
                }
            }
            other => fail(format!("unknown argument {other:?}")),
        }
    }
    o
}

/// `--count`: the cheap replace loop alone (see [`Options::count`]).
fn count(strategy: Strategy, ops: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let tokio_lock = tokio::sync::Mutex::new(build(1));
        let freeq_lock = freeq::tokio::Mutex::new(build(1));
        for i in 0..ops as u64 {
            let fresh = vec![Box::new(i)];
            match strategy {
                Strategy::Under => {
                    let mut g = tokio_lock.lock().await;
                    let old = std::mem::replace(&mut *g, fresh);
                    drop(old);
                    drop(g);
                }
                Strategy::FreeqPlain => {
                    let mut g = freeq_lock.lock().await;
                    let old = std::mem::replace(&mut *g, fresh);
                    drop(old);
                    drop(g);
                }
                Strategy::FreeqDrop => {
                    let mut g = freeq_lock.lock().await;
                    let old = std::mem::replace(&mut *g, fresh);
                    g.defer(Cheap(old));
                    drop(g);
                }
                _ => {
                    let mut g = freeq_lock.lock().await;
                    let old = std::mem::replace(&mut *g, fresh);
                    g.defer(Cheap(old));
                    g.unlock().await;
                }
            }
        }
        black_box((&tokio_lock, &freeq_lock));
    });
    // Under an instruction counter every free is slow, so a type may be
    // learned as costly: those bins are handed off, not freed in place.
    let s = freeq::stats();
    eprintln!(
        "async_lock --count: {} items freed on this thread, {} handed off",
        s.freed, s.offloaded
    );
}

fn main() {
    let o = parse();
    if let Some(strategy) = o.count {
        count(strategy, o.cheap_ops);
        return;
    }
    if o.processes > 1 && std::env::var_os(ONE_PROCESS).is_none() {
        over_processes(o.processes);
        return;
    }
    let think = Duration::from_micros(o.think_us);
    if o.normal_reclaimers {
        freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    }
    if o.unbounded {
        freeq::set_offload_bound(usize::MAX / 2);
        freeq::set_offload_max_wait(Duration::ZERO);
    }
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!(
        "# async_lock (tokio, 2 workers unless current-thread; freeq's reclaimers at {} priority{})",
        if o.normal_reclaimers {
            "normal"
        } else {
            "idle"
        },
        if o.unbounded {
            ", never giving a bin back"
        } else {
            ""
        }
    );
    let part = |p: &str| o.parts.iter().any(|q| q == p);
    // First, while nothing else (defer-drop's thread) is busy.
    if part("handoff") {
        handoff("multi-thread", &multi, 50_000, o.handoff_reps, o.rounds);
        handoff("current-thread", &current, 50_000, o.handoff_reps, o.rounds);
    }
    for (name, title, yield_after) in [
        ("multi-thread", "multi-thread", false),
        ("yielding", "multi-thread, yielding after release", true),
    ] {
        for &tasks in o.tasks.iter().filter(|_| part(name)) {
            let c = Config {
                tasks,
                ops: o.ops,
                allocs: o.allocs,
                think,
                cheap: false,
                yield_after,
            };
            compare(title, &multi, &Strategy::ALL, c, o.rounds);
        }
    }
    let c = Config {
        tasks: 64,
        ops: o.ops,
        allocs: o.allocs,
        think,
        cheap: false,
        yield_after: false,
    };
    if part("current-thread") {
        compare("current-thread", &current, &Strategy::ALL, c, o.rounds);
    }
    if !part("cheap") {
        return;
    }
    // Cheap values: one small box each, no think time: the lock itself.
    let cheap = Config {
        tasks: 16,
        ops: o.cheap_ops,
        allocs: 1,
        think: Duration::ZERO,
        cheap: true,
        yield_after: false,
    };
    compare(
        "cheap values, multi-thread",
        &multi,
        &[
            Strategy::Under,
            Strategy::FreeqPlain,
            Strategy::FreeqDrop,
            Strategy::FreeqUnlock,
        ],
        cheap,
        o.rounds.max(5),
    );
}
