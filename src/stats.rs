//! Process-wide counters, aggregated over live and exited threads.
//!
//! Each thread counts in plain cells inside its own state and publishes the
//! deltas to its own slot at the end of each drain, so the hot path
//! (`defer`) never touches an atomic and the drain path only stores to
//! memory no other thread writes. A thread registers its slot on its first
//! drain; at exit it folds the slot into the exited-threads total and
//! unregisters it, so the registry holds live threads only. [`stats`] sums
//! the registry and that total.
//!
//! The queue layer counts into [`LocalCounts`]; this file calls only the
//! `sync` shim and `platform` (the fork handlers that keep the registry
//! usable in a child).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use crate::sync::Cell;

/// A snapshot of freeq's counters, summed over every thread that has used
/// freeq (exited ones included). Counters only grow. A thread's figures
/// reach the snapshot when it next drains, frees outside a section, or
/// exits; items still sitting in an open section are not yet counted. The
/// lone small values that async guards free in place
/// ([`AsyncGuard`](crate::AsyncGuard)) are published every 64th (or with
/// the thread's next drain).
///
/// ```
/// let before = freeq::stats();
/// {
///     let _s = freeq::section();
///     freeq::defer(vec![1u8; 10]);
///     freeq::defer(String::from("x"));
/// }
/// let after = freeq::stats();
/// assert!(after.deferred >= before.deferred + 2);
/// assert!(after.freed >= before.freed + 2);
/// assert!(after.drains > before.drains);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Items handed to freeq (`defer`, `defer_with`, `defer_fn`, `retire`).
    pub deferred: u64,
    /// Items freed (run), on whichever thread freed them.
    pub freed: u64,
    /// Drains: outermost section closes that found work, flushes that found
    /// work, and frees outside a section.
    pub drains: u64,
    /// The longest queue any thread drained at once.
    pub max_pending: u64,
    /// Items handed to reclaimer threads (`Policy::Offload`).
    pub offloaded: u64,
    /// Items retired through the epoch (`retire`).
    pub retired: u64,
    /// Batches an offloading thread freed itself because the reclaimers were
    /// past their backlog bound.
    pub inline_fallbacks: u64,
    /// Frees of memory that [`DeferFrees`](crate::alloc::DeferFrees), the
    /// global allocator wrapper, held back inside a section and made after
    /// it closed (always on the thread that held them). Zero unless it is
    /// the global allocator.
    pub deferred_frees: u64,
}

pub(crate) struct Slot {
    deferred: AtomicU64,
    freed: AtomicU64,
    drains: AtomicU64,
    max_pending: AtomicU64,
    offloaded: AtomicU64,
    retired: AtomicU64,
    inline_fallbacks: AtomicU64,
    deferred_frees: AtomicU64,
}

impl Slot {
    /// Adds `other`'s counts to this one's.
    fn absorb(&self, other: &Slot) {
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Relaxed), Relaxed);
        };
        add(&self.deferred, &other.deferred);
        add(&self.freed, &other.freed);
        add(&self.drains, &other.drains);
        add(&self.offloaded, &other.offloaded);
        add(&self.retired, &other.retired);
        add(&self.inline_fallbacks, &other.inline_fallbacks);
        add(&self.deferred_frees, &other.deferred_frees);
        self.max_pending
            .fetch_max(other.max_pending.load(Relaxed), Relaxed);
    }

    const fn new() -> Self {
        Slot {
            deferred: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            drains: AtomicU64::new(0),
            max_pending: AtomicU64::new(0),
            offloaded: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            inline_fallbacks: AtomicU64::new(0),
            deferred_frees: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// The counts accumulated since `earlier` (a snapshot taken before this
    /// one); `max_pending` stays this snapshot's high-water mark.
    ///
    /// ```
    /// let before = freeq::stats();
    /// freeq::defer(1u8); // outside a section: freed at once
    /// let delta = freeq::stats().since(&before);
    /// assert!(delta.deferred >= 1 && delta.freed >= 1);
    /// ```
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            deferred: self.deferred.saturating_sub(earlier.deferred),
            freed: self.freed.saturating_sub(earlier.freed),
            drains: self.drains.saturating_sub(earlier.drains),
            max_pending: self.max_pending,
            offloaded: self.offloaded.saturating_sub(earlier.offloaded),
            retired: self.retired.saturating_sub(earlier.retired),
            inline_fallbacks: self
                .inline_fallbacks
                .saturating_sub(earlier.inline_fallbacks),
            deferred_frees: self.deferred_frees.saturating_sub(earlier.deferred_frees),
        }
    }
}

