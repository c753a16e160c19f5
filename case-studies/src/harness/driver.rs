//! The driver: re-executes this binary once per (allocator, value size,
//! round, configuration) with the [`Job`] in the environment,
//! interleaving the configurations round by round, and hands each
//! (allocator, size) group of results on as it completes. A child reads
//! its job here and prints its result back.
//!
//! The driver knows what a child runs (a [`Job`], built from the
//! command line's options), not what it measures: a result is any type
//! that serializes, passed through as JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::alloc::{ALLOC_ENV, Alloc};
use super::args::{Config, Options, Study};

/// The environment variable that carries a child's [`Job`] as JSON.
pub const JOB_ENV: &str = "CASE_STUDIES_JOB";

/// Marks the child's result line on its standard output.
const RESULT_PREFIX: &str = "CASE-RESULT ";

/// What one child process runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// The configuration's name.
    pub config: String,
    /// The allocator.
    pub alloc: Alloc,
    /// Whether `DeferFrees` wraps it (from the configuration).
    pub defer_frees: bool,
    /// The value size, in bytes.
    pub size: usize,
    /// Milliseconds timed.
    pub ms: u64,
    /// Waiting threads.
    pub waiters: usize,
    /// The round, from 0.
    pub round: u32,
    /// The study-specific options, by name.
    pub flags: BTreeMap<String, String>,
}

impl Job {
    /// A study-specific option, parsed. The driver checked it parses.
    pub fn flag<T: FromStr>(&self, name: &str) -> T {
        let v = self
            .flags
            .get(name)
            .unwrap_or_else(|| panic!("the study declares no option --{name}"));
        v.parse()
            .unwrap_or_else(|_| panic!("--{name} {v}: not a valid value"))
    }

    /// Whether this job runs configuration `name`.
    pub fn is(&self, name: &str) -> bool {
        self.config == name
    }

    /// A cache's capacity in entries, for a study that declares
    /// [`Flag::ENTRIES`](super::args::Flag::ENTRIES): `--entries`, or
    /// 64 MiB of values of `parts` buffers each, between 64 and 4096.
    pub fn entries(&self, parts: usize) -> u64 {
        let entries: u64 = self.flag("entries");
        if entries > 0 {
            return entries;
        }
        ((64u64 << 20) / (self.size * parts) as u64).clamp(64, 4096)
    }
}

/// In a child process, its job (`Err` if it does not parse); `None` in
/// the driver.
pub fn child_job() -> Option<Result<Job, String>> {
    let job = std::env::var_os(JOB_ENV)?;
    Some(serde_json::from_str(&job.to_string_lossy()).map_err(|e| format!("bad {JOB_ENV}: {e}")))
}

/// In a child process, prints its result for the driver to read.
pub fn print_result(result: &impl Serialize) {
    let line = serde_json::to_string(result).expect("a result serializes");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{RESULT_PREFIX}{line}");
}

/// One child's job and result, as `--json` writes them.
#[derive(Serialize)]
struct Record<'a, R> {
    job: &'a Job,
    sample: &'a R,
}

fn run_child<R: DeserializeOwned>(study: &Study, job: &Job) -> Result<R, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let out = Command::new(exe)
        .env(ALLOC_ENV, job.alloc.env_value(job.defer_frees))
        .env(
            JOB_ENV,
            serde_json::to_string(job).expect("a job serializes"),
        )
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run a child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} child ({}, {}, {} bytes) failed: {}",
            study.name,
            job.config,
            job.alloc.name(),
            job.size,
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .ok_or_else(|| format!("a child printed no result: {text}"))?;
    serde_json::from_str(line).map_err(|e| format!("a child's result does not parse: {e}"))
}

/// Runs every job of `opts` in a child of its own, `cpus` being the
/// CPUs the children may use, and calls `group` with each (allocator,
/// size) group's results, one list per configuration, in the order of
/// `configs` it is given; writes `--json` at the end.
pub fn drive<R: Serialize + DeserializeOwned + Clone>(
    study: &Study,
    opts: &Options,
    cpus: usize,
    mut group: impl FnMut(Alloc, usize, &[&Config], &[Vec<R>]),
) -> Result<(), String> {
    let configs: Vec<&Config> = study
        .configs
        .iter()
        .filter(|c| opts.configs.is_empty() || opts.configs.iter().any(|n| n == c.name))
        .collect();
    let n = cpus;
    println!(
        "{}: {} configuration(s), {} round(s) of {} ms each, {} waiting thread(s) + 1 freeing thread, {n} CPU(s){}",
        study.name,
        configs.len(),
        opts.rounds,
        opts.ms,
        opts.waiters,
        if n > opts.waiters {
            ""
        } else {
            " (fewer CPUs than threads: some share a core)"
        },
    );
    if !opts.flags.is_empty() {
        let shown: Vec<String> = opts
            .flags
            .iter()
            .map(|(k, v)| format!("--{k} {v}"))
            .collect();
        println!("options: {}", shown.join(" "));
    }
    let mut records = Vec::new();
    for &alloc in &opts.allocs {
        for &size in &opts.sizes {
            let mut results: Vec<Vec<R>> = vec![Vec::new(); configs.len()];
            for round in 0..opts.rounds {
                // Interleave, and rotate the order each round so that no
                // configuration always runs first.
                for k in 0..configs.len() {
                    let i = (k + round as usize) % configs.len();
                    let c = configs[i];
                    let job = Job {
                        config: c.name.to_string(),
                        alloc,
                        defer_frees: c.defer_frees,
                        size,
                        ms: opts.ms,
                        waiters: opts.waiters,
                        round,
                        flags: opts.flags.clone(),
                    };
                    let r: R = run_child(study, &job)?;
                    records.push((job, r.clone()));
                    results[i].push(r);
                }
            }
            group(alloc, size, &configs, &results);
        }
    }
    if let Some(path) = &opts.json {
        let rows: Vec<Record<R>> = records
            .iter()
            .map(|(job, sample)| Record { job, sample })
            .collect();
        let text = serde_json::to_string_pretty(&rows).expect("records serialize");
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {} samples to {}", rows.len(), path.display());
    }
    Ok(())
}
