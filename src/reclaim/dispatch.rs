//! The dispatcher: where a drained batch goes, and the entries that drain.
//!
//! The queue drains through a [`Sink`]; [`Dispatch`] is freeq's. It sends a
//! batch of deferred items, under `Policy::Offload` and when it is worth
//! moving, to the user's executor or freeq's reclaimer pool, and otherwise
//! lets the queue free it inline; retired items go to the epoch; drops are
//! timed by the cost model. The lock layer and the top-level entries
//! (`defer`, `retire`, sections) call the queue through the functions
//! here, which bind it to `Dispatch`, and the sinks that free batches get
//! the same binding as a [`Frees`]. This file calls the queue layer, the
//! profile's lock kinds, and every other file of the reclaim layer; nothing in the reclaim layer
//! calls it.

use crate::queue::buffer::Buffer;
use crate::queue::hooks::DropTimer;
use crate::queue::local;
use crate::queue::panic::{Panic, keep_first, resume};
use crate::queue::section;
use crate::queue::sink::{Offer, Sink};
use crate::reclaim::cost::{Cost, Learn, cost_ns, estimate};
use crate::reclaim::epoch::defer_batch;
use crate::reclaim::executor::{Batch, executor};
use crate::reclaim::inline::{Frees, inline_only};
use crate::reclaim::policy::{Policy, default_policy, store_default};
use crate::reclaim::pool;
use crate::reclaim::reclaimer::Reclaimer;
use crate::reclaim::thresholds::{offload_threshold_ns, worth_offloading};
use crate::reclaim::timing::{Stamp, sample};
use crate::stats::count_late;

use std::any::TypeId;
use std::panic::{self as std_panic, AssertUnwindSafe, Location};

use crate::profile::sample::AsyncSample;
use crate::profile::table::{LockKind, Mark};

/// freeq's sink: the offload decision, the epoch and the cost model.
pub(crate) struct Dispatch;

impl Sink for Dispatch {
    type Timer = Learn;

    fn retire(batch: Buffer, exiting: bool) {
        defer_batch(batch, FREES, exiting);
    }

    #[inline]
    fn offer(policy: u8, batch: Buffer, first: &mut Option<Panic>) -> Offer {
        // Offload only what costs more to free than to move, and what
        // holds a type whose cost is not known yet (timed where it is
        // freed).
        let policy = Policy::from_u8(policy).unwrap_or_else(default_policy);
        if policy != Policy::Offload || !can_hand_off() || !worth_offloading(estimate(&batch)) {
            return Offer::Kept(batch);
        }
        let items = batch.len();
        let bytes = batch.capacity_bytes();
        match hand_off(batch, first, section::sampled_mark()) {
            Ok(recycled) => Offer::Taken {
                items,
                bytes,
                recycled,
            },
            Err(back) => Offer::Refused(back),
        }
    }
}

/// The queue's "free here" entries bound to [`Dispatch`], for the sinks
/// that free batches on their own thread.
pub(crate) const FREES: Frees = Frees {
    free_here: section::free_here::<Dispatch>,
    flush: section::flush::<Dispatch>,
};

/// Queues `f` on this thread (freed at once outside a section).
#[inline]
pub(crate) fn push<F: FnOnce() + Send + 'static>(f: F) {
    section::push::<Dispatch, F>(f, false)
}

/// Queues `f` on this thread's retired list (for the epoch).
#[inline]
pub(crate) fn retire<F: FnOnce() + Send + 'static>(f: F) {
    section::push::<Dispatch, F>(f, true)
}

/// Opens a section on this thread.
#[inline]
pub(crate) fn enter() {
    section::enter();
}

/// Closes a section; closing the outermost one drains the queue.
#[inline]
pub(crate) fn leave() {
    section::leave::<Dispatch>();
}

/// Hands this thread a batch gathered elsewhere (an async guard's bin): it
/// is freed as if deferred and retired here, by the thread's policy, when
/// the thread is outside a section (at once) or leaves it.
#[inline]
pub(crate) fn queue_batch(queue: &mut Buffer, retired: &mut Buffer) {
    section::queue_batch::<Dispatch>(queue, retired);
}

/// What a queued waiter may wait, at most, for the frees of the async
/// guard released before it: a bin expected to cost more leaves the
/// releasing thread ([`release_bin`]).
pub(crate) const BIN_BUDGET_NS: u64 = 10_000;

