//! The per-thread free queue and section depth.
//!
//! Each thread owns a [`Local`]: how deeply it is nested in sections, whether
//! it is draining, the queue of deferred items and a spare buffer that the
//! queue swaps with at drain time, so a drain never allocates and items
//! deferred while a batch is being freed land in the other buffer. Drains are
//! a loop, never a recursion: an item freed during a drain that defers more
//! only appends to the queue, and the loop picks it up.

use std::mem;

use crate::item::{self, Buffer, Panic, Watch};
use crate::policy::{default_policy, Policy};
use crate::stats::LocalCounts;
use crate::sync::{freeq_thread_local, Cell, StaticAtomicUsize, UnsafeCell};
use crate::{offload, retire as epoch};
use std::sync::atomic::Ordering::Relaxed;

/// Default cap on the memory a thread's queue keeps after a drain.
pub const DEFAULT_MAX_RETAINED: usize = 64 * 1024;

static MAX_RETAINED: StaticAtomicUsize = StaticAtomicUsize::new(DEFAULT_MAX_RETAINED);

/// Sets how many bytes of queue memory each thread may keep between drains
/// (default [`DEFAULT_MAX_RETAINED`], 64 KiB). A spike may grow a queue past
/// this; the excess is released after the drain that follows it.
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

pub(crate) struct Local {
    /// Open sections on this thread times two, plus one while a drain (or
    /// flush) runs: "queue, don't free" is then the single test `state != 0`.
    state: Cell<usize>,
    /// Items waiting for the outermost section to close.
    queue: UnsafeCell<Buffer>,
    /// An empty buffer with capacity, swapped in for the queue at drain time.
    spare: UnsafeCell<Buffer>,
    /// Items for [`retire`](crate::retire), handed to the epoch as one batch.
    retired: UnsafeCell<Buffer>,
    /// This thread's policy (`Policy::to_u8`), or 0 for the process default.
    policy: Cell<u8>,
    /// Counts not yet published to [`stats`](crate::stats).
    counts: LocalCounts,
}

freeq_thread_local! {
    static LOCAL: Local = Local::new();
}

freeq_thread_local! {
    /// While this thread's `Local` is being destroyed (thread exit), the
    /// buffer its destructor drains into: items deferred by the frees it
    /// runs land here rather than being freed recursively. Needs no
    /// destructor, so it stays reachable throughout thread exit.
    static EXITING: Cell<*mut Buffer> = Cell::new(std::ptr::null_mut());
}

impl Local {
    const fn new() -> Self {
        Local {
            state: Cell::new(0),
            queue: UnsafeCell::new(Buffer::new()),
            spare: UnsafeCell::new(Buffer::new()),
            retired: UnsafeCell::new(Buffer::new()),
            policy: Cell::new(0),
            counts: LocalCounts::new(),
        }
    }

