//! A thread's freeq state and its way out at thread exit.
//!
//! Each thread owns a [`Local`]: how deeply it is nested in sections, whether
//! it is draining, the queue of deferred items and the list of retired ones.
//! The thread's buffers are reached through raw pointers, each borrow
//! momentary, and none is held across a call into the global allocator,
//! which may itself use freeq on this thread.
//!
//! Thread exit frees what is left through the exit loop here, in constant
//! stack. Where retired items go and how frees are timed is the caller's
//! [`Sink`], whose exit path the thread remembers the first time it is
//! hooked. This file calls the buffer, the held frees' storage, `stats`
//! (counters), the profile's probe, `platform` (the thread-end key) and
//! the `sync` shim;
//! `section.rs` builds the section and drain entries on it. [`run_one`]
//! frees one item handed over from elsewhere (an async guard's) as a drain
//! of that item would.

use std::any::TypeId;
use std::mem::{self, ManuallyDrop};
use std::panic::{self, AssertUnwindSafe};

use crate::profile::probe::Probe;
use crate::queue::buffer::Buffer;
use crate::queue::held::HeldFrees;
use crate::queue::hooks::DropTimer;
use crate::queue::panic::drop_quietly;
use crate::queue::sink::Sink;
use crate::stats::{self, LocalCounts};
use crate::sync::{Cell, UnsafeCell, freeq_thread_local};

/// The draining bit of `Local::state`.
pub(crate) const DRAINING: usize = 1;
/// One section in `Local::state`.
pub(crate) const SECTION: usize = 2;

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
    pub(crate) state: Cell<usize>,
    /// Items waiting for the outermost section to close, and the free
    /// blocks the next items go to.
    pub(crate) queue: UnsafeCell<ManuallyDrop<Buffer>>,
    /// Items for `retire`, handed to the epoch as one batch.
    pub(crate) retired: UnsafeCell<ManuallyDrop<Buffer>>,
    /// This thread's policy (`Policy::to_u8`), or 0 for the process default.
    pub(crate) policy: Cell<u8>,
    /// The thread has run its exit path: its buffers are gone for good.
    pub(crate) gone: Cell<bool>,
    /// The exit path will run when the thread ends: a registration took.
    pub(crate) exit_ready: Cell<bool>,
    /// The thread's pthread key is set (unix): thread exit, not process
    /// exit, will run the exit path even if `ExitHook` leaves it. (Read
    /// by `ExitHook` only, which loom builds leave out.)
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) keyed: Cell<bool>,
    /// Counts not yet published to `stats`.
    pub(crate) counts: ManuallyDrop<LocalCounts>,
    /// The thread's exit path, with the sink of the entry that hooked it;
    /// set once, by [`hook_exit`].
    exit_path: Cell<Option<fn(&Local)>>,
    /// Frees of memory (not items) that the allocator holds back while
    /// the thread is in a section. Here, beside `state`, so that a held
    /// free reaches both through one thread-local access. The drain of the
    /// outermost section frees them after the queue's own items (as does
    /// `flush`), and so does the exit path.
    pub(crate) held: HeldFrees,
    /// The profile's sampling state: off, a byte the outermost close
    /// tests.
    pub(crate) probe: Probe,
}

freeq_thread_local! {
    pub(crate) static LOCAL: Local = Local::new();
}

// No destructor, so no "alive yet?" test on the way to it.
#[cfg(not(loom))]
const _: () = assert!(!mem::needs_drop::<Local>());

/// Runs the thread's exit path when its thread exits. Registered (by touching
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
                l.run_exit();
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
///
/// The exit path runs with `S`, the sink of the entry that hooks the
/// thread first (there is one in freeq).
pub(crate) fn hook_exit<S: Sink>(l: &Local) {
    if l.exit_path.get().is_some() {
        return;
    }
    l.exit_path.set(Some(Local::exit::<S> as fn(&Local)));
    register_exit(l);
}

#[cfg(not(loom))]
fn register_exit(l: &Local) {
    // Off unix there is no thread-end hook: `keyed` stays false.
    l.keyed
        .set(crate::platform::on_thread_end(exit_at_thread_end));
    let hooked = EXIT_HOOK.try_with(|_| ()).is_ok();
    l.exit_ready.set(hooked || l.keyed.get());
}

