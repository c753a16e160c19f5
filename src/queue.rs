//! The per-thread free queue and section depth.
//!
//! Each thread owns a [`Local`]: how deeply it is nested in sections, whether
//! it is draining, the queue of deferred items and the list of retired ones.
//! A drain takes the queue's whole chain of blocks in O(1) as its batch;
//! items deferred while the batch is being freed land in the queue, on its
//! free blocks, and the batch's emptied blocks go back to the queue's free
//! list, within the retention cap. Drains are a loop, never a recursion: an
//! item freed during a drain that defers more only appends to the queue,
//! and the loop picks it up. A drain after a spike frees the blocks past
//! the cap; in steady state it neither allocates nor frees memory.
//!
//! The thread's buffers are reached through raw pointers, each borrow
//! momentary, and none is held across a call into the global allocator,
//! which may itself use freeq on this thread.

use std::mem::{self, ManuallyDrop};
use std::panic::{self, AssertUnwindSafe};

use crate::item::{self, Buffer, Panic, Watch};
use crate::policy::{Policy, default_policy};
use crate::stats::{self, LocalCounts};
use crate::sync::{Cell, StaticAtomicUsize, UnsafeCell, freeq_thread_local};
use crate::{offload, retire as epoch};
use std::sync::atomic::Ordering::Relaxed;

/// Default cap on the memory a thread's queue keeps after a drain.
pub const DEFAULT_MAX_RETAINED: usize = 64 * 1024;

static MAX_RETAINED: StaticAtomicUsize = StaticAtomicUsize::new(DEFAULT_MAX_RETAINED);

/// Sets how many bytes of queue memory each thread may keep between drains
/// (default [`DEFAULT_MAX_RETAINED`], 64 KiB): everything the thread's
/// queue holds together, whole blocks of 4 KiB. A spike may grow a queue
/// past this; the excess is released by the drain that follows it. A cap
/// below one block keeps nothing, and every section then allocates its
/// queue before its lock is taken (see [`prepare_thread`]).
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

/// The draining bit of `Local::state`.
const DRAINING: usize = 1;
/// One section in `Local::state`.
const SECTION: usize = 2;

/// A thread's freeq state. It has no destructor of its own, so that
/// reaching it costs no "alive yet?" test: under `std` that makes it a
/// plain thread-local, one offset from the thread pointer. Thread exit is
/// handled by [`hook_exit`], registered the first time the thread's
/// buffers take a block or an item (always on a cold path); after it ran,
/// `gone` sends every push to the exit loop. A thread that exits the
/// process inside a section keeps what it has queued (on unix).
pub(crate) struct Local {
    /// Open sections on this thread times two, plus one while a drain (or
    /// flush) runs: "queue, don't free" is then the single test `state != 0`.
    state: Cell<usize>,
    /// Items waiting for the outermost section to close, and the free
    /// blocks the next items go to.
    queue: UnsafeCell<ManuallyDrop<Buffer>>,
    /// Items for [`retire`](crate::retire), handed to the epoch as one batch.
    retired: UnsafeCell<ManuallyDrop<Buffer>>,
    /// This thread's policy (`Policy::to_u8`), or 0 for the process default.
    policy: Cell<u8>,
    /// The thread has run its exit path: its buffers are gone for good.
    gone: Cell<bool>,
    /// The thread's exit path is registered.
    hooked: Cell<bool>,
    /// The thread's pthread key is set (unix): thread exit, not process
    /// exit, will run the exit path even if `ExitHook` leaves it.
    keyed: Cell<bool>,
    /// Counts not yet published to [`stats`](crate::stats).
    counts: ManuallyDrop<LocalCounts>,
}

freeq_thread_local! {
    static LOCAL: Local = Local::new();
}

// No destructor, so no "alive yet?" test on the way to it.
#[cfg(not(loom))]
const _: () = assert!(!mem::needs_drop::<Local>());

/// Runs [`Local::exit`] when its thread exits. Registered (by touching
/// it) on the cold paths that give a thread's buffers their first block or
/// item, never on the push fast path. See [`hook_exit`].
#[cfg(not(loom))]
struct ExitHook;

