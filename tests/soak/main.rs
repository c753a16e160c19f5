//! The soak: every public path of freeq at once, from several threads
//! sharing locks, for a configurable time, with every value counted.
//!
//! - Explicit deferral (`defer`, `defer_with`, `defer_fn`, `FreeQueue`)
//!   and implicit (`Deferred<T>`, and `DeferFrees` as this binary's
//!   global allocator, so plain drops under a lock hold their frees);
//!   nested sections over several locks, `flush`, panics inside sections
//!   and frees that panic (caught), condvar waits (freeq's and
//!   parking_lot's), `Policy::Offload` and `Inline` switched at random,
//!   `defer_heavy`, `quiesce`, a user executor switched on and off (and
//!   now and then panicking), epoch retirement with pinned readers.
//! - Threads come and go; some exit with a leaked section (a forgotten
//!   `Section` or lock guard) holding queued work. On unix a thread forks
//!   while others hold locks; the child does a little freeq work and
//!   exits, and the parent checks its status (`FREEQ_SOAK_FORK=0`
//!   disables this, as ThreadSanitizer needs).
//! - Every value carries an id; its drop counts itself in a table made up
//!   front. After each cycle (every thread joined, `quiesce`, the epoch
//!   collected) each value made was dropped exactly once; a retired value
//!   is never freed while a reader pinned before its retirement is still
//!   pinned (see `soak/epoch.rs`); memory (live bytes, counted under
//!   `DeferFrees`) is back within a stated bound of the first cycle's, and
//!   of the start.
//!
//! `cargo test` runs it for 2.5 s; `FREEQ_SOAK_SECS` sets the time,
//! `FREEQ_SOAK_THREADS` the workers, `FREEQ_SOAK_SEED` the seed, and
//! `scripts/soak.sh SECONDS [thread|address]` runs it, under a sanitizer
//! if asked. Each run is a child process of its own (this binary again,
//! running the `soak` test alone), so nothing else allocates or uses
//! freeq beside it. `FREEQ_SOAK_INJECT=leak` (one value forgotten) and
//! `=double` (one drop counted twice) show that the soak can fail: the
//! tests below run it both ways and expect it to.
//!
//! Not under Miri, which runs the path-by-path tests: the soak runs child
//! processes for seconds of real time.
#![cfg(not(miri))]

mod actions;
mod alloc;
mod epoch;
mod fork;
mod run;
mod values;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: freeq::alloc::DeferFrees<alloc::Counting> =
    freeq::alloc::DeferFrees::new(alloc::Counting);

const CHILD: &str = "FREEQ_SOAK_CHILD";

/// Runs the soak in a child process with `env` added; returns whether it
/// passed and everything it printed. A child that outlives its time by
/// far is killed and counts as a hang.
fn run_child(env: &[(&str, &str)], echo: bool) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "soak", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let secs: f64 = env
        .iter()
        .find(|(k, _)| *k == "FREEQ_SOAK_SECS")
        .map(|(_, v)| v.to_string())
        .or_else(|| std::env::var("FREEQ_SOAK_SECS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.5);
    let patience = Duration::from_secs_f64(secs * 4.0 + 300.0);
    let mut child = cmd.spawn().expect("start the soak child");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if echo {
                println!("{line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + patience;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = lines.join().unwrap() + &errors.join().unwrap();
    match status {
        Some(s) => (s.success(), text),
        None => (
            false,
            format!("{text}\nsoak: FAIL: hung (killed after {patience:?})"),
        ),
    }
}

/// The soak. In the child (`FREEQ_SOAK_CHILD`) it runs here; otherwise it
/// starts the child and fails if the child does.
#[test]
fn soak() {
    if std::env::var_os(CHILD).is_some() {
        let cfg = run::Config::from_env();
        if let Err(failures) = run::soak(&cfg) {
            panic!("the soak failed:\n{failures}");
        }
        return;
    }
    let (ok, text) = run_child(&[], true);
    assert!(ok, "the soak failed:\n{text}");
    assert!(text.contains("soak: PASS"), "{text}");
}

/// A value forgotten on purpose is reported as leaked.
#[test]
fn soak_catches_a_leaked_value() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let (ok, text) = run_child(
        &[("FREEQ_SOAK_INJECT", "leak"), ("FREEQ_SOAK_SECS", "0.5")],
        false,
    );
    assert!(!ok, "the soak passed with a leaked value:\n{text}");
    assert!(text.contains("1 value(s) leaked"), "{text}");
}

/// A value whose drop is counted twice is reported as dropped twice.
#[test]
fn soak_catches_a_double_drop() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let (ok, text) = run_child(
        &[("FREEQ_SOAK_INJECT", "double"), ("FREEQ_SOAK_SECS", "0.5")],
        false,
    );
    assert!(!ok, "the soak passed with a value dropped twice:\n{text}");
    assert!(text.contains("1 value(s) dropped twice"), "{text}");
}
