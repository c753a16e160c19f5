//! An LRU page cache behind one mutex, whose evictions are freed after the
//! unlock.
//!
//! The cache maps page numbers to `Arc<Page>`s. It is the classic design: a
//! `HashMap` from key to slot, and the slots threaded on a doubly linked
//! list (indices into a `Vec`, no `unsafe`) from most to least recently
//! used. Every `get` moves its entry to the front, so even reads need the
//! lock, and the one `freeq::parking_lot::Mutex` is the bottleneck.
//!
//! When the cache is full, `insert` evicts the least recently used entry.
//! Dropping its `Arc<Page>` frees the page (a few dozen heap blocks) if no
//! reader still holds it, and doing that with the lock held makes every
//! other thread wait for `free`. The cache calls `freeq::defer` on the
//! evicted entry instead: the thread that evicted it frees it right after
//! the mutex unlocks. The cache code itself stays the obvious code.
//!
//! Threads look pages up by a skewed key distribution; on a miss they
//! "load" the page (build it, outside the lock) and insert it. The example
//! runs the workload with evictions deferred and with evictions dropped
//! under the lock (the same type, `DEFER` is a const generic), and prints
//! hit rate, evictions, lock hold times and throughput.
//!
//! ```text
//! cargo run --release --example lru_cache -- [--seconds 3] [--rounds 3]
//!     [--threads N] [--capacity 4096] [--keys 16384] [--lines 24]
//! ```
//!
//! `--help` lists the options; values may be given as `--name value` or
//! `--name=value`.
//!
//! Each variant runs for `--seconds` in all, split into `--rounds` that
//! alternate between the two, so that a busy machine disturbs both alike.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[path = "common/args.rs"]
mod args;

// ---------------------------------------------------------------------------
// The LRU list
// ---------------------------------------------------------------------------

const NIL: usize = usize::MAX;

struct Node<K, V> {
    key: K,
    value: V,
    prev: usize,
    next: usize,
}

/// A fixed-capacity least-recently-used map. Not synchronized: [`Cache`]
/// puts it behind a mutex.
///
/// Values it lets go of (evicted or replaced) go to `freeq::defer` when
/// `DEFER` is true, so a caller holding a freeq lock frees them after the
/// unlock; outside any lock `freeq::defer` frees at once. With `DEFER` false
/// they are dropped in place.
pub struct Lru<K, V, const DEFER: bool = true> {
    index: HashMap<K, usize>,
    slots: Vec<Node<K, V>>,
    head: usize, // most recently used
    tail: usize, // least recently used
    capacity: usize,
    evictions: u64,
}

impl<K, V, const DEFER: bool> Lru<K, V, DEFER>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Send + 'static,
{
    /// An empty cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0);
        Lru {
            index: HashMap::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            capacity,
            evictions: 0,
        }
    }

    /// The value under `key`, which becomes the most recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let slot = *self.index.get(key)?;
        self.unlink(slot);
        self.push_front(slot);
        Some(&self.slots[slot].value)
    }

    /// Inserts `value` under `key` as the most recently used entry,
    /// evicting the least recently used one if the cache is full.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(&slot) = self.index.get(&key) {
            let old = std::mem::replace(&mut self.slots[slot].value, value);
            self.discard(old);
            self.unlink(slot);
            self.push_front(slot);
            return;
        }
        let node = Node {
            key: key.clone(),
            value,
            prev: NIL,
            next: NIL,
        };
        let slot = if self.slots.len() < self.capacity {
            self.slots.push(node);
            self.slots.len() - 1
        } else {
            // Reuse the least recently used slot.
            let slot = self.tail;
            self.unlink(slot);
            let evicted = std::mem::replace(&mut self.slots[slot], node);
            self.index.remove(&evicted.key);
            self.evictions += 1;
            self.discard(evicted);
            slot
        };
        self.index.insert(key, slot);
        self.push_front(slot);
    }

    /// Entries evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn discard<T: Send + 'static>(&self, value: T) {
        if DEFER {
            freeq::defer(value);
        } else {
            drop(value);
        }
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.slots[slot].prev, self.slots[slot].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n].prev = prev,
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.slots[slot].prev = NIL;
        self.slots[slot].next = self.head;
        match self.head {
            NIL => self.tail = slot,
            h => self.slots[h].prev = slot,
        }
        self.head = slot;
    }
}

// ---------------------------------------------------------------------------
// The shared cache
// ---------------------------------------------------------------------------

/// A cached page: many separately allocated lines, so freeing one costs.
pub struct Page {
    lines: Vec<String>,
}

/// The page cache: an [`Lru`] behind one freeq mutex.
pub struct Cache<const DEFER: bool> {
    lru: freeq::parking_lot::Mutex<Lru<u64, Arc<Page>, DEFER>>,
}

