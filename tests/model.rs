//! A model check of freeq's single-thread semantics.
//!
//! Random programs of lock / section / release / defer / flush operations run
//! against freeq and against a small reference model: a list of held guards
//! (the section depth is its length) and a FIFO queue of item ids. The model
//! frees items at once outside a section, queues them inside one, and frees
//! the whole queue in FIFO order at the release that leaves no guard held
//! (items deferred by a free join the back of the queue). A panicking free
//! still counts as freed; the release (or flush) that ran it panics with the
//! first such panic once the batch is done. After every operation the real
//! free log, `pending()`, `in_section()` and any panic must match the model.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Once, TryLockError};

use proptest::prelude::*;
use proptest::test_runner::Config;

use freeq::{defer, defer_fn, defer_with, flush, in_section, pending};

/// Number of std-backed and of parking_lot mutexes a program may lock.
const LOCKS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// `try_lock` of one of the std-backed `freeq::Mutex`es.
    LockStd(usize),
    /// `try_lock` of one of the `freeq::parking_lot::Mutex`es.
    LockPl(usize),
    /// A shared read of a `freeq::parking_lot::RwLock` (taken any number of
    /// times).
    ReadPl,
    /// A `freeq::parking_lot::ReentrantMutex` (taken any number of times).
    LockReentrant,
    /// A `freeq::section()`.
    OpenSection,
    /// Releases one held guard, chosen by index modulo the number held.
    Release(usize),
    Defer,
    DeferPanicking,
    DeferFn,
    DeferWith,
    /// A value whose free defers this many more values.
    DeferNested(u8),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..LOCKS).prop_map(Op::LockStd),
        2 => (0..LOCKS).prop_map(Op::LockPl),
        1 => Just(Op::ReadPl),
        1 => Just(Op::LockReentrant),
        2 => Just(Op::OpenSection),
        6 => any::<usize>().prop_map(Op::Release),
        3 => Just(Op::Defer),
        1 => Just(Op::DeferPanicking),
        1 => Just(Op::DeferFn),
        1 => Just(Op::DeferWith),
        1 => (1..=3u8).prop_map(Op::DeferNested),
        1 => Just(Op::Flush),
    ]
}

// ---------------------------------------------------------------------------
// The real side
// ---------------------------------------------------------------------------

/// Payload of the panics items raise on purpose.
#[derive(Debug, PartialEq)]
struct ItemPanic(u32);

fn quiet_item_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<ItemPanic>() {
                default(info);
            }
        }));
    });
}

thread_local! {
    /// What the real program freed: id, and whether it was inside a section.
    static FREED: RefCell<Vec<(u32, bool)>> = const { RefCell::new(Vec::new()) };
}

fn freed_now() -> Vec<(u32, bool)> {
    FREED.with(|f| f.borrow().clone())
}

/// An item's description, shared by the real values and the model.
#[derive(Clone, Copy, Debug)]
struct Item {
    id: u32,
    panics: bool,
    children: u8,
}

impl Item {
    fn children(self) -> impl Iterator<Item = Item> {
        (0..self.children).map(move |k| Item {
            id: self.id + 1 + u32::from(k),
            panics: false,
            children: 0,
        })
    }

    /// What freeing the item does, however it was deferred.
    fn free(self) {
        FREED.with(|f| f.borrow_mut().push((self.id, in_section())));
        for child in self.children() {
            defer(Tracked(child));
        }
        if self.panics {
            panic::panic_any(ItemPanic(self.id));
        }
    }
}

/// An item freed by its `Drop`.
struct Tracked(Item);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.free();
    }
}

/// An item freed by a `defer_with` function (it has no `Drop` of its own).
struct Plain(Item);

/// Anything held for its `Drop` (a guard or a section).
trait Held {}
impl<T> Held for T {}

struct Locks {
    std: [freeq::Mutex<()>; LOCKS],
    pl: [freeq::parking_lot::Mutex<()>; LOCKS],
    rw: freeq::parking_lot::RwLock<()>,
    re: freeq::parking_lot::ReentrantMutex<()>,
}

