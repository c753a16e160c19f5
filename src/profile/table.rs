//! The profile's records: the switches, each thread's table of sites, and
//! the registry that merges the tables.
//!
//! A thread that samples a section owns a [`Table`]: a fixed array of
//! [`MAX_SITES`] sites and one "other sites" slot, allocated once, when the
//! thread first samples (before its lock is taken). Only the owning thread
//! writes its table, with plain loads and stores of atomics; a snapshot
//! reads every live table and the sums of exited threads under the
//! registry's lock. [`reset`] clears the exited sums and moves the
//! registry to a new epoch: a table of an older epoch is left out of
//! snapshots, and its owner clears it before it records again. A thread's
//! table is folded into the exited sums when the thread exits. The
//! registry's lock is never held while a table is read (tables can be
//! large, and sections must never wait for a snapshot); a snapshot that a
//! `reset` overtook reads again.
//!
//! A sampled section's batch that a reclaimer or the user's executor
//! frees carries a [`Mark`]: its site's row among the exited threads'
//! sums, readied when the batch leaves (after the unlock), to which
//! [`add_offloaded`] adds the time the batch took to free, under the
//! registry's lock, allocating nothing.
//!
//! This file calls the `sync` shim (static atomics, constants scaled
//! under Miri) and `platform` (the fork handlers).

use std::fmt;
use std::panic::Location;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

// The tables' atomics are `std`'s in loom builds too, like `stats`'s
// slots: tables are published to other threads through the registry's
// `std` lock, which loom cannot see, so loom would take every read of a
// table for a race with its creation. The loom models explore the
// interleavings of sampled sections, snapshots and resets at freeq's
// locks.
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::sync::{StaticAtomicU32, StaticAtomicU64, scaled};

/// Sites a thread's table keeps apart; later ones share its "other sites"
/// slot. (4 under Miri and loom.)
pub(crate) const MAX_SITES: usize = scaled(64, 4);

/// Rows the exited threads' sums keep apart; later sites share one
/// "other sites" row.
const MAX_EXITED: usize = 4 * MAX_SITES;

/// Buckets of each time histogram: two per power of two of clock ticks,
/// up to 2^36 ticks (about 25 s at 2.5 GHz; the last bucket takes
/// everything longer). (16 under Miri and loom.)
pub(crate) const BUCKETS: usize = scaled(72, 16);

/// `EVERY` before the environment was read.
pub(crate) const UNSET: u32 = u32::MAX;

/// Sample one outermost section in `EVERY` per thread; 0: off.
pub(crate) static EVERY: StaticAtomicU32 = StaticAtomicU32::new(UNSET);

/// The registry's epoch: [`reset`] moves it on.
static EPOCH: StaticAtomicU64 = StaticAtomicU64::new(0);

/// What opened a sampled section: the kind of lock (or section) the site
/// calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LockKind {
    /// `freeq::Mutex::lock` or `try_lock`.
    Mutex,
    /// `freeq::RwLock::read` or `try_read`.
    RwLockRead,
    /// `freeq::RwLock::write` or `try_write`.
    RwLockWrite,
    /// A condvar wait taking its lock back (`freeq::Condvar`,
    /// `freeq::parking_lot::Condvar`).
    Condvar,
    /// An exclusive lock on a [`RawDeferred`](crate::RawDeferred) mutex:
    /// `freeq::parking_lot::Mutex` and every lock_api mutex over it.
    RawMutex,
    /// A shared lock on a `RawDeferred` reader-writer lock.
    RawRead,
    /// An exclusive lock on a `RawDeferred` reader-writer lock.
    RawWrite,
    /// An upgradable lock on a `RawDeferred` reader-writer lock.
    RawUpgradable,
    /// [`LockGuard::new`](crate::LockGuard::new): the guard was taken
    /// before, so no wait is measured.
    Guard,
    /// [`section`](crate::section) (or
    /// [`frees_after`](crate::alloc::frees_after)): no lock.
    Section,
    /// An async mutex's `lock`, `lock_owned` or `try_lock*`
    /// (`freeq::tokio::Mutex`, feature `tokio`).
    AsyncMutex,
    /// An async reader-writer lock's `read`, `read_owned` or `try_read*`.
    AsyncRead,
    /// An async reader-writer lock's `write`, `write_owned` or
    /// `try_write*`.
    AsyncWrite,
    /// [`AsyncGuard::new`](crate::AsyncGuard::new): the guard was taken
    /// before, so no wait is measured.
    AsyncGuard,
    /// The "other sites" row: sites past the table's bound.
    Other,
}