#[cfg(not(loom))]
impl Drop for ExitHook {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|l| {
            // Inside a section, this may be `exit()` (glibc runs the
            // calling thread's `thread_local!` destructors there), which
            // must not free the queue under the section's locks: the
            // pthread key, which runs on thread exit only, does it then.
            if l.depth() == 0 || !l.keyed.get() {
                l.exit();
            }
        });
    }
}

#[cfg(not(loom))]
freeq_thread_local! {
    static EXIT_HOOK: ExitHook = ExitHook;
}

/// Makes sure this thread's exit path will run.
///
/// The exit path runs from a `thread_local!` destructor ([`ExitHook`]),
/// unless the thread is inside a section then. glibc's `exit()` runs the
/// calling thread's `thread_local!` destructors, and a thread that calls
/// `std::process::exit` inside a section must not free its queue under
/// the locks it still holds. So on unix a pthread key destructor, which
/// runs when a thread ends and never from `exit()` (and after the
/// `thread_local!` destructors), runs the exit path of a thread that was
/// still inside a section (a leaked guard, or a section kept in a
/// thread-local) when its `ExitHook` ran.
#[cfg(not(loom))]
fn hook_exit(l: &Local) {
    if l.hooked.get() {
        return;
    }
    l.hooked.set(true);
    #[cfg(unix)]
    l.keyed.set(exit_key::register());
    if EXIT_HOOK.try_with(|_| ()).is_ok() {
        raw::exit_hooked();
    }
}

/// The pthread key whose destructor runs a thread's exit path (unix).
#[cfg(all(unix, not(loom)))]
mod exit_key {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// The key plus one; 0 before it is created, `usize::MAX` if creating
    /// it failed.
    static KEY: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn on_thread_exit(_: *mut libc::c_void) {
        let _ = super::LOCAL.try_with(super::Local::exit);
    }

    fn key() -> Option<libc::pthread_key_t> {
        let k = KEY.load(SeqCst);
        if k == usize::MAX {
            return None;
        }
        if k != 0 {
            return Some((k - 1) as libc::pthread_key_t);
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: (3c) `key` is a valid out-pointer; the destructor is an
        // `extern "C"` function valid for the life of the process.
        let made = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0;
        let want = if made { key as usize + 1 } else { usize::MAX };
        match KEY.compare_exchange(0, want, SeqCst, SeqCst) {
            Ok(_) => made.then_some(key),
            Err(now) => {
                if made {
                    // Another thread created one first: use that one.
                    // SAFETY: (3d) `key` was created above and never used.
                    unsafe { libc::pthread_key_delete(key) };
                }
                (now != usize::MAX).then(|| (now - 1) as libc::pthread_key_t)
            }
        }
    }

    /// Sets this thread's value of the key (non-null, so that its
    /// destructor runs at thread exit); `false` if that failed.
    pub(super) fn register() -> bool {
        let Some(key) = key() else { return false };
        // The value only has to be non-null; nothing reads it.
        let value = std::ptr::NonNull::<u8>::dangling()
            .as_ptr()
            .cast::<libc::c_void>();
        // SAFETY: (3e) `key` is a live key of this process.
        unsafe { libc::pthread_setspecific(key, value) == 0 }
    }
}

/// Under loom, `Local` runs its exit path as its own destructor.
#[cfg(loom)]
fn hook_exit(_: &Local) {
    raw::exit_hooked();
}

#[cfg(loom)]
impl Drop for Local {
    fn drop(&mut self) {
        self.exit();
    }
}

freeq_thread_local! {
    /// On a thread whose `Local` is gone or going (thread exit), the buffer
    /// of the exit loop running further up the stack, if any: items
    /// deferred by the frees it runs land there rather than being freed
    /// recursively. Needs no destructor, so it stays reachable throughout
    /// thread exit.
    static EXITING: Cell<*mut Buffer> = Cell::new(std::ptr::null_mut());
}

/// Clears the draining bit when a drain ends, however it ends.
struct Draining<'a>(&'a Cell<usize>);

impl<'a> Draining<'a> {
    fn start(state: &'a Cell<usize>) -> Self {
        state.set(state.get() | DRAINING);
        Draining(state)
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() & !DRAINING);
    }
}

