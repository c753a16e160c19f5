//! Who frees a drained batch: the unlocking thread, or a reclaimer.
//!
//! The [`Policy`] type and the process default. A thread's own setting
//! lives in its queue state; the dispatcher reads both when a batch
//! drains. This file calls the `sync` shim only.

use crate::sync::StaticAtomicU8;
use std::sync::atomic::Ordering::Relaxed;

/// How a thread frees its drained queue.
///
/// ```
/// let m = freeq::Mutex::new(());
/// freeq::set_policy(freeq::Policy::Offload);
/// {
///     let _g = m.lock().unwrap();
///     freeq::defer(vec![0u8; 1 << 20]);
/// } // the batch goes to a reclaimer thread in O(1)
/// freeq::quiesce(); // everything handed off so far is freed
/// freeq::set_policy(freeq::Policy::Inline);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The unlocking thread frees its batch right after the unlock (default).
    #[default]
    Inline,
    /// The whole batch is handed, in O(1) and lock-free, to the inbox of
    /// the CPU this thread runs on, where an idle-priority reclaimer thread
    /// frees it (or to the executor set with
    /// [`set_offload_executor`](crate::set_offload_executor)). freeq runs
    /// one reclaimer pinned to each CPU of the process and wakes another
    /// CPU's first: a reclaimer on the producer's own CPU could run only
    /// when the producer leaves it idle. Any reclaimer takes work from any
    /// inbox.
    /// Only batches worth moving leave: those whose learned drop cost
    /// reaches [`offload_threshold_ns`](crate::offload_threshold_ns), and
    /// those holding a type not timed yet, which is timed on the reclaimer
    /// that frees it; cheaper batches are freed inline.
    /// When that inbox is past its backlog bound
    /// ([`set_offload_bound`](crate::set_offload_bound)), or its oldest
    /// batch has waited longer than
    /// [`offload_max_wait`](crate::offload_max_wait) with no reclaimer
    /// taking it, the thread frees inline instead. Reclaimers themselves always free inline, whatever
    /// policy a free sets on them.
    ///
    /// On a target without threads (`wasm32-unknown-unknown`,
    /// `wasm32-wasip1`) no reclaimer can exist: freeq never tries to start
    /// one, and every batch is freed inline, as under `Inline` (a
    /// [`set_offload_executor`](crate::set_offload_executor) executor still
    /// receives batches).
    Offload,
}

impl Policy {
    pub(crate) const fn to_u8(self) -> u8 {
        match self {
            Policy::Inline => 1,
            Policy::Offload => 2,
        }
    }

    pub(crate) const fn from_u8(v: u8) -> Option<Policy> {
        match v {
            1 => Some(Policy::Inline),
            2 => Some(Policy::Offload),
            _ => None,
        }
    }
}

static DEFAULT: StaticAtomicU8 = StaticAtomicU8::new(Policy::Inline.to_u8());

/// Stores the process default (see `set_default_policy`).
pub(crate) fn store_default(policy: Policy) {
    DEFAULT.store(policy.to_u8(), Relaxed);
}

/// The process-wide default policy.
pub fn default_policy() -> Policy {
    Policy::from_u8(DEFAULT.load(Relaxed)).unwrap_or_default()
}
