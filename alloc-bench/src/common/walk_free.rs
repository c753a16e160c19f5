//! Where a drop-under-lock's time goes: the destructor's walk against its
//! `free` calls, on the `lock_hold` cache (4096 records of 17 heap strings,
//! 8 records replaced per round, picked at random, so the replaced ones
//! are cold). Three timings per round, taken in turn:
//!
//! - `drop`: the records dropped outside any section (walk + frees, what a
//!   drop under a `std` lock costs);
//! - `held`: the same inside a freeq section with `DeferFrees` installed
//!   (walk + recording each free; the frees run at the section's close,
//!   outside the timing);
//! - `walk`: the destructor's reads only (each field's pointer and
//!   capacity), the records then dropped outside the timing.
//!
//! `free ≈ drop - walk` is what the allocator's `free` calls cost on cold
//! blocks, `held - walk` what recording them costs.

use std::hint::black_box;
use std::time::Instant;

const RECORDS: usize = 4096;
const STRINGS: usize = 17;
const PER_ROUND: usize = 8;
const ROUNDS: usize = 30_000;
const TEXT: &str = "the quick brown fox jumps over the lazy dog, then naps for a while";

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

fn record(rng: &mut Rng) -> Vec<String> {
    (0..STRINGS)
        .map(|_| TEXT[..16 + rng.below(48)].to_owned())
        .collect()
}

fn walk(r: &[String]) {
    for s in r {
        black_box((s.as_ptr(), s.capacity()));
    }
}

pub fn main(name: &str) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut cache: Vec<Vec<String>> = (0..RECORDS).map(|_| record(&mut rng)).collect();
    let mut ns: [Vec<u64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS * 3 {
        let mode = round % 3;
        let fresh: Vec<(usize, Vec<String>)> = (0..PER_ROUND)
            .map(|_| (rng.below(RECORDS), record(&mut rng)))
            .collect();
        let mut grave: Vec<Vec<String>> = Vec::with_capacity(PER_ROUND);
        let section = (mode == 1).then(freeq::section);
        let t0 = Instant::now();
        for (slot, new) in fresh {
            let old = std::mem::replace(&mut cache[slot], new);
            if mode == 2 {
                walk(&old);
                grave.push(old);
            } else {
                drop(old);
            }
        }
        let t = t0.elapsed().as_nanos() as u64;
        drop(section);
        drop(grave);
        ns[mode].push(t);
    }
    let stat = |v: &mut Vec<u64>| {
        v.sort_unstable();
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
        (v[v.len() / 2] as f64, mean)
    };
    let [d, h, w] = &mut ns;
    let (d50, dm) = stat(d);
    let (h50, hm) = stat(h);
    let (w50, wm) = stat(w);
    let frees = (PER_ROUND * (STRINGS + 1)) as f64;
    println!(
        "walk_free, {name}: {PER_ROUND} cold records of {STRINGS} strings per round, {ROUNDS} rounds each, ns per round (p50 / mean)"
    );
    println!("drop (walk + free)       {d50:>7.0} / {dm:>7.0}");
    println!("held (walk + record)     {h50:>7.0} / {hm:>7.0}");
    println!("walk only                {w50:>7.0} / {wm:>7.0}");
    println!(
        "per free: free {:.1} ns, record {:.1} ns (p50s, less the walk); drop / held {:.2}x (p50), {:.2}x (mean)",
        (d50 - w50) / frees,
        (h50 - w50) / frees,
        d50 / h50,
        dm / hm
    );
}
