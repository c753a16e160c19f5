//! A sharded concurrent hash map whose writers never free under a lock.
//!
//! The map splits its keys over a fixed number of shards, each a
//! `HashMap` behind its own `freeq::parking_lot::RwLock`. Readers take a
//! shard's read lock; `insert` and `remove` take its write lock. The values
//! are costly to drop (a `Vec` of heap strings, like a parsed record), and a
//! writer that overwrites or removes one would normally free it right there,
//! with the shard locked, stalling every reader and writer of that shard.
//!
//! With freeq the map hands the old value to [`freeq::defer`] instead: it is
//! queued on the writing thread and freed the moment the shard's write
//! guard unlocks. The code reads as if it dropped in place; nothing else
//! (no drop list, no second call after the unlock) is needed.
//!
//! The example runs the same workload twice, on the same map type, which
//! takes the choice as a const generic: `ShardedMap<K, V, true>` defers,
//! `ShardedMap<K, V, false>` drops under the write lock. It reports how long
//! each write lock was held and waited for, the throughput, and what
//! `freeq::stats()` counted.
//!
//! ```text
//! cargo run --release --example sharded_map -- [--seconds 3] [--rounds 3]
//!     [--threads N] [--shards 16] [--keys 20000] [--strings 16] [--writes 40]
//! ```
//!
//! `--help` lists the options; values may be given as `--name value` or
//! `--name=value`.
//!
//! Each variant runs for `--seconds` in all, split into `--rounds` that
//! alternate between the two, so that a busy machine disturbs both alike.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use freeq::parking_lot::RwLock;
use hdrhistogram::Histogram;

#[path = "common/args.rs"]
mod args;

// ---------------------------------------------------------------------------
// The map
// ---------------------------------------------------------------------------

/// A concurrent hash map made of independently locked shards.
///
/// `DEFER` says what happens to values the map overwrites or removes:
/// `true` (the default) hands them to freeq, which frees them after the
/// shard unlocks; `false` drops them in place, under the write lock.
pub struct ShardedMap<K, V, const DEFER: bool = true> {
    shards: Box<[RwLock<HashMap<K, V>>]>,
    hasher: RandomState,
}

impl<K, V, const DEFER: bool> ShardedMap<K, V, DEFER>
where
    K: Hash + Eq,
    V: Send + 'static,
{
    /// An empty map with `shards` shards.
    pub fn new(shards: usize) -> Self {
        assert!(shards > 0, "a map needs at least one shard");
        ShardedMap {
            shards: (0..shards).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<HashMap<K, V>> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// Inserts `value` under `key`; returns whether it replaced a value.
    pub fn insert(&self, key: K, value: V) -> bool {
        let shard = self.shard(&key);
        write_locked(shard, |map| match map.insert(key, value) {
            Some(old) => {
                discard::<V, DEFER>(old);
                true
            }
            None => false,
        })
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&self, key: &K) -> bool {
        write_locked(self.shard(key), |map| match map.remove(key) {
            Some(old) => {
                discard::<V, DEFER>(old);
                true
            }
            None => false,
        })
    }

    /// Runs `f` on the value under `key`, with the shard read-locked.
    pub fn get<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.shard(key).read().get(key).map(f)
    }

    /// Number of entries (locks each shard in turn).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Gets rid of a value the map no longer holds. Called with a write lock
/// held: `freeq::defer` queues it until the lock is released; a plain drop
/// frees it here and now.
fn discard<V: Send + 'static, const DEFER: bool>(value: V) {
    if DEFER {
        freeq::defer(value);
    } else {
        drop(value);
    }
}

/// Write-locks `shard` and runs `f` on it, recording how long the lock was
/// waited for and held. The guard drops at the end: the shard unlocks, and
/// then this thread frees whatever `f` deferred.
fn write_locked<K, V, R>(
    shard: &RwLock<HashMap<K, V>>,
    f: impl FnOnce(&mut HashMap<K, V>) -> R,
) -> R {
    let asked = Instant::now();
    let mut map = shard.write();
    let acquired = Instant::now();
    let result = f(&mut map);
    probe::record(acquired - asked, acquired.elapsed());
    result
}

// ---------------------------------------------------------------------------
// Measurement: per-thread histograms of write-lock wait and hold times
// ---------------------------------------------------------------------------

mod probe {
    use super::*;
    use std::cell::RefCell;

    pub struct Times {
        pub wait: Histogram<u64>,
        pub hold: Histogram<u64>,
    }

    pub fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
    }

    thread_local! {
        static TIMES: RefCell<Times> = RefCell::new(Times {
            wait: histogram(),
            hold: histogram(),
        });
    }

    pub fn record(wait: Duration, hold: Duration) {
        TIMES.with(|t| {
            let mut t = t.borrow_mut();
            t.wait.saturating_record(wait.as_nanos().max(1) as u64);
            t.hold.saturating_record(hold.as_nanos().max(1) as u64);
        });
    }

    /// This thread's figures, leaving empty histograms behind.
    pub fn take() -> Times {
        TIMES.with(|t| {
            std::mem::replace(
                &mut *t.borrow_mut(),
                Times {
                    wait: histogram(),
                    hold: histogram(),
                },
            )
        })
    }
}

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

