//! The `defer_frees` measurement, for any inner allocator: the binary that
//! includes it installs `DeferFrees<A>` as its global allocator and calls
//! [`main`] with the same `A`.
//!
//! Two parts, side by side in one run:
//!
//! 1. **Lock hold, throughput and the freeing thread's CPU**, on the
//!    `lock_hold` cache workload (a `Vec` of records behind one lock; each
//!    critical section replaces `--records` records of `--strings` heap
//!    strings, built before the lock). The same drop-under-lock code
//!    (`cache[slot] = record`) runs under `std::sync::Mutex` (not a
//!    section: every free is made under the lock) and under `freeq::Mutex`
//!    (a section: `DeferFrees` holds the frees until the unlock), beside
//!    `freeq::defer`, `freeq::Deferred` and the hand-written pattern.
//! 2. **`dealloc` outside a section**: freeing blocks through
//!    `DeferFrees<A>` against `A` called directly.
//! 3. **A held free against a bare thread-local store**: a `dealloc`
//!    through the global allocator inside a section (which only records
//!    the block) against an out-of-line function that stores the same
//!    block's address and size into a thread-local array and bumps its
//!    index, the floor for recording a free. Both timed loops are
//!    `#[inline(never)]` functions (`free_all_held`, `store_all_bare`), so
//!    `valgrind --tool=callgrind` can count their instructions.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::hint::black_box;
use std::mem;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use freeq::Deferred;
use freeq::alloc::DeferFrees;
use hdrhistogram::Histogram;

use super::args::{Cli, Opt};
use super::workload::{Fresh, Record, Rng};

const OPTS: &[Opt] = &[
    Opt {
        name: "threads",
        value: "N,M",
        help: "thread counts to run, comma-separated (default 1,2)",
    },
    Opt {
        name: "seconds",
        value: "S",
        help: "measured seconds per strategy and thread count, over all rounds (default 6)",
    },
    Opt {
        name: "rounds",
        value: "N",
        help: "rounds; strategies take turns within each (default 3)",
    },
    Opt {
        name: "records",
        value: "N",
        help: "records replaced per critical section (default 8)",
    },
    Opt {
        name: "strings",
        value: "N",
        help: "heap strings per record (default 17)",
    },
    Opt {
        name: "cache",
        value: "N",
        help: "records in the cache (default 4096)",
    },
    Opt {
        name: "dealloc-rounds",
        value: "N",
        help: "rounds of the dealloc microbenchmarks (default 301)",
    },
    Opt {
        name: "part",
        value: "PART",
        help: "all (default), hold (the lock hold tables) or dealloc (the dealloc \
               microbenchmarks: outside a section, and a held free against a bare store)",
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    StdDrop,
    FreeqDrop,
    FreeqDefer,
    FreeqDeferred,
    Hand,
}

impl Strategy {
    const ALL: [Strategy; 5] = [
        Strategy::StdDrop,
        Strategy::FreeqDrop,
        Strategy::FreeqDefer,
        Strategy::FreeqDeferred,
        Strategy::Hand,
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::StdDrop => "drop under std::sync::Mutex",
            Strategy::FreeqDrop => "same code, freeq::Mutex + DeferFrees",
            Strategy::FreeqDefer => "freeq::defer",
            Strategy::FreeqDeferred => "freeq::Deferred<Record>",
            Strategy::Hand => "hand-written Vec",
        }
    }
}

enum Cache {
    Std(StdMutex<Vec<Record>>),
    Freeq(freeq::Mutex<Vec<Record>>),
    Deferred(freeq::Mutex<Vec<Deferred<Record>>>),
}

/// The old records are dropped in place, with the lock held: under a
/// `std` mutex their frees are made there; under a freeq mutex (a
/// section) `DeferFrees` holds them until the unlock. The same code.
fn drop_in_place<G: std::ops::DerefMut<Target = Vec<Record>>>(
    mut g: G,
    fresh: &mut Fresh,
) -> Duration {
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        g[slot] = record;
    }
    let held = start.elapsed();
    drop(g);
    held
}

fn hand_written(m: &StdMutex<Vec<Record>>, fresh: &mut Fresh, dead: &mut Vec<Record>) -> Duration {
    let mut g = m.lock().unwrap();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        dead.push(mem::replace(&mut g[slot], record));
    }
    let held = start.elapsed();
    drop(g);
    dead.clear();
    held
}

fn freeq_defer(m: &freeq::Mutex<Vec<Record>>, fresh: &mut Fresh) -> Duration {
    let mut g = m.lock().unwrap();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        freeq::defer(mem::replace(&mut g[slot], record));
    }
    let held = start.elapsed();
    drop(g);
    held
}