/// The slots of live threads. Settings-like process state: `std` in loom
/// builds too, held only for a few loads and stores.
///
/// Why a home-made registry rather than the `thread_local` crate's
/// `ThreadLocal`: an earlier note here blamed a Tree Borrows failure in that
/// crate, but recorded no failing program, and an outside audit could not
/// reproduce one; that reason is withdrawn. The registry stays for what it
/// does that `ThreadLocal` does not: counting happens in plain cells in the
/// thread's own freeq state (no per-item lookup of any kind), this vector
/// is touched only at a thread's first publish and at its exit, and at exit
/// the slot's counts move to `EXITED` under the same lock that removes the
/// slot, so a concurrent [`stats`] sees them exactly once. `ThreadLocal`
/// (by its documentation) keeps an exited thread's value for the next
/// thread that reuses its id,
/// which would serve the sum as well; it would add a dependency for a
/// `Mutex<Vec<_>>`'s worth of work.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// Counts of threads that have exited.
static EXITED: Slot = Slot::new();

fn slots() -> std::sync::MutexGuard<'static, Vec<Arc<Slot>>> {
    #[cfg(all(unix, not(miri)))]
    fork_safe::install();
    SLOTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `SLOTS` across `fork()`: the forking thread holds it while it forks and
/// releases it on both sides, so a child never inherits it held by a
/// thread it does not have. It is never held across user code, so the
/// fork waits at most for a few loads and stores.
#[cfg(all(unix, not(miri)))]
mod fork_safe {
    use std::cell::Cell;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, MutexGuard};

    use super::Slot;

    std::thread_local! {
        /// The forking thread's hold on `SLOTS`, from `prepare` to `release`.
        static HELD: Cell<Option<MutexGuard<'static, Vec<Arc<Slot>>>>> = const { Cell::new(None) };
    }

    extern "C" fn prepare() {
        let guard = super::SLOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A thread whose thread-locals are gone forks unprotected.
        let _ = HELD.try_with(move |h| h.set(Some(guard)));
    }

    extern "C" fn release() {
        let _ = HELD.try_with(|h| drop(h.take()));
    }

    /// Registers the fork handlers, once. Failure to register leaves a
    /// child that forks while another thread holds the lock as before
    /// (documented).
    pub(super) fn install() {
        static REGISTERED: AtomicBool = AtomicBool::new(false);
        crate::platform::at_fork_once(&REGISTERED, prepare, release, release);
    }
}

/// Counts work done on a thread whose freeq state is already gone (thread
/// exit: frees run by the exit path, `defer` and `retire` from late
/// thread-local destructors). It goes straight to the exited-threads total.
pub(crate) fn count_late(deferred: usize, freed: usize, retired: usize) {
    let add = |to: &AtomicU64, n: usize| {
        if n != 0 {
            to.fetch_add(n as u64, Relaxed);
        }
    };
    add(&EXITED.deferred, deferred);
    add(&EXITED.freed, freed);
    add(&EXITED.retired, retired);
}

/// Counts frees held back by the allocator and made by a thread's exit
/// path (its state is gone by then).
pub(crate) fn count_late_frees(n: usize) {
    if n != 0 {
        EXITED.deferred_frees.fetch_add(n as u64, Relaxed);
    }
}

