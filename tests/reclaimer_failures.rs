//! Failure paths of freeq's reclaimers: frees that panic with payloads that
//! panic again, frees that set `Policy::Offload` or call `quiesce()` on a
//! reclaimer, and a narrow CPU mask on the first offloading thread. (Normal
//! process exit with handed-off values still queued: tests/platform.rs.)
//!
//! Scenarios that need a fresh process (the reclaimers are started once per
//! process) or could hang run in a child process: this test binary runs
//! itself again with `FREEQ_CHILD` naming the scenario, and the parent
//! fails the test if the child does not exit in time.
#![cfg(not(miri))]

use std::panic;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex as StdMutex};
use std::thread;
use std::time::{Duration, Instant};

use freeq::Policy;

mod common;
use common::{PATIENCE, RestorePolicy, serial, thread_name, within};

/// Waits until `done()` holds, polling; fails after [`PATIENCE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs this binary again as scenario `name` and returns its output; fails
/// if it does not exit within [`PATIENCE`] or exits unsuccessfully.
fn run_child(name: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("FREEQ_CHILD", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(status.success(), "child {name} failed: {status}\n{text}");
            return text;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {name} did not exit within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The child side: dispatches on `FREEQ_CHILD`; does nothing in a normal run.
#[test]
fn child() {
    let Ok(name) = std::env::var("FREEQ_CHILD") else {
        return;
    };
    match name.as_str() {
        "pinned_first" => child_pinned_first(),
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------
// A panic payload whose destructor panics
// ---------------------------------------------------------------------------

/// A panic payload whose own destructor panics.
struct NastyPayload;

impl Drop for NastyPayload {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("freeq test: a panic payload whose drop panics");
        }
    }
}

struct NastyBomb;

impl Drop for NastyBomb {
    fn drop(&mut self) {
        panic::panic_any(NastyPayload);
    }
}

struct Count(Arc<AtomicUsize>, Arc<StdMutex<Vec<String>>>);

impl Drop for Count {
    fn drop(&mut self) {
        self.1.lock().unwrap().push(thread_name());
        self.0.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_panic_payload_that_panics_when_dropped_does_not_kill_a_reclaimer() {
    let _serial = serial();
    let _policy = RestorePolicy::set(Policy::Offload);
    let freed = Arc::new(AtomicUsize::new(0));
    let threads = Arc::new(StdMutex::new(Vec::new()));
    let rounds = 2 * freeq::__reclaimer_count();
    for round in 0..rounds {
        {
            let _s = freeq::section();
            freeq::defer(NastyBomb);
            freeq::defer(Count(freed.clone(), threads.clone()));
        }
        // No quiesce: the reclaimers themselves must get through it.
        wait_until("a reclaimer freeing after a nasty panic", || {
            freed.load(SeqCst) == round + 1
        });
    }
    let threads = threads.lock().unwrap().clone();
    assert!(
        threads.iter().all(|t| t.starts_with("freeq-reclaim")),
        "{threads:?}"
    );
    within("quiesce", freeq::quiesce);
}

// ---------------------------------------------------------------------------
// `set_policy(Offload)` inside a free on a reclaimer
// ---------------------------------------------------------------------------

#[test]
fn a_reclaimer_frees_inline_whatever_a_free_sets() {
    let _serial = serial();
    let _policy = RestorePolicy::set(Policy::Offload);
    let freed = Arc::new(AtomicUsize::new(0));
    let threads = Arc::new(StdMutex::new(Vec::new()));
    let seen = Arc::new(StdMutex::new(Vec::new()));
    for _ in 0..4 {
        let (freed, threads, seen) = (freed.clone(), threads.clone(), seen.clone());
        let _s = freeq::section();
        freeq::defer_fn(move || {
            // Every batch, however cheap, is worth offloading here.
            freeq::set_offload_threshold_ns(0);
            freeq::set_policy(Policy::Offload);
            seen.lock().unwrap().push(thread_name());
            // Outside a section: freed at once, and, on a reclaimer (or a
            // quiesce caller), inline.
            freeq::defer(Count(freed, threads));
        });
    }
    within("quiesce", freeq::quiesce);
    assert_eq!(freed.load(SeqCst), 4);
    let seen = seen.lock().unwrap().clone();
    let threads = threads.lock().unwrap().clone();
    assert_eq!(seen, threads, "a free on {seen:?} sent its value elsewhere");
    // The reclaimers are still serving.
    {
        let _s = freeq::section();
        freeq::defer(Count(freed.clone(), Arc::default()));
    }
    within("quiesce", freeq::quiesce);
    assert_eq!(freed.load(SeqCst), 5);
}

// ---------------------------------------------------------------------------
// `quiesce()` from inside a free on a reclaimer
// ---------------------------------------------------------------------------

#[test]
fn quiesce_from_frees_on_reclaimers_does_not_deadlock() {
    let _serial = serial();
    let freed = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let freed = freed.clone();
            thread::spawn(move || {
                // Every batch, however cheap, is worth offloading here.
                freeq::set_offload_threshold_ns(0);
                freeq::set_policy(Policy::Offload);
                for _ in 0..50 {
                    let _s = freeq::section();
                    freeq::defer(Count(freed.clone(), Arc::default()));
                    freeq::defer_fn(freeq::quiesce);
                    freeq::defer(Count(freed.clone(), Arc::default()));
                }
            })
        })
        .collect();
    within("producers whose frees call quiesce", move || {
        for p in producers {
            p.join().unwrap();
        }
        freeq::quiesce();
    });
    assert_eq!(freed.load(SeqCst), 4 * 50 * 2);
}

#[test]
fn quiesce_inside_a_section_frees_what_it_takes_at_once() {
    let _serial = serial();
    let freed = Arc::new(AtomicUsize::new(0));
    {
        let freed = freed.clone();
        thread::spawn(move || {
            // Every batch, however cheap, is worth offloading here.
            freeq::set_offload_threshold_ns(0);
            freeq::set_policy(Policy::Offload);
            let _s = freeq::section();
            freeq::defer(Count(freed, Arc::default()));
        })
        .join()
        .unwrap();
    }
    let f = freed.clone();
    within("quiesce in a section", move || {
        let _s = freeq::section();
        freeq::quiesce();
        assert_eq!(f.load(SeqCst), 1);
    });
}

// ---------------------------------------------------------------------------
// The first offloading thread is pinned to one CPU
// ---------------------------------------------------------------------------

#[test]
fn reclaimers_follow_the_process_cpu_set_not_the_first_offloader() {
    let _serial = serial();
    let cpus = core_affinity::get_core_ids().map_or(0, |c| c.len());
    if cpus < 2 {
        eprintln!("skipped: needs at least two CPUs");
        return;
    }
    let out = run_child("pinned_first", &[]);
    assert!(out.contains("pinned_first ok"), "{out}");
}

fn child_pinned_first() {
    let cpus = core_affinity::get_core_ids().unwrap();
    let seen = thread::spawn(move || {
        assert!(core_affinity::set_for_current(cpus[0]));
        // Every batch, however cheap, is worth offloading here.
        freeq::set_offload_threshold_ns(0);
        freeq::set_policy(Policy::Offload);
        let (tx, rx) = mpsc::channel();
        {
            let _s = freeq::section();
            freeq::defer_fn(move || {
                let mask: Vec<usize> = core_affinity::get_core_ids()
                    .unwrap_or_default()
                    .iter()
                    .map(|c| c.id)
                    .collect();
                let _ = tx.send((thread_name(), mask));
            });
        }
        rx.recv_timeout(PATIENCE).unwrap()
    })
    .join()
    .unwrap();
    let all: Vec<usize> = core_affinity::get_core_ids()
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        freeq::__reclaimer_count(),
        all.len(),
        "one reclaimer per CPU"
    );
    let index: usize = seen
        .0
        .strip_prefix("freeq-reclaim-")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("freed on {}", seen.0));
    // Runner `i` runs on the `i`-th CPU of the process, whatever mask the
    // thread that started it had.
    assert_eq!(
        seen.1,
        vec![all[index]],
        "the reclaimer took the first offloader's mask"
    );
    println!("pinned_first ok");
}

/// Leaks a section when freed, and defers a value that counts.
struct LeaksASection(Arc<AtomicUsize>);

impl Drop for LeaksASection {
    fn drop(&mut self) {
        std::mem::forget(freeq::section());
        freeq::defer(Counted(self.0.clone()));
    }
}

/// Counts its free.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// A free on a reclaimer that leaves a section open does not keep what
/// that free, and later ones, defer: each batch's deferred values are
/// freed before the batch counts as done.
#[test]
fn a_free_that_leaks_a_section_on_a_reclaimer_keeps_nothing() {
    let r = Arc::new(freeq::__Reclaimer::new());
    let freed = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let mut q = freeq::FreeQueue::new();
        q.push(LeaksASection(freed.clone()));
        r.hand_off_queue(q);
    }
    let r2 = r.clone();
    // A thread of its own, as a runner: its leaked sections stay there.
    within("a runner's pass", move || {
        assert!(r2.run_once());
    });
    assert_eq!(freed.load(SeqCst), 2, "deferred values kept by the runner");
    assert_eq!(r.outstanding(), 0);
}