fn freeq_deferred(m: &freeq::Mutex<Vec<Deferred<Record>>>, fresh: &mut Fresh) -> Duration {
    let mut g = m.lock().unwrap();
    let start = Instant::now();
    for (slot, record) in fresh.drain(..) {
        g[slot] = Deferred::new(record); // the old one's drop waits
    }
    let held = start.elapsed();
    drop(g);
    held
}

/// One critical section; the lock hold time in nanoseconds.
fn section(strategy: Strategy, cache: &Cache, fresh: &mut Fresh, dead: &mut Vec<Record>) -> u64 {
    let held = match (strategy, cache) {
        (Strategy::StdDrop, Cache::Std(m)) => drop_in_place(m.lock().unwrap(), fresh),
        (Strategy::Hand, Cache::Std(m)) => hand_written(m, fresh, dead),
        (Strategy::FreeqDrop, Cache::Freeq(m)) => drop_in_place(m.lock().unwrap(), fresh),
        (Strategy::FreeqDefer, Cache::Freeq(m)) => freeq_defer(m, fresh),
        (Strategy::FreeqDeferred, Cache::Deferred(m)) => freeq_deferred(m, fresh),
        _ => unreachable!(),
    };
    held.as_nanos() as u64
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: (1) `ts` is a valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    #[cfg(not(target_os = "linux"))]
    Duration::ZERO
}

struct Outcome {
    hold: Histogram<u64>,
    ops: u64,
    wall: Duration,
    cpu: Duration,
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Config {
    records: usize,
    strings: usize,
    cache: usize,
}

fn run(strategy: Strategy, threads: usize, slice: Duration, cfg: &Config) -> Outcome {
    let mut rng = Rng::new(7);
    let records: Vec<Record> = (0..cfg.cache)
        .map(|_| Record::new(cfg.strings, &mut rng))
        .collect();
    let cache = match strategy {
        Strategy::StdDrop | Strategy::Hand => Cache::Std(StdMutex::new(records)),
        Strategy::FreeqDrop | Strategy::FreeqDefer => Cache::Freeq(freeq::Mutex::new(records)),
        Strategy::FreeqDeferred => Cache::Deferred(freeq::Mutex::new(
            records.into_iter().map(Deferred::new).collect(),
        )),
    };
    let phase = AtomicU8::new(WARM);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (start, results) = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (cache, phase) = (&cache, &phase);
                let core = cores.get(t % cores.len().max(1)).copied();
                s.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let mut rng = Rng::new(t as u64 + 11);
                    let mut hold = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                    let mut fresh: Fresh = Vec::with_capacity(cfg.records);
                    let mut dead = Vec::with_capacity(cfg.records);
                    let (mut ops, mut cpu0) = (0u64, Duration::ZERO);
                    let mut measuring = false;
                    loop {
                        let p = phase.load(Relaxed);
                        if p == STOP {
                            break;
                        }
                        if p == MEASURE && !measuring {
                            measuring = true;
                            cpu0 = thread_cpu();
                        }
                        for _ in 0..cfg.records {
                            fresh.push((rng.below(cfg.cache), Record::new(cfg.strings, &mut rng)));
                        }
                        let held = section(strategy, cache, &mut fresh, &mut dead);
                        if measuring {
                            hold.saturating_record(held);
                            ops += 1;
                        }
                    }
                    (hold, ops, thread_cpu().saturating_sub(cpu0))
                })
            })
            .collect();
        thread::sleep(slice / 5);
        let start = Instant::now();
        phase.store(MEASURE, Relaxed);
        thread::sleep(slice);
        phase.store(STOP, Relaxed);
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (start, results)
    });
    let wall = start.elapsed();
    let mut hold = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let (mut ops, mut cpu) = (0, Duration::ZERO);
    for (h, o, c) in results {
        hold.add(&h).unwrap();
        ops += o;
        cpu += c;
    }
    Outcome {
        hold,
        ops,
        wall,
        cpu,
    }
}

