//! Shared bench code: the criterion settings every bench uses, and the
//! cache workload of the `hold_time` and `contention` benches.
//!
//! A cache of [`CACHE`] records sits behind one lock. Every critical section
//! replaces [`RECORDS`] records with fresh ones built before the lock is
//! taken; each record owns [`STRINGS`] heap strings, so freeing one is
//! expensive. The strategies differ only in what happens to the records
//! they replace (see [`Strategy`]). `examples/lock_hold.rs` runs the same
//! workload with percentiles and throughput.
#![allow(dead_code)] // each bench uses its own part of this module

use std::mem;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use crossbeam_epoch as epoch;
use defer_drop::DeferDrop;

/// Criterion as every freeq bench runs it: no plots and fewer bootstrap
/// resamples, which on a small machine take longer than the measurements
/// themselves. Reports and ratios are unaffected.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .without_plots()
        .nresamples(20_000)
}

/// Records replaced per critical section.
pub const RECORDS: usize = 8;
/// Heap strings per record.
pub const STRINGS: usize = 17;
/// Records in the cache.
pub const CACHE: usize = 4096;

/// A cache entry whose destructor costs `STRINGS + 1` calls to `free`.
pub struct Record {
    _fields: Vec<String>,
}

const TEXT: &str = "the quick brown fox jumps over the lazy dog, then naps for a while";

impl Record {
    pub fn new(rng: &mut Rng) -> Record {
        let fields = (0..STRINGS)
            .map(|_| TEXT[..16 + rng.below(48)].to_owned())
            .collect();
        Record { _fields: fields }
    }
}

/// xorshift64*: fast, deterministic, good enough to pick cache slots.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

/// Replacements for one critical section: (slot in the cache, new record).
pub type Fresh = Vec<(usize, Record)>;

/// Builds the next critical section's replacements (outside any lock).
pub fn refill(fresh: &mut Fresh, rng: &mut Rng) {
    for _ in 0..RECORDS {
        let slot = rng.below(CACHE);
        fresh.push((slot, Record::new(rng)));
    }
}

/// What happens to the records a critical section replaces.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Strategy {
    /// Dropped in place, with the `std` mutex held.
    DropUnderLock,
    /// Pushed to a local, reused `Vec`, cleared after the unlock.
    HandWritten,
    /// `freeq::defer` under a `freeq::Mutex`; freed after the unlock.
    FreeqStd,
    /// `freeq::defer` under a `freeq::parking_lot::Mutex`.
    FreeqParkingLot,
    /// As `FreeqStd`, with `Policy::Offload`: a reclaimer thread frees.
    FreeqOffload,
    /// `Guard::defer` under a `std` mutex; freed when the epoch advances.
    Epoch,
    /// `DeferDrop` dropped under a `std` mutex: sent to defer-drop's thread.
    DeferDrop,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::DropUnderLock,
        Strategy::HandWritten,
        Strategy::FreeqStd,
        Strategy::FreeqParkingLot,
        Strategy::FreeqOffload,
        Strategy::Epoch,
        Strategy::DeferDrop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::DropUnderLock => "drop-under-lock",
            Strategy::HandWritten => "hand-written",
            Strategy::FreeqStd => "freeq-std",
            Strategy::FreeqParkingLot => "freeq-parking_lot",
            Strategy::FreeqOffload => "freeq-offload",
            Strategy::Epoch => "crossbeam-epoch",
            Strategy::DeferDrop => "defer-drop",
        }
    }

    /// Sets up the calling thread for this strategy (its freeq policy).
    pub fn enter_thread(self) {
        let policy = match self {
            Strategy::FreeqOffload => freeq::Policy::Offload,
            _ => freeq::Policy::Inline,
        };
        freeq::set_policy(policy);
    }

    /// Waits, where the strategy allows it, until everything it handed off
    /// has been freed. defer-drop has no such call.
    pub fn settle(self) {
        match self {
            Strategy::FreeqOffload => freeq::quiesce(),
            Strategy::Epoch => {
                for _ in 0..4 {
                    epoch::pin().flush();
                }
            }
            _ => {}
        }
    }
}

