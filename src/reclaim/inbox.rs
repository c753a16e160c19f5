//! Inboxes: where handed-off batches wait for a reclaimer.
//!
//! A drain hands its whole batch (one buffer, however many items) to the
//! inbox of the CPU it runs on by pushing one node on a lock-free stack:
//! O(1), no lock, no per-item work. A reclaimer takes a whole inbox at
//! once, restores FIFO order and frees each batch through its own thread's
//! queue, so frees that defer more stay iterative. Freed nodes go back to
//! the inbox for producers to reuse. This file calls the queue's buffer
//! and `inline.rs` (to free a batch here); the reclaimer drives it.

use std::ptr;

use crate::profile::probe::Freeing;
use crate::profile::table::Mark;
use crate::queue::buffer::Buffer;
use crate::queue::section::{depth, max_retained};
use crate::reclaim::inline::{Frees, flush_contained, free_contained};
use crate::sync::{AtomicPtr, AtomicUsize, Ordering::*};

/// One handed-off batch on an inbox's stack.
pub(crate) struct Node {
    next: *mut Node,
    pub(crate) batch: Buffer,
    /// Items the batch counts for.
    pub(crate) items: usize,
    /// A sampled section's batch: its free is added to the section's site.
    pub(crate) mark: Option<Mark>,
}

impl Node {
    pub(crate) fn boxed(batch: Buffer, items: usize, mark: Option<Mark>) -> Box<Node> {
        Box::new(Node {
            next: ptr::null_mut(),
            batch,
            items,
            mark,
        })
    }
}

/// One CPU's inbox: a Treiber stack of handed-off batches, newest first.
pub(crate) struct Inbox {
    pub(crate) head: AtomicPtr<Node>,
    /// Items handed to this inbox and not yet freed.
    pub(crate) outstanding: AtomicUsize,
    /// When the oldest batch now waiting here arrived, in microseconds
    /// since the reclaimer was built, plus one; 0 when none is known. Set
    /// by the push that finds the inbox empty, cleared when a reclaimer or
    /// `quiesce` takes the whole inbox. Only a hint (a race may leave it
    /// unset for a while, or set on an empty inbox until the next push):
    /// it decides whether a producer frees inline, never whether an item
    /// is freed.
    pub(crate) since: AtomicUsize,
    /// Treiber stack of freed nodes, their buffers emptied but keeping their
    /// memory, for producers to reuse: steady-state offloading allocates
    /// nothing.
    returned: AtomicPtr<Node>,
    /// Nodes on `returned` (roughly; it only caps the pool).
    returned_len: AtomicUsize,
    /// How batches are freed here (what is left at drop too).
    frees: Frees,
}

impl Inbox {
    pub(crate) fn new(frees: Frees) -> Inbox {
        Inbox {
            frees,
            head: AtomicPtr::new(ptr::null_mut()),
            outstanding: AtomicUsize::new(0),
            since: AtomicUsize::new(0),
            returned: AtomicPtr::new(ptr::null_mut()),
            returned_len: AtomicUsize::new(0),
        }
    }

    /// Pushes `node` on `stack` (a Treiber stack of owned nodes); `true`
    /// if the stack was empty.
    pub(crate) fn push_on(stack: &AtomicPtr<Node>, node: Box<Node>) -> bool {
        let node = Box::into_raw(node);
        let mut head = stack.load(Relaxed);
        loop {
            // SAFETY: (1) `node` is ours alone until the exchange below
            // publishes it.
            unsafe { (*node).next = head };
            match stack.compare_exchange_weak(head, node, SeqCst, Relaxed) {
                Ok(_) => return head.is_null(),
                Err(now) => head = now,
            }
        }
    }

    /// Takes every batch waiting here, oldest first.
    pub(crate) fn take_all(&self) -> Fifo {
        // Acquire: finding the inbox empty because a runner swapped it out
        // must make that runner's `taken` announcement visible (quiesce
        // then waits for it).
        if self.head.load(Acquire).is_null() {
            return Fifo(ptr::null_mut());
        }
        let mut head = self.head.swap(ptr::null_mut(), SeqCst);
        self.since.store(0, Relaxed);
        let mut fifo: *mut Node = ptr::null_mut();
        while !head.is_null() {
            // SAFETY: (2) the swap above took ownership of the whole chain;
            // every node in it came from `Box::into_raw` in `push_on`.
            unsafe {
                let next = (*head).next;
                (*head).next = fifo;
                fifo = head;
                head = next;
            }
        }
        Fifo(fifo)
    }

