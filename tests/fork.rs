//! `fork()` in a process that used `Policy::Offload`: the child has none of
//! its parent's reclaimer threads, yet it defers, drains and quiesces
//! without piling hand-offs up or hanging.
//!
//! The scenario runs in a child process of this test binary (it runs itself
//! again with `FREEQ_FORK_CHILD` set), which forks in turn; every wait has
//! a timeout, so a hang fails the test instead of blocking it.
#![cfg(all(target_os = "linux", not(miri)))]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use freeq::Policy;

const PATIENCE: Duration = Duration::from_secs(120);

struct Count(Arc<AtomicUsize>);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// Defers `n` values in sections of ten and returns their counter.
fn offload_some(n: usize) -> Arc<AtomicUsize> {
    let freed = Arc::new(AtomicUsize::new(0));
    let m = freeq::Mutex::new(());
    for _ in 0..n / 10 {
        let _g = m.lock().unwrap();
        for _ in 0..10 {
            freeq::defer(Count(freed.clone()));
        }
    }
    freed
}

#[test]
fn a_forked_child_defers_drains_and_quiesces() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_some() {
        return forking_process();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_forked_child_defers_drains_and_quiesces",
            "--nocapture",
        ])
        .env("FREEQ_FORK_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(status.success(), "{status}\n{text}");
            assert!(text.contains("forked child ok"), "{text}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the forking process did not exit within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// In the re-run binary: offload (reclaimers start), fork, and check the
/// child's exit status with a timeout.
fn forking_process() {
    // Every batch, however cheap, is worth offloading here.
    freeq::set_offload_threshold_ns(0);
    freeq::set_policy(Policy::Offload);
    let freed = offload_some(100);
    freeq::quiesce();
    assert_eq!(freed.load(SeqCst), 100);
    assert!(freeq::stats().offloaded >= 100);

    // SAFETY: (1) the child only runs freeq and std code and leaves with
    // `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(in_child).map_or(1, |()| 0);
        // SAFETY: (2) ends the child without running the parent's exit
        // handlers twice over its copy of the harness state.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + PATIENCE;
    let mut status = 0;
    loop {
        // SAFETY: (3) `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(r == 0, "waitpid failed");
        if Instant::now() > deadline {
            // SAFETY: (4) `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung (no exit within {PATIENCE:?})");
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "forked child failed: status {status:#x}"
    );
    // The parent's reclaimers still serve it.
    let freed = offload_some(50);
    freeq::quiesce();
    assert_eq!(freed.load(SeqCst), 50);
    println!("forked child ok");
}

/// In the forked child: defer, drain, quiesce.
fn in_child() {
    assert_eq!(freeq::policy(), Policy::Offload);
    let freed = offload_some(200);
    freeq::quiesce();
    assert_eq!(freed.load(SeqCst), 200);
    // Hand-offs did not pile up: nothing is left waiting.
    freeq::quiesce();
    assert_eq!(freed.load(SeqCst), 200);
    // Outside a section too.
    let one = Arc::new(AtomicUsize::new(0));
    freeq::defer(Count(one.clone()));
    freeq::quiesce();
    assert_eq!(one.load(SeqCst), 1);
}
