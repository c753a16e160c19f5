//! Cost of handing one value over for a later free, per value, for values
//! of 8, 24, 64 and 256 bytes:
//!
//! - `Vec::push`: the hand-written pattern, a push into a reserved `Vec`;
//! - `Vec<Box<dyn Any>>::push`: the same, type-erased by boxing;
//! - `freeq::defer` inside an open `freeq::section()`;
//! - `FreeQueue::push`: freeq's explicit queue, the same storage without
//!   the thread-local lookup;
//! - crossbeam-epoch `Guard::defer` on a pinned guard;
//! - defer-drop: `DeferDrop::new(v)` dropped (a channel send).
//!
//! Values are enqueued in batches of `BATCH`; only the enqueueing is timed
//! (`iter_custom`). Freeing each batch (freeq's drain, the `Vec` clear, the
//! epoch flush) happens between batches, outside the timing: see the
//! `drain` bench for the full cycle.
//!
//! `cargo bench --bench enqueue`

mod common;

use std::any::Any;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_epoch as epoch;
use defer_drop::DeferDrop;

/// Values enqueued between two frees. 200 values of 256 bytes stay within
/// the memory a freeq queue keeps between drains (64 KiB by default), so the
/// queue never regrows; larger batches would time that regrowth too.
const BATCH: u64 = 200;

/// A `W`-word value with a destructor (as anything worth deferring has).
struct Val<const W: usize>([u64; W]);

impl<const W: usize> Val<W> {
    #[inline(always)]
    fn new(i: u64) -> Self {
        Val([i; W])
    }
}

impl<const W: usize> Drop for Val<W> {
    #[inline(always)]
    fn drop(&mut self) {
        black_box(self.0[0]);
    }
}

/// Times `enqueue(state, i)` for `iters` values in batches of `BATCH`;
/// `begin` runs untimed before each batch and `end` untimed after it.
fn batched<S>(
    iters: u64,
    state: &mut S,
    mut begin: impl FnMut(&mut S),
    mut enqueue: impl FnMut(&mut S, u64),
    mut end: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = BATCH.min(iters - done);
        begin(state);
        let start = Instant::now();
        for i in done..done + n {
            enqueue(state, black_box(i));
        }
        total += start.elapsed();
        end(state);
        done += n;
    }
    total
}

fn bench_size<const W: usize>(c: &mut Criterion) {
    let bytes = W * 8;
    let mut group = c.benchmark_group("enqueue");
    group
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(1));

    group.bench_function(BenchmarkId::new("Vec::push", bytes), |b| {
        let mut dead: Vec<Val<W>> = Vec::with_capacity(BATCH as usize);
        b.iter_custom(|iters| {
            batched(
                iters,
                &mut dead,
                |_| (),
                |dead, i| dead.push(Val::new(i)),
                |dead| dead.clear(),
            )
        })
    });

    group.bench_function(BenchmarkId::new("Vec<Box<dyn Any>>::push", bytes), |b| {
        let mut dead: Vec<Box<dyn Any + Send>> = Vec::with_capacity(BATCH as usize);
        b.iter_custom(|iters| {
            batched(
                iters,
                &mut dead,
                |_| (),
                |dead, i| dead.push(Box::new(Val::<W>::new(i))),
                |dead| dead.clear(),
            )
        })
    });

    group.bench_function(BenchmarkId::new("freeq::defer", bytes), |b| {
        b.iter_custom(|iters| {
            batched(
                iters,
                &mut None,
                |section| *section = Some(freeq::section()),
                |_, i| freeq::defer(Val::<W>::new(i)),
                |section| *section = None, // closing the section drains the batch
            )
        })
    });

    group.bench_function(BenchmarkId::new("FreeQueue::push", bytes), |b| {
        let mut queue = freeq::FreeQueue::new();
        b.iter_custom(|iters| {
            batched(
                iters,
                &mut queue,
                |_| (),
                |queue, i| queue.push(Val::<W>::new(i)),
                |queue| queue.drain(),
            )
        })
    });

    group.bench_function(BenchmarkId::new("epoch::Guard::defer", bytes), |b| {
        b.iter_custom(|iters| {
            batched(
                iters,
                &mut None,
                |guard| *guard = Some(epoch::pin()),
                |guard, i| {
                    let v = Val::<W>::new(i);
                    guard.as_ref().unwrap().defer(move || drop(v));
                },
                |guard| {
                    // Unpin, then let the epoch advance and collect the batch.
                    drop(guard.take());
                    for _ in 0..4 {
                        epoch::pin().flush();
                    }
                },
            )
        })
    });

    group.bench_function(BenchmarkId::new("defer-drop", bytes), |b| {
        b.iter_custom(|iters| {
            batched(
                iters,
                &mut (),
                |_| (),
                |_, i| drop(DeferDrop::new(Val::<W>::new(i))),
                |_| (),
            )
        })
    });

    group.finish();
}

