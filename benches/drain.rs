//! The whole cycle, per item: hand values over and free them, in batches
//! of 1, 16, 256 and 4096 values.
//!
//! - `drop`: each value dropped where it is made (no deferral at all);
//! - `Vec push+clear`: the hand-written pattern, pushed into a reused `Vec`,
//!   freed by `clear`;
//! - `freeq defer+drain`: deferred inside a `freeq::section()`, freed when
//!   the section closes.
//!
//! Two kinds of value: `cheap24`, a 24-byte value with a trivial destructor
//! (freeq's own overhead, nothing else), and `string`, a `String` with a
//! small heap buffer (a real free per value).
//!
//! `cargo bench --bench drain`

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// 24 bytes with a destructor the optimiser cannot remove.
struct Cheap24([u64; 3]);

impl Drop for Cheap24 {
    #[inline(always)]
    fn drop(&mut self) {
        black_box(self.0[0]);
    }
}

const SIZES: [usize; 4] = [1, 16, 256, 4096];

fn bench_kind<T: Send + 'static>(c: &mut Criterion, kind: &str, make: impl Fn(usize) -> T + Copy) {
    let mut group = c.benchmark_group(format!("drain/{kind}"));
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(30);
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("drop", n), &n, |b, &n| {
            b.iter(|| {
                for i in 0..n {
                    let value = make(black_box(i));
                    // Keeps the optimiser from eliding the allocation.
                    black_box(&value);
                    drop(value);
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("Vec push+clear", n), &n, |b, &n| {
            let mut dead = Vec::with_capacity(n);
            b.iter(|| {
                for i in 0..n {
                    dead.push(make(black_box(i)));
                }
                dead.clear();
            })
        });
        group.bench_with_input(BenchmarkId::new("freeq defer+drain", n), &n, |b, &n| {
            b.iter(|| {
                let section = freeq::section();
                for i in 0..n {
                    freeq::defer(make(black_box(i)));
                }
                drop(section);
            })
        });
    }
    group.finish();
}

fn drain(c: &mut Criterion) {
    bench_kind(c, "cheap24", |i| Cheap24([i as u64; 3]));
    bench_kind(c, "string", |i| {
        let mut s = String::with_capacity(32);
        s.push(char::from(b'a' + (i % 26) as u8));
        s
    });
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = drain
}
criterion_main!(benches);
