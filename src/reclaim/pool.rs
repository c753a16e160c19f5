//! freeq's own pool of reclaimers, and its process hooks.
//!
//! One reclaimer thread per CPU of the process, started on demand, runner
//! `i` pinned to the `i`-th CPU of the process's set; each batch goes to
//! the inbox of the CPU its drain runs on, and wakes the runner of another
//! CPU first (see [`Reclaimer`]).
//!
//! Why pinned: a woken thread goes where the kernel's wake-up placement
//! puts it, and placements that pack a lightly loaded thread onto the
//! waker's CPU (wake-affine, energy-aware or virtual-CPU packing) put an
//! unpinned idle-priority reclaimer behind the very producer that woke it,
//! where it gets no time while another CPU idles. A runner pinned to
//! another CPU runs on that CPU as soon as it has time. The pool survives `fork()` (the child forgets the
//! parent's threads and restarts them on demand) and, at process exit,
//! frees what still waits in the inboxes. The dispatcher creates the pool
//! and decides what reaches it. This file calls the reclaimer, `inline.rs`,
//! `priority.rs`, the timing file (reclaimers leave their CPU waits out),
//! `platform` and the queue's `in_section`.

use std::panic;
use std::ptr;
use std::sync::atomic::Ordering::Acquire as StaticAcquire;
use std::sync::atomic::Ordering::Relaxed as StaticRelaxed;
use std::sync::atomic::Ordering::SeqCst as StaticSeqCst;
use std::time::Duration;

use crate::platform::{self, CpuSet, Instant};
use crate::profile::table::Mark;
use crate::queue::buffer::Buffer;
use crate::queue::section::in_section;
use crate::reclaim::inline::{Frees, inline_only};
use crate::reclaim::priority::become_reclaimer;
use crate::reclaim::reclaimer::{FORKS, NOT_STARTED, RUNNING, Reclaimer, Runner, STARTING};
use crate::reclaim::thresholds::{offload_bound, offload_max_wait};
use crate::reclaim::timing::leave_out_cpu_waits;
use crate::sync::{Ordering::*, StaticAtomicPtr, StaticAtomicUsize, publish_once, published};

/// freeq's reclaimers and the fork generation they belong to.
pub(crate) struct Pool {
    reclaimer: Reclaimer,
    /// `FORKS` when the runners' states were last valid.
    generation: StaticAtomicUsize,
    /// The process's CPU set: runner `i` is pinned to its `i`-th CPU.
    cpus: Option<CpuSet>,
    /// The CPUs of that set, lowest first (empty where there is none).
    cpu_ids: Vec<usize>,
    /// When a failed spawn may be retried (ms since the pool started).
    retry_at_ms: StaticAtomicUsize,
    born: Instant,
    /// Every runner has a thread (in this process).
    all_started: std::sync::atomic::AtomicBool,
}

/// The pool, published once without a `OnceLock` ([`publish_once`]): a
/// child forked while another thread of its parent was building the pool
/// finds no pool (and builds its own) or the finished one, never a build
/// in progress it would wait on forever.
static POOL: StaticAtomicPtr<Pool> = StaticAtomicPtr::new(ptr::null_mut());

/// The pool, if one was published.
fn pool_if_any() -> Option<&'static Pool> {
    published(&POOL)
}

/// Set by the exit hook: from then on, everything is freed inline.
static EXITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The pool, created (with no thread yet) on first use, freeing through
/// `frees`.
fn pool(frees: Frees) -> &'static Pool {
    if let Some(pool) = pool_if_any() {
        return pool;
    }
    // Before the pool is published: a child forked once it is knows to
    // leave the parent's batches alone.
    install_hooks();
    // A pool that loses the race has no thread yet: dropping it is free.
    publish_once(&POOL, || build(frees))
}

/// A new pool, with no thread yet, freeing through `frees`.
fn build(frees: Frees) -> Pool {
    let cpus = CpuSet::of_process();
    let n = cpus.as_ref().map(CpuSet::count);
    let n = n
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut reclaimer = Reclaimer::build(n, n, frees);
    reclaimer.courteous = true;
    let cpu_ids = cpus.as_ref().map(CpuSet::cpus).unwrap_or_default();
    Pool {
        reclaimer,
        generation: StaticAtomicUsize::new(FORKS.load(StaticSeqCst)),
        cpus,
        cpu_ids,
        retry_at_ms: StaticAtomicUsize::new(0),
        born: Instant::now(),
        all_started: std::sync::atomic::AtomicBool::new(false),
    }
}