/// The thread-end hook (a pthread key on unix): runs the exit path of a
/// thread still inside a section when its `ExitHook` ran.
#[cfg(not(loom))]
fn exit_at_thread_end() {
    let _ = LOCAL.try_with(Local::run_exit);
}

/// Under loom, `Local` runs its exit path as its own destructor.
#[cfg(loom)]
fn register_exit(l: &Local) {
    l.exit_ready.set(true);
}

#[cfg(loom)]
impl Drop for Local {
    fn drop(&mut self) {
        self.run_exit();
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
pub(crate) struct Draining<'a>(&'a Cell<usize>);

impl<'a> Draining<'a> {
    pub(crate) fn start(state: &'a Cell<usize>) -> Self {
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
            exit_ready: Cell::new(false),
            keyed: Cell::new(false),
            counts: ManuallyDrop::new(LocalCounts::new()),
            exit_path: Cell::new(None),
            held: HeldFrees::new(),
            probe: Probe::new(),
        }
    }

    /// The queue, for momentary borrows and [`Buffer::push_raw`].
    #[inline(always)]
    pub(crate) fn queue(&self) -> *mut Buffer {
        // `ManuallyDrop` is `repr(transparent)`.
        self.queue.get().cast::<Buffer>()
    }

    /// The retired list, likewise.
    #[inline(always)]
    pub(crate) fn retired(&self) -> *mut Buffer {
        self.retired.get().cast::<Buffer>()
    }

    #[inline(always)]
    pub(crate) fn queues_now(&self) -> bool {
        self.state.get() != 0
    }

    #[inline(always)]
    pub(crate) fn depth(&self) -> usize {
        self.state.get() >> 1
    }

    #[inline(always)]
    pub(crate) fn draining(&self) -> bool {
        self.state.get() & DRAINING != 0
    }

    /// Items queued, deferred and retired. O(items).
    pub(crate) fn len(&self) -> usize {
        // SAFETY: (1) `Local` is thread-confined; momentary reads, with no
        // other borrow of the buffers live (none is ever held across code
        // that could reach here).
        unsafe { (*self.queue()).len() + (*self.retired()).len() }
    }

    #[inline(always)]
    pub(crate) fn queue_empty(&self) -> bool {
        // SAFETY: (2) as in (1).
        unsafe { (*self.queue()).is_empty() }
    }

    #[inline(always)]
    pub(crate) fn retired_empty(&self) -> bool {
        // SAFETY: (2a) as in (1).
        unsafe { (*self.retired()).is_empty() }
    }

    /// Whether the next section's first `defer` or `retire` can store its
    /// item without allocating.
    #[inline(always)]
    pub(crate) fn is_ready(&self) -> bool {
        // SAFETY: (2b) momentary reads, as in (1).
        unsafe { (*self.queue()).is_ready() && (*self.retired()).is_ready() }
    }

    /// Whether a drain would find anything: deferred or retired items, or
    /// raw frees held back.
    #[inline(always)]
    pub(crate) fn has_work(&self) -> bool {
        !self.queue_empty() || !self.retired_empty() || !self.held.is_empty()
    }

    /// Bytes held by the thread's buffers.
    pub(crate) fn held_bytes(&self) -> usize {
        // SAFETY: (3) as in (1).
        unsafe { (*self.queue()).capacity_bytes() + (*self.retired()).capacity_bytes() }
    }

    /// Runs the exit path remembered by [`hook_exit`]. A thread never
    /// hooked has no block and no item: it only publishes its counts.
    fn run_exit(&self) {
        match self.exit_path.get() {
            Some(exit) => exit(self),
            None => {
                if !self.gone.replace(true) {
                    self.state.set(0);
                    self.counts.publish_at_exit();
                    self.probe.exit();
                }
            }
        }
    }

    /// Thread exit: whatever is still queued (a leaked guard, say) is freed
    /// here, and retired items go to `S` (the epoch). A panic from one of
    /// those frees is reported by the panic hook and then discarded, since
    /// unwinding out of a thread-local destructor would abort the process.
    /// From here on the thread's pushes go to the exit loop.
    fn exit<S: Sink>(&self) {
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
        self.probe.exit();
        retire_late::<S>(retired);
        run_late::<S::Timer>(queue);
        // Frees held by the sections those frees opened too; from here on
        // none is held (`gone`).
        stats::count_late_frees(self.held.run());
        self.held.disarm();
    }
}

