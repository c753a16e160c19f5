//! The shared state the soak's threads work on, and one step of work: a
//! public path of freeq picked at random.
//!
//! Lock order, to stay free of deadlocks whatever a step nests: the std
//! maps by index, the parking_lot maps by index, `rw`, `pl_rw`, `plain`,
//! `blobs`, the condvar queues, `slot_lock`. A condvar wait holds only its
//! own queue's lock; the async map is taken alone.

use std::collections::VecDeque;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind, panic_any};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use freeq::{Deferred, FreeQueue, Policy};

use crate::epoch::Slots;
use crate::values::{Inject, Planned, Rng, Tracked, drops, fail, inject_now};

const MAPS: usize = 4;
const ENTRIES: usize = 16;
const QUEUE_CAP: usize = 64;

type PlMutex<T> = freeq::parking_lot::Mutex<T>;

/// Everything the threads share in one cycle.
pub struct World {
    std_maps: Vec<freeq::Mutex<Vec<Deferred<Tracked>>>>,
    pl_maps: Vec<PlMutex<Vec<Tracked>>>,
    rw: freeq::RwLock<Vec<Deferred<Tracked>>>,
    pl_rw: freeq::parking_lot::RwLock<Vec<Tracked>>,
    plain: StdMutex<Vec<Tracked>>,
    blobs: PlMutex<Vec<Vec<u8>>>,
    cv_std: (freeq::Mutex<VecDeque<Tracked>>, freeq::Condvar),
    cv_pl: (PlMutex<VecDeque<Tracked>>, freeq::parking_lot::Condvar),
    pub slots: Slots,
    slot_lock: PlMutex<()>,
    /// Held through `freeq::AsyncGuard` (futures' mutex, on futures'
    /// executor): plain drops, `unlock().await`, an unawaited unlock and
    /// cancelled acquisitions.
    async_map: futures::lock::Mutex<Vec<Tracked>>,
}

/// Counters over all threads.
pub static STEPS: AtomicU64 = AtomicU64::new(0);
pub static PANICS: AtomicU64 = AtomicU64::new(0);
pub static POLICY_SWITCHES: AtomicU64 = AtomicU64::new(0);
pub static WAITS: AtomicU64 = AtomicU64::new(0);
/// The longest step, and what it did.
pub static LONGEST: StdMutex<(Duration, &str)> = StdMutex::new((Duration::ZERO, ""));
static LONGEST_NS: AtomicU64 = AtomicU64::new(0);

fn lk<T>(m: &freeq::Mutex<T>) -> freeq::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn entries(rng: &mut Rng) -> Vec<Tracked> {
    (0..ENTRIES).map(|_| rng.value()).collect()
}

fn deferred_entries(rng: &mut Rng) -> Vec<Deferred<Tracked>> {
    (0..ENTRIES).map(|_| Deferred::new(rng.value())).collect()
}

impl World {
    pub fn new(rng: &mut Rng) -> Arc<World> {
        Arc::new(World {
            std_maps: (0..MAPS)
                .map(|_| freeq::Mutex::new(deferred_entries(rng)))
                .collect(),
            pl_maps: (0..MAPS).map(|_| PlMutex::new(entries(rng))).collect(),
            rw: freeq::RwLock::new(deferred_entries(rng)),
            pl_rw: freeq::parking_lot::RwLock::new(entries(rng)),
            plain: StdMutex::new(entries(rng)),
            blobs: PlMutex::new(blobs(rng)),
            cv_std: (freeq::Mutex::new(VecDeque::new()), freeq::Condvar::new()),
            cv_pl: (
                PlMutex::new(VecDeque::new()),
                freeq::parking_lot::Condvar::new(),
            ),
            slots: Slots::new(8, rng),
            slot_lock: PlMutex::new(()),
            async_map: futures::lock::Mutex::new(entries(rng)),
        })
    }

    /// The last parking_lot map's lock (the forking thread holds it
    /// across `fork`).
    pub fn pl_maps_last(&self) -> &PlMutex<Vec<Tracked>> {
        &self.pl_maps[MAPS - 1]
    }

