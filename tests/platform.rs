//! Platform services that every supported operating system provides in
//! its own way: here, the process-exit drain of what `Policy::Offload`
//! still holds (an `atexit` hook on Linux, macOS, FreeBSD and Windows).
//!
//! The scenario runs in a child process (this test binary, run again with
//! `FREEQ_PLATFORM_CHILD` set) that exits normally, by returning from
//! `main`; the parent then reads what the child's destructors logged. Only
//! `std` is used, so the test runs unchanged wherever processes can be
//! spawned.
#![cfg(not(miri))]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use freeq::Policy;

mod common;
use common::PATIENCE;

/// Values the child hands off and leaves for the exit hook.
const VALUES: usize = 20;

/// Appends a line to the log file named by `FREEQ_PLATFORM_LOG` when
/// dropped (a file, not stdout: the process is exiting).
struct Logged(usize);

impl Drop for Logged {
    fn drop(&mut self) {
        let path = std::env::var("FREEQ_PLATFORM_LOG").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "freed {}", self.0).unwrap();
    }
}

/// Keeps a reclaimer busy for a while, so that what is handed off after
/// it still waits when the process exits.
struct Busy(mpsc::Sender<()>);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.send(());
        thread::sleep(Duration::from_millis(300));
    }
}

/// The child side; does nothing in a normal run.
#[test]
fn child() {
    if std::env::var_os("FREEQ_PLATFORM_CHILD").is_none() {
        return;
    }
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    freeq::set_offload_threshold_ns(0);
    freeq::set_policy(Policy::Offload);
    for _ in 0..freeq::__reclaimer_count() {
        let (tx, rx) = mpsc::channel();
        {
            let _s = freeq::section();
            freeq::defer(Busy(tx));
        }
        let _ = rx.recv_timeout(PATIENCE);
    }
    for i in 0..VALUES {
        let _s = freeq::section();
        freeq::defer(Logged(i));
    }
    // No quiesce: the test returns, libtest's `main` returns, and the
    // process exits normally with the values still handed off.
}

#[test]
fn normal_exit_frees_what_offload_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("freed");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("FREEQ_PLATFORM_CHILD", "1")
        .env("FREEQ_PLATFORM_LOG", &log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not exit within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed: {}\n{text}", out.status);
    let freed = std::fs::read_to_string(&log).unwrap_or_default();
    let mut seen: Vec<usize> = freed
        .lines()
        .filter_map(|l| l.strip_prefix("freed ")?.parse().ok())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..VALUES).collect::<Vec<_>>(),
        "freed by exit:\n{freed}\n{text}"
    );
}