/// The shared cache, behind the lock the strategy uses.
pub enum Cache {
    Std(StdMutex<Vec<Record>>),
    Freeq(freeq::Mutex<Vec<Record>>),
    FreeqParkingLot(freeq::parking_lot::Mutex<Vec<Record>>),
}

impl Cache {
    pub fn new(strategy: Strategy) -> Cache {
        let mut rng = Rng::new(99);
        let records = (0..CACHE).map(|_| Record::new(&mut rng)).collect();
        match strategy {
            Strategy::FreeqStd | Strategy::FreeqOffload => Cache::Freeq(freeq::Mutex::new(records)),
            Strategy::FreeqParkingLot => {
                Cache::FreeqParkingLot(freeq::parking_lot::Mutex::new(records))
            }
            _ => Cache::Std(StdMutex::new(records)),
        }
    }
}

/// Runs one critical section, taking the replacements from `fresh`, and
/// returns how long the lock was held (from just after it was acquired to
/// just before its guard is dropped). `dead` is the hand-written pattern's
/// reusable list.
pub fn critical_section(
    strategy: Strategy,
    cache: &Cache,
    fresh: &mut Fresh,
    dead: &mut Vec<Record>,
) -> Duration {
    match (strategy, cache) {
        (Strategy::DropUnderLock, Cache::Std(cache)) => {
            let mut cache = cache.lock().unwrap();
            let start = Instant::now();
            for (slot, record) in fresh.drain(..) {
                cache[slot] = record;
            }
            let held = start.elapsed();
            drop(cache);
            held
        }
        (Strategy::HandWritten, Cache::Std(cache)) => {
            let mut cache = cache.lock().unwrap();
            let start = Instant::now();
            for (slot, record) in fresh.drain(..) {
                dead.push(mem::replace(&mut cache[slot], record));
            }
            let held = start.elapsed();
            drop(cache);
            dead.clear();
            held
        }
        (Strategy::FreeqStd | Strategy::FreeqOffload, Cache::Freeq(cache)) => {
            let mut cache = cache.lock().unwrap();
            let start = Instant::now();
            for (slot, record) in fresh.drain(..) {
                freeq::defer(mem::replace(&mut cache[slot], record));
            }
            let held = start.elapsed();
            drop(cache);
            held
        }
        (Strategy::FreeqParkingLot, Cache::FreeqParkingLot(cache)) => {
            let mut cache = cache.lock();
            let start = Instant::now();
            for (slot, record) in fresh.drain(..) {
                freeq::defer(mem::replace(&mut cache[slot], record));
            }
            let held = start.elapsed();
            drop(cache);
            held
        }
        (Strategy::Epoch, Cache::Std(cache)) => {
            let mut cache = cache.lock().unwrap();
            let start = Instant::now();
            let guard = epoch::pin();
            for (slot, record) in fresh.drain(..) {
                let old = mem::replace(&mut cache[slot], record);
                guard.defer(move || drop(old));
            }
            let held = start.elapsed();
            drop(cache);
            drop(guard);
            held
        }
        (Strategy::DeferDrop, Cache::Std(cache)) => {
            let mut cache = cache.lock().unwrap();
            let start = Instant::now();
            for (slot, record) in fresh.drain(..) {
                drop(DeferDrop::new(mem::replace(&mut cache[slot], record)));
            }
            let held = start.elapsed();
            drop(cache);
            held
        }
        _ => unreachable!("Cache::new pairs each strategy with its lock"),
    }
}

/// Thread counts for multi-threaded benches: `FREEQ_BENCH_THREADS` (e.g.
/// "4,8,16"), or 1 and 2.
pub fn thread_counts() -> Vec<usize> {
    std::env::var("FREEQ_BENCH_THREADS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|&n| n > 0)
                .collect()
        })
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 2])
}
