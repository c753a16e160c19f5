//! What `freeq::profile` costs on the shortest section: lock a
//! `freeq::Mutex`, `defer` a small box, unlock (which frees the box).
//!
//! Three functions in one run, on one thread: the profile off, sampling
//! one section in 64, and sampling every section. `benches/ratios.py`
//! prints each against "off". The cost of "off" against a build without
//! the profile at all is measured by running the "off" function of this
//! file against the same code before the profile existed (see
//! `BENCHMARKS.md`).
//!
//! `cargo bench --bench profile`

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn shortest_section(m: &freeq::Mutex<u64>, i: u64) {
    let mut g = m.lock().unwrap();
    *g += 1;
    freeq::defer(Box::new(black_box(i)));
}

fn profile(c: &mut Criterion) {
    let mut group = c.benchmark_group("profile");
    let m = freeq::Mutex::new(0u64);
    for (name, every) in [("off", 0), ("1 in 64", 64), ("every", 1)] {
        freeq::profile::enable(every);
        freeq::profile::reset();
        group.bench_function(name, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                shortest_section(&m, i)
            })
        });
    }
    freeq::profile::disable();
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = profile
}
criterion_main!(benches);