/// Nanoseconds per `dealloc` of `n` blocks of `layout` through `a`.
fn time_deallocs(a: &dyn Fn(*mut u8), alloc: &dyn Fn() -> *mut u8, n: usize) -> f64 {
    let blocks: Vec<*mut u8> = (0..n).map(|_| alloc()).collect();
    let t = Instant::now();
    for &b in &blocks {
        a(std::hint::black_box(b));
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs both parts and prints their tables; `make` makes the inner
/// allocator (two of them: one called directly, one wrapped).
pub fn main<A: GlobalAlloc + 'static>(allocator: &'static str, make: fn() -> A) {
    let cli = Cli {
        program: "defer_frees",
        about: "Lock hold with DeferFrees as the global allocator: the same drop-under-lock\n\
                code under std::sync::Mutex and under freeq::Mutex, beside freeq::defer,\n\
                freeq::Deferred and the hand-written pattern; then the cost DeferFrees adds\n\
                to a dealloc outside any section.",
        opts: OPTS,
    };
    let args = cli.parse();
    let threads = args.thread_counts("threads", &[1, 2]);
    let seconds = args.seconds("seconds", 6.0);
    let rounds = args.count("rounds", 3);
    let cfg = Config {
        records: args.count("records", 8),
        strings: args.count("strings", 17),
        cache: args.count("cache", 4096),
    };
    let dealloc_rounds = args.count("dealloc-rounds", 301);
    let part = args.text("part").unwrap_or_else(|| "all".into());
    let (hold_part, dealloc_part) = match part.as_str() {
        "all" => (true, true),
        "hold" => (true, false),
        "dealloc" => (false, true),
        _ => args.bad("part", "expected all, hold or dealloc"),
    };
    let slice = Duration::from_secs_f64(seconds / rounds as f64);
    println!(
        "defer_frees, allocator {allocator}: {} records of {} strings replaced per section, \
         {rounds} rounds of {:.1} s per strategy and thread count",
        cfg.records,
        cfg.strings,
        slice.as_secs_f64()
    );
    println!(
        "hold: lock held per section (ns). ops/s: sections per second, all threads. \
         CPU/op: the threads' CPU time per section, frees after the unlock included."
    );
    let threads = if hold_part { threads } else { Vec::new() };
    for &t in &threads {
        let mut outcomes: Vec<Option<Outcome>> = Strategy::ALL.iter().map(|_| None).collect();
        for _ in 0..rounds {
            for (i, &s) in Strategy::ALL.iter().enumerate() {
                let o = run(s, t, slice, &cfg);
                match &mut outcomes[i] {
                    None => outcomes[i] = Some(o),
                    Some(acc) => {
                        acc.hold.add(&o.hold).unwrap();
                        acc.ops += o.ops;
                        acc.wall += o.wall;
                        acc.cpu += o.cpu;
                    }
                }
            }
        }
        let base = outcomes[0].as_ref().unwrap().hold.mean();
        println!("\n{t} thread(s), {allocator}\n");
        println!("| strategy | hold mean | p50 | p99 | mean vs std drop | ops/s | CPU/op (ns) |");
        println!("|---|---|---|---|---|---|---|");
        for (s, o) in Strategy::ALL.iter().zip(&outcomes) {
            let o = o.as_ref().unwrap();
            println!(
                "| {} | {:.0} | {} | {} | {:.1}x shorter | {:.0} | {:.0} |",
                s.name(),
                o.hold.mean(),
                o.hold.value_at_quantile(0.5),
                o.hold.value_at_quantile(0.99),
                base / o.hold.mean(),
                o.ops as f64 / o.wall.as_secs_f64(),
                o.cpu.as_nanos() as f64 / o.ops.max(1) as f64,
            );
        }
    }

    if !dealloc_part {
        return;
    }
    println!("\ndealloc outside a section, {allocator}: DeferFrees<A> vs A called directly");
    println!("(median over {dealloc_rounds} rounds of 1024 frees each, the two in turn)\n");
    println!("| block | A ns/free | DeferFrees<A> ns/free | ratio (median of rounds) |");
    println!("|---|---|---|---|");
    let inner = make();
    let wrapped = DeferFrees::new(make());
    for size in [16usize, 64, 512] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: (2) non-zero size; every block is freed once, by the
        // allocator it came from (`DeferFrees<A>` frees through `A`).
        let alloc = || unsafe { inner.alloc(layout) };
        // SAFETY: (3) as in (2).
        let direct = |p: *mut u8| unsafe { inner.dealloc(p, layout) };
        // SAFETY: (4) as in (2).
        let via = |p: *mut u8| unsafe { wrapped.dealloc(p, layout) };
        let (mut a_ns, mut b_ns, mut ratio) = (vec![], vec![], vec![]);
        for r in 0..dealloc_rounds {
            let (a, b) = if r % 2 == 0 {
                let a = time_deallocs(&direct, &alloc, 1024);
                (a, time_deallocs(&via, &alloc, 1024))
            } else {
                let b = time_deallocs(&via, &alloc, 1024);
                (time_deallocs(&direct, &alloc, 1024), b)
            };
            a_ns.push(a);
            b_ns.push(b);
            ratio.push(b / a);
        }
        println!(
            "| {size} B | {:.2} | {:.2} | {:.3} |",
            median(&mut a_ns),
            median(&mut b_ns),
            median(&mut ratio),
        );
    }
    held_vs_bare(allocator, dealloc_rounds);
}

