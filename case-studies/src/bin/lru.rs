//! lru 0.19 `LruCache`, unchanged, behind a mutex the user owns.
//!
//! Where it frees under the lock: `put` of a new key into a full cache
//! drops the evicted entry inside the crate (the caller never sees it),
//! `put` of an existing key returns the old value, which
//! `m.lock().unwrap().put(k, v);` drops before the guard, and `clear`
//! drops every entry at once.
//!
//! The workload: the freeing thread `put`s fresh values over a cache
//! kept full (one eviction per put) and, every `--clear-every` puts,
//! `clear`s it (the bulk free); the waiting threads `get` random keys,
//! each call timed, and wait on the same mutex.

use std::process::ExitCode;
use std::sync::Mutex as StdMutex;

use case_studies::harness::{self, Config, Defaults, Flag, Job, Rng, Sample, Study, value};
use lru::LruCache;

static STUDY: Study = Study {
    name: "lru",
    about: "lru 0.19.2's LruCache<u64, Vec<u8>>, unchanged, behind a mutex. The freeing thread puts \
            fresh values (each put into the full cache evicts, and drops, the oldest entry inside \
            the crate) and clears the cache every --clear-every puts (a bulk free of --capacity \
            values); waiting threads time their gets on the same mutex.",
    configs: &[
        Config::published("std::sync::Mutex<LruCache>"),
        Config {
            name: "freeq",
            defer_frees: true,
            about: "freeq::Mutex<LruCache>, the crate unchanged",
        },
        Config {
            name: "deferred",
            defer_frees: false,
            about: "freeq::Mutex<LruCache<u64, freeq::Deferred<Vec<u8>>>>, no allocator wrapper",
        },
    ],
    flags: &[
        Flag {
            name: "capacity",
            default: "256",
            help: "the cache's capacity (entries)",
        },
        Flag {
            name: "clear-every",
            default: "256",
            help: "puts between two clears (0: never clear, evictions only)",
        },
    ],
    defaults: Defaults::SHORT,
};

fn main() -> ExitCode {
    harness::main(&STUDY, run)
}

/// What the three configurations share: a cache behind some mutex.
trait Cache<V>: Sync {
    fn with<R>(&self, f: impl FnOnce(&mut LruCache<u64, V>) -> R) -> R;
}

impl<V: Send> Cache<V> for StdMutex<LruCache<u64, V>> {
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut LruCache<u64, V>) -> R) -> R {
        f(&mut self.lock().unwrap())
    }
}

impl<V: Send> Cache<V> for freeq::Mutex<LruCache<u64, V>> {
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&mut LruCache<u64, V>) -> R) -> R {
        f(&mut self.lock().unwrap())
    }
}

fn run(job: &Job) -> Sample {
    let cap: usize = job.flag("capacity");
    let cap_nz = std::num::NonZeroUsize::new(cap).expect("--capacity: at least 1");
    match job.config.as_str() {
        "published" => go(job, &StdMutex::new(LruCache::new(cap_nz)), |v| v),
        "freeq" => go(job, &freeq::Mutex::new(LruCache::new(cap_nz)), |v| v),
        "deferred" => go(
            job,
            &freeq::Mutex::new(LruCache::new(cap_nz)),
            freeq::Deferred::new,
        ),
        other => panic!("unknown configuration {other}"),
    }
}

fn go<V: Send, C: Cache<V>>(
    job: &Job,
    cache: &C,
    wrap: impl Fn(Vec<u8>) -> V + Send + Sync + Copy,
) -> Sample {
    let cap: u64 = job.flag("capacity");
    let clear_every: u64 = job.flag("clear-every");
    let size = job.size;
    for k in 0..cap {
        let v = wrap(value(size, k));
        cache.with(|c| c.put(k, v));
    }
    let mut s = harness::run(
        job,
        job.waiters,
        |i| {
            let mut rng = Rng::new(i as u64 + 1);
            move || {
                // Keys of the last `cap` puts are live: mostly hits.
                let k = rng.below(cap * 2);
                let hit = cache.with(|c| c.get(&k).map(|v| v as *const V as usize));
                std::hint::black_box(hit);
            }
        },
        || {
            let mut next = cap;
            move || {
                let v = wrap(value(size, next));
                // The returned Option (an old value for a key put twice)
                // drops inside the closure, under the lock, as
                // `m.lock().unwrap().put(k, v);` does.
                cache.with(|c| c.put(next % (cap * 2), v));
                next += 1;
                if clear_every != 0 && next.is_multiple_of(clear_every) {
                    cache.with(|c| c.clear());
                }
            }
        },
    );
    s.extra
        .insert("len_at_end".into(), cache.with(|c| c.len()) as f64);
    s
}
