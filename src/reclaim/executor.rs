//! User executors: batches handed to the user's threads.
//!
//! [`set_offload_executor`] routes offloaded batches to a function of the
//! user's instead of freeq's reclaimers; each arrives as a [`Batch`], which
//! frees itself through the [`Frees`] the dispatcher built it with. This
//! file calls the queue's buffer and `run_here`, `inline.rs` and the cost
//! model's timer.

use std::sync::RwLock as StdRwLock;
use std::sync::atomic::Ordering::Relaxed as StaticRelaxed;
use std::sync::atomic::Ordering::SeqCst as StaticSeqCst;

use crate::profile::probe::Freeing;
use crate::profile::table::Mark;
use crate::queue::buffer::Buffer;
use crate::queue::panic::resume;
use crate::queue::section::{queues_now, run_here};
use crate::reclaim::cost::Learn;
use crate::reclaim::inline::{Frees, InlineOnly, free_batch};

/// A drained batch handed to the executor set with
/// [`set_offload_executor`]: free it, on any thread, with [`Batch::free`].
///
/// Dropping a `Batch` frees it too, so a batch is never leaked.
pub struct Batch {
    items: Buffer,
    frees: Frees,
    /// A sampled section's batch: its free is added to the section's site.
    mark: Option<Mark>,
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
    /// freed by the same call (on a thread inside a section, or on the
    /// draining thread while the executor is called, by that section's or
    /// drain's end). If a free panics, the rest are still freed and the
    /// first panic resumes afterwards.
    pub fn free(mut self) {
        let _timed = Freeing::start(self.mark.take());
        Self::free_items(&mut self.items, self.frees);
    }

    fn free_items(items: &mut Buffer, frees: Frees) {
        if std::thread::panicking() || queues_now() {
            // Dropped as a panicking executor unwinds, or freed by an
            // executor right where a drain called it (or inside a
            // section): the items run here and now. Joining the drain in
            // progress would hand them to the same executor again, and an
            // executor that frees in place would get them back forever.
            // While unwinding, a panic among them is reported and dropped
            // (`resume`): one is unwinding already.
            let _inline = InlineOnly::enter();
            let mut first = None;
            run_here::<Learn>(items, &mut first);
            resume(first);
        } else {
            free_batch(items, frees);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            let _timed = Freeing::start(self.mark.take());
            Self::free_items(&mut self.items, self.frees);
        }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("len", &self.len()).finish()
    }
}

/// A user's executor.
pub(crate) type Executor = std::sync::Arc<dyn Fn(Batch) + Send + Sync + 'static>;

