//! Timing drops: the clock a timed run reads, and which runs to time.
//!
//! A [`Stamp`] is the start of a timed run: the wall clock, less (on
//! threads that ask for it, the reclaimers) the time the thread spent
//! waiting for a CPU, which only the platform can tell. [`sample`] picks,
//! at random, the runs of already-timed types to time again. This file
//! calls only `platform` and the `sync` shim; the cost model uses it.

use crate::platform::Instant;
use crate::sync::Cell;

/// One run of one timed type in this many (on average) is timed again.
pub(crate) const SAMPLE_EVERY: u32 = 16;

std::thread_local! {
    /// A xorshift state that picks the runs to time at random (a counter
    /// would alias with batches that alternate types). No destructor, so
    /// it works throughout thread exit.
    static RUNS: Cell<u32> = const { Cell::new(0x9E37_79B9) };
}

/// Whether to time this run of a type already timed: one in
/// [`SAMPLE_EVERY`], at random.
#[inline(always)]
pub(crate) fn sample() -> bool {
    RUNS.try_with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        r.set(x);
        x % SAMPLE_EVERY == 0
    })
    .unwrap_or(false)
}

std::thread_local! {
    /// Whether this thread leaves the time it spent waiting for a CPU out
    /// of its drop timings: set on reclaimers, which run at idle priority
    /// and are preempted often, so that a preemption in the middle of a
    /// timed run is not learned as the type's cost. No destructor.
    static LEAVE_OUT_WAITS: Cell<bool> = const { Cell::new(false) };
}

/// Makes this thread leave out of its drop timings the time it spent
/// runnable but waiting for a CPU (where the platform reports it per
/// thread). Time a drop spends blocked (closing a file, joining a thread)
/// still counts. Reading the wait is a few system calls, a few µs: for
/// threads off the critical path only.
pub(crate) fn leave_out_cpu_waits() {
    let _ = LEAVE_OUT_WAITS.try_with(|c| c.set(true));
}

/// The start of a timed run: the wall clock, and on threads that leave
/// out their waits for a CPU, the waiting so far.
#[derive(Clone, Copy)]
pub(crate) struct Stamp {
    at: Instant,
    waited: Option<u64>,
}

impl Stamp {
    #[inline]
    pub(crate) fn now() -> Stamp {
        let leave_out = LEAVE_OUT_WAITS.try_with(Cell::get).unwrap_or(false);
        Stamp {
            waited: if leave_out { cpu_wait_ns() } else { None },
            at: Instant::now(),
        }
    }

    /// Whether [`Stamp::elapsed_ns`] leaves out the waits for a CPU.
    pub(crate) fn leaves_out_waits(self) -> bool {
        self.waited.is_some()
    }

    /// Nanoseconds since `now`, less the time spent waiting for a CPU
    /// meanwhile where that is known.
    pub(crate) fn elapsed_ns(self) -> u128 {
        let ns = self.at.elapsed().as_nanos();
        let waited = match (self.waited, self.waited.and_then(|_| cpu_wait_ns())) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        ns.saturating_sub(waited.into())
    }
}

/// Nanoseconds this thread has spent runnable but waiting for a CPU, where
/// the platform tells (Linux); see [`crate::platform::cpu_wait_ns`].
pub(crate) fn cpu_wait_ns() -> Option<u64> {
    #[cfg(test)]
    WAIT_READS.with(|n| n.set(n.get() + 1));
    crate::platform::cpu_wait_ns()
}

#[cfg(test)]
std::thread_local! {
    /// Calls to `cpu_wait_ns` on this thread.
    pub(crate) static WAIT_READS: Cell<usize> = const { Cell::new(0) };
}
