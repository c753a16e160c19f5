//! Offload where it pays: heavy drops, and the cost threshold.
//!
//! `heavy` (default): one producer; each operation locks, replaces a record
//! of small strings, unlocks, and then works ~10 µs outside the lock; one
//! operation in 200 also replaces a value that takes ~1 ms to drop (a busy
//! loop in its `Drop`). Per-operation latency is lock → guard dropped →
//! back in user code, drain included. For each strategy: p50/p99/p99.9/max
//! of that latency, how long after the hand-off (the unlock) each heavy
//! value was freed, as a multiple of its own drop time, and which threads
//! freed the heavy values.
//!
//! `threshold`: the cost of freeing a batch of N small strings inline (the
//! drain's time on the producer) against throughput to full reclamation
//! under Inline and Offload, for the default of
//! `freeq::DEFAULT_OFFLOAD_THRESHOLD_NS`.
//!
//! `pairs`: Offload and Inline alone, run alternately, with the ratios of
//! each pair (the paired comparison behind the per-allocator figures).
//!
//! Every window says where its heavy values were freed: by a reclaimer
//! while the producer was still timed, inline on the producer, or after the
//! window (by the final `quiesce()`, on the producer, or by a reclaimer
//! finishing late). `pairs` quotes Offload's tail latency only over windows
//! in which reclaimers freed them, and shows the others apart.
//!
//! `window offload` / `window inline`: one strategy's window, one line of
//! `key=value` fields, for `benches/offload_pairs.py`, which alternates
//! them in fresh processes.
//!
//! `cargo bench --bench heavy_drop` (heavy and threshold), `-- heavy`,
//! `-- threshold`, `-- pairs` or `-- window offload|inline`.
//!
//! With `FREEQ_HEAVY_STRINGS=N` set, a heavy value owns N heap strings
//! instead, and its drop frees them rather than spinning: the allocator's
//! share of a heavy drop, for the per-allocator runs (`alloc-bench`).

use std::hint::black_box;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const OPS: usize = 20_000;
const HEAVY_EVERY: usize = 200;
const HEAVY_DROP: Duration = Duration::from_millis(1);
const THINK: Duration = Duration::from_micros(10);
const STRINGS: usize = 8;

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// What each heavy drop reports: when it was handed off, when its drop
/// started and ended, on which thread, and whether the timed window was
/// still open when the drop ended.
struct HeavyLog {
    handed: Instant,
    started: Instant,
    ended: Instant,
    thread: String,
    in_window: bool,
}

static HEAVY: StdMutex<Vec<HeavyLog>> = StdMutex::new(Vec::new());

/// Open while the producer's operations are timed; closed before the final
/// `quiesce()` (which frees on the producer whatever no reclaimer took).
static WINDOW: AtomicBool = AtomicBool::new(false);

/// Takes [`HEAVY_DROP`] to drop, or frees its strings.
struct Heavy {
    handed: Option<Instant>,
    strings: Vec<String>,
}