/// Registers the exit hook and the fork hook, once (by a flag, not a
/// `Once`: see [`POOL`]).
fn install_hooks() {
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if INSTALLED.load(StaticAcquire) || INSTALLED.swap(true, StaticSeqCst) {
        return;
    }
    #[cfg(not(loom))]
    {
        extern "C" fn at_exit() {
            exit_hook();
        }
        // Only atomics and pointer walks (async-signal-safe), on the one
        // thread the child has.
        extern "C" fn in_child() {
            FORKS.fetch_add(1, StaticSeqCst);
            // The batches waiting in the inboxes are the parent's.
            if let Some(pool) = pool_if_any() {
                for inbox in pool.reclaimer.inboxes.iter() {
                    inbox.abandon_all();
                }
            }
        }
        // Failure to register is harmless: quiesce still works, and a
        // child is then detected by nothing (documented).
        platform::at_exit(at_exit);
        platform::at_fork_child(in_child);
    }
}

/// How long the exit hook waits, at most, for its turn to free what waits
/// in the inboxes and for the batches runners are freeing.
#[cfg_attr(loom, allow(dead_code))] // the hooks are left out under loom
const EXIT_WAIT: Duration = Duration::from_millis(250);

/// At normal process exit: frees, on the exiting thread, everything still
/// waiting in the inboxes, waits (for [`EXIT_WAIT`] at most) for what
/// runners are freeing, and frees inline from then on. It never hangs: a
/// runner stuck in a drop (on a lock the exiting thread holds, say) is
/// left behind, and what it has not freed yet is not freed. On a thread
/// inside a section, the inboxes are left to the runners for that time
/// too: their batches must not run under the exiting thread's locks.
#[cfg_attr(loom, allow(dead_code))] // the hooks are left out under loom
fn exit_hook() {
    let _ = panic::catch_unwind(|| {
        EXITED.store(true, StaticSeqCst);
        if let Some(pool) = pool_if_any() {
            pool.check_fork();
            pool.at_exit();
        }
    });
}

impl Pool {
    /// In a forked child, the runners' threads do not exist: forget them
    /// (they restart on demand) and abandon the chains they were freeing
    /// (the parent frees its own copies). What waited in the inboxes was
    /// abandoned by the fork hook already, for the same reason.
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
    fn ensure_started(&'static self, index: usize) -> bool {
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
                let pool = self;
                become_reclaimer();
                // Preempted often (idle priority): leave the waits for a
                // CPU out of drop timings.
                leave_out_cpu_waits();
                pool.reclaimer.run_as(index);
            });
        match spawned {
            Ok(thread) => {
                // Pinned from here, before the thread may have run at all:
                // it inherited the affinity of the thread that started it
                // (a producer pinned to one CPU, say).
                if let Some(set) = &self.cpus {
                    set.pin_thread(&thread, self.cpu_ids.get(index).copied());
                }
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
    fn start_all(&'static self, index: usize) -> bool {
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

    /// The inbox (and runner) of the CPU this thread runs on: the CPU's
    /// place in the process's set, where it has one.
    fn home(&self) -> usize {
        let cpu = current_cpu();
        let index = self.cpu_ids.binary_search(&cpu).unwrap_or(cpu);
        index % self.reclaimer.inboxes.len()
    }

    fn hand_off(
        &'static self,
        batch: Buffer,
        mark: Option<Mark>,
    ) -> Result<Option<Buffer>, Buffer> {
        self.check_fork();
        let index = self.home();
        if !self.all_started.load(StaticRelaxed) && !self.start_all(index) {
            return Err(batch);
        }
        self.reclaimer
            .try_hand_off(index, batch, offload_bound(), offload_max_wait(), mark)
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
    #[cfg_attr(loom, allow(dead_code))] // the hooks are left out under loom
    fn at_exit(&self) {
        let deadline = Some(Instant::now() + EXIT_WAIT);
        let nested = inline_only();
        if !in_section() {
            self.reclaimer.help(nested, deadline);
        }
        if !nested {
            self.reclaimer
                .wait_for_runners(|r| self.runner_alive(r), deadline);
        }
    }
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

/// Hands `batch` to the inbox of this CPU, starting the runners first if
/// they are not all running; gives it back when the backlog is past the
/// bound or this CPU's runner could not be started.
pub(crate) fn hand_off(
    frees: Frees,
    batch: Buffer,
    mark: Option<Mark>,
) -> Result<Option<Buffer>, Buffer> {
    pool(frees).hand_off(batch, mark)
}

/// Starts every runner that has no thread yet.
pub(crate) fn start(frees: Frees) {
    let pool = pool(frees);
    pool.check_fork();
    if !pool.all_started.load(StaticRelaxed) {
        let _ = pool.start_all(pool.home());
    }
}

/// The pool's `quiesce`, if there is a pool.
pub(crate) fn quiesce() {
    if let Some(pool) = pool_if_any() {
        pool.quiesce();
    }
}

/// How many runners the pool has (one per CPU of the process).
pub(crate) fn runner_count(frees: Frees) -> usize {
    pool(frees).reclaimer.runners.len()
}

/// Whether the exit hook has run: from then on, everything is freed
/// inline.
pub(crate) fn exited() -> bool {
    EXITED.load(StaticRelaxed)
}
