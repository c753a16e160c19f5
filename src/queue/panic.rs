//! Panics caught while freeing: keep the first, drop the rest quietly,
//! resume the kept one once a batch is done.
//!
//! Every layer that runs frees uses these; they call nothing in freeq but
//! the `sync` shim.

use std::any::Any;
use std::mem;
use std::panic::{self, AssertUnwindSafe};

use crate::sync::thread;

/// A panic payload caught while freeing an item.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

/// Stores `payload` as the first panic, or drops it if one is kept already.
pub(crate) fn keep_first(first: &mut Option<Panic>, payload: Panic) {
    if first.is_none() {
        *first = Some(payload);
    } else {
        drop_quietly(payload);
    }
}

/// Drops a panic payload, swallowing a panic from its own destructor (and
/// from that panic's payload, a few levels deep; past that the payload is
/// leaked rather than let unwind).
pub(crate) fn drop_quietly(payload: Panic) {
    let mut payload = payload;
    for _ in 0..8 {
        match panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            Ok(()) => return,
            Err(next) => payload = next,
        }
    }
    mem::forget(payload);
}

/// Resumes the kept panic, unless the thread is already unwinding (a second
/// panic would abort the process; the one in flight wins).
pub(crate) fn resume(first: Option<Panic>) {
    if let Some(payload) = first {
        if thread::panicking() {
            drop_quietly(payload);
        } else {
            panic::resume_unwind(payload);
        }
    }
}
