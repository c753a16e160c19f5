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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
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
    run_forking_process("a_forked_child_defers_drains_and_quiesces");
}

/// Runs `test` again in a child process with `FREEQ_FORK_CHILD` set, and
/// fails if it fails, does not say "forked child ok", or hangs.
fn run_forking_process(test: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
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

/// Forks; the child runs `child` and exits with its outcome. Fails if the
/// child fails or does not exit within [`PATIENCE`].
fn fork_and_check(child: fn()) {
    // SAFETY: (1) the child only runs freeq and std code and leaves with
    // `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(child).map_or(1, |()| 0);
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
}

/// Pins this process's main thread and the calling thread to one CPU, so
/// that freeq runs one reclaimer.
fn one_cpu() {
    // SAFETY: (5) a zeroed set is a valid empty set; the calls read and
    // write sets of the size passed; `getpid()` names the main thread.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .unwrap();
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
        assert_eq!(libc::sched_setaffinity(libc::getpid(), size, &one), 0);
    }
}

/// Opened by the parent once its child is done.
static GATE: AtomicBool = AtomicBool::new(false);
static X_STARTED: AtomicBool = AtomicBool::new(false);
static Y_STARTED: AtomicBool = AtomicBool::new(false);

fn wait_for(flag: &AtomicBool) {
    let deadline = Instant::now() + PATIENCE;
    while !flag.load(SeqCst) {
        assert!(Instant::now() < deadline, "waited too long");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Freed by the reclaimer, which it keeps busy until the gate opens.
struct X;

impl Drop for X {
    fn drop(&mut self) {
        X_STARTED.store(true, SeqCst);
        while !GATE.load(SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Freed by a `quiesce` caller, which it keeps (holding the helping turn)
/// until the gate opens.
struct Y;

impl Drop for Y {
    fn drop(&mut self) {
        Y_STARTED.store(true, SeqCst);
        while !GATE.load(SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A child forked while a thread of its parent is inside `quiesce`
/// (holding its turn, in a free that blocks) and while the reclaimer is
/// freeing a batch the child will never see freed: the child quiesces
/// without waiting for either, and still offloads under a small backlog
/// bound.
#[test]
fn a_child_forked_while_quiesce_frees_does_not_hang() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process("a_child_forked_while_quiesce_frees_does_not_hang");
    }
    one_cpu();
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    freeq::set_offload_threshold_ns(0);
    freeq::set_offload_bound(16);
    freeq::set_policy(Policy::Offload);
    assert_eq!(freeq::__reclaimer_count(), 1);
    {
        let _s = freeq::section();
        freeq::defer(X);
        for _ in 0..9 {
            freeq::defer(0u64);
        }
    }
    wait_for(&X_STARTED);
    {
        let _s = freeq::section();
        freeq::defer(Y);
    }
    // Y waits in the inbox; a `quiesce` caller takes it and frees it.
    let helper = thread::spawn(freeq::quiesce);
    wait_for(&Y_STARTED);
    // The reclaimer is in X's free; the helper, inside `quiesce`, in Y's.
    fork_and_check(|| {
        freeq::set_offload_bound(4);
        freeq::quiesce();
        let before = freeq::stats();
        let freed = offload_some(40);
        freeq::quiesce();
        assert_eq!(freed.load(SeqCst), 40);
        assert!(
            freeq::stats().since(&before).offloaded > 0,
            "the parent's batches still count against the bound"
        );
    });
    GATE.store(true, SeqCst);
    helper.join().unwrap();
    freeq::quiesce();
    println!("forked child ok");
}

/// Children forked while other threads read `stats()` and hand batches
/// to reclaimers (which takes the locks those use) do not hang.
#[test]
fn children_forked_while_threads_use_freeq_do_not_hang() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process("children_forked_while_threads_use_freeq_do_not_hang");
    }
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    freeq::set_offload_threshold_ns(0);
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                freeq::set_policy(Policy::Offload);
                while !stop.load(SeqCst) {
                    if i == 0 {
                        std::hint::black_box(freeq::stats());
                    } else {
                        // A thread's first publish registers its slot.
                        thread::spawn(|| freeq::defer(0u8)).join().unwrap();
                        let _s = freeq::section();
                        freeq::defer(0u8);
                    }
                }
            })
        })
        .collect();
    for _ in 0..if cfg!(debug_assertions) { 100 } else { 300 } {
        fork_and_check(|| {
            std::hint::black_box(freeq::stats());
            let freed = offload_some(20);
            freeq::quiesce();
            assert_eq!(freed.load(SeqCst), 20);
            thread::spawn(|| freeq::defer(0u8)).join().unwrap();
            std::hint::black_box(freeq::stats());
        });
    }
    stop.store(true, SeqCst);
    for t in busy {
        t.join().unwrap();
    }
    println!("forked child ok");
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

    fork_and_check(in_child);
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

/// Dropped slowly, so that replacing an executor that holds one takes a
/// while.
struct SlowDrop;

impl Drop for SlowDrop {
    fn drop(&mut self) {
        thread::sleep(Duration::from_millis(2));
    }
}

/// A child forked while another thread replaces the offload executor
/// (whose old closure is slow to drop) can still set, use and clear an
/// executor of its own: it never inherits the executor's lock held by a
/// thread it does not have. Its child starts no thread.
#[test]
fn a_child_forked_while_the_executor_is_replaced_does_not_hang() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process("a_child_forked_while_the_executor_is_replaced_does_not_hang");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let replacer = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(SeqCst) {
                let slow = SlowDrop;
                freeq::set_offload_executor(move |batch| {
                    let _ = &slow;
                    batch.free();
                });
            }
            freeq::clear_offload_executor();
        })
    };
    for _ in 0..20 {
        fork_and_check(|| {
            freeq::set_offload_executor(|batch| batch.free());
            let one = Arc::new(AtomicUsize::new(0));
            freeq::defer_heavy(Count(one.clone()));
            assert_eq!(one.load(SeqCst), 1, "the child's executor freed it");
            freeq::clear_offload_executor();
        });
        thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, SeqCst);
    replacer.join().unwrap();
    println!("forked child ok");
}

