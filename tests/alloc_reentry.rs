//! A global allocator that itself uses freeq: every allocation and free it
//! serves (while armed, on the arming thread) opens a freeq section and
//! defers a value. freeq must never hold a reference to a queue across a
//! call into the allocator (Miri checks the aliasing), lose an item, or run
//! one twice.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

struct Reentering;

thread_local! {
    /// Re-entries the allocator may still make on this thread. A budget,
    /// because a drain frees memory and every free re-enters: unbounded,
    /// that would be an endless chain of frees that defer more.
    static ARMED: Cell<usize> = const { Cell::new(0) };
    /// Inside the allocator's own use of freeq (which may allocate).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Values the allocator deferred, and how many of them were dropped.
static MADE: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Counted;

impl Drop for Counted {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, SeqCst);
    }
}

fn reenter() {
    let armed = ARMED.try_with(Cell::get).unwrap_or(0);
    if armed > 0 && !INSIDE.with(|i| i.replace(true)) {
        ARMED.with(|a| a.set(armed - 1));
        {
            let _s = freeq::section();
            MADE.fetch_add(1, SeqCst);
            freeq::defer(Counted);
        }
        INSIDE.with(|i| i.set(false));
    }
}

// SAFETY: (1) allocation is forwarded unchanged to `System`; the freeq use
// around it only touches `const` thread-locals without destructors and
// freeq's own state, and it never unwinds (`Counted` does not panic).
unsafe impl GlobalAlloc for Reentering {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        reenter();
        // SAFETY: (2) forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: (3) as in (2).
        unsafe { System.dealloc(ptr, layout) };
        reenter();
    }
}

#[global_allocator]
static GLOBAL: Reentering = Reentering;

/// Each value frees a boxed value when dropped (a free, in the allocator).
struct Owns(#[allow(dead_code)] Box<[u64; 4]>);

const ITEMS: usize = if cfg!(miri) { 200 } else { 20_000 };
const BUDGET: usize = ITEMS;

#[test]
fn an_allocator_that_uses_freeq_loses_nothing() {
    let freed = std::sync::Arc::new(AtomicUsize::new(0));
    let before = DROPPED.load(SeqCst);
    ARMED.with(|a| a.set(BUDGET));
    // Inside a section: the queue grows block by block, each block from
    // the allocator, which defers into the same queue.
    {
        freeq::prepare_thread();
        let _s = freeq::section();
        for i in 0..ITEMS {
            let f = freed.clone();
            freeq::defer_fn(move || {
                f.fetch_add(1, SeqCst);
            });
            if i % 8 == 0 {
                freeq::defer(Owns(Box::new([i as u64; 4])));
            }
        }
    }
    assert_eq!(freeq::pending(), 0);
    // Outside a section: every defer frees at once, and the allocator's
    // frees re-enter from inside that drain.
    for i in 0..ITEMS / 10 {
        freeq::defer(Owns(Box::new([i as u64; 4])));
    }
    // An explicit queue and retention trimming: frees of blocks re-enter.
    freeq::set_max_retained(0);
    ARMED.with(|a| a.set(BUDGET));
    {
        let _s = freeq::section();
        for _ in 0..ITEMS / 10 {
            freeq::defer(Counted);
            MADE.fetch_add(1, SeqCst);
        }
    }
    freeq::set_max_retained(freeq::DEFAULT_MAX_RETAINED);
    ARMED.with(|a| a.set(0));
    assert_eq!(freeq::pending(), 0);
    assert_eq!(freed.load(SeqCst), ITEMS);
    assert!(MADE.load(SeqCst) > ITEMS / 10, "the allocator re-entered");
    assert_eq!(DROPPED.load(SeqCst) - before, MADE.load(SeqCst));
}