/// `FREEQ_HEAVY_STRINGS`, or 0 (spin instead).
fn heavy_strings() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("FREEQ_HEAVY_STRINGS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

impl Heavy {
    /// A placeholder, cheap to drop.
    fn idle() -> Heavy {
        Heavy {
            handed: None,
            strings: Vec::new(),
        }
    }

    /// A heavy value, built outside the timed part.
    fn new() -> Heavy {
        Heavy {
            handed: None,
            strings: (0..heavy_strings())
                .map(|i| format!("heavy string {i:08}"))
                .collect(),
        }
    }
}

impl Drop for Heavy {
    fn drop(&mut self) {
        let started = Instant::now();
        if self.strings.is_empty() {
            spin(HEAVY_DROP);
        } else {
            drop(std::mem::take(&mut self.strings));
        }
        let ended = Instant::now();
        let in_window = WINDOW.load(Ordering::SeqCst);
        if let Some(handed) = self.handed {
            HEAVY.lock().unwrap().push(HeavyLog {
                handed,
                started,
                ended,
                thread: std::thread::current()
                    .name()
                    .unwrap_or("<unnamed>")
                    .to_owned(),
                in_window,
            });
        }
    }
}

// `Heavy` values are marked as handed off just before the unlock; the drop
// that counts is the one after it. The heavy slot is replaced by a value
// with `handed: None` until marked.

struct State {
    record: Vec<String>,
    heavy: Heavy,
}

fn record(i: usize) -> Vec<String> {
    (0..STRINGS)
        .map(|k| format!("record {i} part {k}"))
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    Hand,
    Inline,
    Offload,
    InlineHeavyHint,
    DeferDrop,
    Epoch,
}

impl Strategy {
    const ALL: [Strategy; 6] = [
        Strategy::Hand,
        Strategy::Inline,
        Strategy::Offload,
        Strategy::InlineHeavyHint,
        Strategy::DeferDrop,
        Strategy::Epoch,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::Hand => "hand-written Vec",
            Strategy::Inline => "freeq Inline",
            Strategy::Offload => "freeq Offload",
            Strategy::InlineHeavyHint => "freeq Inline+defer_heavy",
            Strategy::DeferDrop => "defer-drop",
            Strategy::Epoch => "crossbeam-epoch",
        }
    }
}

struct Row {
    name: &'static str,
    lat: Histogram<u64>,
    after: Vec<f64>,
    drop_ms: f64,
    on_other: usize,
    heavies: usize,
    wall: Duration,
    /// Host steal during the run (ms), where the machine reports it.
    steal_ms: Option<f64>,
    /// Where the heavy values were freed.
    freed: Freed,
    /// freeq's counters over the timed window.
    stats: freeq::Stats,
    /// The reclaimer threads' CPU time and waits over the timed window.
    sched: Option<Sched>,
}

/// Where each heavy value was freed, counted by its own `Drop`.
#[derive(Clone, Copy, Default)]
struct Freed {
    /// On another thread (a reclaimer), the drop ending inside the window.
    off_in: usize,
    /// On the producer inside the window (an inline free).
    producer_in: usize,
    /// After the window, on the producer (the final `quiesce()`).
    producer_after: usize,
    /// After the window, on another thread (a reclaimer finishing late).
    off_after: usize,
}

impl Freed {
    fn total(&self) -> usize {
        self.off_in + self.producer_in + self.producer_after + self.off_after
    }
}

/// Scheduler figures of a set of threads (Linux `schedstat`): time run,
/// time runnable but waiting for a CPU, time slices.
#[derive(Clone, Copy, Default)]
struct Sched {
    run_ns: u64,
    wait_ns: u64,
    slices: u64,
    threads: usize,
}

impl Sched {
    /// The reclaimer threads' figures so far (`None` off Linux).
    fn reclaimers() -> Option<Sched> {
        let mut total = Sched::default();
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !comm.starts_with("freeq-reclaim") {
                continue;
            }
            let text = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            let mut f = text
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            total.run_ns += f.next()?;
            total.wait_ns += f.next()?;
            total.slices += f.next()?;
            total.threads += 1;
        }
        Some(total)
    }

    fn since(self, earlier: Sched) -> Sched {
        Sched {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
            slices: self.slices.saturating_sub(earlier.slices),
            threads: self.threads,
        }
    }
}

/// CPU time the hypervisor has taken from this machine's CPUs so far, in
/// ms: the steal column of `/proc/stat` (ticks of 10 ms). A guest thread
/// that loses its CPU this way sees a latency spike that no scheduler
/// inside the machine caused; `None` where it is not reported.
fn steal_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let steal: f64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    Some(steal * 10.0)
}