static HOLD_GATE: AtomicBool = AtomicBool::new(false);
static HOLD_STARTED: AtomicBool = AtomicBool::new(false);
/// The process that ran `Parents`'s drop (0: none yet).
static PARENTS_RAN_IN: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Keeps the reclaimer busy until the gate opens.
struct Hold;

impl Drop for Hold {
    fn drop(&mut self) {
        HOLD_STARTED.store(true, SeqCst);
        while !HOLD_GATE.load(SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Deferred work of the parent's, waiting in an inbox at the fork.
struct Parents;

impl Drop for Parents {
    fn drop(&mut self) {
        // SAFETY: (6) `getpid` has no preconditions.
        PARENTS_RAN_IN.store(unsafe { libc::getpid() }, SeqCst);
    }
}

/// Batches a parent's threads handed off and that still wait in an inbox
/// at the fork are the parent's: the child's `quiesce` does not run its
/// copies (they could take locks held by threads the child does not have)
/// and its own hand-offs still work; the parent frees them, once.
#[test]
fn a_forked_child_leaves_the_parents_waiting_batches_to_the_parent() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process(
            "a_forked_child_leaves_the_parents_waiting_batches_to_the_parent",
        );
    }
    one_cpu();
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    freeq::set_offload_threshold_ns(0);
    freeq::set_policy(Policy::Offload);
    assert_eq!(freeq::__reclaimer_count(), 1);
    {
        let _s = freeq::section();
        freeq::defer(Hold);
    }
    wait_for(&HOLD_STARTED);
    // The one reclaimer is busy: this batch waits in the inbox.
    {
        let _s = freeq::section();
        freeq::defer(Parents);
    }
    fork_and_check(|| {
        freeq::quiesce();
        // SAFETY: (7) `getpid` has no preconditions.
        let me = unsafe { libc::getpid() };
        assert_ne!(
            PARENTS_RAN_IN.load(SeqCst),
            me,
            "the parent's batch ran in the child"
        );
        let freed = offload_some(20);
        freeq::quiesce();
        assert_eq!(freed.load(SeqCst), 20);
    });
    HOLD_GATE.store(true, SeqCst);
    freeq::quiesce();
    // SAFETY: (8) as in (7).
    assert_eq!(PARENTS_RAN_IN.load(SeqCst), unsafe { libc::getpid() });
    println!("forked child ok");
}

/// The lock a parent's executor takes when it is called and when it is
/// dropped, as a channel's sender or a pool's handle does.
static EXECUTOR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Part of the parent's executor: takes `EXECUTOR_LOCK` when dropped.
struct LocksOnDrop;

impl Drop for LocksOnDrop {
    fn drop(&mut self) {
        let _g = EXECUTOR_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    }
}

/// Sets an executor that takes `EXECUTOR_LOCK` when called and when
/// dropped, lets another thread hold that lock across a fork, and runs
/// `child` in the forked child. The parent then releases the lock, checks
/// its executor still works, and clears it.
fn fork_while_the_executors_lock_is_held(child: fn()) {
    let on_drop = LocksOnDrop;
    freeq::set_offload_executor(move |batch| {
        let _ = &on_drop;
        let _g = EXECUTOR_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        batch.free();
    });
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = thread::spawn(move || {
        let _g = EXECUTOR_LOCK.lock().unwrap();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    held_rx.recv().unwrap();
    fork_and_check(child);
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let one = Arc::new(AtomicUsize::new(0));
    freeq::defer_heavy(Count(one.clone()));
    assert_eq!(one.load(SeqCst), 1, "the parent's executor freed it");
    freeq::clear_offload_executor();
    println!("forked child ok");
}

/// A child does not drop the executor it inherited: clearing it (or
/// setting its own) returns at once, although the lock the parent's
/// executor takes in its `Drop` is held by a thread the child does not
/// have. Its own executor then works.
#[test]
fn a_forked_child_clears_the_executor_without_dropping_the_parents() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process(
            "a_forked_child_clears_the_executor_without_dropping_the_parents",
        );
    }
    fork_while_the_executors_lock_is_held(|| {
        freeq::clear_offload_executor();
        freeq::set_offload_executor(|batch| batch.free());
        let one = Arc::new(AtomicUsize::new(0));
        freeq::defer_heavy(Count(one.clone()));
        assert_eq!(one.load(SeqCst), 1, "the child's own executor freed it");
        freeq::set_offload_executor(|batch| batch.free());
        freeq::clear_offload_executor();
    });
}

/// A child never calls the executor it inherited: under `Policy::Offload`
/// its heavy value goes to freeq's own reclaimers (started in the child)
/// and is freed once, although the parent's executor would block on a
/// lock held by a thread the child does not have.
#[test]
fn a_forked_child_never_calls_the_parents_executor() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process("a_forked_child_never_calls_the_parents_executor");
    }
    fork_while_the_executors_lock_is_held(|| {
        freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
        freeq::set_policy(Policy::Offload);
        let one = Arc::new(AtomicUsize::new(0));
        freeq::defer_heavy(Count(one.clone()));
        {
            let _s = freeq::section();
            for _ in 0..100 {
                freeq::defer(Count(one.clone()));
            }
        }
        freeq::quiesce();
        assert_eq!(one.load(SeqCst), 101, "freed once each, in the child");
        freeq::set_policy(Policy::Inline);
    });
}