/// A value that is costly to drop: `strings + 1` calls to `free`.
type Record = Vec<String>;

const TEXT: &str = "a record field, long enough to need its own heap block somewhere";

fn record(strings: usize, rng: &mut Rng) -> Record {
    (0..strings)
        .map(|_| TEXT[..24 + rng.below(40)].to_owned())
        .collect()
}

struct Config {
    seconds: f64,
    rounds: u32,
    threads: usize,
    shards: usize,
    keys: u64,
    strings: usize,
    writes: usize,
}

struct Outcome {
    ops: u64,
    elapsed: Duration,
    wait: Histogram<u64>,
    hold: Histogram<u64>,
    stats: Stats,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.wait.add(&other.wait).unwrap();
        self.hold.add(&other.hold).unwrap();
        self.stats.deferred += other.stats.deferred;
        self.stats.freed += other.stats.freed;
        self.stats.drains += other.stats.drains;
        self.stats.max_pending = self.stats.max_pending.max(other.stats.max_pending);
    }
}

/// Fills a map, then lets `threads` threads run a mix of gets, inserts
/// (mostly overwrites) and removes on random keys for one round.
fn run<const DEFER: bool>(cfg: &Config) -> Outcome {
    let map = ShardedMap::<u64, Record, DEFER>::new(cfg.shards);
    let mut rng = Rng::new(1);
    for key in 0..cfg.keys {
        map.insert(key, record(cfg.strings, &mut rng));
    }
    probe::take(); // the fill is not part of the measurement

    let stop = AtomicBool::new(false);
    let before = Stats::now();
    let start = Instant::now();
    let per_thread: Vec<(u64, probe::Times)> = thread::scope(|s| {
        let workers: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let (map, stop) = (&map, &stop);
                s.spawn(move || {
                    let mut rng = Rng::new(t as u64 + 2);
                    let mut ops = 0u64;
                    while !stop.load(Relaxed) {
                        let key = rng.below(cfg.keys as usize) as u64;
                        let dice = rng.below(100);
                        if dice < cfg.writes {
                            // Build the value before taking the lock.
                            let value = record(cfg.strings, &mut rng);
                            map.insert(key, value);
                        } else if dice < cfg.writes + cfg.writes / 4 {
                            map.remove(&key);
                        } else {
                            let len = map.get(&key, |v| v.len());
                            std::hint::black_box(len);
                        }
                        ops += 1;
                    }
                    (ops, probe::take())
                })
            })
            .collect();
        thread::sleep(Duration::from_secs_f64(cfg.seconds / cfg.rounds as f64));
        stop.store(true, Relaxed);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let stats = Stats::now().since(&before);
    assert!(!map.is_empty());

    let mut out = Outcome {
        ops: 0,
        elapsed,
        wait: probe::histogram(),
        hold: probe::histogram(),
        stats,
    };
    for (ops, times) in per_thread {
        out.ops += ops;
        out.wait.add(&times.wait).unwrap();
        out.hold.add(&times.hold).unwrap();
    }
    out
}

/// The `freeq::stats()` counters this example prints, as a difference
/// between two snapshots.
struct Stats {
    deferred: u64,
    freed: u64,
    drains: u64,
    max_pending: u64,
}