impl Locks {
    fn new() -> Self {
        Locks {
            std: std::array::from_fn(|_| freeq::Mutex::new(())),
            pl: std::array::from_fn(|_| freeq::parking_lot::Mutex::new(())),
            rw: freeq::parking_lot::RwLock::new(()),
            re: freeq::parking_lot::ReentrantMutex::new(()),
        }
    }
}

/// Runs `f`, returning the id of the `ItemPanic` it raised, if any.
fn catch(f: impl FnOnce()) -> Option<u32> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => None,
        Err(payload) => match payload.downcast::<ItemPanic>() {
            Ok(p) => Some(p.0),
            Err(other) => panic::resume_unwind(other),
        },
    }
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Res {
    Std(usize),
    Pl(usize),
    Read,
    Reentrant,
    Section,
}

#[derive(Default)]
struct Model {
    held: Vec<Res>,
    queue: VecDeque<Item>,
    freed: Vec<(u32, bool)>,
}

impl Model {
    fn depth(&self) -> usize {
        self.held.len()
    }

    /// Frees `item` at once, outside any section and any drain: its children
    /// are deferred outside a section too, so they are freed at once, before
    /// its own panic (if any) leaves `defer`.
    fn free_at_once(&mut self, item: Item) -> Option<u32> {
        self.freed.push((item.id, false));
        for child in item.children() {
            self.freed.push((child.id, false));
        }
        item.panics.then_some(item.id)
    }

    fn defer(&mut self, item: Item) -> Option<u32> {
        if self.depth() > 0 {
            self.queue.push_back(item);
            None
        } else {
            self.free_at_once(item)
        }
    }

    /// Frees the queue, oldest first, including what the frees defer.
    fn drain(&mut self) -> Option<u32> {
        let in_section = self.depth() > 0;
        let mut first = None;
        while let Some(item) = self.queue.pop_front() {
            self.freed.push((item.id, in_section));
            self.queue.extend(item.children());
            if item.panics && first.is_none() {
                first = Some(item.id);
            }
        }
        first
    }