/// Frees an async guard's bin when the guard is dropped, right after its
/// release. A bin whose items' learned drop costs add up to at least
/// [`BIN_BUDGET_NS`] (or the offload threshold, if lower) goes to the
/// user's executor or to freeq's reclaimers whatever this thread's
/// policy: the waiter the release woke, queued behind the releasing task
/// on this thread, then runs before those frees instead of after them.
/// Any other bin (one holding a type not timed yet too: it is freed, and
/// so timed, here), and one that cannot leave (inside a section, on a
/// reclaimer, while unwinding, past the backlog bound), is handed to this
/// thread as [`queue_batch`] does. Leaves `bin` empty (with blocks for
/// the next bin, after a hand-off).
///
/// `mark`: a sampled guard's, whose bin's free, if it leaves, is added to
/// its site where it is freed.
pub(crate) fn release_bin(bin: &mut Buffer, mark: Option<Mark>) {
    if !bin.is_empty()
        && !std::thread::panicking()
        && can_hand_off()
        && !section::in_section()
        && matches!(estimate(bin), Cost::Known(ns) if ns >= BIN_BUDGET_NS.min(offload_threshold_ns()))
    {
        let items = bin.len();
        let bytes = bin.capacity_bytes();
        let mut first = None;
        match hand_off(std::mem::take(bin), &mut first, mark) {
            Ok(recycled) => {
                // The bin's blocks left with it: it keeps a recycled
                // buffer's, or takes new ones now, after the release, so
                // that the next bin's pushes allocate nothing under its
                // lock.
                if let Some(recycled) = recycled {
                    *bin = recycled;
                }
                let keep = section::max_retained();
                bin.trim(keep);
                bin.reserve_bytes(bytes.min(keep));
                // Counted as deferred here, as `defer_heavy` counts its
                // value: the reclaimer counts them as freed.
                count_late(items, 0, 0);
                resume(first);
                return;
            }
            Err(back) => *bin = back,
        }
    }
    queue_batch(bin, &mut Buffer::new());
}

/// Whether an async guard's only item, of type `id`, is freed here and
/// now ([`free_one`]) where the bin's way ([`release_bin`],
/// [`queue_batch`]) would free it here and now: its type's learned cost
/// is below `limit_ns` (at most [`BIN_BUDGET_NS`]) and the offload
/// threshold, so that no policy moves it, and this thread is outside any
/// section and not draining. Not for a type not timed yet, a costly one,
/// or inside a section.
#[inline]
pub(crate) fn frees_one_here(id: TypeId, limit_ns: u64) -> bool {
    matches!(cost_ns(id), Some(ns) if ns < limit_ns.min(offload_threshold_ns())) && local::idle()
}

/// Frees `f`, an async guard's only item, where [`frees_one_here`] said
/// yes: as a drain of it would free it (timed on a sample, counted),
/// without the queue.
#[inline]
pub(crate) fn free_one<F: FnOnce() + Send + 'static>(f: F) {
    local::run_one::<Sampled, F>(f);
}

/// [`Learn`] for a type known to be timed: times one free in
/// [`SAMPLE_EVERY`](crate::reclaim::timing::SAMPLE_EVERY), at random.
struct Sampled;

impl DropTimer for Sampled {
    type Mark = Stamp;

    #[inline(always)]
    fn start(_: TypeId) -> Option<Stamp> {
        sample().then(Stamp::now)
    }

    #[inline]
    fn finish(id: TypeId, start: Stamp, items: usize) {
        Learn::finish(id, start, items);
    }
}

/// Lends `buf` a spare block of this thread's queue, if it has one.
#[inline]
pub(crate) fn lend_block(buf: &mut Buffer) {
    section::lend_block(buf);
}

/// Starts catching what this thread queues (see `section::catch_start`).
#[inline]
pub(crate) fn catch_start() -> section::Aside {
    section::catch_start::<Dispatch>()
}

/// Ends a catch, moving what was queued since into `queue` and `retired`.
#[inline]
pub(crate) fn catch_end(aside: section::Aside, queue: &mut Buffer, retired: &mut Buffer) {
    section::catch_end::<Dispatch>(aside, queue, retired);
}

/// [`prepare_thread`] and [`enter`] in one visit to the thread's state,
/// for a section opened at `at` with nothing to wait for (the profile
/// may sample it).
#[inline]
pub(crate) fn prepare_and_enter(at: &'static Location<'static>, kind: LockKind) {
    section::prepare_and_enter::<Dispatch>(at, kind);
}

/// [`prepare_thread`] before an acquisition at `at`: whether the profile
/// samples it. The caller then calls [`enter_sampled`] instead of
/// [`enter`] once it holds the lock, or [`cancel_sample`] if it did not
/// get it.
#[inline]
pub(crate) fn prepare_at(at: &'static Location<'static>, kind: LockKind) -> bool {
    section::prepare_at::<Dispatch>(at, kind)
}

/// [`enter`] for an acquisition [`prepare_at`] sampled.
#[inline]
pub(crate) fn enter_sampled() {
    section::enter_sampled();
}

/// An acquisition [`prepare_at`] sampled did not get its lock.
#[inline]
pub(crate) fn cancel_sample() {
    section::cancel();
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
    section::prepare_thread::<Dispatch>();
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
    section::flush::<Dispatch>();
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
    section::set_policy_byte(policy.to_u8());
    if policy == Policy::Offload {
        start_reclaimers();
    }
}

/// The calling thread's effective [`Policy`].
pub fn policy() -> Policy {
    section::policy_byte()
        .and_then(Policy::from_u8)
        .unwrap_or_else(default_policy)
}

