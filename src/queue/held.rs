//! Frees of raw memory a thread holds back while it is inside a section:
//! the storage behind `freeq::alloc::DeferFrees`.
//!
//! A thread's held frees live in its [`Local`](crate::queue::local::Local),
//! beside its section depth, so that the allocator's `dealloc` reaches
//! both through one thread-local access. The hot path,
//! [`HeldFrees::push`], is a compare against the allocator the thread's
//! blocks belong to, a bounds check and a store of the block's address,
//! size and alignment into fixed arrays. Everything else (the first free
//! of a new allocator type, a full array) is the caller's cold path, which
//! ends in [`HeldFrees::arm`] and [`HeldFrees::push_cold`].
//!
//! Nothing here allocates or can panic: it runs inside `dealloc`. This
//! file calls only the `sync` shim.

use std::alloc::Layout;
use std::any::TypeId;
use std::mem::{align_of, size_of};
use std::ptr;

use crate::sync::{Cell, scaled};

/// How many frees a thread holds in its fixed array, without touching the
/// freed blocks. Past that, a block of at least two words carries its own
/// link (a write into the block, often a cache miss, made under the lock),
/// without limit; a smaller block takes the array slot of a larger one,
/// which moves to the list, and once the array holds only small blocks,
/// small blocks are freed at once. (8 under Miri and loom, to reach the
/// list in tests.)
pub const RESERVE_SLOTS: usize = scaled(256, 8);

/// What frees a held block: the allocator's own `dealloc`, reached
/// through its type alone.
pub(crate) type FreeFn = unsafe fn(*mut u8, Layout);

/// One held block in the array: its address and size (its alignment's
/// log2 is kept apart, in a byte).
type Slot = (*mut u8, usize);

/// The header a held block of at least two words carries at its start
/// once the array is full.
#[derive(Clone, Copy)]
struct Link {
    next: *mut u8,
    /// The layout, packed by [`pack`].
    layout: usize,
}

// The header fits in the smallest block it is written to.
const _: () = assert!(size_of::<Link>() == 2 * size_of::<usize>());
const _: () = assert!(align_of::<Link>() <= 2 * size_of::<usize>());

/// Bits that hold the log2 of an alignment (below `usize::BITS`).
const ALIGN_BITS: u32 = usize::BITS.trailing_zeros();

/// `layout` in one word, for a block's [`Link`]: its size above, its
/// alignment's log2 below. None for sizes too large to fit (at least 2^58
/// bytes on 64-bit targets, 128 MiB on 32-bit ones).
fn pack(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size >> (usize::BITS - ALIGN_BITS) != 0 {
        return None;
    }
    Some(size << ALIGN_BITS | layout.align().trailing_zeros() as usize)
}

fn unpack(word: usize) -> Layout {
    let size = word >> ALIGN_BITS;
    let align = 1usize << (word & ((1 << ALIGN_BITS) - 1));
    // SAFETY: (1) `word` came from `pack` of a valid layout.
    unsafe { Layout::from_size_align_unchecked(size, align) }
}

/// The layout of a block held in the array.
#[inline(always)]
fn layout_of((_, size): Slot, align_log2: u8) -> Layout {
    // SAFETY: (1b) `size` and `align_log2` were stored by `push` or
    // `push_cold` from a valid layout.
    unsafe { Layout::from_size_align_unchecked(size, 1 << align_log2) }
}

/// Whether `free` is the function the thread's blocks are freed with.
/// Compared as addresses: a function's address may differ from one
/// codegen unit to another, and then the cold path compares types.
#[inline(always)]
fn same(held: Option<FreeFn>, free: FreeFn) -> bool {
    held.map_or(0, |h| h as usize) == free as usize
}

/// A thread's held frees. All of them belong to one allocator type, `id`,
/// freed through `free`; the thread stays armed for that type from one
/// section to the next, so only its first held free ever takes the cold
/// path.
///
/// Invariant: the list is empty unless the array is full
/// (`len == RESERVE_SLOTS`), so `len == 0` means nothing is held.
pub(crate) struct HeldFrees {
    /// Blocks in `slots[..len]`.
    len: Cell<usize>,
    /// What frees every held block; `None` until the first held free, and
    /// again once the thread's exit path ran.
    free: Cell<Option<FreeFn>>,
    slots: [Cell<Slot>; RESERVE_SLOTS],
    /// The log2 of each block's alignment, beside `slots`.
    aligns: [Cell<u8>; RESERVE_SLOTS],
    /// The allocator type `free` belongs to.
    id: Cell<Option<TypeId>>,
    /// Blocks past the array, linked through their [`Link`]s.
    head: Cell<*mut u8>,
    /// How many blocks are on the list.
    listed: Cell<usize>,
    /// `slots[..small]` hold only blocks smaller than a [`Link`]: where a
    /// small block looks for a larger one to displace, once the array is
    /// full.
    small: Cell<usize>,
}

