//! `freeq::profile` on a mixed workload: which lock sites wait, hold and
//! free the most, and how much of each hold freeq moved out of the lock.
//!
//! Threads share three structures:
//!
//! - a cache behind a `freeq::Mutex`, whose writers replace records of
//!   heap strings and `defer` the old ones (costly frees, moved out);
//! - an index behind a `freeq::parking_lot::RwLock`, mostly read, now and
//!   then rebuilt (its old vector deferred);
//! - a batch of work in a `freeq::section()` with no lock, deferring what
//!   it drops.
//!
//! It samples one outermost section in `--every` and prints the table
//! `freeq::profile::snapshot()` returns.
//!
//! ```text
//! cargo run --release --example profile -- [--seconds 1] [--threads 2]
//!     [--every 1] [--strings 32] [--offload]
//! ```
//!
//! With `--offload` the threads free under `Policy::Offload`: the cache's
//! replaced records go to freeq's reclaimers, and the table's `offloaded`
//! column shows the time those spent freeing each site's batches.
//!
//! `--help` lists the options; values may be given as `--name value` or
//! `--name=value`. The same table, with no code change, comes from any
//! program run with `FREEQ_PROFILE=N` in its environment (printed at exit).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "common/args.rs"]
mod args;

const CLI: args::Cli = args::Cli {
    program: "profile",
    about: "\
profile: a mixed workload on freeq's locks (a cache whose replaced records
are deferred, a mostly-read index, a lock-free batch in a section), sampled
by freeq::profile; prints the profile's table per lock site. Runs about
--seconds.",
    opts: &[
        args::Opt {
            name: "seconds",
            value: "S",
            help: "how long the threads run (default 1)",
        },
        args::Opt {
            name: "threads",
            value: "N",
            help: "threads (default 2)",
        },
        args::Opt {
            name: "every",
            value: "N",
            help: "sample one outermost section in N per thread (default 1)",
        },
        args::Opt {
            name: "strings",
            value: "N",
            help: "heap strings per cache record, what a replacement frees (default 32)",
        },
        args::Opt {
            name: "offload",
            value: "",
            help: "free under Policy::Offload: batches go to freeq's reclaimers",
        },
    ],
};

type Record = Vec<String>;

struct Shared {
    cache: freeq::Mutex<HashMap<u64, Record>>,
    index: freeq::parking_lot::RwLock<Vec<u64>>,
    strings: usize,
}

fn record(key: u64, strings: usize) -> Record {
    (0..strings)
        .map(|i| format!("record {key}, part {i}"))
        .collect()
}

/// Replaces one record; the old one is freed after the unlock.
fn write(shared: &Shared, key: u64) {
    let fresh = record(key, shared.strings); // built before the lock
    let mut cache = shared.cache.lock().unwrap();
    if let Some(old) = cache.insert(key, fresh) {
        freeq::defer(old);
    }
}

/// Reads one record's size.
fn read(shared: &Shared, key: u64) -> usize {
    let cache = shared.cache.lock().unwrap();
    cache.get(&key).map_or(0, Vec::len)
}

/// Looks a key up in the index; now and then rebuilds it.
fn index(shared: &Shared, i: u64) -> bool {
    if i.is_multiple_of(64) {
        let fresh: Vec<u64> = (0..1024).map(|k| k * 3 + i).collect();
        let mut index = shared.index.write();
        freeq::defer(std::mem::replace(&mut *index, fresh));
        return true;
    }
    let index = shared.index.read();
    index.binary_search(&(i % 4096)).is_ok()
}

/// Work with no lock: what it drops waits for the end of the section.
fn batch(i: u64) -> usize {
    let _s = freeq::section();
    let scratch: Vec<String> = (0..8).map(|k| format!("scratch {i}.{k}")).collect();
    let n = scratch.len();
    freeq::defer(scratch);
    n
}

fn main() {
    let a = CLI.parse();
    let seconds = a.seconds("seconds", 1.0);
    let threads = a.threads("threads", 2);
    let every = a.int("every", 1, 1..=1 << 20) as u32;
    let strings = a.int("strings", 32, 0..=1 << 16);
    let offload = a.switch("offload");

    let shared = Arc::new(Shared {
        cache: freeq::Mutex::new(HashMap::new()),
        index: freeq::parking_lot::RwLock::new((0..1024).collect()),
        strings,
    });
    for key in 0..256 {
        write(&shared, key);
    }

    freeq::profile::enable(every);
    freeq::profile::reset();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads as u64)
        .map(|t| {
            let shared = shared.clone();
            thread::spawn(move || {
                if offload {
                    freeq::set_policy(freeq::Policy::Offload);
                }
                let mut i = t * 7919;
                let mut sink = 0usize;
                while Instant::now() < deadline {
                    for _ in 0..64 {
                        i = i
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let key = (i >> 33) % 256;
                        match (i >> 20) % 8 {
                            0 | 1 => write(&shared, key),
                            2..=4 => sink += read(&shared, key),
                            5 | 6 => sink += usize::from(index(&shared, i >> 40)),
                            _ => sink += batch(i),
                        }
                    }
                }
                sink
            })
        })
        .collect();
    for h in handles {
        std::hint::black_box(h.join().unwrap());
    }
    // Every batch handed to a reclaimer is freed, and so counted.
    freeq::quiesce();
    let profile = freeq::profile::snapshot();
    freeq::profile::disable();

    println!("{profile}");
    println!(
        "Each row is a call in this file that opened an outermost section.\n\
         waited: acquisition call to lock held; held: to the release;\n\
         moved: freeing what the section deferred, after the release\n\
         (offloaded: the part a reclaimer freed, with --offload).\n\
         Under Policy::Inline, held + moved estimates the hold without freeq."
    );
}
