//! An async guard's bin: what its holder deferred, freed after the
//! release by whichever thread frees it.
//!
//! A small first item is kept in the bin itself, and a bin that holds only
//! it frees it in place when its type is known to be cheap
//! ([`dispatch::free_one`]), without the queue. Anything else goes to a
//! queue layer's buffer (the thread's spare one), handed whole to the
//! freeing thread's queue or to a reclaimer (`release_bin`,
//! `queue_batch`). This file calls the dispatcher, the queue's buffer and
//! the allocator's held frees.

use std::any::TypeId;
use std::cell::Cell;
use std::mem::{self, ManuallyDrop, MaybeUninit};

use crate::alloc::take_held;
use crate::profile::sample::{AsyncFreeing, AsyncSample};
use crate::queue::buffer::Buffer;
use crate::reclaim::dispatch::{self, BIN_BUDGET_NS};

/// Words of a deferred closure a bin keeps in itself: a `Vec`, a
/// `String`, a `Box` or an `Arc` with room to spare.
const ONE_WORDS: usize = 3;

/// Where a bin keeps its first item when it is small.
type OneSlot = [MaybeUninit<usize>; ONE_WORDS];

/// What a bin knows of the item in its [`OneSlot`]: one `'static` per
/// closure type.
struct OneMeta {
    /// Moves the item into `to`, at its tail.
    spill: unsafe fn(*mut OneSlot, &mut Buffer),
    /// Frees the item here and now where [`dispatch::free_one`] takes it
    /// within the given budget (returns `true`), else leaves it in place.
    free_within: unsafe fn(*mut OneSlot, u64) -> bool,
    /// Whether `free_within` would free it, given that budget.
    within: fn(u64) -> bool,
}

/// Whether an `F` fits a [`OneSlot`].
const fn fits<F>() -> bool {
    mem::size_of::<F>() <= mem::size_of::<OneSlot>()
        && mem::align_of::<F>() <= mem::align_of::<OneSlot>()
}

/// [`OneMeta::spill`] for `F`.
///
/// # Safety
/// `one` holds an `F` written by [`Bin::push`], not read since; the
/// caller treats it as empty from now on.
unsafe fn spill_one<F: FnOnce() + Send + 'static>(one: *mut OneSlot, to: &mut Buffer) {
    // SAFETY: (2) the caller's promise: an `F` is there, aligned (checked
    // by `fits` when it was written), and read exactly once.
    let f = unsafe { one.cast::<F>().read() };
    push_queued(to, f);
}

/// [`OneMeta::free_within`] for `F`.
///
/// # Safety
/// `one` holds an `F` written by [`Bin::push`], not read since. If this
/// returns `true`, the caller treats it as empty from now on; if `false`,
/// it was not touched.
unsafe fn free_one_within<F: FnOnce() + Send + 'static>(one: *mut OneSlot, limit_ns: u64) -> bool {
    if !dispatch::frees_one_here(TypeId::of::<F>(), limit_ns) {
        return false;
    }
    // SAFETY: (3) as in (2).
    let f = unsafe { one.cast::<F>().read() };
    dispatch::free_one(f);
    true
}

/// Pushes `f` into `queue`, lending it a spare block of this thread's
/// queue rather than allocating under the lock, where one is at hand.
#[inline]
fn push_queued<F: FnOnce() + Send + 'static>(queue: &mut Buffer, f: F) {
    if !queue.is_ready() {
        dispatch::lend_block(queue);
    }
    queue.push(f);
}

std::thread_local! {
    /// The queue of the last bin with more than one item freed on this
    /// thread, emptied: the next bin that needs one takes it rather than
    /// allocating under its lock.
    static SPARE: Cell<Option<Box<Buffer>>> = const { Cell::new(None) };
}

