//! Contended throughput of the cache workload: N threads, each pinned to a
//! core, share one cache behind one lock and run a fixed number of critical
//! sections each (building the new records outside the lock, as a real
//! writer would). The time reported is the wall time until every thread is
//! done and, for offload, until the reclaimers have freed everything.
//! Every iteration spawns its threads afresh, so each thread's first
//! critical sections (a fresh thread's setup) are part of the figure; for
//! percentiles of that churn, see `lock_hold --fresh-threads`.
//!
//! Threads: 1 and 2 by default; `FREEQ_BENCH_THREADS=4,8,16` on bigger
//! machines.
//!
//! `cargo bench --bench contention`

mod common;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use common::{Cache, RECORDS, Rng, STRINGS, Strategy, critical_section, refill, thread_counts};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

/// Critical sections per thread per iteration.
const OPS: u64 = 500;

const STRATEGIES: [Strategy; 5] = [
    Strategy::DropUnderLock,
    Strategy::HandWritten,
    Strategy::FreeqStd,
    Strategy::FreeqParkingLot,
    Strategy::FreeqOffload,
];

/// Runs `OPS` critical sections on each of `threads` pinned threads and
/// returns the wall time from the common start to the last free.
fn run(strategy: Strategy, cache: &Cache, threads: usize) -> Duration {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let start_line = Barrier::new(threads + 1);
    let start = thread::scope(|s| {
        for t in 0..threads {
            let core = cores.get(t % cores.len().max(1)).copied();
            let start_line = &start_line;
            s.spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                strategy.enter_thread();
                let mut rng = Rng::new(t as u64 + 1);
                let mut fresh = Vec::with_capacity(RECORDS);
                let mut dead = Vec::with_capacity(RECORDS);
                start_line.wait();
                for _ in 0..OPS {
                    refill(&mut fresh, &mut rng);
                    critical_section(strategy, cache, &mut fresh, &mut dead);
                }
            });
        }
        start_line.wait();
        Instant::now()
    });
    strategy.settle();
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("contention/cache_{RECORDS}x{STRINGS}"));
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for threads in thread_counts() {
        group.throughput(Throughput::Elements(OPS * threads as u64));
        for strategy in STRATEGIES {
            let cache = Cache::new(strategy);
            group.bench_with_input(
                BenchmarkId::new(strategy.name(), format!("{threads}t")),
                &threads,
                |b, &threads| {
                    b.iter_custom(|iters| (0..iters).map(|_| run(strategy, &cache, threads)).sum())
                },
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = contention
}
criterion_main!(benches);
