//! moka 0.12 (`sync::Cache`), unchanged.
//!
//! Where it frees under its locks (moka 0.12.16, `src/sync/base_cache.rs`):
//! maintenance (`do_run_pending_tasks`) takes the `deques` and
//! `timer_wheel` mutexes and, over capacity, `evict_lru_entries` removes
//! up to a batch of entries: each is unlinked from the deques (their
//! nodes freed there, under both locks) and removed from the concurrent
//! hash table, which hands the bucket, and with it the last reference to
//! the value, to crossbeam-epoch (`defer_destroy_bucket`): the value is
//! freed later, by whichever thread's `pin` collects it.
//!
//! Maintenance runs on the caller's thread: an `insert` or `get` that
//! finds 64 operations queued (or 300 ms passed) runs it, behind
//! `try_lock` of the housekeeper's mutex. No `get` ever blocks on it; an
//! `insert` waits only when the write log (384 operations) is full while
//! another thread maintains, and then sleeps 50 µs and retries.
//!
//! The workload: the freeing thread inserts fresh keys into a full cache
//! (every insert evicts one entry, in batches, during maintenance it
//! runs itself); each waiting thread gets keys inserted recently (hits)
//! and inserts a fresh key in `--write-pct` percent of its operations.
//! Values are `Arc`s of `--parts` buffers of the value size, as moka
//! returns a clone of the value. With freeq, every call runs inside a
//! `freeq::section()`, with `DeferFrees`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use case_studies::harness::{
    self, Config, Counters, Defaults, Flag, Job, Rng, Sample, Study, counting, section_if,
    value_parts,
};
use moka::sync::Cache;

type Val = Arc<Vec<Vec<u8>>>;

static STUDY: Study = Study {
    name: "moka",
    about: "moka::sync::Cache (moka 0.12.16, unchanged), full: the freeing thread inserts fresh keys, so \
            maintenance (run by the inserting threads themselves) evicts in batches under the deques and \
            timer_wheel mutexes; the evicted values reach crossbeam-epoch and are freed by a later pin. \
            Waiting threads get recent keys and insert --write-pct percent of the time. With freeq: \
            DeferFrees plus a freeq::section() around each call.",
    configs: &[
        Config::published("moka as published, plain calls"),
        Config::IN_SECTION,
    ],
    flags: &[
        Flag::ENTRIES,
        Flag::PARTS,
        Flag {
            name: "write-pct",
            default: "25",
            help: "percent of a waiting thread's operations that insert a fresh key (the rest get)",
        },
    ],
    defaults: Defaults::LONG,
};

fn main() -> ExitCode {
    harness::main(&STUDY, run)
}

fn run(job: &Job) -> Sample {
    let parts: usize = job.flag("parts");
    let write_pct: u64 = job.flag("write-pct");
    assert!(parts > 0, "--parts: at least 1");
    assert!(write_pct <= 100, "--write-pct: at most 100");
    let with_freeq = job.is("freeq");
    let cap = job.entries(parts);

    let cache: Cache<u64, Val> = Cache::builder().max_capacity(cap).build();
    // Keys are handed out in order; `inserted` is the last one in.
    let next_key = AtomicU64::new(0);
    let inserted = AtomicU64::new(0);
    let insert = |tag: u64| {
        let key = next_key.fetch_add(1, Ordering::Relaxed);
        // Built before the section: only the insert is the crate's.
        let v = Arc::new(value_parts(job.size, parts, tag));
        section_if(with_freeq, || cache.insert(key, v));
        inserted.fetch_max(key, Ordering::Relaxed);
    };
    // Fill it.
    for tag in 0..cap {
        insert(tag);
    }
    cache.run_pending_tasks();

    // Gets, hits.
    let counts = Counters::<2>::new();
    let mut sample = harness::run(
        job,
        job.waiters,
        |i| {
            let mut rng = Rng::new(0x5eed + i as u64);
            let mut tally = counts.tally();
            let insert = &insert;
            let cache = &cache;
            let inserted = &inserted;
            move || {
                if rng.below(100) < write_pct {
                    insert(rng.next_u64());
                    return;
                }
                let last = inserted.load(Ordering::Relaxed);
                let key = last.saturating_sub(rng.below(cap / 2));
                let got = section_if(with_freeq, || cache.get(&key));
                tally.add(0, 1);
                tally.add(1, got.is_some() as u64);
                // Dropped after the section: the last reference only if
                // the entry was evicted meanwhile.
                drop(got);
            }
        },
        || counting(cap, &insert),
    );
    counts.ratios(&mut sample, &["hit_rate"]);
    sample.extra.insert("entries".into(), cap as f64);
    sample
}
