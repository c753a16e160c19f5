//! The cost model: what freeing one item of each type is expected to cost.
//!
//! A table of learned drop costs, one moving average per item type. A run
//! of a type not timed yet is always timed, so the cost is known after the
//! type's first free, and later runs are timed on a random sample
//! ([`Learn`], the timer the dispatcher hands the queue when it runs a
//! batch). [`estimate`] sums a batch's expected cost, for the offload
//! decision. This file calls the queue layer's buffer (to read a batch's
//! runs of types) and `timing.rs`; nothing else.

use std::any::TypeId;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering::Relaxed;

use crate::queue::buffer::Buffer;
use crate::queue::hooks::DropTimer;
use crate::reclaim::timing::{Stamp, sample};
use crate::sync::StaticAtomicU64;

/// What freeing every item is expected to cost: the sum of each item
/// type's learned cost per item, or [`Cost::Untimed`] as soon as an
/// item of a type not timed yet is found. O(items), one cost lookup per
/// run of one type; meant for after the unlock.
pub(crate) fn estimate(batch: &Buffer) -> Cost {
    let mut total = 0u64;
    let mut timed = true;
    batch.runs(|id, items| match cost_ns(id) {
        Some(cost) => {
            total = total.saturating_add(cost.saturating_mul(items as u64));
            true
        }
        None => {
            timed = false;
            false
        }
    });
    if timed {
        Cost::Known(total)
    } else {
        Cost::Untimed
    }
}

/// Calls `f` with each run of same-typed items, oldest first: its
/// What freeing a batch is expected to cost ([`estimate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cost {
    /// Every item is of a timed type: the sum of their learned costs, in
    /// nanoseconds.
    Known(u64),
    /// At least one item is of a type not timed yet, whose cost nothing
    /// bounds.
    Untimed,
}

/// Learned drop costs: a two-way set-associative table indexed by a hash
/// of the item type. An entry packs a 16-bit tag of its type (the top
/// bits) and a moving average of nanoseconds per item (the rest, at least
/// 1); 0 is an empty entry. A type with no entry of its tag is *untimed*.
/// Two types whose keys match (1 in 2^16 of those that share a set) share
/// an estimate, which is all an estimate needs; a third type in a full set
/// evicts one entry, and the evicted type is timed again when it next runs.
static COSTS: [[StaticAtomicU64; 2]; COST_SETS] =
    [const { [const { StaticAtomicU64::new(0) }; 2] }; COST_SETS];
/// Sets in [`COSTS`] (a power of two).
const COST_SETS: usize = 512;
/// Bits of an entry that hold the cost; the tag takes the rest.
const COST_BITS: u32 = 48;
const COST_MASK: u64 = (1 << COST_BITS) - 1;
/// The most a noisy timing may count for, as a multiple of the current
/// estimate (see [`record`]).
const MAX_JUMP: u64 = 4;

/// Where a type's cost lives in [`COSTS`]: its set and its tag.
///
/// Computed from the `TypeId` on each use rather than cached per [`Meta`]
/// (which is a promoted constant and cannot hold a lazily computed value):
/// `TypeId` hashes as one `u64`, so this is a multiply and two shifts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct CostKey {
    set: usize,
    tag: u64,
}

#[inline]
fn cost_key(id: TypeId) -> CostKey {
    /// Folds what `TypeId` hashes into one word.
    struct Fold(u64);
    impl Hasher for Fold {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    let mut h = Fold(0);
    id.hash(&mut h);
    let h = h.finish();
    CostKey {
        set: (h >> (64 - COST_SETS.trailing_zeros())) as usize,
        tag: (h >> 16) & 0xFFFF,
    }
}

/// The two entries of `key`'s set.
#[inline(always)]
fn cost_set(key: CostKey) -> &'static [StaticAtomicU64; 2] {
    &COSTS[key.set]
}

/// `entry`'s cost if it holds `tag`'s.
#[inline(always)]
fn cost_in(entry: u64, tag: u64) -> Option<u64> {
    (entry != 0 && entry >> COST_BITS == tag).then_some(entry & COST_MASK)
}