fn run(strategy: Strategy) -> Row {
    HEAVY.lock().unwrap().clear();
    let policy = if strategy == Strategy::Offload {
        freeq::Policy::Offload
    } else {
        freeq::Policy::Inline
    };
    freeq::set_policy(policy);
    let fq = freeq::Mutex::new(State {
        record: record(0),
        heavy: Heavy::idle(),
    });
    let std_lock = StdMutex::new(State {
        record: record(0),
        heavy: Heavy::idle(),
    });
    let mut lat = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let mut fresh: Vec<Vec<String>> = (0..OPS).map(|i| record(i + 1)).collect();
    let steal_before = steal_ms();
    let stats_before = freeq::stats();
    let sched_before = Sched::reclaimers();
    WINDOW.store(true, Ordering::SeqCst);
    let started = Instant::now();
    for (i, new) in fresh.drain(..).enumerate() {
        let heavy = i % HEAVY_EVERY == HEAVY_EVERY - 1;
        let new_heavy = heavy.then(Heavy::new);
        let t0 = Instant::now();
        match strategy {
            Strategy::Hand => {
                let mut dead_record;
                let mut dead_heavy = None;
                {
                    let mut g = std_lock.lock().unwrap();
                    dead_record = std::mem::replace(&mut g.record, new);
                    if let Some(h) = new_heavy {
                        let mut old = std::mem::replace(&mut g.heavy, h);
                        old.handed = Some(Instant::now());
                        dead_heavy = Some(old);
                    }
                }
                dead_record.clear();
                drop(dead_record);
                drop(dead_heavy);
            }
            Strategy::Inline | Strategy::Offload | Strategy::InlineHeavyHint => {
                let mut g = fq.lock().unwrap();
                freeq::defer(std::mem::replace(&mut g.record, new));
                if let Some(h) = new_heavy {
                    let mut old = std::mem::replace(&mut g.heavy, h);
                    old.handed = Some(Instant::now());
                    if strategy == Strategy::InlineHeavyHint {
                        freeq::defer_heavy(old);
                    } else {
                        freeq::defer(old);
                    }
                }
            }
            Strategy::DeferDrop => {
                let mut g = std_lock.lock().unwrap();
                let old = std::mem::replace(&mut g.record, new);
                drop(defer_drop::DeferDrop::new(old));
                if let Some(h) = new_heavy {
                    let mut old = std::mem::replace(&mut g.heavy, h);
                    old.handed = Some(Instant::now());
                    drop(defer_drop::DeferDrop::new(old));
                }
            }
            Strategy::Epoch => {
                let guard = freeq::epoch::pin();
                let mut g = std_lock.lock().unwrap();
                let old = std::mem::replace(&mut g.record, new);
                guard.defer(move || drop(old));
                if let Some(h) = new_heavy {
                    let mut old = std::mem::replace(&mut g.heavy, h);
                    old.handed = Some(Instant::now());
                    guard.defer(move || drop(old));
                }
                drop(g);
                drop(guard);
            }
        }
        let ns = t0.elapsed().as_nanos() as u64;
        lat.record(ns.max(1)).unwrap();
        spin(THINK);
        black_box(i);
    }
    WINDOW.store(false, Ordering::SeqCst);
    let window_stats = freeq::stats().since(&stats_before);
    let sched = Sched::reclaimers()
        .zip(sched_before)
        .map(|(after, before)| after.since(before));
    // Full reclamation.
    freeq::quiesce();
    if strategy == Strategy::Epoch {
        for _ in 0..256 {
            freeq::epoch::pin().flush();
        }
    }
    let wall = started.elapsed();
    let steal = steal_ms()
        .zip(steal_before)
        .map(|(after, before)| after - before);
    freeq::set_policy(freeq::Policy::Inline);
    drop(fq);
    drop(std_lock);
    // defer-drop's thread may still be working: wait for every heavy value.
    let expect = OPS / HEAVY_EVERY;
    let deadline = Instant::now() + Duration::from_secs(30);
    while HEAVY.lock().unwrap().len() < expect && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        freeq::epoch::pin().flush();
    }
    let logs = std::mem::take(&mut *HEAVY.lock().unwrap());
    let drop_ms = logs
        .iter()
        .map(|l| (l.ended - l.started).as_secs_f64() * 1e3)
        .sum::<f64>()
        / logs.len().max(1) as f64;
    let after: Vec<f64> = logs
        .iter()
        .map(|l| (l.ended - l.handed).as_secs_f64() / (l.ended - l.started).as_secs_f64())
        .collect();
    let me = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_owned();
    let mut freed = Freed::default();
    for l in &logs {
        match (l.thread == me, l.in_window) {
            (false, true) => freed.off_in += 1,
            (true, true) => freed.producer_in += 1,
            (true, false) => freed.producer_after += 1,
            (false, false) => freed.off_after += 1,
        }
    }
    Row {
        name: strategy.name(),
        lat,
        freed,
        stats: window_stats,
        sched,
        on_other: logs.iter().filter(|l| l.thread != me).count(),
        heavies: logs.len(),
        after,
        drop_ms,
        wall,
        steal_ms: steal,
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn heavy() {
    println!(
        "heavy drops: {OPS} ops, one in {HEAVY_EVERY} also replaces a value taking {HEAVY_DROP:?} to drop \
         (or owning FREEQ_HEAVY_STRINGS={} strings); \
         {THINK:?} of work outside the lock per op; one producer",
        heavy_strings()
    );
    println!(
        "per-op latency (lock -> guard dropped, drain included), µs; heavy value freed at (end of drop - hand-off) / its drop time"
    );
    println!(
        "{:<26} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8}",
        "strategy",
        "p50",
        "p99",
        "p99.9",
        "max",
        "freed p50",
        "freed max",
        "drop ms",
        "off-thread",
        "wall ms"
    );
    let rows: Vec<Row> = Strategy::ALL.iter().map(|&s| run(s)).collect();
    let inline = rows
        .iter()
        .find(|r| r.name == "freeq Inline")
        .map(|r| (r.lat.value_at_quantile(0.999) as f64, r.lat.max() as f64));
    for mut r in rows {
        let us = |v: u64| v as f64 / 1e3;
        let after50 = pct(&mut r.after, 0.5);
        let aftermax = pct(&mut r.after, 1.0);
        println!(
            "{:<26} {:>8.2} {:>8.2} {:>9.1} {:>9.1} {:>8.2}x {:>8.2}x {:>8.3} {:>5}/{:<4} {:>8.0}",
            r.name,
            us(r.lat.value_at_quantile(0.5)),
            us(r.lat.value_at_quantile(0.99)),
            us(r.lat.value_at_quantile(0.999)),
            us(r.lat.max()),
            after50,
            aftermax,
            r.drop_ms,
            r.on_other,
            r.heavies,
            r.wall.as_secs_f64() * 1e3,
        );
        if let Some((p999, max)) = inline {
            println!(
                "{:<26} p99.9 {:.3}x Inline's, max {:.3}x Inline's{}",
                "",
                r.lat.value_at_quantile(0.999) as f64 / p999,
                r.lat.max() as f64 / max,
                r.steal_ms
                    .map(|ms| format!("; host steal during the run {ms:.0} ms"))
                    .unwrap_or_default()
            );
        }
        println!("{:<26} {}", "", describe(&r));
        if r.freed.producer_in == 0 && !reclaimers_freed(&r) {
            println!(
                "{:<26} left out: its heavy values were not freed off the producer inside the \
                 window, so its tail latency is not what handing them off costs",
                ""
            );
        }
    }
}

fn threshold() {
    const TOTAL: usize = 1 << 18;
    println!(
        "threshold: batches of N 24-byte heap strings; {TOTAL} strings per row, full reclamation (quiesce) included"
    );
    println!(
        "{:>6} {:>16} {:>16} {:>16} {:>14}",
        "N", "inline drain ns", "inline ns/item", "offload ns/item", "offload/inline"
    );
    let m = freeq::Mutex::new(());
    for n in [1usize, 4, 16, 64, 256, 1024, 4096] {
        let mut results = [0f64; 2];
        let mut drain_ns = 0f64;
        for (k, policy) in [freeq::Policy::Inline, freeq::Policy::Offload]
            .into_iter()
            .enumerate()
        {
            freeq::set_policy(policy);
            let mut pool: Vec<String> = Vec::with_capacity(n);
            let mut total = Duration::ZERO;
            let mut drains = Duration::ZERO;
            for _ in 0..TOTAL / n {
                pool.extend((0..n).map(|i| format!("small string {i:>10}")));
                let t0 = Instant::now();
                let g = m.lock().unwrap();
                for s in pool.drain(..) {
                    freeq::defer(s);
                }
                let t1 = Instant::now();
                drop(g);
                let t2 = Instant::now();
                total += t2 - t0;
                drains += t2 - t1;
            }
            let t0 = Instant::now();
            freeq::quiesce();
            total += t0.elapsed();
            results[k] = total.as_nanos() as f64 / TOTAL as f64;
            if k == 0 {
                drain_ns = drains.as_nanos() as f64 / (TOTAL / n) as f64;
            }
        }
        freeq::set_policy(freeq::Policy::Inline);
        println!(
            "{:>6} {:>16.0} {:>16.1} {:>16.1} {:>14.2}",
            n,
            drain_ns,
            results[0],
            results[1],
            results[1] / results[0]
        );
    }
}

/// A window's figures, one line, for [`pairs`] and `window` (one
/// strategy per process, for `benches/offload_pairs.py`).
fn describe(r: &Row) -> String {
    let f = r.freed;
    let sched = r
        .sched
        .map(|s| {
            format!(
                "reclaimers ran {:.1} ms, waited for a CPU {:.1} ms, {} slices",
                s.run_ns as f64 / 1e6,
                s.wait_ns as f64 / 1e6,
                s.slices
            )
        })
        .unwrap_or_else(|| "reclaimers: no schedstat".into());
    format!(
        "heavy freed: {} off the producer in the window, {} on the producer in it, \
         {} on the producer after it (quiesce), {} off the producer after it; \
         {} items offloaded, {} inline fallbacks; {sched}",
        f.off_in,
        f.producer_in,
        f.producer_after,
        f.off_after,
        r.stats.offloaded,
        r.stats.inline_fallbacks,
    )
}

/// Whether a window's tail latency may be quoted as Offload's: reclaimers
/// freed, inside the timed window, every heavy value but at most the last
/// (handed off at the window's final operation, so no thread can free it
/// before the window closes).
fn reclaimers_freed(r: &Row) -> bool {
    r.freed.total() > 0 && r.freed.off_in + 1 >= r.freed.total()
}

/// How many pairs `pairs` runs: `FREEQ_PAIRS`, or 3.
fn pair_count() -> usize {
    std::env::var("FREEQ_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

/// Offload and Inline run alternately, Offload first, so that neither
/// always follows the same row: a row's latencies depend on the heap the
/// rows before it left (the order in `heavy` put Inline after the
/// hand-written row every time).
///
/// Each Offload window says where its heavy values were freed. Its tail
/// latency counts only if the reclaimers freed them inside the window (see
/// [`reclaimers_freed`]): a window whose heavy values waited for the final
/// `quiesce()` shows a producer that never paid for them, not an Offload
/// that works.
fn pairs() {
    let pairs = pair_count();
    println!(
        "Offload against Inline, run alternately (Offload first), {pairs} pairs (FREEQ_PAIRS); heavy values own \
         FREEQ_HEAVY_STRINGS={} strings (0: spin); ratios Offload / Inline per pair",
        heavy_strings()
    );
    println!(
        "a pair counts when reclaimers freed every heavy value but the last inside Offload's timed window"
    );
    println!(
        "{:<6} {:>8} {:>8} {:>8} {:>12} {:>10} {:>7}",
        "pair", "p50", "p99.9", "max", "drop time", "off-thread", "counts"
    );
    let mut kept: Vec<[f64; 3]> = Vec::new();
    let mut left_out: Vec<[f64; 3]> = Vec::new();
    for k in 0..pairs {
        let off = run(Strategy::Offload);
        let inl = run(Strategy::Inline);
        let q = |r: &Row, p: f64| r.lat.value_at_quantile(p) as f64;
        let ratios = [
            q(&off, 0.5) / q(&inl, 0.5),
            q(&off, 0.999) / q(&inl, 0.999),
            off.lat.max() as f64 / inl.lat.max() as f64,
        ];
        let counts = reclaimers_freed(&off);
        println!(
            "{:<6} {:>7.2}x {:>7.3}x {:>7.3}x {:>11.2}x {:>5}/{:<4} {:>7}",
            k + 1,
            ratios[0],
            ratios[1],
            ratios[2],
            off.drop_ms / inl.drop_ms,
            off.on_other,
            off.heavies,
            if counts { "yes" } else { "NO" },
        );
        println!("       Offload: {}", describe(&off));
        println!("       Inline:  {}", describe(&inl));
        if counts {
            kept.push(ratios);
        } else {
            left_out.push(ratios);
        }
    }
    let summary = |set: &[[f64; 3]]| {
        let col = |i: usize| median(set.iter().map(|r| r[i]).collect());
        format!(
            "p50 {:.2}x, p99.9 {:.3}x, max {:.3}x",
            col(0),
            col(1),
            col(2)
        )
    };
    println!(
        "medians over the {} of {pairs} pairs whose heavy values reclaimers freed in the window: {}",
        kept.len(),
        if kept.is_empty() {
            "none".into()
        } else {
            summary(&kept)
        }
    );
    if !left_out.is_empty() {
        println!(
            "left out, {} pairs whose heavy values waited for quiesce (not Offload's figures): {}",
            left_out.len(),
            summary(&left_out)
        );
    }
}

/// One strategy's window alone, as one line of `key=value` fields, for a
/// driver that runs each window in a fresh process
/// (`benches/offload_pairs.py`).
fn window(strategy: Strategy) {
    let r = run(strategy);
    let f = r.freed;
    let s = r.sched.unwrap_or_default();
    println!(
        "window strategy={} p50_ns={} p999_ns={} max_ns={} drop_ms={:.4} heavies={} \
         off_in={} producer_in={} producer_after={} off_after={} offloaded={} \
         inline_fallbacks={} reclaim_run_ns={} reclaim_wait_ns={} reclaim_slices={} counts={}",
        match strategy {
            Strategy::Offload => "offload",
            _ => "inline",
        },
        r.lat.value_at_quantile(0.5),
        r.lat.value_at_quantile(0.999),
        r.lat.max(),
        r.drop_ms,
        r.heavies,
        f.off_in,
        f.producer_in,
        f.producer_after,
        f.off_after,
        r.stats.offloaded,
        r.stats.inline_fallbacks,
        s.run_ns,
        s.wait_ns,
        s.slices,
        reclaimers_freed(&r) || strategy != Strategy::Offload,
    );
    println!("# {}", describe(&r));
}

pub fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = args.is_empty();
    if all || args.iter().any(|a| a == "heavy") {
        heavy();
    }
    if all || args.iter().any(|a| a == "threshold") {
        threshold();
    }
    if args.iter().any(|a| a == "pairs") {
        pairs();
    }
    if let Some(k) = args.iter().position(|a| a == "window") {
        match args.get(k + 1).map(String::as_str) {
            Some("offload") => window(Strategy::Offload),
            Some("inline") => window(Strategy::Inline),
            _ => eprintln!("usage: heavy_drop window offload|inline"),
        }
    }
}
