//! `freeq::profile`: sites per lock kind, what each sampled section
//! reports, sampling, threads, `reset`, and the table.
//!
//! The profile is process-wide: every test takes `SERIAL` first, resets
//! the profile and runs its sections on a fresh thread (whose countdown
//! starts at zero), so no test sees another's samples.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Barrier, Mutex as StdMutex, MutexGuard as StdMutexGuard};
use std::thread;
use std::time::Duration;

use freeq::profile::{self, LockKind, Measure, Profile, Site};

static SERIAL: StdMutex<()> = StdMutex::new(());

/// Takes the profile for one test: every section sampled, nothing recorded.
fn start(every: u32) -> StdMutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    profile::enable(every);
    profile::reset();
    guard
}

/// Runs `f` on a fresh thread and waits for it (its figures then sit
/// among the exited threads'). Sites are lines of this file: each test
/// notes a site's line with `line!() - 1` right after it.
fn on_a_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    thread::spawn(f).join().unwrap()
}

/// The site at `line` of this file.
fn site(p: &Profile, line: u32) -> &Site {
    p.sites()
        .iter()
        .find(|s| s.file() == file!() && s.line() == line)
        .unwrap_or_else(|| panic!("no site at line {line}:\n{p}"))
}

fn no_site(p: &Profile, line: u32) -> bool {
    !p.sites()
        .iter()
        .any(|s| s.file() == file!() && s.line() == line)
}

/// Slow to drop: sleeps for its duration.
struct Heavy(Duration);

impl Drop for Heavy {
    fn drop(&mut self) {
        thread::sleep(self.0);
    }
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn each_lock_kind_files_its_caller() {
    let _p = start(1);
    let lines = Arc::new(StdMutex::new(Vec::new()));
    let l = lines.clone();
    on_a_thread(move || {
        let at = |kind: LockKind, line: u32| l.lock().unwrap().push((kind, line));
        let m = freeq::Mutex::new(0);
        let rw = freeq::RwLock::new(0);
        let pm = freeq::parking_lot::Mutex::new(0);
        let prw = freeq::parking_lot::RwLock::new(0);
        let std_m = std::sync::Mutex::new(0);

        *m.lock().unwrap() += 1;
        at(LockKind::Mutex, line!() - 1);
        drop(m.try_lock().unwrap());
        at(LockKind::Mutex, line!() - 1);
        drop(rw.read().unwrap());
        at(LockKind::RwLockRead, line!() - 1);
        *rw.write().unwrap() += 1;
        at(LockKind::RwLockWrite, line!() - 1);
        *pm.lock() += 1;
        at(LockKind::RawMutex, line!() - 1);
        drop(pm.try_lock().unwrap());
        at(LockKind::RawMutex, line!() - 1);
        drop(prw.read());
        at(LockKind::RawRead, line!() - 1);
        *prw.write() += 1;
        at(LockKind::RawWrite, line!() - 1);
        drop(prw.upgradable_read());
        at(LockKind::RawUpgradable, line!() - 1);
        drop(freeq::section());
        at(LockKind::Section, line!() - 1);
        freeq::prepare_thread();
        drop(freeq::LockGuard::new(std_m.lock().unwrap()));
        at(LockKind::Guard, line!() - 1);
        freeq::alloc::frees_after(|| ());
        at(LockKind::Section, line!() - 1);
    });
    let p = profile::snapshot();
    for &(kind, line) in lines.lock().unwrap().iter() {
        if cfg!(miri) && no_site(&p, line) {
            // Under Miri a thread's table keeps 4 sites; the rest are in
            // the "other sites" row.
            continue;
        }
        let s = site(&p, line);
        assert_eq!(s.kind(), kind, "line {line}\n{p}");
        assert_eq!(s.sections(), 1, "line {line}\n{p}");
    }
    assert_eq!(p.sections(), lines.lock().unwrap().len() as u64, "{p}");
}

#[test]
fn moved_is_the_free_after_the_release() {
    let _p = start(1);
    let at = on_a_thread(|| {
        let m = freeq::Mutex::new(Some(Heavy(20 * MS)));
        let mut g = m.lock().unwrap();
        let at = line!() - 1;
        freeq::defer(g.take());
        drop(g);
        at
    });
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.values(), 1);
    assert!(s.moved() >= 20 * MS, "{p}");
    assert!(s.held() < s.moved(), "{p}");
    if !cfg!(miri) {
        // Under Miri the histograms stop at 256 ns.
        assert!(s.percentile(Measure::Moved, 0.5) >= 10 * MS, "{p}");
    }
    assert_eq!(p.sites()[0].line(), s.line(), "sorted by moved");
}