/// How many frees [`run_one`] counts before it publishes them (a drain, or
/// the thread's exit, publishes them sooner): publishing costs about as
/// much as the free of a small value.
pub(crate) const PUBLISH_EVERY: u64 = 64;

/// Whether [`run_one`] may free an item here and now: this thread's state
/// is live, and it is outside any section and not draining (a drain
/// would free the item at once).
#[inline]
pub(crate) fn idle() -> bool {
    LOCAL
        .try_with(|l| !l.queues_now() && !l.gone.get())
        .unwrap_or(false)
}

/// Frees `f`, one item handed over from elsewhere (an async guard's only
/// item), here and now, as a drain of that item alone would: timed by `T`,
/// counted as deferred and freed (published with the thread's next drain,
/// or every [`PUBLISH_EVERY`] such frees), and what its free defers freed
/// before this returns (outside a section, its push drains at once). Call
/// it where [`idle`] said yes. A panic from `f` unwinds from here: it is
/// the only item, so nothing is left to run (what it deferred before
/// panicking ran already, in its own drain).
#[inline]
pub(crate) fn run_one<T: DropTimer, F: FnOnce() + 'static>(f: F) {
    let _ = LOCAL.try_with(|l| {
        let c = &l.counts;
        LocalCounts::add(&c.deferred, 1);
        LocalCounts::add(&c.freed, 1);
        LocalCounts::add(&c.drains, 1);
        c.max_pending.set(c.max_pending.get().max(1));
        // `drains` counts since the last publication, which every drain
        // makes: past `PUBLISH_EVERY`, it was these frees alone.
        if c.drains.get() >= PUBLISH_EVERY {
            c.publish();
        }
    });
    let id = TypeId::of::<F>();
    let mark = T::start(id);
    f();
    if let Some(mark) = mark {
        T::finish(id, mark, 1);
    }
}

/// Hands `batch` to `S` (the epoch) on a thread whose state is gone or
/// going.
pub(crate) fn retire_late<S: Sink>(batch: Buffer) {
    if batch.is_empty() {
        return;
    }
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| S::retire(batch, true))) {
        drop_quietly(payload);
    }
}

/// Frees `batch`'s items, and everything their frees defer, on a thread
/// whose state is gone (thread exit): in a loop, so chains of frees that
/// defer more run in constant stack. Inside a loop already running
/// further up the stack, the items join it instead. Panics are reported by
/// the panic hook and discarded: nothing may unwind out of thread exit.
pub(crate) fn run_late<T: DropTimer>(mut batch: Buffer) {
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
        unsafe { (*late_ptr).run_all::<T>(&mut first) };
        stats::count_late(0, n, 0);
        if let Some(payload) = first {
            drop_quietly(payload);
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
        items.run_all::<T>(&mut first);
        stats::count_late(0, n, 0);
        if let Some(payload) = first {
            drop_quietly(payload);
        }
        // SAFETY: (12) as in (11); moves blocks, runs nothing.
        unsafe { (*late_ptr).take_free(&mut items) };
    }
    let _ = EXITING.try_with(|p| p.set(std::ptr::null_mut()));
    drop(late);
}

/// A push once this thread's state is gone (thread exit). A retired
/// value still goes to the epoch, never freed at once; anything else joins
/// the exit loop (or starts one), so frees that defer more stay iterative.
#[cold]
pub(crate) fn push_exiting<S: Sink, F: FnOnce() + Send + 'static>(f: F, retire: bool) {
    stats::count_late(1, 0, usize::from(retire));
    if retire {
        let mut batch = Buffer::new();
        batch.push(f);
        return retire_late::<S>(batch);
    }
    let running = EXITING
        .try_with(|p| p.get())
        .unwrap_or(std::ptr::null_mut());
    if running.is_null() {
        let mut batch = Buffer::new();
        batch.push(f);
        run_late::<S::Timer>(batch);
    } else {
        // SAFETY: (15) `running` is the buffer of the exit loop further up
        // this thread's stack; only momentary borrows of it exist, none        // live now.
        unsafe { Buffer::push_raw(running, f) };
    }
}
