//! `freeq::alloc::DeferFrees` as the global allocator, over a counting
//! inner allocator: no inner `dealloc` runs while a section is open, all of
//! them run once the outermost section closes, and the deferral path
//! allocates nothing.
//!
//! Counts are per thread (`const` thread-locals without destructors), plus
//! one process-wide count of frees of "tracked" blocks (those aligned to
//! [`TRACK`]), for frees made on a thread's exit path. Tests run one at a
//! time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard as StdMutexGuard};
use std::thread;

use freeq::alloc::{DeferFrees, RESERVE_SLOTS, held};

/// Forwards to `System`, counting.
struct Counting;

thread_local! {
    /// `alloc`, `alloc_zeroed` and `realloc` calls on this thread.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    /// `alloc_zeroed` calls on this thread.
    static ZEROED: Cell<usize> = const { Cell::new(0) };
    /// `dealloc` calls on this thread.
    static FREES: Cell<usize> = const { Cell::new(0) };
    /// Blocks allocated and not yet freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// The alignment that marks a tracked block.
const TRACK: usize = 2048;

/// Frees of tracked blocks, on any thread.
static TRACKED_FREES: AtomicUsize = AtomicUsize::new(0);

fn bump(cell: &'static std::thread::LocalKey<Cell<usize>>) {
    let _ = cell.try_with(|c| c.set(c.get() + 1));
}

fn live(d: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + d));
}

// SAFETY: (1) every call is forwarded unchanged to `System`; the counting
// touches only `const` thread-locals without destructors and an atomic,
// which never allocate or unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        live(1);
        // SAFETY: (2) forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS);
        bump(&ZEROED);
        live(1);
        // SAFETY: (3) as in (2).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&ALLOCS);
        // SAFETY: (4) as in (2).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES);
        live(-1);
        if layout.align() == TRACK {
            TRACKED_FREES.fetch_add(1, SeqCst);
        }
        // SAFETY: (5) as in (2).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: DeferFrees<Counting> = DeferFrees::new(Counting);

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

fn frees() -> usize {
    FREES.with(Cell::get)
}

fn live_blocks() -> isize {
    LIVE.with(Cell::get)
}

/// One test at a time: the tracked count is process-wide.
fn serial() -> StdMutexGuard<'static, ()> {
    static LOCK: StdMutex<()> = StdMutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Scales counts down under Miri.
const fn scaled(normal: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { normal }
}

/// A block from the global allocator, written through, with its layout.
struct Block(*mut u8, Layout);

impl Block {
    fn new(size: usize, align: usize) -> Block {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: (6) `layout` has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: (7) `p` is valid for `size` bytes.
        unsafe { p.write_bytes(0xA5, size) };
        Block(p, layout)
    }

    fn tracked(size: usize) -> Block {
        Block::new(size, TRACK)
    }
}

// SAFETY: (8a) a `Block` owns its memory alone.
unsafe impl Send for Block {}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: (8) allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.0, self.1) }
    }
}

fn strings(n: usize, s: &str) -> Vec<String> {
    (0..n).map(|i| format!("{s}-{i:04}-padding")).collect()
}

#[test]
fn frees_under_a_lock_wait_for_the_unlock() {
    let _s = serial();
    let m = freeq::Mutex::new(strings(17, "old"));
    let map = freeq::Mutex::new(std::collections::HashMap::new());
    map.lock()
        .unwrap()
        .insert(1u64, String::from("old value, heap"));
    let fresh = strings(17, "new");
    let replacement = String::from("new value, heap");
    let at_lock;
    {
        let mut g = m.lock().unwrap();
        let mut mg = map.lock().unwrap();
        at_lock = frees();
        *g = fresh; // 17 strings and the Vec's buffer
        mg.insert(1, replacement); // the old value
        g.clear(); // 17 more strings
        assert_eq!(frees(), at_lock, "an inner dealloc ran under the lock");
        assert_eq!(held().frees, 36);
        drop(mg);
        assert_eq!(frees(), at_lock, "the inner section closed, not the outer");
    }
    assert_eq!(frees() - at_lock, 36);
    assert_eq!(held().frees, 0);
}

