//! `FreeQueue`: an explicit, owned queue of deferred frees.
//!
//! A buffer of the queue layer's, owned rather than per-thread. It calls
//! the queue layer's buffer, the cost model's timer (a drain times its
//! frees like any other), `defer` (for `defer_all`) and, to hand a whole
//! queue to a [`Reclaimer`] (tests and loom models), the reclaimer.

use std::fmt;

use crate::defer::defer_fn;
use crate::queue::buffer::Buffer;
use crate::queue::panic::resume;
use crate::queue::section::max_retained;
use crate::reclaim::cost::Learn;
use crate::reclaim::reclaimer::Reclaimer;

/// An owned queue of values to free later: the kernel's `kmem_free_q_head`
/// as a value. Push under a lock, [`drain`](FreeQueue::drain) after it;
/// dropping the queue drains it too, so nothing is ever lost.
///
/// Unlike the per-thread queue it is `Send`: fill it on one thread, free it
/// on another.
///
/// ```
/// let m = std::sync::Mutex::new(vec![vec![0u8; 64]; 8]);
/// let mut q = freeq::FreeQueue::new();
/// {
///     let mut g = m.lock().unwrap();
///     for slot in g.iter_mut() {
///         q.push(std::mem::take(slot));
///     }
/// }
/// assert_eq!(q.len(), 8);
/// q.drain(); // after the unlock
/// assert!(q.is_empty());
/// ```
#[derive(Default)]
pub struct FreeQueue {
    items: Buffer,
    /// Items pushed since the last drain (the storage keeps no count).
    len: usize,
}

impl FreeQueue {
    /// An empty queue; allocates on first push.
    pub const fn new() -> Self {
        FreeQueue {
            items: Buffer::new(),
            len: 0,
        }
    }

    /// Queues `value` to be dropped at the next drain.
    #[inline]
    pub fn push<T: Send + 'static>(&mut self, value: T) {
        self.items.push(move || drop(value));
        self.len += 1;
    }

    /// Queues `value` to be freed by `free(value)` at the next drain.
    #[inline]
    pub fn push_with<T, F>(&mut self, value: T, free: F)
    where
        T: Send + 'static,
        F: FnOnce(T) + Send + 'static,
    {
        self.items.push(move || free(value));
        self.len += 1;
    }

    /// Queues `action` to run at the next drain.
    #[inline]
    pub fn push_fn<F: FnOnce() + Send + 'static>(&mut self, action: F) {
        self.items.push(action);
        self.len += 1;
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Frees everything, oldest first, keeping the memory for reuse. If a
    /// free panics, the rest are still freed and the first panic resumes
    /// afterwards.
    pub fn drain(&mut self) {
        let mut first = None;
        // Every item runs (a panicking one too) before this returns.
        self.len = 0;
        self.items.run_all::<Learn>(&mut first);
        self.items.trim(max_retained());
        resume(first);
    }

    /// Takes every item (and the blocks that hold them), leaving the
    /// queue empty.
    pub(crate) fn take_buffer(&mut self) -> Buffer {
        self.len = 0;
        std::mem::take(&mut self.items)
    }

    /// Moves everything into this thread's free queue, to be freed when the
    /// thread leaves its outermost section (at once outside a section).
    pub fn defer_all(mut self) {
        let items = std::mem::take(&mut self.items);
        defer_fn(move || drop(FreeQueue { items, len: 0 }));
    }
}

/// A queue dropped with items frees them here, timed like any drain.
impl Drop for FreeQueue {
    fn drop(&mut self) {
        let mut first = None;
        self.items.run_all::<Learn>(&mut first);
        resume(first);
    }
}

impl fmt::Debug for FreeQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreeQueue")
            .field("len", &self.len())
            .finish()
    }
}

/// Handing a whole [`FreeQueue`] to a reclaimer (for tests and the loom
/// models, which drive reclaimers by hand).
impl Reclaimer {
    /// Hands a whole [`FreeQueue`] to inbox 0, ignoring the bound.
    pub fn hand_off_queue(&self, queue: FreeQueue) {
        self.hand_off_queue_to(0, queue);
    }

    /// Hands a whole [`FreeQueue`] to inbox `index` (modulo the inbox
    /// count), ignoring the bound.
    pub fn hand_off_queue_to(&self, index: usize, mut queue: FreeQueue) {
        let batch = queue.take_buffer();
        let n = batch.len();
        self.hand_off_buffer(index, batch, n);
    }
}
