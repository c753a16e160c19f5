//! A section around a library you don't own: with `DeferFrees` as the
//! global allocator, the frees a library makes under its own lock (here a
//! plain `std::sync::Mutex` inside a "foreign" type, standing in for a
//! crate's internal lock) run after that lock's unlock when the call is
//! wrapped in `freeq::alloc::frees_after`.
//!
//! The foreign type raises a thread-local flag right after it locks and
//! lowers it right before it unlocks; the counting inner allocator records,
//! at each free, whether the flag was up. Counts are per thread (`const`
//! thread-locals without destructors, which never allocate).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex as StdMutex;

use freeq::alloc::{DeferFrees, RESERVE_SLOTS, frees_after, held};

thread_local! {
    /// The foreign lock is held by this thread.
    static FOREIGN_LOCKED: Cell<bool> = const { Cell::new(false) };
    /// Inner `dealloc` calls on this thread while the foreign lock was held.
    static UNDER_LOCK: Cell<usize> = const { Cell::new(0) };
    /// Inner `dealloc` calls on this thread while it was not.
    static AFTER_UNLOCK: Cell<usize> = const { Cell::new(0) };
}

/// Forwards to `System`, counting frees by whether the foreign lock is
/// held.
struct Counting;

// SAFETY: (1) every call is forwarded unchanged to `System`; the counting
// touches only `const` thread-locals without destructors, which never
// allocate or unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: (2) forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: (2b) as in (2). (Not the default, which would count a
        // moved block's free as one of ours.)
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let locked = FOREIGN_LOCKED.try_with(Cell::get).unwrap_or(false);
        let count = if locked { &UNDER_LOCK } else { &AFTER_UNLOCK };
        let _ = count.try_with(|c| c.set(c.get() + 1));
        // SAFETY: (3) as in (2).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: DeferFrees<Counting> = DeferFrees::new(Counting);

fn under_lock() -> usize {
    UNDER_LOCK.with(Cell::get)
}

fn after_unlock() -> usize {
    AFTER_UNLOCK.with(Cell::get)
}

/// Stands in for a crate whose lock frees memory: every method locks its
/// `std` mutex, works, and unlocks, all inside the call.
#[derive(Default)]
struct Foreign {
    map: StdMutex<HashMap<u64, String>>,
    /// One-byte blocks, each its own allocation.
    #[allow(clippy::vec_box)]
    small: StdMutex<Vec<Box<u8>>>,
}

impl Foreign {
    /// Runs `f` on the map with the lock held and the flag up.
    fn locked<R>(&self, f: impl FnOnce(&mut HashMap<u64, String>) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        FOREIGN_LOCKED.with(|l| l.set(true));
        let lowered = Lower;
        let r = f(&mut map);
        drop(lowered);
        drop(map);
        r
    }

    fn insert(&self, key: u64, value: String) -> Option<String> {
        self.locked(|m| m.insert(key, value))
    }

    /// Replaces a value, dropping the old one under the lock.
    fn replace(&self, key: u64, value: String) {
        self.locked(|m| {
            m.insert(key, value);
        })
    }

    fn retain_even(&self) -> usize {
        self.locked(|m| {
            m.retain(|k, _| k % 2 == 0);
            m.len()
        })
    }

    fn clear(&self) {
        self.locked(HashMap::clear)
    }

    /// Inserts `n` keys from `from` in one critical section: the table
    /// grows, freeing its old allocations under the lock.
    fn fill(&self, from: u64, n: u64) {
        self.locked(|m| {
            for k in from..from + n {
                m.insert(k, value(k));
            }
        })
    }

    /// Clears the vector of one-byte boxes under its lock.
    fn clear_small(&self) {
        let mut v = self.small.lock().unwrap();
        FOREIGN_LOCKED.with(|l| l.set(true));
        v.clear();
        FOREIGN_LOCKED.with(|l| l.set(false));
    }
}

/// Lowers the flag when dropped, also while unwinding.
struct Lower;

impl Drop for Lower {
    fn drop(&mut self) {
        FOREIGN_LOCKED.with(|l| l.set(false));
    }
}

/// A heap string of at least two words.
fn value(k: u64) -> String {
    format!("value {k:08}, a heap string")
}

