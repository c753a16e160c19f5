//! Sections and drains: the queue's entries.
//!
//! A section opens with [`enter`] and closes with [`leave`]; closing the
//! outermost one drains the queue. A drain takes the queue's whole chain of
//! blocks in O(1) as its batch; items deferred while the batch is being
//! freed land in the queue, on its free blocks, and the batch's emptied
//! blocks go back to the queue's free list, within the retention cap.
//! Drains are a loop, never a recursion: an item freed during a drain that
//! defers more only appends to the queue, and the loop picks it up. A drain
//! after a spike frees the blocks past the cap; in steady state it neither
//! allocates nor frees memory.
//!
//! Every entry that may drain takes the caller's [`Sink`], which the drain
//! offers each batch and hands retired items to; [`run_here`] and
//! [`free_here`] are the "free this batch here" calls the sinks use.
//! [`hold_or_free`] is the allocator's entry: inside a section it holds a
//! freed block in the thread's state until the drain of the outermost
//! section frees it, after the queue's own items. This file calls the rest
//! of the queue layer, `stats` and the `sync` shim.

use std::alloc::Layout;
use std::any::TypeId;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::atomic::Ordering::Relaxed;

use crate::profile::probe;
use crate::profile::table::{LockKind, Mark};
use crate::queue::buffer::Buffer;
use crate::queue::held::FreeFn;
use crate::queue::hooks::{DropTimer, Watch};
use crate::queue::local::{
    Draining, LOCAL, Local, SECTION, hook_exit, push_exiting, retire_late, run_late,
};
use crate::queue::panic::{Panic, keep_first, resume};
use crate::queue::sink::{Offer, Sink};
use crate::stats::{self, LocalCounts};
use crate::sync::StaticAtomicUsize;

/// Default cap on the memory a thread's queue keeps after a drain.
pub const DEFAULT_MAX_RETAINED: usize = 64 * 1024;

static MAX_RETAINED: StaticAtomicUsize = StaticAtomicUsize::new(DEFAULT_MAX_RETAINED);

/// Sets how many bytes of queue memory each thread may keep between drains
/// (default [`DEFAULT_MAX_RETAINED`], 64 KiB): everything the thread's
/// queue holds together, whole blocks of 4 KiB. A spike may grow a queue
/// past this; the excess is released by the drain that follows it. A cap
/// below one block keeps nothing, and every section then allocates its
/// queue before its lock is taken (see [`prepare_thread`](crate::prepare_thread)).
///
/// ```
/// freeq::set_max_retained(16 * 1024);
/// assert_eq!(freeq::max_retained(), 16 * 1024);
/// # freeq::set_max_retained(freeq::DEFAULT_MAX_RETAINED);
/// ```
pub fn set_max_retained(bytes: usize) {
    MAX_RETAINED.store(bytes, Relaxed);
}

/// The current cap set by [`set_max_retained`].
pub fn max_retained() -> usize {
    MAX_RETAINED.load(Relaxed)
}

impl Local {
    /// Frees queued items until the queue is empty, or, unless `flush`, until
    /// a freed item leaves a section open on this thread. Retired items go
    /// to `S` as one batch (the epoch); each batch of deferred items is
    /// offered to `S` (a reclaimer may take it) before it is freed here.
    #[inline]
    pub(crate) fn drain<S: Sink>(&self, flush: bool) {
        // A sampled outermost section (a flush is not its close): its
        // drain is timed, and counted, out of line. Otherwise the profile
        // costs this one test.
        if !flush && self.probe.is_open() {
            return self.drain_sampled::<S>();
        }
        let first = self.drain_items::<S>(flush, None);
        resume(first);
    }

    /// [`drain`](Self::drain) of a sampled outermost section: the drain is
    /// timed and its counts recorded, also when a free panics (the panic
    /// resumes once the sample is recorded).
    #[cold]
    #[inline(never)]
    fn drain_sampled<S: Sink>(&self) {
        let mut sample = self.probe.close();
        if let Some(s) = &mut sample {
            s.drain_starts(self.counts.deferred.get(), self.counts.deferred_frees.get());
        }
        let first = self.drain_items::<S>(false, sample.as_mut());
        drop(sample);
        resume(first);
    }

