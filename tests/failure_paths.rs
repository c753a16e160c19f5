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
/// Taken by every test here that pins a reader or waits for the epoch: a
/// reader pinned by one test stops the epoch that another waits on.
fn epoch_alone() -> std::sync::MutexGuard<'static, ()> {
    static EPOCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    EPOCH.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _epoch = epoch_alone();
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
    let _epoch = epoch_alone();
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
    let _epoch = epoch_alone();
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

// ---------------------------------------------------------------------------
// Process exit, executor panics, sections closed after the exit path
// ---------------------------------------------------------------------------

/// Waits (in a child process, where a hang ends at the parent's timeout)
/// until `flag` is set.
#[cfg(not(miri))]
fn wait_for(flag: &AtomicBool) {
    while !flag.load(SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Held by the exiting thread while the process exits.
#[cfg(not(miri))]
static HELD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A value whose drop takes [`HELD`], saying first that it started.
#[cfg(not(miri))]
struct TakesHeld(Arc<AtomicBool>);

#[cfg(not(miri))]
impl Drop for TakesHeld {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
        drop(HELD.lock());
    }
}

#[test]
#[cfg(not(miri))]
#[ignore = "run in a child process by exit_does_not_wait_forever_for_a_stuck_reclaimer"]
fn child_exit_with_a_stuck_reclaimer() {
    if std::env::var_os("FREEQ_CHILD").is_none() {
        return;
    }
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    freeq::set_offload_threshold_ns(0);
    freeq::set_policy(freeq::Policy::Offload);
    let held = HELD.lock().unwrap();
    let started = Arc::new(AtomicBool::new(false));
    {
        let _s = freeq::section();
        freeq::defer(TakesHeld(started.clone()));
    }
    // A reclaimer is now blocked in that drop, on the lock this thread
    // holds while it exits.
    wait_for(&started);
    println!("FREEQ_CHILD_OK");
    let _keep = held;
    std::process::exit(0);
}

#[test]
#[cfg(not(miri))]
fn exit_does_not_wait_forever_for_a_stuck_reclaimer() {
    in_child("child_exit_with_a_stuck_reclaimer");
}

/// The lock held by the thread that exits the process inside a section.
#[cfg(not(miri))]
static SECTION_LOCK: freeq::Mutex<()> = freeq::Mutex::new(());

/// A value that must never be freed while [`SECTION_LOCK`] is held.
#[cfg(not(miri))]
struct NotUnderTheLock;

#[cfg(not(miri))]
impl Drop for NotUnderTheLock {
    fn drop(&mut self) {
        if matches!(
            SECTION_LOCK.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        ) {
            eprintln!("freed while the lock is still held");
            std::process::abort();
        }
    }
}

#[test]
#[cfg(not(miri))]
#[ignore = "run in a child process by process_exit_inside_a_section_frees_nothing_under_the_lock"]
fn child_process_exit_inside_a_section() {
    if std::env::var_os("FREEQ_CHILD").is_none() {
        return;
    }
    let g = SECTION_LOCK.lock().unwrap();
    freeq::defer(NotUnderTheLock);
    assert_eq!(freeq::pending(), 1);
    println!("FREEQ_CHILD_OK");
    let _keep = g;
    std::process::exit(0);
}

#[test]
#[cfg(not(miri))]
fn process_exit_inside_a_section_frees_nothing_under_the_lock() {
    in_child("child_process_exit_inside_a_section");
}

/// A thread that returns with a leaked guard still frees its queue at
/// thread exit (the process is not ending).
#[test]
fn a_leaked_guard_is_still_freed_at_thread_exit() {
    let freed = Arc::new(AtomicBool::new(false));
    let flag = Flag(freed.clone());
    std::thread::spawn(move || {
        let m = freeq::Mutex::new(());
        std::mem::forget(m.lock().unwrap());
        freeq::defer(flag);
        assert_eq!(freeq::pending(), 1);
    })
    .join()
    .unwrap();
    assert!(freed.load(SeqCst));
}

thread_local! {
    /// A section kept in a thread-local, closed when it is destroyed.
    static KEPT: std::cell::RefCell<Option<freeq::Section>> = const { std::cell::RefCell::new(None) };
}

/// A thread keeps a section in a thread-local (registered before freeq's
/// state) and defers into it.
fn section_in_a_thread_local(freed: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        KEPT.with(|k| *k.borrow_mut() = Some(freeq::section()));
        freeq::defer(Flag(freed));
    })
    .join()
    .unwrap();
}

