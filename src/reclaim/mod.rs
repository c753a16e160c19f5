//! The reclaim layer: where a drained batch goes.
//!
//! Above the queue and below the locks. [`dispatch`] is the queue's sink
//! and the one way in: it decides, batch by batch, between freeing inline
//! (the queue frees it), freeq's reclaimer pool ([`pool`], [`reclaimer`],
//! [`inbox`], [`priority`]), the user's executor ([`executor`]) and, for
//! retired items, the epoch ([`epoch`]), by the thread's [`policy`], the
//! [`thresholds`] and the learned drop costs ([`cost`], timed with
//! [`timing`]). The sinks free a batch through the queue's "free here"
//! calls (downward), bound to the dispatcher and handed to them as an
//! [`inline::Frees`], so no file here imports the dispatcher but the
//! top-level and lock-layer entries. Nothing here imports the lock layer.

pub(crate) mod cost;
pub(crate) mod dispatch;
pub(crate) mod epoch;
pub(crate) mod executor;
pub(crate) mod inbox;
pub(crate) mod inline;
pub(crate) mod policy;
pub(crate) mod pool;
pub(crate) mod priority;
pub(crate) mod reclaimer;
pub(crate) mod thresholds;
pub(crate) mod timing;