impl<const DEFER: bool> Cache<DEFER> {
    pub fn new(capacity: usize) -> Self {
        Cache {
            lru: freeq::parking_lot::Mutex::new(Lru::new(capacity)),
        }
    }

    /// The page, if cached. Only an `Arc` is cloned under the lock.
    pub fn get(&self, key: u64) -> Option<Arc<Page>> {
        let t = Timer::start();
        let mut lru = self.lru.lock();
        let held = t.acquired();
        let page = lru.get(&key).cloned();
        held.stop(Op::Get);
        page
    }

    /// Caches `page`. The entry it evicts (or replaces) is freed once the
    /// guard drops, after the unlock.
    pub fn insert(&self, key: u64, page: Arc<Page>) {
        let t = Timer::start();
        let mut lru = self.lru.lock();
        let held = t.acquired();
        lru.insert(key, page);
        held.stop(Op::Insert);
    }

    pub fn evictions(&self) -> u64 {
        self.lru.lock().evictions()
    }
}

// ---------------------------------------------------------------------------
// Measurement: per-thread histograms of lock wait and hold times
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Op {
    Get,
    Insert,
}

#[derive(Clone)]
struct Times {
    wait: Histogram<u64>,
    get_hold: Histogram<u64>,
    insert_hold: Histogram<u64>,
}

impl Times {
    fn new() -> Times {
        let h = || Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
        Times {
            wait: h(),
            get_hold: h(),
            insert_hold: h(),
        }
    }

    fn add(&mut self, other: &Times) {
        self.wait.add(&other.wait).unwrap();
        self.get_hold.add(&other.get_hold).unwrap();
        self.insert_hold.add(&other.insert_hold).unwrap();
    }
}

thread_local! {
    static TIMES: std::cell::RefCell<Times> = std::cell::RefCell::new(Times::new());
}

/// Started before `lock()`; [`Timer::acquired`] right after it.
struct Timer(Instant);
/// Started when the lock was acquired; stopped just before the guard drops.
struct Held(Instant, Duration);

impl Timer {
    fn start() -> Timer {
        Timer(Instant::now())
    }

    fn acquired(self) -> Held {
        let now = Instant::now();
        Held(now, now - self.0)
    }
}

impl Held {
    fn stop(self, op: Op) {
        let hold = self.0.elapsed().as_nanos().max(1) as u64;
        let wait = self.1.as_nanos().max(1) as u64;
        TIMES.with(|t| {
            let mut t = t.borrow_mut();
            t.wait.saturating_record(wait);
            match op {
                Op::Get => t.get_hold.saturating_record(hold),
                Op::Insert => t.insert_hold.saturating_record(hold),
            }
        });
    }
}

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

struct Config {
    seconds: f64,
    rounds: u32,
    threads: usize,
    capacity: usize,
    keys: u64,
    lines: usize,
}

struct Outcome {
    lookups: u64,
    hits: u64,
    evictions: u64,
    elapsed: Duration,
    times: Times,
    freed: u64,
}

/// "Loads" page `key`: builds it, outside any lock.
fn load(key: u64, lines: usize) -> Arc<Page> {
    let lines = (0..lines)
        .map(|i| format!("page {key:>8} line {i:>3}: some cached content"))
        .collect();
    Arc::new(Page { lines })
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.lookups += other.lookups;
        self.hits += other.hits;
        self.evictions += other.evictions;
        self.elapsed += other.elapsed;
        self.times.add(&other.times);
        self.freed += other.freed;
    }
}