/// What the parent retired, and whether it was freed in this process.
static PARENT_RETIRED_FREED: AtomicBool = AtomicBool::new(false);

/// A value the parent retires just before it forks.
struct ParentRetired;

impl Drop for ParentRetired {
    fn drop(&mut self) {
        PARENT_RETIRED_FREED.store(true, SeqCst);
    }
}

/// A batch the parent retired to the epoch and that crossbeam-epoch had
/// not collected at the fork is the parent's: the child's own pins and
/// flushes advance the epoch, but never run the parent's copy (it could
/// take locks held by threads the child does not have). The child's own
/// retired values are freed as usual; the parent frees its own.
#[test]
fn a_forked_child_never_frees_what_the_parent_retired() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process("a_forked_child_never_frees_what_the_parent_retired");
    }
    {
        let _s = freeq::section();
        freeq::retire(ParentRetired);
    }
    if PARENT_RETIRED_FREED.load(SeqCst) {
        // Collected before the fork: nothing of the parent's is left to
        // check in a child this time.
        println!("forked child ok");
        return;
    }
    fork_and_check(|| {
        let own = Arc::new(AtomicUsize::new(0));
        for _ in 0..64 {
            {
                let _s = freeq::section();
                freeq::retire(Count(own.clone()));
            }
            freeq::epoch::pin().flush();
        }
        assert!(
            !PARENT_RETIRED_FREED.load(SeqCst),
            "the parent's retired value was freed in the child"
        );
        assert!(
            own.load(SeqCst) > 0,
            "the child's own retired values are freed"
        );
    });
    for _ in 0..64 {
        freeq::epoch::pin().flush();
    }
    assert!(
        PARENT_RETIRED_FREED.load(SeqCst),
        "the parent freed its own"
    );
    println!("forked child ok");
}