impl Stats {
    fn now() -> Stats {
        let s = freeq::stats();
        Stats {
            deferred: s.deferred,
            freed: s.freed,
            drains: s.drains,
            max_pending: s.max_pending,
        }
    }

    fn since(&self, before: &Stats) -> Stats {
        Stats {
            deferred: self.deferred - before.deferred,
            freed: self.freed - before.freed,
            drains: self.drains - before.drains,
            max_pending: self.max_pending, // a high-water mark, not a count
        }
    }
}

const CLI: args::Cli = args::Cli {
    program: "sharded_map",
    about: "\
sharded_map: a sharded hash map on freeq::parking_lot::RwLock shards.
Writers replace and remove records with many heap strings; freeq frees the
old records after the shard's write lock is released. Prints write-lock hold
times and throughput with and without deferral. Runs about 2 x --seconds.",
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
            name: "shards",
            value: "N",
            help: "shards, each behind its own RwLock (default 16)",
        },
        args::Opt {
            name: "keys",
            value: "N",
            help: "keys in the map (default 20000)",
        },
        args::Opt {
            name: "strings",
            value: "N",
            help: "heap strings per record (default 16)",
        },
        args::Opt {
            name: "writes",
            value: "PERCENT",
            help: "percent of operations that write, 1 to 80 (default 40)",
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
        shards: a.int("shards", 16, 1..=1 << 16),
        keys: a.int("keys", 20_000, 1..=1_000_000) as u64,
        strings: a.int("strings", 16, 0..=10_000),
        writes: a.int("writes", 40, 1..=80),
    };

    println!(
        "A sharded map: {} shards, {} threads, {} keys.",
        cfg.shards, cfg.threads, cfg.keys
    );
    println!(
        "Each value is a Vec of {} heap strings. Operations: {}% insert (nearly all\n\
         overwrite a value), {}% remove, the rest get. Overwritten and removed\n\
         values are either dropped in place, with the shard write-locked, or\n\
         handed to freeq::defer, which frees them right after the unlock.\n\
         Hold = time a write lock was held; wait = time spent acquiring it.\n",
        cfg.strings,
        cfg.writes,
        cfg.writes / 4
    );

    let mut dropped = run::<false>(&cfg);
    let mut deferred = run::<true>(&cfg);
    for _ in 1..cfg.rounds {
        dropped.merge(run::<false>(&cfg));
        deferred.merge(run::<true>(&cfg));
    }

    println!(
        "{:<18} {:>11} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "values freed", "ops/s", "hold mean", "hold p50", "hold p99", "hold max", "wait p99"
    );
    for (name, o) in [("under the lock", &dropped), ("freeq::defer", &deferred)] {
        println!(
            "{:<18} {:>11.0} {:>10} {:>9} {:>9} {:>9} {:>10}",
            name,
            o.ops as f64 / o.elapsed.as_secs_f64(),
            us(o.hold.mean()),
            us(o.hold.value_at_quantile(0.5) as f64),
            us(o.hold.value_at_quantile(0.99) as f64),
            us(o.hold.max() as f64),
            us(o.wait.value_at_quantile(0.99) as f64),
        );
    }
    let ratio = |q: f64| {
        dropped.hold.value_at_quantile(q) as f64 / deferred.hold.value_at_quantile(q) as f64
    };
    println!(
        "\nwrite-lock hold with freeq: {:.1}x shorter at p50, {:.1}x at p99; throughput {:.2}x\n\
         (the freeing work is the same, only moved out of the lock: throughput moves\n\
         little and varies from run to run on a busy machine; hold times are steadier)",
        ratio(0.5),
        ratio(0.99),
        (deferred.ops as f64 / deferred.elapsed.as_secs_f64())
            / (dropped.ops as f64 / dropped.elapsed.as_secs_f64()),
    );
    let s = &deferred.stats;
    println!(
        "freeq::stats() over the freeq runs: deferred {}, freed {}, drains {}, max pending {}",
        s.deferred, s.freed, s.drains, s.max_pending
    );
    println!(
        "(one drain per write that replaced or removed a value; the drop-under-lock runs\n\
         deferred {} values)",
        dropped.stats.deferred
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

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}
