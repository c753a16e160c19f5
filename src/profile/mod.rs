//! Where your lock time goes, per acquisition site, and what freeq moved
//! out of it.
//!
//! Off by default. [`enable(n)`](enable) samples one outermost section in
//! `n` on each thread; [`snapshot`] sums every thread's samples, exited
//! threads included, per *site*: the call in your code that opened the
//! outermost section. Each site reports, over its sampled sections:
//!
//! - **waited**: from the acquisition call until the lock was held;
//! - **held**: from then until the outermost release;
//! - **moved**: the time spent freeing the section's queue after the
//!   release (values [`defer`](crate::defer)red, and the frees
//!   [`DeferFrees`](crate::alloc::DeferFrees) held): the part of the old
//!   hold freeq moved out of the lock;
//! - **values** deferred and **frees** held by `DeferFrees`.
//!
//! ```
//! freeq::profile::enable(1); // every outermost section
//! let cache = freeq::Mutex::new(vec![String::from("old"); 100]);
//! {
//!     let mut entries = cache.lock().unwrap(); // this line is the site
//!     freeq::defer(std::mem::take(&mut *entries));
//! }
//! let profile = freeq::profile::snapshot();
//! let site = profile.sites().iter().find(|s| s.line() == line!() - 4).unwrap();
//! assert_eq!(site.kind(), freeq::profile::LockKind::Mutex);
//! assert_eq!(site.sections(), 1);
//! assert_eq!(site.values(), 1);
//! println!("{profile}"); // the table
//! freeq::profile::disable();
//! ```
//!
//! # Sites
//!
//! A site is the call that opened the thread's outermost section: a
//! `lock()`, `read()`, `write()` or `try_*` call on a freeq lock (the std
//! ones, the [`parking_lot`](crate::parking_lot) ones and every lock_api
//! lock over [`RawDeferred`](crate::RawDeferred): lock_api's methods pass
//! their caller through `#[track_caller]`), a [`section()`](crate::section),
//! a [`LockGuard::new`](crate::LockGuard::new), or a condvar wait taking
//! its lock back. **Nested sections belong to the outermost one**: a lock
//! taken while another freeq lock is held is part of the outer site's
//! hold, and what it defers is part of the outer site's drain. Sections
//! opened by a free while a drain runs are counted in that drain's
//! `moved`, not as sites of their own.
//!
//! Edges:
//! - `LockGuard::new` receives a guard already held: its `waited` is 0.
//! - A `freeq::parking_lot::Condvar` wait is reached through lock_api's
//!   `Condvar::wait`, which does not pass its caller on: its
//!   re-acquisitions are filed under that line of lock_api's source, kind
//!   [`LockKind::Condvar`]. `freeq::Condvar`'s are filed under your
//!   `wait` call.
//! - lock_api 0.4 locks over `RawDeferred` (feature `lock_api_04`) are
//!   filed under lock_api 0.4's own lines: its methods do not pass their
//!   caller on.
//! - Async guards: every acquisition of a `freeq::tokio` lock (feature
//!   `tokio`) and every [`AsyncGuard::new`](crate::AsyncGuard::new) is a
//!   site ([`LockKind::AsyncMutex`], [`AsyncRead`](LockKind::AsyncRead),
//!   [`AsyncWrite`](LockKind::AsyncWrite),
//!   [`AsyncGuard`](LockKind::AsyncGuard)), sampled by the countdown of
//!   the thread that calls it. Its sample travels with the guard, across
//!   `.await` and threads: `waited` runs from the call until the lock is
//!   held (0 for `AsyncGuard::new`, whose guard is held already), `held`
//!   until the release, `moved` is the guard's bin being freed (after
//!   `unlock().await`'s yield, not during it), and `values` the bin's
//!   items. A cancelled acquisition is no sample. An async guard is not a
//!   section: sync sections it spans are sites of their own.
//!
//! # What it costs
//!
//! Off, one relaxed load of a static before each lock is taken and one
//! test of a byte of the thread's state when it releases. On, a sampled
//! section reads the clock four times and adds to its thread's table;
//! sections the countdown passes over cost one thread-local decrement.
//! Nothing is allocated while a lock is held: a thread's table (about 50
//! KiB, a fixed number of sites, [`LockKind::Other`] past them) is
//! allocated when the thread first samples, before it takes the lock (call
//! [`prepare_thread`](crate::prepare_thread) before taking a lock you wrap
//! in `LockGuard::new`). Records are per thread and summed by [`snapshot`];
//! a thread's figures join the exited threads' sums when it exits.
//!
//! # Offload
//!
//! Under [`Policy::Offload`](crate::Policy), a sampled section's batch
//! that leaves the thread (and a [`defer_heavy`](crate::defer_heavy)
//! value) carries its site: the reclaimer or your executor that frees it
//! adds the time it took to the site's [`moved`](Site::moved), when it is
//! freed; [`Site::offloaded`] is that part. The releasing thread's part is
//! the rest: handing the batch off, and freeing what stayed inline.
//!
//! # No code change
//!
//! With `FREEQ_PROFILE=N` in the environment, sampling one in `N` starts
//! with the first section, and the table is printed to stderr when the
//! process exits normally (`main` returns, or `std::process::exit`). A
//! call to [`enable`] or [`disable`] before the first section takes
//! precedence.
//!
//! In a forked child the profile goes on: it starts with the parent's
//! figures up to the fork (those of the parent's other threads stay as
//! they were), and adds the child's own.
//!
//! The [guide chapter](crate::guide::profile) shows how to read the table.

