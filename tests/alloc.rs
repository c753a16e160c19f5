//! Heap behaviour, measured by a counting global allocator.
//!
//! - Zero allocations per deferred item in steady state, for values of 8,
//!   24, 64, 128 and 256 bytes with alignment up to 16, both while deferring
//!   and while draining (the values own no heap memory themselves).
//! - Retained queue memory after a spike is capped by `set_max_retained`,
//!   and a long loop of sections does not grow the heap.
//!
//! Counts are per thread (the test harness allocates on its own threads),
//! kept in `const` thread-locals that never allocate. `set_max_retained` is
//! process-wide, so the tests here take one lock to run one at a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::{align_of, size_of};
use std::sync::{Mutex as StdMutex, MutexGuard as StdMutexGuard};

use freeq::{FreeQueue, defer, defer_fn, defer_with, pending, section};

struct Counting;

thread_local! {
    /// Allocation calls (alloc, alloc_zeroed, realloc) on this thread.
    static CALLS: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed on this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn note(calls: usize, bytes: isize) {
    if calls > 0 {
        note_held();
    }
    let _ = CALLS.try_with(|c| c.set(c.get() + calls));
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
}

// SAFETY: (1) every call is forwarded unchanged to `System`, which upholds
// the `GlobalAlloc` contract; the bookkeeping touches only `const`
// thread-locals without destructors, which never allocate or unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as isize);
        // SAFETY: (2) forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as isize);
        // SAFETY: (3) as in (2).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, -(layout.size() as isize));
        // SAFETY: (4) as in (2).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(1, new_size as isize - layout.size() as isize);
        // SAFETY: (5) as in (2).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn calls() -> usize {
    CALLS.with(Cell::get)
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

thread_local! {
    /// Frees seen on this thread (the values below count themselves here).
    static FREED: Cell<usize> = const { Cell::new(0) };
}

fn freed() -> usize {
    FREED.with(Cell::get)
}

/// One test at a time: the retention cap is process-wide.
fn serial() -> StdMutexGuard<'static, ()> {
    static LOCK: StdMutex<()> = StdMutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Restores the default retention cap when dropped.
struct RestoreCap;

impl Drop for RestoreCap {
    fn drop(&mut self) {
        freeq::set_max_retained(freeq::DEFAULT_MAX_RETAINED);
    }
}

/// Heap-free values of a given size and alignment that count their drops.
macro_rules! value {
    ($name:ident, $size:expr, $align:literal) => {
        #[repr(C, align($align))]
        struct $name([u8; $size]);

        impl $name {
            fn new(i: usize) -> Self {
                $name([i as u8; $size])
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                assert_eq!(self.0[0], self.0[$size - 1]);
                FREED.with(|f| f.set(f.get() + 1));
            }
        }
    };
}

value!(V8, 8, 8);
value!(V24, 24, 8);
value!(V64, 64, 8);
value!(V128, 128, 8);
value!(V256, 256, 8);
value!(A16x16, 16, 16);
value!(A16x48, 48, 16);
value!(A16x128, 128, 16);
value!(A16x256, 256, 16);

/// Items per measured section. Small enough that every queue buffer stays
/// under the default retention cap.
const N: usize = if cfg!(miri) { 8 } else { 100 };

#[derive(Clone, Copy)]
enum How {
    Defer,
    DeferWith,
    DeferFn,
}

fn defer_one<T: Send + 'static>(how: How, value: T) {
    match how {
        How::Defer => defer(value),
        How::DeferWith => defer_with(value, drop),
        How::DeferFn => defer_fn(move || drop(value)),
    }
}

/// Which kind of section the items are deferred in.
#[derive(Clone, Copy)]
enum Within {
    Section,
    StdMutex,
    ParkingLot,
}

/// Defers `N` values inside one section of the given kind and closes it.
/// Returns the allocation calls made while deferring, and those made by
/// everything else in the round (taking and releasing the lock, draining).
fn round<T: Send + 'static>(within: Within, how: How, make: fn(usize) -> T) -> (usize, usize) {
    let m = freeq::Mutex::new(());
    let p = freeq::parking_lot::Mutex::new(());
    let before = calls();
    let mut deferring = 0;
    let mut defer_all = || {
        let start = calls();
        for i in 0..N {
            defer_one(how, make(i));
        }
        assert_eq!(pending(), N);
        deferring = calls() - start;
    };
    match within {
        Within::Section => {
            let _s = section();
            defer_all();
        }
        Within::StdMutex => {
            let _g = m.lock().unwrap();
            defer_all();
        }
        Within::ParkingLot => {
            let _g = p.lock();
            defer_all();
        }
    }
    assert_eq!(pending(), 0);
    let total = calls() - before;
    (deferring, total - deferring)
}

