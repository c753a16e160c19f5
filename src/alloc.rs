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
use std::mem::{needs_drop, size_of};
use std::ptr::NonNull;

use crate::queue::section;

pub use crate::queue::held::RESERVE_SLOTS;

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
        if Self::STATELESS {
            // SAFETY: (7) `ptr` is a block this allocator (hence `A`)
            // allocated with `layout`, now freed by the caller;
            // `free_held` frees such a block, `A` being stateless, and so
            // does any function given with the type `A`.
            unsafe { section::hold_or_free::<A>(Self::free_held, ptr, layout) }
        } else {
            // SAFETY: (8) the caller's guarantees, passed on.
            unsafe { self.inner.dealloc(ptr, layout) }
        }
    }
}

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
    let (frees, bytes) = section::held_totals();
    Held { frees, bytes }
}