    /// The drain itself; returns the first panic of a free, to be resumed
    /// by the caller. A sampled section's `sample` reads the thread's
    /// counts before they are published.
    #[cold]
    #[inline(never)]
    fn drain_items<S: Sink>(
        &self,
        flush: bool,
        sample: Option<&mut probe::Closing<'_>>,
    ) -> Option<Panic> {
        let draining = Draining::start(&self.state);
        LocalCounts::add(&self.counts.drains, 1);
        let mut first: Option<Panic> = None;
        let stop = || !flush && self.depth() > 0;
        // Inside the batch, the same test as `stop`, without a call per item.
        let watch = (!flush).then_some(Watch {
            cell: &self.state,
            limit: SECTION,
        });
        while !stop() {
            if !self.retired_empty() {
                // SAFETY: (4) a momentary borrow; taking items runs nothing.
                let retired = unsafe { (*self.retired()).take_items() };
                let r = retired.len();
                LocalCounts::add(&self.counts.deferred, r);
                LocalCounts::add(&self.counts.retired, r);
                // May run epoch garbage (which lands in this queue), or
                // anyone's: a panic from it is kept like a free's.
                let handed = panic::catch_unwind(AssertUnwindSafe(|| S::retire(retired, false)));
                if let Err(payload) = handed {
                    keep_first(&mut first, payload);
                }
            }
            if self.queue_empty() {
                // Raw frees last, after the queue's own items.
                match self.held.run() {
                    0 => break,
                    n => LocalCounts::add(&self.counts.deferred_frees, n),
                }
                continue;
            }
            // SAFETY: (5) a momentary borrow; O(1), runs nothing.
            let batch = unsafe { (*self.queue()).take_items() };
            let c = &self.counts;
            // The sink may take the batch elsewhere (a reclaimer, an
            // executor); what it gives back is freed here.
            let mut batch = match S::offer(self.policy.get(), batch, &mut first) {
                Offer::Taken {
                    items: n,
                    bytes: sent_bytes,
                    recycled,
                } => {
                    LocalCounts::add(&c.deferred, n);
                    c.max_pending.set(c.max_pending.get().max(n as u64));
                    LocalCounts::add(&c.offloaded, n);
                    match recycled {
                        Some(buffer) => self.recycle(buffer),
                        // Allocate now, after the unlock, rather than in
                        // the next critical section's first push.
                        // SAFETY: (6) no borrow of the queue is live.
                        None => unsafe {
                            Buffer::reserve_raw(self.queue(), sent_bytes.min(max_retained()))
                        },
                    }
                    continue;
                }
                Offer::Refused(back) => {
                    LocalCounts::add(&c.inline_fallbacks, 1);
                    back
                }
                Offer::Kept(batch) => batch,
            };
            let emptied = batch.run_until::<S::Timer>(&mut first, watch);
            // Counted as they run: items left over are counted by the
            // drain that frees them.
            let ran = batch.take_ran();
            LocalCounts::add(&c.deferred, ran);
            LocalCounts::add(&c.freed, ran);
            let found = if emptied { ran } else { ran + batch.len() };
            c.max_pending.set(c.max_pending.get().max(found as u64));
            if !emptied {
                // A freed item left a section open: the rest of the batch
                // waits, oldest first, ahead of anything deferred since.
                // SAFETY: (7) a momentary borrow; both appends relink
                // blocks in O(1) and run nothing.
                unsafe {
                    let queue = &mut *self.queue();
                    batch.append(queue);
                    queue.append(&mut batch);
                }
            }
            self.recycle(batch);
        }
        drop(draining);
        if let Some(s) = sample {
            s.drain_ends(self.counts.deferred.get(), self.counts.deferred_frees.get());
        }
        self.counts.publish();
        first
    }

    /// Gives an emptied buffer's blocks to the queue, within the retention
    /// cap on everything the thread holds; frees the rest.
    pub(crate) fn recycle(&self, mut batch: Buffer) {
        debug_assert!(batch.is_empty());
        // Frees memory with no borrow of the thread's buffers live: the
        // allocator may use freeq.
        batch.trim(max_retained().saturating_sub(self.held_bytes()));
        // SAFETY: (8) a momentary borrow; moving blocks runs nothing.
        unsafe { (*self.queue()).take_free(&mut batch) };
    }
}