/// Clears the offload executor when a test ends, also by a panic.
struct ClearExecutor;

impl Drop for ClearExecutor {
    fn drop(&mut self) {
        freeq::clear_offload_executor();
    }
}

/// Sets an offload executor that keeps every batch for the test to free:
/// the batches, and the executor's clearing when the test ends.
fn keep_batches() -> (std::sync::mpsc::Receiver<freeq::Batch>, ClearExecutor) {
    let (tx, rx) = std::sync::mpsc::channel::<freeq::Batch>();
    let tx = StdMutex::new(tx);
    freeq::set_offload_executor(move |batch| tx.lock().unwrap().send(batch).unwrap());
    (rx, ClearExecutor)
}

#[test]
fn a_batch_the_executor_frees_is_moved_time_of_its_site() {
    let _p = start(1);
    let (rx, _clear) = keep_batches();
    let (at, heavy_at) = on_a_thread(|| {
        freeq::set_policy(freeq::Policy::Offload);
        let m = freeq::Mutex::new(Some(Heavy(20 * MS)));
        let mut g = m.lock().unwrap();
        let at = line!() - 1;
        freeq::defer(g.take());
        drop(g);
        // `defer_heavy`'s value leaves by itself, also marked.
        let g = m.lock().unwrap();
        let heavy_at = line!() - 1;
        freeq::defer_heavy(Heavy(10 * MS));
        drop(g);
        (at, heavy_at)
    });
    // Nothing freed yet: the batches wait here.
    let before = profile::snapshot();
    assert_eq!(site(&before, at).offloaded_batches(), 0, "{before}");
    let batches: Vec<freeq::Batch> = rx.try_iter().collect();
    assert_eq!(batches.len(), 2, "both values left the thread");
    batches.into_iter().for_each(freeq::Batch::free);
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.offloaded_batches(), 1, "{p}");
    assert!(s.offloaded() >= 20 * MS, "{p}");
    assert!(s.moved() >= s.offloaded(), "{p}");
    let h = site(&p, heavy_at);
    assert_eq!(h.offloaded_batches(), 1, "{p}");
    assert!(h.offloaded() >= 10 * MS, "{p}");
    // Miri's clock counts the work of every thread of the test binary,
    // so there a site's times also hold other tests' work: only the
    // lower bounds above are certain.
    if !cfg!(miri) {
        assert_eq!(
            p.sites()[0].line(),
            at,
            "sorted by moved, offloaded included\n{p}"
        );
    }
    assert!(p.to_string().contains("offloaded"), "{p}");
    println!("{p}");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn a_batch_a_reclaimer_frees_is_moved_time_of_its_site() {
    let _p = start(1);
    // `quiesce` below waits for a reclaimer that took the batch: at idle
    // priority it may get no CPU while the machine is busy.
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    let at = on_a_thread(|| {
        freeq::set_policy(freeq::Policy::Offload);
        let m = freeq::Mutex::new(Some(Heavy(20 * MS)));
        let mut g = m.lock().unwrap();
        let at = line!() - 1;
        freeq::defer(g.take());
        drop(g);
        at
    });
    // Frees what is still waiting on this thread if no reclaimer ran yet.
    freeq::quiesce();
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.sections(), 1, "{p}");
    if s.offloaded_batches() == 0 {
        // The backlog bound or a reclaimer that could not start kept the
        // batch inline: then it is the releasing thread's moved time.
        assert!(s.moved() >= 20 * MS && s.offloaded().is_zero(), "{p}");
    } else {
        assert_eq!(s.offloaded_batches(), 1, "{p}");
        assert!(s.offloaded() >= 20 * MS, "{p}");
        assert!(s.moved() >= s.offloaded(), "{p}");
    }
}

#[test]
fn a_batch_freed_after_a_reset_is_not_added() {
    let _p = start(1);
    let (rx, _clear) = keep_batches();
    on_a_thread(|| {
        freeq::set_policy(freeq::Policy::Offload);
        let _g = freeq::section();
        freeq::defer(Heavy(MS));
    });
    profile::reset();
    let batches: Vec<freeq::Batch> = rx.try_iter().collect();
    assert_eq!(batches.len(), 1);
    batches.into_iter().for_each(freeq::Batch::free);
    let p = profile::snapshot();
    assert_eq!(p.sites().len(), 0, "{p}");
}

