//! Reclaimer threads for `Policy::Offload`, heavy values and user executors.
//!
//! A drain hands its whole batch (one buffer, however many items) to the
//! inbox of the CPU it runs on by pushing one node on a lock-free stack:
//! O(1), no lock, no per-item work. Reclaimer threads are not pinned: they
//! run at idle priority wherever the scheduler finds a CPU with time, each
//! empties its own inbox first and then takes work from every other one.
//! A reclaimer takes a whole inbox at once, restores FIFO order and frees
//! each batch through its own thread's queue, so frees that defer more
//! stay iterative. Idle reclaimers park; a producer wakes its inbox's
//! reclaimer if it sleeps, or another sleeping one if that one is busy.
//!
//! [`quiesce`] does not depend on how much CPU the reclaimers get: the
//! caller takes every batch still waiting in an inbox and frees it itself,
//! then waits only for the batches a reclaimer is freeing at that moment.
//!
//! The count of items handed to an inbox and not yet freed bounds the
//! backlog: past it, producers free inline.
//!
//! Under `Policy::Offload` a batch leaves only if it is worth moving: its
//! estimated drop cost (the sum of each item type's learned cost per item)
//! reaches [`offload_threshold_ns`]. A batch holding a type freeq has not
//! timed yet leaves whatever its known cost: that type's first free then
//! happens on a reclaimer, which times it (a run of an untimed type is
//! always timed, wherever it runs), so one slow first drop never lands on
//! the producer and the type is judged by its cost from then on.
//! Reclaimers leave the time they spent waiting for a CPU (they run at
//! idle priority) out of their timings; blocking inside a drop counts.

use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::Ordering::Relaxed as StaticRelaxed;
use std::sync::atomic::Ordering::SeqCst as StaticSeqCst;
use std::sync::{OnceLock, RwLock as StdRwLock};
use std::time::Duration;

use crate::free_queue::FreeQueue;
use crate::item::{Buffer, Cost};
use crate::platform::{self, CpuSet, Instant};
use crate::queue;
use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*, fence, thread};
use crate::sync::{Cell, StaticAtomicUsize, freeq_thread_local};

/// Default bound on items handed to one CPU's inbox and not yet freed.
pub const DEFAULT_OFFLOAD_BOUND: usize = crate::sync::scaled(1 << 16, 64);

static BOUND: StaticAtomicUsize = StaticAtomicUsize::new(DEFAULT_OFFLOAD_BOUND);

/// Sets how many offloaded items one CPU's inbox may have outstanding
/// before producers on that CPU free inline instead (default
/// [`DEFAULT_OFFLOAD_BOUND`]). A batch is always accepted by an empty
/// inbox, whatever its size.
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

/// Default estimated drop cost, in nanoseconds, from which a batch is worth
/// handing to another thread under [`Policy::Offload`](crate::Policy). A
/// batch holding a type not timed yet leaves whatever its cost, and that
/// type is timed on its first free.
///
/// Measured with `cargo bench --bench heavy_drop -- threshold` (see
/// BENCHMARKS.md, "Offload (issue 10)"): moving a batch to a reclaimer and
/// freeing it there costs the producer little, but the whole process pays
/// the hand-off, the wake-up and the cache misses of freeing memory
/// another core touched last, about as much as freeing a few hundred small
/// objects inline. Below this, a batch is freed inline.
///
/// 100 µs keeps a typical small-object batch inline with margin: in
/// `lock_hold`'s cache workload (8 records of 17 heap strings per critical
/// section) a batch costs about 20–30 µs to free, and offloading it cost
/// 0.4–0.7x of Inline's throughput at a 20 µs threshold; values that take
/// milliseconds to drop still leave the thread on their own.
pub const DEFAULT_OFFLOAD_THRESHOLD_NS: u64 = 100_000;

static THRESHOLD_NS: StaticAtomicUsize =
    StaticAtomicUsize::new(DEFAULT_OFFLOAD_THRESHOLD_NS as usize);

/// Sets the estimated drop cost, in nanoseconds, from which a drained batch
/// leaves the thread under [`Policy::Offload`](crate::Policy); cheaper
/// batches are freed inline (default [`DEFAULT_OFFLOAD_THRESHOLD_NS`]).
/// `0` offloads every batch.
///
/// The estimate sums each item type's learned drop cost. Types not timed
/// yet have no cost to sum: a batch holding one leaves whatever the
/// threshold, and is timed where it is freed, so only a type's first batch
/// can leave for that reason.
///
/// ```
/// freeq::set_offload_threshold_ns(50_000);
/// assert_eq!(freeq::offload_threshold_ns(), 50_000);
/// # freeq::set_offload_threshold_ns(freeq::DEFAULT_OFFLOAD_THRESHOLD_NS);
/// ```
pub fn set_offload_threshold_ns(ns: u64) {
    THRESHOLD_NS.store(usize::try_from(ns).unwrap_or(usize::MAX), StaticRelaxed);
}

/// The threshold set by [`set_offload_threshold_ns`]; it judges batches
/// whose item types have all been timed.
pub fn offload_threshold_ns() -> u64 {
    THRESHOLD_NS.load(StaticRelaxed) as u64
}

/// Whether a batch expected to cost `cost` to free is worth handing to
/// another thread: one that holds a type not timed yet always is (its
/// first free is timed there), a fully timed one from the threshold up.
pub(crate) fn worth_offloading(cost: Cost) -> bool {
    match cost {
        Cost::Untimed => true,
        Cost::Known(ns) => ns >= offload_threshold_ns(),
    }
}