impl LockKind {
    /// A short name, as the table prints it.
    ///
    /// ```
    /// assert_eq!(freeq::profile::LockKind::RwLockWrite.name(), "RwLock write");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            LockKind::Mutex => "Mutex",
            LockKind::RwLockRead => "RwLock read",
            LockKind::RwLockWrite => "RwLock write",
            LockKind::Condvar => "Condvar wait",
            LockKind::RawMutex => "raw mutex",
            LockKind::RawRead => "raw read",
            LockKind::RawWrite => "raw write",
            LockKind::RawUpgradable => "raw upgradable",
            LockKind::Guard => "LockGuard",
            LockKind::Section => "section",
            LockKind::AsyncMutex => "async Mutex",
            LockKind::AsyncRead => "async read",
            LockKind::AsyncWrite => "async write",
            LockKind::AsyncGuard => "AsyncGuard",
            LockKind::Other => "other",
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A site: the call that opened an outermost section, and its kind.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key {
    pub(crate) at: &'static Location<'static>,
    pub(crate) kind: LockKind,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        let (a, b) = (self.at, other.at);
        self.kind == other.kind
            && a.line() == b.line()
            && a.column() == b.column()
            && (std::ptr::eq(a.file(), b.file()) || a.file() == b.file())
    }
}

/// One sampled section's figures; times in clock ticks ([`now`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) times: [u64; 3],
    pub(crate) values: u64,
    pub(crate) frees: u64,
}

/// The index of each time in [`Sample::times`] and [`Tally::times`].
pub(crate) const WAITED: usize = 0;
pub(crate) const HELD: usize = 1;
pub(crate) const MOVED: usize = 2;

/// The histogram bucket of `ns`: 0 and 1 alone, then two per power of two.
pub(crate) fn bucket(ns: u64) -> usize {
    if ns < 2 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize;
    let half = ((ns >> (e - 1)) & 1) as usize;
    (2 * e + half).min(BUCKETS - 1)
}

/// The middle of bucket `b`, in nanoseconds.
pub(crate) fn bucket_mid(b: usize) -> u64 {
    if b < 2 {
        return b as u64;
    }
    let (e, half) = (b / 2, (b % 2) as u64);
    let width = 1u64 << (e - 1);
    (1u64 << e) + half * width + width / 2
}

/// Sums over sampled sections, with a histogram of each time.
#[derive(Clone, Debug)]
pub(crate) struct Tally {
    pub(crate) sections: u64,
    pub(crate) times: [u64; 3],
    pub(crate) values: u64,
    pub(crate) frees: u64,
    pub(crate) hist: [[u64; BUCKETS]; 3],
    /// Time reclaimers and executors spent freeing the batches the
    /// sampled sections handed off, and how many batches.
    pub(crate) off: u64,
    pub(crate) off_batches: u64,
}

impl Tally {
    pub(crate) const fn new() -> Self {
        Tally {
            sections: 0,
            times: [0; 3],
            values: 0,
            frees: 0,
            hist: [[0; BUCKETS]; 3],
            off: 0,
            off_batches: 0,
        }
    }

    /// Adds one sampled section.
    fn add(&mut self, s: &Sample) {
        self.sections += 1;
        self.values += s.values;
        self.frees += s.frees;
        for i in 0..3 {
            self.times[i] += s.times[i];
            self.hist[i][bucket(s.times[i])] += 1;
        }
    }

    pub(crate) fn absorb(&mut self, other: &Tally) {
        self.sections += other.sections;
        self.values += other.values;
        self.frees += other.frees;
        self.off += other.off;
        self.off_batches += other.off_batches;
        for i in 0..3 {
            self.times[i] += other.times[i];
            for (to, from) in self.hist[i].iter_mut().zip(&other.hist[i]) {
                *to += from;
            }
        }
    }

    /// The `q` quantile (0 to 1) of time `which`, in nanoseconds, to the
    /// resolution of the histogram (within about 20%).
    pub(crate) fn quantile(&self, which: usize, q: f64) -> u64 {
        let total: u64 = self.hist[which].iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in self.hist[which].iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_mid(b);
            }
        }
        bucket_mid(BUCKETS - 1)
    }
}