fn steady_state<T: Send + 'static>(make: fn(usize) -> T) {
    let _serial = serial();
    for within in [Within::Section, Within::StdMutex, Within::ParkingLot] {
        for how in [How::Defer, How::DeferWith, How::DeferFn] {
            // Warm up: the queue and its spare buffer both reach size.
            for _ in 0..4 {
                round(within, how, make);
            }
            let freed_before = freed();
            let (deferring, draining) = round(within, how, make);
            assert_eq!(
                deferring,
                0,
                "{} allocation(s) deferring {N} values of {} bytes",
                deferring,
                size_of::<T>()
            );
            assert_eq!(
                draining,
                0,
                "{} allocation(s) locking, unlocking and draining {N} values of {} bytes",
                draining,
                size_of::<T>()
            );
            assert_eq!(freed() - freed_before, N);
        }
    }
}

macro_rules! steady_tests {
    ($($test:ident: $ty:ident, $size:expr, $align:expr;)*) => {$(
        #[test]
        fn $test() {
            assert_eq!(size_of::<$ty>(), $size);
            assert_eq!(align_of::<$ty>(), $align);
            steady_state($ty::new);
        }
    )*};
}

steady_tests! {
    no_allocations_per_item_8_bytes: V8, 8, 8;
    no_allocations_per_item_24_bytes: V24, 24, 8;
    no_allocations_per_item_64_bytes: V64, 64, 8;
    no_allocations_per_item_128_bytes: V128, 128, 8;
    no_allocations_per_item_256_bytes: V256, 256, 8;
    no_allocations_per_item_16_bytes_align_16: A16x16, 16, 16;
    no_allocations_per_item_48_bytes_align_16: A16x48, 48, 16;
    no_allocations_per_item_128_bytes_align_16: A16x128, 128, 16;
    no_allocations_per_item_256_bytes_align_16: A16x256, 256, 16;
}

#[test]
fn no_allocations_for_zero_sized_items() {
    let _serial = serial();
    for _ in 0..4 {
        round(Within::Section, How::Defer, |_| ());
    }
    let (deferring, draining) = round(Within::Section, How::Defer, |_| ());
    assert_eq!((deferring, draining), (0, 0));
}

#[test]
fn mixed_sizes_in_one_queue_allocate_nothing_once_warm() {
    let _serial = serial();
    let run = || {
        let before = calls();
        let freed_before = freed();
        {
            let _s = section();
            for i in 0..N / 4 {
                defer(V8::new(i));
                defer(A16x48::new(i));
                defer(V256::new(i));
                defer(A16x256::new(i));
            }
        }
        assert_eq!(freed() - freed_before, N / 4 * 4);
        calls() - before
    };
    for _ in 0..4 {
        run();
    }
    assert_eq!(run(), 0);
}

#[test]
fn free_queue_reuses_its_buffer() {
    let _serial = serial();
    let mut q = FreeQueue::new();
    let run = |q: &mut FreeQueue| {
        let before = calls();
        for i in 0..N {
            q.push(V64::new(i));
            q.push_with(A16x48::new(i), drop);
        }
        q.drain();
        calls() - before
    };
    run(&mut q);
    assert_eq!(run(&mut q), 0);
    assert_eq!(run(&mut q), 0);
}

/// Retained memory after a spike is capped, by default and when set.
#[test]
fn a_spike_leaves_at_most_the_cap_behind() {
    let _serial = serial();
    let _restore = RestoreCap;
    // Past the largest cap below (64 KiB), even with 32 bytes an item.
    let spike = if cfg!(miri) { 3_000 } else { 20_000 };
    for cap in [4 * 1024, 16 * 1024, freeq::DEFAULT_MAX_RETAINED] {
        freeq::set_max_retained(cap);
        assert_eq!(freeq::max_retained(), cap);
        // Settle both buffers below the cap first.
        for _ in 0..4 {
            round(Within::Section, How::Defer, V24::new);
        }
        let base = live();
        let peak;
        {
            let _s = section();
            for i in 0..spike {
                defer(V24::new(i));
            }
            peak = live();
        }
        assert_eq!(pending(), 0);
        assert!(
            peak - base >= (spike * size_of::<V24>()) as isize,
            "the spike was measured: grew by {}",
            peak - base
        );
        let kept = live() - base;
        // Everything the thread's queue holds, together, is capped.
        assert!(
            kept <= cap as isize,
            "cap {cap}: {kept} bytes kept after a spike"
        );
        assert!(freeq::queue_bytes() <= cap);
    }
}

#[test]
fn a_zero_cap_keeps_nothing() {
    let _serial = serial();
    let _restore = RestoreCap;
    freeq::set_max_retained(0);
    // Let earlier buffers be released by a drain under the new cap.
    for _ in 0..4 {
        round(Within::Section, How::Defer, V24::new);
    }
    let base = live();
    {
        let _s = section();
        for i in 0..N {
            defer(V24::new(i));
        }
        assert!(live() > base, "the queue had to allocate");
    }
    assert!(live() <= base, "{} bytes kept", live() - base);
}