#[test]
fn outside_a_section_frees_at_once() {
    let _s = serial();
    let b = Box::new([7u64; 4]);
    let before = frees();
    drop(b);
    assert_eq!(frees(), before + 1);
    // A plain std lock is no section.
    let m = StdMutex::new(strings(4, "x"));
    let before = frees();
    m.lock().unwrap().clear();
    assert_eq!(frees(), before + 4);
}

#[test]
fn nested_sections_hold_until_the_outermost_closes() {
    let _s = serial();
    let outer = freeq::Mutex::new(());
    let inner = freeq::parking_lot::Mutex::new(strings(5, "inner"));
    let g = outer.lock().unwrap();
    let at_lock = frees();
    {
        let _sec = freeq::section();
        inner.lock().clear();
    }
    assert_eq!(frees(), at_lock);
    drop(Box::new(1u32));
    assert_eq!(held().frees, 6);
    drop(g);
    assert_eq!(frees(), at_lock + 6);
}

#[test]
fn small_blocks_fill_the_reserve_then_free_at_once() {
    let _s = serial();
    let extra = 10;
    let bytes: Vec<Box<u8>> = (0..RESERVE_SLOTS + extra)
        .map(|i| Box::new(i as u8))
        .collect();
    let mut bytes = bytes;
    let one = String::from("a");
    let larger = String::from("a larger block, two words at least");
    let m = freeq::Mutex::new(());
    let g = m.lock().unwrap();
    let at_lock = frees();
    drop(larger); // in the array
    drop(one);
    assert_eq!(frees(), at_lock, "a 1-byte block is held");
    for b in bytes.drain(..) {
        drop(b);
    }
    // The larger block gave its slot to a small one and went to the list.
    assert_eq!(frees() - at_lock, extra + 1, "past the array: at once");
    assert_eq!(held().frees, RESERVE_SLOTS + 1);
    drop(g);
    assert_eq!(frees() - at_lock, RESERVE_SLOTS + extra + 2);
}

#[test]
fn over_aligned_and_odd_layouts_are_freed_with_their_layout() {
    let _s = serial();
    // Miri checks that each block is freed with the layout it was
    // allocated with; the contents check that no header overlapped a
    // neighbour.
    let layouts = [
        (1, 1),
        (1, 64),
        (8, 64),
        (15, 1),
        (16, 1),
        (17, 1),
        (24, 4096),
        (33, 2),
        (4097, 4096),
        (100, 64),
    ];
    let keep: Vec<Block> = layouts.iter().map(|&(s, a)| Block::new(s, a)).collect();
    let blocks: Vec<Block> = layouts.iter().map(|&(s, a)| Block::new(s, a)).collect();
    let m = freeq::Mutex::new(());
    let g = m.lock().unwrap();
    let at_lock = frees();
    let mut blocks = blocks;
    while let Some(b) = blocks.pop() {
        drop(b);
    }
    assert_eq!(frees(), at_lock);
    assert_eq!(held().frees, layouts.len());
    drop(g);
    assert_eq!(frees() - at_lock, layouts.len());
    for b in &keep {
        // SAFETY: (9) each block is live and `size` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(b.0, b.1.size()) };
        assert!(bytes.iter().all(|&x| x == 0xA5));
    }
}

#[test]
fn a_leaked_guard_is_freed_at_thread_exit() {
    let _s = serial();
    let n = scaled(100, 10);
    let before = TRACKED_FREES.load(SeqCst);
    let stats = freeq::stats();
    thread::spawn(move || {
        let blocks: Vec<Block> = (0..n).map(|i| Block::tracked(16 + i % 40)).collect();
        static M: freeq::Mutex<()> = freeq::Mutex::new(());
        std::mem::forget(M.lock().unwrap());
        drop(blocks);
        assert_eq!(TRACKED_FREES.load(SeqCst), before, "freed in the section");
    })
    .join()
    .unwrap();
    assert_eq!(TRACKED_FREES.load(SeqCst) - before, n);
    assert!(freeq::stats().since(&stats).deferred_frees >= n as u64);
}