impl Local {
    const fn new() -> Self {
        Local {
            state: Cell::new(0),
            queue: UnsafeCell::new(ManuallyDrop::new(Buffer::new())),
            retired: UnsafeCell::new(ManuallyDrop::new(Buffer::new())),
            policy: Cell::new(0),
            gone: Cell::new(false),
            hooked: Cell::new(false),
            keyed: Cell::new(false),
            counts: ManuallyDrop::new(LocalCounts::new()),
        }
    }

    /// The queue, for momentary borrows and [`Buffer::push_raw`].
    #[inline(always)]
    fn queue(&self) -> *mut Buffer {
        // `ManuallyDrop` is `repr(transparent)`.
        self.queue.get().cast::<Buffer>()
    }

    /// The retired list, likewise.
    #[inline(always)]
    fn retired(&self) -> *mut Buffer {
        self.retired.get().cast::<Buffer>()
    }

    fn policy(&self) -> Policy {
        Policy::from_u8(self.policy.get()).unwrap_or_else(default_policy)
    }

    #[inline(always)]
    fn queues_now(&self) -> bool {
        self.state.get() != 0
    }

    #[inline(always)]
    fn depth(&self) -> usize {
        self.state.get() >> 1
    }

    #[inline(always)]
    fn draining(&self) -> bool {
        self.state.get() & DRAINING != 0
    }

    /// Items queued, deferred and retired. O(items).
    fn len(&self) -> usize {
        // SAFETY: (1) `Local` is thread-confined; momentary reads, with no
        // other borrow of the buffers live (none is ever held across code
        // that could reach here).
        unsafe { (*self.queue()).len() + (*self.retired()).len() }
    }

    #[inline(always)]
    fn queue_empty(&self) -> bool {
        // SAFETY: (2) as in (1).
        unsafe { (*self.queue()).is_empty() }
    }

    #[inline(always)]
    fn retired_empty(&self) -> bool {
        // SAFETY: (2a) as in (1).
        unsafe { (*self.retired()).is_empty() }
    }

    /// Whether the next section's first `defer` or `retire` can store its
    /// item without allocating.
    #[inline(always)]
    fn is_ready(&self) -> bool {
        // SAFETY: (2b) momentary reads, as in (1).
        unsafe { (*self.queue()).is_ready() && (*self.retired()).is_ready() }
    }

    /// Whether a drain would find anything: deferred or retired items, or
    /// raw frees held back (see [`raw`]).
    #[inline(always)]
    fn has_work(&self) -> bool {
        !self.queue_empty() || !self.retired_empty() || raw::pending()
    }

    /// Bytes held by the thread's buffers.
    fn held_bytes(&self) -> usize {
        // SAFETY: (3) as in (1).
        unsafe { (*self.queue()).capacity_bytes() + (*self.retired()).capacity_bytes() }
    }

    /// Frees queued items until the queue is empty, or, unless `flush`, until
    /// a freed item leaves a section open on this thread. Retired items go
    /// to the epoch as one batch; under `Policy::Offload` each batch goes to
    /// a reclaimer instead of being freed here.
    #[cold]
    #[inline(never)]
    fn drain(&self, flush: bool) {
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
                let handed = panic::catch_unwind(AssertUnwindSafe(|| epoch::defer_batch(retired)));
                if let Err(payload) = handed {
                    item::keep_first(&mut first, payload);
                }
            }
            if self.queue_empty() {
                // Raw frees last, after the queue's own items.
                match raw::run() {
                    0 => break,
                    n => LocalCounts::add(&self.counts.deferred_frees, n),
                }
                continue;
            }
            // SAFETY: (5) a momentary borrow; O(1), runs nothing.
            let mut batch = unsafe { (*self.queue()).take_items() };
            let c = &self.counts;
            // Offload only what costs more to free than to move, and what
            // holds a type whose cost is not known yet (timed where it is
            // freed).
            if self.policy() == Policy::Offload
                && offload::can_hand_off()
                && offload::worth_offloading(batch.estimated_cost())
            {
                let n = batch.len();
                let sent_bytes = batch.capacity_bytes();
                match offload::hand_off(batch, &mut first) {
                    Ok(recycled) => {
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
                    Err(back) => {
                        batch = back;
                        LocalCounts::add(&c.inline_fallbacks, 1);
                    }
                }
            }
            let emptied = batch.run_until(&mut first, watch);
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
        self.counts.publish();
        item::resume(first);
    }