/// The worst single call in one section of a million 24-byte values:
/// `freeq::defer` next to `Vec::push` into a `Vec` grown from empty (the
/// hand-written pattern when the count is not known) and into one reserved
/// for all of them (its calls only write to fresh memory: the first write
/// to each page faults, so its worst is the machine's page-fault worst). Printed, not
/// criterion-timed: a maximum is what matters here. Both columns include
/// the same `Instant::now` overhead. Where it is allowed (root, or
/// `CAP_SYS_NICE`), the thread runs at real-time priority meanwhile, so
/// other processes cannot preempt it and a worst case is the call's own;
/// the involuntary context switches of each column are printed too.
fn worst_single() {
    const N: u64 = 1_000_000;
    let time = |f: &mut dyn FnMut(u64)| {
        let mut worst = Duration::ZERO;
        let mut over = 0;
        let switches = involuntary_switches();
        for i in 0..N {
            let start = Instant::now();
            f(black_box(i));
            let took = start.elapsed();
            worst = worst.max(took);
            over += usize::from(took > Duration::from_micros(50));
        }
        (worst, over, involuntary_switches() - switches)
    };
    let realtime = set_realtime(true);
    eprintln!(
        "worst single call: {}",
        if realtime {
            "at real-time priority (SCHED_FIFO)"
        } else {
            "at normal priority (real-time priority not allowed here)"
        }
    );
    for round in 0..3 {
        let mut v: Vec<Val<3>> = Vec::new();
        let grown = time(&mut |i| v.push(Val::new(i)));
        drop(v);
        // Reserved but never touched: each first write to a page faults,
        // and nothing else happens. Its worst is the machine's own.
        let mut v: Vec<Val<3>> = Vec::with_capacity(N as usize);
        let reserved = time(&mut |i| v.push(Val::new(i)));
        drop(v);
        let section = freeq::section();
        let defer = time(&mut |i| freeq::defer(Val::<3>::new(i)));
        drop(section);
        let show = |(worst, over, switches): (Duration, usize, i64)| {
            format!("{worst:.1?} ({over} over 50 us, {switches} preemptions)")
        };
        eprintln!(
            "worst single call, 1M x 24 B in one section, round {round}: \
             Vec::push grown from empty {}, Vec::push reserved {}, freeq::defer {}",
            show(grown),
            show(reserved),
            show(defer)
        );
    }
    if realtime {
        set_realtime(false);
    }
}

/// Switches this thread to `SCHED_FIFO` (or back to normal); whether it
/// took.
fn set_realtime(on: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let (policy, priority) = if on {
            (libc::SCHED_FIFO, 10)
        } else {
            (libc::SCHED_OTHER, 0)
        };
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: `param` is a valid `sched_param`; pid 0 is this thread.
        unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = on;
        false
    }
}

/// This thread's involuntary context switches so far.
fn involuntary_switches() -> i64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an all-zero `rusage` is valid; `getrusage` only writes it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable `rusage`.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        usage.ru_nivcsw
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// `freeq::defer` against `Vec::push`, timed in alternation: one batch of
/// each in turn, many rounds, medians compared. Criterion times each
/// function for seconds on end, so on a shared machine the two land in
/// different weather; interleaving batches puts them in the same.
fn paired() {
    const ROUNDS: usize = 4_000;
    const N: u64 = 1_000;
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn pair<const W: usize>() -> (f64, f64) {
        let mut vec_ns = Vec::with_capacity(ROUNDS);
        let mut defer_ns = Vec::with_capacity(ROUNDS);
        let mut dead: Vec<Val<W>> = Vec::with_capacity(N as usize);
        for round in 0..ROUNDS as u64 {
            let base = round * N;
            let start = Instant::now();
            for i in base..base + N {
                dead.push(Val::new(black_box(i)));
            }
            vec_ns.push(start.elapsed().as_nanos() as f64 / N as f64);
            dead.clear();
            let section = freeq::section();
            let start = Instant::now();
            for i in base..base + N {
                freeq::defer(Val::<W>::new(black_box(i)));
            }
            defer_ns.push(start.elapsed().as_nanos() as f64 / N as f64);
            drop(section);
        }
        (median(vec_ns), median(defer_ns))
    }
    for (bytes, (vec, defer)) in [(8, pair::<1>()), (24, pair::<3>())] {
        eprintln!(
            "paired, {bytes} B: Vec::push {vec:.2} ns, freeq::defer {defer:.2} ns, \
             ratio {:.2}x (medians of {ROUNDS} alternating batches of {N})",
            defer / vec
        );
    }
}

fn enqueue(c: &mut Criterion) {
    paired();
    if std::env::var_os("FREEQ_WORST").is_some() {
        worst_single();
    }
    bench_size::<1>(c);
    bench_size::<3>(c);
    bench_size::<8>(c);
    bench_size::<32>(c);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = enqueue
}
criterion_main!(benches);
