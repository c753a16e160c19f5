//! Reclaimers: inboxes and the threads that free what lands in them.
//!
//! Inbox `i` takes the batches drained on CPU `i`, and freeq's pool pins
//! runner `i` to CPU `i` ([`pool`](crate::reclaim::pool)); each runner
//! empties its own inbox first and then takes work from every other one.
//! Idle runners park. A producer wakes the runner of another CPU first
//! (the next one after its own, if it sleeps) and its own CPU's runner
//! last: at idle priority, that one cannot run while the producer keeps
//! its CPU busy. If the runner it tried is awake but has not come for
//! what already waits, or is busy freeing, it wakes another sleeping one.
//!
//! [`Reclaimer::quiesce`] takes every batch still waiting in an inbox and
//! frees it itself, then waits only for the chains reclaimers took before
//! it: those still need the reclaimers to get CPU time. A reclaimer frees through the [`Frees`] it was built with;
//! its public constructors live with the dispatcher, which supplies them.
//! This file calls `inbox.rs`, `inline.rs`, `priority.rs`, the queue's
//! buffer and the `sync` shim.

use std::ptr;
use std::sync::atomic::Ordering::SeqCst as StaticSeqCst;
use std::time::Duration;

use crate::platform::Instant;
use crate::profile::table::Mark;
use crate::queue::buffer::Buffer;
use crate::reclaim::inbox::{Inbox, Node};
use crate::reclaim::inline::{Frees, InlineOnly, inline_only};
use crate::reclaim::priority::follow_priority;
use crate::sync::{
    AtomicBool, AtomicPtr, AtomicUsize, Ordering::*, StaticAtomicUsize, fence, thread,
};

/// Forks seen by the child hook (each child counts one more).
pub(crate) static FORKS: StaticAtomicUsize = StaticAtomicUsize::new(0);

/// Runner states (freeq's own pool only).
pub(crate) const NOT_STARTED: usize = 0;
pub(crate) const STARTING: usize = 1;
pub(crate) const RUNNING: usize = 2;

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
pub(crate) struct Runner {
    /// Set by the runner just before it parks.
    pub(crate) sleeping: AtomicBool,
    thread: ThreadSlot,
    /// Inbox swaps begun and finished: a chain taken when `taken` was `t`
    /// has been freed once `done` reaches `t`.
    pub(crate) taken: AtomicUsize,
    pub(crate) done: AtomicUsize,
    /// Items of the chain the runner is freeing and not yet freed, and the
    /// inbox it came from: a forked child takes them off that inbox's
    /// `outstanding` (the parent frees them, the child never will).
    pub(crate) in_hand: AtomicUsize,
    pub(crate) in_inbox: AtomicUsize,
    /// Whether freeq has started this runner's thread in this process.
    pub(crate) state: StaticAtomicUsize,
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
    pub(crate) inboxes: Box<[Inbox]>,
    pub(crate) runners: Box<[Runner]>,
    pub(crate) shutdown: AtomicBool,
    /// Held by a `quiesce` caller while it frees the batches it took: a
    /// second caller waits for those too. 0 when free, else the fork
    /// generation of the holder plus one: an atomic rather than a lock, so
    /// that a child forked while a thread of its parent held it (a thread
    /// the child does not have) takes it over instead of waiting forever.
    pub(crate) helping: AtomicUsize,
    /// As [`Runner::in_hand`], for the holder of the helping turn.
    pub(crate) help_in_hand: AtomicUsize,
    pub(crate) help_inbox: AtomicUsize,
    /// Yield the CPU after each batch (freeq's own reclaimers, which may
    /// share a CPU with producers).
    pub(crate) courteous: bool,
    /// The origin of the inboxes' `since` clocks.
    born: Instant,
}

impl Reclaimer {
    /// A reclaimer with `inboxes` inboxes and `runners` runner slots (at
    /// least one each), no thread yet, freeing through `frees`.
    pub(crate) fn build(inboxes: usize, runners: usize, frees: Frees) -> Self {
        Reclaimer {
            inboxes: (0..inboxes.max(1)).map(|_| Inbox::new(frees)).collect(),
            runners: (0..runners.max(1)).map(|_| Runner::new()).collect(),
            shutdown: AtomicBool::new(false),
            helping: AtomicUsize::new(0),
            help_in_hand: AtomicUsize::new(0),
            help_inbox: AtomicUsize::new(0),
            courteous: false,
            born: Instant::now(),
        }
    }

    /// How many runners are parked (or about to park), for tests that
    /// drive runners by hand.
    pub fn parked_runners(&self) -> usize {
        self.runners
            .iter()
            .filter(|r| r.sleeping.load(SeqCst))
            .count()
    }

