//! Epoch retirement: frees that must also wait for lock-free readers.
//!
//! A drained batch of retired items goes to crossbeam-epoch as one
//! deferred call; when the epoch collects it, the batch is freed through
//! the queue of the thread that collected it, with the [`Frees`] the
//! dispatcher handed over. This file calls crossbeam-epoch, the queue's
//! buffer and panic helpers, and `inline.rs` for the `Frees` type.

use std::panic::{self, AssertUnwindSafe};

use crate::queue::buffer::Buffer;
use crate::queue::panic::drop_quietly;
use crate::reclaim::inline::Frees;

/// Hands a drained batch of retired items to crossbeam-epoch as one
/// deferred call, and pushes it on to the global queue at once (with a
/// collection attempt), so that a thread that retires rarely does not keep
/// its batch in crossbeam's per-thread bag indefinitely.
pub(crate) fn defer_batch(batch: Buffer, frees: Frees) {
    let guard = crossbeam_epoch::pin();
    guard.defer(move || {
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
