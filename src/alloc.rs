//! Deferred frees at the allocator: every `free` made under a freeq lock
//! waits for the unlock, with no change at the drop sites.
//!
//! [`defer`](crate::defer) and [`Deferred`](crate::Deferred) move a value's
//! whole drop out of the critical section, but only where the code says so.
//! Code that simply writes `*guard = new_value`, `map.insert(k, v)` or
//! `vec.clear()` under a lock still frees under it, and so does every
//! library that drops values deep inside its own code. [`DeferFrees`], as
//! the global allocator, covers all of them at once: inside a section on
//! the calling thread, `dealloc` does not free; the block waits until the
//! outermost section closes, after the unlock, after the queue's own
//! items. The destructor's walk still runs under the lock; its `free()`
//! calls do not.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: freeq::alloc::DeferFrees<std::alloc::System> =
//!     freeq::alloc::DeferFrees::new(std::alloc::System);
//!
//! fn main() {
//!     let fresh = vec![String::from("a new record, on the heap"); 17];
//!     let cache = freeq::Mutex::new(vec![String::from("an old record, on the heap"); 17]);
//!     {
//!         let mut records = cache.lock().unwrap();
//!         *records = fresh; // drops 17 strings and a Vec's buffer...
//!         assert_eq!(freeq::alloc::held().frees, 18); // ...whose frees wait
//!     } // unlock, then the 18 blocks are freed
//!     assert_eq!(freeq::alloc::held().frees, 0);
//! }
//! ```
//!
//! It composes with any allocator: `DeferFrees<tikv_jemallocator::Jemalloc>`,
//! `DeferFrees<mimalloc::MiMalloc>`.
//!
//! # How it works, and its rules
//!
//! - **Nothing is allocated or registered on the deferral path.** A held
//!   free goes to a fixed per-thread array of [`RESERVE_SLOTS`] entries
//!   (address and layout), which touches nothing but the array. Past
//!   that, a block of at least two words carries its own link and layout
//!   (written unaligned: a block is only as aligned as its layout asks),
//!   as the kernel's `kmem_free_q` did; smaller blocks, which cannot, keep
//!   the array's slots for themselves, and once it holds only small
//!   blocks, they are freed at once. The per-thread state is a
//!   `const`-initialised thread-local without a destructor.
//! - **Where it cannot hold a free, it frees at once:** outside a section,
//!   where thread-local state is unavailable (late in thread teardown,
//!   after freeq's exit path ran), on a thread whose exit path freeq has
//!   not registered (every section readies its thread, so this is a
//!   safeguard: registering it may allocate), for a block of another inner
//!   allocator type while this thread holds blocks of a
//!   first one, and always with a stateful inner allocator (see
//!   [`DeferFrees`]).
//! - **`dealloc` never unwinds.** The deferral path has no panicking
//!   operation.
//! - **Held frees run on the thread that made them,** whatever its
//!   [`Policy`](crate::Policy): handing raw frees to another thread is what
//!   costs most with most allocators (glibc's arenas, mimalloc's remote
//!   frees).
//! - **They always run.** A guard dropped while unwinding closes its
//!   section as usual; a thread that exits with a leaked section frees what
//!   waits on its exit path; a forked child frees its copies when its
//!   section closes. [`flush`](crate::flush) inside a section frees them
//!   too.
//! - `alloc`, `alloc_zeroed` and `realloc` go to the inner allocator
//!   unchanged (calloc's and in-place growth's fast paths stay). A
//!   `realloc` that moves a block frees the old one inside the inner
//!   allocator, at once.
//! - [`Stats::deferred_frees`](crate::Stats::deferred_frees) counts the
//!   frees held and made later.
//!
//! # Memory
//!
//! Held blocks stay allocated until the outermost section closes, so the
//! frees of one long section accumulate: a section that drops a 1 GiB map
//! holds that gigabyte until it ends. freeq's retention cap
//! ([`set_max_retained`](crate::set_max_retained)) does not apply: holding
//! a block costs freeq no memory of its own beyond the fixed per-thread
//! array ([`RESERVE_SLOTS`] entries of two words: 4 KiB on 64-bit
//! targets, part of every thread's static thread-local block); past it,
//! the block carries its own link.
//! [`held`] reports what the calling thread holds; a long section can
//! release it with [`flush`](crate::flush).
//!
//! # When it pays
//!
//! The frees leave the critical section, but the thread still makes them:
//! the unlocking thread's own work per operation is unchanged or slightly
//! higher, while the lock's other waiters stop waiting for it. Under glibc,
//! frees made after the unlock may meet another thread's allocations in the
//! same arena, where under the lock that thread was blocked instead. It
//! pays when a lock is contended and its holders free what they replace;
//! it buys nothing for a lock nobody waits on.
//!
//! It pays most where `free` itself is costly under the lock. glibc's reads
//! the header beside each block, a cache miss on cold blocks: the held free
//! touches only the thread's array. jemalloc's touches no block and costs
//! about what holding it does, so there the hold barely shrinks; the
//! destructor's walk, which [`defer`](crate::defer) and
//! [`Deferred`](crate::Deferred) also move out, is then all of it.
//! `BENCHMARKS.md` in the repository has the figures per allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::any::TypeId;
use std::mem::{align_of, needs_drop, size_of};
use std::ptr::{self, NonNull};