#[test]
fn nested_sections_belong_to_the_outermost() {
    let _p = start(1);
    let (at, inner_at, section_at) = on_a_thread(|| {
        let outer = freeq::Mutex::new(());
        let inner = freeq::parking_lot::Mutex::new(());
        let g = outer.lock().unwrap();
        let at = line!() - 1;
        let inner_at = {
            let _h = inner.lock();
            let inner_at = line!() - 1;
            freeq::defer(vec![1u8; 16]);
            freeq::defer(String::from("two"));
            inner_at
        };
        let _s = freeq::section();
        let section_at = line!() - 1;
        freeq::defer(3u64);
        drop(g);
        (at, inner_at, section_at)
    });
    let p = profile::snapshot();
    let outer = site(&p, at);
    assert_eq!(outer.sections(), 1);
    assert_eq!(outer.values(), 3, "{p}");
    assert!(no_site(&p, inner_at), "{p}");
    assert!(no_site(&p, section_at), "{p}");
    assert_eq!(p.sections(), 1, "{p}");
}

#[test]
fn one_in_n_is_sampled_and_disable_stops_it() {
    let _p = start(64);
    let sections = if cfg!(miri) { 128 } else { 640 };
    let (on, off) = on_a_thread(move || {
        let m = freeq::Mutex::new(0u64);
        let mut on = 0;
        for _ in 0..sections {
            *m.lock().unwrap() += 1;
            on = line!() - 1;
        }
        profile::disable();
        let mut off = 0;
        for _ in 0..sections {
            *m.lock().unwrap() += 1;
            off = line!() - 1;
        }
        (on, off)
    });
    let p = profile::snapshot();
    assert_eq!(p.every(), 0);
    assert_eq!(site(&p, on).sections(), sections / 64, "{p}");
    assert!(no_site(&p, off), "{p}");
    profile::enable(0);
    assert_eq!(profile::snapshot().every(), 0, "enable(0) is disable()");
}

#[test]
fn exited_threads_are_summed() {
    let _p = start(1);
    let (threads, each) = if cfg!(miri) { (2, 3) } else { (4, 25) };
    let m = Arc::new(freeq::Mutex::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || {
                let mut at = 0;
                for _ in 0..each {
                    *m.lock().unwrap() += 1;
                    at = line!() - 1;
                }
                at
            })
        })
        .collect();
    let at: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let p = profile::snapshot();
    assert_eq!(site(&p, at[0]).sections(), threads * each, "{p}");
}

#[test]
fn a_contended_waiter_reports_its_wait() {
    let _p = start(1);
    let m = Arc::new(freeq::Mutex::new(0));
    let ready = Arc::new(Barrier::new(2));
    let g = m.lock().unwrap();
    let waiter = {
        let (m, ready) = (m.clone(), ready.clone());
        thread::spawn(move || {
            ready.wait();
            let t = std::time::Instant::now();
            *m.lock().unwrap() += 1;
            (line!() - 1, t.elapsed())
        })
    };
    ready.wait();
    thread::sleep(30 * MS);
    drop(g);
    let (at, inside) = waiter.join().unwrap();
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.sections(), 1, "{p}");
    // The waiter's own clock around its whole statement (call, wait, hold,
    // release) bounds what the profile reports. On a busy machine (or under
    // a sanitizer) the waiter may reach its `lock()` late, even after the
    // release: then it was not contended, and only the bound is checked.
    // (5% for the profile's clock, converted from the time-stamp counter.)
    assert!(
        s.waited() + s.held() <= inside + inside / 20,
        "{p}\n{inside:?}"
    );
    if !cfg!(miri) && inside >= 5 * MS {
        // Miri's clock is virtual, and its scheduler may run the waiter
        // only once the sleep is over.
        assert!(s.waited() * 2 >= inside, "{p}\n{inside:?}");
        assert!(s.held() < s.waited(), "{p}");
    }
}

#[test]
fn a_failed_try_lock_is_no_sample() {
    let _p = start(1);
    let m = Arc::new(freeq::parking_lot::Mutex::new(0));
    let sm = Arc::new(freeq::Mutex::new(0));
    let (g, sg) = (m.lock(), sm.lock().unwrap());
    let (m2, sm2) = (m.clone(), sm.clone());
    let at = on_a_thread(move || {
        assert!(m2.try_lock().is_none());
        let raw_at = line!() - 1;
        assert!(sm2.try_lock().is_err());
        let std_at = line!() - 1;
        drop(freeq::section()); // the next outermost section
        (raw_at, std_at, line!() - 1)
    });
    drop((g, sg));
    let p = profile::snapshot();
    assert!(no_site(&p, at.0) && no_site(&p, at.1), "{p}");
    let s = site(&p, at.2);
    assert_eq!(s.waited(), Duration::ZERO, "{p}");
}