/// The cost `set` holds for `tag`, if any.
#[inline(always)]
fn lookup(set: &[StaticAtomicU64; 2], tag: u64) -> Option<u64> {
    cost_in(set[0].load(Relaxed), tag).or_else(|| cost_in(set[1].load(Relaxed), tag))
}

/// The learned cost of one item of type `id`, in nanoseconds, or `None`
/// while the type is untimed.
#[inline]
pub(crate) fn cost_ns(id: TypeId) -> Option<u64> {
    let key = cost_key(id);
    lookup(cost_set(key), key.tag)
}

/// The timer that teaches the table: every run of an untimed type, and a
/// random sample of the others.
pub(crate) struct Learn;

impl DropTimer for Learn {
    type Mark = Stamp;

    #[inline(always)]
    fn start(id: TypeId) -> Option<Stamp> {
        // One lookup per run of one type, not per item.
        (cost_ns(id).is_none() || sample()).then(Stamp::now)
    }

    #[inline]
    fn finish(id: TypeId, start: Stamp, items: usize) {
        learn(id, start, items);
    }
}

/// Folds a timed run of `items` items into the type's estimate.
#[cold]
fn learn(id: TypeId, start: Stamp, items: usize) {
    if items == 0 {
        return;
    }
    let per_item = (start.elapsed_ns() / items as u128).clamp(1, u128::from(COST_MASK));
    let key = cost_key(id);
    record(
        cost_set(key),
        key.tag,
        per_item as u64,
        !start.leaves_out_waits(),
    );
}