/// The profile across `fork()`: children forked while other threads take
/// sampled sections, take snapshots, reset and exit (each of which takes
/// the profile's registry or a table) start consistent. Each child
/// samples its own sections, finds them under their site, snapshots and
/// resets, and never hangs.
#[test]
fn children_forked_while_threads_profile_start_consistent() {
    if std::env::var_os("FREEQ_FORK_CHILD").is_none() {
        return run_forking_process("children_forked_while_threads_profile_start_consistent");
    }
    freeq::profile::enable(1);
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..3)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let m = freeq::Mutex::new(0u64);
                while !stop.load(SeqCst) {
                    match i {
                        0 => std::hint::black_box(freeq::profile::snapshot())
                            .sites()
                            .len(),
                        1 => {
                            // A thread's first sample makes its table; its
                            // exit folds it into the exited threads' sums.
                            thread::spawn(|| drop(freeq::section())).join().unwrap();
                            0
                        }
                        _ => {
                            let mut g = m.lock().unwrap();
                            *g += 1;
                            freeq::defer(Box::new(*g));
                            if (*g).is_multiple_of(1000) {
                                freeq::profile::reset();
                            }
                            0
                        }
                    };
                }
            })
        })
        .collect();
    for _ in 0..if cfg!(debug_assertions) { 100 } else { 300 } {
        fork_and_check(|| {
            std::hint::black_box(freeq::profile::snapshot());
            freeq::profile::reset();
            let m = freeq::Mutex::new(0u32);
            let at = line!() + 2;
            for _ in 0..10 {
                let g = m.lock().unwrap();
                freeq::defer(Box::new(*g));
            }
            thread::spawn(|| drop(freeq::section())).join().unwrap();
            let p = freeq::profile::snapshot();
            let mine = p
                .sites()
                .iter()
                .find(|s| s.file().ends_with("fork.rs") && s.line() == at)
                .expect("the child's own site");
            assert_eq!(mine.sections(), 10, "{p}");
            assert_eq!(mine.values(), 10, "{p}");
            freeq::profile::disable();
        });
    }
    stop.store(true, SeqCst);
    for t in busy {
        t.join().unwrap();
    }
    freeq::profile::disable();
    println!("forked child ok");
}
