//! The driver: parses the command line, re-executes this binary once per
//! (allocator, value size, round, configuration) with the job in the
//! environment, interleaving the configurations round by round, and
//! prints the medians side by side. In a child, runs the one job and
//! prints its [`Sample`] as JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::alloc::{ALLOC_ENV, Alloc, active};
use super::args::{Options, parse_args};
use super::measure::{Sample, cores};
use super::report::print_group;

/// The environment variable that carries a child's [`Job`] as JSON.
pub const JOB_ENV: &str = "CASE_STUDIES_JOB";

/// Marks the child's result line on its standard output.
const RESULT_PREFIX: &str = "CASE-RESULT ";

/// One configuration of a study: the crate as published, or with freeq.
#[derive(Debug)]
pub struct Config {
    /// Short name, used on the command line (`--configs`) and in tables.
    pub name: &'static str,
    /// Whether the process runs with `freeq::alloc::DeferFrees` around
    /// its allocator.
    pub defer_frees: bool,
    /// One line for `--help`.
    pub about: &'static str,
}

/// A study-specific option: `--NAME VALUE`.
#[derive(Debug)]
pub struct Flag {
    /// The option's name, without dashes.
    pub name: &'static str,
    /// Its default value.
    pub default: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
}

/// A case study: what `--help` says, its configurations (the first is
/// the baseline every ratio is taken against), its own options, and the
/// function a child runs.
#[derive(Debug)]
pub struct Study {
    /// The binary's name.
    pub name: &'static str,
    /// What it measures, for `--help`.
    pub about: &'static str,
    /// The configurations; the first is the baseline.
    pub configs: &'static [Config],
    /// Study-specific options.
    pub flags: &'static [Flag],
    /// Value sizes run by default, in bytes.
    pub default_sizes: &'static [usize],
    /// Waiting threads by default.
    pub default_waiters: usize,
    /// Milliseconds timed per round by default.
    pub default_ms: u64,
    /// Rounds by default.
    pub default_rounds: u32,
    /// Runs one job in a child process.
    pub run: fn(&Job) -> Sample,
}

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
}

/// The whole of a study's `main`: `fn main() -> ExitCode { harness::main(&STUDY) }`.
pub fn main(study: &Study) -> ExitCode {
    if let Some(job) = std::env::var_os(JOB_ENV) {
        return child(study, &job.to_string_lossy());
    }
    let opts = match parse_args(study, std::env::args_os().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS, // --help
        Err(e) => {
            eprintln!("{}: {e}\nTry '{} --help'.", study.name, study.name);
            return ExitCode::from(2);
        }
    };
    match drive(study, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", study.name);
            ExitCode::FAILURE
        }
    }
}

fn child(study: &Study, job: &str) -> ExitCode {
    let job: Job = match serde_json::from_str(job) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("{}: bad {JOB_ENV}: {e}", study.name);
            return ExitCode::from(2);
        }
    };
    // Read the CPU set before anything pins a thread.
    let _ = cores();
    let a = active();
    assert!(
        a.alloc == job.alloc && a.defer_frees == job.defer_frees,
        "the child runs on {a:?}, its job asks for {:?} (defer_frees {})",
        job.alloc,
        job.defer_frees
    );
    let sample = (study.run)(&job);
    let line = serde_json::to_string(&sample).expect("a sample serializes");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{RESULT_PREFIX}{line}");
    ExitCode::SUCCESS
}

/// One child's job and result, as `--json` writes them.
#[derive(Serialize)]
struct Record<'a> {
    job: &'a Job,
    sample: &'a Sample,
}

fn run_child(study: &Study, job: &Job) -> Result<Sample, String> {
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

fn drive(study: &Study, opts: &Options) -> Result<(), String> {
    let configs: Vec<&Config> = study
        .configs
        .iter()
        .filter(|c| opts.configs.is_empty() || opts.configs.iter().any(|n| n == c.name))
        .collect();
    let n = cores().len();
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
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
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
                    let s = run_child(study, &job)?;
                    records.push((job, s.clone()));
                    samples[i].push(s);
                }
            }
            print_group(study, alloc, size, &configs, &samples, opts.rounds);
        }
    }
    if let Some(path) = &opts.json {
        let rows: Vec<Record> = records
            .iter()
            .map(|(job, sample)| Record { job, sample })
            .collect();
        let text = serde_json::to_string_pretty(&rows).expect("records serialize");
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {} samples to {}", rows.len(), path.display());
    }
    Ok(())
}