/// A value with a destructor that runs after (or before) freeq's own
/// exit path, taking a freeq lock and freeing tracked blocks.
struct LateFree(Cell<Vec<Block>>);

impl Drop for LateFree {
    fn drop(&mut self) {
        static M: freeq::Mutex<()> = freeq::Mutex::new(());
        let _g = M.lock().unwrap();
        drop(self.0.take());
    }
}

thread_local! {
    static LATE: LateFree = const { LateFree(Cell::new(Vec::new())) };
}

#[test]
fn frees_in_thread_local_destructors_are_never_lost() {
    let _s = serial();
    let n = scaled(20, 4);
    for late_first in [true, false] {
        let before = TRACKED_FREES.load(SeqCst);
        thread::spawn(move || {
            let blocks: Vec<Block> = (0..n).map(|_| Block::tracked(32)).collect();
            let touch_freeq = || drop(freeq::Mutex::new(()).lock().unwrap());
            // Destructors run in reverse order of registration, so this
            // decides whether freeq's state is gone when `LATE` runs.
            if late_first {
                LATE.with(|l| l.0.set(blocks));
                touch_freeq();
            } else {
                touch_freeq();
                LATE.with(|l| l.0.set(blocks));
            }
        })
        .join()
        .unwrap();
        assert_eq!(
            TRACKED_FREES.load(SeqCst) - before,
            n,
            "late_first {late_first}"
        );
    }
}

#[test]
fn a_panic_unwinding_through_a_section_still_frees() {
    let _s = serial();
    let m = freeq::Mutex::new(strings(8, "v"));
    let on_stack = strings(3, "w");
    let at_lock = Cell::new(0);
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut g = m.lock().unwrap();
        let _unwound = on_stack; // dropped while unwinding, in the section
        at_lock.set(frees());
        g.clear();
        assert_eq!(frees(), at_lock.get());
        panic!("boom");
    }));
    assert!(r.is_err());
    assert_eq!(held().frees, 0);
    // The 8 + 3 strings and the Vec of 3; the panic's own allocations
    // may add frees, never remove them.
    assert!(frees() - at_lock.get() >= 12);
    assert!(!freeq::in_section());
}

/// A linked node whose destructor takes a freeq lock and allocates and
/// frees under it.
struct Node {
    next: Option<Box<Node>>,
    registry: Arc<freeq::Mutex<Vec<String>>>,
    #[allow(dead_code)]
    payload: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut g = self.registry.lock().unwrap();
        g.clear();
        g.push(String::from("replaced by a destructor"));
    }
}

fn chain(n: usize, registry: &Arc<freeq::Mutex<Vec<String>>>) -> Option<Box<Node>> {
    let mut head = None;
    for i in 0..n {
        head = Some(Box::new(Node {
            next: head,
            registry: registry.clone(),
            payload: format!("node {i:012}"), // two words at least
        }));
    }
    head
}

/// Drops a long chain iteratively (a `Box` chain's own drop recurses).
fn drop_chain(mut head: Option<Box<Node>>) {
    while let Some(mut node) = head {
        head = node.next.take();
    }
}