/// Sets the policy of threads that have not chosen their own with
/// [`set_policy`](crate::set_policy). Choosing `Offload` starts freeq's
/// reclaimer threads if they are not running yet.
pub fn set_default_policy(policy: Policy) {
    store_default(policy);
    if policy == Policy::Offload {
        start_reclaimers();
    }
}

/// Hands `batch` to the user's executor or to a reclaimer; gives it back
/// (free inline) on a reclaimer or other inline-only thread, at process
/// exit, when the backlog is past the bound, or when no reclaimer could be
/// started.
///
/// A panicking executor is contained: its payload goes to `first` (to be
/// resumed once the drain is done, like a panicking free's), and the
/// batch, dropped as the executor unwinds, is freed on this thread then.
/// `mark`: a sampled section's batch, whose free is added to its site.
pub(crate) fn hand_off(
    batch: Buffer,
    first: &mut Option<Panic>,
    mark: Option<Mark>,
) -> Result<Option<Buffer>, Buffer> {
    if !can_hand_off() {
        return Err(batch);
    }
    if let Some(run) = executor() {
        let batch = Batch::new(batch, FREES, mark);
        if let Err(payload) = std_panic::catch_unwind(AssertUnwindSafe(move || run(batch))) {
            keep_first(first, payload);
        }
        return Ok(None);
    }
    pool::hand_off(FREES, batch, mark)
}

/// A sample of an async acquisition called at `at`, if this thread's
/// profile countdown picks it (see the profile's `AsyncSample`).
#[inline]
pub(crate) fn sample_async(
    at: &'static Location<'static>,
    kind: LockKind,
) -> Option<Box<AsyncSample>> {
    if section::samples_async() {
        Some(AsyncSample::begin(at, kind))
    } else {
        None
    }
}

/// In the drain of a section the profile samples: the mark a batch
/// leaving this thread carries, so that its free is added to the
/// section's site (`defer_heavy`'s value too).
pub(crate) fn sampled_mark() -> Option<Mark> {
    section::sampled_mark()
}

/// Starts freeq's reclaimers now, if they are what offloaded batches go
/// to and are not running yet: called when a thread chooses
/// [`Policy::Offload`](crate::Policy::Offload), so that the first hand-off
/// (after an unlock, but on the producer) does not pay for starting
/// threads.
pub(crate) fn start_reclaimers() {
    if pool::exited() || executor().is_some() {
        return;
    }
    pool::start(FREES);
}

/// Whether a batch may leave this thread at all: not on a thread that
/// frees inline only (a reclaimer; a free run by `quiesce`, `Batch::free`
/// or the exit hook), and not after the exit hook ran.
pub(crate) fn can_hand_off() -> bool {
    !inline_only() && !pool::exited()
}

/// Returns once every item handed to a reclaimer before the call has been
/// freed (and everything those frees deferred in turn).
///
/// The calling thread frees, itself, every handed-off batch still waiting
/// in an inbox, and then waits only for the chains reclaimers took before
/// the call (a reclaimer takes a whole inbox at once and frees its batches
/// one by one). Those it must let the reclaimers finish: at idle priority,
/// on a machine whose CPUs are all busy, that waits for the reclaimers to
/// get CPU time, which can take a second or more. A program that calls
/// `quiesce` on a busy machine and needs it prompt runs its reclaimers at
/// [`ReclaimerPriority::Normal`](crate::ReclaimerPriority::Normal)
/// ([`set_reclaimer_priority`](crate::set_reclaimer_priority)). Batches given to a user executor
/// ([`set_offload_executor`](crate::set_offload_executor)) are the executor's to free, and not waited
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
/// In a forked child, reclaimers of the parent do not exist, and the
/// batches the parent's threads had handed off are the parent's: `quiesce`
/// neither runs the copies the child inherited in the inboxes nor waits for
/// the batches the parent's reclaimers (or a `quiesce` caller) were
/// freeing when it forked. The parent frees all of those; the child frees
/// what it hands off itself. (Running the parent's deferred work in the
/// child would run it twice, and could block on a lock that a thread the
/// child does not have held at the fork.)
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
    pool::quiesce();
}

/// How many reclaimer threads freeq runs at most (one per CPU of the
/// process); for tests.
#[doc(hidden)]
pub fn reclaimer_count() -> usize {
    pool::runner_count(FREES)
}

/// The public constructors of [`Reclaimer`] live here: a reclaimer frees
/// through the dispatcher's [`FREES`].
impl Reclaimer {
    /// A reclaimer with one inbox, one runner slot and no thread yet.
    pub fn new() -> Self {
        Reclaimer::with_shape(1, 1)
    }

    /// A reclaimer with `inboxes` inboxes and `runners` runner slots (at
    /// least one each), no thread yet.
    pub fn with_shape(inboxes: usize, runners: usize) -> Self {
        Reclaimer::build(inboxes, runners, FREES)
    }
}

impl Default for Reclaimer {
    fn default() -> Self {
        Reclaimer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::section::{in_section, max_retained, pending, queue_bytes, set_max_retained};
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
                crate::defer::defer(Link(self.0 - 1, self.1.clone()));
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
                crate::defer::defer(Link(links - 1, f));
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