/// The floor for recording a free: a thread-local array of addresses and
/// sizes, and its length.
struct Bare {
    len: Cell<usize>,
    slots: [Cell<(*mut u8, usize)>; freeq::alloc::RESERVE_SLOTS],
}

thread_local! {
    static BARE: Bare = const {
        Bare {
            len: Cell::new(0),
            slots: [const { Cell::new((std::ptr::null_mut(), 0)) }; freeq::alloc::RESERVE_SLOTS],
        }
    };
}

/// Records a block in [`BARE`]: one thread-local access, a bounds check,
/// a store and the index bumped. Out of line, as the global allocator's
/// `dealloc` is.
#[inline(never)]
fn bare_store(ptr: *mut u8, layout: Layout) {
    BARE.with(|b| {
        let n = b.len.get();
        if let Some(slot) = b.slots.get(n) {
            slot.set((ptr, layout.size()));
            b.len.set(n + 1);
        }
    })
}

/// A `dealloc` through the global allocator, out of line as it is for
/// every caller outside the crate that installs it (here it would be
/// inlined into the loop, and [`bare_store`] is not).
///
/// # Safety
/// `ptr` came from the global allocator with `layout` and is freed once.
#[inline(never)]
unsafe fn held_free(ptr: *mut u8, layout: Layout) {
    // SAFETY: (5) the caller's guarantee.
    unsafe { std::alloc::dealloc(ptr, layout) };
}

/// Frees `blocks` through the global allocator (inside a section: holds
/// them).
#[inline(never)]
fn free_all_held(blocks: &[*mut u8], layout: Layout) {
    for &b in blocks {
        // SAFETY: (5b) each block came from the global allocator with
        // `layout` and is freed once.
        unsafe { held_free(black_box(b), layout) };
    }
}

/// Records `blocks` with [`bare_store`].
#[inline(never)]
fn store_all_bare(blocks: &[*mut u8], layout: Layout) {
    for &b in blocks {
        bare_store(black_box(b), layout);
    }
}

/// Blocks of `layout` from the global allocator, written to.
fn fresh_blocks(n: usize, layout: Layout) -> Vec<*mut u8> {
    (0..n)
        .map(|_| {
            // SAFETY: (6) non-zero size; the caller frees each block once.
            let p = unsafe { std::alloc::alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: (7) `p` is valid for `layout.size()` bytes.
            unsafe { p.write_bytes(1, layout.size()) };
            p
        })
        .collect()
}

/// Nanoseconds per held free: `RESERVE_SLOTS` frees inside a section
/// (the frees themselves run when the section closes, untimed).
fn time_held(layout: Layout) -> f64 {
    let blocks = fresh_blocks(freeq::alloc::RESERVE_SLOTS, layout);
    let s = freeq::section();
    let t = Instant::now();
    free_all_held(&blocks, layout);
    let ns = t.elapsed().as_nanos() as f64;
    assert_eq!(freeq::alloc::held().frees, blocks.len(), "not all held");
    drop(s);
    ns / blocks.len() as f64
}

/// Nanoseconds per bare store of as many blocks (then freed untimed).
fn time_bare(layout: Layout) -> f64 {
    let blocks = fresh_blocks(freeq::alloc::RESERVE_SLOTS, layout);
    let t = Instant::now();
    store_all_bare(&blocks, layout);
    let ns = t.elapsed().as_nanos() as f64;
    BARE.with(|b| b.len.set(0));
    for &p in &blocks {
        // SAFETY: (8) as in (5).
        unsafe { std::alloc::dealloc(p, layout) };
    }
    ns / blocks.len() as f64
}

/// A held free (a `dealloc` inside a section) against a bare thread-local
/// store, in turn, `rounds` times per block size.
fn held_vs_bare(allocator: &str, rounds: usize) {
    println!(
        "\nheld free vs bare thread-local store, {allocator} (median over {rounds} rounds of \
         {} frees, the two in turn)\n",
        freeq::alloc::RESERVE_SLOTS
    );
    println!("| block | bare store ns | held free ns | held / bare (median of rounds) |");
    println!("|---|---|---|---|");
    for size in [16usize, 64, 512] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let (mut bare, mut held, mut ratio) = (vec![], vec![], vec![]);
        for r in 0..rounds {
            let (b, h) = if r % 2 == 0 {
                let b = time_bare(layout);
                (b, time_held(layout))
            } else {
                let h = time_held(layout);
                (time_bare(layout), h)
            };
            bare.push(b);
            held.push(h);
            ratio.push(h / b);
        }
        println!(
            "| {size} B | {:.2} | {:.2} | {:.2}x |",
            median(&mut bare),
            median(&mut held),
            median(&mut ratio),
        );
    }
}
