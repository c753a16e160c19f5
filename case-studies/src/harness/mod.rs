//! The harness every study shares; see the crate docs.
//!
//! Its parts go one way: [`args`] (a study's declaration and its command
//! line), then [`driver`] (a child process per job), then [`measure`]
//! (the timed window inside a child), then [`report`] (the tables); each
//! uses only those before it. [`main`], here, joins them.

pub mod alloc;
pub mod args;
pub mod driver;
pub mod measure;
pub mod report;
pub mod values;

use std::process::ExitCode;

pub use alloc::{Alloc, active};
pub use args::{Config, Defaults, Flag, Study};
pub use driver::Job;
pub use measure::{
    CURVE_QUANTILES, Counters, Latency, Sample, Tally, cores, pin, run, section_if, untimed,
};
pub use values::{Rng, counting, value, value_parts};

/// The whole of a study's `main`:
/// `fn main() -> ExitCode { harness::main(&STUDY, run) }`, where `run`
/// runs one job in a child process.
pub fn main(study: &Study, run: fn(&Job) -> Sample) -> ExitCode {
    if let Some(job) = driver::child_job() {
        return match job {
            Ok(job) => child(&job, run),
            Err(e) => {
                eprintln!("{}: {e}", study.name);
                ExitCode::from(2)
            }
        };
    }
    let opts = match args::parse_args(study, std::env::args_os().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS, // --help
        Err(e) => {
            eprintln!("{}: {e}\nTry '{} --help'.", study.name, study.name);
            return ExitCode::from(2);
        }
    };
    let report = |alloc, size, configs: &[&Config], samples: &[Vec<Sample>]| {
        report::print_group(study, alloc, size, configs, samples, opts.rounds)
    };
    match driver::drive(study, &opts, cores().len(), report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", study.name);
            ExitCode::FAILURE
        }
    }
}

/// A child process: runs its one job and prints the [`Sample`].
fn child(job: &Job, run: fn(&Job) -> Sample) -> ExitCode {
    // Read the CPU set before anything pins a thread.
    let _ = cores();
    let a = active();
    assert!(
        a.alloc == job.alloc && a.defer_frees == job.defer_frees,
        "the child runs on {a:?}, its job asks for {:?} (defer_frees {})",
        job.alloc,
        job.defer_frees
    );
    driver::print_result(&run(job));
    ExitCode::SUCCESS
}
