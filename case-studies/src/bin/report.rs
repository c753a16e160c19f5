//! Reruns the real-crates table: each row (one study command) runs
//! `--runs` times, each run an invocation of the study's own binary with
//! `--json` (so each of its configurations, rounds and sizes runs in fresh
//! processes, as the studies always do), and the figures are given as the
//! median over runs with the min–max range. Writes
//! `case-studies/results/`: `report.md`, `report.json`, one SVG of the
//! waiting threads' latency percentiles per (row, allocator, size), and
//! each run's samples under `raw/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use case_studies::harness::args::size_name;
use case_studies::harness::report::{median, medians};
use case_studies::harness::{Alloc, Job, Sample};
use case_studies::results::{self, Figure, Group, Machine, RowResult, Series};
use serde::Deserialize;

/// One row of the table: a study command, and the glibc tunables it runs
/// under (none: glibc's defaults).
struct Row {
    name: &'static str,
    study: &'static str,
    args: &'static [&'static str],
    tunables: Option<&'static str>,
    about: &'static str,
}

/// glibc never trims the top of a heap (1 GiB threshold).
const NO_TRIM: &str = "glibc.malloc.trim_threshold=1073741824";
/// glibc trims the top of a heap whenever a free reaches it.
const ALWAYS_TRIM: &str = "glibc.malloc.trim_threshold=0:glibc.malloc.top_pad=0";
/// Every thread allocates from glibc's main arena (no arena per thread).
const ONE_ARENA: &str = "glibc.malloc.arena_max=1";

const LRU_CLEAR: &[&str] = &[
    "--alloc",
    "glibc",
    "--capacity",
    "32",
    "--clear-every",
    "32",
    "--sizes",
    "4k,64k",
    "--rounds",
    "5",
];
const BROADCAST_32: &[&str] = &[
    "--alloc", "glibc", "--parts", "32", "--sizes", "4k", "--rounds", "5",
];

static ROWS: &[Row] = &[
    Row {
        name: "broadcast-32x4k",
        study: "broadcast",
        args: BROADCAST_32,
        tunables: None,
        about: "tokio broadcast, lagging receiver: each send drops a message of 32 × 4 KiB under tokio's mutexes (glibc)",
    },
    Row {
        name: "broadcast-32x4k-notrim",
        study: "broadcast",
        args: BROADCAST_32,
        tunables: Some(NO_TRIM),
        about: "the same, glibc never trimming the heap top",
    },
    Row {
        name: "broadcast-32x4k-je-mi",
        study: "broadcast",
        args: &[
            "--alloc",
            "jemalloc,mimalloc",
            "--parts",
            "32",
            "--sizes",
            "4k",
            "--rounds",
            "5",
        ],
        tunables: None,
        about: "the same under jemalloc and mimalloc",
    },
    Row {
        name: "broadcast-16",
        study: "broadcast",
        args: &["--alloc", "glibc", "--sizes", "16", "--rounds", "5"],
        tunables: None,
        about: "tokio broadcast, lagging receiver, one 16 B buffer per message (glibc)",
    },
    Row {
        name: "dashmap-clear",
        study: "dashmap",
        args: &[
            "--mode", "clear", "--alloc", "glibc", "--sizes", "4k,1m", "--rounds", "5",
        ],
        tunables: None,
        about: "dashmap: janitor clear()s, a worker gets and inserts (glibc)",
    },
    Row {
        name: "dashmap-clear-arena1",
        study: "dashmap",
        args: &[
            "--mode", "clear", "--alloc", "glibc", "--sizes", "4k", "--rounds", "5",
        ],
        tunables: Some(ONE_ARENA),
        about: "the same at 4 KiB, every thread in glibc's one arena (janitor and worker share it)",
    },
    Row {
        name: "dashmap-clear-trim64",
        study: "dashmap",
        args: &[
            "--mode", "clear", "--alloc", "glibc", "--sizes", "4k", "--rounds", "5", "--batch",
            "64",
        ],
        tunables: Some(ALWAYS_TRIM),
        about: "the same at 4 KiB, batches of 64 entries (a clear every 256 KiB), glibc trimming the heap top whenever a free reaches it",
    },
    Row {
        name: "lru-clear",
        study: "lru",
        args: LRU_CLEAR,
        tunables: None,
        about: "lru behind a mutex: clear of 32 values every 32 puts (glibc)",
    },
    Row {
        name: "lru-clear-trim",
        study: "lru",
        args: LRU_CLEAR,
        tunables: Some(ALWAYS_TRIM),
        about: "the same, glibc trimming the heap top whenever a free reaches it",
    },
    Row {
        name: "lru-clear-notrim",
        study: "lru",
        args: LRU_CLEAR,
        tunables: Some(NO_TRIM),
        about: "the same, glibc never trimming the heap top",
    },
    Row {
        name: "dashmap-growth",
        study: "dashmap",
        args: &[
            "--mode", "growth", "--alloc", "glibc", "--sizes", "16,4k", "--rounds", "3",
        ],
        tunables: None,
        about: "dashmap: insert-only growth, remove, shrink_to_fit (glibc)",
    },
    Row {
        name: "cached",
        study: "cached",
        args: &["--alloc", "glibc", "--sizes", "4k,64k", "--rounds", "3"],
        tunables: None,
        about: "cached #[cached(max_size)]: an eviction per miss, clear every 256 misses (glibc)",
    },
    Row {
        name: "moka",
        study: "moka",
        args: &["--alloc", "glibc", "--sizes", "1k,256k", "--rounds", "3"],
        tunables: None,
        about: "moka (sync), full cache: inserts evict while another thread gets (glibc)",
    },
    Row {
        name: "control",
        study: "control",
        args: &["--alloc", "glibc", "--sizes", "4k,64k", "--rounds", "3"],
        tunables: None,
        about: "foyer-memory (the control: frees after its unlock by hand) (glibc)",
    },
];