/// Queues `f` (into the retired list if `retire`). Outside a section (and
/// outside a drain) the queue is drained at once through `S`, so the item
/// is freed now, and anything its destructor defers is freed by the same
/// loop.
#[inline(always)]
pub(crate) fn push<S: Sink, F: FnOnce() + Send + 'static>(f: F, retire: bool) {
    // The state is reached through a pointer rather than inside `try_with`'s
    // closure: moving `f` into the closure and back out (for the case where
    // the state is gone) costs a store-forwarding stall per item.
    let Ok(local) = LOCAL.try_with(|l| l as *const Local) else {
        return push_exiting::<S, F>(f, retire);
    };
    // SAFETY: (13) a thread's `Local` lives until its thread-local destructor
    // runs, which cannot start while this thread is in this call; the
    // reference is used only here.
    let l = unsafe { &*local };
    // Counted (`deferred`, `retired`) when drained, not here.
    let buf = if retire { l.retired() } else { l.queue() };
    // SAFETY: (14) no borrow of the thread's buffers is live: they are only
    // ever borrowed momentarily, never across user code or allocation.
    if unsafe { !Buffer::has_room_for::<F>(buf) } {
        return push_slow::<S, F>(l, f, retire);
    }
    // SAFETY: (14b) as in (14); there is room, so no block is linked.
    unsafe { Buffer::push_in_room(buf, f) };
    if !l.queues_now() {
        l.drain::<S>(false);
    }
}

/// [`push`] when the buffer needs a block: the thread's first push, a
/// full block, or a thread past its exit path.
#[cold]
#[inline(never)]
fn push_slow<S: Sink, F: FnOnce() + Send + 'static>(l: &Local, f: F, retire: bool) {
    if l.gone.get() {
        return push_exiting::<S, F>(f, retire);
    }
    hook_exit::<S>(l);
    let buf = if retire { l.retired() } else { l.queue() };
    // SAFETY: (14c) as in (14); `push_raw` holds no borrow across the
    // allocation of a block.
    unsafe { Buffer::push_raw(buf, f) };
    if !l.queues_now() {
        l.drain::<S>(false);
    }
}

/// Frees `batch`'s items on this thread: appended to the queue, so inside a
/// section they wait for the section to close, and drained at once
/// otherwise. `batch` is left empty, its free blocks kept for reuse.
pub(crate) fn free_here<S: Sink>(batch: &mut Buffer) {
    let _ = LOCAL.try_with(|l| {
        if l.gone.get() {
            return;
        }
        hook_exit::<S>(l);
        // Deferred once already, where they came from: the drain that frees
        // them here counts them only as freed.
        LocalCounts::sub(&l.counts.deferred, batch.len());
        // SAFETY: (16) a momentary borrow; `append` relinks blocks in O(1)
        // and runs nothing.
        unsafe { (*l.queue()).append(batch) };
        if !l.queues_now() {
            l.drain::<S>(false);
        }
    });
    if !batch.is_empty() {
        // This thread's state is gone (thread exit).
        run_late::<S::Timer>(batch.take_items());
    }
}

/// Hands this thread a batch gathered elsewhere (an async guard's bin), as
/// if its items had been deferred and retired here: they join the queue
/// and the retired list behind what is there, and outside a section they
/// are drained at once through `S`, so the thread's policy decides where
/// they are freed. Counted like items deferred here, when drained. Both
/// buffers are left empty; `queue`'s free blocks join the thread's queue
/// while it holds less than the retention cap.
pub(crate) fn queue_batch<S: Sink>(queue: &mut Buffer, retired: &mut Buffer) {
    let _ = LOCAL.try_with(|l| {
        if l.gone.get() {
            return;
        }
        if l.held_bytes() < max_retained() {
            // SAFETY: (16a) a momentary borrow; moves blocks, runs nothing.
            unsafe { while (*l.queue()).take_one_free(queue) {} }
        }
        if queue.is_empty() && retired.is_empty() {
            return;
        }
        hook_exit::<S>(l);
        // SAFETY: (16b) momentary borrows; `append` relinks blocks in O(1)
        // and runs nothing.
        unsafe {
            (*l.retired()).append(retired);
            (*l.queue()).append(queue);
        }
        if !l.queues_now() {
            l.drain::<S>(false);
        }
    });
    if !queue.is_empty() || !retired.is_empty() {
        // This thread's state is gone (thread exit).
        stats::count_late(queue.len(), 0, 0);
        retire_late::<S>(retired.take_items());
        run_late::<S::Timer>(queue.take_items());
    }
}

/// Gives `buf` one of this thread's spare queue blocks, if it has one:
/// an async guard's bin then takes its first items without allocating
/// under its lock. The blocks come back when a bin is freed here.
pub(crate) fn lend_block(buf: &mut Buffer) {
    let _ = LOCAL.try_with(|l| {
        // SAFETY: (16e) a momentary borrow; moves one block, runs nothing.
        unsafe { buf.take_one_free(&mut *l.queue()) };
    });
}