    /// Gives an emptied buffer's blocks to the queue, within the retention
    /// cap on everything the thread holds; frees the rest.
    fn recycle(&self, mut batch: Buffer) {
        debug_assert!(batch.is_empty());
        // Frees memory with no borrow of the thread's buffers live: the
        // allocator may use freeq.
        batch.trim(max_retained().saturating_sub(self.held_bytes()));
        // SAFETY: (8) a momentary borrow; moving blocks runs nothing.
        unsafe { (*self.queue()).take_free(&mut batch) };
    }
}

impl Local {
    /// Thread exit: whatever is still queued (a leaked guard, say) is freed
    /// here, and retired items go to the epoch. A panic from one of those
    /// frees is reported by the panic hook and then discarded, since
    /// unwinding out of a thread-local destructor would abort the process.
    /// From here on the thread's pushes go to the exit loop.
    fn exit(&self) {
        if self.gone.replace(true) {
            return;
        }
        self.state.set(0);
        // SAFETY: (3b) no borrow of the buffers is live (only momentary ones
        // are ever taken); each is swapped for an empty one that owns no
        // memory, and `gone` keeps them empty from now on.
        let (retired, queue) = unsafe {
            (
                ManuallyDrop::into_inner(mem::take(&mut *self.retired.get())),
                ManuallyDrop::into_inner(mem::take(&mut *self.queue.get())),
            )
        };
        LocalCounts::add(&self.counts.deferred, queue.len() + retired.len());
        LocalCounts::add(&self.counts.retired, retired.len());
        self.counts.publish_at_exit();
        retire_late(retired);
        run_late(queue);
        stats::count_late_frees(raw::run());
    }
}

/// Hands `batch` to the epoch on a thread whose state is gone or going.
fn retire_late(batch: Buffer) {
    if batch.is_empty() {
        return;
    }
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| epoch::defer_batch(batch))) {
        item::drop_quietly(payload);
    }
}

/// Frees `batch`'s items, and everything their frees defer, on a thread
/// whose state is gone (thread exit): in a loop, so chains of frees that
/// defer more run in constant stack. Inside a loop already running
/// further up the stack, the items join it instead. Panics are reported by
/// the panic hook and discarded: nothing may unwind out of thread exit.
fn run_late(mut batch: Buffer) {
    if batch.is_empty() {
        return;
    }
    let running = EXITING
        .try_with(|p| p.get())
        .unwrap_or(std::ptr::null_mut());
    if !running.is_null() {
        // SAFETY: (9) `running` is the buffer of the loop below, further up
        // this thread's stack; no borrow of it is live while its items run.
        // Appending relinks blocks and runs nothing.
        unsafe { (*running).append(&mut batch) };
        return;
    }
    let mut late = Buffer::new();
    late.append(&mut batch);
    drop(batch);
    let late_ptr: *mut Buffer = &raw mut late;
    if EXITING.try_with(|p| p.set(late_ptr)).is_err() {
        // Unreachable with `std`'s destructor-less thread-locals; freeing
        // where we are is all that is left.
        let mut first = None;
        // SAFETY: (10) `late_ptr` points at `late`, unborrowed.
        let n = unsafe { (*late_ptr).len() };
        // SAFETY: (10b) as in (10).
        unsafe { (*late_ptr).run_all(&mut first) };
        stats::count_late(0, n, 0);
        if let Some(payload) = first {
            item::drop_quietly(payload);
        }
        return;
    }
    loop {
        // SAFETY: (11) a momentary borrow of `late`, which lives in this
        // frame; the frees below reach it only through `EXITING`.
        let mut items = unsafe { (*late_ptr).take_items() };
        if items.is_empty() {
            break;
        }
        let n = items.len();
        let mut first = None;
        items.run_all(&mut first);
        stats::count_late(0, n, 0);
        if let Some(payload) = first {
            item::drop_quietly(payload);
        }
        // SAFETY: (12) as in (11); moves blocks, runs nothing.
        unsafe { (*late_ptr).take_free(&mut items) };
    }
    let _ = EXITING.try_with(|p| p.set(std::ptr::null_mut()));
    drop(late);
}

