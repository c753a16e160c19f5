//! Raw frees: frees of memory (not queue items) that a layer above the
//! queue, the allocator's `DeferFrees`, holds
//! back while this thread is in a section. The queue knows one function to
//! call, which frees them and says how many: the drain of the outermost
//! section calls it after the queue's own items (as does
//! `flush`), and so does the thread's exit path.
//!
//! It owns one per-thread slot (what to call, and whether the exit path is
//! registered) and calls nothing above the queue: the allocator calls down
//! into it.

use crate::sync::{Cell, freeq_thread_local};

/// This thread's part: what to call, and whether the exit path that
/// calls it is registered.
struct RawFrees {
    run: Cell<Option<fn() -> usize>>,
    exit_hooked: Cell<bool>,
}

freeq_thread_local! {
    static RAW: RawFrees = RawFrees {
        run: Cell::new(None),
        exit_hooked: Cell::new(false),
    };
}

/// Frees are about to wait, where none did: `run` frees them when the
/// outermost section closes. False where they cannot wait after all:
/// the thread's exit path is not registered, so a leaked section could
/// strand them (registering it may allocate). Allocation-free, as
/// `section::may_hold_frees`.
#[inline]
pub(crate) fn first_held(run: fn() -> usize) -> bool {
    RAW.try_with(|r| {
        let hooked = r.exit_hooked.get();
        if hooked {
            r.run.set(Some(run));
        }
        hooked
    })
    .unwrap_or(false)
}

/// Whether frees wait.
#[inline(always)]
pub(crate) fn pending() -> bool {
    RAW.try_with(|r| r.run.get().is_some()).unwrap_or(false)
}

/// Runs the waiting frees; how many there were.
pub(crate) fn run() -> usize {
    match RAW.try_with(|r| r.run.take()) {
        Ok(Some(run)) => run(),
        _ => 0,
    }
}

/// The exit path is registered.
pub(crate) fn exit_hooked() {
    let _ = RAW.try_with(|r| r.exit_hooked.set(true));
}