    /// Hands every value the world holds to freeq, under its lock, and
    /// retires what the epoch slots hold (no reader is left).
    pub fn empty(&self) {
        for m in &self.std_maps {
            lk(m).clear();
        }
        for m in &self.pl_maps {
            freeq::defer(mem::take(&mut *m.lock()));
        }
        self.rw
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        freeq::defer(mem::take(&mut *self.pl_rw.write()));
        {
            freeq::prepare_thread();
            let mut g =
                freeq::LockGuard::new(self.plain.lock().unwrap_or_else(PoisonError::into_inner));
            freeq::defer(mem::take(&mut *g));
        }
        *self.blobs.lock() = Vec::new();
        freeq::defer(mem::take(&mut *lk(&self.cv_std.0)));
        freeq::defer(mem::take(&mut *self.cv_pl.0.lock()));
        {
            let _g = self.slot_lock.lock();
            self.slots.retire_all();
        }
        let mut g = freeq::AsyncGuard::new(futures::executor::block_on(self.async_map.lock()));
        let old = mem::take(&mut *g);
        g.defer(old);
    }
}

fn blobs(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..8).map(|_| vec![7u8; rng.payload()]).collect()
}

/// Runs one step; a panic it lets out must be a planned one.
pub fn step(world: &Arc<World>, rng: &mut Rng) {
    let kind = rng.below(100);
    let start = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| one_step(world, rng, kind)));
    let took = start.elapsed();
    if took.as_nanos() as u64 > LONGEST_NS.load(Relaxed) {
        let mut l = LONGEST.lock().unwrap_or_else(PoisonError::into_inner);
        if took > l.0 {
            *l = (took, label(kind));
            LONGEST_NS.store(took.as_nanos() as u64, Relaxed);
        }
    }
    STEPS.fetch_add(1, Relaxed);
    if let Err(payload) = r {
        if payload.is::<Planned>() {
            PANICS.fetch_add(1, Relaxed);
        } else {
            fail(format!("unplanned panic: {}", message(&*payload)));
        }
    }
    after_step();
}

/// Outside every section, nothing waits: no queued item, no held free.
pub fn after_step() {
    if freeq::in_section() {
        fail("a step left its thread inside a section".into());
    }
    if freeq::pending() != 0 {
        fail(format!(
            "{} item(s) pending outside a section",
            freeq::pending()
        ));
    }
    let held = freeq::alloc::held();
    if held.frees != 0 {
        fail(format!("{} free(s) held outside a section", held.frees));
    }
}

pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string payload)".into()
    }
}

fn inline() -> bool {
    freeq::policy() == Policy::Inline
}

/// Checks that the values `ids` were not freed yet (their thread is still
/// inside a section).
fn not_freed(ids: &[u64], what: &str) {
    for &id in ids {
        if drops(id) != 0 {
            fail(format!(
                "{what}: value {id} freed while its thread is inside a section"
            ));
        }
    }
}

/// Under `Policy::Inline`, checks that the values `ids` were freed by the
/// drain that just ran on this thread.
fn freed_inline(ids: &[u64], was_inline: bool, what: &str) {
    if !was_inline {
        return;
    }
    for &id in ids {
        if drops(id) != 1 {
            fail(format!("{what}: value {id} not freed by its inline drain"));
        }
    }
}

fn replace_pl(world: &World, rng: &mut Rng) -> u64 {
    let j = rng.below(MAPS as u64) as usize;
    let mut g = world.pl_maps[j].lock();
    let i = rng.below(ENTRIES as u64) as usize;
    let old = mem::replace(&mut g[i], rng.value());
    let id = old.id();
    match rng.below(3) {
        0 => {
            if inject_now(Inject::Leak) {
                mem::forget(old);
            } else {
                freeq::defer(old);
            }
        }
        1 => freeq::defer_with(old, |v| {
            v.check("freed by defer_with's function");
            drop(v);
        }),
        _ => freeq::defer_fn(move || drop(old)),
    }
    id
}