/// Queues `f`. Outside a section (and outside a drain) the queue is
/// drained at once, so the item is freed now, by the thread's policy, and
/// anything its destructor defers is freed by the same loop.
#[inline]
pub(crate) fn push<F: FnOnce() + Send + 'static>(f: F) {
    push_to(f, false)
}

/// [`push`], into the retired list.
#[inline]
pub(crate) fn retire<F: FnOnce() + Send + 'static>(f: F) {
    push_to(f, true)
}

#[inline(always)]
fn push_to<F: FnOnce() + Send + 'static>(f: F, retire: bool) {
    // The state is reached through a pointer rather than inside `try_with`'s
    // closure: moving `f` into the closure and back out (for the case where
    // the state is gone) costs a store-forwarding stall per item.
    let Ok(local) = LOCAL.try_with(|l| l as *const Local) else {
        return push_exiting(f, retire);
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
        return push_slow(l, f, retire);
    }
    // SAFETY: (14b) as in (14); there is room, so no block is linked.
    unsafe { Buffer::push_in_room(buf, f) };
    if !l.queues_now() {
        l.drain(false);
    }
}

/// [`push_to`] when the buffer needs a block: the thread's first push, a
/// full block, or a thread past its exit path.
#[cold]
#[inline(never)]
fn push_slow<F: FnOnce() + Send + 'static>(l: &Local, f: F, retire: bool) {
    if l.gone.get() {
        return push_exiting(f, retire);
    }
    hook_exit(l);
    let buf = if retire { l.retired() } else { l.queue() };
    // SAFETY: (14c) as in (14); `push_raw` holds no borrow across the
    // allocation of a block.
    unsafe { Buffer::push_raw(buf, f) };
    if !l.queues_now() {
        l.drain(false);
    }
}

/// [`push_to`] once this thread's state is gone (thread exit). A retired
/// value still goes to the epoch, never freed at once; anything else joins
/// the exit loop (or starts one), so frees that defer more stay iterative.
#[cold]
fn push_exiting<F: FnOnce() + Send + 'static>(f: F, retire: bool) {
    stats::count_late(1, 0, usize::from(retire));
    if retire {
        let mut batch = Buffer::new();
        batch.push(f);
        return retire_late(batch);
    }
    let running = EXITING
        .try_with(|p| p.get())
        .unwrap_or(std::ptr::null_mut());
    if running.is_null() {
        let mut batch = Buffer::new();
        batch.push(f);
        run_late(batch);
    } else {
        // SAFETY: (15) `running` is the buffer of the exit loop further up
        // this thread's stack; only momentary borrows of it exist, none
        // live now.
        unsafe { Buffer::push_raw(running, f) };
    }
}

/// Frees `batch`'s items on this thread: appended to the queue, so inside a
/// section they wait for the section to close, and drained at once
/// otherwise. `batch` is left empty, its free blocks kept for reuse.
pub(crate) fn free_here(batch: &mut Buffer) {
    let _ = LOCAL.try_with(|l| {
        if l.gone.get() {
            return;
        }
        hook_exit(l);
        // Deferred once already, where they came from: the drain that frees
        // them here counts them only as freed.
        LocalCounts::sub(&l.counts.deferred, batch.len());
        // SAFETY: (16) a momentary borrow; `append` relinks blocks in O(1)
        // and runs nothing.
        unsafe { (*l.queue()).append(batch) };
        if !l.queues_now() {
            l.drain(false);
        }
    });
    if !batch.is_empty() {
        // This thread's state is gone (thread exit).
        run_late(batch.take_items());
    }
}

