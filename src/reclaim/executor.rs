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

use crate::queue::buffer::Buffer;
use crate::queue::panic::resume;
use crate::queue::section::run_here;
use crate::reclaim::cost::Learn;
use crate::reclaim::inline::{Frees, InlineOnly, free_batch};

/// A drained batch handed to the executor set with
/// [`set_offload_executor`]: free it, on any thread, with [`Batch::free`].
///
/// Dropping a `Batch` frees it too, so a batch is never leaked.
pub struct Batch {
    items: Buffer,
    frees: Frees,
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
        Self::free_items(&mut self.items, self.frees);
    }

    fn free_items(items: &mut Buffer, frees: Frees) {
        free_batch(items, frees);
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
            run_here::<Learn>(&mut self.items, &mut first);
            resume(first);
        } else {
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
/// it should only queue the batch, never free it there.
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

/// Goes back to freeq's own reclaimers (see [`set_offload_executor`]).
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
#[cfg(all(unix, not(miri), not(loom)))]
mod fork_safe {
    use std::cell::Cell;
    use std::sync::{Once, RwLockWriteGuard};

    use super::{EXECUTOR, Executor};

    std::thread_local! {
        /// The forking thread's hold on `EXECUTOR`, from `prepare` to `release`.
        static HELD: Cell<Option<RwLockWriteGuard<'static, Option<Executor>>>> =
            const { Cell::new(None) };
    }

    extern "C" fn prepare() {
        let guard = EXECUTOR.write().unwrap_or_else(|e| e.into_inner());
        // A thread whose thread-locals are gone forks unprotected.
        let _ = HELD.try_with(move |h| h.set(Some(guard)));
    }

    extern "C" fn release() {
        let _ = HELD.try_with(|h| drop(h.take()));
    }

    /// Registers the fork handlers, once (before the lock is first taken
    /// by a setter, so every later holder is covered).
    pub(super) fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| crate::platform::at_fork(prepare, release, release));
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
    pub(crate) fn new(items: Buffer, frees: Frees) -> Batch {
        Batch { items, frees }
    }
}