/// A queue for a bin: this thread's spare, or a new one.
fn take_spare() -> Box<Buffer> {
    SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps an emptied bin's queue as this thread's spare (dropping the one
/// it replaces, outside the thread-local).
fn keep_spare(queue: Box<Buffer>) {
    if queue.is_empty() {
        let _ = SPARE.try_with(|s| s.replace(Some(queue)));
    }
}

/// A guard's own bin of deferred work: what its holder deferred and what
/// its `with` calls caught (retired items among them travel as one item
/// that hands them on). Dropping it frees it (see [`Bin::free`]).
///
/// A small first item (a closure of up to [`ONE_WORDS`] words: a `Vec`,
/// a `String` or a `Box` deferred) is kept in the bin itself, `one`, and
/// a bin that holds only it frees it without the queue
/// ([`dispatch::free_one`]) when it is cheap: no block, no hand-over to
/// the thread's queue, no drain. Any other item goes to `more`, a queue
/// layer's buffer (the thread's spare one), after `one` has moved there:
/// `one` holds an item only while `more` holds none, so the order stays
/// the push order. A bin is six words (the sixth the profile's sample).
pub(crate) struct Bin {
    /// The type of the item in `one`, if it holds one.
    one_meta: Option<&'static OneMeta>,
    one: OneSlot,
    /// Every item when `one` holds none, once there is more than one.
    more: Option<Box<Buffer>>,
    /// The profile's record of the guard's acquisition, if it sampled it.
    /// Never dropped in place: [`Bin::released`] takes it (the bin's
    /// `Drop` and `unlock` call it), so the common drop has no glue for it.
    pub(super) sample: ManuallyDrop<Option<Box<AsyncSample>>>,
}

// SAFETY: (1) a `&Bin` only reads (`is_empty`, `len` walk the items
// without running or moving them, and read `one_meta` only); every change
// takes `&mut Bin`. Sharing a bin between threads is then like sharing a
// `&Vec` of `Send` items. (`Bin` is `Send` by its fields: the item in
// `one` is `Send`, as `push` requires.)
unsafe impl Sync for Bin {}

impl Bin {
    pub(super) const fn new() -> Self {
        Bin {
            one_meta: None,
            one: [MaybeUninit::uninit(); ONE_WORDS],
            more: None,
            sample: ManuallyDrop::new(None),
        }
    }

    /// The guard's lock was released: a sampled acquisition's hold ends
    /// (now, or when [`Bin::note_release`] said), and the free that
    /// follows is timed until the returned record drops. Counting the
    /// bin's items walks them: sampled guards only.
    #[inline]
    pub(super) fn note_release(&mut self) {
        if let Some(s) = self.sample.as_mut() {
            s.note_release();
        }
    }

    #[inline]
    pub(super) fn released(&mut self) -> Option<AsyncFreeing> {
        let sample = self.sample.take()?;
        Some(sample.released(self.len() as u64))
    }

    #[inline(always)]
    pub(super) fn push<F: FnOnce() + Send + 'static>(&mut self, f: F) {
        if fits::<F>() && self.one_meta.is_none() && self.more.is_none() {
            // SAFETY: (4) `one` holds no item (`one_meta` is `None`), and
            // an `F` fits it, size and alignment (`fits`).
            unsafe { self.one.as_mut_ptr().cast::<F>().write(f) };
            self.one_meta = Some(
                const {
                    &OneMeta {
                        spill: spill_one::<F>,
                        free_within: free_one_within::<F>,
                        within: |limit_ns| dispatch::frees_one_here(TypeId::of::<F>(), limit_ns),
                    }
                },
            );
            return;
        }
        self.push_more(f);
    }

    /// [`Bin::push`] past the first item, or of a large one: into the
    /// queue, behind the item in `one`.
    #[cold]
    #[inline(never)]
    fn push_more<F: FnOnce() + Send + 'static>(&mut self, f: F) {
        self.spill();
        push_queued(self.queue(), f);
    }

    /// The bin's queue, taken (the thread's spare) on first use.
    #[inline]
    fn queue(&mut self) -> &mut Buffer {
        self.more.get_or_insert_with(take_spare)
    }

    #[inline]
    fn more_is_empty(&self) -> bool {
        self.more.as_ref().is_none_or(|q| q.is_empty())
    }

    /// Moves the item in `one`, if any, into the queue (which is empty
    /// then): before anything else joins the queue.
    #[inline]
    fn spill(&mut self) {
        if let Some(meta) = self.one_meta.take() {
            // SAFETY: (5) `one_meta` was `Some`: `one` holds the item it
            // describes, written by `push`; taking `one_meta` first makes
            // it read once.
            unsafe { (meta.spill)(&raw mut self.one, self.more.get_or_insert_with(take_spare)) };
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.one_meta.is_none() && self.more_is_empty()
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.one_meta.is_some()) + self.more.as_ref().map_or(0, |q| q.len())
    }

    /// Frees the bin here and now if it is one item whose type is known to
    /// cost less than `limit_ns` and this thread is outside any section:
    /// whether it did (the bin is then empty).
    #[inline]
    fn free_if_within(&mut self, limit_ns: u64) -> bool {
        // Taken first: if the free panics, the bin is empty as it unwinds.
        let Some(meta) = self.one_meta.take() else {
            return false;
        };
        // SAFETY: (6) `one_meta` was `Some`: `one` holds the item it
        // describes, written by `push`; on `true` it has been read, on
        // `false` it is untouched and `one_meta` is put back.
        let freed = unsafe { (meta.free_within)(&raw mut self.one, limit_ns) };
        if !freed {
            self.one_meta = Some(meta);
        }
        freed
    }

    /// Frees the bin here and now if it is one item that a plain drop
    /// frees in place, as that would (within [`BIN_BUDGET_NS`]): whether
    /// it did (the bin is then empty). A sampled guard's free is timed.
    #[inline]
    pub(super) fn free_if_cheap(&mut self) -> bool {
        if self.sample.is_some() {
            return self.free_if_cheap_sampled();
        }
        self.free_if_within(BIN_BUDGET_NS)
    }

    /// [`Bin::free_if_cheap`] of a sampled guard's bin: the sample is
    /// taken only for a free that happens here.
    #[cold]
    #[inline(never)]
    fn free_if_cheap_sampled(&mut self) -> bool {
        match self.one_meta {
            Some(meta) if (meta.within)(BIN_BUDGET_NS) => {}
            _ => return false,
        }
        let timed = self.released();
        // Freed in place either way: if the type's estimate moved in
        // between, through the thread's queue.
        if !self.free_if_within(BIN_BUDGET_NS) {
            self.free();
        }
        drop(timed);
        true
    }

    /// Frees the bin: a lone cheap item right here (as the queue would,
    /// outside a section), anything else through `free` (given the
    /// queue), after which the queue is kept as the thread's spare.
    #[inline]
    fn free_with(&mut self, free: impl FnOnce(&mut Buffer)) {
        if self.free_if_within(BIN_BUDGET_NS) {
            return;
        }
        self.spill();
        if let Some(mut queue) = self.more.take() {
            // Dropped while unwinding, if a free panics.
            free(&mut queue);
            keep_spare(queue);
        }
    }

    /// Hands everything to this thread's queue, whatever it costs: freed
    /// now, by the thread's policy (inline, or offloaded to a reclaimer),
    /// or, if this thread is inside a section, when it leaves it. A lone
    /// cheap item is freed right here, as that would free it.
    #[inline]
    pub(super) fn free(&mut self) {
        self.free_with(|queue| dispatch::queue_batch(queue, &mut Buffer::new()));
    }

    /// Runs `f` inside a section of this thread's and moves into the bin
    /// what the thread queued meanwhile (deferred and retired items) and
    /// the frees the allocator held back meanwhile. Unwinding out of `f`
    /// moves them too.
    pub(super) fn catch<R>(&mut self, f: impl FnOnce() -> R) -> R {
        // Frees held for an enclosing section stay that section's: they
        // become items of its queue, set aside with the rest of it.
        if let Some(outer) = take_held() {
            dispatch::push(move || {
                outer.free_all();
            });
        }
        // What is caught joins the queue, behind the bin's items.
        self.spill();
        let catch = Catch {
            bin: self,
            aside: Some(dispatch::catch_start()),
        };
        let result = f();
        drop(catch);
        result
    }
}