/// The report's options.
struct Options {
    runs: usize,
    rows: Vec<&'static Row>,
    out: PathBuf,
    rounds: Option<u32>,
    ms: Option<u64>,
    /// Only draw the plots again.
    replot: bool,
}

fn help() {
    println!("report\n");
    println!("Reruns the real-crates table: each row runs --runs times, each run an independent");
    println!(
        "invocation of the study's binary (its configurations and rounds in fresh processes),"
    );
    println!("and each figure is given as the median over runs with its min-max range.\n");
    println!(
        "Usage: cargo build --release --manifest-path case-studies/Cargo.toml --bins &&\n       \
         cargo run --release --manifest-path case-studies/Cargo.toml --bin report -- [OPTIONS]\n"
    );
    println!("Rows:");
    for r in ROWS {
        let env = r
            .tunables
            .map(|t| format!("GLIBC_TUNABLES={t} "))
            .unwrap_or_default();
        println!("  {:<24} {}", r.name, r.about);
        println!("  {:<24} {env}{} {}", "", r.study, r.args.join(" "));
    }
    println!("\nOptions:");
    println!("  --runs K         independent runs per row [default: 3]");
    println!("  --rows LIST      rows whose name contains any of these words [default: all]");
    println!("  --out DIR        where to write [default: case-studies/results]");
    println!("  --rounds N       rounds per configuration in every study (replaces the row's)");
    println!("  --ms N           milliseconds per round in every study");
    println!("  --replot         only draw the plots again from DIR/report.json");
    println!("  -h, --help       print this help");
}