/// One site of a thread's table. Only the owning thread writes it.
struct Slot {
    key: OnceLock<Key>,
    sections: AtomicU64,
    times: [AtomicU64; 3],
    values: AtomicU64,
    frees: AtomicU64,
    hist: [[AtomicU32; BUCKETS]; 3],
    /// One more than the registry epoch in which this site's row among
    /// the exited sums was readied for offloaded batches (0: never).
    marked: AtomicU64,
}

/// Adds `n` to a counter only this thread writes: no read-modify-write.
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Slot {
    fn new() -> Self {
        Slot {
            key: OnceLock::new(),
            sections: AtomicU64::new(0),
            times: std::array::from_fn(|_| AtomicU64::new(0)),
            values: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            hist: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
            marked: AtomicU64::new(0),
        }
    }

    fn add(&self, s: &Sample) {
        bump(&self.sections, 1);
        bump(&self.values, s.values);
        bump(&self.frees, s.frees);
        for i in 0..3 {
            bump(&self.times[i], s.times[i]);
            let cell = &self.hist[i][bucket(s.times[i])];
            cell.store(cell.load(Relaxed).saturating_add(1), Relaxed);
        }
    }

    fn clear(&self) {
        self.sections.store(0, Relaxed);
        self.values.store(0, Relaxed);
        self.frees.store(0, Relaxed);
        for i in 0..3 {
            self.times[i].store(0, Relaxed);
            self.hist[i].iter().for_each(|c| c.store(0, Relaxed));
        }
    }

    fn read(&self) -> Tally {
        let mut t = Tally::new();
        t.sections = self.sections.load(Relaxed);
        t.values = self.values.load(Relaxed);
        t.frees = self.frees.load(Relaxed);
        for i in 0..3 {
            t.times[i] = self.times[i].load(Relaxed);
            for (to, from) in t.hist[i].iter_mut().zip(&self.hist[i]) {
                *to = u64::from(from.load(Relaxed));
            }
        }
        t
    }
}

/// A thread's sites: [`MAX_SITES`] slots, then the "other sites" slot.
pub(crate) struct Table {
    /// The registry epoch the slots' figures belong to.
    epoch: AtomicU64,
    slots: Box<[Slot]>,
}

impl Table {
    fn new(epoch: u64) -> Self {
        Table {
            epoch: AtomicU64::new(epoch),
            slots: (0..=MAX_SITES).map(|_| Slot::new()).collect(),
        }
    }

    /// The slot of `key`, claimed if new; the "other sites" slot when the
    /// table is full. Called by the owning thread only.
    pub(crate) fn find(&self, key: Key) -> usize {
        for (i, slot) in self.slots[..MAX_SITES].iter().enumerate() {
            match slot.key.get() {
                Some(k) if *k == key => return i,
                Some(_) => {}
                None => {
                    // Only the owner sets keys: this cannot race.
                    let _ = slot.key.set(key);
                    return i;
                }
            }
        }
        MAX_SITES
    }

    /// Adds a sample to slot `slot`. Called by the owning thread only; a
    /// table left behind by [`reset`] is cleared first.
    pub(crate) fn record(&self, slot: usize, s: &Sample) {
        let epoch = EPOCH.load(Acquire);
        if self.epoch.load(Relaxed) != epoch {
            self.slots.iter().for_each(Slot::clear);
            // Readers that see the new epoch see the cleared slots.
            self.epoch.store(epoch, Release);
        }
        if let Some(to) = self.slots.get(slot) {
            to.add(s);
        }
    }

    /// The mark of a batch that slot `slot`'s sampled section hands off:
    /// its site's row among the exited sums is readied first (once per
    /// site and epoch; it may allocate, so never under a lock). Called by
    /// the owning thread only.
    pub(crate) fn mark(&self, slot: usize) -> Mark {
        let epoch = EPOCH.load(Acquire);
        let slot = &self.slots[slot.min(MAX_SITES)];
        let key = slot.key.get().copied();
        if slot.marked.load(Relaxed) == epoch.wrapping_add(1) {
            return Mark { key, epoch };
        }
        let mark = ready(key);
        slot.marked.store(mark.epoch.wrapping_add(1), Relaxed);
        mark
    }

