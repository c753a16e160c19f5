//! `freeq::profile` on async guards: `freeq::tokio`'s acquisitions and
//! `AsyncGuard::new` are sites; a sampled guard reports its wait, its
//! hold and its bin's free, wherever the bin is freed.
//!
//! The profile is process-wide: every test takes `SERIAL` first and resets
//! it, and runs its guards on a fresh thread (whose countdown starts at
//! zero), so no test sees another's samples.

use std::sync::{Arc, Mutex as StdMutex, MutexGuard as StdMutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use freeq::AsyncGuard;
use freeq::profile::{self, LockKind, Profile, Site};

static SERIAL: StdMutex<()> = StdMutex::new(());

fn start(every: u32) -> StdMutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    profile::enable(every);
    profile::reset();
    guard
}

/// Runs `f` on a current-thread runtime on a fresh thread, and waits.
fn on_a_runtime<R: Send + 'static, F>(f: impl FnOnce() -> F + Send + 'static) -> R
where
    F: std::future::Future<Output = R>,
{
    thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

fn site(p: &Profile, line: u32) -> &Site {
    p.sites()
        .iter()
        .find(|s| s.file() == file!() && s.line() == line)
        .unwrap_or_else(|| panic!("no site at line {line}:\n{p}"))
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
fn each_async_acquisition_files_its_caller() {
    let _p = start(1);
    let lines = on_a_runtime(|| async {
        let m = Arc::new(freeq::tokio::Mutex::new(0));
        let rw = Arc::new(freeq::tokio::RwLock::new(0));
        let std_m = StdMutex::new(0);
        let mut lines = Vec::new();
        *m.lock().await += 1;
        lines.push((LockKind::AsyncMutex, line!() - 1));
        drop(m.try_lock().unwrap());
        lines.push((LockKind::AsyncMutex, line!() - 1));
        drop(m.clone().lock_owned().await);
        lines.push((LockKind::AsyncMutex, line!() - 1));
        drop(rw.read().await);
        lines.push((LockKind::AsyncRead, line!() - 1));
        drop(rw.clone().read_owned().await);
        lines.push((LockKind::AsyncRead, line!() - 1));
        *rw.write().await += 1;
        lines.push((LockKind::AsyncWrite, line!() - 1));
        drop(rw.try_write().unwrap());
        lines.push((LockKind::AsyncWrite, line!() - 1));
        drop(AsyncGuard::new(std_m.lock().unwrap()));
        lines.push((LockKind::AsyncGuard, line!() - 1));
        lines
    });
    let p = profile::snapshot();
    for &(kind, line) in &lines {
        if cfg!(miri) && !p.sites().iter().any(|s| s.line() == line) {
            // Under Miri a profile keeps 4 sites apart; the rest are in
            // the "other sites" row.
            continue;
        }
        let s = site(&p, line);
        assert_eq!(s.kind(), kind, "line {line}\n{p}");
        assert_eq!(s.sections(), 1, "line {line}\n{p}");
    }
    assert_eq!(p.sections(), lines.len() as u64, "{p}");
}

#[test]
fn a_plain_drop_reports_hold_and_the_bins_free() {
    let _p = start(1);
    let at = on_a_runtime(|| async {
        let m = freeq::tokio::Mutex::new(Some(Heavy(20 * MS)));
        let mut g = m.lock().await;
        let at = line!() - 1;
        let old = g.take();
        g.defer(old);
        g.defer(String::from("second"));
        drop(g);
        at
    });
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.values(), 2, "{p}");
    // Untimed until now, the bin was freed in place: moved, not offloaded.
    assert!(s.moved() >= 20 * MS, "{p}");
    assert!(s.held() < 20 * MS, "{p}");
}

#[test]
fn unlock_await_reports_the_free_not_the_yield() {
    let _p = start(1);
    let at = on_a_runtime(|| async {
        let m = Arc::new(freeq::tokio::Mutex::new(Some(Heavy(10 * MS))));
        let mut g = m.lock().await;
        let at = line!() - 1;
        // A waiter that holds the lock for 30 ms: it runs during
        // `unlock`'s yield, which is not `moved` time.
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move {
                let _g = m.lock().await;
                thread::sleep(30 * MS);
            })
        };
        tokio::task::yield_now().await;
        let old = g.take();
        g.defer(old);
        g.unlock().await;
        waiter.await.unwrap();
        at
    });
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.values(), 1, "{p}");
    assert!(s.moved() >= 10 * MS, "{p}");
    assert!(
        s.moved() < 30 * MS,
        "the waiter's 30 ms are not moved time\n{p}"
    );
}

