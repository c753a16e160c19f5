//! Per-CPU reclaimer threads for `Policy::Offload`.
//!
//! A drain hands its whole batch (one buffer, however many items) to the
//! reclaimer of the CPU it runs on by pushing one node on that reclaimer's
//! lock-free inbox: O(1), no lock, no per-item work. A reclaimer takes the
//! whole inbox at once, restores FIFO order and frees each batch through
//! its own thread's queue, so frees that defer more stay iterative. Idle
//! reclaimers park; a producer unparks one only if it announced it was
//! going to sleep. The count of items handed over and not yet freed bounds
//! the backlog: past it, producers free inline.

use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::Ordering::Relaxed as StaticRelaxed;
use std::sync::OnceLock;

use crate::item::Buffer;
use crate::queue;
use crate::sync::{fence, thread, AtomicBool, AtomicPtr, AtomicUsize, Condvar, Mutex, Ordering::*};
use crate::sync::{Arc, StaticAtomicUsize};
use crate::FreeQueue;

/// Default bound on items handed to one reclaimer and not yet freed.
pub const DEFAULT_OFFLOAD_BOUND: usize = crate::sync::scaled(1 << 16, 64);

static BOUND: StaticAtomicUsize = StaticAtomicUsize::new(DEFAULT_OFFLOAD_BOUND);

/// Sets how many offloaded items one reclaimer may have outstanding before
/// producers free inline instead (default [`DEFAULT_OFFLOAD_BOUND`]). A
/// batch is always accepted by an idle reclaimer, whatever its size.
///
/// ```
/// freeq::set_offload_bound(1024);
/// assert_eq!(freeq::offload_bound(), 1024);
/// # freeq::set_offload_bound(freeq::DEFAULT_OFFLOAD_BOUND);
/// ```
pub fn set_offload_bound(items: usize) {
    BOUND.store(items, StaticRelaxed);
}

/// The bound set by [`set_offload_bound`].
pub fn offload_bound() -> usize {
    BOUND.load(StaticRelaxed)
}

struct Node {
    next: *mut Node,
    batch: Buffer,
    /// Items the batch counts for (0 for a quiesce marker).
    items: usize,
}

impl Node {
    fn boxed(batch: Buffer, items: usize) -> Box<Node> {
        Box::new(Node {
            next: ptr::null_mut(),
            batch,
            items,
        })
    }
}

/// A reclaimer: an inbox of batches and the thread that frees them.
///
/// freeq starts one per CPU, lazily, for [`Policy::Offload`](crate::Policy);
/// this type is public (and hidden) so that the loom models can drive one
/// with their own threads.
#[doc(hidden)]
pub struct Reclaimer {
    /// Treiber stack of handed-off batches, newest first.
    inbox: AtomicPtr<Node>,
    /// Set by the reclaimer just before it parks.
    sleeping: AtomicBool,
    shutdown: AtomicBool,
    /// Items handed over and not yet freed.
    outstanding: AtomicUsize,
    /// Treiber stack of freed nodes, their buffers emptied but keeping their
    /// memory, for producers to reuse: steady-state offloading allocates
    /// nothing.
    returned: AtomicPtr<Node>,
    /// Nodes on `returned` (roughly; it only caps the pool).
    returned_len: AtomicUsize,
    thread: OnceLock<thread::Thread>,
    /// Yield the CPU after each batch (freeq's own reclaimers, which share
    /// a CPU with the producers they serve).
    courteous: bool,
}

/// Most freed nodes a reclaimer keeps for reuse.
const MAX_RETURNED: usize = crate::sync::scaled(64, 2);

// SAFETY: (1) the raw pointers in the inbox are owned nodes passed between
// threads through the atomic with release/acquire ordering; each node's
// batch is `Send`. Everything else is atomics and a `OnceLock`.
unsafe impl Send for Reclaimer {}
// SAFETY: (2) as in (1): all shared access goes through atomics.
unsafe impl Sync for Reclaimer {}

impl Default for Reclaimer {
    fn default() -> Self {
        Reclaimer::new()
    }
}

impl Reclaimer {
    /// A reclaimer with an empty inbox and no thread yet.
    pub fn new() -> Self {
        Reclaimer {
            inbox: AtomicPtr::new(ptr::null_mut()),
            sleeping: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            returned: AtomicPtr::new(ptr::null_mut()),
            returned_len: AtomicUsize::new(0),
            thread: OnceLock::new(),
            courteous: false,
        }
    }