#[test]
fn a_condvar_wait_is_its_own_site() {
    let _p = start(1);
    // 0: not yet, 1: the waiter is waiting, 2: go.
    let pair = Arc::new((freeq::Mutex::new(0), freeq::Condvar::new()));
    let p2 = pair.clone();
    let waiter = thread::spawn(move || {
        let (m, cv) = &*p2;
        let mut g = m.lock().unwrap();
        let lock_at = line!() - 1;
        *g = 1;
        let g = cv.wait_while(g, |state| *state != 2).unwrap();
        let wait_at = line!() - 1;
        drop(g);
        (lock_at, wait_at)
    });
    loop {
        let (m, cv) = &*pair;
        let mut g = m.lock().unwrap();
        if *g == 1 {
            *g = 2;
            cv.notify_all();
            break;
        }
        drop(g);
        thread::sleep(MS);
    }
    let (lock_at, wait_at) = waiter.join().unwrap();
    let p = profile::snapshot();
    assert_eq!(site(&p, wait_at).kind(), LockKind::Condvar, "{p}");
    assert_eq!(site(&p, lock_at).kind(), LockKind::Mutex, "{p}");
}

#[test]
fn reset_forgets_and_counts_sections_in_flight_afterwards() {
    let _p = start(1);
    on_a_thread(|| drop(freeq::section()));
    assert_eq!(profile::snapshot().sections(), 1);
    profile::reset();
    assert_eq!(profile::snapshot().sections(), 0);

    // A section open on another thread while `reset` runs is recorded
    // once it closes, as a sample after the reset.
    let opened = Arc::new(Barrier::new(2));
    let reset_done = Arc::new(Barrier::new(2));
    let t = {
        let (opened, reset_done) = (opened.clone(), reset_done.clone());
        thread::spawn(move || {
            let s = freeq::section();
            let at = line!() - 1;
            opened.wait();
            reset_done.wait();
            drop(s);
            at
        })
    };
    opened.wait();
    profile::reset();
    reset_done.wait();
    let at = t.join().unwrap();
    let p = profile::snapshot();
    assert_eq!(site(&p, at).sections(), 1, "{p}");
    assert_eq!(p.sections(), 1, "{p}");
}

/// Panics when dropped.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("a free that panics");
    }
}

#[test]
fn a_panicking_free_still_records() {
    let _p = start(1);
    let at = on_a_thread(|| {
        let mut at = 0;
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let m = freeq::parking_lot::Mutex::new(());
            let _g = m.lock();
            at = line!() - 1;
            freeq::defer(Bomb);
            freeq::defer(String::from("freed too"));
        }));
        assert!(r.is_err());
        at
    });
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.sections(), 1, "{p}");
    assert_eq!(s.values(), 2, "{p}");
}

#[test]
fn the_table_names_each_site() {
    let _p = start(1);
    let at = on_a_thread(|| {
        let m = freeq::Mutex::new(vec![String::from("x"); 8]);
        let mut g = m.lock().unwrap();
        let at = line!() - 1;
        freeq::defer(std::mem::take(&mut *g));
        at
    });
    let p = profile::snapshot();
    let table = p.to_string();
    let label = format!("{}:{}", file!(), at);
    assert!(table.contains(&label), "{table}");
    assert!(table.contains("Mutex"), "{table}");
    for head in [
        "site", "sections", "waited", "held", "moved", "values", "frees",
    ] {
        assert!(table.contains(head), "{table}");
    }
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["every"], 1);
        assert_eq!(json["sites"][0]["line"], at);
        assert_eq!(json["sites"][0]["values"], 1);
        assert!(json["sites"][0]["moved_ns"].as_u64().is_some());
    }
}

#[cfg(not(miri))]
#[test]
fn freeq_profile_in_the_environment_prints_the_table_at_exit() {
    if std::env::var_os("FREEQ_PROFILE_CHILD").is_some() {
        let m = freeq::Mutex::new(0);
        for _ in 0..10 {
            *m.lock().unwrap() += 1;
        }
        println!("site {}:{}", file!(), line!() - 2);
        return;
    }
    let _p = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "freeq_profile_in_the_environment_prints_the_table_at_exit",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("FREEQ_PROFILE_CHILD", "1")
        .env("FREEQ_PROFILE", "2")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 in 2 outermost sections"), "{err}");
    let said = String::from_utf8_lossy(&out.stdout);
    let label = said
        .split("site ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{said}"));
    let row = err
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(row.split_whitespace().any(|w| w == "5"), "{row}");
}
