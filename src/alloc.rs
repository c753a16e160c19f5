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
//! # A section around a library you don't own
//!
//! Many crates free memory while their own locks are held: a concurrent
//! map's `retain` or `clear` erases entries under its shard lock, a cache's
//! `put` drops the evicted entry inside the crate, a table that grows frees
//! its old allocation under the write lock. No `defer` reaches those drop
//! sites. With `DeferFrees` installed, wrap the call in a section,
//! [`frees_after`] (or a [`section`](crate::section) kept around it): the
//! crate locks, frees, and unlocks inside the call, and the section closes
//! after the call returns, so after the crate's own unlock. Every `free()`
//! the call made on this thread runs then, with no patch to the crate.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: freeq::alloc::DeferFrees<std::alloc::System> =
//!     freeq::alloc::DeferFrees::new(std::alloc::System);
//!
//! /// Stands in for a crate you do not own: it locks inside its methods
//! /// and drops values while the lock is held.
//! mod registry {
//!     use std::collections::HashMap;
//!     use std::sync::Mutex;
//!
//!     #[derive(Default)]
//!     pub struct Registry(Mutex<HashMap<u64, String>>);
//!
//!     impl Registry {
//!         pub fn insert(&self, key: u64, value: String) {
//!             self.0.lock().unwrap().insert(key, value);
//!         }
//!
//!         /// Keeps the even keys; the rest are dropped under the lock.
//!         pub fn retain_even(&self) -> usize {
//!             let mut map = self.0.lock().unwrap();
//!             map.retain(|key, _| key % 2 == 0);
//!             map.len()
//!         }
//!     }
//! }
//!
//! fn main() {
//!     let registry = registry::Registry::default();
//!     for key in 0..100 {
//!         registry.insert(key, format!("value number {key}, on the heap"));
//!     }
//!     let left = freeq::alloc::frees_after(|| {
//!         let left = registry.retain_even(); // locks, drops 50 strings, unlocks
//!         assert_eq!(freeq::alloc::held().frees, 50); // their frees wait...
//!         left
//!     }); // ...until here, after the registry's unlock
//!     assert_eq!(left, 50);
//!     assert_eq!(freeq::alloc::held().frees, 0);
//! }
//! ```
//!
//! What moves, and what does not:
//!
//! - **Moves:** every `dealloc` the call makes on the calling thread,
//!   wherever in the crate it happens: dropped values, replaced values,
//!   evicted entries, a table's old allocation after it grows. They run
//!   when the section closes, after the crate released its lock, on this
//!   thread. (If the caller is already inside a section, a freeq lock's,
//!   they wait for that one to close.)
//! - **Does not move:** the destructor's walk (reading each dropped value
//!   to find what it owns: every string's pointer, a map's buckets) still
//!   runs under the crate's lock, and so does everything a destructor does
//!   besides freeing memory: closing a file or a socket, joining a thread,
//!   sending on a channel. Frees the crate makes on its own threads (a
//!   background housekeeper) are outside your section, and a `realloc`
//!   that moves a block frees the old one inside the allocator, at once.
//! - **Held until the section ends.** The blocks the call frees stay
//!   allocated until it returns, so its memory peaks higher: a `clear()`
//!   of a map of 1 GiB holds that gigabyte until the call returns, and a
//!   call that frees and allocates in turn (replacing values one by one)
//!   cannot reuse what it freed earlier in the same call. Where the crate
//!   takes no lock at all, or nobody waits on it, that is all the section
//!   buys: the same frees, later, and a higher peak.
//! - **When the array fills.** A thread holds [`RESERVE_SLOTS`] frees in
//!   its fixed array (256, part of its thread-local block). Past that, a
//!   block of at least two words is still held, linked through its own
//!   first bytes (a write into the freed block, often a cache miss, made
//!   under the crate's lock), without limit; a smaller block (under 16
//!   bytes on 64-bit targets) takes the array slot of a larger one, which
//!   moves to the list, and once the array holds only such small blocks,
//!   further small blocks are freed at once, under the crate's lock.
//!   Nothing is ever allocated to hold a free, and nothing is lost.
//!
//! **When to swap the crate's lock type instead.** Where the crate names
//! its lock through `lock_api` aliases (dashmap's `src/lock.rs`, a
//! re-exported `parking_lot::RwLock`), making the alias
//! `lock_api::RwLock<freeq::RawDeferred<parking_lot::RawRwLock>, T>` (a
//! one-line patch) turns every one of the crate's critical sections into a
//! freeq section. Then the frees are held for each critical section only,
//! and freed at each of its unlocks, not at the end of your whole call;
//! and values the crate drops under its lock may be stored as
//! [`Deferred<V>`](crate::Deferred), whose whole drop (the walk, file
//! handles included) then waits for the unlock too. Swap the lock when
//! you can patch the crate, the walk or non-memory resources are what
//! costs, or one call spans many critical sections; wrap the call when you
//! cannot patch it and what costs under its lock is `free()` itself (glibc
//! with cold blocks, large blocks that reach `munmap`).
//!
//! # How it works, and its rules
//!
//! - **A held free is one thread-local access and a store.** The array
//!   of [`RESERVE_SLOTS`] held frees lives in the thread's freeq state,
//!   beside its section depth, a `const`-initialised thread-local without
//!   a destructor. `dealloc` reads the depth, checks that the thread is
//!   armed for this allocator type and that the array has room, and
//!   stores the block's address, size and alignment: no call, no stack
//!   frame. Everything else (the first held free of a thread or of another
//!   allocator type, a full array) is an out-of-line cold path.
//! - **Nothing is allocated or registered on the deferral path.** The
//!   array touches nothing but itself. Past it, a block of at least two
//!   words carries its own link and layout (written unaligned: a block is
//!   only as aligned as its layout asks), as the kernel's `kmem_free_q`
//!   did; smaller blocks, which cannot, keep the array's slots for
//!   themselves, and once it holds only small blocks, they are freed at
//!   once.
//! - **Where it cannot hold a free, it frees at once:** outside a section,
//!   where thread-local state is unavailable (late in thread teardown,
//!   after freeq's exit path ran), on a thread whose exit path freeq has
//!   not registered (every section readies its thread, so this is a
//!   safeguard: registering it may allocate), for a block of another inner
//!   allocator type while this thread holds blocks of a first one, for a
//!   block whose layout does not fit a link once the array is full (128
//!   MiB or more on 32-bit targets), and always with a stateful inner
//!   allocator (see [`DeferFrees`]).
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
//! array ([`RESERVE_SLOTS`] entries of two words and a byte: 4.25 KiB on
//! 64-bit targets, part of every thread's static thread-local block);
//! past it, the block carries its own link.
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