/// What a catch set aside when it started: the items this thread had
/// queued already. See [`catch_start`].
pub(crate) struct Aside {
    queue: Buffer,
    retired: Buffer,
    /// The catch opened a section (the thread's state was live).
    entered: bool,
}

/// Starts catching what this thread queues from now on: sets aside the
/// items it has queued already (an enclosing section's, or what a running
/// drain has not reached yet), readies the queue and opens a section.
/// [`catch_end`] takes what was queued in between and puts the set-aside
/// items back, in front, as they were.
pub(crate) fn catch_start<S: Sink>() -> Aside {
    let mut aside = Aside {
        queue: Buffer::new(),
        retired: Buffer::new(),
        entered: false,
    };
    let _ = LOCAL.try_with(|l| {
        if l.gone.get() {
            return;
        }
        // SAFETY: (16c) momentary borrows; taking items runs nothing.
        unsafe {
            aside.queue = (*l.queue()).take_items();
            aside.retired = (*l.retired()).take_items();
        }
        if !l.is_ready() {
            prepare_cold::<S>(l);
        }
        l.state.set(l.state.get() + SECTION);
        aside.entered = true;
    });
    aside
}

/// Ends a catch begun by [`catch_start`] on this thread: appends the items
/// queued since to `queue` and `retired`, puts the set-aside items back,
/// and closes the catch's section (which drains, through `S`, only what
/// was set aside, and only if it was the outermost section).
pub(crate) fn catch_end<S: Sink>(mut aside: Aside, queue: &mut Buffer, retired: &mut Buffer) {
    if !aside.entered {
        return;
    }
    let _ = LOCAL.try_with(|l| {
        if l.gone.get() {
            // The thread's exit path ran inside the catch (a catch in a
            // late thread-local destructor): what was set aside is freed
            // as the exit path frees.
            retire_late::<S>(aside.retired.take_items());
            run_late::<S::Timer>(aside.queue.take_items());
            return;
        }
        // SAFETY: (16d) momentary borrows; `append` relinks blocks in
        // O(1) and runs nothing.
        unsafe {
            let (q, r) = (&mut *l.queue(), &mut *l.retired());
            queue.append(q);
            retired.append(r);
            q.append(&mut aside.queue);
            r.append(&mut aside.retired);
        }
    });
    leave::<S>();
}

/// Frees `batch`'s items on this thread here and now, even inside a
/// section (`quiesce` or `Batch::free` called there),
/// and counts them as freed: they were counted as deferred where they came
/// from. Items their frees defer join this thread's queue as usual.
pub(crate) fn run_here<T: DropTimer>(batch: &mut Buffer, first: &mut Option<Panic>) {
    batch.take_ran();
    batch.run_all::<T>(first);
    let n = batch.take_ran();
    let counted = LOCAL.try_with(|l| {
        if l.gone.get() {
            return false;
        }
        LocalCounts::add(&l.counts.freed, n);
        // Published now: a section that ends with nothing queued drains
        // nothing, and would leave these counts unpublished.
        l.counts.publish();
        true
    });
    if !matches!(counted, Ok(true)) {
        // This thread's state is gone (thread exit).
        stats::count_late(0, n, 0);
    }
}

/// Readies this thread for a critical section: sets up its state (hooked
/// with `S`) and makes sure its queue and its retired list have room, so
/// that the section's first deferred or retired item allocates nothing
/// while the lock is held. The public `prepare_thread` binds it to the
/// dispatcher. In steady state it is a thread-local read and a compare.
#[inline]
pub(crate) fn prepare_thread<S: Sink>() {
    let _ = LOCAL.try_with(|l| {
        if !l.is_ready() {
            prepare_cold::<S>(l);
        }
        if probe::on() {
            l.probe.ready();
        }
    });
}

/// [`prepare_thread`] for an acquisition at `at`, of `kind`, that the
/// caller is about to make: whether the profile samples it. If so, the
/// caller calls [`acquired`] once it holds the lock, or [`cancel`] if it
/// did not get it. Off, the profile costs one relaxed load here.
#[inline]
pub(crate) fn prepare_at<S: Sink>(at: &'static Location<'static>, kind: LockKind) -> bool {
    LOCAL
        .try_with(|l| {
            if !l.is_ready() {
                prepare_cold::<S>(l);
            }
            probe::on() && l.state.get() == 0 && l.probe.begin(at, kind)
        })
        .unwrap_or(false)
}

