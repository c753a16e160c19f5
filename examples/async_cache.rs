//! An async cache whose refreshes free the old entries after the unlock.
//!
//! A `freeq::tokio::RwLock<HashMap<u64, Deferred<Entry>>>` is read by many
//! reader tasks and refreshed by a few writer tasks. An entry owns many
//! heap strings, so dropping a replaced one is expensive. A writer builds
//! the fresh entry outside the lock, then takes the write lock and calls
//! `map.insert(key, fresh)` inside the guard's `with`: the displaced
//! `Deferred<Entry>` is dropped there, caught into the guard's bin rather
//! than freed, and `unlock().await` releases the lock, lets the queued
//! readers in, then frees it.
//!
//! The same workload runs on tokio's own `RwLock` (the old entry dropped
//! under the write lock) in alternating rounds, and the example prints the
//! readers' lock wait (p50, p99, p99.9) and the operations done.
//!
//! ```text
//! cargo run --release --features tokio --example async_cache -- [--seconds 2]
//!     [--rounds 2] [--readers 32] [--writers 2] [--strings 20000]
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use freeq::Deferred;
use hdrhistogram::Histogram;

#[path = "common/args.rs"]
mod args;

/// A cached value: expensive to drop (one `free` per string).
struct Entry {
    _strings: Vec<String>,
}

fn entry(strings: usize, version: u64) -> Entry {
    Entry {
        _strings: (0..strings).map(|i| format!("v{version}-{i}")).collect(),
    }
}

const KEYS: u64 = 16;

#[derive(Clone, Copy)]
struct Config {
    seconds: f64,
    readers: usize,
    writers: usize,
    strings: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Cache {
    Tokio,
    Freeq,
}

enum Map {
    Tokio(tokio::sync::RwLock<HashMap<u64, Entry>>),
    Freeq(freeq::tokio::RwLock<HashMap<u64, Deferred<Entry>>>),
}

struct Outcome {
    wait: Histogram<u64>,
    reads: u64,
    writes: u64,
}

async fn run(cfg: Config, cache: Cache) -> Outcome {
    let map = Arc::new(match cache {
        Cache::Tokio => Map::Tokio(tokio::sync::RwLock::new(
            (0..KEYS).map(|k| (k, entry(cfg.strings, 0))).collect(),
        )),
        Cache::Freeq => Map::Freeq(freeq::tokio::RwLock::new(
            (0..KEYS)
                .map(|k| (k, Deferred::new(entry(cfg.strings, 0))))
                .collect(),
        )),
    });
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.seconds);
    let mut writers = Vec::new();
    for w in 0..cfg.writers {
        let map = map.clone();
        writers.push(tokio::spawn(async move {
            let mut writes = 0u64;
            let mut version = 1;
            while Instant::now() < deadline {
                let key = (w as u64 + version) % KEYS;
                let fresh = entry(cfg.strings, version);
                match &*map {
                    Map::Tokio(m) => {
                        // The displaced entry is dropped under the lock.
                        m.write().await.insert(key, fresh);
                    }
                    Map::Freeq(m) => {
                        let mut g = m.write().await;
                        g.with(|map| {
                            map.insert(key, Deferred::new(fresh));
                        });
                        g.unlock().await;
                    }
                }
                writes += 1;
                version += 1;
                tokio::task::yield_now().await;
            }
            writes
        }));
    }
    let mut readers = Vec::new();
    for r in 0..cfg.readers {
        let map = map.clone();
        readers.push(tokio::spawn(async move {
            let mut wait = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let mut reads = 0u64;
            let mut key = r as u64;
            while Instant::now() < deadline {
                key = (key + 1) % KEYS;
                let asked = Instant::now();
                let found = match &*map {
                    Map::Tokio(m) => {
                        let g = m.read().await;
                        wait.saturating_record(asked.elapsed().as_nanos() as u64);
                        g.contains_key(&key)
                    }
                    Map::Freeq(m) => {
                        let g = m.read().await;
                        wait.saturating_record(asked.elapsed().as_nanos() as u64);
                        g.contains_key(&key)
                    }
                };
                assert!(found, "every key stays cached");
                reads += 1;
                tokio::task::yield_now().await;
            }
            (wait, reads)
        }));
    }
    let mut out = Outcome {
        wait: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
        reads: 0,
        writes: 0,
    };
    for w in writers {
        out.writes += w.await.unwrap();
    }
    for r in readers {
        let (wait, reads) = r.await.unwrap();
        out.wait.add(&wait).unwrap();
        out.reads += reads;
    }
    out
}

const CLI: args::Cli = args::Cli {
    program: "async_cache",
    about: "\
async_cache: an async cache behind a tokio RwLock whose writers replace
entries that are expensive to drop. freeq::tokio's guard catches the
displaced entry (a Deferred) in `with` and frees it after unlock().await;
tokio's own RwLock drops it under the write lock. Prints the readers'
lock wait and the operations done, alternating the two per round.",
    opts: &[
        args::Opt {
            name: "seconds",
            value: "S",
            help: "time for each variant and round (default 2)",
        },
        args::Opt {
            name: "rounds",
            value: "N",
            help: "rounds, alternating the variants (default 2)",
        },
        args::Opt {
            name: "readers",
            value: "N",
            help: "reader tasks (default 32)",
        },
        args::Opt {
            name: "writers",
            value: "N",
            help: "writer tasks (default 2)",
        },
        args::Opt {
            name: "strings",
            value: "N",
            help: "heap strings per cached entry (default 20000)",
        },
        args::Opt {
            name: "workers",
            value: "N",
            help: "tokio worker threads (default 2)",
        },
    ],
};

fn main() {
    let a = CLI.parse();
    let cfg = Config {
        seconds: a.seconds("seconds", 2.0),
        readers: a.int("readers", 32, 1..=100_000),
        writers: a.int("writers", 2, 1..=10_000),
        strings: a.int("strings", 20_000, 1..=10_000_000),
    };
    let rounds = a.count("rounds", 2);
    let workers = a.threads("workers", 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("a tokio runtime");
    println!(
        "{} readers and {} writers on {} worker(s); each entry owns {} strings.",
        cfg.readers, cfg.writers, workers, cfg.strings
    );
    println!(
        "{:<22} {:>10} {:>10} {:>11} {:>10} {:>8}",
        "cache", "wait p50", "wait p99", "wait p99.9", "reads", "writes"
    );
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for round in 1..=rounds {
        for cache in [Cache::Tokio, Cache::Freeq] {
            let out = rt.block_on(run(cfg, cache));
            let name = match cache {
                Cache::Tokio => "tokio RwLock",
                Cache::Freeq => "freeq::tokio RwLock",
            };
            println!(
                "{:<22} {:>8.1}us {:>8.1}us {:>9.1}us {:>10} {:>8}",
                format!("{name} #{round}"),
                us(&out.wait, 0.5),
                us(&out.wait, 0.99),
                us(&out.wait, 0.999),
                out.reads,
                out.writes
            );
        }
    }
}