impl HeldFrees {
    pub(crate) const fn new() -> Self {
        HeldFrees {
            len: Cell::new(0),
            free: Cell::new(None),
            slots: [const { Cell::new((ptr::null_mut(), 0)) }; RESERVE_SLOTS],
            aligns: [const { Cell::new(0) }; RESERVE_SLOTS],
            id: Cell::new(None),
            head: Cell::new(ptr::null_mut()),
            listed: Cell::new(0),
            small: Cell::new(0),
        }
    }

    /// Whether anything is held.
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// The hot path: stores the freed block `ptr` in the array, if the
    /// thread is armed for `free` and the array has room; whether it did.
    /// The caller has checked that the thread is inside a section.
    ///
    /// # Safety
    /// `ptr` is a freed block of `layout`, owned by nobody now, that
    /// `free(ptr, layout)` frees.
    #[inline(always)]
    pub(crate) unsafe fn push(&self, free: FreeFn, ptr: *mut u8, layout: Layout) -> bool {
        if !same(self.free.get(), free) {
            return false;
        }
        let len = self.len.get();
        let (Some(slot), Some(align)) = (self.slots.get(len), self.aligns.get(len)) else {
            return false;
        };
        slot.set((ptr, layout.size()));
        align.set(layout.align().trailing_zeros() as u8);
        self.len.set(len + 1);
        true
    }

    /// Arms the thread for allocator type `id`, freed through `free`, if
    /// nothing is held: whether it is now armed for `id`.
    pub(crate) fn arm(&self, free: FreeFn, id: TypeId) -> bool {
        if self.is_empty() {
            self.free.set(Some(free));
            self.id.set(Some(id));
        }
        self.id.get() == Some(id)
    }

    /// Disarms the thread: until it is armed again, every [`push`]
    /// fails. Called once nothing may wait any more (the exit path ran).
    ///
    /// [`push`]: Self::push
    pub(crate) fn disarm(&self) {
        if self.is_empty() {
            self.free.set(None);
            self.id.set(None);
        }
    }

    /// The cold path, on a thread armed for `id` (see [`arm`]): holds the
    /// block in the array if it has room, else on the list (a block of at
    /// least two words), else in the slot of a larger block, which moves
    /// to the list. Whether it did.
    ///
    /// # Safety
    /// As for [`push`], with `free` any function that frees the allocator
    /// type `id`'s blocks.
    ///
    /// [`arm`]: Self::arm
    /// [`push`]: Self::push
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn push_cold(&self, ptr: *mut u8, layout: Layout) -> bool {
        let len = self.len.get();
        let align_log2 = layout.align().trailing_zeros() as u8;
        if let (Some(slot), Some(align)) = (self.slots.get(len), self.aligns.get(len)) {
            // Armed for the same type through another address of `free`.
            slot.set((ptr, layout.size()));
            align.set(align_log2);
            self.len.set(len + 1);
            return true;
        }
        if layout.size() >= size_of::<Link>() {
            // SAFETY: (2) the block is at least two words, freed and
            // unreachable by anyone else.
            return unsafe { self.link(ptr, layout) };
        }
        // A small block: the first larger one in the array moves to the
        // list and gives it its slot.
        let mut at = self.small.get();
        while let (Some(slot), Some(align)) = (self.slots.get(at), self.aligns.get(at)) {
            let moved = slot.get();
            let moved_layout = layout_of(moved, align.get());
            // SAFETY: (3) a larger block, freed and unreachable by
            // anyone else.
            if moved.1 >= size_of::<Link>() && unsafe { self.link(moved.0, moved_layout) } {
                slot.set((ptr, layout.size()));
                align.set(align_log2);
                self.small.set(at + 1);
                return true;
            }
            at += 1;
        }
        self.small.set(at);
        false // only small blocks: free at once
    }

    /// Puts a block on the list; false if its layout does not pack (a
    /// block of 128 MiB or more on a 32-bit target).
    ///
    /// # Safety
    /// `block` is freed, unreachable by anyone else, and at least
    /// `size_of::<Link>()` bytes.
    unsafe fn link(&self, block: *mut u8, layout: Layout) -> bool {
        let Some(layout) = pack(layout) else {
            return false;
        };
        let link = Link {
            next: self.head.get(),
            layout,
        };
        // SAFETY: (4) the caller's guarantee; the block may be less
        // aligned than `Link`, hence unaligned.
        unsafe { block.cast::<Link>().write_unaligned(link) };
        self.head.set(block);
        self.listed.set(self.listed.get() + 1);
        true
    }