use crate::queue::section;
use crate::sync::{Cell, freeq_thread_local};

/// How many frees a thread holds in its fixed array, without touching the
/// freed blocks. Past that, a block of at least two words carries its own
/// link (a write into the block, often a cache miss, made under the lock),
/// without limit; a smaller block takes the array slot of a larger one,
/// which moves to the list, and once the array holds only small blocks,
/// small blocks are freed at once. (8 under Miri, to reach the list in
/// tests.)
pub const RESERVE_SLOTS: usize = crate::sync::scaled(256, 8);

/// A global allocator that holds back every free made inside a freeq
/// section until the outermost section closes. See the [module
/// docs](self).
///
/// ```
/// #[global_allocator]
/// static ALLOC: freeq::alloc::DeferFrees<std::alloc::System> =
///     freeq::alloc::DeferFrees::new(std::alloc::System);
/// # fn main() {}
/// ```
///
/// Frees are held for inner allocators that are zero-sized types without
/// drop glue, as `System`, jemalloc's, mimalloc's and most global
/// allocators are: a held block is then freed through the type alone,
/// whatever becomes of this instance. With a stateful inner allocator
/// (one with fields) `dealloc` forwards at once, always; wrap the other
/// way round, `Stateful<DeferFrees<System>>`, to hold frees under it. The
/// inner allocator's type must be `'static`, as a global allocator's is.
#[derive(Debug, Default)]
pub struct DeferFrees<A> {
    inner: A,
}

impl<A> DeferFrees<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        DeferFrees { inner }
    }

    /// The inner allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: GlobalAlloc + 'static> DeferFrees<A> {
    /// An `A` can stand for any other: a zero-sized type without drop
    /// glue. Only then are frees held.
    const STATELESS: bool = size_of::<A>() == 0 && !needs_drop::<A>();

    /// Frees a held block through a stateless `A`.
    ///
    /// # Safety
    /// `ptr` and `layout` are a block an `A` allocated; `A` is
    /// [`STATELESS`](Self::STATELESS).
    unsafe fn free_held(ptr: *mut u8, layout: Layout) {
        // SAFETY: (1) `A` is zero-sized without drop glue: a dangling,
        // aligned pointer is a valid reference to one, and it holds no
        // state that the instance the block came from could have and this
        // one lack.
        let a: &A = unsafe { NonNull::<A>::dangling().as_ref() };
        // SAFETY: (2) the caller's guarantee.
        unsafe { a.dealloc(ptr, layout) }
    }
}

