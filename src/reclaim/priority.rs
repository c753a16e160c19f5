//! How freeq's own reclaimer threads are scheduled.
//!
//! A process-wide [`ReclaimerPriority`]; freeq's reclaimers apply it when
//! they start and switch before their next batch when it changes. This
//! file calls `platform` and the `sync` shim only.

use std::sync::atomic::Ordering::Relaxed as StaticRelaxed;

use crate::sync::StaticAtomicUsize;

/// How freeq's own reclaimer threads are scheduled; see
/// [`set_reclaimer_priority`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReclaimerPriority {
    /// The default: idle priority (`SCHED_IDLE` on Linux, the background
    /// QoS class on macOS, `THREAD_PRIORITY_IDLE` on Windows; elsewhere,
    /// FreeBSD included, normal priority). A reclaimer
    /// runs only on a CPU that has nothing else to do, so it never takes a
    /// busy producer's CPU. On a machine whose every CPU is busy it gets
    /// almost no time: the backlog bound then turns producers back to
    /// inline frees, and `quiesce()` frees what is still waiting itself.
    Idle,
    /// The scheduler's ordinary class: reclaimers share busy CPUs fairly
    /// with other threads. For saturated machines where handed-off memory
    /// must still come back promptly, and for tests that wait on
    /// reclaimers while the machine is busy.
    Normal,
}

static PRIORITY: StaticAtomicUsize = StaticAtomicUsize::new(0);

/// Sets how freeq's reclaimer threads are scheduled, process-wide
/// (default [`ReclaimerPriority::Idle`]). Running reclaimers switch before
/// their next batch; threads started later start with it. Reclaimers of a
/// [`set_offload_executor`](crate::set_offload_executor) executor are the executor's business.
///
/// ```
/// use freeq::ReclaimerPriority;
/// freeq::set_reclaimer_priority(ReclaimerPriority::Normal);
/// assert_eq!(freeq::reclaimer_priority(), ReclaimerPriority::Normal);
/// freeq::set_reclaimer_priority(ReclaimerPriority::Idle);
/// ```
pub fn set_reclaimer_priority(priority: ReclaimerPriority) {
    PRIORITY.store(priority as usize, StaticRelaxed);
}

/// The priority set by [`set_reclaimer_priority`].
pub fn reclaimer_priority() -> ReclaimerPriority {
    match PRIORITY.load(StaticRelaxed) {
        0 => ReclaimerPriority::Idle,
        _ => ReclaimerPriority::Normal,
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// On freeq's own reclaimer threads, the priority last applied
    /// (`usize::MAX` before the first); `None` on every other thread,
    /// including those that drive a [`Reclaimer`] by hand.
    static APPLIED: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as one of freeq's reclaimers and applies the
/// current [`ReclaimerPriority`].
pub(crate) fn become_reclaimer() {
    #[cfg(not(loom))]
    APPLIED.with(|a| a.set(Some(usize::MAX)));
    follow_priority();
}

/// On freeq's own reclaimer threads, switches to the priority set by
/// [`set_reclaimer_priority`] if it changed; elsewhere does nothing.
pub(crate) fn follow_priority() {
    #[cfg(not(loom))]
    APPLIED.with(|a| {
        let Some(applied) = a.get() else { return };
        let want = PRIORITY.load(StaticRelaxed);
        if applied == want {
            return;
        }
        a.set(Some(want));
        crate::platform::set_idle_priority(want == 0);
    });
}