    /// Items handed over and not yet freed, over all inboxes.
    pub fn outstanding(&self) -> usize {
        self.inboxes
            .iter()
            .map(|i| i.outstanding.load(Acquire))
            .sum()
    }

    /// Microseconds since the reclaimer was built, plus one (never 0).
    fn clock_us(&self) -> usize {
        (self.born.elapsed().as_micros() as usize).saturating_add(1)
    }

    /// Whether the oldest batch waiting in inbox `index` has waited longer
    /// than `max_wait` with no reclaimer taking it.
    pub(crate) fn stalled(&self, index: usize, max_wait: Duration) -> bool {
        let inbox = &self.inboxes[index % self.inboxes.len()];
        if max_wait.is_zero() || inbox.head.load(Relaxed).is_null() {
            return false;
        }
        let since = inbox.since.load(Relaxed);
        since != 0 && self.clock_us().saturating_sub(since) as u128 > max_wait.as_micros()
    }

    /// Hands `batch` to inbox `index` unless its backlog is past `bound`
    /// items, or its oldest batch has waited longer than `max_wait` with
    /// no reclaimer coming for it. On success, returns an emptied buffer
    /// from an earlier batch, if one is free, for the producer's next
    /// queue.
    pub(crate) fn try_hand_off(
        &self,
        index: usize,
        batch: Buffer,
        bound: usize,
        max_wait: Duration,
        mark: Option<Mark>,
    ) -> Result<Option<Buffer>, Buffer> {
        let inbox = &self.inboxes[index % self.inboxes.len()];
        if self.stalled(index, max_wait) {
            return Err(batch);
        }
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
                node.mark = mark;
                (node, Some(empty))
            }
            None => (Node::boxed(batch, n, mark), None),
        };
        self.push(index, node);
        Ok(recycled)
    }

    /// In a forked child: takes items a thread of the parent had taken
    /// from inbox `inbox` and not yet freed off that inbox's count.
    pub(crate) fn abandon(&self, in_hand: &AtomicUsize, inbox: &AtomicUsize) {
        let n = in_hand.swap(0, Relaxed);
        if n != 0 {
            let inbox = &self.inboxes[inbox.load(Relaxed) % self.inboxes.len()];
            let _ = inbox
                .outstanding
                .fetch_update(Release, Relaxed, |o| Some(o.saturating_sub(n)));
        }
    }

    /// Hands `batch`, counting `n` items, to inbox `index` (modulo the
    /// inbox count), ignoring the bound.
    pub(crate) fn hand_off_buffer(&self, index: usize, batch: Buffer, n: usize) {
        let index = index % self.inboxes.len();
        self.inboxes[index].outstanding.fetch_add(n, Relaxed);
        self.push(index, Node::boxed(batch, n, None));
    }

    fn push(&self, index: usize, node: Box<Node>) {
        let index = index % self.inboxes.len();
        let was_empty = Inbox::push_on(&self.inboxes[index].head, node);
        if was_empty {
            self.inboxes[index].since.store(self.clock_us(), Relaxed);
        }
        // Pairs with the fence in `sleep`: either a runner sees the node,
        // or this thread sees it going to sleep.
        fence(SeqCst);
        let n = self.runners.len();
        let first = &self.runners[Self::wake_order(index, n, 0)];
        if first.wake() {
            return;
        }
        // The first runner is awake. If it is busy freeing, or has not yet
        // come for what was already waiting (its CPU may have no time),
        // another sleeping runner takes this batch from wherever it runs.
        if !was_empty || first.busy() {
            for k in 1..n {
                if self.runners[Self::wake_order(index, n, k)].wake() {
                    return;
                }
            }
        }
    }

    /// The `k`-th runner a hand-off to inbox `index` tries to wake, of `n`:
    /// the runners of the other CPUs first, in turn from the next one, and
    /// the inbox's own runner last. Inbox `index` is the CPU the producer
    /// drains on, and freeq's pool pins runner `i` to CPU `i`: the runner
    /// of the producer's own CPU is the one runner that cannot run while
    /// the producer is busy (it has idle priority there), so waking it
    /// first would leave the batch waiting while another CPU is idle.
    pub(crate) fn wake_order(index: usize, n: usize, k: usize) -> usize {
        (index + 1 + k) % n
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
    pub(crate) fn help(&self, nested: bool, deadline: Option<Instant>) {
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
    pub(crate) fn wait_for_runners(
        &self,
        alive: impl Fn(&Runner) -> bool,
        deadline: Option<Instant>,
    ) {
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
