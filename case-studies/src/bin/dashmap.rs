//! dashmap 6.2.1: a janitor thread that `retain`s or `clear`s, worker
//! threads that `get` and `insert`, and an insert-only growth run.
//!
//! Where it frees under its shard locks (dashmap 6.2.1, `src/lib.rs`):
//! `retain` erases in place under each shard's write lock (`_retain`),
//! `clear` is `retain(|_, _| false)`, `insert` over an occupied key drops
//! the old value under the write lock, `remove` drops the entry there,
//! and a table resize (`insert` into a full shard) or `shrink_to_fit`
//! frees the whole old table under it.
//!
//! Configurations: the crate as published; the same crate with
//! `DeferFrees` and a `freeq::section()` around each call (no patch); and
//! dashmap with only its lock aliases (`src/lock.rs`) swapped to
//! `freeq::RawDeferred` (`patches/dashmap.patch`), with `DeferFrees`, so
//! every shard lock is a freeq section that frees after its own unlock.

use std::process::ExitCode;

use case_studies::harness::{
    self, Config, Defaults, Flag, Job, Rng, Sample, Study, section_if, untimed, value,
};

static STUDY: Study = Study {
    name: "dashmap",
    about: "dashmap 6.2.1 (DashMap<u64, Vec<u8>>). --mode retain|clear: workers (the waiting threads) \
            get (90%) and insert (10%, replacing a value) over --keys keys; the janitor (the freeing \
            thread) inserts --batch entries (at most --batch-bytes of values) of its own, then drops them all with retain (or clear, \
            which drops the workers' entries too), each shard under its write lock. --mode growth: \
            the janitor inserts --batch new keys one by one (tables grow: each resize frees the old \
            table under the shard's write lock), removes them, and shrink_to_fit()s, while the \
            workers get and insert as above.",
    configs: &[
        Config::published("dashmap as published, plain calls"),
        Config {
            name: "section",
            defer_frees: true,
            about: "dashmap as published, each call inside freeq::section()",
        },
        Config {
            name: "swapped",
            defer_frees: true,
            about: "dashmap with its lock aliases swapped to freeq::RawDeferred (patches/dashmap.patch), plain calls",
        },
    ],
    flags: &[
        Flag {
            name: "mode",
            default: "retain",
            help: "retain, clear or growth",
        },
        Flag {
            name: "keys",
            default: "1024",
            help: "keys the workers use",
        },
        Flag {
            name: "batch",
            default: "256",
            help: "entries the janitor inserts and drops per cycle (growth: keys inserted before shrinking)",
        },
        Flag {
            name: "batch-bytes",
            default: "4m",
            help: "retain/clear: at most this many bytes of values per janitor batch (fewer entries for large values)",
        },
        Flag {
            name: "insert-pct",
            default: "10",
            help: "percentage of worker operations that insert (replace) instead of get",
        },
    ],
    defaults: Defaults::SHORT,
};

fn main() -> ExitCode {
    harness::main(&STUDY, run)
}

/// The calls the workload makes, for both dashmaps (the published one
/// and the one with swapped lock aliases have the same API, as
/// different types).
trait Map: Sync {
    fn new_map() -> Self;
    fn get_len(&self, k: u64) -> Option<usize>;
    fn insert(&self, k: u64, v: Vec<u8>);
    fn remove(&self, k: u64);
    fn retain_below(&self, limit: u64);
    fn clear(&self);
    fn shrink_to_fit(&self);
    fn len(&self) -> usize;
}

macro_rules! map_impl {
    ($ty:ty) => {
        impl Map for $ty {
            fn new_map() -> Self {
                <$ty>::new()
            }
            #[inline]
            fn get_len(&self, k: u64) -> Option<usize> {
                self.get(&k).map(|r| r.len())
            }
            #[inline]
            fn insert(&self, k: u64, v: Vec<u8>) {
                // The old value, if any, drops here, under the shard's
                // write lock (as it does inside the crate).
                <$ty>::insert(self, k, v);
            }
            #[inline]
            fn remove(&self, k: u64) {
                <$ty>::remove(self, &k);
            }
            fn retain_below(&self, limit: u64) {
                self.retain(|k, _| *k < limit)
            }
            fn clear(&self) {
                <$ty>::clear(self)
            }
            fn shrink_to_fit(&self) {
                <$ty>::shrink_to_fit(self)
            }
            fn len(&self) -> usize {
                <$ty>::len(self)
            }
        }
    };
}

map_impl!(dashmap::DashMap<u64, Vec<u8>>);
map_impl!(dashmap_freeq::DashMap<u64, Vec<u8>>);

fn run(job: &Job) -> Sample {
    match job.config.as_str() {
        "published" => go::<dashmap::DashMap<u64, Vec<u8>>>(job, false),
        "section" => go::<dashmap::DashMap<u64, Vec<u8>>>(job, true),
        "swapped" => go::<dashmap_freeq::DashMap<u64, Vec<u8>>>(job, false),
        other => panic!("unknown configuration {other}"),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Retain,
    Clear,
    Growth,
}

fn go<M: Map>(job: &Job, section: bool) -> Sample {
    let mode = match job.flag::<String>("mode").as_str() {
        "retain" => Mode::Retain,
        "clear" => Mode::Clear,
        "growth" => Mode::Growth,
        other => panic!("--mode {other}: retain, clear or growth"),
    };
    let keys: u64 = job.flag("keys");
    let mut batch: u64 = job.flag("batch");
    let batch_bytes = harness::args::parse_size(&job.flag::<String>("batch-bytes"))
        .expect("--batch-bytes: a size");
    if mode != Mode::Growth {
        batch = batch.min((batch_bytes / job.size.max(1)).max(1) as u64);
    }
    let insert_pct: u64 = job.flag("insert-pct");
    let size = job.size;
    let map = M::new_map();
    for k in 0..keys {
        map.insert(k, value(size, k));
    }
    let map = &map;
    let mut s = harness::run(
        job,
        job.waiters,
        |i| {
            let mut rng = Rng::new(i as u64 + 7);
            move || {
                let k = rng.below(keys);
                if rng.below(100) < insert_pct {
                    let v = untimed(|| value(size, k));
                    section_if(section, || map.insert(k, v));
                } else {
                    std::hint::black_box(section_if(section, || map.get_len(k)));
                }
            }
        },
        || {
            let mut next = 0u64;
            let mut removing = false;
            move || match mode {
                Mode::Retain | Mode::Clear => {
                    for j in 0..batch {
                        let v = value(size, j);
                        section_if(section, || map.insert(keys + j, v));
                    }
                    if mode == Mode::Retain {
                        section_if(section, || map.retain_below(keys));
                    } else {
                        section_if(section, || map.clear());
                    }
                }
                Mode::Growth => {
                    // One step per operation: insert the next key while
                    // growing, then remove them one by one, then shrink.
                    if !removing {
                        let v = value(size, next);
                        section_if(section, || map.insert(keys + next, v));
                        next += 1;
                        if next == batch {
                            removing = true;
                        }
                    } else if next > 0 {
                        next -= 1;
                        section_if(section, || map.remove(keys + next));
                    } else {
                        section_if(section, || map.shrink_to_fit());
                        removing = false;
                    }
                }
            }
        },
    );
    s.extra.insert("janitor_batch".into(), batch as f64);
    s.extra.insert("len_at_end".into(), map.len() as f64);
    s
}
