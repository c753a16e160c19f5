//! The driver's tables: medians over rounds, ratios against the first
//! configuration. The last module of the harness: it reads what the
//! others made.

use super::alloc::Alloc;
use super::args::{Config, Study, size_name};
use super::measure::Sample;

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Medians of one configuration's samples.
#[derive(Clone, Debug)]
pub struct Medians {
    /// Waiting p50, p99, p99.9, p99.99, max (ns).
    pub wait: [f64; 5],
    /// Waiting ops/s.
    pub wait_ops: f64,
    /// Freeing thread: ops/s.
    pub free_ops: f64,
    /// Freeing thread: p50, p99.9 (ns).
    pub free: [f64; 2],
    /// Every extra figure, by name.
    pub extra: Vec<(String, f64)>,
}

/// Takes the medians of each figure over rounds.
pub fn medians(s: &[Sample]) -> Medians {
    let m = |f: &dyn Fn(&Sample) -> f64| median(s.iter().map(f).collect());
    let mut extra = Vec::new();
    if let Some(first) = s.first() {
        for k in first.extra.keys() {
            extra.push((
                k.clone(),
                m(&|x| x.extra.get(k).copied().unwrap_or(f64::NAN)),
            ));
        }
    }
    Medians {
        wait: [
            m(&|x| x.wait.p50),
            m(&|x| x.wait.p99),
            m(&|x| x.wait.p999),
            m(&|x| x.wait.p9999),
            m(&|x| x.wait.max),
        ],
        wait_ops: m(&|x| x.wait_ops_per_s),
        free_ops: m(&|x| x.free_ops_per_s),
        free: [m(&|x| x.free.p50), m(&|x| x.free.p999)],
        extra,
    }
}

fn us(ns: f64) -> String {
    let u = ns / 1000.0;
    if u >= 100.0 {
        format!("{u:.0}")
    } else if u >= 10.0 {
        format!("{u:.1}")
    } else {
        format!("{u:.2}")
    }
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Prints one (allocator, size) group.
pub fn print_group(
    study: &Study,
    alloc: Alloc,
    size: usize,
    configs: &[&Config],
    samples: &[Vec<Sample>],
    rounds: u32,
) {
    println!(
        "\n== {} · {} · values of {} · medians of {rounds} round(s) · latencies in µs ==",
        study.name,
        alloc.name(),
        size_name(size)
    );
    if samples.iter().flatten().any(|s| !s.pinned_apart) {
        println!("   (note: some threads shared a core)");
    }
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9} | {:>8} {:>7} | {:>8} {:>7} {:>9} {:>9} | {:>7} {:>7} {:>7}",
        "config",
        "wait p50",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "wait/s",
        "x",
        "free/s",
        "x",
        "free p50",
        "p99.9",
        "p99.9 x",
        "p99.99x",
        "max x"
    );
    let med: Vec<Medians> = samples.iter().map(|s| medians(s)).collect();
    let base = &med[0];
    for (c, m) in configs.iter().zip(&med) {
        println!(
            "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9} | {:>8} {:>7.3} | {:>8} {:>7.3} {:>9} {:>9} | {:>7.3} {:>7.3} {:>7.3}",
            c.name,
            us(m.wait[0]),
            us(m.wait[1]),
            us(m.wait[2]),
            us(m.wait[3]),
            us(m.wait[4]),
            rate(m.wait_ops),
            m.wait_ops / base.wait_ops,
            rate(m.free_ops),
            m.free_ops / base.free_ops,
            us(m.free[0]),
            us(m.free[1]),
            m.wait[2] / base.wait[2],
            m.wait[3] / base.wait[3],
            m.wait[4] / base.wait[4],
        );
    }
    if med.iter().any(|m| !m.extra.is_empty()) {
        for (c, m) in configs.iter().zip(&med) {
            let parts: Vec<String> = m.extra.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
            println!("  {:<14} {}", c.name, parts.join("  "));
        }
    }
}