#[test]
fn a_long_loop_of_sections_does_not_grow_the_heap() {
    let _serial = serial();
    let rounds = if cfg!(miri) { 30 } else { 5_000 };
    let m = freeq::Mutex::new(0u64);
    let one = |r: usize| {
        let mut g = m.lock().unwrap();
        for k in 0..(r % 23) {
            *g += 1;
            defer(V128::new(k));
        }
        drop(g);
        assert_eq!(pending(), 0);
    };
    for r in 0..100 {
        one(r);
    }
    let base = live();
    let base_calls = calls();
    for r in 0..rounds {
        one(r);
        assert_eq!(live(), base, "round {r}: heap changed");
    }
    assert_eq!(calls(), base_calls, "no allocations at all once warm");
}

/// After a spike of a million items, everything the thread's queue holds
/// is within `max_retained()`.
#[test]
fn a_million_item_spike_is_capped() {
    let _serial = serial();
    let spike = if cfg!(miri) { 2_000 } else { 1_000_000 };
    {
        let _s = section();
        for i in 0..spike {
            defer(V8::new(i));
        }
        assert!(freeq::queue_bytes() >= spike * 16, "the spike was held");
    }
    assert_eq!(pending(), 0);
    let kept = freeq::queue_bytes();
    assert!(kept <= freeq::max_retained(), "{kept} bytes kept");
}

thread_local! {
    /// Set while this thread holds a `Recording` lock.
    static HELD: Cell<bool> = const { Cell::new(false) };
    /// Allocation calls made while `HELD`.
    static UNDER_LOCK: Cell<usize> = const { Cell::new(0) };
}

fn note_held() {
    if HELD.try_with(Cell::get).unwrap_or(false) {
        let _ = UNDER_LOCK.try_with(|c| c.set(c.get() + 1));
    }
}

/// parking_lot's raw mutex, recording on its thread while it is held.
struct Recording(parking_lot::RawMutex);

// SAFETY: (6) every operation delegates to parking_lot's raw mutex, which
// upholds lock_api's contract; the recording only sets a thread-local flag
// once the lock is held and clears it before the release.
unsafe impl lock_api::RawMutex for Recording {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Recording(<parking_lot::RawMutex as lock_api::RawMutex>::INIT);
    type Guard = <parking_lot::RawMutex as lock_api::RawMutex>::Guard;

    fn lock(&self) -> Self::Guard {
        let g = self.0.lock();
        HELD.with(|h| h.set(true));
        g
    }

    fn try_lock(&self) -> Option<Self::Guard> {
        let g = self.0.try_lock();
        if g.is_some() {
            HELD.with(|h| h.set(true));
        }
        g
    }

    unsafe fn unlock(&self, guard: Self::Guard) {
        HELD.with(|h| h.set(false));
        // SAFETY: (7) the caller's guarantee, passed on.
        unsafe { self.0.unlock(guard) }
    }

    fn is_locked(&self) -> bool {
        self.0.is_locked()
    }
}

type Deferred<T> = lock_api::Mutex<freeq::RawDeferred<Recording>, T>;

/// A fresh thread's first sections allocate nothing while the lock is
/// held, whether they defer or retire: `RawDeferred` over a recording raw
/// lock, and `freeq::Mutex` with the body marked by hand. `prepare_thread` is called before each lock
/// here; freeq's locks call it themselves.
#[test]
fn fresh_threads_allocate_nothing_under_the_lock() {
    let _serial = serial();
    let raw = std::sync::Arc::new(Deferred::new(0usize));
    let std_lock = std::sync::Arc::new(freeq::Mutex::new(0usize));
    let threads = if cfg!(miri) { 2 } else { 8 };
    for t in 0..threads {
        let raw = raw.clone();
        let std_lock = std_lock.clone();
        std::thread::spawn(move || {
            for section in 0..6 {
                freeq::prepare_thread();
                {
                    let mut g = raw.lock();
                    for i in 0..N / 4 {
                        *g += 1;
                        defer(V8::new(i));
                        defer(V24::new(i));
                        defer_fn(move || assert!(i < N));
                        // crossbeam-epoch is not Stacked Borrows clean.
                        if !cfg!(miri) {
                            freeq::retire(V24::new(i));
                        }
                    }
                }
                freeq::prepare_thread();
                {
                    let mut g = std_lock.lock().unwrap();
                    HELD.with(|h| h.set(true));
                    for i in 0..N / 4 {
                        *g += 1;
                        defer(V64::new(i));
                        defer_with(A16x48::new(i), drop);
                    }
                    HELD.with(|h| h.set(false));
                }
                assert_eq!(pending(), 0);
                let under = UNDER_LOCK.with(Cell::get);
                assert_eq!(
                    under, 0,
                    "thread {t}, section {section}: {under} allocations under the lock"
                );
            }
        })
        .join()
        .unwrap();
    }
}