static EXECUTOR: StdRwLock<Option<Executor>> = StdRwLock::new(None);
static HAS_EXECUTOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Routes offloaded batches (under [`Policy::Offload`](crate::Policy) and
/// from [`defer_heavy`](crate::defer_heavy)) to `executor` instead of freeq's own reclaimer
/// threads. `executor` receives each batch as a [`Batch`] and must see to
/// it that [`Batch::free`] is called (or the batch dropped), on any
/// thread. It is called right after the unlock, on the draining thread:
/// it should only queue the batch. Freeing it there works (the items run
/// at once, and the executor never sees them again), but keeps their
/// cost on the thread that offloaded them.
///
/// freeq starts no thread of its own while an executor is set. The backlog
/// bound does not apply and [`quiesce`](crate::quiesce) does not wait for batches given
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
/// A forked child starts with no executor: the parent's is bound to
/// threads the child does not have, so the child never calls it and
/// never drops it (it is leaked there, on purpose: its `Drop` could wait
/// forever on a lock one of those threads held at the fork). The child's
/// offloaded batches go to freeq's own reclaimers, started in the child
/// on demand, until it sets an executor of its own; clearing or
/// replacing the inherited one in the child drops nothing.
///
/// A rayon pool would be `move |batch| pool.spawn(move || batch.free())`;
/// tokio's blocking pool `move |batch| { handle.spawn_blocking(move ||
/// batch.free()); }`.
pub fn set_offload_executor<F>(executor: F)
where
    F: Fn(Batch) + Send + Sync + 'static,
{
    #[cfg(all(unix, not(miri), not(loom)))]
    fork_safe::install();
    let old = EXECUTOR
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace(std::sync::Arc::new(executor));
    HAS_EXECUTOR.store(true, StaticSeqCst);
    // The old executor (user code) is dropped after the lock is released.
    drop(old);
}

/// Goes back to freeq's own reclaimers (see [`set_offload_executor`]),
/// dropping the executor that was set. In a forked child, the parent's
/// executor is already gone (never dropped there); this drops only one
/// the child set itself.
pub fn clear_offload_executor() {
    #[cfg(all(unix, not(miri), not(loom)))]
    fork_safe::install();
    HAS_EXECUTOR.store(false, StaticSeqCst);
    let old = EXECUTOR.write().unwrap_or_else(|e| e.into_inner()).take();
    drop(old);
}

/// `EXECUTOR` across `fork()`: the forking thread takes it (for writing)
/// before it forks and releases it on both sides, so a child never
/// inherits it held by a thread it does not have (the child of a fork made
/// while another thread set, cleared or read the executor would block on
/// its first hand-off or `set_offload_executor`). It is never held across
/// user code, so the fork waits at most for a pointer swap or an `Arc`
/// clone.
///
/// The child starts with no executor. The parent's is user code bound to
/// the parent's threads (a channel to a pool, a runtime's handle); in the
/// child those threads do not exist, and a lock one of them held at the
/// fork stays held forever, so calling the executor there, or dropping it
/// (a channel sender's drop takes the channel's lock), can hang. The
/// child's copy is therefore leaked, on purpose: set aside unrun and
/// undropped, and its batches go to freeq's own reclaimers (started in the
/// child on demand) or inline.
#[cfg(all(unix, not(miri), not(loom)))]
mod fork_safe {
    use std::cell::Cell;
    use std::sync::RwLockWriteGuard;
    use std::sync::atomic::AtomicBool;

    use super::{EXECUTOR, Executor, HAS_EXECUTOR, StaticSeqCst};

    type Held = RwLockWriteGuard<'static, Option<Executor>>;

    std::thread_local! {
        /// The forking thread's hold on `EXECUTOR`, from `prepare` to the
        /// handler after the fork.
        static HELD: Cell<Option<Held>> = const { Cell::new(None) };
    }

    extern "C" fn prepare() {
        let guard = EXECUTOR.write().unwrap_or_else(|e| e.into_inner());
        // A thread whose thread-locals are gone forks unprotected.
        let _ = HELD.try_with(move |h| h.set(Some(guard)));
    }

    extern "C" fn parent() {
        let _ = HELD.try_with(|h| drop(h.take()));
    }

    /// Only atomics and a pointer move: nothing is called, dropped or
    /// freed (async-signal-safe).
    extern "C" fn child() {
        HAS_EXECUTOR.store(false, StaticSeqCst);
        let held = HELD.try_with(Cell::take).ok().flatten();
        // Without the forking thread's hold (its thread-locals were gone),
        // the slot is taken here if no vanished thread held it; if one
        // did, `HAS_EXECUTOR` alone keeps the executor from being called.
        let slot = held.or_else(|| EXECUTOR.try_write().ok());
        if let Some(mut slot) = slot {
            // Leaked on purpose (see above): dropping it could block on a
            // lock of the parent's threads.
            std::mem::forget(slot.take());
        }
    }

    /// Registers the fork handlers, once, before the caller first takes
    /// the lock (see `platform::at_fork_once` for the one instant it does
    /// not cover).
    pub(super) fn install() {
        static REGISTERED: AtomicBool = AtomicBool::new(false);
        crate::platform::at_fork_once(&REGISTERED, prepare, parent, child);
    }
}

/// The executor set, if any.
pub(crate) fn executor() -> Option<Executor> {
    if !HAS_EXECUTOR.load(StaticRelaxed) {
        return None;
    }
    EXECUTOR.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Batch {
    /// A batch for the executor, to be freed through `frees`.
    pub(crate) fn new(items: Buffer, frees: Frees, mark: Option<Mark>) -> Batch {
        Batch { items, frees, mark }
    }
}
