//! What the queue asks of the layer above it, as a trait the caller
//! supplies.
//!
//! The queue fills and drains; it does not decide where a drained batch
//! goes, how drops are timed, or what becomes of retired items. Every
//! queue entry that may drain takes a [`Sink`] as a type parameter, chosen
//! by its caller (the dispatcher in `reclaim`), so the queue calls up
//! through nothing but this trait. This file names the buffer and the
//! panic type; nothing else.

use crate::queue::buffer::Buffer;
use crate::queue::hooks::DropTimer;
use crate::queue::panic::Panic;

/// Where a drained batch goes: implemented above the queue.
pub(crate) trait Sink: 'static {
    /// Times the runs the queue frees here, for the cost model.
    type Timer: DropTimer;

    /// Takes a batch of retired items (for the epoch). `exiting`: the
    /// thread's state is gone (its exit path, or a late thread-local
    /// destructor), and thread-locals with destructors registered now
    /// might never be destroyed.
    fn retire(batch: Buffer, exiting: bool);

    /// Offered each batch of deferred items before the queue frees it
    /// here; `policy` is the thread's own setting (0: the default). A
    /// panic from whatever takes the batch goes to `first`.
    fn offer(policy: u8, batch: Buffer, first: &mut Option<Panic>) -> Offer;
}

/// What [`Sink::offer`] did with a batch.
pub(crate) enum Offer {
    /// Not offered on: free it here.
    Kept(Buffer),
    /// Offered, but nothing could take it: free it here (an inline
    /// fallback).
    Refused(Buffer),
    /// Taken: `items` items in blocks of `bytes` bytes. The buffer given
    /// back, if any, is an emptied one (its blocks for the queue to reuse).
    Taken {
        /// Items the batch held.
        items: usize,
        /// The batch's [`Buffer::capacity_bytes`].
        bytes: usize,
        /// An emptied buffer to reuse.
        recycled: Option<Buffer>,
    },
}
