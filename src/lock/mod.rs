//! The lock layer: freeq's guards and the locks built on them.
//!
//! Every lock here opens a section when it is taken and closes it when it
//! is released (through the dispatcher in `reclaim`, which frees the batch
//! the outermost close yields), and readies the thread before it takes the
//! inner lock. [`guard`] has `LockGuard` and `Section`, [`std_lock`] the
//! std-backed `Mutex` and `RwLock`, [`raw`] `RawDeferred` over any
//! lock_api raw lock (`raw04` the same for lock_api 0.4), [`condvar`] the condition variables, [`async_guard`] the guard that
//! carries its own bin across `.await`, `tokio` tokio's locks with it,
//! `parking_lot`
//! parking_lot's locks and `loom` the loom-aware raw locks behind them under
//! `--cfg loom`. This layer may call the queue and reclaim layers and the
//! top-level `sync`; nothing below it calls into it.

pub(crate) mod async_guard;
pub(crate) mod condvar;
pub(crate) mod guard;
#[cfg(loom)]
pub mod loom;
#[cfg(feature = "parking_lot")]
pub mod parking_lot;
pub(crate) mod raw;
#[cfg(feature = "lock_api_04")]
mod raw04;
pub(crate) mod std_lock;
#[cfg(feature = "tokio")]
pub mod tokio;