    fn release(&mut self, index: usize) -> Option<u32> {
        self.held.remove(index);
        if self.held.is_empty() {
            self.drain()
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Running a program on both
// ---------------------------------------------------------------------------

fn run(program: &[Op]) -> Result<(), TestCaseError> {
    quiet_item_panics();
    FREED.with(|f| f.borrow_mut().clear());
    prop_assert!(!in_section());
    prop_assert_eq!(pending(), 0);

    let locks = Locks::new();
    let mut held: Vec<Box<dyn Held + '_>> = Vec::new();
    let mut model = Model::default();

    for (step, op) in program.iter().enumerate() {
        let id = 8 * step as u32;
        let item = |panics, children| Item {
            id,
            panics,
            children,
        };
        let (real, expected) = match *op {
            Op::LockStd(i) => {
                let mine = model.held.contains(&Res::Std(i));
                match locks.std[i].try_lock() {
                    Ok(g) => {
                        prop_assert!(!mine, "locked a mutex this thread holds");
                        held.push(Box::new(g));
                        model.held.push(Res::Std(i));
                    }
                    Err(TryLockError::WouldBlock) => prop_assert!(mine),
                    Err(TryLockError::Poisoned(_)) => {
                        prop_assert!(false, "a panicking free poisoned a lock")
                    }
                }
                (None, None)
            }
            Op::LockPl(i) => {
                let mine = model.held.contains(&Res::Pl(i));
                match locks.pl[i].try_lock() {
                    Some(g) => {
                        prop_assert!(!mine, "locked a mutex this thread holds");
                        held.push(Box::new(g));
                        model.held.push(Res::Pl(i));
                    }
                    None => prop_assert!(mine),
                }
                (None, None)
            }
            Op::ReadPl => {
                let g = locks.rw.try_read();
                prop_assert!(g.is_some());
                held.push(Box::new(g));
                model.held.push(Res::Read);
                (None, None)
            }
            Op::LockReentrant => {
                let g = locks.re.try_lock();
                prop_assert!(g.is_some());
                held.push(Box::new(g));
                model.held.push(Res::Reentrant);
                (None, None)
            }
            Op::OpenSection => {
                held.push(Box::new(freeq::section()));
                model.held.push(Res::Section);
                (None, None)
            }
            Op::Release(k) => {
                if held.is_empty() {
                    (None, None)
                } else {
                    let index = k % held.len();
                    let guard = held.remove(index);
                    (catch(move || drop(guard)), model.release(index))
                }
            }
            Op::Defer => {
                let it = item(false, 0);
                (catch(|| defer(Tracked(it))), model.defer(it))
            }
            Op::DeferPanicking => {
                let it = item(true, 0);
                (catch(|| defer(Tracked(it))), model.defer(it))
            }
            Op::DeferFn => {
                let it = item(false, 0);
                (catch(|| defer_fn(move || it.free())), model.defer(it))
            }
            Op::DeferWith => {
                let it = item(false, 0);
                let real = catch(|| defer_with(Plain(it), |p: Plain| p.0.free()));
                (real, model.defer(it))
            }
            Op::DeferNested(children) => {
                let it = item(false, children);
                (catch(|| defer(Tracked(it))), model.defer(it))
            }
            Op::Flush => (catch(flush), model.drain()),
        };

        prop_assert_eq!(real, expected, "panic after step {} ({:?})", step, op);
        prop_assert_eq!(
            &freed_now(),
            &model.freed,
            "free log after step {} ({:?})",
            step,
            op
        );
        prop_assert_eq!(pending(), model.queue.len(), "pending after step {}", step);
        prop_assert_eq!(
            in_section(),
            model.depth() > 0,
            "in_section after step {}",
            step
        );
        prop_assert_eq!(held.len(), model.depth());
    }

    // Release whatever is left, newest first.
    while let Some(guard) = held.pop() {
        let real = catch(move || drop(guard));
        let expected = model.release(model.held.len() - 1);
        prop_assert_eq!(real, expected);
    }
    prop_assert_eq!(&freed_now(), &model.freed);
    prop_assert!(model.queue.is_empty());
    prop_assert_eq!(pending(), 0);
    prop_assert!(!in_section());
    for m in &locks.std {
        prop_assert!(!m.is_poisoned());
    }
    Ok(())
}

fn config() -> Config {
    let mut config = Config::with_cases(if cfg!(miri) { 6 } else { 512 });
    if cfg!(miri) {
        // No file system under Miri's isolation.
        config.failure_persistence = None;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn freeq_matches_the_model(program in prop::collection::vec(op(), 0..48)) {
        run(&program)?;
    }
}

/// A fixed program touching every operation, so the comparison itself is
/// known to run (and runs under Miri even with few random cases).
#[test]
fn a_fixed_program_matches_the_model() {
    use Op::*;
    let program = [
        Defer,
        LockStd(0),
        Defer,
        LockPl(1),
        DeferNested(2),
        LockStd(0),
        DeferPanicking,
        OpenSection,
        DeferFn,
        Release(1),
        DeferWith,
        Flush,
        Defer,
        DeferPanicking,
        LockReentrant,
        LockReentrant,
        ReadPl,
        Release(0),
        Release(0),
        Release(0),
        Release(0),
        Release(0),
        DeferNested(3),
        DeferPanicking,
        Release(0),
        Flush,
    ];
    run(&program).unwrap();
    // Items 0, 8*2, ... were all freed exactly once.
    let freed = freed_now();
    let mut ids: Vec<u32> = freed.iter().map(|f| f.0).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an item was freed twice: {freed:?}");
    assert!(
        freed.iter().any(|&(_, inside)| inside),
        "flush freed inside"
    );
}