/// One round: a fresh cache, `threads` threads looking pages up.
fn run<const DEFER: bool>(cfg: &Config) -> Outcome {
    let cache = Cache::<DEFER>::new(cfg.capacity);
    let stop = AtomicBool::new(false);
    let freed_before = freeq::stats().freed;
    let start = Instant::now();
    let per_thread: Vec<(u64, u64, Times)> = thread::scope(|s| {
        let workers: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let (cache, stop) = (&cache, &stop);
                s.spawn(move || {
                    let mut rng = Rng::new(t as u64 + 1);
                    let (mut lookups, mut hits) = (0u64, 0u64);
                    while !stop.load(Relaxed) {
                        let key = rng.skewed(cfg.keys);
                        let page = match cache.get(key) {
                            Some(page) => {
                                hits += 1;
                                page
                            }
                            None => {
                                let page = load(key, cfg.lines);
                                cache.insert(key, page.clone());
                                page
                            }
                        };
                        std::hint::black_box(page.lines.len());
                        lookups += 1;
                    }
                    let times =
                        TIMES.with(|t| std::mem::replace(&mut *t.borrow_mut(), Times::new()));
                    (lookups, hits, times)
                })
            })
            .collect();
        thread::sleep(Duration::from_secs_f64(cfg.seconds / cfg.rounds as f64));
        stop.store(true, Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let mut out = Outcome {
        lookups: 0,
        hits: 0,
        evictions: cache.evictions(),
        elapsed,
        times: Times::new(),
        freed: freeq::stats().freed - freed_before,
    };
    for (lookups, hits, times) in per_thread {
        out.lookups += lookups;
        out.hits += hits;
        out.times.add(&times);
    }
    out
}

const CLI: args::Cli = args::Cli {
    program: "lru_cache",
    about: "\
lru_cache: an LRU page cache behind one mutex whose evictions are freed
after the unlock (freeq) or under it (std). Prints lock hold times, lookup
latency and throughput for both, side by side. Runs about 2 x --seconds.",
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
            name: "threads",
            value: "N",
            help: "threads (default: the number of cores)",
        },
        args::Opt {
            name: "capacity",
            value: "N",
            help: "pages the cache holds (default 4096)",
        },
        args::Opt {
            name: "keys",
            value: "N",
            help: "distinct page numbers (default 16384)",
        },
        args::Opt {
            name: "lines",
            value: "N",
            help: "heap lines per page, what an eviction frees (default 24)",
        },
    ],
};

fn main() {
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    let a = CLI.parse();
    let cfg = Config {
        seconds: a.seconds("seconds", 3.0),
        rounds: a.count("rounds", 3) as u32,
        threads: a.threads("threads", threads.min(args::MAX_THREADS)),
        capacity: a.int("capacity", 4096, 1..=1 << 24),
        keys: a.count("keys", 16_384) as u64,
        lines: a.int("lines", 24, 0..=10_000),
    };

    println!(
        "An LRU page cache of {} entries behind one freeq::parking_lot::Mutex;\n\
         {} threads look up {} page numbers (skewed: low numbers are hot) and\n\
         load and insert missing pages. A page is {} heap strings, freed when\n\
         its entry is evicted (if no reader still holds the Arc). Evicted\n\
         entries are dropped under the mutex, or handed to freeq::defer and\n\
         freed right after the unlock.\n",
        cfg.capacity, cfg.threads, cfg.keys, cfg.lines
    );

    let mut dropped = run::<false>(&cfg);
    let mut deferred = run::<true>(&cfg);
    for _ in 1..cfg.rounds {
        dropped.merge(run::<false>(&cfg));
        deferred.merge(run::<true>(&cfg));
    }

    println!(
        "{:<15} {:>10} {:>6} {:>10} {:>11} {:>10} {:>10} {:>9} {:>9}",
        "evictions",
        "lookups/s",
        "hits",
        "evicted",
        "insert mean",
        "insert p50",
        "insert p99",
        "get p99",
        "wait p99"
    );
    for (name, o) in [("under the lock", &dropped), ("freeq::defer", &deferred)] {
        let t = &o.times;
        println!(
            "{:<15} {:>10.0} {:>5.1}% {:>10} {:>11} {:>10} {:>10} {:>9} {:>9}",
            name,
            o.lookups as f64 / o.elapsed.as_secs_f64(),
            100.0 * o.hits as f64 / o.lookups as f64,
            o.evictions,
            us(t.insert_hold.mean()),
            us(t.insert_hold.value_at_quantile(0.5) as f64),
            us(t.insert_hold.value_at_quantile(0.99) as f64),
            us(t.get_hold.value_at_quantile(0.99) as f64),
            us(t.wait.value_at_quantile(0.99) as f64),
        );
    }
    let ratio = |q: f64| {
        let (a, b) = (&dropped.times.insert_hold, &deferred.times.insert_hold);
        a.value_at_quantile(q) as f64 / b.value_at_quantile(q) as f64
    };
    println!(
        "\ninsert hold with freeq: {:.1}x shorter at p50, {:.1}x at p99; lookups/s {:.2}x\n\
         (throughput varies from run to run on a busy machine; hold times are steadier);\n\
         values freed by freeq after an unlock: {}",
        ratio(0.5),
        ratio(0.99),
        (deferred.lookups as f64 / deferred.elapsed.as_secs_f64())
            / (dropped.lookups as f64 / dropped.elapsed.as_secs_f64()),
        deferred.freed,
    );
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Nanoseconds, printed as microseconds.
fn us(ns: f64) -> String {
    format!("{:.2}µs", ns / 1000.0)
}

/// A small, fast pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A key in `0..n`, low keys far more likely (u³ scaled).
    fn skewed(&mut self, n: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * n as f64) as u64
    }
}