/// Ends a catch (even while unwinding): see [`Bin::catch`].
struct Catch<'a> {
    bin: &'a mut Bin,
    aside: Option<crate::queue::section::Aside>,
}

impl Drop for Catch<'_> {
    fn drop(&mut self) {
        let Some(aside) = self.aside.take() else {
            return;
        };
        // `one` is empty (`catch` spilled it): into the queue, in order.
        let queue = self.bin.queue();
        // Still inside the catch's section: pushing here holds nothing.
        if let Some(frees) = take_held() {
            push_queued(queue, move || {
                frees.free_all();
            });
        }
        let mut retired = Buffer::new();
        dispatch::catch_end(aside, queue, &mut retired);
        if !retired.is_empty() {
            // Retired items wait for the epoch too: when the bin is freed,
            // they join that thread's retired list.
            push_queued(queue, move || {
                let mut retired = retired;
                dispatch::queue_batch(&mut Buffer::new(), &mut retired);
            });
        }
    }
}

impl Drop for Bin {
    /// A plain drop of the guard: a costly bin leaves this thread, so
    /// that the waiter the release woke runs first (see
    /// [`AsyncGuard`](super::AsyncGuard)'s "Dropping a guard"); a lone cheap item is freed
    /// right here.
    #[inline]
    fn drop(&mut self) {
        if self.sample.is_some() {
            return self.drop_sampled();
        }
        // A guard that deferred nothing: nothing to do.
        if self.one_meta.is_some() || self.more.is_some() {
            self.free_with(|queue| dispatch::release_bin(queue, None));
        }
    }
}

impl Bin {
    /// [`Drop`] of a sampled guard's bin: the free is timed for its site,
    /// and a bin that leaves the thread carries the site's mark.
    #[cold]
    #[inline(never)]
    fn drop_sampled(&mut self) {
        let timed = self.released();
        let mark = timed.as_ref().map(AsyncFreeing::mark);
        if self.one_meta.is_some() || self.more.is_some() {
            self.free_with(|queue| dispatch::release_bin(queue, mark));
        }
        drop(timed);
    }
}