/// The acquisition [`prepare_at`] sampled holds its lock now: opens its
/// section and starts timing the hold.
#[cold]
#[inline(never)]
pub(crate) fn enter_sampled() {
    let _ = LOCAL.try_with(|l| {
        l.state.set(l.state.get() + SECTION);
        l.probe.acquired();
    });
}

/// The acquisition [`prepare_at`] sampled did not get its lock.
#[cold]
#[inline(never)]
pub(crate) fn cancel() {
    let _ = LOCAL.try_with(|l| l.probe.cancel());
}

/// [`prepare_thread`] and [`enter`] in one visit to the thread's state, for
/// a section that takes no lock in between (or whose lock is held
/// already), opened at `at`: the profile may sample it, with no wait.
#[inline]
pub(crate) fn prepare_and_enter<S: Sink>(at: &'static Location<'static>, kind: LockKind) {
    let _ = LOCAL.try_with(|l| {
        if !l.is_ready() {
            prepare_cold::<S>(l);
        }
        let state = l.state.get();
        if probe::on() && state == 0 && l.probe.begin(at, kind) {
            l.probe.opened();
        }
        l.state.set(state + SECTION);
    });
}

#[cold]
#[inline(never)]
fn prepare_cold<S: Sink>(l: &Local) {
    if l.gone.get() {
        return;
    }
    hook_exit::<S>(l);
    // SAFETY: (18) no borrow of the buffers is live; `ready_raw` holds none
    // across its allocation.
    unsafe {
        Buffer::ready_raw(l.queue());
        Buffer::ready_raw(l.retired());
    }
}

/// Opens a section on this thread.
#[inline]
pub(crate) fn enter() {
    let _ = LOCAL.try_with(|l| l.state.set(l.state.get() + SECTION));
}

/// Closes a section; closing the outermost one drains the queue.
#[inline]
pub(crate) fn leave<S: Sink>() {
    let _ = LOCAL.try_with(|l| {
        let state = l.state.get();
        // Past the thread's exit path (a guard or `Section` kept in a
        // thread-local destroyed after it), the state was reset to zero:
        // closing such a section does nothing.
        debug_assert!(
            state >= SECTION || l.gone.get(),
            "freeq: section closed more often than opened"
        );
        let state = state.saturating_sub(SECTION);
        l.state.set(state);
        // Zero: no section left open and no drain running.
        if state == 0 {
            if l.has_work() {
                l.drain::<S>(false);
            } else if l.probe.is_open() {
                // A sampled section with nothing to free.
                drop(l.probe.close());
            }
        }
    });
}

/// Frees everything queued on this thread now, even inside a section.
///
/// Sections normally make this unnecessary: the queue drains by itself when
/// the outermost section closes. `flush` is for long-running sections that
/// reach a point where freeing is safe. Called while this thread is already
/// draining, it does nothing (the running drain frees everything anyway).
///
/// ```
/// let _s = freeq::section();
/// freeq::defer(vec![1, 2, 3]);
/// assert_eq!(freeq::pending(), 1);
/// freeq::flush();
/// assert_eq!(freeq::pending(), 0);
/// ```
pub(crate) fn flush<S: Sink>() {
    let _ = LOCAL.try_with(|l| {
        if !l.draining() && l.has_work() {
            l.drain::<S>(true);
        }
    });
}

/// Number of items queued on this thread (deferred or retired) and not
/// yet handed on or freed. It counts them: O(items), since a `defer`
/// keeps no count.
///
/// ```
/// assert_eq!(freeq::pending(), 0);
/// {
///     let _s = freeq::section();
///     freeq::defer(String::from("later"));
///     assert_eq!(freeq::pending(), 1);
/// }
/// assert_eq!(freeq::pending(), 0);
/// ```
pub fn pending() -> usize {
    LOCAL.try_with(Local::len).unwrap_or(0)
}