use crate::lock::guard::section as open_section;
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
/// section, or when [`DeferFrees`] is not the global allocator. It walks
/// what is held: O(frees held), for tests and diagnostics.
///
/// ```
/// assert_eq!(freeq::alloc::held().frees, 0);
/// ```
pub fn held() -> Held {
    let (frees, bytes) = section::held_totals();
    Held { frees, bytes }
}

/// Runs `f` inside a section, so that with [`DeferFrees`] as the global
/// allocator every free `f` makes on this thread waits until `f` has
/// returned: after the unlocks of any locks taken and released inside it,
/// a library's own included. Returns what `f` returns. See [the module
/// docs](self#a-section-around-a-library-you-dont-own) for what moves and
/// what does not.
///
/// It is [`section`](crate::section) kept around one call: values
/// [`defer`](crate::defer)red inside `f` are freed at the same point. If
/// `f` panics, the section still closes and frees while the panic
/// unwinds. Inside another section, the frees wait for the outermost one.
/// Never hold it across `.await`: `f` is synchronous. For
/// [`freeq::profile`](crate::profile), the call is the section's site.
///
/// ```
/// let cache = std::sync::Mutex::new(vec![String::from("evicted"); 8]);
/// // Without `DeferFrees` installed (as here) it is a plain section: the
/// // frees happen at once, inside `clear`.
/// let n = freeq::alloc::frees_after(|| {
///     let mut c = cache.lock().unwrap();
///     c.clear();
///     c.capacity()
/// });
/// assert!(n >= 8);
/// ```
#[inline]
#[track_caller]
pub fn frees_after<R>(f: impl FnOnce() -> R) -> R {
    let _section = open_section();
    f()
}

/// Frees this thread held, taken off it to be freed elsewhere; see
/// [`take_held`].
pub(crate) struct TakenFrees(crate::queue::held::TakenFrees);

impl TakenFrees {
    /// Frees every block and counts them in
    /// [`Stats::deferred_frees`](crate::Stats::deferred_frees); how many.
    pub(crate) fn free_all(self) -> usize {
        let n = self.0.free_all();
        crate::stats::count_late_frees(n);
        n
    }
}

/// Takes every free this thread holds off it (None if it holds none), to
/// be freed by whoever ends up with them: an async guard's bin carries the
/// frees caught by its `with` past the release of its lock, to whichever
/// thread frees the bin. Allocates one array for the blocks in the
/// thread's fixed array, if any; frees nothing.
pub(crate) fn take_held() -> Option<TakenFrees> {
    section::take_held().map(TakenFrees)
}