    /// Adds this table's sites to `rows`, if it belongs to `epoch`.
    fn read_into(&self, epoch: u64, rows: &mut Rows) {
        if self.epoch.load(Acquire) != epoch {
            return;
        }
        for slot in self.slots.iter() {
            let tally = slot.read();
            if tally.sections != 0 {
                rows.add(slot.key.get().copied(), &tally, usize::MAX);
            }
        }
    }
}

/// Sites merged over threads: `None` is the "other sites" row.
#[derive(Default)]
pub(crate) struct Rows(pub(crate) Vec<(Option<Key>, Tally)>);

impl Rows {
    /// Adds `tally` to `key`'s row; past `bound` keyed rows, to the "other
    /// sites" row.
    fn add(&mut self, key: Option<Key>, tally: &Tally, bound: usize) {
        let keyed = self.0.iter().filter(|(k, _)| k.is_some()).count();
        let key = key.filter(|k| keyed < bound || self.0.iter().any(|(r, _)| *r == Some(*k)));
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, row)) => row.absorb(tally),
            None => self.0.push((key, tally.clone())),
        }
    }
}

/// Where the time to free a handed-off batch of a sampled section goes:
/// its site (`None`: the "other sites" row) in the registry epoch it was
/// handed off in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    key: Option<Key>,
    epoch: u64,
}

/// Readies `key`'s row among the exited sums (`None`: the "other sites"
/// row), for figures added later from any thread: the mark to add them
/// with. Takes the registry's lock and may allocate: never under a lock.
pub(crate) fn ready(key: Option<Key>) -> Mark {
    let mut reg = registry();
    // `reset` moves the epoch on under the same lock.
    let epoch = EPOCH.load(Relaxed);
    reg.exited.add(key, &Tally::new(), MAX_EXITED);
    Mark { key, epoch }
}

/// Adds to `mark`'s row, under the registry's lock, allocating nothing
/// (the row was readied by [`ready`]); nothing if a [`reset`] came in
/// between.
fn add_to(mark: Mark, add: impl FnOnce(&mut Tally)) {
    let mut reg = registry();
    if EPOCH.load(Relaxed) != mark.epoch {
        return;
    }
    let rows = &mut reg.exited.0;
    let at = match rows.iter().position(|(k, _)| *k == mark.key) {
        Some(i) => Some(i),
        // Readied past the bound: the "other sites" row.
        None => rows.iter().position(|(k, _)| k.is_none()),
    };
    if let Some(i) = at {
        add(&mut rows[i].1);
    }
}

/// Adds `ticks`, the time a handed-off batch took to free, to its site.
pub(crate) fn add_offloaded(mark: Mark, ticks: u64) {
    add_to(mark, |t| {
        t.off += ticks;
        t.off_batches += 1;
    });
}

/// Adds a sample taken off any thread's table (an async guard's) to its
/// site.
pub(crate) fn add_sample(mark: Mark, sample: &Sample) {
    add_to(mark, |t| t.add(sample));
}

struct Registry {
    live: Vec<Arc<Table>>,
    exited: Rows,
}

/// Every live thread's table and the exited threads' sums. Settings-like
/// process state: `std` in loom builds too, and never held across user
/// code.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    exited: Rows(Vec::new()),
});

fn registry() -> MutexGuard<'static, Registry> {
    #[cfg(all(unix, not(miri), not(loom)))]
    fork_safe::install();
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `REGISTRY` across `fork()`: the forking thread holds it while it forks
/// and releases it on both sides, so a child never inherits it held by a
/// thread it does not have.
#[cfg(all(unix, not(miri), not(loom)))]
mod fork_safe {
    use std::cell::Cell;
    use std::sync::MutexGuard;
    use std::sync::atomic::AtomicBool;

    use super::Registry;

    std::thread_local! {
        static HELD: Cell<Option<MutexGuard<'static, Registry>>> = const { Cell::new(None) };
    }

    extern "C" fn prepare() {
        let guard = super::REGISTRY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = HELD.try_with(move |h| h.set(Some(guard)));
    }

    extern "C" fn release() {
        let _ = HELD.try_with(|h| drop(h.take()));
    }

    /// Registers the fork handlers, once (see `platform::at_fork_once`).
    pub(super) fn install() {
        static REGISTERED: AtomicBool = AtomicBool::new(false);
        crate::platform::at_fork_once(&REGISTERED, prepare, release, release);
    }
}

