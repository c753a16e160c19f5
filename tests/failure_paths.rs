//! Failure paths: thread exit, panics around drains, and the epoch.
//!
//! - `retire` during thread exit (from a free run by the exit path, or from
//!   a thread-local destructor that runs after freeq's) still waits for
//!   pinned readers: it never frees at once.
//! - Frees that defer more once the thread's freeq state is gone run in
//!   constant stack, and a panic among them does not abort the process.
//! - A retired value whose destructor panics does not make an unrelated
//!   `epoch::pin()`/`flush()` panic, and the thread keeps draining.
//!
//! Scenarios that would crash the process if they regressed run in a child
//! process (this test binary, re-run on one ignored test), so a crash fails
//! one test instead of the whole run, and a hang ends at a timeout.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use freeq::epoch;

/// Sets its flag when dropped.
struct Flag(Arc<AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Retires its value when dropped.
struct RetireOnDrop(Option<Flag>);

impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            freeq::retire(flag);
        }
    }
}

/// Flushes the epoch until `freed` is set; each pass pins, so garbage
/// ages. Returns whether it was freed.
fn collect_until(freed: &AtomicBool) -> bool {
    for _ in 0..if cfg!(miri) { 1_000 } else { 1_000_000 } {
        if freed.load(SeqCst) {
            return true;
        }
        epoch::pin().flush();
    }
    freed.load(SeqCst)
}

#[test]
#[cfg_attr(miri, ignore = "crossbeam-epoch: run in the Tree Borrows pass")]
fn retire_from_the_exit_drain_waits_for_readers() {
    let freed = Arc::new(AtomicBool::new(false));
    let reader = epoch::pin();
    let flag = Flag(freed.clone());
    std::thread::spawn(move || {
        // A leaked section: the value is freed by the thread's exit path,
        // after its freeq state is gone, and retires as it goes.
        std::mem::forget(freeq::section());
        freeq::defer(RetireOnDrop(Some(flag)));
    })
    .join()
    .unwrap();
    for _ in 0..100 {
        reader.flush();
    }
    assert!(
        !freed.load(SeqCst),
        "freed while a reader pinned before the retire is still pinned"
    );
    drop(reader);
    assert!(collect_until(&freed), "freed once the reader left");
}

thread_local! {
    /// Dropped at thread exit; what it holds is dropped then.
    static LATE: Cell<Option<RetireOnDrop>> = const { Cell::new(None) };
}

#[test]
#[cfg_attr(miri, ignore = "crossbeam-epoch: run in the Tree Borrows pass")]
fn retire_from_a_late_thread_local_destructor_waits_for_readers() {
    let freed = Arc::new(AtomicBool::new(false));
    let reader = epoch::pin();
    let flag = Flag(freed.clone());
    std::thread::spawn(move || {
        // Registered before freeq's state, so destroyed after it.
        LATE.with(|l| l.set(Some(RetireOnDrop(Some(flag)))));
        let _s = freeq::section();
        freeq::defer(1u8);
    })
    .join()
    .unwrap();
    for _ in 0..100 {
        reader.flush();
    }
    assert!(!freed.load(SeqCst), "freed while a reader is still pinned");
    drop(reader);
    assert!(collect_until(&freed), "freed once the reader left");
}

/// Counts links freed.
static LINKS: AtomicUsize = AtomicUsize::new(0);

/// Each link, when freed, defers the next one; link `boom` then panics.
struct Link {
    left: usize,
    boom: usize,
}

impl Drop for Link {
    fn drop(&mut self) {
        LINKS.fetch_add(1, SeqCst);
        if self.left > 0 {
            freeq::defer(Link {
                left: self.left - 1,
                boom: self.boom,
            });
        }
        if self.left == self.boom {
            panic!("link {} panics", self.left);
        }
    }
}

thread_local! {
    /// Starts a chain when dropped at thread exit.
    static CHAIN: Cell<Option<Link>> = const { Cell::new(None) };
}

const CHAIN_LINKS: usize = if cfg!(miri) { 300 } else { 200_000 };

/// The chain starts in a thread-local destructor that runs after freeq's
/// state is gone, on a thread with a small stack.
fn chain_after_exit() {
    LINKS.store(0, SeqCst);
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            CHAIN.with(|c| {
                c.set(Some(Link {
                    left: CHAIN_LINKS - 1,
                    boom: CHAIN_LINKS / 2,
                }))
            });
            freeq::defer(0u8); // freeq's state: registered after `CHAIN`
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(LINKS.load(SeqCst), CHAIN_LINKS);
}

#[test]
#[ignore = "run in a child process by a_chain_started_after_thread_exit_runs_in_constant_stack"]
fn child_chain_after_exit() {
    if std::env::var_os("FREEQ_CHILD").is_some() {
        chain_after_exit();
        println!("FREEQ_CHILD_OK");
    }
}

#[test]
#[cfg(miri)]
fn chain_after_exit_in_process() {
    chain_after_exit();
}

/// Runs `test` (an ignored test of this binary) in a child process and
/// fails if it crashes, fails, or takes more than two minutes.
#[cfg(not(miri))]
fn in_child(test: &str) {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FREEQ_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{test}: hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success() && stdout.contains("FREEQ_CHILD_OK"),
        "{test}: {status}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg(not(miri))]
fn a_chain_started_after_thread_exit_runs_in_constant_stack() {
    in_child("child_chain_after_exit");
}

/// Panics when dropped, and says so first.
struct Bomb(Arc<AtomicBool>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
        panic!("a retired value panics");
    }
}

#[test]
#[cfg_attr(miri, ignore = "crossbeam-epoch: run in the Tree Borrows pass")]
fn a_retired_value_that_panics_does_not_escape_from_pin() {
    let dropped = Arc::new(AtomicBool::new(false));
    let handed = std::panic::catch_unwind(|| {
        let _s = freeq::section();
        freeq::retire(Bomb(dropped.clone()));
    });
    assert!(handed.is_ok() || dropped.load(SeqCst));
    let mut passes = 0;
    while !dropped.load(SeqCst) && passes < if cfg!(miri) { 1_000 } else { 1_000_000 } {
        let flushed = std::panic::catch_unwind(|| epoch::pin().flush());
        assert!(
            flushed.is_ok(),
            "the panic escaped from epoch::pin().flush()"
        );
        passes += 1;
    }
    assert!(dropped.load(SeqCst), "the retired value was freed");
    // The thread still drains: no bit left set.
    let freed = Arc::new(AtomicBool::new(false));
    {
        let _s = freeq::section();
        freeq::defer(Flag(freed.clone()));
    }
    assert!(freed.load(SeqCst));
    assert_eq!(freeq::pending(), 0);
    freed.store(false, SeqCst);
    freeq::defer(Flag(freed.clone()));
    assert!(freed.load(SeqCst), "outside a section, freed at once");
}
