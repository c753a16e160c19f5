//! Freeing inline on a thread that must not hand anything off.
//!
//! A reclaimer, a `quiesce` caller, a `Batch::free` and the exit hook free
//! the batches they hold on their own thread, through that thread's queue,
//! and must not send what those frees defer elsewhere: [`InlineOnly`]
//! marks such a thread while it frees. The "free here" calls themselves
//! come from the dispatcher as a [`Frees`] (the queue's entries with the
//! dispatcher as their sink), so that this file, and every sink that frees
//! through it, calls the queue layer downward only and never the
//! dispatcher.

use std::panic::{self, AssertUnwindSafe};

use crate::queue::buffer::Buffer;
use crate::queue::panic::{Panic, resume};
use crate::queue::section::{in_section, run_here};
use crate::reclaim::cost::Learn;
use crate::sync::{Cell, freeq_thread_local};

/// How a sink frees on this thread: the queue's "free this batch here"
/// and flush entries, bound to the dispatcher by the dispatcher.
#[derive(Clone, Copy)]
pub(crate) struct Frees {
    /// Appends a batch to this thread's queue and drains it (outside a
    /// section).
    pub(crate) free_here: fn(&mut Buffer),
    /// Frees everything queued on this thread now.
    pub(crate) flush: fn(),
}

freeq_thread_local! {
    /// Nonzero while this thread must free inline whatever its policy: it is
    /// a reclaimer, or it is freeing batches taken by `quiesce`, a
    /// `Batch::free` or the exit hook. Needs no destructor, so it stays
    /// reachable during thread exit.
    static INLINE_ONLY: Cell<usize> = Cell::new(0);
}

/// Whether this thread frees inline only (see [`InlineOnly`]).
pub(crate) fn inline_only() -> bool {
    INLINE_ONLY.try_with(|c| c.get() != 0).unwrap_or(false)
}

/// Makes this thread free inline while it lives.
pub(crate) struct InlineOnly;

impl InlineOnly {
    pub(crate) fn enter() -> InlineOnly {
        let _ = INLINE_ONLY.try_with(|c| c.set(c.get() + 1));
        InlineOnly
    }
}

impl Drop for InlineOnly {
    fn drop(&mut self) {
        let _ = INLINE_ONLY.try_with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Drops a panic payload whose own destructor may panic: that second
/// payload is forgotten rather than dropped, so nothing can unwind out of
/// a reclaimer's loop.
pub(crate) fn drop_payload(payload: Panic) {
    if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Frees `batch` on this thread, containing any panic (reported by the
/// panic hook, payload dropped safely).
pub(crate) fn free_contained(batch: &mut Buffer, frees: Frees) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| free_batch(batch, frees))) {
        drop_payload(payload);
    }
    if !batch.is_empty() {
        // A drain stopped by a section left open by a free: the items left
        // run here so that none is lost.
        let mut first = None;
        run_here::<Learn>(batch, &mut first);
        if let Some(payload) = first {
            drop_payload(payload);
        }
    }
}

/// Flushes this thread's queue, containing any panic.
pub(crate) fn flush_contained(frees: Frees) {
    if let Err(payload) = panic::catch_unwind(frees.flush) {
        drop_payload(payload);
    }
}

/// Frees `batch` on this thread, inline whatever its policy. Inside a
/// section the items run here and now (they were deferred once already,
/// where they came from); otherwise through this thread's queue.
pub(crate) fn free_batch(batch: &mut Buffer, frees: Frees) {
    let _inline = InlineOnly::enter();
    if in_section() {
        let mut first = None;
        run_here::<Learn>(batch, &mut first);
        resume(first);
    } else {
        (frees.free_here)(batch);
    }
}