    /// # Safety
    /// No other reference to the queue may exist while the returned one
    /// lives, and no user code (which could reach this thread's queue) may
    /// run during that time.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn queue(&self) -> &mut Buffer {
        // SAFETY: (1) `Local` is thread-confined (a thread-local, never
        // shared), and the caller upholds exclusivity as documented.
        unsafe { &mut *self.queue.get() }
    }

    /// # Safety
    /// As for [`Local::queue`], for the spare buffer.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn spare(&self) -> &mut Buffer {
        // SAFETY: (2) as in `queue`.
        unsafe { &mut *self.spare.get() }
    }

    /// # Safety
    /// As for [`Local::queue`], for the retired buffer.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn retired(&self) -> &mut Buffer {
        // SAFETY: (2b) as in `queue`.
        unsafe { &mut *self.retired.get() }
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

    fn set_draining(&self, on: bool) {
        let s = self.state.get();
        self.state
            .set(if on { s | DRAINING } else { s & !DRAINING });
    }

    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: (3) a momentary shared read; no user code runs.
        unsafe { self.queue().len() }
    }

    /// Whether a drain would find anything: deferred or retired items.
    #[inline(always)]
    fn has_work(&self) -> bool {
        // SAFETY: (3b) as in (3).
        self.len() > 0 || unsafe { !self.retired().is_empty() }
    }

    /// Frees queued items until the queue is empty, or, unless `flush`, until
    /// a freed item leaves a section open on this thread. Retired items go
    /// to the epoch as one batch; under `Policy::Offload` each batch goes to
    /// a reclaimer instead of being freed here.
    #[cold]
    #[inline(never)]
    fn drain(&self, flush: bool) {
        self.set_draining(true);
        LocalCounts::add(&self.counts.drains, 1);
        let mut first: Option<Panic> = None;
        let stop = || !flush && self.depth() > 0;
        // Inside the batch, the same test as `stop`, without a call per item.
        let watch = (!flush).then_some(Watch {
            cell: &self.state,
            limit: SECTION,
        });
        while !stop() {
            // SAFETY: (4) the borrows end before anything runs.
            if unsafe { !self.retired().is_empty() } {
                // SAFETY: (4b) as in (4).
                let retired = unsafe { mem::take(self.retired()) };
                let r = retired.len();
                LocalCounts::add(&self.counts.deferred, r);
                LocalCounts::add(&self.counts.retired, r);
                // May run epoch garbage, which lands in this queue.
                epoch::defer_batch(retired);
            }
            if self.len() == 0 {
                break;
            }
            // SAFETY: (5) the two borrows are disjoint and end before any
            // item runs; no user code runs in between.
            let mut batch = unsafe { mem::replace(self.queue(), mem::take(self.spare())) };
            let n = batch.len();
            let c = &self.counts;
            LocalCounts::add(&c.deferred, n);
            c.max_pending.set(c.max_pending.get().max(n as u64));
            if self.policy() == Policy::Offload {
                let sent_bytes = batch.capacity_bytes();
                match offload::hand_off(batch) {
                    Ok(recycled) => {
                        LocalCounts::add(&c.offloaded, n);
                        match recycled {
                            Some(buffer) => self.recycle(buffer),
                            // Allocate now, after the unlock, rather than in
                            // the next critical section's first push.
                            // SAFETY: (12) no user code runs.
                            None => unsafe { self.queue() }
                                .reserve_bytes(sent_bytes.min(max_retained())),
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
            LocalCounts::add(&c.freed, n - batch.len());
            if !emptied {
                // A freed item left a section open: the rest of the batch
                // waits, oldest first, ahead of anything deferred since.
                // They are counted again when they are drained.
                LocalCounts::sub(&c.deferred, batch.len());
                // SAFETY: (6) as in (5); `append` moves bytes, runs nothing.
                unsafe {
                    let queue = self.queue();
                    batch.append(queue);
                    mem::swap(queue, &mut batch);
                }
            }
            self.recycle(batch);
        }
        self.set_draining(false);
        self.counts.publish();
        item::resume(first);
    }

    /// Keeps an emptied buffer as the spare, within the retention cap.
    fn recycle(&self, mut batch: Buffer) {
        debug_assert!(batch.is_empty());
        batch.trim(max_retained());
        // SAFETY: (7) no user code runs; the buffer dropped here is empty,
        // so its drop only frees memory.
        unsafe {
            let spare = self.spare();
            if spare.capacity_bytes() < batch.capacity_bytes() {
                mem::swap(spare, &mut batch);
            }
        }
    }
}

impl Drop for Local {
    /// Thread exit: whatever is still queued (a leaked guard, say) is freed
    /// here, and retired items go to the epoch. A panic from one of those
    /// frees is reported by the panic hook and then discarded, since
    /// unwinding out of a thread-local destructor would abort the process.
    fn drop(&mut self) {
        self.state.set(0);
        let mut first = None;
        let mut late = Buffer::new();
        let late_ptr: *mut Buffer = &mut late;
        let _ = EXITING.try_with(|p| p.set(late_ptr));
        let mut batch = mem::take(self.queue.get_mut());
        loop {
            let n = batch.len();
            batch.run_all(&mut first);
            LocalCounts::add(&self.counts.deferred, n);
            LocalCounts::add(&self.counts.freed, n);
            // SAFETY: (13) `late` is only reached through `late_ptr` (here,
            // and from pushes on this thread while items run, none of which
            // is running now); it outlives the loop.
            batch = unsafe { mem::take(&mut *late_ptr) };
            if batch.is_empty() {
                break;
            }
        }
        let _ = EXITING.try_with(|p| p.set(std::ptr::null_mut()));
        let retired = mem::take(self.retired.get_mut());
        if !retired.is_empty() {
            LocalCounts::add(&self.counts.deferred, retired.len());
            LocalCounts::add(&self.counts.retired, retired.len());
            let handed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                epoch::defer_batch(retired)
            }));
            if let Err(payload) = handed {
                item::keep_first(&mut first, payload);
            }
        }
        self.counts.publish_at_exit();
        if let Some(payload) = first {
            item::drop_quietly(payload);
        }
    }
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
        return push_exiting(f);
    };
    // SAFETY: (8) a thread's `Local` lives until its thread-local destructor
    // runs, which cannot start while this thread is in this call; the
    // reference is used only here.
    let l = unsafe { &*local };
    // Counted (`deferred`, `retired`) when drained, not here.
    if retire {
        // SAFETY: (9) pushing runs no user code.
        unsafe { l.retired() }.push(f);
    } else {
        // SAFETY: (9b) as in (9).
        unsafe { l.queue() }.push(f);
    }
    if !l.queues_now() {
        l.drain(false);
    }
}