    /// Items handed over and not yet freed.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Acquire)
    }

    /// Hands `batch` over unless the backlog is past `bound`. On success,
    /// returns an emptied buffer from an earlier batch, if one is free, for
    /// the producer's next queue.
    fn try_hand_off(&self, batch: Buffer, bound: usize) -> Result<Option<Buffer>, Buffer> {
        let n = batch.len();
        let mut now = self.outstanding.load(Relaxed);
        loop {
            if now != 0 && now + n > bound {
                return Err(batch);
            }
            match self
                .outstanding
                .compare_exchange_weak(now, now + n, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(seen) => now = seen,
            }
        }
        let (node, recycled) = match self.take_returned() {
            Some(mut node) => {
                let empty = std::mem::replace(&mut node.batch, batch);
                node.items = n;
                (node, Some(empty))
            }
            None => (Node::boxed(batch, n), None),
        };
        self.push(node);
        Ok(recycled)
    }

    /// Hands a whole [`FreeQueue`] over, ignoring the bound.
    pub fn hand_off_queue(&self, mut queue: FreeQueue) {
        let batch = std::mem::take(queue.buffer_mut());
        let n = batch.len();
        self.outstanding.fetch_add(n, Relaxed);
        self.push(Node::boxed(batch, n));
    }

    /// Pushes `node` on `stack` (a Treiber stack of owned nodes).
    fn push_on(stack: &AtomicPtr<Node>, node: Box<Node>) {
        let node = Box::into_raw(node);
        let mut head = stack.load(Relaxed);
        loop {
            // SAFETY: (3) `node` is ours alone until the exchange below
            // publishes it.
            unsafe { (*node).next = head };
            match stack.compare_exchange_weak(head, node, SeqCst, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    fn push(&self, node: Box<Node>) {
        Self::push_on(&self.inbox, node);
        // Pairs with the fence in `sleep`: either the reclaimer sees the
        // node, or this load sees it going to sleep.
        fence(SeqCst);
        if self.sleeping.load(SeqCst) && self.sleeping.swap(false, SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Takes one freed node for reuse. The whole pool is swapped out (no
    /// ABA: nodes are never popped one by one from the shared stack) and
    /// all but the first node pushed back.
    fn take_returned(&self) -> Option<Box<Node>> {
        if self.returned.load(Relaxed).is_null() {
            return None;
        }
        let head = self.returned.swap(ptr::null_mut(), Acquire);
        if head.is_null() {
            return None;
        }
        // SAFETY: (4) the swap took ownership of the whole chain; every node
        // in it came from `Box::into_raw` in `push_on`.
        let mut node = unsafe { Box::from_raw(head) };
        let mut rest = std::mem::replace(&mut node.next, ptr::null_mut());
        self.returned_len.fetch_sub(1, Relaxed);
        while !rest.is_null() {
            // SAFETY: (5) as in (4).
            let mut other = unsafe { Box::from_raw(rest) };
            rest = std::mem::replace(&mut other.next, ptr::null_mut());
            Self::push_on(&self.returned, other);
        }
        Some(node)
    }

    /// Keeps a freed node (emptied, memory trimmed) for reuse, up to a cap.
    fn give_back(&self, mut node: Box<Node>) {
        if self.returned_len.load(Relaxed) >= MAX_RETURNED {
            return;
        }
        node.batch.trim(crate::max_retained());
        self.returned_len.fetch_add(1, Relaxed);
        Self::push_on(&self.returned, node);
    }

    /// The reclaimer loop: frees batches as they arrive, parks when idle,
    /// returns once shut down and empty. Call it on the reclaimer's thread.
    pub fn run(&self) {
        let _ = self.thread.set(thread::current());
        queue::set_policy(crate::Policy::Inline);
        loop {
            if self.run_once() {
                continue;
            }
            if self.shutdown.load(SeqCst) && self.inbox.load(SeqCst).is_null() {
                return;
            }
            self.sleep();
        }
    }

    fn sleep(&self) {
        self.sleeping.store(true, SeqCst);
        fence(SeqCst);
        if self.inbox.load(SeqCst).is_null() && !self.shutdown.load(SeqCst) {
            thread::park();
        }
        self.sleeping.store(false, SeqCst);
    }

    /// Frees every batch in the inbox, oldest first; `false` if it was empty.
    /// A panicking free is reported by the panic hook and does not stop the
    /// reclaimer.
    pub fn run_once(&self) -> bool {
        let mut head = self.inbox.swap(ptr::null_mut(), Acquire);
        if head.is_null() {
            return false;
        }
        let mut fifo: *mut Node = ptr::null_mut();
        while !head.is_null() {
            // SAFETY: (6) the swap above took ownership of the whole chain;
            // every node in it came from `Box::into_raw` in `push_on`.
            unsafe {
                let next = (*head).next;
                (*head).next = fifo;
                fifo = head;
                head = next;
            }
        }
        while !fifo.is_null() {
            // SAFETY: (7) as in (6); each node is reclaimed exactly once.
            let mut node = unsafe { Box::from_raw(fifo) };
            fifo = std::mem::replace(&mut node.next, ptr::null_mut());
            let items = node.items;
            let batch = &mut node.batch;
            // A panicking free is reported by the panic hook; the reclaimer
            // goes on. A quiesce marker (no items) runs the same way.
            let _ = panic::catch_unwind(AssertUnwindSafe(|| queue::free_here(batch)));
            if items > 0 {
                self.outstanding.fetch_sub(items, Release);
                self.give_back(node);
            }
            if self.courteous {
                // When the scheduler does hand an idle-priority reclaimer
                // the CPU of a busy producer, the producer may be inside a
                // critical section: give the CPU back after every batch
                // rather than at the end of a time slice.
                std::thread::yield_now();
            }
        }
        true
    }

    /// Asks the loop in [`Reclaimer::run`] to return once the inbox is empty.
    pub fn shutdown(&self) {
        self.shutdown.store(true, SeqCst);
        // Pairs with the fence in `sleep`, which the reclaimer reaches only
        // after publishing its thread handle.
        fence(SeqCst);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    fn is_current(&self) -> bool {
        self.thread
            .get()
            .is_some_and(|t| t.id() == thread::current().id())
    }

    /// Returns once every batch handed over before the call has been freed.
    pub fn quiesce(&self) {
        if self.is_current() {
            while self.run_once() {}
            return;
        }
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = done.clone();
        let mut marker = Buffer::new();
        marker.push(move || {
            let (flag, cv) = &*signal;
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cv.notify_all();
        });
        self.push(Node::boxed(marker, 0));
        let (flag, cv) = &*done;
        let mut seen = flag.lock().unwrap_or_else(|e| e.into_inner());
        while !*seen {
            seen = cv.wait(seen).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        // Whatever is still in the inbox is freed, never leaked.
        while self.run_once() {}
        while self.take_returned().is_some() {}
    }
}

/// One slot per CPU; each starts its reclaimer on first use.
type Slots = Box<[OnceLock<Option<std::sync::Arc<Reclaimer>>>]>;

static RECLAIMERS: OnceLock<Slots> = OnceLock::new();

fn slots() -> &'static Slots {
    RECLAIMERS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).map(|_| OnceLock::new()).collect()
    })
}

/// Starts reclaimer `index`, pinned to a core when the platform allows.
fn start(index: usize) -> Option<std::sync::Arc<Reclaimer>> {
    let mut reclaimer = Reclaimer::new();
    reclaimer.courteous = true;
    let reclaimer = std::sync::Arc::new(reclaimer);
    let mine = reclaimer.clone();
    std::thread::Builder::new()
        .name(format!("freeq-reclaim-{index}"))
        .spawn(move || {
            lower_priority();
            if let Some(cores) = core_affinity::get_core_ids() {
                if let Some(&core) = cores.get(index % cores.len().max(1)) {
                    // Refused pinning is fine: the reclaimer runs unpinned.
                    let _ = core_affinity::set_for_current(core);
                }
            }
            mine.run();
        })
        .ok()?;
    Some(reclaimer)
}

/// Makes the calling reclaimer thread yield its CPU to any ordinary thread:
/// it shares a core with the producers it serves, and must not preempt one
/// inside its next critical section. A reclaimer that gets no CPU time
/// falls behind, and the backlog bound turns producers back to inline
/// frees, so nothing grows without bound.
fn lower_priority() {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: (8) `param` is a valid `sched_param` for SCHED_IDLE (which
        // takes priority 0); pid 0 means the calling thread. Failure is
        // harmless: the reclaimer then runs at normal priority.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    }
}

/// The CPU this thread runs on, or a stable per-thread stand-in.
fn current_cpu() -> usize {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: (6) `sched_getcpu` takes no arguments and only reads the
        // calling thread's CPU number.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu >= 0 {
            return cpu as usize;
        }
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}

/// Hands `batch` to this CPU's reclaimer; gives it back when the backlog is
/// past the bound or no reclaimer could be started.
pub(crate) fn hand_off(batch: Buffer) -> Result<Option<Buffer>, Buffer> {
    let slots = slots();
    let index = current_cpu() % slots.len();
    match slots[index].get_or_init(|| start(index)) {
        Some(r) => r.try_hand_off(batch, offload_bound()),
        None => Err(batch),
    }
}

/// Returns once every item handed to a reclaimer before the call has been
/// freed (and everything those frees deferred in turn).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// static FREED: AtomicUsize = AtomicUsize::new(0);
/// struct Noisy;
/// impl Drop for Noisy {
///     fn drop(&mut self) { FREED.fetch_add(1, Ordering::SeqCst); }
/// }
/// freeq::set_policy(freeq::Policy::Offload);
/// {
///     let _s = freeq::section();
///     for _ in 0..10 { freeq::defer(Noisy); }
/// }
/// freeq::quiesce();
/// assert_eq!(FREED.load(Ordering::SeqCst), 10);
/// freeq::set_policy(freeq::Policy::Inline);
/// ```
pub fn quiesce() {
    let Some(slots) = RECLAIMERS.get() else {
        return;
    };
    for slot in slots.iter() {
        if let Some(Some(r)) = slot.get() {
            r.quiesce();
        }
    }
}
