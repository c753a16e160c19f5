//! The `report` binary's results: figures as the median over runs with
//! their min–max range, the machine they were taken on, and the files
//! written from them (`report.json`, `report.md`, one SVG per group).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Deserializer, Serialize};

use crate::harness::CURVE_QUANTILES;
use crate::harness::report::median;

mod plot;

/// One figure over runs. (A figure no run had is NaN, which JSON writes
/// as `null` and reads back as NaN.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// The median over runs.
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    /// The smallest run's.
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    /// The largest run's.
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
    /// Each run's, in order.
    #[serde(deserialize_with = "nans_if_null")]
    pub runs: Vec<f64>,
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nans_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<Option<f64>>::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

impl Figure {
    /// The figure of these runs' values (NaN where a run had none).
    pub fn of(runs: Vec<f64>) -> Figure {
        let ok: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
        let min = ok.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ok.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Figure {
            median: median(ok),
            min,
            max,
            runs,
        }
    }

    /// `1.41 (1.20–1.63)`, or the one value when every run agrees to
    /// the digits shown.
    fn show(&self, f: fn(f64) -> String) -> String {
        let (m, lo, hi) = (f(self.median), f(self.min), f(self.max));
        if lo == hi {
            m
        } else {
            format!("{m} ({lo}–{hi})")
        }
    }
}

/// One configuration of one (row, allocator, size) group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    /// The study's configuration name.
    pub config: String,
    /// Each named figure (latencies in µs; ratios to the group's first
    /// configuration end in `_x`).
    pub figures: BTreeMap<String, Figure>,
    /// The waiting latency (µs) at each of `quantiles` (see
    /// [`Results`]).
    pub curve: Vec<Figure>,
}

/// One (allocator, value size) group of a row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    /// The allocator.
    pub alloc: String,
    /// The value size, as `4KiB`.
    pub size: String,
    /// One per configuration; the first is the baseline.
    pub series: Vec<Series>,
}

/// One row: a study command, run `runs` times.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowResult {
    /// The row's name (`--rows`).
    pub name: String,
    /// What it runs.
    pub about: String,
    /// The command each run was.
    pub command: String,
    /// Its groups.
    pub groups: Vec<Group>,
}

/// The machine's load at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Load {
    /// UTC, from `date`.
    pub at: String,
    /// `/proc/loadavg`: the 1, 5 and 15-minute load averages.
    pub loadavg: String,
}

/// The machine the figures were taken on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// CPUs online.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// glibc's version.
    pub glibc: String,
    /// The jemalloc and mimalloc builds (crate versions, from Cargo.lock).
    pub jemalloc: String,
    /// See `jemalloc`.
    pub mimalloc: String,
    /// The commit the studies were built from (`+dirty`: with changes).
    pub commit: String,
    /// `GLIBC_TUNABLES` as the report found it (rows may set their own).
    pub glibc_tunables: String,
    /// Independent runs per row.
    pub runs: usize,
    /// Before the first run.
    pub before: Load,
    /// After the last.
    pub after: Load,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A package's version in this package's Cargo.lock.
fn locked(name: &str) -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .unwrap_or_default();
    let key = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == key
            && let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = "))
        {
            return format!("{name} {}", v.trim_matches('"'));
        }
    }
    format!("{name} unknown")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_version() -> String {
    // SAFETY: returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_version() -> String {
    "none".into()
}

impl Machine {
    /// The load now.
    pub fn load() -> Load {
        Load {
            at: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            loadavg: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// This machine, with the loads before and after the runs.
    pub fn describe(before: Load, after: Load, runs: usize) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        // The report's own files (written by this run) do not count.
        let dirty = !sh(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top,exclude)case-studies/results",
            ],
        )
        .is_empty();
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease"),
            glibc: glibc_version(),
            jemalloc: locked("tikv-jemalloc-sys"),
            mimalloc: locked("libmimalloc-sys"),
            commit: format!(
                "{}{}",
                sh("git", &["rev-parse", "--short", "HEAD"]),
                if dirty { "+dirty" } else { "" }
            ),
            glibc_tunables: std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
            runs,
            before,
            after,
        }
    }
}

