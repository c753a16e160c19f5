//! The thresholds of the offload decision: the backlog bound and the cost
//! from which a batch is worth moving.
//!
//! Under `Policy::Offload` a batch leaves only if it is worth moving: its
//! estimated drop cost (the sum of each item type's learned cost per item)
//! reaches [`offload_threshold_ns`]. A batch holding a type freeq has not
//! timed yet leaves whatever its known cost: that type's first free then
//! happens on a reclaimer, which times it, so one slow first drop never
//! lands on the producer and the type is judged by its cost from then on.
//! The count of items handed to an inbox and not yet freed bounds the
//! backlog: past it, producers free inline; so does the age of the oldest
//! batch no reclaimer has come for ([`offload_max_wait`]), which bounds a
//! backlog of few, costly items. This file calls the cost
//! model's [`Cost`] and the `sync` shim.

use std::sync::atomic::Ordering::Relaxed as StaticRelaxed;
use std::time::Duration;

use crate::reclaim::cost::Cost;
use crate::sync::StaticAtomicUsize;

/// Default bound on items handed to one CPU's inbox and not yet freed.
pub const DEFAULT_OFFLOAD_BOUND: usize = crate::sync::scaled(1 << 16, 64);

static BOUND: StaticAtomicUsize = StaticAtomicUsize::new(DEFAULT_OFFLOAD_BOUND);

/// Sets how many offloaded items one CPU's inbox may have outstanding
/// before producers on that CPU free inline instead (default
/// [`DEFAULT_OFFLOAD_BOUND`]). A batch is always accepted by an empty
/// inbox, whatever its size.
///
/// ```
/// freeq::set_offload_bound(1024);
/// assert_eq!(freeq::offload_bound(), 1024);
/// # freeq::set_offload_bound(freeq::DEFAULT_OFFLOAD_BOUND);
/// ```
pub fn set_offload_bound(items: usize) {
    BOUND.store(items, StaticRelaxed);
}

/// The bound set by [`set_offload_bound`].
pub fn offload_bound() -> usize {
    BOUND.load(StaticRelaxed)
}

/// Default bound on how long a batch may wait in an inbox with no
/// reclaimer coming for it before producers on that CPU free inline; see
/// [`set_offload_max_wait`].
pub const DEFAULT_OFFLOAD_MAX_WAIT: Duration = Duration::from_millis(10);

static MAX_WAIT_US: StaticAtomicUsize =
    StaticAtomicUsize::new(DEFAULT_OFFLOAD_MAX_WAIT.as_micros() as usize);

/// Sets how long the oldest batch in a CPU's inbox may wait, with no
/// reclaimer taking it, before producers on that CPU free their batches
/// inline instead (default [`DEFAULT_OFFLOAD_MAX_WAIT`]; `Duration::ZERO`
/// turns the check off).
///
/// The item bound ([`set_offload_bound`]) counts items, whatever each
/// costs: a few heavy values (one item each, milliseconds to drop) never
/// reach it. When every CPU is busy, idle-priority reclaimers get no time,
/// and without this bound such values would pile up until
/// [`quiesce`](crate::quiesce). A waiting batch is still freed by the first reclaimer
/// that runs, or by `quiesce`; only later batches stay on the producer,
/// until a reclaimer empties the inbox.
///
/// ```
/// use std::time::Duration;
/// freeq::set_offload_max_wait(Duration::from_millis(2));
/// assert_eq!(freeq::offload_max_wait(), Duration::from_millis(2));
/// # freeq::set_offload_max_wait(freeq::DEFAULT_OFFLOAD_MAX_WAIT);
/// ```
pub fn set_offload_max_wait(wait: Duration) {
    let us = usize::try_from(wait.as_micros()).unwrap_or(usize::MAX);
    MAX_WAIT_US.store(us, StaticRelaxed);
}

/// The bound set by [`set_offload_max_wait`].
pub fn offload_max_wait() -> Duration {
    Duration::from_micros(MAX_WAIT_US.load(StaticRelaxed) as u64)
}

/// Default estimated drop cost, in nanoseconds, from which a batch is worth
/// handing to another thread under [`Policy::Offload`](crate::Policy). A
/// batch holding a type not timed yet leaves whatever its cost, and that
/// type is timed on its first free.
///
/// Measured with `cargo bench --bench heavy_drop -- threshold` (see
/// BENCHMARKS.md, "Offload"): moving a batch to a reclaimer and
/// freeing it there costs the producer little, but the whole process pays
/// the hand-off, the wake-up and the cache misses of freeing memory
/// another core touched last, about as much as freeing a few hundred small
/// objects inline. Below this, a batch is freed inline.
///
/// 100 µs keeps a typical small-object batch inline with margin: in
/// `lock_hold`'s cache workload (8 records of 17 heap strings per critical
/// section) a batch costs about 20–30 µs to free, and offloading it cost
/// 0.4–0.7x of Inline's throughput at a 20 µs threshold; values that take
/// milliseconds to drop still leave the thread on their own.
pub const DEFAULT_OFFLOAD_THRESHOLD_NS: u64 = 100_000;

static THRESHOLD_NS: StaticAtomicUsize =
    StaticAtomicUsize::new(DEFAULT_OFFLOAD_THRESHOLD_NS as usize);

/// Sets the estimated drop cost, in nanoseconds, from which a drained batch
/// leaves the thread under [`Policy::Offload`](crate::Policy); cheaper
/// batches are freed inline (default [`DEFAULT_OFFLOAD_THRESHOLD_NS`]).
/// `0` offloads every batch.
///
/// The estimate sums each item type's learned drop cost. Types not timed
/// yet have no cost to sum: a batch holding one leaves whatever the
/// threshold, and is timed where it is freed, so only a type's first batch
/// can leave for that reason.
///
/// ```
/// freeq::set_offload_threshold_ns(50_000);
/// assert_eq!(freeq::offload_threshold_ns(), 50_000);
/// # freeq::set_offload_threshold_ns(freeq::DEFAULT_OFFLOAD_THRESHOLD_NS);
/// ```
pub fn set_offload_threshold_ns(ns: u64) {
    THRESHOLD_NS.store(usize::try_from(ns).unwrap_or(usize::MAX), StaticRelaxed);
}

/// The threshold set by [`set_offload_threshold_ns`]; it judges batches
/// whose item types have all been timed.
pub fn offload_threshold_ns() -> u64 {
    THRESHOLD_NS.load(StaticRelaxed) as u64
}

/// Whether a batch expected to cost `cost` to free is worth handing to
/// another thread: one that holds a type not timed yet always is (its
/// first free is timed there), a fully timed one from the threshold up.
pub(crate) fn worth_offloading(cost: Cost) -> bool {
    match cost {
        Cost::Untimed => true,
        Cost::Known(ns) => ns >= offload_threshold_ns(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_judges_cost() {
        let old = offload_threshold_ns();
        set_offload_threshold_ns(1_000);
        assert!(!worth_offloading(Cost::Known(999)));
        assert!(worth_offloading(Cost::Known(1_000)));
        assert!(worth_offloading(Cost::Untimed), "an untimed type leaves");
        set_offload_threshold_ns(old);
    }
}