/// Frees the block `ptr` with `free`, or, inside a section, holds it
/// until the outermost section closes. `K` is the allocator type `free`
/// belongs to.
///
/// Inside a section the hot path is one access to a destructor-less
/// thread-local: the section depth, then
/// [`HeldFrees::push`](crate::queue::held::HeldFrees::push) beside it, a
/// store into a fixed array. Outside a section it is that read and a
/// compare, then `free`. It never allocates, registers nothing, and never
/// unwinds. Under loom, it never holds: its thread-locals exist only
/// inside a model, and an allocator runs outside them too.
///
/// # Safety
/// `ptr` is a freed block of `layout`, owned by nobody now, that
/// `free(ptr, layout)` frees, and so does any function given with the
/// same `K`.
#[inline(always)]
pub(crate) unsafe fn hold_or_free<K: 'static>(free: FreeFn, ptr: *mut u8, layout: Layout) {
    if !cfg!(loom)
        && let Ok(local) = LOCAL.try_with(|l| l as *const Local)
    {
        // SAFETY: (19) as in (13).
        let l = unsafe { &*local };
        if l.state.get() >= SECTION {
            // SAFETY: (20) the caller's guarantee.
            if unsafe { !l.held.push(free, ptr, layout) } {
                // SAFETY: (20b) as in (20).
                unsafe { hold_cold::<K>(ptr, layout, l, free) };
            }
            return;
        }
    }
    // SAFETY: (20c) as in (20).
    unsafe { free(ptr, layout) }
}

/// [`hold_or_free`] inside a section, past the array's fast path: the
/// thread's first held free (or the first of another allocator type), a
/// full array, a layout too large to pack. Frees cannot wait on a thread
/// whose exit path has run or is not registered (a leaked section could
/// strand them, and registering it may allocate); every section readies
/// its thread, so that is a safeguard. What cannot wait is freed at once.
///
/// # Safety
/// As for [`hold_or_free`].
#[cold]
#[inline(never)]
unsafe fn hold_cold<K: 'static>(ptr: *mut u8, layout: Layout, l: &Local, free: FreeFn) {
    let held = !l.gone.get()
        && l.exit_ready.get()
        && l.held.arm(free, TypeId::of::<K>())
        // SAFETY: (21) the caller's guarantee; the thread is armed for `K`.
        && unsafe { l.held.push_cold(ptr, layout) };
    if !held {
        // SAFETY: (21b) the caller's guarantee.
        unsafe { free(ptr, layout) }
    }
}

/// Takes every free the calling thread holds off it, to be freed
/// elsewhere: see [`HeldFrees::take`](crate::queue::held::HeldFrees::take).
pub(crate) fn take_held() -> Option<crate::queue::held::TakenFrees> {
    LOCAL.try_with(|l| l.held.take()).ok().flatten()
}

/// How many frees the calling thread holds, and their bytes.
pub(crate) fn held_totals() -> (usize, usize) {
    LOCAL.try_with(|l| l.held.totals()).unwrap_or((0, 0))
}

/// How many sections this thread is inside.
pub(crate) fn depth() -> usize {
    LOCAL.try_with(|l| l.depth()).unwrap_or(0)
}

/// Whether this thread is inside at least one section (a freeq lock guard
/// or a [`Section`](crate::Section)).
///
/// ```
/// assert!(!freeq::in_section());
/// let s = freeq::section();
/// assert!(freeq::in_section());
/// drop(s);
/// assert!(!freeq::in_section());
/// ```
pub fn in_section() -> bool {
    LOCAL.try_with(|l| l.depth() > 0).unwrap_or(false)
}

/// Whether this thread queues what it defers now: it is inside a section,
/// or draining its queue.
pub(crate) fn queues_now() -> bool {
    LOCAL.try_with(|l| l.queues_now()).unwrap_or(false)
}

/// Whether this thread's profile countdown samples an async acquisition
/// called now (one relaxed load when the profile is off).
#[inline]
pub(crate) fn samples_async() -> bool {
    probe::on() && LOCAL.try_with(|l| l.probe.take_turn()).unwrap_or(false)
}

/// In a sampled section's drain: the mark a batch leaving the thread carries.
pub(crate) fn sampled_mark() -> Option<Mark> {
    LOCAL.try_with(|l| l.probe.drain_mark()).ok().flatten()
}

/// Bytes of queue memory the calling thread holds: its queue's blocks and
/// its retired list's, in use or free. After a drain it is at most
/// [`max_retained`]. For tests and diagnostics.
#[doc(hidden)]
pub fn queue_bytes() -> usize {
    LOCAL.try_with(|l| l.held_bytes()).unwrap_or(0)
}

/// The calling thread's own policy setting (0: the process default).
pub(crate) fn policy_byte() -> Option<u8> {
    LOCAL.try_with(|l| l.policy.get()).ok()
}

/// Sets the calling thread's own policy setting.
pub(crate) fn set_policy_byte(policy: u8) {
    let _ = LOCAL.try_with(|l| l.policy.set(policy));
}