/// What step `kind` (0..100) does, for the report.
fn label(kind: u64) -> &'static str {
    match kind {
        0..=19 => "defer/defer_with/defer_fn",
        20..=34 => "Deferred<T>",
        35..=44 => "nested sections",
        45..=48 => "flush",
        49..=52 => "panics",
        53..=58 => "rwlocks",
        59..=61 => "LockGuard::new",
        62..=66 => "DeferFrees",
        67..=72 => "condvars",
        73..=76 => "FreeQueue",
        77..=81 => "retire",
        82..=84 => "defer outside a section",
        85..=87 => "defer_heavy",
        88..=93 => "set_policy",
        94 => "quiesce",
        95 => "Deferred::into_inner",
        _ => "async guards",
    }
}

fn one_step(world: &Arc<World>, rng: &mut Rng, kind: u64) {
    match kind {
        // Explicit deferral: defer, defer_with, defer_fn.
        0..=19 => {
            let was_inline = inline();
            let id = replace_pl(world, rng);
            freed_inline(&[id], was_inline, "defer under a parking_lot lock");
        }
        // Implicit deferral: `Deferred<T>` displaced under a lock.
        20..=34 => {
            let j = rng.below(MAPS as u64) as usize;
            let mut g = lk(&world.std_maps[j]);
            if rng.one_in(16) {
                g.clear();
                g.extend(deferred_entries(rng));
            } else {
                let i = rng.below(ENTRIES as u64) as usize;
                g[i] = Deferred::new(rng.value());
            }
        }
        // Nested sections over several locks, in lock order.
        35..=44 => nested(world, rng),
        // flush inside a section.
        45..=48 => {
            let was_inline = inline();
            let s = freeq::section();
            let mut ids = Vec::new();
            for _ in 0..rng.below(8) + 1 {
                let v = rng.value();
                ids.push(v.id());
                freeq::defer(v);
            }
            not_freed(&ids, "before flush");
            freeq::flush();
            if freeq::pending() != 0 {
                fail("items pending right after flush".into());
            }
            freed_inline(&ids, was_inline, "flush");
            freeq::defer(rng.value());
            drop(s);
        }
        // Panics inside sections, and frees that panic.
        49..=52 => panics(world, rng),
        // RwLocks: std-backed, and parking_lot's upgradable reads.
        53..=58 => {
            if rng.one_in(2) {
                let mut g = world.rw.write().unwrap_or_else(PoisonError::into_inner);
                let i = rng.below(ENTRIES as u64) as usize;
                g[i] = Deferred::new(rng.value());
                if rng.one_in(4) {
                    let r = freeq::RwLockWriteGuard::downgrade(g);
                    r[0].check("after downgrade");
                }
            } else {
                let g = world.pl_rw.upgradable_read();
                g[0].check("under an upgradable read");
                let mut w = freeq::parking_lot::RwLockUpgradableReadGuard::upgrade(g);
                let i = rng.below(ENTRIES as u64) as usize;
                freeq::defer(mem::replace(&mut w[i], rng.value()));
            }
        }
        // Any guard wrapped: a plain std mutex through LockGuard::new.
        59..=61 => {
            freeq::prepare_thread();
            let mut g =
                freeq::LockGuard::new(world.plain.lock().unwrap_or_else(PoisonError::into_inner));
            let i = rng.below(ENTRIES as u64) as usize;
            freeq::defer(mem::replace(&mut g[i], rng.value()));
        }
        // DeferFrees: plain drops under a lock, whose frees wait.
        62..=66 => {
            let fresh = blobs(rng);
            let mut g = world.blobs.lock();
            let had_heap = g.iter().any(|b| b.capacity() > 0);
            *g = fresh;
            if had_heap && freeq::alloc::held().frees == 0 {
                fail("frees made under a lock were not held".into());
            }
        }
        // Condition variables: freeq's (std-backed) and parking_lot's.
        67..=72 => condvar(world, rng),
        // Explicit queues.
        73..=76 => free_queue(rng),
        // Epoch retirement, under a lock or outside one.
        77..=81 => {
            let k = rng.below(world.slots.len() as u64) as usize;
            if rng.one_in(4) {
                world.slots.replace(k, rng.value());
            } else {
                let _g = world.slot_lock.lock();
                world.slots.replace(k, rng.value());
            }
        }
        // Deferral outside any section: freed at once by the policy.
        82..=84 => {
            let was_inline = inline();
            let v = rng.value();
            let id = v.id();
            freeq::defer(v);
            freed_inline(&[id], was_inline, "defer outside a section");
        }
        // One heavy value off the thread, inside a section or not.
        85..=87 => {
            if rng.one_in(2) {
                let _g = world.pl_maps[0].lock();
                freeq::defer_heavy(rng.value());
            } else {
                freeq::defer_heavy(rng.value());
            }
        }
        // Policy switches.
        88..=93 => {
            POLICY_SWITCHES.fetch_add(1, Relaxed);
            freeq::set_policy(if rng.one_in(2) {
                Policy::Offload
            } else {
                Policy::Inline
            });
        }
        94 => {
            if rng.one_in(8) {
                freeq::quiesce();
            }
        }
        // Deferred values moved between maps: into_inner never defers.
        95 => {
            let mut g = lk(&world.std_maps[0]);
            let i = rng.below(ENTRIES as u64) as usize;
            let v = mem::replace(&mut g[i], Deferred::new(rng.value()));
            let inner = Deferred::into_inner(v);
            drop(g);
            world.pl_maps[MAPS - 1].lock()[i] = inner;
        }
        // Async guards: a bin freed after the release, whatever ends it.
        _ => async_guard(world, rng),
    }
}

