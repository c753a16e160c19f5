//! The control: foyer-memory 0.22, a cache that already frees after its
//! lock by hand, unchanged. freeq should change nothing here.
//!
//! foyer-memory 0.22.6 (`src/raw.rs`, `insert_inner`): an insert takes
//! its shard's write lock, and the entries it evicts or replaces go into
//! a local `garbages` vector that is dropped after the lock is released
//! ("Deallocate data out of the lock critical section"). Under its LRU
//! policy (the default) a `get` takes the same write lock, and so does
//! dropping the entry it returned (`RawCacheEntry::drop`, to unpin the
//! record); the record itself is freed after that, outside the lock.
//!
//! The workload: one shard, so that every thread meets one lock; the
//! freeing thread inserts fresh keys into a full cache (each insert
//! evicts the oldest entry); each waiting thread gets recently inserted
//! keys and drops the entries. With freeq, every call (and the drop of
//! what it returned) runs inside a `freeq::section()`, with `DeferFrees`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use case_studies::harness::{self, Config, Flag, Job, Rng, Sample, Study, value};
use foyer_memory::{Cache, LruConfig};

static STUDY: Study = Study {
    name: "control",
    about: "The control: foyer-memory 0.22.6 (unchanged), an LRU cache that drops what it evicts after \
            releasing its shard lock, by hand. One shard; the freeing thread inserts fresh keys into the \
            full cache (one eviction per insert); waiting threads get recent keys (a get and the drop of \
            its entry both take the shard's write lock). With freeq: DeferFrees plus a \
            freeq::section() around each call. Expected: no change.",
    configs: &[
        Config {
            name: "published",
            defer_frees: false,
            about: "foyer-memory as published, plain calls",
        },
        Config {
            name: "freeq",
            defer_frees: true,
            about: "the same calls, each inside freeq::section()",
        },
    ],
    flags: &[
        Flag {
            name: "entries",
            default: "0",
            help: "the cache's capacity in entries; 0: 64 MiB of values, between 64 and 4096",
        },
        Flag {
            name: "parts",
            default: "1",
            help: "heap buffers of the value size per value",
        },
    ],
    default_sizes: &[16, 1 << 10, 16 << 10, 256 << 10, 1 << 20],
    default_waiters: 1,
    default_ms: 300,
    default_rounds: 5,
    run,
};

fn main() -> ExitCode {
    harness::main(&STUDY)
}

fn run(job: &Job) -> Sample {
    let parts: usize = job.flag("parts");
    let entries: usize = job.flag("entries");
    assert!(parts > 0, "--parts: at least 1");
    let with_freeq = job.is("freeq");
    let cap = if entries > 0 {
        entries
    } else {
        ((64usize << 20) / (job.size * parts)).clamp(64, 4096)
    };

    let cache: Cache<u64, Vec<Vec<u8>>> = Cache::builder(cap)
        .with_shards(1)
        .with_eviction_config(LruConfig::default())
        .build();
    let make = |tag: u64| -> Vec<Vec<u8>> {
        (0..parts as u64)
            .map(|p| value(job.size, tag ^ p))
            .collect()
    };
    let next_key = AtomicU64::new(0);
    let insert = |tag: u64| {
        let key = next_key.load(Ordering::Relaxed);
        // Built before the section: only the insert is the crate's.
        let v = make(tag);
        if with_freeq {
            let _s = freeq::section();
            drop(cache.insert(key, v));
        } else {
            drop(cache.insert(key, v));
        }
        next_key.store(key + 1, Ordering::Relaxed);
    };
    for tag in 0..cap as u64 {
        insert(tag);
    }

    let hits = AtomicU64::new(0);
    let gets = AtomicU64::new(0);
    let mut sample = harness::run(
        job,
        job.waiters,
        |i| {
            let mut rng = Rng::new(0xc0de + i as u64);
            let mut local = Local {
                hits: &hits,
                gets: &gets,
                n: [0; 2],
            };
            let (cache, next_key) = (&cache, &next_key);
            move || {
                let key = next_key
                    .load(Ordering::Relaxed)
                    .saturating_sub(1 + rng.below(cap as u64 / 2));
                let hit = if with_freeq {
                    let _s = freeq::section();
                    cache.get(&key).is_some()
                } else {
                    cache.get(&key).is_some()
                };
                let l = &mut local;
                l.n[0] += 1;
                l.n[1] += hit as u64;
            }
        },
        || {
            let insert = &insert;
            let mut tag = cap as u64;
            move || {
                tag += 1;
                insert(tag);
            }
        },
    );
    let gets = gets.load(Ordering::Relaxed) as f64;
    if gets > 0.0 {
        sample.extra.insert(
            "hit_rate".into(),
            hits.load(Ordering::Relaxed) as f64 / gets,
        );
    }
    sample.extra.insert("entries".into(), cap as f64);
    sample
}

/// A waiting thread's get counts, added to the shared ones when its
/// operation is dropped (warm-up included).
struct Local<'a> {
    hits: &'a AtomicU64,
    gets: &'a AtomicU64,
    n: [u64; 2],
}

impl Drop for Local<'_> {
    fn drop(&mut self) {
        self.gets.fetch_add(self.n[0], Ordering::Relaxed);
        self.hits.fetch_add(self.n[1], Ordering::Relaxed);
    }
}
