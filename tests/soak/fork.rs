//! `fork()` while other threads hold locks and the forking thread is
//! inside a section with work queued: the child closes that section, does
//! a little freeq work of its own, checks its values were each dropped
//! once, and exits; the parent checks its status.
#![cfg(unix)]

use std::mem;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use freeq::Policy;

use crate::actions::World;
use crate::run::FORKS;
use crate::values::{self, Rng, Tracked, drops, fail, failures};

/// How long a child may take before it counts as hung (sanitizers and a
/// busy machine slow it down; a hang takes forever).
const PATIENCE: Duration = Duration::from_secs(60);

pub fn fork_once(world: &Arc<World>, rng: &mut Rng) {
    let use_offload = rng.one_in(2);
    let own_executor = rng.one_in(2);
    // Inside a section with a deferred value and held frees, while the
    // other threads come and go on the world's locks.
    let mut g = world.pl_maps_last().lock();
    let old = mem::replace(&mut g[5], rng.value());
    let queued = old.id();
    freeq::defer(old);
    g[6] = rng.value(); // a plain drop under the lock: its frees are held
    // SAFETY: (1) the child runs only freeq, std and this file's code and
    // leaves with `_exit`, never returning into the harness or the soak.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail("fork failed".into());
        return;
    }
    if pid == 0 {
        values::enter_child();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            child(g, queued, use_offload, own_executor)
        }))
        .unwrap_or(false);
        // SAFETY: (2) ends the child without running the parent's exit
        // handlers over its copy of the harness state.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    drop(g);
    FORKS.fetch_add(1, Relaxed);
    wait_child(pid);
}

/// The child's part. `guard` is the lock the forking thread held (this
/// thread, in the child): releasing it drains the section.
fn child(
    guard: freeq::parking_lot::MutexGuard<'_, Vec<Tracked>>,
    queued: u64,
    use_offload: bool,
    own_executor: bool,
) -> bool {
    let before = failures();
    drop(guard);
    let mut ids = vec![queued];
    let mut own = Vec::new();
    for _ in 0..8 {
        let v = Tracked::new(32);
        ids.push(v.id());
        own.push(v);
    }
    // An executor the parent set (the soak's executor thread, fed through
    // a channel whose lock a parent thread may have held at the fork) is
    // neither called nor dropped here: clearing it drops nothing, and
    // without an executor of the child's own, batches go to freeq's
    // reclaimers, started in the child.
    freeq::clear_offload_executor();
    if own_executor {
        // One of the child's own, replaced and cleared again below.
        freeq::set_offload_executor(|batch| batch.free());
        let v = Tracked::new(16);
        ids.push(v.id());
        freeq::defer_heavy(v);
        freeq::set_offload_executor(drop);
    }
    if use_offload {
        freeq::set_policy(Policy::Offload);
    }
    let m = freeq::Mutex::new(own);
    {
        let mut g = m.lock().unwrap();
        while let Some(v) = g.pop() {
            freeq::defer(v);
        }
        let v = Tracked::new(8);
        ids.push(v.id());
        freeq::defer_fn(move || drop(v));
    }
    let v = Tracked::new(64);
    ids.push(v.id());
    freeq::defer_heavy(v);
    if own_executor {
        freeq::clear_offload_executor();
    }
    freeq::quiesce();
    ids.iter().all(|&id| drops(id) == 1) && failures() == before
}

fn wait_child(pid: libc::pid_t) {
    let deadline = Instant::now() + PATIENCE;
    let mut status = 0;
    loop {
        // SAFETY: (3) `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r != 0 {
            fail("waitpid failed".into());
            return;
        }
        if Instant::now() > deadline {
            backtrace(pid);
            // SAFETY: (4) `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: (5) as in (3), reaping the killed child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            fail(format!("a forked child hung (no exit within {PATIENCE:?})"));
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        fail(format!("a forked child failed: status {status:#x}"));
    }
}

/// Prints where a hung child is stuck, if gdb is at hand (best effort).
fn backtrace(pid: libc::pid_t) {
    let out = std::process::Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output();
    if let Ok(out) = out {
        eprintln!(
            "soak: the hung child's stacks:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