// SAFETY: (3) `alloc`, `alloc_zeroed` and `realloc` forward unchanged to
// `A`. A block passed to `dealloc` is either freed by `A` at once or held
// and freed by an `A` later with the same layout, exactly once, on this
// thread; until then no one else can reach it (it was freed). The
// deferral path never allocates, never unwinds, and touches only
// destructor-less thread-locals.
unsafe impl<A: GlobalAlloc + 'static> GlobalAlloc for DeferFrees<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: (4) the caller's guarantees, passed on.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: (5) as in (4).
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: (6) as in (4).
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::STATELESS && section::may_hold_frees() {
            // SAFETY: (7) `ptr` is a block this allocator (hence `A`)
            // allocated with `layout`, now freed by the caller;
            // `free_held` frees such a block, `A` being stateless, and so
            // does any function held with `A`'s `TypeId`.
            if unsafe { hold(TypeId::of::<A>(), Self::free_held, ptr, layout) } {
                return;
            }
        }
        // SAFETY: (8) the caller's guarantees, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}

/// What frees a held block.
type FreeFn = unsafe fn(*mut u8, Layout);

/// What the calling thread holds right now: frees waiting for its
/// outermost section to close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Held {
    /// Blocks waiting to be freed.
    pub frees: usize,
    /// Their bytes (the layouts' sizes).
    pub bytes: usize,
}

/// The frees the calling thread holds (see [`Held`]): all zero outside a
/// section, or when [`DeferFrees`] is not the global allocator.
///
/// ```
/// assert_eq!(freeq::alloc::held().frees, 0);
/// ```
pub fn held() -> Held {
    HELD.try_with(|h| Held {
        frees: h.frees.get(),
        bytes: h.bytes.get(),
    })
    .unwrap_or_default()
}

/// The header a held block of at least two words carries at its start.
#[derive(Clone, Copy)]
struct Link {
    next: *mut u8,
    /// The layout, packed by [`pack`].
    layout: usize,
}

/// Bits that hold the log2 of an alignment (below `usize::BITS`).
const ALIGN_BITS: u32 = usize::BITS.trailing_zeros();

/// `layout` in one word: its size above, its alignment's log2 below. None
/// for sizes too large to fit (at least 2^58 bytes on 64-bit targets,
/// 128 MiB on 32-bit ones).
#[inline(always)]
fn pack(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size >> (usize::BITS - ALIGN_BITS) != 0 {
        return None;
    }
    Some(size << ALIGN_BITS | layout.align().trailing_zeros() as usize)
}

#[inline(always)]
fn unpack(word: usize) -> Layout {
    let size = word >> ALIGN_BITS;
    let align = 1usize << (word & ((1 << ALIGN_BITS) - 1));
    // SAFETY: (9) `word` came from `pack` of a valid layout.
    unsafe { Layout::from_size_align_unchecked(size, align) }
}

/// One held block in the array: its address and packed layout.
type Slot = (*mut u8, usize);

/// The calling thread's held frees. All of its blocks belong to one
/// allocator type, `id`, freed through `free`.
struct HeldFrees {
    /// Blocks of at least two words, linked through their [`Link`]s.
    head: Cell<*mut u8>,
    /// Small blocks in `reserve[..small]`, larger ones in
    /// `reserve[large..]`.
    reserve: [Cell<Slot>; RESERVE_SLOTS],
    small: Cell<usize>,
    large: Cell<usize>,
    id: Cell<Option<TypeId>>,
    free: Cell<Option<FreeFn>>,
    frees: Cell<usize>,
    bytes: Cell<usize>,
}

freeq_thread_local! {
    static HELD: HeldFrees = HeldFrees {
        head: Cell::new(ptr::null_mut()),
        reserve: [const { Cell::new((ptr::null_mut(), 0)) }; RESERVE_SLOTS],
        small: Cell::new(0),
        large: Cell::new(RESERVE_SLOTS),
        id: Cell::new(None),
        free: Cell::new(None),
        frees: Cell::new(0),
        bytes: Cell::new(0),
    };
}

// No destructor: reaching it never registers one (which may allocate).
const _: () = assert!(!needs_drop::<HeldFrees>());