fn parse_args() -> Result<Option<Options>, String> {
    use lexopt::prelude::*;
    let mut o = Options {
        runs: 3,
        rows: ROWS.iter().collect(),
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
        rounds: None,
        ms: None,
        replot: false,
    };
    let mut p = lexopt::Parser::from_env();
    let err = |e: lexopt::Error| e.to_string();
    while let Some(arg) = p.next().map_err(err)? {
        match arg {
            Short('h') | Long("help") => {
                help();
                return Ok(None);
            }
            Long("runs") => {
                o.runs = p.value().map_err(err)?.parse().map_err(err)?;
                if o.runs == 0 {
                    return Err("--runs: at least 1".into());
                }
            }
            Long("rows") => {
                let v = p.value().map_err(err)?.string().map_err(err)?;
                let words: Vec<&str> = v.split(',').filter(|w| !w.is_empty()).collect();
                o.rows = ROWS
                    .iter()
                    .filter(|r| words.iter().any(|w| r.name.contains(w)))
                    .collect();
                if o.rows.is_empty() {
                    let names: Vec<&str> = ROWS.iter().map(|r| r.name).collect();
                    return Err(format!(
                        "--rows: no row matches '{v}' (rows: {})",
                        names.join(", ")
                    ));
                }
            }
            Long("out") => o.out = p.value().map_err(err)?.into(),
            Long("replot") => o.replot = true,
            Long("rounds") => {
                let n: u32 = p.value().map_err(err)?.parse().map_err(err)?;
                if n == 0 {
                    return Err("--rounds: at least 1".into());
                }
                o.rounds = Some(n);
            }
            Long("ms") => {
                let n: u64 = p.value().map_err(err)?.parse().map_err(err)?;
                if n == 0 {
                    return Err("--ms: at least 1".into());
                }
                o.ms = Some(n);
            }
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report: {e}\nTry 'report --help'.");
            return ExitCode::from(2);
        }
    };
    if opts.replot {
        return match results::replot(&opts.out) {
            Ok(n) => {
                println!("report: {n} plots drawn again in {}", opts.out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("report: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A row's arguments, with the report's `--rounds`/`--ms` in place of
/// the row's own.
fn row_args(row: &Row, opts: &Options) -> Vec<String> {
    let mut args = Vec::new();
    let mut it = row.args.iter();
    while let Some(&a) = it.next() {
        if (a == "--rounds" && opts.rounds.is_some()) || (a == "--ms" && opts.ms.is_some()) {
            it.next();
            continue;
        }
        args.push(a.to_string());
    }
    if let Some(n) = opts.rounds {
        args.extend(["--rounds".into(), n.to_string()]);
    }
    if let Some(n) = opts.ms {
        args.extend(["--ms".into(), n.to_string()]);
    }
    args
}

/// One child's job and sample, as a study's `--json` writes them.
#[derive(Deserialize)]
struct Record {
    job: Job,
    sample: Sample,
}

/// Runs one study invocation; its samples.
fn run_study(exe: &Path, row: &Row, args: &[String], json: &Path) -> Result<Vec<Record>, String> {
    let mut cmd = Command::new(exe);
    cmd.args(args).arg("--json").arg(json).stdin(Stdio::null());
    if let Some(t) = row.tunables {
        cmd.env("GLIBC_TUNABLES", t);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}):\n{}",
            row.study,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = std::fs::read_to_string(json)
        .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} does not parse: {e}", json.display()))
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn run(opts: &Options) -> Result<(), String> {
    let dir = std::env::current_exe()
        .map_err(|e| format!("cannot find this binary: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("this binary has no directory")?;
    for row in &opts.rows {
        let exe = dir.join(row.study);
        if !exe.is_file() {
            return Err(format!(
                "{} is not built; build every study first:\n  \
                 bash case-studies/scripts/prepare.sh && \
                 cargo build --release --manifest-path case-studies/Cargo.toml --bins",
                exe.display()
            ));
        }
    }
    let raw = opts.out.join("raw");
    std::fs::create_dir_all(&raw).map_err(|e| format!("cannot create {}: {e}", raw.display()))?;
    let before = Machine::load();
    let t0 = Instant::now();
    let total = opts.rows.len() * opts.runs;
    let mut done = 0usize;
    let mut results = Vec::new();
    for (ri, row) in opts.rows.iter().enumerate() {
        let args = row_args(row, opts);
        let mut runs = Vec::new();
        for k in 0..opts.runs {
            let elapsed = t0.elapsed().as_secs_f64();
            let left = if done > 0 {
                format!(
                    ", about {} left",
                    clock(elapsed / done as f64 * (total - done) as f64)
                )
            } else {
                String::new()
            };
            eprintln!(
                "[row {}/{} {}] run {}/{} · {} elapsed{left}",
                ri + 1,
                opts.rows.len(),
                row.name,
                k + 1,
                opts.runs,
                clock(elapsed)
            );
            let json = raw.join(format!("{}-run{}.json", row.name, k + 1));
            runs.push(run_study(&dir.join(row.study), row, &args, &json)?);
            done += 1;
        }
        results.push(summarize(row, &args, &runs));
    }
    let after = Machine::load();
    let machine = Machine::describe(before, after, opts.runs);
    results::write(&opts.out, &machine, &results)?;
    eprintln!(
        "wrote {} ({} rows × {} runs in {})",
        opts.out.display(),
        results.len(),
        opts.runs,
        clock(t0.elapsed().as_secs_f64())
    );
    Ok(())
}

/// Per run, per (allocator, size, configuration): the medians over the
/// run's rounds; then each figure's median and range over runs.
fn summarize(row: &Row, args: &[String], runs: &[Vec<Record>]) -> RowResult {
    // (alloc, size) in first-seen order, configurations in order.
    let mut groups: Vec<(Alloc, usize)> = Vec::new();
    let mut configs: Vec<String> = Vec::new();
    for r in runs.iter().flatten() {
        if !groups.contains(&(r.job.alloc, r.job.size)) {
            groups.push((r.job.alloc, r.job.size));
        }
        if !configs.contains(&r.job.config) {
            configs.push(r.job.config.clone());
        }
    }
    let groups = groups
        .into_iter()
        .map(|(alloc, size)| {
            // per_run[k][c]: run k's named figures for configuration c.
            let per_run: Vec<Vec<RunFigures>> = runs
                .iter()
                .map(|run| {
                    configs
                        .iter()
                        .map(|c| {
                            let samples: Vec<Sample> = run
                                .iter()
                                .filter(|r| {
                                    r.job.alloc == alloc && r.job.size == size && &r.job.config == c
                                })
                                .map(|r| r.sample.clone())
                                .collect();
                            figures_of(&samples)
                        })
                        .collect()
                })
                .collect();
            let series = configs
                .iter()
                .enumerate()
                .map(|(ci, c)| {
                    let mut names: Vec<String> = Vec::new();
                    for run in &per_run {
                        for n in run[ci].0.keys() {
                            if !names.contains(n) {
                                names.push(n.clone());
                            }
                        }
                    }
                    let mut figures = BTreeMap::new();
                    for n in &names {
                        let vals: Vec<f64> = per_run
                            .iter()
                            .map(|run| run[ci].0.get(n).copied().unwrap_or(f64::NAN))
                            .collect();
                        figures.insert(n.clone(), Figure::of(vals));
                    }
                    // Ratios to the first configuration, per run.
                    for (name, of) in [
                        ("wait_p999_x", "wait_p999_us"),
                        ("wait_p9999_x", "wait_p9999_us"),
                        ("wait_ops_x", "wait_ops_per_s"),
                        ("free_ops_x", "free_ops_per_s"),
                    ] {
                        let vals: Vec<f64> = per_run
                            .iter()
                            .map(|run| run[ci].0[of] / run[0].0[of])
                            .collect();
                        figures.insert(name.to_string(), Figure::of(vals));
                    }
                    let curve_len = per_run.iter().map(|r| r[ci].1.len()).min().unwrap_or(0);
                    let curve = (0..curve_len)
                        .map(|q| Figure::of(per_run.iter().map(|r| r[ci].1[q]).collect()))
                        .collect();
                    Series {
                        config: c.clone(),
                        figures,
                        curve,
                    }
                })
                .collect();
            Group {
                alloc: alloc.name().to_string(),
                size: size_name(size),
                series,
            }
        })
        .collect();
    RowResult {
        name: row.name.to_string(),
        about: row.about.to_string(),
        command: format!(
            "{}cargo run --release --manifest-path case-studies/Cargo.toml --bin {} -- {}",
            row.tunables
                .map(|t| format!("GLIBC_TUNABLES={t} "))
                .unwrap_or_default(),
            row.study,
            args.join(" ")
        ),
        groups,
    }
}

/// One run's figures for one configuration, by name, and its latency
/// curve.
type RunFigures = (BTreeMap<String, f64>, Vec<f64>);

/// One run's figures for one configuration: the medians over its rounds
/// (latencies in µs), and its latency curve (median per quantile, µs).
fn figures_of(samples: &[Sample]) -> RunFigures {
    let m = medians(samples);
    let mut f = BTreeMap::new();
    for (name, ns) in [
        "wait_p50_us",
        "wait_p99_us",
        "wait_p999_us",
        "wait_p9999_us",
        "wait_max_us",
    ]
    .iter()
    .zip(m.wait)
    {
        f.insert(name.to_string(), ns / 1000.0);
    }
    f.insert("wait_ops_per_s".into(), m.wait_ops);
    f.insert("free_ops_per_s".into(), m.free_ops);
    f.insert("free_p50_us".into(), m.free[0] / 1000.0);
    for (k, v) in m.extra {
        f.insert(k, v);
    }
    let n = samples
        .iter()
        .map(|s| s.wait_curve.len())
        .min()
        .unwrap_or(0);
    let curve = (0..n)
        .map(|q| median(samples.iter().map(|s| s.wait_curve[q] / 1000.0).collect()))
        .collect();
    (f, curve)
}