/// What `report.json` holds.
#[derive(Serialize)]
struct Results<'a> {
    machine: &'a Machine,
    /// The quantiles of every `curve`.
    quantiles: &'a [f64],
    rows: &'a [RowResult],
}

fn us(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn count(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// The file name of a group's plot.
pub fn plot_name(row: &RowResult, g: &Group) -> String {
    format!("{}-{}-{}.svg", row.name, g.alloc, g.size)
}

/// Draws the plots of the `report.json` in `dir` again (after a change to
/// the plots, without running anything); returns how many it wrote.
pub fn replot(dir: &Path) -> Result<usize, String> {
    #[derive(Deserialize)]
    struct Saved {
        rows: Vec<RowResult>,
    }
    let p = dir.join("report.json");
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let saved: Saved = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut n = 0;
    for row in &saved.rows {
        for g in &row.groups {
            let out = dir.join(plot_name(row, g));
            std::fs::write(&out, plot::svg(row, g)?)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Writes `report.json`, `report.md` and the plots into `dir`.
pub fn write(dir: &Path, machine: &Machine, rows: &[RowResult]) -> Result<(), String> {
    let put = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    let json = serde_json::to_string_pretty(&Results {
        machine,
        quantiles: &CURVE_QUANTILES,
        rows,
    })
    .expect("results serialize");
    put("report.json", &json)?;
    for row in rows {
        for g in &row.groups {
            put(&plot_name(row, g), &plot::svg(row, g)?)?;
        }
    }
    put("report.md", &markdown(machine, rows))
}

fn markdown(m: &Machine, rows: &[RowResult]) -> String {
    let mut s = String::new();
    s.push_str("# Real crates: the report\n\n");
    s.push_str(&format!(
        "Made by `cargo run --release --manifest-path case-studies/Cargo.toml --bin report`. \
         Each row ran {} times, each run an invocation of the study (its configurations and \
         rounds each in a fresh process); a figure is the median over runs of each run's median \
         over rounds, with the min–max over runs in brackets. Latencies are the waiting threads' \
         (µs); `x` is a ratio to the first configuration in the same run. The counts are per \
         timed window, medians over rounds: `sleeps` are voluntary context switches (a waiting \
         thread parked on the lock), `faults` minor page faults (pages touched first, as after \
         glibc trims a heap and the memory is used again).\n\n",
        m.runs
    ));
    s.push_str(&format!(
        "Machine: {} × {}, Linux {}, glibc {}, {}, {}; commit `{}`{}.  \n\
         Load average (1, 5, 15 min): {} at {}; {} at {}.\n",
        m.cpus,
        m.cpu,
        m.kernel,
        m.glibc,
        m.jemalloc,
        m.mimalloc,
        m.commit,
        if m.glibc_tunables.is_empty() {
            String::new()
        } else {
            format!("; GLIBC_TUNABLES={}", m.glibc_tunables)
        },
        m.before.loadavg,
        m.before.at,
        m.after.loadavg,
        m.after.at
    ));
    for row in rows {
        s.push_str(&format!(
            "\n## {}\n\n{}\n\n`{}`\n",
            row.name, row.about, row.command
        ));
        for g in &row.groups {
            s.push_str(&format!(
                "\n**{} · {}** ([plot]({}))\n\n",
                g.alloc,
                g.size,
                plot_name(row, g)
            ));
            s.push_str(
                "| config | wait p99.9 | p99.99 | p99.9 x | p99.99 x | waiting ops x | freeing ops x \
                 | wait sleeps | free faults |\n\
                 | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            );
            for c in &g.series {
                let f = |n: &str, show: fn(f64) -> String| {
                    c.figures.get(n).map_or("–".into(), |x| x.show(show))
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    c.config,
                    f("wait_p999_us", us),
                    f("wait_p9999_us", us),
                    f("wait_p999_x", ratio),
                    f("wait_p9999_x", ratio),
                    f("wait_ops_x", ratio),
                    f("free_ops_x", ratio),
                    f("wait_sleeps", count),
                    f("free_faults", count),
                ));
            }
        }
    }
    s
}