#[test]
fn a_waiter_reports_its_wait() {
    let _p = start(1);
    let (at, own) = on_a_runtime(|| async {
        let m = Arc::new(freeq::tokio::Mutex::new(()));
        let g = m.lock().await;
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let g = m.lock().await;
                let at = line!() - 1;
                let own = t.elapsed();
                drop(g);
                (at, own)
            })
        };
        // The waiter calls `lock()` and waits while this task sleeps.
        tokio::time::sleep(20 * MS).await;
        drop(g);
        waiter.await.unwrap()
    });
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.sections(), 1, "{p}");
    // Bounded by the waiter's own clock around the same wait.
    assert!(s.waited() <= own + MS, "{:?} vs {own:?}\n{p}", s.waited());
    assert!(s.waited() >= own / 2, "{:?} vs {own:?}\n{p}", s.waited());
    assert!(own >= 10 * MS, "the waiter waited: {own:?}");
}

#[test]
fn a_cancelled_acquisition_is_no_sample() {
    let _p = start(1);
    on_a_runtime(|| async {
        let m = freeq::tokio::Mutex::new(());
        let g = m.lock().await;
        let line = line!() - 1;
        // Polled once (it waits), then dropped: no lock, no sample.
        let pending = tokio::time::timeout(MS, m.lock()).await;
        assert!(pending.is_err());
        drop(g);
        line
    });
    let p = profile::snapshot();
    assert_eq!(p.sections(), 1, "only the first lock\n{p}");
}

/// Clears the offload executor when a test ends, also by a panic.
struct ClearExecutor;

impl Drop for ClearExecutor {
    fn drop(&mut self) {
        freeq::clear_offload_executor();
    }
}

#[test]
fn a_bin_a_plain_drop_sends_off_is_added_when_freed() {
    let _p = start(1);
    let (tx, rx) = std::sync::mpsc::channel::<freeq::Batch>();
    let tx = StdMutex::new(tx);
    freeq::set_offload_executor(move |batch| tx.lock().unwrap().send(batch).unwrap());
    let _clear = ClearExecutor;
    let at = on_a_runtime(|| async {
        let m = freeq::tokio::Mutex::new(());
        // A plain drop sends off a bin once its type is known to be
        // costly: the first ones are freed in place, and timed.
        let mut at = 0;
        for _ in 0..64 {
            let mut g = m.lock().await;
            at = line!() - 1;
            g.defer(Heavy(MS));
            drop(g);
        }
        at
    });
    let batches: Vec<freeq::Batch> = rx.try_iter().collect();
    assert!(!batches.is_empty(), "a costly bin left the thread");
    let sent = batches.len() as u64;
    let before = profile::snapshot();
    assert_eq!(site(&before, at).offloaded_batches(), 0, "{before}");
    batches.into_iter().for_each(freeq::Batch::free);
    let p = profile::snapshot();
    let s = site(&p, at);
    assert_eq!(s.sections(), 64, "{p}");
    assert_eq!(s.offloaded_batches(), sent, "{p}");
    assert!(s.offloaded() >= sent as u32 * MS, "{p}");
}

#[test]
fn sampling_one_in_n_counts_async_acquisitions() {
    let _p = start(4);
    on_a_runtime(|| async {
        let m = freeq::tokio::Mutex::new(0);
        for _ in 0..16 {
            *m.lock().await += 1;
        }
    });
    assert_eq!(profile::snapshot().sections(), 4);
    profile::disable();
    profile::reset();
    on_a_runtime(|| async {
        let m = freeq::tokio::Mutex::new(0);
        *m.lock().await += 1;
    });
    assert_eq!(profile::snapshot().sections(), 0);
}