#[test]
fn a_destructor_chain_that_locks_and_frees_again() {
    let _s = serial();
    let n = scaled(2000, 20);
    let registry = Arc::new(freeq::Mutex::new(vec![String::from("seed")]));
    let m = freeq::Mutex::new(None::<Box<Node>>);
    {
        // The thread's queue is set up and its stats slot registered.
        let _g = m.lock().unwrap();
        drop(String::from("a warm-up free, held"));
    }
    // Dropped under a lock: every free waits for the outer unlock.
    let base = live_blocks();
    let built = chain(n, &registry);
    {
        let mut g = m.lock().unwrap();
        let at_lock = frees();
        *g = built;
        let head = g.take();
        drop_chain(head);
        assert_eq!(frees(), at_lock, "an inner dealloc ran under the lock");
        assert!(held().frees >= 3 * n);
    }
    assert_eq!(held().frees, 0);
    assert_eq!(live_blocks(), base, "every block the chain held is freed");
    // Deferred as a whole: the destructors run at the drain, each locking
    // (a section inside the drain) and freeing.
    struct Chain(Option<Box<Node>>);
    impl Drop for Chain {
        fn drop(&mut self) {
            drop_chain(self.0.take());
        }
    }
    // The drain's sections may give the thread's queue a block to keep:
    // the second round is measured against the first.
    let mut after_first = 0;
    for round in 0..2 {
        let built = chain(n, &registry);
        {
            let _g = m.lock().unwrap();
            let at_lock = frees();
            freeq::defer(Chain(built));
            assert_eq!(frees(), at_lock);
        }
        assert_eq!(held().frees, 0);
        if round == 0 {
            after_first = live_blocks();
        }
    }
    assert_eq!(live_blocks(), after_first);
}

#[test]
fn no_allocation_on_the_deferral_path() {
    let _s = serial();
    fn section_without_allocation() {
        let mut values: Vec<Box<dyn Send>> = Vec::with_capacity(300);
        for i in 0..300usize {
            match i % 4 {
                0 => values.push(Box::new(Box::new(i as u8))),
                1 => values.push(Box::new(strings(3, "s"))),
                2 => values.push(Box::new(Block::new(8 + i, 64))),
                _ => values.push(Box::new(vec![0u8; 4096])),
            }
        }
        let tiny = Box::new([0u8; 3]);
        let m = freeq::Mutex::new(());
        let g = m.lock().unwrap();
        let at_lock = allocs();
        values.clear();
        drop(tiny);
        let after = allocs();
        drop(g);
        assert_eq!(after, at_lock, "the deferral path allocated");
    }
    section_without_allocation();
    // A fresh thread's first section.
    thread::spawn(section_without_allocation).join().unwrap();
}

#[test]
fn alloc_zeroed_and_realloc_keep_their_fast_paths() {
    let _s = serial();
    let m = freeq::Mutex::new(Vec::<u8>::new());
    let mut g = m.lock().unwrap();
    let zeroed = ZEROED.with(Cell::get);
    let z = vec![0u8; 1 << 12];
    assert_eq!(ZEROED.with(Cell::get), zeroed + 1, "calloc's path");
    let at_lock = frees();
    for i in 0..10_000u32 {
        g.push(i as u8); // grows by realloc
    }
    assert_eq!(frees(), at_lock, "realloc is not a dealloc here");
    drop(z);
    drop(g);
}

#[test]
fn flush_frees_what_a_section_holds() {
    let _s = serial();
    let m = freeq::Mutex::new(strings(10, "f"));
    let mut g = m.lock().unwrap();
    let at_lock = frees();
    g.clear();
    assert_eq!(frees(), at_lock);
    freeq::flush();
    assert_eq!(frees(), at_lock + 10);
    assert_eq!(held().frees, 0);
    g.push(String::from("after the flush"));
    g.clear();
    assert_eq!(held().frees, 1);
    drop(g);
    assert_eq!(held().frees, 0);
}

#[test]
fn stats_count_deferred_frees() {
    let _s = serial();
    let m = freeq::Mutex::new(strings(9, "c"));
    let before = freeq::stats();
    m.lock().unwrap().clear();
    assert!(freeq::stats().since(&before).deferred_frees >= 9);
}