/// One async critical section on the async map, on futures' executor:
/// values put in the guard's bin (by `defer`, and caught by `with`), then
/// a plain drop, `unlock().await`, an `unlock()` never awaited, or a
/// second acquisition cancelled while the first holds the lock. A bin is
/// freed on this thread or by a reclaimer, never before the release.
fn async_guard(world: &World, rng: &mut Rng) {
    futures::executor::block_on(async {
        let mut g = freeq::AsyncGuard::new(world.async_map.lock().await);
        let mut ids = Vec::new();
        for _ in 0..rng.below(3) + 1 {
            let i = rng.below(ENTRIES as u64) as usize;
            let old = mem::replace(&mut g[i], rng.value());
            ids.push(old.id());
            if rng.one_in(3) {
                // Caught: dropped as a `Deferred` inside the closure.
                g.with(|_| drop(Deferred::new(old)));
            } else {
                g.defer(old);
            }
        }
        not_freed(&ids, "async guard, before the release");
        match rng.below(4) {
            0 => drop(g),
            1 => g.unlock().await,
            2 => drop(g.unlock()),
            _ => {
                // Another acquisition, cancelled while this one holds.
                let mut second = std::pin::pin!(world.async_map.lock());
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if second.as_mut().poll(&mut cx).is_ready() {
                    fail("async guard: a held futures mutex locked twice".into());
                }
                drop(g);
            }
        }
    });
}

/// Takes a random ordered subset of the locks, deferring at each level,
/// and checks that nothing is freed until the outermost one closes.
fn nested(world: &Arc<World>, rng: &mut Rng) {
    let was_inline = inline();
    let mut ids = Vec::new();
    let outer = freeq::section();
    {
        let i = rng.below(MAPS as u64) as usize;
        let mut a = lk(&world.std_maps[i]);
        a[0] = Deferred::new(rng.value());
        let j = rng.below(MAPS as u64) as usize;
        let mut b = world.pl_maps[j].lock();
        let v = mem::replace(&mut b[1], rng.value());
        ids.push(v.id());
        freeq::defer(v);
        {
            let _inner = freeq::section();
            let mut c = world.pl_rw.write();
            let v = mem::replace(&mut c[2], rng.value());
            ids.push(v.id());
            freeq::defer(v);
            if freeq::pending() < 2 {
                fail("nested: fewer items pending than deferred".into());
            }
        }
        drop(b);
        not_freed(&ids, "nested, inner locks released");
        drop(a);
        let v = rng.value();
        ids.push(v.id());
        freeq::defer(v);
        not_freed(&ids, "nested, all locks released");
    }
    drop(outer);
    freed_inline(&ids, was_inline, "nested");
}