/// A new table for the calling thread, in the registry.
pub(crate) fn register() -> Arc<Table> {
    // Built before the lock is taken: see the module docs.
    let table = Arc::new(Table::new(EPOCH.load(Acquire)));
    registry().live.push(table.clone());
    table
}

/// Thread exit: folds `table` into the exited threads' sums (if it belongs
/// to the current epoch) and drops it from the registry.
pub(crate) fn unregister(table: &Arc<Table>) {
    let epoch = EPOCH.load(Acquire);
    let mut mine = Rows::default();
    table.read_into(epoch, &mut mine);
    let mut reg = registry();
    if EPOCH.load(Relaxed) == epoch {
        for (key, tally) in &mine.0 {
            reg.exited.add(*key, tally, MAX_EXITED);
        }
    }
    reg.live.retain(|t| !Arc::ptr_eq(t, table));
}

/// Forgets every sample so far; see `freeq::profile::reset`.
pub(crate) fn reset() {
    let mut reg = registry();
    EPOCH.fetch_add(1, Release);
    reg.exited = Rows::default();
}

/// Every site's sums, live and exited threads together.
pub(crate) fn collect() -> Rows {
    loop {
        let (epoch, live, mut rows) = {
            let reg = registry();
            let mut rows = Rows::default();
            for (key, tally) in &reg.exited.0 {
                rows.add(*key, tally, usize::MAX);
            }
            (EPOCH.load(Relaxed), reg.live.clone(), rows)
        };
        for table in &live {
            table.read_into(epoch, &mut rows);
        }
        // Overtaken by a reset: read again. (A thread that exited
        // meanwhile is counted once: its table was read here, and its
        // exited sums are not in `rows`.)
        if EPOCH.load(Acquire) == epoch {
            return rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_their_middles_fall_inside() {
        let mut last = 0;
        for ns in (0..5000u64).chain([1 << 20, 1 << 28, u64::MAX]) {
            let b = bucket(ns);
            assert!(b >= last || ns < 5000, "bucket of {ns} went down");
            last = b;
            assert!(b < BUCKETS);
        }
        for ns in [2u64, 3, 4, 7, 100, 1000, 4095] {
            let b = bucket(ns);
            if b < BUCKETS - 1 {
                assert_eq!(bucket(bucket_mid(b)), b, "middle of bucket of {ns}");
            }
        }
    }

    #[test]
    fn quantiles_follow_the_histogram() {
        let mut t = Tally::new();
        for ns in [10u64, 10, 10, 10, 200] {
            t.hist[HELD][bucket(ns)] += 1;
        }
        let p50 = t.quantile(HELD, 0.5);
        assert_eq!(bucket(p50), bucket(10));
        let p99 = t.quantile(HELD, 0.99);
        assert_eq!(bucket(p99), bucket(200));
        assert_eq!(t.quantile(MOVED, 0.5), 0);
    }

    #[test]
    fn a_full_table_sends_new_sites_to_other() {
        let table = Table::new(EPOCH.load(Relaxed));
        let locations = [
            Location::caller(),
            Location::caller(),
            Location::caller(),
            Location::caller(),
            Location::caller(),
            Location::caller(),
            Location::caller(),
        ];
        let kinds = [
            LockKind::Mutex,
            LockKind::RwLockRead,
            LockKind::RwLockWrite,
            LockKind::Condvar,
            LockKind::RawMutex,
            LockKind::RawRead,
            LockKind::RawWrite,
            LockKind::RawUpgradable,
            LockKind::Guard,
            LockKind::Section,
        ];
        let keys: Vec<Key> = locations
            .iter()
            .flat_map(|&at| kinds.iter().map(move |&kind| Key { at, kind }))
            .collect();
        assert!(keys.len() > MAX_SITES);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(table.find(*key), i.min(MAX_SITES), "site {i}");
            // Found again where it was put.
            assert_eq!(table.find(*key), i.min(MAX_SITES));
        }
        let sample = Sample {
            times: [1, 2, 3],
            values: 1,
            frees: 0,
        };
        table.record(MAX_SITES, &sample);
        table.record(0, &sample);
        let mut rows = Rows::default();
        table.read_into(EPOCH.load(Relaxed), &mut rows);
        assert_eq!(rows.0.len(), 2);
        assert!(rows.0.iter().any(|(k, t)| k.is_none() && t.sections == 1));
    }
}