/// Frees `batch`'s items on this thread here and now, even inside a
/// section (`quiesce` or [`Batch::free`](crate::Batch::free) called there),
/// and counts them as freed: they were counted as deferred where they came
/// from. Items their frees defer join this thread's queue as usual.
pub(crate) fn run_here(batch: &mut Buffer, first: &mut Option<Panic>) {
    batch.take_ran();
    batch.run_all(first);
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

/// Sets the calling thread's [`Policy`], overriding the process default
/// ([`set_default_policy`](crate::set_default_policy)). Choosing
/// `Offload` starts freeq's reclaimer threads if they are not running yet
/// (and no [`set_offload_executor`](crate::set_offload_executor) is set),
/// so the first hand-off does not pay for that.
///
/// ```
/// freeq::set_policy(freeq::Policy::Offload);
/// assert_eq!(freeq::policy(), freeq::Policy::Offload);
/// freeq::set_policy(freeq::Policy::Inline);
/// ```
pub fn set_policy(policy: Policy) {
    let _ = LOCAL.try_with(|l| l.policy.set(policy.to_u8()));
    if policy == Policy::Offload {
        offload::start_reclaimers();
    }
}

/// The calling thread's effective [`Policy`].
pub fn policy() -> Policy {
    LOCAL
        .try_with(|l| l.policy())
        .unwrap_or_else(|_| default_policy())
}

/// Readies this thread for a critical section: sets up its freeq state and
/// makes sure its queue and its retired list have room, so that the
/// section's first [`defer`](crate::defer) or [`retire`](crate::retire)
/// allocates nothing while the lock is held.
///
/// freeq's own locks ([`Mutex`](crate::Mutex), [`RwLock`](crate::RwLock),
/// the [`parking_lot`](crate::parking_lot) types and everything built on
/// [`RawDeferred`](crate::RawDeferred)) and [`section`](crate::section) call
/// this before they take the lock, so their users never need to.
/// [`LockGuard::new`](crate::LockGuard::new) receives a guard that is
/// already held: call `prepare_thread` before taking the lock you wrap.
/// In steady state it is a thread-local read and a compare.
///
/// ```
/// let m = std::sync::Mutex::new(Vec::<String>::new());
/// freeq::prepare_thread(); // before the lock, not under it
/// let mut g = freeq::LockGuard::new(m.lock().unwrap());
/// g.push("x".into());
/// ```
#[inline]
pub fn prepare_thread() {
    let _ = LOCAL.try_with(|l| {
        if !l.is_ready() {
            prepare_cold(l);
        }
    });
}

/// [`prepare_thread`] and [`enter`] in one visit to the thread's state, for
/// [`section`](crate::section), which takes no lock in between.
#[inline]
pub(crate) fn prepare_and_enter() {
    let _ = LOCAL.try_with(|l| {
        if !l.is_ready() {
            prepare_cold(l);
        }
        l.state.set(l.state.get() + SECTION);
    });
}

#[cold]
#[inline(never)]
fn prepare_cold(l: &Local) {
    if l.gone.get() {
        return;
    }
    hook_exit(l);
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
pub(crate) fn leave() {
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
        if state == 0 && l.has_work() {
            l.drain(false);
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
pub fn flush() {
    let _ = LOCAL.try_with(|l| {
        if !l.draining() && l.has_work() {
            l.drain(true);
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

/// Bytes of queue memory the calling thread holds: its queue's blocks and
/// its retired list's, in use or free. After a drain it is at most
/// [`max_retained`]. For tests and diagnostics.
#[doc(hidden)]
pub fn queue_bytes() -> usize {
    LOCAL.try_with(|l| l.held_bytes()).unwrap_or(0)
}

/// Raw frees: frees of memory (not queue items) that a layer above the
/// queue, the allocator's [`DeferFrees`](crate::alloc::DeferFrees), holds
/// back while this thread is in a section. The queue knows one function to
/// call, which frees them and says how many: the drain of the outermost
/// section calls it after the queue's own items (as does
/// [`flush`]), and so does the thread's exit path.
pub(crate) mod raw {
    use super::LOCAL;
    use crate::sync::{Cell, freeq_thread_local};

    /// This thread's part: what to call, and whether the exit path that
    /// calls it is registered.
    struct RawFrees {
        run: Cell<Option<fn() -> usize>>,
        exit_hooked: Cell<bool>,
    }

    freeq_thread_local! {
        static RAW: RawFrees = RawFrees {
            run: Cell::new(None),
            exit_hooked: Cell::new(false),
        };
    }

    /// Whether a free made now on this thread may wait: the thread is in a
    /// section and its state is live. Reads a destructor-less thread-local
    /// only: it never allocates, registers nothing, and never unwinds.
    /// Under loom, never: its thread-locals exist only inside a model, and
    /// an allocator runs outside them too.
    #[inline(always)]
    pub(crate) fn may_wait() -> bool {
        !cfg!(loom)
            && LOCAL
                .try_with(|l| l.depth() > 0 && !l.gone.get())
                .unwrap_or(false)
    }

    /// Frees are about to wait, where none did: `run` frees them when the
    /// outermost section closes. False where they cannot wait after all:
    /// the thread's exit path is not registered, so a leaked section could
    /// strand them (registering it may allocate). Allocation-free, as
    /// [`may_wait`].
    #[inline]
    pub(crate) fn first_held(run: fn() -> usize) -> bool {
        RAW.try_with(|r| {
            let hooked = r.exit_hooked.get();
            if hooked {
                r.run.set(Some(run));
            }
            hooked
        })
        .unwrap_or(false)
    }

    /// Whether frees wait.
    #[inline(always)]
    pub(super) fn pending() -> bool {
        RAW.try_with(|r| r.run.get().is_some()).unwrap_or(false)
    }

    /// Runs the waiting frees; how many there were.
    pub(super) fn run() -> usize {
        match RAW.try_with(|r| r.run.take()) {
            Ok(Some(run)) => run(),
            _ => 0,
        }
    }

    /// The exit path is registered.
    pub(super) fn exit_hooked() {
        let _ = RAW.try_with(|r| r.exit_hooked.set(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn log() -> Arc<Mutex<Vec<u32>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    fn record(log: &Arc<Mutex<Vec<u32>>>, i: u32) -> impl FnOnce() + Send + 'static {
        let log = log.clone();
        move || log.lock().unwrap().push(i)
    }

    #[test]
    fn a_free_that_leaks_a_section_stops_the_drain() {
        let seen = log();
        enter();
        push(record(&seen, 1));
        // The second item leaks a section: nothing after it may run until
        // that section closes.
        push(|| {
            enter();
            push(|| ());
        });
        push(record(&seen, 3));
        leave();
        assert_eq!(*seen.lock().unwrap(), vec![1]);
        assert!(in_section());
        assert_eq!(pending(), 2, "the rest of the batch, then the newer item");
        leave(); // the leaked section closes
        assert_eq!(*seen.lock().unwrap(), vec![1, 3]);
        assert_eq!(pending(), 0);
    }

    #[test]
    fn items_deferred_while_draining_run_after_the_batch() {
        let seen = log();
        {
            enter();
            let s = seen.clone();
            push(move || {
                s.lock().unwrap().push(1);
                push(record(&s, 3));
            });
            push(record(&seen, 2));
            leave();
        }
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    }

    /// Each link, when freed, defers the next one.
    struct Link(usize, Arc<Mutex<usize>>);

    impl Drop for Link {
        fn drop(&mut self) {
            *self.1.lock().unwrap() += 1;
            if self.0 > 0 {
                crate::defer(Link(self.0 - 1, self.1.clone()));
            }
        }
    }

    #[test]
    fn a_chain_freed_at_thread_exit_runs_in_constant_stack() {
        let links = if cfg!(miri) { 200 } else { 200_000 };
        let freed = Arc::new(Mutex::new(0));
        let f = freed.clone();
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                enter(); // leaked: the chain waits for thread exit
                crate::defer(Link(links - 1, f));
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(*freed.lock().unwrap(), links);
    }

    #[test]
    fn retention_cap_applies_after_a_spike() {
        let old = max_retained();
        set_max_retained(1024);
        enter();
        for i in 0..10_000u64 {
            push(move || assert!(i < 10_000));
        }
        leave();
        let kept = queue_bytes();
        assert!(kept <= 1024, "kept {kept} bytes");
        set_max_retained(old);
    }
}