/// Reads the counters of every thread and sums them.
pub fn stats() -> Stats {
    let mut s = Stats::default();
    let live = slots();
    for slot in live.iter().map(|s| &**s).chain([&EXITED]) {
        s.deferred += slot.deferred.load(Relaxed);
        s.freed += slot.freed.load(Relaxed);
        s.drains += slot.drains.load(Relaxed);
        s.max_pending = s.max_pending.max(slot.max_pending.load(Relaxed));
        s.offloaded += slot.offloaded.load(Relaxed);
        s.retired += slot.retired.load(Relaxed);
        s.inline_fallbacks += slot.inline_fallbacks.load(Relaxed);
        s.deferred_frees += slot.deferred_frees.load(Relaxed);
    }
    s
}

/// One thread's unpublished counts, kept in its own state.
pub(crate) struct LocalCounts {
    pub(crate) deferred: Cell<u64>,
    pub(crate) freed: Cell<u64>,
    pub(crate) drains: Cell<u64>,
    pub(crate) max_pending: Cell<u64>,
    pub(crate) offloaded: Cell<u64>,
    pub(crate) retired: Cell<u64>,
    pub(crate) inline_fallbacks: Cell<u64>,
    pub(crate) deferred_frees: Cell<u64>,
    /// This thread's slot, registered on its first publish. A `Cell`, so
    /// that the exit path can take it through a shared reference (the
    /// thread's state has no destructor of its own).
    slot: Cell<Option<Arc<Slot>>>,
}

impl LocalCounts {
    pub(crate) const fn new() -> Self {
        LocalCounts {
            deferred: Cell::new(0),
            freed: Cell::new(0),
            drains: Cell::new(0),
            max_pending: Cell::new(0),
            offloaded: Cell::new(0),
            retired: Cell::new(0),
            inline_fallbacks: Cell::new(0),
            deferred_frees: Cell::new(0),
            slot: Cell::new(None),
        }
    }

    /// Counts wrap: a `sub` may run before the `add` it cancels, and the
    /// deltas are published (with wrapping atomics) only once both ran.
    #[inline(always)]
    pub(crate) fn add(cell: &Cell<u64>, n: usize) {
        cell.set(cell.get().wrapping_add(n as u64));
    }

    #[inline(always)]
    pub(crate) fn sub(cell: &Cell<u64>, n: usize) {
        cell.set(cell.get().wrapping_sub(n as u64));
    }

    /// Moves the counts into this thread's slot. Only this thread writes
    /// it, so plain loads and stores do (no read-modify-write on the drain
    /// path).
    pub(crate) fn publish(&self) {
        let slot = self.slot.take().unwrap_or_else(|| {
            let slot = Arc::new(Slot::new());
            slots().push(slot.clone());
            slot
        });
        self.move_into(&slot, |to, n| {
            to.store(to.load(Relaxed).wrapping_add(n), Relaxed)
        });
        self.slot.set(Some(slot));
    }

    /// Thread exit: the counts, and the slot's, go to the exited-threads
    /// total, and the slot leaves the registry (under its lock, so a
    /// concurrent [`stats`] sees them in exactly one of the two places).
    pub(crate) fn publish_at_exit(&self) {
        let mut live = slots();
        if let Some(slot) = self.slot.take() {
            live.retain(|s| !Arc::ptr_eq(s, &slot));
            EXITED.absorb(&slot);
        }
        self.move_into(&EXITED, |to, n| {
            to.fetch_add(n, Relaxed);
        });
    }

    fn move_into(&self, slot: &Slot, add: impl Fn(&AtomicU64, u64)) {
        let flush = |cell: &Cell<u64>, to: &AtomicU64| {
            let n = cell.replace(0);
            if n != 0 {
                add(to, n);
            }
        };
        flush(&self.deferred, &slot.deferred);
        flush(&self.freed, &slot.freed);
        flush(&self.drains, &slot.drains);
        flush(&self.offloaded, &slot.offloaded);
        flush(&self.retired, &slot.retired);
        flush(&self.inline_fallbacks, &slot.inline_fallbacks);
        flush(&self.deferred_frees, &slot.deferred_frees);
        let max = self.max_pending.get();
        if max > slot.max_pending.load(Relaxed) {
            slot.max_pending.fetch_max(max, Relaxed);
        }
    }
}