#[test]
fn a_section_kept_in_a_thread_local_closes_at_thread_exit() {
    let freed = Arc::new(AtomicBool::new(false));
    section_in_a_thread_local(freed.clone());
    assert!(freed.load(SeqCst), "freed by the thread's exit");
}

/// Closes the section it points to when its thread exits, after freeq's
/// exit path (a pthread key created after freeq's).
#[cfg(all(unix, not(miri)))]
unsafe extern "C" fn close_late(section: *mut libc::c_void) {
    // SAFETY: (1) the value was set from `Box::into_raw` below, and the
    // destructor runs once.
    drop(unsafe { Box::from_raw(section.cast::<freeq::Section>()) });
}

#[test]
#[cfg(all(unix, not(miri)))]
#[ignore = "run in a child process by closing_a_section_after_the_exit_path_is_harmless"]
fn child_close_a_section_after_the_exit_path() {
    if std::env::var_os("FREEQ_CHILD").is_none() {
        return;
    }
    // freeq's thread-exit key is created first, so its destructor runs
    // before this one's.
    std::thread::spawn(|| freeq::defer(0u8)).join().unwrap();
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: (2) a valid out-pointer and an `extern "C"` destructor.
    assert_eq!(
        unsafe { libc::pthread_key_create(&mut key, Some(close_late)) },
        0
    );
    let freed = Arc::new(AtomicBool::new(false));
    let f = freed.clone();
    std::thread::spawn(move || {
        let section = Box::into_raw(Box::new(freeq::section()));
        // SAFETY: (3) `key` is live; the value is a leaked box.
        assert_eq!(unsafe { libc::pthread_setspecific(key, section.cast()) }, 0);
        freeq::defer(Flag(f));
    })
    .join()
    .unwrap();
    assert!(freed.load(SeqCst), "freed by the thread's exit");
    println!("FREEQ_CHILD_OK");
}

#[test]
#[cfg(all(unix, not(miri)))]
fn closing_a_section_after_the_exit_path_is_harmless() {
    in_child("child_close_a_section_after_the_exit_path");
}

#[test]
#[cfg(not(miri))]
#[ignore = "run in a child process by a_panicking_executor_is_contained"]
fn child_panicking_executor() {
    if std::env::var_os("FREEQ_CHILD").is_none() {
        return;
    }
    freeq::set_offload_threshold_ns(0);
    freeq::set_offload_executor(|_batch| panic!("the executor panics"));
    freeq::set_policy(freeq::Policy::Offload);
    let m = freeq::Mutex::new(());

    // Not unwinding: the executor's panic resumes after the drain, and
    // the batch is freed first.
    let freed = Arc::new(AtomicBool::new(false));
    let r = std::panic::catch_unwind(|| {
        let _g = m.lock().unwrap();
        freeq::defer(Flag(freed.clone()));
    });
    let payload = r.expect_err("the executor's panic resumes");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"the executor panics"));
    assert!(freed.load(SeqCst), "the batch was freed");
    assert_eq!(freeq::pending(), 0);

    // A guard dropped while unwinding: no abort, the first panic wins.
    let freed = Arc::new(AtomicBool::new(false));
    let r = std::panic::catch_unwind(|| {
        let _g = m.lock().unwrap();
        freeq::defer(Flag(freed.clone()));
        panic!("the user panics");
    });
    let payload = r.expect_err("the user's panic");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"the user panics"));
    assert!(freed.load(SeqCst), "the batch was freed");
    assert_eq!(freeq::pending(), 0);

    // defer_heavy goes the same way.
    let freed = Arc::new(AtomicBool::new(false));
    freeq::set_policy(freeq::Policy::Inline);
    let r = std::panic::catch_unwind(|| freeq::defer_heavy(Flag(freed.clone())));
    assert!(r.is_err());
    assert!(freed.load(SeqCst), "the heavy value was freed");
    freeq::clear_offload_executor();
    println!("FREEQ_CHILD_OK");
}

#[test]
#[cfg(not(miri))]
fn a_panicking_executor_is_contained() {
    in_child("child_panicking_executor");
}