    /// Frees every held block; how many. The list first, then the array
    /// from its end, one block at a time with the bookkeeping updated
    /// before each free: a free that frees again (an inner allocator that
    /// calls the global one) lands in the array or on the list, consistent
    /// and picked up by this same loop. The thread stays armed.
    pub(crate) fn run(&self) -> usize {
        let Some(free) = self.free.get() else {
            return 0;
        };
        let mut n = 0;
        loop {
            let mut block = self.head.replace(ptr::null_mut());
            if !block.is_null() {
                self.listed.set(0);
            }
            while !block.is_null() {
                // SAFETY: (5) every block on the list got its `Link` in
                // `link` and has not been freed since.
                let link = unsafe { block.cast::<Link>().read_unaligned() };
                // SAFETY: (6) whoever held the block guaranteed that
                // `free` frees it.
                unsafe { free(block, unpack(link.layout)) };
                n += 1;
                block = link.next;
            }
            let len = self.len.get();
            if len == 0 {
                if self.head.get().is_null() {
                    break;
                }
                continue;
            }
            let (Some(slot), Some(align)) = (self.slots.get(len - 1), self.aligns.get(len - 1))
            else {
                break; // unreachable: `len <= RESERVE_SLOTS`
            };
            let held = slot.get();
            self.len.set(len - 1);
            self.small.set(self.small.get().min(len - 1));
            // SAFETY: (7) as in (6).
            unsafe { free(held.0, layout_of(held, align.get())) };
            n += 1;
        }
        n
    }

    /// Takes every held block off the thread (None if it holds none), to
    /// be freed by whoever ends up with the [`TakenFrees`]: an async
    /// guard's bin carries the frees its `with` caught past the release of
    /// its lock. Allocates one array for the blocks in the fixed array (a
    /// plain allocation: nothing is held by it); frees nothing. The thread
    /// stays armed.
    pub(crate) fn take(&self) -> Option<TakenFrees> {
        let free = self.free.get()?;
        let len = self.len.get();
        if len == 0 {
            return None;
        }
        let slots: Box<[(*mut u8, Layout)]> = self.slots[..len]
            .iter()
            .zip(&self.aligns[..len])
            .map(|(slot, align)| (slot.get().0, layout_of(slot.get(), align.get())))
            .collect();
        // Emptied only once the array above is built: its allocation saw
        // the thread's state whole.
        let head = self.head.replace(ptr::null_mut());
        self.listed.set(0);
        self.len.set(0);
        self.small.set(0);
        Some(TakenFrees { head, slots, free })
    }

    /// How many blocks are held, and their bytes. O(blocks held).
    pub(crate) fn totals(&self) -> (usize, usize) {
        let len = self.len.get();
        let mut bytes = 0usize;
        for slot in &self.slots[..len.min(RESERVE_SLOTS)] {
            bytes = bytes.wrapping_add(slot.get().1);
        }
        let mut block = self.head.get();
        while !block.is_null() {
            // SAFETY: (8) as in (5).
            let link = unsafe { block.cast::<Link>().read_unaligned() };
            bytes = bytes.wrapping_add(unpack(link.layout).size());
            block = link.next;
        }
        (len + self.listed.get(), bytes)
    }
}

/// Frees a thread held, taken off it by [`HeldFrees::take`] to be freed
/// elsewhere. Each block is freed exactly once, by
/// [`TakenFrees::free_all`] or the drop.
pub(crate) struct TakenFrees {
    /// Blocks linked through their [`Link`]s, as `link` left them.
    head: *mut u8,
    /// The array's blocks, copied out with their layouts.
    slots: Box<[(*mut u8, Layout)]>,
    free: FreeFn,
}

// SAFETY: (9) every block reachable from a `TakenFrees` is freed memory
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
            // SAFETY: (10) a block on the list got its `Link` in `link`
            // and has not been freed since: the list left the thread's
            // state when it was taken, and `head` was cleared above.
            let link = unsafe { block.cast::<Link>().read_unaligned() };
            // SAFETY: (11) whoever held the block guaranteed that `free`
            // frees it.
            unsafe { (self.free)(block, unpack(link.layout)) };
            n += 1;
            block = link.next;
        }
        for &(block, layout) in std::mem::take(&mut self.slots).iter() {
            // SAFETY: (12) as in (11); the slots were taken above, so each
            // is freed once.
            unsafe { (self.free)(block, layout) };
            n += 1;
        }
        n
    }
}

impl Drop for TakenFrees {
    fn drop(&mut self) {
        self.run();
    }
}

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
