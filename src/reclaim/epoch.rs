//! Epoch retirement: frees that must also wait for lock-free readers.
//!
//! A drained batch of retired items goes to crossbeam-epoch as one
//! deferred call; when the epoch collects it, the batch is freed through
//! the queue of the thread that collected it, with the [`Frees`] the
//! dispatcher handed over. This file calls crossbeam-epoch, the queue's
//! buffer and panic helpers, `inline.rs` for the `Frees` type, and
//! `platform` for the fork generation.

use std::panic::{self, AssertUnwindSafe};

use crate::platform;
use crate::queue::buffer::Buffer;
use crate::queue::panic::drop_quietly;
use crate::reclaim::inline::Frees;

/// Hands a drained batch of retired items to crossbeam-epoch as one
/// deferred call, and pushes it on to the global queue at once (with a
/// collection attempt), so that a thread that retires rarely does not keep
/// its batch in crossbeam's per-thread bag indefinitely.
///
/// On a thread that is `exiting`, the batch goes through a participant
/// registered for this call alone, not crossbeam's thread-local one: that
/// thread-local may be created only now, after the thread's thread-local
/// destructors ran (freeq's exit path can run from a pthread key
/// destructor), and would then never be destroyed (its participant never
/// unregistered).
pub(crate) fn defer_batch(batch: Buffer, frees: Frees, exiting: bool) {
    let handle = exiting.then(|| crossbeam_epoch::default_collector().register());
    let guard = match &handle {
        Some(handle) => handle.pin(),
        None => crossbeam_epoch::pin(),
    };
    // crossbeam-epoch's global garbage survives `fork()`: a child's own
    // pins advance the epoch and would run the parent's batch there. It is
    // the parent's (the parent frees its copy), and its frees may take
    // locks held by threads the child does not have, so a child leaves its
    // copy unfreed (see `fork_generation`).
    let generation = platform::fork_generation();
    guard.defer(move || {
        if platform::fork_generation() != generation {
            std::mem::forget(batch);
            return;
        }
        // Runs inside whatever pin or flush collected it: contained.
        let freed = panic::catch_unwind(AssertUnwindSafe(move || {
            let mut batch = batch;
            (frees.free_here)(&mut batch);
        }));
        if let Err(payload) = freed {
            drop_quietly(payload);
        }
    });
    guard.flush();
}