fn panics(world: &Arc<World>, rng: &mut Rng) {
    match rng.below(4) {
        // A panic inside a section with values queued: the guard unlocks and
        // drains as it unwinds.
        0 => {
            let mut g = lk(&world.std_maps[rng.below(MAPS as u64) as usize]);
            g[3] = Deferred::new(rng.value());
            freeq::defer(rng.value());
            panic_any(Planned);
        }
        // A free that panics: the rest of the batch is freed, the panic
        // resumes at the unlock.
        1 => {
            let mut g = world.pl_maps[rng.below(MAPS as u64) as usize].lock();
            freeq::defer(rng.value());
            freeq::defer(Tracked::panicking(rng.payload()));
            let v = mem::replace(&mut g[4], rng.value());
            freeq::defer(v);
        }
        // Both: a panicking free queued, then a panic in the section.
        2 => {
            let _s = freeq::section();
            freeq::defer(Tracked::panicking(8));
            let _g = world.pl_rw.read();
            panic_any(Planned);
        }
        // A panicking value in an explicit queue.
        _ => {
            let mut q = FreeQueue::new();
            q.push(rng.value());
            q.push(Tracked::panicking(16));
            q.push(rng.value());
            drop(q);
        }
    }
}

fn condvar(world: &Arc<World>, rng: &mut Rng) {
    let wait = Duration::from_micros(200 + rng.below(800));
    match rng.below(4) {
        0 => {
            let (m, cv) = &world.cv_std;
            let mut q = lk(m);
            freeq::defer(rng.value()); // freed before the wait blocks
            if q.is_empty() {
                WAITS.fetch_add(1, Relaxed);
                q = cv
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if let Some(v) = q.pop_front() {
                v.check("taken from a condvar queue");
                freeq::defer(v);
            }
        }
        1 => {
            let (m, cv) = &world.cv_pl;
            let mut q = m.lock();
            freeq::defer(rng.value());
            if q.is_empty() {
                WAITS.fetch_add(1, Relaxed);
                cv.wait_for(&mut q, wait);
            }
            if let Some(v) = q.pop_front() {
                freeq::defer(v);
            }
        }
        2 => {
            let w = world.clone();
            let mut q = lk(&w.cv_std.0);
            if q.len() >= QUEUE_CAP {
                freeq::defer(q.pop_front());
            }
            q.push_back(rng.value());
            let notify = world.clone();
            freeq::defer_fn(move || {
                notify.cv_std.1.notify_one();
            });
        }
        _ => {
            let mut q = world.cv_pl.0.lock();
            if q.len() >= QUEUE_CAP {
                freeq::defer(q.pop_front());
            }
            q.push_back(rng.value());
            drop(q);
            world.cv_pl.1.notify_all();
        }
    }
}

fn free_queue(rng: &mut Rng) {
    let mut q = FreeQueue::new();
    for _ in 0..rng.below(8) + 1 {
        match rng.below(3) {
            0 => q.push(rng.value()),
            1 => q.push_with(rng.value(), |v| {
                v.check("freed by push_with's function");
                drop(v);
            }),
            _ => {
                let v = rng.value();
                q.push_fn(move || drop(v));
            }
        }
    }
    match rng.below(4) {
        0 => q.drain(),
        1 => drop(q),
        2 => {
            let _s = freeq::section();
            q.defer_all();
        }
        _ => {
            // Sent to another thread and dropped there.
            std::thread::scope(|s| {
                s.spawn(move || drop(q));
            });
            crate::run::THREADS.fetch_add(1, Relaxed);
        }
    }
}