impl HeldFrees {
    /// Puts a block on the list.
    ///
    /// # Safety
    /// `block` is freed, unreachable by anyone else, and at least
    /// `size_of::<Link>()` bytes.
    #[inline(always)]
    unsafe fn link(&self, block: *mut u8, layout: usize) {
        let link = Link {
            next: self.head.get(),
            layout,
        };
        // SAFETY: (10) the caller's guarantee; the block may be less
        // aligned than `Link`, hence unaligned.
        unsafe { block.cast::<Link>().write_unaligned(link) };
        self.head.set(block);
    }
}

/// Holds the freed block `ptr` until the outermost section closes, if this
/// thread can; whether it did. Allocates nothing and cannot panic.
///
/// # Safety
/// `ptr` is a freed block of `layout`, owned by nobody now, that
/// `free(ptr, layout)` frees, and so does any `FreeFn` given with `id`.
#[inline]
unsafe fn hold(id: TypeId, free: FreeFn, ptr: *mut u8, layout: Layout) -> bool {
    let Some(word) = pack(layout) else {
        return false;
    };
    let held = HELD.try_with(|h| {
        if h.frees.get() == 0 {
            // The first: the queue is told (or says no).
            if !section::hold_frees_with(run_held) {
                return false;
            }
            h.id.set(Some(id));
            h.free.set(Some(free));
        } else if h.id.get() != Some(id) {
            // Another allocator's blocks are held here. (By type: one
            // function's address may differ from place to place.)
            return false;
        }
        let (small, large) = (h.small.get(), h.large.get());
        let is_small = layout.size() < size_of::<Link>();
        if small < large {
            // Room in the array. (Indexing is checked; `get` keeps panics
            // out of `dealloc`.)
            let (at, small, large) = if is_small {
                (small, small + 1, large)
            } else {
                (large - 1, small, large - 1)
            };
            let Some(slot) = h.reserve.get(at) else {
                return false;
            };
            slot.set((ptr, word));
            h.small.set(small);
            h.large.set(large);
        } else if !is_small {
            // SAFETY: (11) the block is at least two words, freed and
            // unreachable by anyone else.
            unsafe { h.link(ptr, word) };
        } else {
            // The first larger block in the array moves to the list.
            let Some(slot) = h.reserve.get(large) else {
                return false; // only small blocks: free at once
            };
            let (moved, moved_word) = slot.get();
            // SAFETY: (12) a larger block, freed and unreachable by anyone
            // else.
            unsafe { h.link(moved, moved_word) };
            slot.set((ptr, word));
            h.small.set(small + 1);
            h.large.set(large + 1);
        }
        h.frees.set(h.frees.get().wrapping_add(1));
        h.bytes.set(h.bytes.get().wrapping_add(layout.size()));
        true
    });
    matches!(held, Ok(true))
}

/// Frees everything this thread holds; how many blocks. Called by the
/// queue when the outermost section closes, by `flush`, and at thread
/// exit. Frees made meanwhile (by the inner
/// allocator, inside a flush) join the run.
fn run_held() -> usize {
    HELD.try_with(|h| {
        let Some(free) = h.free.get() else {
            return 0;
        };
        let mut n = 0;
        loop {
            let mut block = h.head.replace(ptr::null_mut());
            let had_list = !block.is_null();
            while !block.is_null() {
                // SAFETY: (13) every block on the list got its `Link` in
                // `hold` and has not been freed since.
                let link = unsafe { block.cast::<Link>().read_unaligned() };
                // SAFETY: (14) `hold`'s caller guaranteed that `free`
                // frees this block.
                unsafe { free(block, unpack(link.layout)) };
                n += 1;
                block = link.next;
            }
            let (small, large) = (h.small.get(), h.large.get());
            let (at, small, large) = if small > 0 {
                (small - 1, small - 1, large)
            } else if large < RESERVE_SLOTS {
                (large, small, large + 1)
            } else if had_list {
                continue;
            } else {
                break;
            };
            h.small.set(small);
            h.large.set(large);
            let (block, word) = h.reserve[at].get();
            // SAFETY: (15) as in (14).
            unsafe { free(block, unpack(word)) };
            n += 1;
        }
        h.frees.set(0);
        h.bytes.set(0);
        h.id.set(None);
        h.free.set(None);
        n
    })
    .unwrap_or(0)
}