freeq_thread_local! {
    /// Nonzero while this thread must free inline whatever its policy: it is
    /// a reclaimer, or it is freeing batches taken by `quiesce`, a
    /// [`Batch::free`] or the exit hook. Needs no destructor, so it stays
    /// reachable during thread exit.
    static INLINE_ONLY: Cell<usize> = Cell::new(0);
}

fn inline_only() -> bool {
    INLINE_ONLY.try_with(|c| c.get() != 0).unwrap_or(false)
}

/// Makes this thread free inline while it lives.
struct InlineOnly;

impl InlineOnly {
    fn enter() -> InlineOnly {
        let _ = INLINE_ONLY.try_with(|c| c.set(c.get() + 1));
        InlineOnly
    }
}

impl Drop for InlineOnly {
    fn drop(&mut self) {
        let _ = INLINE_ONLY.try_with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Drops a panic payload whose own destructor may panic: that second
/// payload is forgotten rather than dropped, so nothing can unwind out of
/// a reclaimer's loop.
fn drop_payload(payload: crate::item::Panic) {
    if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Frees `batch` on this thread, containing any panic (reported by the
/// panic hook, payload dropped safely).
fn free_contained(batch: &mut Buffer) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| free_batch(batch))) {
        drop_payload(payload);
    }
    if !batch.is_empty() {
        // A drain stopped by a section left open by a free: the items left
        // run here so that none is lost.
        let mut first = None;
        queue::run_here(batch, &mut first);
        if let Some(payload) = first {
            drop_payload(payload);
        }
    }
}

/// Flushes this thread's queue, containing any panic.
fn flush_contained() {
    if let Err(payload) = panic::catch_unwind(queue::flush) {
        drop_payload(payload);
    }
}

/// Frees `batch` on this thread, inline whatever its policy. Inside a
/// section the items run here and now (they were deferred once already,
/// where they came from); otherwise through this thread's queue.
fn free_batch(batch: &mut Buffer) {
    let _inline = InlineOnly::enter();
    if queue::in_section() {
        let mut first = None;
        queue::run_here(batch, &mut first);
        crate::item::resume(first);
    } else {
        queue::free_here(batch);
    }
}

struct Node {
    next: *mut Node,
    batch: Buffer,
    /// Items the batch counts for.
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

/// One CPU's inbox: a Treiber stack of handed-off batches, newest first.
struct Inbox {
    head: AtomicPtr<Node>,
    /// Items handed to this inbox and not yet freed.
    outstanding: AtomicUsize,
    /// Treiber stack of freed nodes, their buffers emptied but keeping their
    /// memory, for producers to reuse: steady-state offloading allocates
    /// nothing.
    returned: AtomicPtr<Node>,
    /// Nodes on `returned` (roughly; it only caps the pool).
    returned_len: AtomicUsize,
}

impl Inbox {
    fn new() -> Inbox {
        Inbox {
            head: AtomicPtr::new(ptr::null_mut()),
            outstanding: AtomicUsize::new(0),
            returned: AtomicPtr::new(ptr::null_mut()),
            returned_len: AtomicUsize::new(0),
        }
    }