/// Folds `per_item` (nanoseconds, at least 1) into `tag`'s entry of `set`:
/// the first timing is taken as it is, later ones move the estimate 1/8
/// of the way (an exponential moving average). A tag with no entry takes a
/// free way, else the way its own bits pick, so that a third type in a
/// set always evicts the same neighbour and the other one keeps its
/// estimate. Racing updates may lose one; an estimate needs no more.
///
/// A `noisy` timing (the wall clock of a thread that may have been
/// preempted meanwhile) counts for at most [`MAX_JUMP`] times the current
/// estimate, so one preemption cannot make a cheap type look heavy; a real
/// change of cost still shows within a few samples.
fn record(set: &[StaticAtomicU64; 2], tag: u64, per_item: u64, noisy: bool) {
    let entries = [set[0].load(Relaxed), set[1].load(Relaxed)];
    let (way, cost) = match (0..2).find(|&w| cost_in(entries[w], tag).is_some()) {
        Some(w) => {
            let old = entries[w] & COST_MASK;
            let per_item = if noisy {
                per_item.min(old.saturating_mul(MAX_JUMP))
            } else {
                per_item
            };
            (w, (old - old / 8).saturating_add(per_item / 8))
        }
        None => {
            let free = (0..2).find(|&w| entries[w] == 0);
            (free.unwrap_or((tag & 1) as usize), per_item)
        }
    };
    set[way].store((tag << COST_BITS) | cost.clamp(1, COST_MASK), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Instant;
    use crate::queue::block::BLOCK_SLOTS;
    use crate::reclaim::timing::SAMPLE_EVERY;
    #[cfg(all(target_os = "linux", not(miri)))]
    use crate::reclaim::timing::{WAIT_READS, cpu_wait_ns, leave_out_cpu_waits};
    #[cfg(all(target_os = "linux", not(miri)))]
    use crate::sync::Cell;

    /// Items of one block's worth several times over.
    const MANY: u32 = (BLOCK_SLOTS * 3) as u32;

    /// Pushes `f` and returns the type the buffer stores it as.
    fn push_id<F: FnOnce() + Send + 'static>(b: &mut Buffer, f: F) -> TypeId {
        b.push(f);
        TypeId::of::<F>()
    }

    /// The estimate [`Buffer::estimated_cost`] should give for `ids`, as
    /// the table stands now.
    fn expected_cost(ids: &[TypeId]) -> Cost {
        ids.iter()
            .try_fold(0u64, |sum, &id| Some(sum + cost_ns(id)?))
            .map_or(Cost::Untimed, Cost::Known)
    }

    #[test]
    fn estimated_cost_sums_over_the_items_once_every_type_is_timed() {
        let mut b = Buffer::new();
        let mut ids = Vec::new();
        let fill = |b: &mut Buffer, ids: &mut Vec<TypeId>| {
            for i in 0..MANY {
                let v = vec![i as u8];
                ids.push(if i % 3 == 0 {
                    push_id(b, move || drop(v))
                } else {
                    push_id(b, || ())
                });
            }
        };
        fill(&mut b, &mut ids);
        // Both closure types are new: neither has been freed yet.
        assert_eq!(estimate(&b), Cost::Untimed);
        b.run_all::<Learn>(&mut None);
        assert_eq!(estimate(&b), Cost::Known(0));
        ids.clear();
        fill(&mut b, &mut ids);
        let expected = expected_cost(&ids);
        assert!(
            matches!(expected, Cost::Known(ns) if ns >= MANY as u64),
            "one free timed both types: {expected:?}"
        );
        assert_eq!(estimate(&b), expected);
        b.run_all::<Learn>(&mut None);
    }

    /// Spins for `us` microseconds when dropped.
    struct Slow(u64);

    impl Drop for Slow {
        fn drop(&mut self) {
            let t = Instant::now();
            while t.elapsed() < std::time::Duration::from_micros(self.0) {
                std::hint::spin_loop();
            }
        }
    }

    const SPIN_US: u64 = if cfg!(miri) { 1 } else { 50 };

    #[test]
    fn an_untimed_type_is_timed_on_its_first_free() {
        let mut b = Buffer::new();
        let v = Slow(SPIN_US);
        let slow = push_id(&mut b, move || drop(v));
        assert_eq!(cost_ns(slow), None, "not freed yet: untimed");
        assert_eq!(estimate(&b), Cost::Untimed);
        b.run_all::<Learn>(&mut None);
        let learned = cost_ns(slow).expect("timed on its first free");
        assert!(learned >= SPIN_US * 1000, "learned {learned} ns");
    }

    /// A thread that times by the wall clock alone (a producer) never
    /// reads its CPU waits: that read is a few system calls.
    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    fn wall_clock_timings_read_no_cpu_waits() {
        std::thread::spawn(|| {
            struct Fresh;
            impl Drop for Fresh {
                fn drop(&mut self) {}
            }
            let mut b = Buffer::new();
            let v = Fresh;
            let id = push_id(&mut b, move || drop(v));
            b.run_all::<Learn>(&mut None); // untimed: always timed
            assert!(cost_ns(id).is_some());
            assert_eq!(WAIT_READS.with(Cell::get), 0);
            leave_out_cpu_waits();
            struct FreshToo;
            impl Drop for FreshToo {
                fn drop(&mut self) {}
            }
            let v = FreshToo;
            push_id(&mut b, move || drop(v));
            b.run_all::<Learn>(&mut None); // untimed too
            assert_eq!(WAIT_READS.with(Cell::get), 2, "one read at each end");
        })
        .join()
        .unwrap();
    }

    /// Pins this thread to `cpu`; whether that worked.
    #[cfg(all(target_os = "linux", not(miri)))]
    fn pin_to(cpu: usize) -> bool {
        // SAFETY: a zeroed `cpu_set_t` is a valid empty set; the calls
        // write only it and this thread's affinity.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// On a thread that leaves out its waits for a CPU (a reclaimer),
    /// time runnable but preempted inside a drop is not learned as its
    /// cost; time blocked inside it is.
    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    fn waits_for_a_cpu_are_left_out_and_blocking_counts() {
        use std::time::Duration;
        struct Sleepy;
        impl Drop for Sleepy {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // SAFETY: a zeroed `cpu_set_t` is valid; the call writes only it.
        let cpu = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
        };
        let Some(cpu) = cpu else { return };
        if cpu_wait_ns().is_none() {
            return; // no per-thread schedstat here
        }
        let learned = std::thread::spawn(move || {
            leave_out_cpu_waits();
            let mut b = Buffer::new();
            let v = Sleepy;
            let sleepy = push_id(&mut b, move || drop(v));
            b.run_all::<Learn>(&mut None);
            // This thread and a busy one share one CPU: each waits for the
            // other about half of the time.
            if !pin_to(cpu) {
                return None;
            }
            let other = std::thread::spawn(move || {
                let pinned = pin_to(cpu);
                let t = Instant::now();
                while pinned && t.elapsed() < Duration::from_millis(300) {
                    std::hint::spin_loop();
                }
                pinned
            });
            std::thread::sleep(Duration::from_millis(10));
            let v = Slow(100_000); // 100 ms of wall time, shared
            let slow = push_id(&mut b, move || drop(v));
            b.run_all::<Learn>(&mut None);
            let shared = other.join().unwrap();
            Some((cost_ns(sleepy).unwrap(), cost_ns(slow).unwrap(), shared))
        })
        .join()
        .unwrap();
        let Some((blocked, busy, shared)) = learned else {
            return;
        };
        assert!(blocked >= 5_000_000, "blocked: learned {blocked} ns");
        if shared {
            // `Slow` spins until 100 ms of wall time have passed, about
            // half of them waiting for the CPU.
            assert!(busy < 75_000_000, "busy: learned {busy} ns of 100 ms");
        }
    }

    #[test]
    fn timing_keeps_learning_a_timed_type() {
        let mut b = Buffer::new();
        let mut slow = None;
        for _ in 0..16 * SAMPLE_EVERY {
            let v = Slow(SPIN_US);
            slow = Some(push_id(&mut b, move || drop(v)));
            b.push(|| ()); // a different type: one run per item
        }
        b.run_all::<Learn>(&mut None);
        let learned = cost_ns(slow.unwrap()).expect("timed");
        // Every run of `Slow` takes at least SPIN_US, and the first one is
        // always timed: every later sample keeps the average above 7/8
        // of that.
        assert!(learned >= SPIN_US * 1000 * 7 / 8, "learned {learned} ns");
    }

    #[test]
    fn the_cost_table_keeps_two_types_a_set_and_evicts_one_neighbour() {
        let set = [const { StaticAtomicU64::new(0) }; 2];
        assert_eq!(lookup(&set, 6), None);
        record(&set, 6, 100, false);
        record(&set, 9, 7_000, false);
        assert_eq!(lookup(&set, 6), Some(100));
        assert_eq!(lookup(&set, 9), Some(7_000));
        // Later timings move the estimate an eighth of the way.
        record(&set, 6, 900, false);
        assert_eq!(lookup(&set, 6), Some(100 - 12 + 112));
        // A third tag in a full set takes the way its low bit picks (way
        // 0 for an even tag), every time: tag 9 keeps its estimate.
        record(&set, 4, 50, false);
        assert_eq!(lookup(&set, 6), None, "evicted: untimed again");
        assert_eq!(lookup(&set, 4), Some(50));
        assert_eq!(lookup(&set, 9), Some(7_000));
        // Costs are at least 1 ns, and saturate.
        record(&set, 4, 0, false);
        assert!(lookup(&set, 4).unwrap() >= 1);
        record(&set, 6, u64::MAX, false);
        assert!(lookup(&set, 6).unwrap() <= COST_MASK);
        assert_eq!(lookup(&set, 9), Some(7_000));
    }

    #[test]
    fn a_noisy_timing_moves_a_known_estimate_by_a_bounded_step() {
        let set = [const { StaticAtomicU64::new(0) }; 2];
        // The first timing is taken as it is, noisy or not.
        record(&set, 3, 1_000, true);
        assert_eq!(lookup(&set, 3), Some(1_000));
        // A preempted sample of 5 ms counts as 4 µs at most ...
        record(&set, 3, 5_000_000, true);
        assert_eq!(lookup(&set, 3), Some(1_000 - 125 + 500));
        // ... a trusted one (waits left out) as it is.
        record(&set, 3, 5_000_000, false);
        assert_eq!(lookup(&set, 3), Some(1_375 - 171 + 625_000));
        // A type that really became slower gets there within a few samples.
        let set = [const { StaticAtomicU64::new(0) }; 2];
        record(&set, 5, 1_000, true);
        let mut samples = 0;
        while lookup(&set, 5).unwrap() < 100_000 {
            record(&set, 5, 1_000_000, true);
            samples += 1;
        }
        assert!(samples <= 24, "{samples} samples");
    }

    #[test]
    fn cost_keys_are_stable_and_in_range() {
        let a = cost_key(TypeId::of::<Slow>());
        assert_eq!(a, cost_key(TypeId::of::<Slow>()));
        assert!(a.set < COST_SETS && a.tag <= 0xFFFF);
    }
}