/// Frees a thread held, taken off it to be freed elsewhere: an async
/// guard's bin carries the frees caught by its `with` past the release of
/// its lock, to whichever thread frees the bin. Each block is freed
/// exactly once, by [`TakenFrees::free_all`] or the drop.
pub(crate) struct TakenFrees {
    /// Blocks linked through their [`Link`]s, as `hold` left them.
    head: *mut u8,
    /// The array's blocks, copied out.
    slots: Box<[Slot]>,
    free: FreeFn,
}

// SAFETY: (16) every block reachable from a `TakenFrees` is freed memory
// that nobody else can reach; `free` is the `dealloc` of a stateless
// global allocator type (`DeferFrees::free_held`), and a global
// allocator's `dealloc` may be called from any thread for any block it
// allocated. Moving the lot to another thread moves addresses only.
unsafe impl Send for TakenFrees {}

impl TakenFrees {
    /// Frees every block; how many there were.
    pub(crate) fn free_all(mut self) -> usize {
        self.run()
    }

    fn run(&mut self) -> usize {
        let mut n = 0;
        let mut block = std::mem::replace(&mut self.head, ptr::null_mut());
        while !block.is_null() {
            // SAFETY: (17) a block on the list got its `Link` in `hold`
            // and has not been freed since: this list left the thread's
            // state when it was taken, and `head` was cleared above.
            let link = unsafe { block.cast::<Link>().read_unaligned() };
            // SAFETY: (18) `hold`'s caller guaranteed that `free` frees
            // this block.
            unsafe { (self.free)(block, unpack(link.layout)) };
            n += 1;
            block = link.next;
        }
        for &(block, word) in std::mem::take(&mut self.slots).iter() {
            // SAFETY: (19) as in (18); the slots were taken above, so each
            // is freed once.
            unsafe { (self.free)(block, unpack(word)) };
            n += 1;
        }
        crate::stats::count_late_frees(n);
        n
    }
}

impl Drop for TakenFrees {
    fn drop(&mut self) {
        self.run();
    }
}

/// Takes every free this thread holds off it (None if it holds none), to
/// be freed by whoever ends up with them; see [`TakenFrees`]. Allocates
/// one array for the blocks in the thread's fixed array, if any; frees
/// nothing.
pub(crate) fn take_held() -> Option<TakenFrees> {
    HELD.try_with(|h| {
        let free = h.free.get()?;
        if h.frees.get() == 0 {
            return None;
        }
        let (small, large) = (h.small.get(), h.large.get());
        // Allocates (the inner allocator; `hold` is not reached) with the
        // thread's state untouched, then empties it.
        let slots: Box<[Slot]> = h.reserve[..small]
            .iter()
            .chain(&h.reserve[large..])
            .map(Cell::get)
            .collect();
        let head = h.head.replace(ptr::null_mut());
        h.small.set(0);
        h.large.set(RESERVE_SLOTS);
        h.frees.set(0);
        h.bytes.set(0);
        h.id.set(None);
        h.free.set(None);
        Some(TakenFrees { head, slots, free })
    })
    .ok()
    .flatten()
}

// The header fits in the smallest block it is written to.
const _: () = assert!(size_of::<Link>() == 2 * size_of::<usize>());
const _: () = assert!(align_of::<Link>() <= 2 * size_of::<usize>());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_pack_and_unpack() {
        // Half the largest size that packs on this target (2^57 bytes on
        // 64-bit, 64 MiB on 32-bit), at a large alignment.
        let half = 1usize << (usize::BITS - ALIGN_BITS - 1);
        for (size, align) in [(1, 1), (16, 8), (17, 1), (4096, 4096), (half, 1 << 20)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            assert_eq!(unpack(pack(layout).unwrap()), layout);
        }
        let huge = Layout::from_size_align(usize::MAX >> 2, 1).unwrap();
        assert_eq!(pack(huge), None);
    }
}