    /// Pushes `node` on `stack` (a Treiber stack of owned nodes); `true`
    /// if the stack was empty.
    fn push_on(stack: &AtomicPtr<Node>, node: Box<Node>) -> bool {
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
    fn take_all(&self) -> Fifo {
        // Acquire: finding the inbox empty because a runner swapped it out
        // must make that runner's `taken` announcement visible (quiesce
        // then waits for it).
        if self.head.load(Acquire).is_null() {
            return Fifo(ptr::null_mut());
        }
        let mut head = self.head.swap(ptr::null_mut(), SeqCst);
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
        node.batch.trim(crate::queue::max_retained());
        self.returned_len.fetch_add(1, Relaxed);
        Self::push_on(&self.returned, node);
    }

    /// Frees every batch in `fifo` on this thread, in order, containing
    /// panics. `in_hand` counts the items taken and not yet freed (see
    /// [`Runner::in_hand`]).
    ///
    /// On a runner (`runner`), a free that leaves a section open (a leaked
    /// guard) would keep everything later frees defer in the runner's
    /// queue for good: after each batch, the queue is then flushed, so
    /// that what a batch's frees defer is freed before the batch counts as
    /// done.
    fn free_all(
        &self,
        mut fifo: Fifo,
        courteous: bool,
        in_hand: Option<&AtomicUsize>,
        runner: bool,
    ) {
        let depth = runner.then(queue::depth);
        while let Some(mut node) = fifo.pop() {
            free_contained(&mut node.batch);
            if depth.is_some_and(|d| queue::depth() > d) {
                flush_contained();
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
struct Fifo(*mut Node);

impl Fifo {
    fn is_empty(&self) -> bool {
        self.0.is_null()
    }

    /// Items the chain's batches count for.
    fn items(&self) -> usize {
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

/// Runner states (freeq's own pool only).
const NOT_STARTED: usize = 0;
const STARTING: usize = 1;
const RUNNING: usize = 2;

/// The handle of the thread running as a runner, for waking it. Read
/// without a lock (a forked child inherits no lock held by a thread it
/// does not have): each thread that runs as the runner pushes its handle
/// on a chain, the newest first, and every handle stays allocated until
/// the reclaimer is dropped, so a reader never sees one freed. A runner
/// runs on one thread per process (and per forked child), so the chain
/// stays short.
struct ThreadSlot {
    head: AtomicPtr<Handle>,
}

struct Handle {
    thread: thread::Thread,
    older: *mut Handle,
}

impl ThreadSlot {
    fn new() -> ThreadSlot {
        ThreadSlot {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    fn set(&self, thread: thread::Thread) {
        let node = Box::into_raw(Box::new(Handle {
            thread,
            older: ptr::null_mut(),
        }));
        let mut head = self.head.load(Acquire);
        loop {
            // SAFETY: (5b) `node` is ours alone until the exchange below
            // publishes it.
            unsafe { (*node).older = head };
            match self.head.compare_exchange_weak(head, node, AcqRel, Acquire) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    fn unpark(&self) {
        let head = self.head.load(Acquire);
        if !head.is_null() {
            // SAFETY: (5c) handles on the chain are freed only by `drop`,
            // which has the slot to itself.
            unsafe { (*head).thread.unpark() };
        }
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        let mut node = self.head.swap(ptr::null_mut(), Acquire);
        while !node.is_null() {
            // SAFETY: (5d) every node came from `Box::into_raw` in `set`
            // and is on the chain once; no reader is left.
            let b = unsafe { Box::from_raw(node) };
            node = b.older;
        }
    }
}

/// One reclaimer thread's shared state.
struct Runner {
    /// Set by the runner just before it parks.
    sleeping: AtomicBool,
    thread: ThreadSlot,
    /// Inbox swaps begun and finished: a chain taken when `taken` was `t`
    /// has been freed once `done` reaches `t`.
    taken: AtomicUsize,
    done: AtomicUsize,
    /// Items of the chain the runner is freeing and not yet freed, and the
    /// inbox it came from: a forked child takes them off that inbox's
    /// `outstanding` (the parent frees them, the child never will).
    in_hand: AtomicUsize,
    in_inbox: AtomicUsize,
    /// Whether freeq has started this runner's thread in this process.
    state: StaticAtomicUsize,
}

impl Runner {
    fn new() -> Runner {
        Runner {
            sleeping: AtomicBool::new(false),
            thread: ThreadSlot::new(),
            taken: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            in_hand: AtomicUsize::new(0),
            in_inbox: AtomicUsize::new(0),
            state: StaticAtomicUsize::new(NOT_STARTED),
        }
    }

    fn wake(&self) -> bool {
        if self.sleeping.load(SeqCst) && self.sleeping.swap(false, SeqCst) {
            self.thread.unpark();
            return true;
        }
        false
    }

    fn busy(&self) -> bool {
        self.taken.load(SeqCst) != self.done.load(SeqCst)
    }
}

/// Reclaimers: one inbox per CPU and the threads that free what lands in
/// them, any thread taking work from any inbox.
///
/// freeq keeps one, lazily started, for [`Policy::Offload`](crate::Policy);
/// this type is public (and hidden) so that tests and the loom models can
/// drive one with their own threads.
#[doc(hidden)]
pub struct Reclaimer {
    inboxes: Box<[Inbox]>,
    runners: Box<[Runner]>,
    shutdown: AtomicBool,
    /// Held by a `quiesce` caller while it frees the batches it took: a
    /// second caller waits for those too. 0 when free, else the fork
    /// generation of the holder plus one: an atomic rather than a lock, so
    /// that a child forked while a thread of its parent held it (a thread
    /// the child does not have) takes it over instead of waiting forever.
    helping: AtomicUsize,
    /// As [`Runner::in_hand`], for the holder of the helping turn.
    help_in_hand: AtomicUsize,
    help_inbox: AtomicUsize,
    /// Yield the CPU after each batch (freeq's own reclaimers, which may
    /// share a CPU with producers).
    courteous: bool,
}

impl Default for Reclaimer {
    fn default() -> Self {
        Reclaimer::new()
    }
}

impl Reclaimer {
    /// A reclaimer with one inbox, one runner slot and no thread yet.
    pub fn new() -> Self {
        Reclaimer::with_shape(1, 1)
    }

    /// A reclaimer with `inboxes` inboxes and `runners` runner slots (at
    /// least one each), no thread yet.
    pub fn with_shape(inboxes: usize, runners: usize) -> Self {
        Reclaimer {
            inboxes: (0..inboxes.max(1)).map(|_| Inbox::new()).collect(),
            runners: (0..runners.max(1)).map(|_| Runner::new()).collect(),
            shutdown: AtomicBool::new(false),
            helping: AtomicUsize::new(0),
            help_in_hand: AtomicUsize::new(0),
            help_inbox: AtomicUsize::new(0),
            courteous: false,
        }
    }

    /// Items handed over and not yet freed, over all inboxes.
    pub fn outstanding(&self) -> usize {
        self.inboxes
            .iter()
            .map(|i| i.outstanding.load(Acquire))
            .sum()
    }

    /// Hands `batch` to inbox `index` unless its backlog is past `bound`.
    /// On success, returns an emptied buffer from an earlier batch, if one
    /// is free, for the producer's next queue.
    fn try_hand_off(
        &self,
        index: usize,
        batch: Buffer,
        bound: usize,
    ) -> Result<Option<Buffer>, Buffer> {
        let inbox = &self.inboxes[index % self.inboxes.len()];
        let n = batch.len();
        let mut now = inbox.outstanding.load(Relaxed);
        loop {
            if now != 0 && now + n > bound {
                return Err(batch);
            }
            match inbox
                .outstanding
                .compare_exchange_weak(now, now + n, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(seen) => now = seen,
            }
        }
        let (node, recycled) = match inbox.take_returned() {
            Some(mut node) => {
                let empty = std::mem::replace(&mut node.batch, batch);
                node.items = n;
                (node, Some(empty))
            }
            None => (Node::boxed(batch, n), None),
        };
        self.push(index, node);
        Ok(recycled)
    }

    /// In a forked child: takes items a thread of the parent had taken
    /// from inbox `inbox` and not yet freed off that inbox's count.
    fn abandon(&self, in_hand: &AtomicUsize, inbox: &AtomicUsize) {
        let n = in_hand.swap(0, Relaxed);
        if n != 0 {
            let inbox = &self.inboxes[inbox.load(Relaxed) % self.inboxes.len()];
            let _ = inbox
                .outstanding
                .fetch_update(Release, Relaxed, |o| Some(o.saturating_sub(n)));
        }
    }

    /// Hands a whole [`FreeQueue`] to inbox 0, ignoring the bound.
    pub fn hand_off_queue(&self, queue: FreeQueue) {
        self.hand_off_queue_to(0, queue);
    }

    /// Hands a whole [`FreeQueue`] to inbox `index` (modulo the inbox
    /// count), ignoring the bound.
    pub fn hand_off_queue_to(&self, index: usize, mut queue: FreeQueue) {
        let batch = queue.take_buffer();
        let n = batch.len();
        let index = index % self.inboxes.len();
        self.inboxes[index].outstanding.fetch_add(n, Relaxed);
        self.push(index, Node::boxed(batch, n));
    }

    fn push(&self, index: usize, node: Box<Node>) {
        let index = index % self.inboxes.len();
        let was_empty = Inbox::push_on(&self.inboxes[index].head, node);
        // Pairs with the fence in `sleep`: either a runner sees the node,
        // or this thread sees it going to sleep.
        fence(SeqCst);
        let home = &self.runners[index % self.runners.len()];
        if home.wake() {
            return;
        }
        // The home runner is awake. If it is busy freeing, or has not yet
        // come for what was already waiting, another sleeping runner takes
        // this batch from wherever it runs.
        if !was_empty || home.busy() {
            let n = self.runners.len();
            for k in 1..n {
                if self.runners[(index + k) % n].wake() {
                    return;
                }
            }
        }
    }

    /// Runner 0's loop; see [`Reclaimer::run_as`].
    pub fn run(&self) {
        self.run_as(0);
    }

    /// The loop of runner `index`: frees batches as they arrive (its own
    /// inbox first, then any other), parks when every inbox is empty,
    /// returns once shut down and empty. Call it on the runner's thread.
    pub fn run_as(&self, index: usize) {
        let _inline = InlineOnly::enter();
        let runner = &self.runners[index % self.runners.len()];
        runner.thread.set(thread::current());
        loop {
            follow_priority();
            if self.run_once_as(index) {
                continue;
            }
            if self.shutdown.load(SeqCst) && self.all_empty() {
                return;
            }
            self.sleep(runner);
        }
    }

    fn all_empty(&self) -> bool {
        self.inboxes.iter().all(|i| i.head.load(SeqCst).is_null())
    }

    fn sleep(&self, runner: &Runner) {
        runner.sleeping.store(true, SeqCst);
        fence(SeqCst);
        if self.all_empty() && !self.shutdown.load(SeqCst) {
            thread::park();
        }
        runner.sleeping.store(false, SeqCst);
    }

    /// Runner 0's [`Reclaimer::run_once_as`].
    pub fn run_once(&self) -> bool {
        self.run_once_as(0)
    }

    /// As runner `index`: frees every batch in one inbox (its own if it
    /// has any, else the first non-empty one after it), oldest first;
    /// `false` if every inbox was empty. A panicking free is reported by
    /// the panic hook and does not stop the runner.
    pub fn run_once_as(&self, index: usize) -> bool {
        let _inline = InlineOnly::enter();
        let runner = &self.runners[index % self.runners.len()];
        let n = self.inboxes.len();
        for k in 0..n {
            let inbox = &self.inboxes[(index + k) % n];
            if inbox.head.load(Relaxed).is_null() {
                continue;
            }
            // Announce the swap before making it: a `quiesce` that finds
            // the inbox empty afterwards sees `taken` and waits for `done`.
            let t = runner.taken.fetch_add(1, SeqCst).wrapping_add(1);
            let fifo = inbox.take_all();
            let found = !fifo.is_empty();
            runner.in_inbox.store((index + k) % n, Relaxed);
            runner.in_hand.store(fifo.items(), Relaxed);
            inbox.free_all(fifo, self.courteous, Some(&runner.in_hand), true);
            runner.done.store(t, SeqCst);
            if found {
                return true;
            }
        }
        false
    }

    /// Asks the loops in [`Reclaimer::run_as`] to return once every inbox
    /// is empty.
    pub fn shutdown(&self) {
        self.shutdown.store(true, SeqCst);
        // Pairs with the fence in `sleep`.
        fence(SeqCst);
        for r in self.runners.iter() {
            r.thread.unpark();
        }
    }

    /// Frees, on the calling thread, every batch still waiting in an inbox.
    /// Callers take turns, so that one returns only after the batches
    /// another caller took before it are freed. A `nested` caller (one that
    /// frees inline only) never waits for that turn: if another caller is
    /// helping (or it is that caller, called again from a free), it leaves
    /// the batches to it.
    ///
    /// With a `deadline`, it waits for its turn until then at most, and
    /// frees nothing if the turn did not come (the exit hook).
    fn help(&self, nested: bool, deadline: Option<Instant>) {
        let Some(_turn) = self.take_turn(nested, deadline) else {
            return;
        };
        for (i, inbox) in self.inboxes.iter().enumerate() {
            let fifo = inbox.take_all();
            self.help_inbox.store(i, Relaxed);
            self.help_in_hand.store(fifo.items(), Relaxed);
            inbox.free_all(fifo, false, Some(&self.help_in_hand), false);
        }
    }

    /// Takes the helping turn (see `helping`); `None` if `nested` and it is
    /// taken, or past `deadline`.
    fn take_turn(&self, nested: bool, deadline: Option<Instant>) -> Option<Turn<'_>> {
        let mine = FORKS.load(StaticSeqCst).wrapping_add(1).max(1);
        let mut spins = 0u32;
        loop {
            let now = self.helping.load(Acquire);
            // A holder of another fork generation is a thread of a parent
            // process, which this process does not have.
            if now != mine
                && self
                    .helping
                    .compare_exchange(now, mine, Acquire, Relaxed)
                    .is_ok()
            {
                return Some(Turn(&self.helping));
            }
            if nested || past(deadline) {
                return None;
            }
            backoff(&mut spins);
        }
    }

    /// Waits until every runner has finished the chain it was freeing when
    /// this was called, or until `deadline`. Runners that `alive` rejects
    /// are skipped.
    fn wait_for_runners(&self, alive: impl Fn(&Runner) -> bool, deadline: Option<Instant>) {
        for r in self.runners.iter() {
            if !alive(r) {
                continue;
            }
            let t = r.taken.load(SeqCst);
            let mut spins = 0u32;
            while (r.done.load(SeqCst).wrapping_sub(t) as isize) < 0 {
                if past(deadline) {
                    return;
                }
                backoff(&mut spins);
            }
        }
    }

    /// Returns once every batch handed over before the call has been freed:
    /// the batches still waiting are freed by the caller, who then waits
    /// only for the ones runners are freeing right now.
    ///
    /// On a thread that frees inline only (a runner, or a thread already
    /// inside `quiesce`, [`Batch::free`] or the exit hook), it frees what
    /// is waiting and waits for no runner (see [`quiesce`]).
    pub fn quiesce(&self) {
        let nested = inline_only();
        self.help(nested, None);
        if !nested {
            self.wait_for_runners(|_| true, None);
        }
    }
}

/// The helping turn, given back when dropped.
struct Turn<'a>(&'a AtomicUsize);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.store(0, Release);
    }
}

/// Whether `deadline` has passed.
fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// One step of a wait: a few yields, then short sleeps.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        thread::yield_now();
    } else {
        crate::sync::park_timeout(Duration::from_micros(200));
    }
}

// ---------------------------------------------------------------------------
// freeq's own reclaimers
// ---------------------------------------------------------------------------

/// freeq's reclaimers and the fork generation they belong to.
struct Pool {
    reclaimer: Reclaimer,
    /// `FORKS` when the runners' states were last valid.
    generation: StaticAtomicUsize,
    /// The process's CPU set, which runners take as their affinity.
    cpus: Option<CpuSet>,
    /// When a failed spawn may be retried (ms since the pool started).
    retry_at_ms: StaticAtomicUsize,
    born: Instant,
    /// Every runner has a thread (in this process).
    all_started: std::sync::atomic::AtomicBool,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Forks seen by the child hook (each child counts one more).
static FORKS: StaticAtomicUsize = StaticAtomicUsize::new(0);
/// Set by the exit hook: from then on, everything is freed inline.
static EXITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let cpus = CpuSet::of_process();
        let n = cpus.as_ref().map(CpuSet::count);
        let n = n
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut reclaimer = Reclaimer::with_shape(n, n);
        reclaimer.courteous = true;
        install_hooks();
        Pool {
            reclaimer,
            generation: StaticAtomicUsize::new(FORKS.load(StaticSeqCst)),
            cpus,
            retry_at_ms: StaticAtomicUsize::new(0),
            born: Instant::now(),
            all_started: std::sync::atomic::AtomicBool::new(false),
        }
    })
}

/// Registers the exit hook and the fork hook, once.
fn install_hooks() {
    #[cfg(not(loom))]
    {
        extern "C" fn at_exit() {
            exit_hook();
        }
        // Only an atomic add (async-signal-safe).
        extern "C" fn in_child() {
            FORKS.fetch_add(1, StaticSeqCst);
        }
        // Failure to register is harmless: quiesce still works, and a
        // child is then detected by nothing (documented).
        platform::at_exit(at_exit);
        platform::at_fork_child(in_child);
    }
}

/// How long the exit hook waits, at most, for its turn to free what waits
/// in the inboxes and for the batches runners are freeing.
const EXIT_WAIT: Duration = Duration::from_millis(250);

/// At normal process exit: frees, on the exiting thread, everything still
/// waiting in the inboxes, waits (for [`EXIT_WAIT`] at most) for what
/// runners are freeing, and frees inline from then on. It never hangs: a
/// runner stuck in a drop (on a lock the exiting thread holds, say) is
/// left behind, and what it has not freed yet is not freed. On a thread
/// inside a section, the inboxes are left to the runners for that time
/// too: their batches must not run under the exiting thread's locks.
fn exit_hook() {
    let _ = panic::catch_unwind(|| {
        EXITED.store(true, StaticSeqCst);
        if let Some(pool) = POOL.get() {
            pool.check_fork();
            pool.at_exit();
        }
    });
}

impl Pool {
    /// In a forked child, the runners' threads do not exist: forget them
    /// (they restart on demand), abandon the chains they were freeing (the
    /// parent frees its own copies), and keep what waits in the inboxes.
    fn check_fork(&self) {
        let now = FORKS.load(StaticRelaxed);
        let seen = self.generation.load(StaticRelaxed);
        if now == seen
            || self
                .generation
                .compare_exchange(seen, now, StaticSeqCst, StaticRelaxed)
                .is_err()
        {
            return;
        }
        self.all_started.store(false, StaticSeqCst);
        let rec = &self.reclaimer;
        // The chains runners and a `quiesce` caller were freeing are the
        // parent's to free: the child stops counting them, or its backlog
        // bound would turn producers to inline frees for good.
        rec.abandon(&rec.help_in_hand, &rec.help_inbox);
        for r in rec.runners.iter() {
            r.state.store(NOT_STARTED, StaticSeqCst);
            r.sleeping.store(false, SeqCst);
            r.done.store(r.taken.load(SeqCst), SeqCst);
            rec.abandon(&r.in_hand, &r.in_inbox);
        }
    }

    /// Whether runner `r` may be freeing a chain in this process: started,
    /// or being started (its thread may already run before `spawn`
    /// returns to the thread that starts it).
    fn runner_alive(&self, r: &Runner) -> bool {
        r.state.load(StaticSeqCst) != NOT_STARTED
    }

    /// Makes sure runner `index` has a thread; `false` if none could be
    /// started (tried again later).
    fn ensure_started(&self, index: usize) -> bool {
        let r = &self.reclaimer.runners[index];
        match r.state.load(StaticRelaxed) {
            RUNNING => return true,
            STARTING => return true,
            _ => {}
        }
        let now_ms = self.born.elapsed().as_millis() as usize;
        if now_ms < self.retry_at_ms.load(StaticRelaxed) {
            return false;
        }
        if r.state
            .compare_exchange(NOT_STARTED, STARTING, StaticSeqCst, StaticRelaxed)
            .is_err()
        {
            return true;
        }
        let spawned = platform::Builder::new()
            .name(format!("freeq-reclaim-{index}"))
            .spawn(move || {
                let pool = pool();
                become_reclaimer();
                // Preempted often (idle priority): leave the waits for a
                // CPU out of drop timings.
                crate::item::leave_out_cpu_waits();
                if let Some(set) = &pool.cpus {
                    set.pin_current_thread();
                }
                pool.reclaimer.run_as(index);
            });
        match spawned {
            Ok(_) => {
                r.state.store(RUNNING, StaticSeqCst);
                true
            }
            Err(_) => {
                // A transient failure (out of threads, say): try again in
                // a while rather than never.
                self.retry_at_ms.store(now_ms + 10, StaticRelaxed);
                r.state.store(NOT_STARTED, StaticSeqCst);
                false
            }
        }
    }

    /// Starts every runner (any of them may be needed to take this CPU's
    /// work while its own is busy); `false` if this CPU's could not be
    /// started.
    #[cold]
    fn start_all(&self, index: usize) -> bool {
        let mine = self.ensure_started(index);
        let mut all = mine;
        for i in 0..self.reclaimer.runners.len() {
            all &= self.ensure_started(i);
        }
        if all {
            self.all_started.store(true, StaticSeqCst);
        }
        mine
    }

    fn hand_off(&self, batch: Buffer) -> Result<Option<Buffer>, Buffer> {
        self.check_fork();
        let index = current_cpu() % self.reclaimer.inboxes.len();
        if !self.all_started.load(StaticRelaxed) && !self.start_all(index) {
            return Err(batch);
        }
        self.reclaimer.try_hand_off(index, batch, offload_bound())
    }

    fn quiesce(&self) {
        self.check_fork();
        let nested = inline_only();
        self.reclaimer.help(nested, None);
        if !nested {
            self.reclaimer
                .wait_for_runners(|r| self.runner_alive(r), None);
        }
    }

    /// The exit hook's [`quiesce`](Pool::quiesce), each wait bounded.
    fn at_exit(&self) {
        let deadline = Some(Instant::now() + EXIT_WAIT);
        let nested = inline_only();
        if !queue::in_section() {
            self.reclaimer.help(nested, deadline);
        }
        if !nested {
            self.reclaimer
                .wait_for_runners(|r| self.runner_alive(r), deadline);
        }
    }
}

/// How freeq's own reclaimer threads are scheduled; see
/// [`set_reclaimer_priority`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReclaimerPriority {
    /// The default: idle priority (`SCHED_IDLE` on Linux, the background
    /// QoS class on macOS, `THREAD_PRIORITY_IDLE` on Windows; elsewhere,
    /// FreeBSD included, normal priority). A reclaimer
    /// runs only on a CPU that has nothing else to do, so it never takes a
    /// busy producer's CPU. On a machine whose every CPU is busy it gets
    /// almost no time: the backlog bound then turns producers back to
    /// inline frees, and `quiesce()` frees what is still waiting itself.
    Idle,
    /// The scheduler's ordinary class: reclaimers share busy CPUs fairly
    /// with other threads. For saturated machines where handed-off memory
    /// must still come back promptly, and for tests that wait on
    /// reclaimers while the machine is busy.
    Normal,
}

static PRIORITY: StaticAtomicUsize = StaticAtomicUsize::new(0);

/// Sets how freeq's reclaimer threads are scheduled, process-wide
/// (default [`ReclaimerPriority::Idle`]). Running reclaimers switch before
/// their next batch; threads started later start with it. Reclaimers of a
/// [`set_offload_executor`] executor are the executor's business.
///
/// ```
/// use freeq::ReclaimerPriority;
/// freeq::set_reclaimer_priority(ReclaimerPriority::Normal);
/// assert_eq!(freeq::reclaimer_priority(), ReclaimerPriority::Normal);
/// freeq::set_reclaimer_priority(ReclaimerPriority::Idle);
/// ```
pub fn set_reclaimer_priority(priority: ReclaimerPriority) {
    PRIORITY.store(priority as usize, StaticRelaxed);
}

/// The priority set by [`set_reclaimer_priority`].
pub fn reclaimer_priority() -> ReclaimerPriority {
    match PRIORITY.load(StaticRelaxed) {
        0 => ReclaimerPriority::Idle,
        _ => ReclaimerPriority::Normal,
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// On freeq's own reclaimer threads, the priority last applied
    /// (`usize::MAX` before the first); `None` on every other thread,
    /// including those that drive a [`Reclaimer`] by hand.
    static APPLIED: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as one of freeq's reclaimers and applies the
/// current [`ReclaimerPriority`].
fn become_reclaimer() {
    #[cfg(not(loom))]
    APPLIED.with(|a| a.set(Some(usize::MAX)));
    follow_priority();
}

/// On freeq's own reclaimer threads, switches to the priority set by
/// [`set_reclaimer_priority`] if it changed; elsewhere does nothing.
fn follow_priority() {
    #[cfg(not(loom))]
    APPLIED.with(|a| {
        let Some(applied) = a.get() else { return };
        let want = PRIORITY.load(StaticRelaxed);
        if applied == want {
            return;
        }
        a.set(Some(want));
        platform::set_idle_priority(want == 0);
    });
}

/// The CPU this thread runs on, or a stable per-thread stand-in.
fn current_cpu() -> usize {
    if let Some(cpu) = platform::current_cpu() {
        return cpu;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}

/// How many reclaimer threads freeq runs at most (one per CPU of the
/// process); for tests.
#[doc(hidden)]
pub fn reclaimer_count() -> usize {
    pool().reclaimer.runners.len()
}

// ---------------------------------------------------------------------------
// User executors
// ---------------------------------------------------------------------------

/// A drained batch handed to the executor set with
/// [`set_offload_executor`]: free it, on any thread, with [`Batch::free`].
///
/// Dropping a `Batch` frees it too, so a batch is never leaked.
pub struct Batch {
    items: Buffer,
}

impl Batch {
    /// How many items the batch holds. It counts them: O(items).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Frees every item of the batch on the calling thread, oldest first,
    /// inline whatever the thread's policy. Frees that defer more are
    /// freed by the same call. If a free panics, the rest are still freed
    /// and the first panic resumes afterwards.
    pub fn free(mut self) {
        Self::free_items(&mut self.items);
    }

    fn free_items(items: &mut Buffer) {
        let _inline = InlineOnly::enter();
        if queue::in_section() {
            let mut first = None;
            queue::run_here(items, &mut first);
            crate::item::resume(first);
        } else {
            queue::free_here(items);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.items.is_empty() {
            return;
        }
        if std::thread::panicking() {
            // Dropped as a panicking executor unwinds (or any thread): the
            // items run here and now, rather than joining a drain that
            // would hand them to the same executor again. A panic among
            // them is reported and dropped: one is unwinding already.
            let _inline = InlineOnly::enter();
            let mut first = None;
            queue::run_here(&mut self.items, &mut first);
            crate::item::resume(first);
        } else {
            Self::free_items(&mut self.items);
        }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("len", &self.len()).finish()
    }
}

type Executor = std::sync::Arc<dyn Fn(Batch) + Send + Sync + 'static>;

static EXECUTOR: StdRwLock<Option<Executor>> = StdRwLock::new(None);
static HAS_EXECUTOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Routes offloaded batches (under [`Policy::Offload`](crate::Policy) and
/// from [`defer_heavy`]) to `executor` instead of freeq's own reclaimer
/// threads. `executor` receives each batch as a [`Batch`] and must see to
/// it that [`Batch::free`] is called (or the batch dropped), on any
/// thread. It is called right after the unlock, on the draining thread:
/// it should only queue the batch, never free it there.
///
/// freeq starts no thread of its own while an executor is set. The backlog
/// bound does not apply and [`quiesce`] does not wait for batches given
/// to an executor: the executor owns them.
///
/// If `executor` panics, the panic is treated like a panicking free: the
/// batch (dropped as the executor unwinds) is freed on the draining thread
/// right then, the drain goes on, and the panic resumes once the drain is
/// done (or is dropped, if the thread was already unwinding). It never
/// aborts the process.
///
/// A dedicated thread:
/// ```
/// use std::sync::{mpsc, Mutex};
/// let (tx, rx) = mpsc::channel::<freeq::Batch>();
/// let freer = std::thread::spawn(move || {
///     for batch in rx {
///         batch.free();
///     }
/// });
/// let tx = Mutex::new(tx);
/// freeq::set_offload_executor(move |batch| {
///     // If the freeing thread is gone, the batch is freed here, on drop.
///     let _ = tx.lock().unwrap().send(batch);
/// });
/// freeq::defer_heavy(vec![0u8; 1 << 20]); // freed on `freer`
/// freeq::clear_offload_executor(); // drops the sender: `freer` ends
/// freer.join().unwrap();
/// ```
///
/// A rayon pool would be `move |batch| pool.spawn(move || batch.free())`;
/// tokio's blocking pool `move |batch| { handle.spawn_blocking(move ||
/// batch.free()); }`.
pub fn set_offload_executor<F>(executor: F)
where
    F: Fn(Batch) + Send + Sync + 'static,
{
    *EXECUTOR.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(executor));
    HAS_EXECUTOR.store(true, StaticSeqCst);
}

/// Goes back to freeq's own reclaimers (see [`set_offload_executor`]).
pub fn clear_offload_executor() {
    HAS_EXECUTOR.store(false, StaticSeqCst);
    let old = EXECUTOR.write().unwrap_or_else(|e| e.into_inner()).take();
    drop(old);
}

fn executor() -> Option<Executor> {
    if !HAS_EXECUTOR.load(StaticRelaxed) {
        return None;
    }
    EXECUTOR.read().unwrap_or_else(|e| e.into_inner()).clone()
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Hands `batch` to the user's executor or to a reclaimer; gives it back
/// (free inline) on a reclaimer or other inline-only thread, at process
/// exit, when the backlog is past the bound, or when no reclaimer could be
/// started.
///
/// A panicking executor is contained: its payload goes to `first` (to be
/// resumed once the drain is done, like a panicking free's), and the
/// batch, dropped as the executor unwinds, is freed on this thread then.
pub(crate) fn hand_off(
    batch: Buffer,
    first: &mut Option<crate::item::Panic>,
) -> Result<Option<Buffer>, Buffer> {
    if !can_hand_off() {
        return Err(batch);
    }
    if let Some(run) = executor() {
        let batch = Batch { items: batch };
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || run(batch))) {
            crate::item::keep_first(first, payload);
        }
        return Ok(None);
    }
    pool().hand_off(batch)
}

/// Starts freeq's reclaimers now, if they are what offloaded batches go
/// to and are not running yet: called when a thread chooses
/// [`Policy::Offload`](crate::Policy::Offload), so that the first hand-off
/// (after an unlock, but on the producer) does not pay for starting
/// threads.
pub(crate) fn start_reclaimers() {
    if EXITED.load(StaticRelaxed) || executor().is_some() {
        return;
    }
    let pool = pool();
    pool.check_fork();
    if !pool.all_started.load(StaticRelaxed) {
        let _ = pool.start_all(current_cpu() % pool.reclaimer.inboxes.len());
    }
}

/// Whether a batch may leave this thread at all: not on a thread that
/// frees inline only (a reclaimer; a free run by `quiesce`, `Batch::free`
/// or the exit hook), and not after the exit hook ran.
pub(crate) fn can_hand_off() -> bool {
    !inline_only() && !EXITED.load(StaticRelaxed)
}

/// Drops `value` on another thread, whatever this thread's policy: on one
/// of freeq's reclaimers, or on the executor set with
/// [`set_offload_executor`]. Inside a section it leaves when the outermost
/// section closes, after the unlock, like [`defer`](crate::defer); outside
/// one, at once. Use it for the one value whose drop is slow (a big tree,
/// a memtable, the last `Arc` of a large structure) in a thread that
/// otherwise frees inline.
///
/// The value is freed inline instead when it cannot leave: on a reclaimer
/// (or in a free run by [`Batch::free`] or [`quiesce`]), past the backlog
/// bound, or at process exit. [`quiesce`] waits for it like any other
/// offloaded item.
///
/// ```
/// let m = freeq::Mutex::new(vec![0u64; 1 << 16]);
/// {
///     let mut g = m.lock().unwrap();
///     let old = std::mem::replace(&mut *g, Vec::new());
///     freeq::defer_heavy(old); // leaves this thread after the unlock
/// }
/// freeq::quiesce();
/// ```
pub fn defer_heavy<T: Send + 'static>(value: T) {
    crate::defer::defer_fn(move || {
        let mut one = Buffer::new();
        one.push(move || drop(value));
        let mut first = None;
        match hand_off(one, &mut first) {
            // The value now travels as an item of its own, which the
            // reclaimer counts as freed: count it as deferred too, so that
            // `stats()` balances (this action and the value, two items).
            Ok(_) => crate::stats::count_late(1, 0, 0),
            Err(mut back) => back.run_all(&mut first),
        }
        crate::item::resume(first);
    });
}

/// Returns once every item handed to a reclaimer before the call has been
/// freed (and everything those frees deferred in turn).
///
/// The calling thread frees, itself, every handed-off batch that no
/// reclaimer has started on yet, and then waits only for the batches
/// reclaimers are freeing at that moment: it does not depend on how much
/// CPU idle-priority reclaimers get. Batches given to a user executor
/// ([`set_offload_executor`]) are the executor's to free, and not waited
/// for.
///
/// Called from inside a free that a drain is running (on a reclaimer, or
/// inline on any thread), the batches it takes join that drain and are
/// freed right after the free that called it; called on a reclaimer (or
/// from a free run by [`Batch::free`] or `quiesce` itself), it waits for
/// no reclaimer, so frees on two reclaimers that both call it cannot
/// deadlock. Inside a section, the batches it takes are freed at once,
/// not when the section closes.
///
/// In a forked child, reclaimers of the parent do not exist: `quiesce`
/// frees what the child inherited in the inboxes and does not wait for
/// the batches the parent's reclaimers (or a `quiesce` caller) were
/// freeing when it forked (the parent frees those).
///
/// At process exit, freeq runs the same steps once from an `atexit` hook,
/// each wait bounded (250 ms): the process exits even if a
/// reclaimer is stuck in a drop.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
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
    if let Some(pool) = POOL.get() {
        pool.quiesce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_judges_cost() {
        let old = offload_threshold_ns();
        set_offload_threshold_ns(1_000);
        assert!(!worth_offloading(Cost::Known(999)));
        assert!(worth_offloading(Cost::Known(1_000)));
        assert!(worth_offloading(Cost::Untimed), "an untimed type leaves");
        set_offload_threshold_ns(old);
    }
}
