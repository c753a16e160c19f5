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

use case_studies::harness::{
    self, Config, Counters, Defaults, Flag, Job, Rng, Sample, Study, counting, section_if,
    value_parts,
};
use foyer_memory::{Cache, LruConfig};

static STUDY: Study = Study {
    name: "control",
    about: "The control: foyer-memory 0.22.6 (unchanged), an LRU cache that drops what it evicts after \
            releasing its shard lock, by hand. One shard; the freeing thread inserts fresh keys into the \
            full cache (one eviction per insert); waiting threads get recent keys (a get and the drop of \
            its entry both take the shard's write lock). With freeq: DeferFrees plus a \
            freeq::section() around each call. Expected: no change.",
    configs: &[
        Config::published("foyer-memory as published, plain calls"),
        Config::IN_SECTION,
    ],
    flags: &[Flag::ENTRIES, Flag::PARTS],
    defaults: Defaults::LONG,
};

fn main() -> ExitCode {
    harness::main(&STUDY, run)
}

fn run(job: &Job) -> Sample {
    let parts: usize = job.flag("parts");
    assert!(parts > 0, "--parts: at least 1");
    let with_freeq = job.is("freeq");
    let cap = job.entries(parts) as usize;

    let cache: Cache<u64, Vec<Vec<u8>>> = Cache::builder(cap)
        .with_shards(1)
        .with_eviction_config(LruConfig::default())
        .build();
    let next_key = AtomicU64::new(0);
    let insert = |tag: u64| {
        let key = next_key.load(Ordering::Relaxed);
        // Built before the section: only the insert is the crate's.
        let v = value_parts(job.size, parts, tag);
        section_if(with_freeq, || drop(cache.insert(key, v)));
        next_key.store(key + 1, Ordering::Relaxed);
    };
    for tag in 0..cap as u64 {
        insert(tag);
    }

    // Gets, hits.
    let counts = Counters::<2>::new();
    let mut sample = harness::run(
        job,
        job.waiters,
        |i| {
            let mut rng = Rng::new(0xc0de + i as u64);
            let mut tally = counts.tally();
            let (cache, next_key) = (&cache, &next_key);
            move || {
                let key = next_key
                    .load(Ordering::Relaxed)
                    .saturating_sub(1 + rng.below(cap as u64 / 2));
                let hit = section_if(with_freeq, || cache.get(&key).is_some());
                tally.add(0, 1);
                tally.add(1, hit as u64);
            }
        },
        || counting(cap as u64, &insert),
    );
    counts.ratios(&mut sample, &["hit_rate"]);
    sample.extra.insert("entries".into(), cap as f64);
    sample
}
