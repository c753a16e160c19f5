//! The cache workload shared by `lock_hold` and `defer_frees`: records of
//! many heap strings, a fast generator, and a count of freed records.
// Each example uses only some of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A cache entry whose destructor costs `strings + 1` calls to `free`.
pub struct Record {
    #[allow(dead_code)] // never read: records exist to be freed
    fields: Vec<String>,
}

const TEXT: &str = "the quick brown fox jumps over the lazy dog, then naps for a while";

impl Record {
    pub fn new(strings: usize, rng: &mut Rng) -> Record {
        let fields = (0..strings)
            .map(|_| TEXT[..16 + rng.below(48)].to_owned())
            .collect();
        Record { fields }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        freed::count_one();
    }
}

/// Counts freed records, so a run can wait until every replaced record is
/// really gone. One cache-padded counter per thread slot keeps the count from
/// adding contention of its own.
pub mod freed {
    use super::*;

    #[repr(align(128))]
    struct Padded(AtomicU64);

    const SLOTS: usize = 64;
    static COUNTS: [Padded; SLOTS] = [const { Padded(AtomicU64::new(0)) }; SLOTS];
    static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static SLOT: usize = NEXT_SLOT.fetch_add(1, Relaxed) % SLOTS;
    }

    pub fn count_one() {
        let slot = SLOT.try_with(|s| *s).unwrap_or(0);
        COUNTS[slot].0.fetch_add(1, Relaxed);
    }

    pub fn total() -> u64 {
        COUNTS.iter().map(|c| c.0.load(Relaxed)).sum()
    }

    pub fn reset() {
        COUNTS.iter().for_each(|c| c.0.store(0, Relaxed));
    }
}

/// A small, fast pseudo-random generator (xorshift64*).
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
