//! Under `Policy::Offload`, only batches worth moving leave the thread: the
//! rule judges a batch by the learned drop cost of its items, not by their
//! count. One test in this binary, so the process-wide statistics it reads
//! are its own.

use std::cell::Cell;
use std::thread;
use std::time::Duration;

use freeq::Policy;

thread_local! {
    static FREED_HERE: Cell<usize> = const { Cell::new(0) };
}

/// Cheap to drop; never deferred anywhere else, so its cost estimate is
/// freeq's default for types it has not timed yet.
struct Cheap(#[allow(dead_code)] u64);

impl Drop for Cheap {
    fn drop(&mut self) {
        let _ = FREED_HERE.try_with(|n| n.set(n.get() + 1));
    }
}

/// Takes about a millisecond to drop, far above the default threshold.
struct Heavy;

impl Drop for Heavy {
    fn drop(&mut self) {
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "starts freeq's process-lifetime reclaimer threads, which Miri reports as leaked: scripts/miri.sh runs this with -Zmiri-ignore-leaks"
)]
fn cheap_batches_stay_inline_and_a_heavy_value_makes_its_batch_leave() {
    assert_eq!(
        freeq::offload_threshold_ns(),
        freeq::DEFAULT_OFFLOAD_THRESHOLD_NS
    );
    freeq::set_policy(Policy::Offload);

    // Eight cheap values: estimated far below the threshold, freed here.
    let before = freeq::stats();
    {
        let _s = freeq::section();
        for i in 0..8 {
            freeq::defer(Cheap(i));
        }
    }
    assert_eq!(FREED_HERE.with(Cell::get), 8, "a cheap batch was moved");
    assert_eq!(freeq::stats().since(&before).offloaded, 0);

    // Heavy values are freed inline until a timed drain has learned their
    // cost (drains are timed on a random sample), then their batches leave.
    let mut learned = false;
    for _ in 0..400 {
        let before = freeq::stats();
        {
            let _s = freeq::section();
            freeq::defer(Heavy);
        }
        if freeq::stats().since(&before).offloaded == 1 {
            learned = true;
            break;
        }
    }
    assert!(learned, "a 1 ms drop was never judged worth offloading");

    // One heavy value among eight cheap ones: the whole batch of nine
    // leaves, whatever the count of cheap items.
    FREED_HERE.with(|n| n.set(0));
    let before = freeq::stats();
    {
        let _s = freeq::section();
        for i in 0..4 {
            freeq::defer(Cheap(i));
        }
        freeq::defer(Heavy);
        for i in 4..8 {
            freeq::defer(Cheap(i));
        }
    }
    assert_eq!(freeq::stats().since(&before).offloaded, 9);
    assert_eq!(FREED_HERE.with(Cell::get), 0, "the batch was freed here");

    // quiesce frees on this thread whatever no reclaimer has started on.
    freeq::quiesce();
    freeq::set_policy(Policy::Inline);

    // defer_heavy under Inline: the value leaves the thread on its own, and
    // the counts balance once it is freed (the action and the value).
    {
        let _s = freeq::section();
        freeq::defer_heavy(Heavy);
    }
    freeq::quiesce();
    let s = freeq::stats();
    assert_eq!(s.deferred, s.freed, "{s:?}");
}