    /// In a forked child, from the fork hook: leaves every batch waiting
    /// here to the parent, whose threads handed them over and whose
    /// reclaimers free them there. The child never runs its copies (their
    /// frees are the parent's deferred work, and may take locks that
    /// threads the child does not have held at the fork) and stops
    /// counting them. Async-signal-safe: atomics and a walk over the
    /// chain, no allocation, no free.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn abandon_all(&self) {
        let fifo = self.take_all();
        let n = fifo.items();
        // The child's copies of the nodes stay where they are, unfreed.
        std::mem::forget(fifo);
        let _ = self
            .outstanding
            .fetch_update(Release, Relaxed, |o| Some(o.saturating_sub(n)));
    }

    /// Takes one freed node for reuse. The whole pool is swapped out (no
    /// ABA: nodes are never popped one by one from the shared stack) and
    /// all but the first node pushed back.
    pub(crate) fn take_returned(&self) -> Option<Box<Node>> {
        if self.returned.load(Relaxed).is_null() {
            return None;
        }
        let head = self.returned.swap(ptr::null_mut(), Acquire);
        if head.is_null() {
            return None;
        }
        // SAFETY: (3) the swap took ownership of the whole chain; every node
        // in it came from `Box::into_raw` in `push_on`.
        let mut node = unsafe { Box::from_raw(head) };
        let mut rest = std::mem::replace(&mut node.next, ptr::null_mut());
        self.returned_len.fetch_sub(1, Relaxed);
        while !rest.is_null() {
            // SAFETY: (4) as in (3).
            let mut other = unsafe { Box::from_raw(rest) };
            rest = std::mem::replace(&mut other.next, ptr::null_mut());
            Self::push_on(&self.returned, other);
        }
        Some(node)
    }

    /// Keeps a freed node (emptied, memory trimmed) for reuse, up to a cap.
    fn give_back(&self, mut node: Box<Node>) {
        if self.returned_len.load(Relaxed) >= MAX_RETURNED || !node.batch.is_empty() {
            return;
        }
        node.batch.trim(max_retained());
        self.returned_len.fetch_add(1, Relaxed);
        Self::push_on(&self.returned, node);
    }

    /// Frees every batch in `fifo` on this thread, in order, containing
    /// panics. `in_hand` counts the items taken and not yet freed (see
    /// `Runner::in_hand`).
    ///
    /// On a runner (`runner`), a free that leaves a section open (a leaked
    /// guard) would keep everything later frees defer in the runner's
    /// queue for good: after each batch, the queue is then flushed, so
    /// that what a batch's frees defer is freed before the batch counts as
    /// done.
    pub(crate) fn free_all(
        &self,
        mut fifo: Fifo,
        courteous: bool,
        in_hand: Option<&AtomicUsize>,
        runner: bool,
    ) {
        let entered = runner.then(depth);
        while let Some(mut node) = fifo.pop() {
            let timed = Freeing::start(node.mark.take());
            free_contained(&mut node.batch, self.frees);
            drop(timed);
            if entered.is_some_and(|d| depth() > d) {
                flush_contained(self.frees);
            }
            if let Some(in_hand) = in_hand {
                // Before `outstanding`: a fork in between leaves the child
                // counting this batch once too often, never once too few.
                in_hand.fetch_sub(node.items, Relaxed);
            }
            self.outstanding.fetch_sub(node.items, Release);
            self.give_back(node);
            if courteous {
                // When the scheduler does hand an idle-priority reclaimer
                // the CPU of a busy producer, the producer may be inside a
                // critical section: give the CPU back after every batch
                // rather than at the end of a time slice.
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Whatever is still here is freed, never leaked.
        let fifo = self.take_all();
        self.free_all(fifo, false, None, false);
        while self.take_returned().is_some() {}
    }
}

/// An owned chain of nodes, oldest first.
pub(crate) struct Fifo(*mut Node);

impl Fifo {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_null()
    }

    /// Items the chain's batches count for.
    pub(crate) fn items(&self) -> usize {
        let mut n = 0;
        let mut node = self.0;
        while !node.is_null() {
            // SAFETY: (5a) the chain is owned by this `Fifo`; every node in
            // it is live until popped.
            unsafe {
                n += (*node).items;
                node = (*node).next;
            }
        }
        n
    }

    fn pop(&mut self) -> Option<Box<Node>> {
        if self.0.is_null() {
            return None;
        }
        // SAFETY: (5) the chain is owned by this `Fifo` (taken from an
        // inbox by `take_all`); each node is taken off exactly once.
        let mut node = unsafe { Box::from_raw(self.0) };
        self.0 = std::mem::replace(&mut node.next, ptr::null_mut());
        Some(node)
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        // Reached only if freeing unwound past the loop: drop the nodes
        // (their buffers free what they still hold).
        while let Some(node) = self.pop() {
            drop(node);
        }
    }
}

/// Most freed nodes an inbox keeps for reuse.
const MAX_RETURNED: usize = crate::sync::scaled(64, 2);
