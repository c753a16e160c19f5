//! Lock hold time of the cache workload, one thread: how long each critical
//! section keeps the lock, depending on how the replaced records are freed.
//!
//! Only the locked part is timed (`iter_custom`): building the new records
//! and freeing after the unlock are not. `timer-floor` is an empty critical
//! section: the cost of the two clock reads every figure includes.
//!
//! `cargo bench --bench hold_time`

mod common;

use std::hint::black_box;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use common::{Cache, RECORDS, Rng, STRINGS, Strategy, critical_section, refill};
use criterion::{Criterion, criterion_group, criterion_main};

fn hold_time(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("hold_time/cache_{RECORDS}x{STRINGS}"));
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);

    group.bench_function("timer-floor", |b| {
        let lock = StdMutex::new(0u64);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let g = lock.lock().unwrap();
                let start = Instant::now();
                black_box(&*g);
                total += start.elapsed();
                drop(g);
            }
            total
        })
    });

    for strategy in Strategy::ALL {
        let cache = Cache::new(strategy);
        let mut rng = Rng::new(1);
        let mut fresh = Vec::with_capacity(RECORDS);
        let mut dead = Vec::with_capacity(RECORDS);
        strategy.enter_thread();
        group.bench_function(strategy.name(), |b| {
            b.iter_custom(|iters| {
                let mut held = Duration::ZERO;
                for _ in 0..iters {
                    refill(&mut fresh, &mut rng);
                    held += critical_section(strategy, &cache, &mut fresh, &mut dead);
                }
                strategy.settle();
                held
            })
        });
        freeq::set_policy(freeq::Policy::Inline);
        drop(cache);
        strategy.settle();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = hold_time
}
criterion_main!(benches);