pub(crate) mod clock;
pub(crate) mod probe;
mod report;
pub(crate) mod sample;
pub(crate) mod table;

pub use report::{Measure, Profile, Site};
pub use table::LockKind;

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::profile::table::{EVERY, UNSET};

/// Samples one outermost section in `every` on each thread (1: all of
/// them; 0: off, as [`disable`]). Each thread counts its own outermost
/// sections and samples one in `every` of them.
///
/// ```
/// freeq::profile::enable(64);
/// assert_eq!(freeq::profile::snapshot().every(), 64);
/// freeq::profile::disable();
/// ```
pub fn enable(every: u32) {
    EVERY.store(every.min(UNSET - 1), Relaxed);
}

/// Stops sampling. Sections already being timed are still recorded; what
/// was recorded stays, for [`snapshot`].
///
/// ```
/// freeq::profile::disable();
/// assert_eq!(freeq::profile::snapshot().every(), 0);
/// ```
pub fn disable() {
    EVERY.store(0, Relaxed);
}

/// Forgets every sample recorded so far, on every thread. Sections being
/// timed while it runs are recorded afterwards, as new samples; it never
/// blocks a section and never panics.
///
/// ```
/// freeq::profile::enable(1);
/// drop(freeq::section());
/// freeq::profile::reset();
/// assert_eq!(freeq::profile::snapshot().sections(), 0);
/// freeq::profile::disable();
/// ```
pub fn reset() {
    table::reset();
}

/// Every site's sums so far, live and exited threads together, sorted by
/// moved time. A thread's sample is in it once the thread's sampled
/// section has closed and its queue is freed.
pub fn snapshot() -> Profile {
    let every = match EVERY.load(Relaxed) {
        UNSET => 0,
        n => n,
    };
    Profile::build(every, table::collect(), clock::ns_per_tick())
}

/// Reads `FREEQ_PROFILE` (once): the sampling rate it sets, or 0. With a
/// rate, the table is printed to stderr at process exit.
pub(crate) fn start_from_env() -> u32 {
    let every = match std::env::var("FREEQ_PROFILE") {
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) => n.min(UNSET - 1),
            Err(_) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "freeq: FREEQ_PROFILE={v:?} is not a number (1 in N sections); profile off"
                );
                0
            }
        },
        Err(_) => 0,
    };
    match EVERY.compare_exchange(UNSET, every, Relaxed, Relaxed) {
        Ok(_) => {
            if every != 0 {
                crate::platform::at_exit(print_at_exit);
            }
            every
        }
        Err(now) => now,
    }
}

/// The `atexit` hook `FREEQ_PROFILE` sets: the table, on stderr. Nothing
/// may unwind out of it.
extern "C" fn print_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let table = snapshot().to_string();
        let _ = std::io::stderr().write_all(table.as_bytes());
    });
}