/// [`push_to`] once this thread's state is gone (thread exit): into the
/// buffer its destructor is draining, or, after that, freed in place.
#[cold]
fn push_exiting<F: FnOnce() + Send + 'static>(f: F) {
    let late = EXITING
        .try_with(|p| p.get())
        .unwrap_or(std::ptr::null_mut());
    if late.is_null() {
        f();
    } else {
        // SAFETY: (14) `late` points at the buffer `Local::drop` drains, on
        // this thread, for as long as it is set; no other reference to it is
        // live while an item runs.
        unsafe { (*late).push(f) };
    }
}

/// Frees `batch`'s items on this thread: appended to the queue, so inside a
/// section they wait for the section to close, and drained at once
/// otherwise. `batch` is left empty, its memory kept for reuse.
pub(crate) fn free_here(batch: &mut Buffer) {
    let _ = LOCAL.try_with(|l| {
        // Deferred once already, where they came from: the drain that frees
        // them here counts them only as freed.
        LocalCounts::sub(&l.counts.deferred, batch.len());
        // SAFETY: (10) `append` moves bytes and runs nothing.
        unsafe { l.queue() }.append(batch);
        if !l.queues_now() {
            l.drain(false);
        }
    });
    if !batch.is_empty() {
        // This thread's state is gone (thread exit): free in place.
        let mut first = None;
        batch.run_all(&mut first);
        item::resume(first);
    }
}

/// Sets the calling thread's [`Policy`], overriding the process default
/// ([`set_default_policy`](crate::set_default_policy)).
///
/// ```
/// freeq::set_policy(freeq::Policy::Offload);
/// assert_eq!(freeq::policy(), freeq::Policy::Offload);
/// freeq::set_policy(freeq::Policy::Inline);
/// ```
pub fn set_policy(policy: Policy) {
    let _ = LOCAL.try_with(|l| l.policy.set(policy.to_u8()));
}

/// The calling thread's effective [`Policy`].
pub fn policy() -> Policy {
    LOCAL
        .try_with(|l| l.policy())
        .unwrap_or_else(|_| default_policy())
}

/// Readies this thread for a critical section: sets up its freeq state and
/// makes sure its queue has room, so that the section's first
/// [`defer`](crate::defer) allocates nothing while the lock is held.
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
        // SAFETY: (15) a momentary borrow; reserving runs no user code
        // (see the allocator note on `Buffer::push`).
        let q = unsafe { l.queue() };
        if q.capacity_bytes() == 0 {
            prepare_cold(q);
        }
    });
}

#[cold]
#[inline(never)]
fn prepare_cold(q: &mut Buffer) {
    q.reserve_bytes(1024);
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
        debug_assert!(
            state >= SECTION,
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
/// yet handed on or freed.
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
    // SAFETY: (11) a momentary read; no user code runs.
    LOCAL
        .try_with(|l| l.len() + unsafe { l.retired() }.len())
        .unwrap_or(0)
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
        let kept = LOCAL.with(|l| {
            // SAFETY: test-only momentary reads; no user code runs.
            unsafe { l.queue().capacity_bytes() + l.spare().capacity_bytes() }
        });
        assert!(kept <= 2 * 1024, "kept {kept} bytes");
        set_max_retained(old);
    }
}