#[test]
#[cfg_attr(miri, ignore = "starts reclaimer threads, which Miri calls leaked")]
fn held_frees_run_on_their_own_thread_under_offload() {
    let _s = serial();
    freeq::set_offload_threshold_ns(0);
    freeq::set_policy(freeq::Policy::Offload);
    let m = freeq::Mutex::new(strings(20, "o"));
    let at_lock;
    {
        let mut g = m.lock().unwrap();
        at_lock = frees();
        g.clear();
        freeq::defer(strings(5, "d")); // a queue item: may leave the thread
    }
    assert!(frees() - at_lock >= 20, "held frees ran on this thread");
    freeq::set_policy(freeq::Policy::Inline);
    freeq::quiesce();
    freeq::set_offload_threshold_ns(freeq::DEFAULT_OFFLOAD_THRESHOLD_NS);
}

/// Frees made by [`Other`].
static OTHER_FREES: AtomicUsize = AtomicUsize::new(0);

/// Another zero-sized allocator, counting its frees.
struct Other;

// SAFETY: (10) as in (1).
unsafe impl GlobalAlloc for Other {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: (11) as in (2).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        OTHER_FREES.fetch_add(1, SeqCst);
        // SAFETY: (12) as in (2).
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// A stateful allocator (it has a field), counting its frees.
struct Stateful(AtomicUsize);

// SAFETY: (12a) as in (1).
unsafe impl GlobalAlloc for Stateful {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: (12b) as in (2).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0.fetch_add(1, SeqCst);
        // SAFETY: (12c) as in (2).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[test]
fn instances_used_directly() {
    let _s = serial();
    let other = DeferFrees::new(Other);
    let layout = Layout::from_size_align(48, 8).unwrap();
    let before = OTHER_FREES.load(SeqCst);
    // SAFETY: (13) non-zero size; each block is freed once, by `other`.
    let (p, q) = unsafe { (other.alloc(layout), other.alloc(layout)) };
    {
        let _sec = freeq::section();
        drop(Box::new([1u64; 4])); // the global allocator holds this one
        // SAFETY: (14) as in (13).
        unsafe { other.dealloc(p, layout) };
        assert_eq!(
            OTHER_FREES.load(SeqCst),
            before + 1,
            "another type's: at once"
        );
    }
    {
        let _sec = freeq::section();
        // SAFETY: (15) as in (13).
        unsafe { other.dealloc(q, layout) };
        #[allow(clippy::drop_non_drop)]
        drop(other); // the held block needs no instance
        assert_eq!(OTHER_FREES.load(SeqCst), before + 1, "held");
        assert_eq!(held().frees, 1);
    }
    assert_eq!(OTHER_FREES.load(SeqCst), before + 2);
    // A stateful inner allocator frees at once.
    let stateful = DeferFrees::new(Stateful(AtomicUsize::new(0)));
    // SAFETY: (15a) as in (13).
    let p = unsafe { stateful.alloc(layout) };
    let _sec = freeq::section();
    // SAFETY: (15b) as in (13).
    unsafe { stateful.dealloc(p, layout) };
    assert_eq!(stateful.inner().0.load(SeqCst), 1);
}

#[test]
#[cfg(all(target_os = "linux", not(miri)))]
fn a_forked_child_frees_what_it_holds() {
    let _s = serial();
    let m = freeq::Mutex::new(strings(6, "fork"));
    let mut g = m.lock().unwrap();
    let at_lock = frees();
    g.clear();
    assert_eq!(held().frees, 6);
    // SAFETY: (16) the child runs only this thread's code and leaves with
    // `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = panic::catch_unwind(AssertUnwindSafe(|| {
            drop(g);
            held().frees == 0 && frees() == at_lock + 6
        }));
        // SAFETY: (17) ends the child without running exit handlers.
        unsafe { libc::_exit(if matches!(ok, Ok(true)) { 0 } else { 1 }) };
    }
    drop(g);
    assert_eq!(frees(), at_lock + 6);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut status = 0;
    loop {
        // SAFETY: (18) `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "waitpid failed");
        if std::time::Instant::now() > deadline {
            // SAFETY: (19) `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung");
        }
        thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}
