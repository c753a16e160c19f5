//! cached 4.1 `#[cached(max_size = N)]`: one global `parking_lot::RwLock`
//! per function (`cached::sync_sync`, taken for writing on every lookup,
//! since a hit reorders the LRU list).
//!
//! Where it frees under that lock: a miss inserts the computed value and
//! `SizedCache::check_capacity` drops the evicted pair under the write
//! lock; clearing the cache (`FN.write().cache_clear()`) drops every
//! entry under it.
//!
//! Configurations: cached as published; and cached as published with
//! `DeferFrees` and a `freeq::section()` around each call (no patch).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cached::Cached;
use cached::proc_macro::cached;
use case_studies::harness::{
    self, Config, Defaults, Flag, Job, Rng, Sample, Study, section_if, value,
};

static STUDY: Study = Study {
    name: "cached",
    about: "cached 4.1.0, #[cached(max_size = 256)] fn lookup(k: u64) -> Arc<Vec<u8>>, unchanged. Waiting \
            threads call lookup on keys that hit (each call takes the function's global write lock); \
            the freeing thread calls it on fresh keys (each miss evicts, and drops, the oldest entry \
            under that lock) and clears the cache every --clear-every calls (a bulk free of 256 \
            values under the lock).",
    configs: &[
        Config::published("cached as published, plain calls"),
        Config {
            name: "section",
            defer_frees: true,
            about: "cached as published, each call inside freeq::section()",
        },
    ],
    flags: &[Flag {
        name: "clear-every",
        default: "256",
        help: "misses between two clears (0: never clear, evictions only)",
    }],
    defaults: Defaults::SHORT,
};

/// The cache's capacity (the macro takes a literal).
const CAPACITY: u64 = 256;

/// The value size of this process's job.
static SIZE: AtomicUsize = AtomicUsize::new(16);

/// The cached function: a value of the job's size, shared by `Arc` (a hit
/// clones the `Arc`, not the buffer).
#[cached(max_size = 256)]
fn lookup(k: u64) -> Arc<Vec<u8>> {
    Arc::new(value(SIZE.load(Ordering::Relaxed), k))
}

fn main() -> ExitCode {
    harness::main(&STUDY, run)
}

fn run(job: &Job) -> Sample {
    let section = match job.config.as_str() {
        "published" => false,
        "section" => true,
        other => panic!("unknown configuration {other}"),
    };
    let clear_every: u64 = job.flag("clear-every");
    SIZE.store(job.size, Ordering::Relaxed);
    // The freeing thread keeps the last CAPACITY keys it asked for live;
    // the waiting threads ask for keys it asked for a while ago.
    let newest = AtomicUsize::new(CAPACITY as usize);
    for k in 0..CAPACITY {
        lookup(k);
    }
    let newest = &newest;
    let mut s = harness::run(
        job,
        job.waiters,
        |i| {
            let mut rng = Rng::new(i as u64 + 3);
            move || {
                let top = newest.load(Ordering::Relaxed) as u64;
                let k = top - 1 - rng.below(CAPACITY / 2);
                // The returned Arc drops outside the lock (the cache keeps
                // its own reference).
                std::hint::black_box(section_if(section, || lookup(k)));
            }
        },
        || {
            let mut next = CAPACITY;
            move || {
                std::hint::black_box(section_if(section, || lookup(next)));
                next += 1;
                newest.store(next as usize, Ordering::Relaxed);
                if clear_every != 0 && next.is_multiple_of(clear_every) {
                    section_if(section, || LOOKUP.write().cache_clear());
                }
            }
        },
    );
    s.extra
        .insert("cache_len_at_end".into(), LOOKUP.read().cache_size() as f64);
    s
}