fn filled(n: u64) -> Foreign {
    let f = Foreign::default();
    f.fill(0, n);
    f
}

const N: u64 = if cfg!(miri) { 40 } else { 400 };

#[test]
fn without_a_section_the_library_frees_under_its_lock() {
    let f = filled(N);
    let before = under_lock();
    assert_eq!(f.retain_even(), N as usize / 2);
    assert_eq!(under_lock() - before, N as usize / 2);
}

#[test]
fn retain_frees_after_the_librarys_unlock() {
    let f = filled(N);
    let (under, after) = (under_lock(), after_unlock());
    let left = frees_after(|| {
        let left = f.retain_even();
        // Inside the call's section, after the foreign unlock: held.
        assert_eq!(held().frees, N as usize / 2);
        assert_eq!(after_unlock(), after, "nothing freed yet");
        left
    });
    assert_eq!(left, N as usize / 2);
    assert_eq!(under_lock(), under, "a free ran under the foreign lock");
    assert_eq!(after_unlock() - after, N as usize / 2);
    assert_eq!(held().frees, 0);
}

#[test]
fn replaced_values_cleared_maps_and_grown_tables_free_after_unlock() {
    let f = filled(N);
    let (under, after) = (under_lock(), after_unlock());
    frees_after(|| {
        let old = f.insert(1, value(1_000_001));
        drop(old); // dropped by the caller, outside the foreign lock
        f.replace(2, value(1_000_002)); // dropped inside it
        f.fill(N, 4 * N); // the table grows, freeing the old one
        f.clear();
    });
    assert_eq!(under_lock(), under, "a free ran under the foreign lock");
    // Two old values, the map's 5N values and at least one old table.
    assert!(after_unlock() - after >= 5 * N as usize + 3);
}

#[test]
fn past_the_array_large_blocks_still_wait() {
    let n = 3 * RESERVE_SLOTS as u64;
    let f = filled(n);
    let (under, after) = (under_lock(), after_unlock());
    frees_after(|| f.clear());
    assert_eq!(under_lock(), under);
    assert_eq!(after_unlock() - after, n as usize);
}

#[test]
fn past_the_array_small_blocks_free_at_once() {
    let f = Foreign::default();
    let n = RESERVE_SLOTS + 10;
    *f.small.lock().unwrap() = (0..n).map(|i| Box::new(i as u8)).collect();
    let (under, after) = (under_lock(), after_unlock());
    frees_after(|| f.clear_small());
    // The array holds RESERVE_SLOTS one-byte blocks; the rest had nowhere
    // to wait and were freed at once, under the lock (documented).
    assert_eq!(under_lock() - under, n - RESERVE_SLOTS);
    assert_eq!(after_unlock() - after, RESERVE_SLOTS);
}

#[test]
fn a_panic_inside_the_library_still_frees_after_unlock() {
    let f = filled(N);
    let (under, after) = (under_lock(), after_unlock());
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        frees_after(|| {
            f.locked(|m| {
                m.clear();
                // `resume_unwind`: no panic hook, whose backtrace (with
                // RUST_BACKTRACE set) would free more small blocks than
                // the array holds.
                panic::resume_unwind(Box::new("the library panics with its lock held"));
            })
        })
    }));
    assert!(r.is_err());
    assert!(f.map.is_poisoned());
    assert_eq!(under_lock(), under, "a free ran under the foreign lock");
    assert!(after_unlock() - after >= N as usize);
    assert_eq!(held().frees, 0);
    assert!(!freeq::in_section());
}

#[test]
fn inside_another_section_the_frees_wait_for_the_outermost() {
    let f = filled(N);
    let outer = freeq::Mutex::new(());
    let after = after_unlock();
    let g = outer.lock().unwrap();
    frees_after(|| f.clear());
    assert_eq!(after_unlock(), after, "the outer section is still open");
    assert_eq!(held().frees, N as usize);
    drop(g);
    assert_eq!(after_unlock() - after, N as usize);
}

#[test]
fn a_plain_section_does_the_same() {
    let f = filled(N);
    let (under, after) = (under_lock(), after_unlock());
    {
        let _s = freeq::section();
        f.clear();
    }
    assert_eq!(under_lock(), under);
    assert_eq!(after_unlock() - after, N as usize);
}
