//! Type-erased, append-only storage for deferred items.
//!
//! This file holds freeq's only serious `unsafe`. A [`Buffer`] is a FIFO of
//! items in a chain of fixed-size blocks of 16-byte, 16-aligned slots. Each
//! item starts with a header (a pointer to its type's static [`Meta`]:
//! 8 bytes on 64-bit targets, 4 on 32-bit ones); the payload is packed
//! right behind the header, at the first offset its alignment allows. On
//! 64-bit targets a payload with alignment up to 8 starts at byte 8 of the
//! header's slot, so values of up to 8 bytes take one slot (16 bytes), and
//! a 16-aligned payload starts at the next slot. On 32-bit targets a
//! payload with alignment up to 4 starts at byte 4 (values of up to 12
//! bytes take one slot), an 8-aligned one at byte 8 (up to 8 bytes in one
//! slot) and a 16-aligned one at the next slot. Any `FnOnce()` up to
//! [`MAX_INLINE`] bytes with alignment up to 16 is stored with no
//! allocation of its own; larger or over-aligned closures are boxed first.
//!
//! Growth links one more block and never moves an item: when the tail
//! block is full, a *jump* header written in its last free slot sends the
//! reader on to the next block. Drained blocks go to the buffer's free list
//! and are reused, so a warmed-up buffer accepts items without touching the
//! allocator, and a whole batch changes hands in O(1) (its chain of blocks).
//! Items run oldest first.
//!
//! Each item type also has a learned estimate of its drop cost (a moving
//! average, see [`Buffer::estimated_cost`]): a run of a type not timed yet
//! is always timed, so the cost is known after the type's first free, and
//! later runs are timed on a random sample.

use std::alloc::{self, Layout};
use std::any::{Any, TypeId};
use std::hash::{Hash, Hasher};
use std::mem::{self, MaybeUninit};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::Ordering::Relaxed;

use crate::platform::Instant;
use crate::sync::{Cell, StaticAtomicU64, scaled, thread};

/// Size and alignment of one slot.
pub(crate) const SLOT: usize = 16;
/// Largest payload, in bytes, stored inline; anything larger is boxed.
pub(crate) const MAX_INLINE: usize = 256;
/// Slots in one block.
const BLOCK_SLOTS: usize = scaled(255, 31);
/// Slots the largest inline item takes (header and a 16-aligned payload).
const MAX_ITEM_SLOTS: usize = 1 + MAX_INLINE / SLOT;
/// Bytes one block takes, its link included.
pub(crate) const BLOCK_BYTES: usize = mem::size_of::<Block>();

/// A panic payload caught while freeing an item.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

#[repr(C, align(16))]
struct Slot(MaybeUninit<[u8; SLOT]>);

/// One link of a buffer's chain: the next block, then the slots.
#[repr(C, align(16))]
struct Block {
    next: *mut Block,
    slots: [Slot; BLOCK_SLOTS],
}

// Every item, and a jump header after it, fits in one block.
const _: () = assert!(MAX_ITEM_SLOTS < BLOCK_SLOTS);
const _: () = assert!(mem::size_of::<Slot>() == SLOT && mem::align_of::<Slot>() == SLOT);
const _: () = assert!(mem::size_of::<Block>() == (BLOCK_SLOTS + 1) * SLOT);

/// What freeq knows about one item type: one `'static` instance per type,
/// so the header before each payload is a single pointer store.
struct Meta {
    /// Runs the front item and the items of the same type right behind it.
    run: unsafe fn(&mut Buffer, Option<Watch<'_>>) -> bool,
    /// Slots the item occupies, header included.
    slots: usize,
    /// Tells a run of same-typed items where it ends, and indexes the
    /// type's learned drop cost.
    type_id: TypeId,
}

/// Written at the start of each item.
type Header = &'static Meta;

/// Bytes a header takes: a pointer's size (8 on 64-bit targets, 4 on
/// 32-bit ones).
const HEADER: usize = mem::size_of::<Header>();

// A header, and a jump header's position after it, fit in one slot; a
// payload placed right after the header is aligned for anything up to the
// header's own alignment.
const _: () = assert!(mem::align_of::<Header>() == HEADER && HEADER <= 8);
const _: () = assert!(HEADER + mem::size_of::<*mut Slot>() <= SLOT);

/// The type behind the jump header's `TypeId`; never stored.
struct Jump;

/// Ends the items of a block: the pointer after this header holds the
/// position of the next item, at the start of the next block's items.
static JUMP: Meta = Meta {
    run: jump,
    slots: 1,
    type_id: TypeId::of::<Jump>(),
};

/// Byte offset of an `F` payload from its header: the first offset past
/// the header that `F`'s alignment allows (headers are slot-aligned). For
/// alignments up to 16 that is within the header's slot, or the next slot.
const fn payload_offset<F>() -> usize {
    HEADER.next_multiple_of(mem::align_of::<F>())
}

/// Slots an `F` item takes, header included.
const fn item_slots<F>() -> usize {
    let slots = (payload_offset::<F>() + mem::size_of::<F>()).div_ceil(SLOT);
    if slots == 0 { 1 } else { slots }
}

/// Whether an `F` is boxed before it is stored: too large or too aligned
/// to sit in the slots.
const fn boxed<F>() -> bool {
    mem::size_of::<F>() > MAX_INLINE || mem::align_of::<F>() > SLOT
}

/// Stops a drain between two items: once `cell` holds at least `limit`
/// (the owning thread has re-entered a section), the rest waits.
#[derive(Clone, Copy)]
pub(crate) struct Watch<'a> {
    pub(crate) cell: &'a Cell<usize>,
    pub(crate) limit: usize,
}

impl Watch<'_> {
    #[inline(always)]
    fn hit(watch: Option<Watch<'_>>) -> bool {
        watch.is_some_and(|w| w.cell.get() >= w.limit)
    }
}

/// Runs the front item, an `F`, then every `F` directly behind it, in one
/// monomorphic loop (a batch of one type pays one indirect call, not one
/// per item). Each item counts as taken (and in `ran`) before it runs, so
/// one that panics is not run again. Returns `false` if `watch` stopped
/// the run.
///
/// # Safety
/// The front item of `buf` must be an `F` written by [`Buffer::push_raw`].
unsafe fn run_items<F: FnOnce() + 'static>(buf: &mut Buffer, watch: Option<Watch<'_>>) -> bool {
    loop {
        // SAFETY: (1) the front item is an `F` (the caller's promise on the
        // first pass, the type check below on later ones); its payload sits
        // `payload_offset::<F>()` bytes after its header, aligned for `F`
        // because headers are slot-aligned and `push_raw` chose the offset
        // by `F`'s alignment (at most 16). Moving `head` past the item
        // before reading means it is read exactly once; the item lies
        // inside the head block, so `head` stays inside it too.
        let f = unsafe {
            let payload = buf.head.cast::<u8>().add(payload_offset::<F>()).cast::<F>();
            buf.head = buf.head.add(item_slots::<F>());
            payload.read()
        };
        buf.ran += 1;
        let more = buf.head != buf.tail;
        if !more {
            buf.rewind();
        }
        f();
        if Watch::hit(watch) {
            return false;
        }
        if !more {
            return true;
        }
        // SAFETY: (2) `head != tail`, so a header written by `push_raw` (or
        // a jump header) sits at `head`; `f` could not touch `buf`, which is
        // borrowed here.
        let next: Header = unsafe { buf.head.cast::<Header>().read() };
        if next.type_id != TypeId::of::<F>() {
            return true;
        }
    }
}

/// The `run` of a jump header: moves `head` to the next block and recycles
/// the block it leaves.
///
/// # Safety
/// The front header of `buf` must be a jump header written by
/// [`Buffer::link`] or [`Buffer::append`].
unsafe fn jump(buf: &mut Buffer, _watch: Option<Watch<'_>>) -> bool {
    // SAFETY: (3) a jump header's second word holds the next item's
    // position, in the block linked after the head block; every item of
    // the head block has been taken, so it can go to the free list.
    unsafe {
        let to = buf.head.cast::<u8>().add(HEADER).cast::<*mut Slot>().read();
        let done = buf.head_block;
        buf.head_block = (*done).next;
        buf.head = to;
        buf.chain_blocks -= 1;
        buf.push_free(done);
    }
    true
}

/// Allocates one block. No buffer may be borrowed across this call: the
/// global allocator may itself use freeq.
fn alloc_block() -> *mut Block {
    let layout = Layout::new::<Block>();
    // SAFETY: (4) `Block` has a non-zero size.
    let raw = unsafe { alloc::alloc(layout) }.cast::<Block>();
    if raw.is_null() {
        alloc::handle_alloc_error(layout);
    }
    raw
}

/// Frees a block from [`alloc_block`].
///
/// # Safety
/// `block` came from [`alloc_block`], is freed once, and holds no live item.
unsafe fn dealloc_block(block: *mut Block) {
    // SAFETY: (5) allocated by `alloc_block` with this layout (the
    // caller's promise).
    unsafe { alloc::dealloc(block.cast(), Layout::new::<Block>()) }
}

/// The first slot of `block`.
///
/// # Safety
/// `block` points at a live block.
#[inline(always)]
unsafe fn first_slot(block: *mut Block) -> *mut Slot {
    // SAFETY: (6) in bounds of the live block (the caller's promise); no
    // reference is created.
    unsafe { (&raw mut (*block).slots).cast::<Slot>() }
}

/// A FIFO of type-erased `FnOnce()` items in a chain of reusable blocks.
///
/// The items live in the chain `head_block ..= tail_block` (linked by
/// `next`), from `head` up to `tail`; emptied blocks wait on the `free`
/// list. All null when the buffer owns no block of that kind. The buffer
/// is empty when `head == tail`; it keeps no count, so that a push stores
/// the item and moves `tail`, nothing more ([`Buffer::len`] walks).
pub(crate) struct Buffer {
    /// Where the next item goes.
    tail: *mut Slot,
    /// The last slot of the tail block, kept free for a jump header: an
    /// item fits if it ends at or before it.
    limit: *mut Slot,
    /// The oldest item's header (or a jump header before it); equal to
    /// `tail` when the buffer is empty.
    head: *mut Slot,
    /// Items run since [`Buffer::take_ran`] last read it.
    ran: usize,
    head_block: *mut Block,
    tail_block: *mut Block,
    /// Emptied blocks, linked by `next`.
    free: *mut Block,
    /// Blocks in the chain and on the free list.
    chain_blocks: usize,
    free_blocks: usize,
}

// SAFETY: (7) every item enters through `push`/`push_raw`, which require
// `F: Send`, and the buffer owns its blocks exclusively; moving the whole
// buffer to another thread moves only `Send` values and memory.
unsafe impl Send for Buffer {}

impl Buffer {
    /// An empty buffer; allocates nothing until the first push.
    pub(crate) const fn new() -> Self {
        Buffer {
            tail: ptr::null_mut(),
            limit: ptr::null_mut(),
            head: ptr::null_mut(),
            ran: 0,
            head_block: ptr::null_mut(),
            tail_block: ptr::null_mut(),
            free: ptr::null_mut(),
            chain_blocks: 0,
            free_blocks: 0,
        }
    }

    /// Items held. O(items): it walks them (pushes keep no count).
    pub(crate) fn len(&self) -> usize {
        let mut n = 0;
        self.runs(|_, items| {
            n += items;
            true
        });
        n
    }

    /// Whether the buffer holds no item. O(1).
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Items run (by [`Buffer::run_until`] and [`Buffer::run_all`]) since
    /// the last call; resets the count.
    pub(crate) fn take_ran(&mut self) -> usize {
        mem::take(&mut self.ran)
    }

    /// Bytes allocated: every block, in the chain or free.
    pub(crate) fn capacity_bytes(&self) -> usize {
        (self.chain_blocks + self.free_blocks) * BLOCK_BYTES
    }

    /// Whether an item of any inline size can be pushed without allocating.
    #[inline(always)]
    pub(crate) fn is_ready(&self) -> bool {
        !self.free.is_null() || self.room() >= MAX_ITEM_SLOTS * SLOT
    }

    /// Bytes free in the tail block (before the slot kept for a jump).
    #[inline(always)]
    fn room(&self) -> usize {
        self.limit.addr() - self.tail.addr()
    }

    /// Whether [`Buffer::push_raw`] can store an `F` in `*buf` without
    /// linking a block.
    ///
    /// # Safety
    /// `buf` points at a live buffer, with no reference to it live.
    #[inline(always)]
    pub(crate) unsafe fn has_room_for<F>(buf: *const Buffer) -> bool {
        let slots = if boxed::<F>() {
            item_slots::<Box<F>>()
        } else {
            item_slots::<F>()
        };
        // SAFETY: (8b) a momentary read (the caller's promise).
        unsafe { (*buf).room() >= slots * SLOT }
    }

    /// Appends `f`; it runs when its turn comes in a drain.
    #[inline]
    pub(crate) fn push<F: FnOnce() + Send + 'static>(&mut self, f: F) {
        // SAFETY: (8) `self` is a unique reference, so nothing else reaches
        // the buffer during the call.
        unsafe { Buffer::push_raw(self, f) }
    }

    /// Appends `f` to `*buf` without holding a reference to it across a
    /// call into the global allocator (which may itself use freeq and push
    /// to the same buffer): each step borrows the buffer only for itself.
    ///
    /// # Safety
    /// `buf` points at a live buffer, and no reference to it is live during
    /// the call other than momentary ones taken by code this call runs (the
    /// allocator's own pushes through this function).
    #[inline(always)]
    pub(crate) unsafe fn push_raw<F: FnOnce() + Send + 'static>(buf: *mut Buffer, f: F) {
        if boxed::<F>() {
            let boxed = Box::new(f);
            // SAFETY: (9) the caller's promise, passed on.
            unsafe { Buffer::push_growing(buf, boxed) }
        } else {
            // SAFETY: (10) as in (9).
            unsafe { Buffer::push_growing(buf, f) }
        }
    }

    /// [`Buffer::push_raw`] when [`Buffer::has_room_for`] said yes: no
    /// block is linked (a boxed `F` is still allocated, and then takes the
    /// growing path, since the allocator may have used the room).
    ///
    /// # Safety
    /// As for [`Buffer::push_raw`], and `has_room_for::<F>(buf)` holds.
    #[inline(always)]
    pub(crate) unsafe fn push_in_room<F: FnOnce() + Send + 'static>(buf: *mut Buffer, f: F) {
        if boxed::<F>() {
            // SAFETY: (10b) as in (9).
            unsafe { Buffer::push_raw(buf, f) }
        } else {
            // SAFETY: (10c) the caller's promises: the buffer is live and
            // unborrowed, and has room for an `F`; nothing runs in between.
            unsafe { Buffer::write_item(buf, f) }
        }
    }

    /// Links blocks until an `F` fits, then stores it.
    ///
    /// # Safety
    /// As for [`Buffer::push_raw`]; `F` is not [`boxed`].
    #[inline(always)]
    unsafe fn push_growing<F: FnOnce() + 'static>(buf: *mut Buffer, f: F) {
        // SAFETY: (11) `buf` is live (the caller's promise); the read is
        // momentary.
        while unsafe { (*buf).room() } < item_slots::<F>() * SLOT {
            // SAFETY: (12) the caller's promise, passed on.
            unsafe { Buffer::grow(buf) };
        }
        // SAFETY: (12b) the loop left room; the caller's promise otherwise.
        unsafe { Buffer::write_item(buf, f) }
    }

    /// Stores `f` at the tail.
    ///
    /// # Safety
    /// `buf` is live, no reference to it is live, and its tail block has
    /// room for an `F` (`F` not [`boxed`]).
    #[inline(always)]
    unsafe fn write_item<F: FnOnce() + 'static>(buf: *mut Buffer, f: F) {
        let meta: Header = const {
            &Meta {
                run: run_items::<F>,
                slots: item_slots::<F>(),
                type_id: TypeId::of::<F>(),
            }
        };
        // SAFETY: (13) no other reference to the buffer is live now (the
        // caller's promise; the allocator is not running). There is room
        // for `slots` slots before `limit` (the caller's promise), all
        // inside the tail block and holding no live item (live items end
        // at `tail`). The header is slot-aligned, the payload offset suits
        // `F`'s alignment (at most 16), so both writes are aligned; a
        // zero-sized payload may sit at the end of the item, which is fine
        // for a zero-sized write.
        unsafe {
            let b = &mut *buf;
            debug_assert!(b.room() >= meta.slots * SLOT);
            let at = b.tail;
            at.cast::<Header>().write(meta);
            at.cast::<u8>()
                .add(payload_offset::<F>())
                .cast::<F>()
                .write(f);
            b.tail = at.add(meta.slots);
        }
    }

    /// Links one more block at the tail: a free one, or a new one allocated
    /// with no reference to the buffer held.
    ///
    /// # Safety
    /// As for [`Buffer::push_raw`].
    #[cold]
    #[inline(never)]
    unsafe fn grow(buf: *mut Buffer) {
        // SAFETY: (14) a momentary borrow; popping runs nothing.
        let mut block = unsafe { (*buf).pop_free() };
        if block.is_null() {
            block = alloc_block();
            // SAFETY: (15) the allocator has returned; a momentary borrow.
            let b = unsafe { &mut *buf };
            if b.room() >= MAX_ITEM_SLOTS * SLOT {
                // A push inside the allocator linked a block already.
                // SAFETY: (16) `block` is a fresh block, owned here.
                unsafe { b.push_free(block) };
                return;
            }
        }
        // SAFETY: (17) a momentary borrow; `block` is owned here and empty.
        unsafe { (*buf).link(block) };
    }

    /// Makes `block` (owned by the caller, empty) the new tail block.
    ///
    /// # Safety
    /// `block` is a live block that no buffer owns.
    unsafe fn link(&mut self, block: *mut Block) {
        // SAFETY: (18) `block` is live and unowned (the caller's promise);
        // when a tail block exists, `tail <= limit` leaves its slot at
        // `tail` free for the jump header, which names the first slot of
        // the block linked right after it.
        unsafe {
            (*block).next = ptr::null_mut();
            let start = first_slot(block);
            if self.tail_block.is_null() {
                self.head_block = block;
                self.head = start;
            } else {
                self.tail.cast::<Header>().write(&JUMP);
                self.tail
                    .cast::<u8>()
                    .add(HEADER)
                    .cast::<*mut Slot>()
                    .write(start);
                (*self.tail_block).next = block;
            }
            self.tail_block = block;
            self.tail = start;
            self.limit = start.add(BLOCK_SLOTS - 1);
        }
        self.chain_blocks += 1;
    }

    /// # Safety
    /// `block` is a live block with no live item that no buffer owns.
    unsafe fn push_free(&mut self, block: *mut Block) {
        // SAFETY: (19) the caller's promise.
        unsafe { (*block).next = self.free };
        self.free = block;
        self.free_blocks += 1;
    }

    fn pop_free(&mut self) -> *mut Block {
        let block = self.free;
        if !block.is_null() {
            // SAFETY: (20) blocks on the free list are live.
            self.free = unsafe { (*block).next };
            self.free_blocks -= 1;
        }
        block
    }

    /// The buffer has just been emptied: write from the start of the tail
    /// block again, which is also the head block.
    #[inline(always)]
    fn rewind(&mut self) {
        debug_assert!(self.is_empty() && self.head_block == self.tail_block);
        // SAFETY: (21) with items taken from it, the tail block is live.
        let start = unsafe { first_slot(self.tail_block) };
        self.head = start;
        self.tail = start;
    }

    /// Moves the chain (empty of items) to the free list.
    fn release_chain(&mut self) {
        debug_assert!(self.is_empty());
        let mut block = self.head_block;
        while !block.is_null() {
            // SAFETY: (22) chain blocks are live; with no items left,
            // none holds a live item.
            unsafe {
                let next = (*block).next;
                self.push_free(block);
                block = next;
            }
        }
        self.chain_blocks = 0;
        self.head_block = ptr::null_mut();
        self.tail_block = ptr::null_mut();
        self.head = ptr::null_mut();
        self.tail = ptr::null_mut();
        self.limit = ptr::null_mut();
    }

    /// Runs items oldest first until the buffer is empty (returns `true`) or
    /// `watch` fires after an item (returns `false`). A panicking item
    /// counts as run; the first panic is kept in `first`, later ones dropped.
    /// A run of one type is timed, to learn its drop cost, whenever that
    /// type has not been timed yet, and now and then after that.
    pub(crate) fn run_until(
        &mut self,
        first: &mut Option<Panic>,
        watch: Option<Watch<'_>>,
    ) -> bool {
        loop {
            let run = panic::catch_unwind(AssertUnwindSafe(|| {
                while !self.is_empty() {
                    // SAFETY: (23) `head != tail`, so a header written by
                    // `push_raw` or `link` sits at `head`, and its `run` is
                    // the `run_items` of the type stored behind it (or
                    // `jump` behind a jump header).
                    let header: Header = unsafe { self.head.cast::<Header>().read() };
                    // One lookup per run of one type, not per item.
                    let stopped = if untimed(header) || sample() {
                        let before = self.ran;
                        let start = Stamp::now();
                        // SAFETY: (24) as in (23).
                        let stopped = unsafe { !(header.run)(self, watch) };
                        learn(header, start, self.ran - before);
                        stopped
                    } else {
                        // SAFETY: (25) as in (23).
                        unsafe { !(header.run)(self, watch) }
                    };
                    if stopped {
                        return false;
                    }
                }
                true
            }));
            match run {
                Ok(emptied) => return emptied,
                Err(payload) => {
                    keep_first(first, payload);
                    if self.is_empty() {
                        return true;
                    }
                    if Watch::hit(watch) {
                        return false;
                    }
                }
            }
        }
    }

    /// Runs every item; panics as in [`Buffer::run_until`].
    pub(crate) fn run_all(&mut self, first: &mut Option<Panic>) {
        self.run_until(first, None);
    }

    /// Moves all of `other`'s items after this buffer's, keeping their
    /// order, in O(1): `other`'s chain of blocks is linked behind this
    /// one's. `other` keeps its free blocks.
    pub(crate) fn append(&mut self, other: &mut Buffer) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.release_chain();
            self.head = other.head;
            self.head_block = other.head_block;
        } else {
            // SAFETY: (26) `tail <= limit` in the tail block leaves the slot
            // at `tail` free for the jump header; it names `other`'s oldest
            // item, in `other`'s head block, which is linked right after.
            unsafe {
                self.tail.cast::<Header>().write(&JUMP);
                self.tail
                    .cast::<u8>()
                    .add(HEADER)
                    .cast::<*mut Slot>()
                    .write(other.head);
                (*self.tail_block).next = other.head_block;
            }
        }
        self.tail_block = other.tail_block;
        self.tail = other.tail;
        self.limit = other.limit;
        self.chain_blocks += other.chain_blocks;
        other.head_block = ptr::null_mut();
        other.tail_block = ptr::null_mut();
        other.head = ptr::null_mut();
        other.tail = ptr::null_mut();
        other.limit = ptr::null_mut();
        other.chain_blocks = 0;
    }

    /// Takes every item, with the blocks that hold them, in O(1); this
    /// buffer keeps its free blocks.
    pub(crate) fn take_items(&mut self) -> Buffer {
        let mut items = Buffer::new();
        items.append(self);
        items
    }

    /// Moves `other`'s free blocks (and, once `other` is empty, the blocks
    /// of its chain) to this buffer's free list. Allocates nothing.
    pub(crate) fn take_free(&mut self, other: &mut Buffer) {
        if other.is_empty() {
            other.release_chain();
        }
        loop {
            let block = other.pop_free();
            if block.is_null() {
                return;
            }
            // SAFETY: (27) a free block, now owned by no buffer.
            unsafe { self.push_free(block) };
        }
    }

    // Kept for the offload path, which reserves through `reserve_raw` here
    // but may hold a buffer of its own.
    #[allow(dead_code)]
    /// Makes sure the buffer holds at least `bytes` (rounded up to whole
    /// blocks), so later pushes need not allocate.
    pub(crate) fn reserve_bytes(&mut self, bytes: usize) {
        // SAFETY: (28) `self` is a unique reference.
        unsafe { Buffer::reserve_raw(self, bytes) }
    }

    /// Makes sure `*buf` [`is_ready`](Buffer::is_ready), allocating a free
    /// block if needed, with no reference held across allocation.
    ///
    /// # Safety
    /// As for [`Buffer::push_raw`].
    pub(crate) unsafe fn ready_raw(buf: *mut Buffer) {
        // SAFETY: (35) momentary borrows between allocations.
        while unsafe { !(*buf).is_ready() } {
            let block = alloc_block();
            // SAFETY: (36) a fresh block, handed to the buffer.
            unsafe { (*buf).push_free(block) };
        }
    }

    /// [`Buffer::reserve_bytes`] with no reference held across allocation.
    ///
    /// # Safety
    /// As for [`Buffer::push_raw`].
    pub(crate) unsafe fn reserve_raw(buf: *mut Buffer, bytes: usize) {
        // SAFETY: (29) momentary borrows between allocations.
        while unsafe { (*buf).capacity_bytes() } < bytes {
            let block = alloc_block();
            // SAFETY: (30) a fresh block, handed to the buffer.
            unsafe { (*buf).push_free(block) };
        }
    }

    /// Frees blocks until at most `max_bytes` are kept: free ones first,
    /// and, once the buffer is empty, the chain's too. Never drops an item.
    pub(crate) fn trim(&mut self, max_bytes: usize) {
        if self.is_empty() && self.capacity_bytes() > max_bytes {
            self.release_chain();
        }
        while self.capacity_bytes() > max_bytes {
            let block = self.pop_free();
            if block.is_null() {
                return;
            }
            // SAFETY: (31) a free block, unlinked above; freed once.
            unsafe { dealloc_block(block) };
        }
    }

    /// What freeing every item is expected to cost: the sum of each item
    /// type's learned cost per item, or [`Cost::Untimed`] as soon as an
    /// item of a type not timed yet is found. O(items), one cost lookup per
    /// run of one type; meant for after the unlock.
    pub(crate) fn estimated_cost(&self) -> Cost {
        let mut total = 0u64;
        let mut timed = true;
        self.runs(|header, items| match cost_ns(header.type_id) {
            Some(cost) => {
                total = total.saturating_add(cost.saturating_mul(items as u64));
                true
            }
            None => {
                timed = false;
                false
            }
        });
        if timed {
            Cost::Known(total)
        } else {
            Cost::Untimed
        }
    }

    /// Calls `f` with each run of same-typed items, oldest first: its
    /// header and its length, until `f` returns `false`. Along a run, the
    /// next position depends on no read of the type's `Meta`, and nothing
    /// but a count is done per item.
    fn runs(&self, mut f: impl FnMut(Header, usize) -> bool) {
        let mut at = self.head;
        let mut run: Option<(Header, usize)> = None;
        let mut slots = 1;
        while at != self.tail {
            // SAFETY: (32) between `head` and `tail` lie items written by
            // `push_raw`, each starting with its header, and jump headers
            // that lead from the end of one block's items to the start of
            // the next block's: a header sits at every position visited.
            let header: Header = unsafe { at.cast::<Header>().read() };
            if ptr::eq(header, &JUMP) {
                // SAFETY: (33) a jump header's second word is the position
                // of the next item.
                at = unsafe { at.cast::<u8>().add(HEADER).cast::<*mut Slot>().read() };
                continue;
            }
            match &mut run {
                Some((h, n)) if ptr::eq(*h, header) => *n += 1,
                _ => {
                    if let Some((h, n)) = run.take()
                        && !f(h, n)
                    {
                        return;
                    }
                    run = Some((header, 1));
                    slots = header.slots;
                }
            }
            // SAFETY: (34) the item lies inside its block; `at` ends at
            // most at the block's `limit` slot (a jump header, or `tail`).
            at = unsafe { at.add(slots) };
        }
        if let Some((h, n)) = run {
            f(h, n);
        }
    }
}

/// What freeing a batch is expected to cost ([`Buffer::estimated_cost`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cost {
    /// Every item is of a timed type: the sum of their learned costs, in
    /// nanoseconds.
    Known(u64),
    /// At least one item is of a type not timed yet, whose cost nothing
    /// bounds.
    Untimed,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut first = None;
        self.run_all(&mut first);
        self.trim(0);
        resume(first);
    }
}

/// Learned drop costs: a two-way set-associative table indexed by a hash
/// of the item type. An entry packs a 16-bit tag of its type (the top
/// bits) and a moving average of nanoseconds per item (the rest, at least
/// 1); 0 is an empty entry. A type with no entry of its tag is *untimed*.
/// Two types whose keys match (1 in 2^16 of those that share a set) share
/// an estimate, which is all an estimate needs; a third type in a full set
/// evicts one entry, and the evicted type is timed again when it next runs.
static COSTS: [[StaticAtomicU64; 2]; COST_SETS] =
    [const { [const { StaticAtomicU64::new(0) }; 2] }; COST_SETS];
/// Sets in [`COSTS`] (a power of two).
const COST_SETS: usize = 512;
/// Bits of an entry that hold the cost; the tag takes the rest.
const COST_BITS: u32 = 48;
const COST_MASK: u64 = (1 << COST_BITS) - 1;
/// The most a noisy timing may count for, as a multiple of the current
/// estimate (see [`record`]).
const MAX_JUMP: u64 = 4;
/// One run of one timed type in this many (on average) is timed again.
const SAMPLE_EVERY: u32 = 16;

std::thread_local! {
    /// A xorshift state that picks the runs to time at random (a counter
    /// would alias with batches that alternate types). No destructor, so
    /// it works throughout thread exit.
    static RUNS: Cell<u32> = const { Cell::new(0x9E37_79B9) };
}

#[inline(always)]
fn sample() -> bool {
    RUNS.try_with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        r.set(x);
        x % SAMPLE_EVERY == 0
    })
    .unwrap_or(false)
}

/// Where a type's cost lives in [`COSTS`]: its set and its tag.
///
/// Computed from the `TypeId` on each use rather than cached per [`Meta`]
/// (which is a promoted constant and cannot hold a lazily computed value):
/// `TypeId` hashes as one `u64`, so this is a multiply and two shifts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct CostKey {
    set: usize,
    tag: u64,
}

#[inline]
fn cost_key(id: TypeId) -> CostKey {
    /// Folds what `TypeId` hashes into one word.
    struct Fold(u64);
    impl Hasher for Fold {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    let mut h = Fold(0);
    id.hash(&mut h);
    let h = h.finish();
    CostKey {
        set: (h >> (64 - COST_SETS.trailing_zeros())) as usize,
        tag: (h >> 16) & 0xFFFF,
    }
}

/// The two entries of `key`'s set.
#[inline(always)]
fn cost_set(key: CostKey) -> &'static [StaticAtomicU64; 2] {
    &COSTS[key.set]
}

/// `entry`'s cost if it holds `tag`'s.
#[inline(always)]
fn cost_in(entry: u64, tag: u64) -> Option<u64> {
    (entry != 0 && entry >> COST_BITS == tag).then_some(entry & COST_MASK)
}

/// The cost `set` holds for `tag`, if any.
#[inline(always)]
fn lookup(set: &[StaticAtomicU64; 2], tag: u64) -> Option<u64> {
    cost_in(set[0].load(Relaxed), tag).or_else(|| cost_in(set[1].load(Relaxed), tag))
}

/// The learned cost of one item of type `id`, in nanoseconds, or `None`
/// while the type is untimed.
#[inline]
fn cost_ns(id: TypeId) -> Option<u64> {
    let key = cost_key(id);
    lookup(cost_set(key), key.tag)
}

/// Whether the items behind `header` are of a type not timed yet (never
/// true of a jump header, which is not an item).
#[inline(always)]
fn untimed(header: Header) -> bool {
    header.type_id != TypeId::of::<Jump>() && cost_ns(header.type_id).is_none()
}

std::thread_local! {
    /// Whether this thread leaves the time it spent waiting for a CPU out
    /// of its drop timings: set on reclaimers, which run at idle priority
    /// and are preempted often, so that a preemption in the middle of a
    /// timed run is not learned as the type's cost. No destructor.
    static LEAVE_OUT_WAITS: Cell<bool> = const { Cell::new(false) };
}

/// Makes this thread leave out of its drop timings the time it spent
/// runnable but waiting for a CPU (where the platform reports it per
/// thread). Time a drop spends blocked (closing a file, joining a thread)
/// still counts. Reading the wait is a few system calls, a few µs: for
/// threads off the critical path only.
pub(crate) fn leave_out_cpu_waits() {
    let _ = LEAVE_OUT_WAITS.try_with(|c| c.set(true));
}

/// The start of a timed run: the wall clock, and on threads that leave
/// out their waits for a CPU, the waiting so far.
#[derive(Clone, Copy)]
struct Stamp {
    at: Instant,
    waited: Option<u64>,
}

impl Stamp {
    #[inline]
    fn now() -> Stamp {
        let leave_out = LEAVE_OUT_WAITS.try_with(Cell::get).unwrap_or(false);
        Stamp {
            waited: if leave_out { cpu_wait_ns() } else { None },
            at: Instant::now(),
        }
    }

    /// Whether [`Stamp::elapsed_ns`] leaves out the waits for a CPU.
    fn leaves_out_waits(self) -> bool {
        self.waited.is_some()
    }

    /// Nanoseconds since `now`, less the time spent waiting for a CPU
    /// meanwhile where that is known.
    fn elapsed_ns(self) -> u128 {
        let ns = self.at.elapsed().as_nanos();
        let waited = match (self.waited, self.waited.and_then(|_| cpu_wait_ns())) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        ns.saturating_sub(waited.into())
    }
}

/// Nanoseconds this thread has spent runnable but waiting for a CPU, where
/// the platform tells (Linux); see [`crate::platform::cpu_wait_ns`].
fn cpu_wait_ns() -> Option<u64> {
    #[cfg(test)]
    tests::WAIT_READS.with(|n| n.set(n.get() + 1));
    crate::platform::cpu_wait_ns()
}

/// Folds a timed run of `items` items into the type's estimate.
#[cold]
fn learn(header: Header, start: Stamp, items: usize) {
    if items == 0 || header.type_id == TypeId::of::<Jump>() {
        return;
    }
    let per_item = (start.elapsed_ns() / items as u128).clamp(1, u128::from(COST_MASK));
    let key = cost_key(header.type_id);
    record(
        cost_set(key),
        key.tag,
        per_item as u64,
        !start.leaves_out_waits(),
    );
}

/// Folds `per_item` (nanoseconds, at least 1) into `tag`'s entry of `set`:
/// the first timing is taken as it is, later ones move the estimate 1/8
/// of the way (an exponential moving average). A tag with no entry takes a
/// free way, else the way its own bits pick, so that a third type in a
/// set always evicts the same neighbour and the other one keeps its
/// estimate. Racing updates may lose one; an estimate needs no more.
///
/// A `noisy` timing (the wall clock of a thread that may have been
/// preempted meanwhile) counts for at most [`MAX_JUMP`] times the current
/// estimate, so one preemption cannot make a cheap type look heavy; a real
/// change of cost still shows within a few samples.
fn record(set: &[StaticAtomicU64; 2], tag: u64, per_item: u64, noisy: bool) {
    let entries = [set[0].load(Relaxed), set[1].load(Relaxed)];
    let (way, cost) = match (0..2).find(|&w| cost_in(entries[w], tag).is_some()) {
        Some(w) => {
            let old = entries[w] & COST_MASK;
            let per_item = if noisy {
                per_item.min(old.saturating_mul(MAX_JUMP))
            } else {
                per_item
            };
            (w, (old - old / 8).saturating_add(per_item / 8))
        }
        None => {
            let free = (0..2).find(|&w| entries[w] == 0);
            (free.unwrap_or((tag & 1) as usize), per_item)
        }
    };
    set[way].store((tag << COST_BITS) | cost.clamp(1, COST_MASK), Relaxed);
}

/// Stores `payload` as the first panic, or drops it if one is kept already.
pub(crate) fn keep_first(first: &mut Option<Panic>, payload: Panic) {
    if first.is_none() {
        *first = Some(payload);
    } else {
        drop_quietly(payload);
    }
}

/// Drops a panic payload, swallowing a panic from its own destructor (and
/// from that panic's payload, a few levels deep; past that the payload is
/// leaked rather than let unwind).
pub(crate) fn drop_quietly(payload: Panic) {
    let mut payload = payload;
    for _ in 0..8 {
        match panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            Ok(()) => return,
            Err(next) => payload = next,
        }
    }
    mem::forget(payload);
}

/// Resumes the kept panic, unless the thread is already unwinding (a second
/// panic would abort the process; the one in flight wins).
pub(crate) fn resume(first: Option<Panic>) {
    if let Some(payload) = first {
        if thread::panicking() {
            drop_quietly(payload);
        } else {
            panic::resume_unwind(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn log() -> Arc<Mutex<Vec<u32>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    /// Items of one block's worth several times over.
    const MANY: u32 = (BLOCK_SLOTS * 3) as u32;

    #[test]
    fn fifo_order_and_reuse() {
        let seen = log();
        let mut b = Buffer::new();
        let mut cap = 0;
        for round in 0..3 {
            for i in 0..MANY {
                let s = seen.clone();
                b.push(move || s.lock().unwrap().push(i));
            }
            assert_eq!(b.len(), MANY as usize);
            if round == 0 {
                cap = b.capacity_bytes();
                assert!(cap >= 3 * BLOCK_BYTES, "grew by linking blocks");
            }
            b.run_all(&mut None);
            assert!(b.is_empty());
            assert_eq!(b.capacity_bytes(), cap, "round {round} reused its blocks");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3 * MANY as usize);
        assert!(
            seen.chunks(MANY as usize)
                .all(|c| c.iter().copied().eq(0..MANY))
        );
    }

    /// The header is one pointer (4 bytes on 32-bit targets), and a
    /// payload starts right behind it when its alignment allows: on 32-bit
    /// targets, three pointers share the header's slot.
    #[test]
    fn payloads_pack_right_behind_a_pointer_sized_header() {
        const WORDS: usize = (SLOT - HEADER) / mem::size_of::<usize>();
        assert_eq!(HEADER, mem::size_of::<usize>());
        assert_eq!(payload_offset::<u8>(), HEADER);
        assert_eq!(payload_offset::<[usize; WORDS]>(), HEADER);
        assert_eq!(payload_offset::<u64>(), HEADER.max(mem::align_of::<u64>()));
        assert_eq!(item_slots::<[usize; WORDS]>(), 1);
        assert_eq!(item_slots::<[u8; 8]>(), 1);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(item_slots::<[u32; 3]>(), 1, "12 bytes in the header's slot");
        // A block full of one-slot items whose payloads fill their slots.
        let mut b = Buffer::new();
        let sum = Arc::new(Mutex::new(0usize));
        let per_block = BLOCK_SLOTS - 1;
        let words = WORDS - 1; // the `Arc` is one of them
        for i in 0..per_block {
            let s = sum.clone();
            let v = [i; WORDS - 1];
            // Captures `s` and `v`: exactly `WORDS` pointers.
            b.push(move || *s.lock().unwrap() += v.iter().sum::<usize>());
        }
        assert_eq!(b.capacity_bytes(), BLOCK_BYTES, "one slot per item");
        b.run_all(&mut None);
        let want = words * per_block * (per_block - 1) / 2;
        assert_eq!(*sum.lock().unwrap(), want);
    }

    #[test]
    fn small_payloads_share_the_header_slot() {
        assert_eq!(item_slots::<[u8; 0]>(), 1);
        assert_eq!(item_slots::<u64>(), 1);
        assert_eq!(item_slots::<[u64; 3]>(), 2);
        assert_eq!(item_slots::<[u8; 256]>(), 17);
        #[repr(align(16))]
        struct A16(#[allow(dead_code)] [u8; 16]);
        assert_eq!(item_slots::<A16>(), 2);
        assert_eq!(payload_offset::<A16>(), 16);
        // Eight-byte closures: one slot each.
        let mut b = Buffer::new();
        let n = Arc::new(Mutex::new(0u64));
        let per_block = BLOCK_SLOTS - 1;
        for _ in 0..per_block {
            let n = n.clone(); // one pointer: 8 bytes
            b.push(move || *n.lock().unwrap() += 1);
        }
        assert_eq!(b.capacity_bytes(), BLOCK_BYTES, "one slot per item");
        b.run_all(&mut None);
        assert_eq!(*n.lock().unwrap(), per_block as u64);
    }

    #[test]
    fn sizes_and_alignments() {
        #[repr(align(16))]
        struct A16([u8; 48]);
        #[repr(align(64))]
        struct A64(u8);
        let mut b = Buffer::new();
        let total = Arc::new(Mutex::new(0usize));
        for _ in 0..BLOCK_SLOTS / 4 {
            let t = total.clone();
            b.push(move || *t.lock().unwrap() += 1);
            let big = [7u8; 1000]; // past MAX_INLINE: boxed
            let t = total.clone();
            b.push(move || *t.lock().unwrap() += big.iter().map(|&x| x as usize).sum::<usize>());
            let a16 = A16([1; 48]);
            let t = total.clone();
            b.push(move || *t.lock().unwrap() += a16.0.len());
            let a64 = A64(5); // over-aligned: boxed
            let t = total.clone();
            b.push(move || *t.lock().unwrap() += a64.0 as usize);
            let max = [1u8; MAX_INLINE - 8]; // with the Arc: exactly MAX_INLINE
            let t = total.clone();
            b.push(move || *t.lock().unwrap() += max.len());
            b.push(|| ()); // zero-sized: header only
        }
        assert_eq!(b.len(), 6 * (BLOCK_SLOTS / 4));
        b.run_all(&mut None);
        let per = 1 + 7000 + 48 + 5 + MAX_INLINE - 8;
        assert_eq!(*total.lock().unwrap(), per * (BLOCK_SLOTS / 4));
    }

    #[test]
    fn panics_do_not_stop_the_batch() {
        let seen = log();
        let mut b = Buffer::new();
        for i in 0..5u32 {
            let s = seen.clone();
            b.push(move || {
                s.lock().unwrap().push(i);
                if i % 2 == 1 {
                    panic!("item {i}");
                }
            });
        }
        let mut first = None;
        assert!(b.run_until(&mut first, None));
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        let msg = first.unwrap().downcast::<String>().unwrap();
        assert_eq!(*msg, "item 1");
    }

    std::thread_local! {
        static RAN: Cell<usize> = const { Cell::new(0) };
    }

    #[test]
    fn watch_keeps_the_rest_and_append_preserves_order() {
        let seen = log();
        let mut a = Buffer::new();
        let mut b = Buffer::new();
        let n = MANY;
        for i in 0..n {
            let s = seen.clone();
            a.push(move || {
                RAN.with(|r| r.set(r.get() + 1));
                s.lock().unwrap().push(i)
            });
            let s = seen.clone();
            b.push(move || s.lock().unwrap().push(n + i));
        }
        let stop_at = BLOCK_SLOTS + 3; // past the first block
        RAN.with(|ran| {
            ran.set(0);
            let watch = Watch {
                cell: ran,
                limit: stop_at,
            };
            assert!(!a.run_until(&mut None, Some(watch)));
        });
        assert_eq!(a.len(), n as usize - stop_at);
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(a.len(), 2 * n as usize - stop_at);
        let mut c = a.take_items();
        assert!(a.is_empty());
        drop(a);
        c.run_all(&mut None);
        assert_eq!(*seen.lock().unwrap(), (0..2 * n).collect::<Vec<_>>());
    }

    #[test]
    fn runs_of_one_type_and_mixed_types_keep_fifo_order() {
        let seen = log();
        let mut b = Buffer::new();
        for i in 0..MANY {
            let s = seen.clone();
            if i % 4 == 3 {
                let pad = [i as u64; 5];
                b.push(move || s.lock().unwrap().push(pad[0] as u32));
            } else {
                b.push(move || s.lock().unwrap().push(i));
            }
        }
        b.run_all(&mut None);
        assert_eq!(*seen.lock().unwrap(), (0..MANY).collect::<Vec<_>>());
    }

    #[test]
    fn append_to_an_empty_buffer_and_take_free_blocks() {
        let mut a = Buffer::new();
        a.push(|| ());
        a.run_all(&mut None);
        assert_eq!(a.capacity_bytes(), BLOCK_BYTES);
        let mut b = Buffer::new();
        for _ in 0..MANY {
            b.push(|| ());
        }
        let held = b.capacity_bytes();
        a.append(&mut b);
        assert_eq!(b.capacity_bytes(), 0, "the chain moved");
        assert_eq!(a.capacity_bytes(), held + BLOCK_BYTES);
        a.run_all(&mut None);
        let mut c = Buffer::new();
        c.take_free(&mut a);
        // `a` keeps its (emptied) tail block in its chain.
        assert_eq!(c.capacity_bytes() + a.capacity_bytes(), held + BLOCK_BYTES);
        assert!(c.is_ready());
    }

    #[test]
    fn trim_and_reserve() {
        let mut b = Buffer::new();
        assert!(!b.is_ready());
        b.reserve_bytes(3 * BLOCK_BYTES);
        assert_eq!(b.capacity_bytes(), 3 * BLOCK_BYTES);
        assert!(b.is_ready());
        for _ in 0..MANY {
            b.push(|| {});
        }
        b.trim(0);
        assert_eq!(b.len(), MANY as usize, "trim never drops items");
        b.run_all(&mut None);
        b.trim(BLOCK_BYTES);
        assert_eq!(b.capacity_bytes(), BLOCK_BYTES);
        b.trim(0);
        assert_eq!(b.capacity_bytes(), 0);
        b.push(|| {});
        assert_eq!(b.len(), 1);
    }

    /// Pushes `f` and returns the type the buffer stores it as.
    fn push_id<F: FnOnce() + Send + 'static>(b: &mut Buffer, f: F) -> TypeId {
        b.push(f);
        TypeId::of::<F>()
    }

    /// The estimate [`Buffer::estimated_cost`] should give for `ids`, as
    /// the table stands now.
    fn expected_cost(ids: &[TypeId]) -> Cost {
        ids.iter()
            .try_fold(0u64, |sum, &id| Some(sum + cost_ns(id)?))
            .map_or(Cost::Untimed, Cost::Known)
    }

    #[test]
    fn estimated_cost_sums_over_the_items_once_every_type_is_timed() {
        let mut b = Buffer::new();
        let mut ids = Vec::new();
        let fill = |b: &mut Buffer, ids: &mut Vec<TypeId>| {
            for i in 0..MANY {
                let v = vec![i as u8];
                ids.push(if i % 3 == 0 {
                    push_id(b, move || drop(v))
                } else {
                    push_id(b, || ())
                });
            }
        };
        fill(&mut b, &mut ids);
        // Both closure types are new: neither has been freed yet.
        assert_eq!(b.estimated_cost(), Cost::Untimed);
        b.run_all(&mut None);
        assert_eq!(b.estimated_cost(), Cost::Known(0));
        ids.clear();
        fill(&mut b, &mut ids);
        let expected = expected_cost(&ids);
        assert!(
            matches!(expected, Cost::Known(ns) if ns >= MANY as u64),
            "one free timed both types: {expected:?}"
        );
        assert_eq!(b.estimated_cost(), expected);
        b.run_all(&mut None);
    }

    /// Spins for `us` microseconds when dropped.
    struct Slow(u64);

    impl Drop for Slow {
        fn drop(&mut self) {
            let t = Instant::now();
            while t.elapsed() < std::time::Duration::from_micros(self.0) {
                std::hint::spin_loop();
            }
        }
    }

    const SPIN_US: u64 = if cfg!(miri) { 1 } else { 50 };

    #[test]
    fn an_untimed_type_is_timed_on_its_first_free() {
        let mut b = Buffer::new();
        let v = Slow(SPIN_US);
        let slow = push_id(&mut b, move || drop(v));
        assert_eq!(cost_ns(slow), None, "not freed yet: untimed");
        assert_eq!(b.estimated_cost(), Cost::Untimed);
        b.run_all(&mut None);
        let learned = cost_ns(slow).expect("timed on its first free");
        assert!(learned >= SPIN_US * 1000, "learned {learned} ns");
    }

    std::thread_local! {
        /// Calls to `cpu_wait_ns` on this thread.
        pub(super) static WAIT_READS: Cell<usize> = const { Cell::new(0) };
    }

    /// A thread that times by the wall clock alone (a producer) never
    /// reads its CPU waits: that read is a few system calls.
    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    fn wall_clock_timings_read_no_cpu_waits() {
        std::thread::spawn(|| {
            struct Fresh;
            impl Drop for Fresh {
                fn drop(&mut self) {}
            }
            let mut b = Buffer::new();
            let v = Fresh;
            let id = push_id(&mut b, move || drop(v));
            b.run_all(&mut None); // untimed: always timed
            assert!(cost_ns(id).is_some());
            assert_eq!(WAIT_READS.with(Cell::get), 0);
            leave_out_cpu_waits();
            struct FreshToo;
            impl Drop for FreshToo {
                fn drop(&mut self) {}
            }
            let v = FreshToo;
            push_id(&mut b, move || drop(v));
            b.run_all(&mut None); // untimed too
            assert_eq!(WAIT_READS.with(Cell::get), 2, "one read at each end");
        })
        .join()
        .unwrap();
    }

    /// Pins this thread to `cpu`; whether that worked.
    #[cfg(all(target_os = "linux", not(miri)))]
    fn pin_to(cpu: usize) -> bool {
        // SAFETY: a zeroed `cpu_set_t` is a valid empty set; the calls
        // write only it and this thread's affinity.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// On a thread that leaves out its waits for a CPU (a reclaimer),
    /// time runnable but preempted inside a drop is not learned as its
    /// cost; time blocked inside it is.
    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    fn waits_for_a_cpu_are_left_out_and_blocking_counts() {
        use std::time::Duration;
        struct Sleepy;
        impl Drop for Sleepy {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // SAFETY: a zeroed `cpu_set_t` is valid; the call writes only it.
        let cpu = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
        };
        let Some(cpu) = cpu else { return };
        if cpu_wait_ns().is_none() {
            return; // no per-thread schedstat here
        }
        let learned = std::thread::spawn(move || {
            leave_out_cpu_waits();
            let mut b = Buffer::new();
            let v = Sleepy;
            let sleepy = push_id(&mut b, move || drop(v));
            b.run_all(&mut None);
            // This thread and a busy one share one CPU: each waits for the
            // other about half of the time.
            if !pin_to(cpu) {
                return None;
            }
            let other = std::thread::spawn(move || {
                let pinned = pin_to(cpu);
                let t = Instant::now();
                while pinned && t.elapsed() < Duration::from_millis(300) {
                    std::hint::spin_loop();
                }
                pinned
            });
            std::thread::sleep(Duration::from_millis(10));
            let v = Slow(100_000); // 100 ms of wall time, shared
            let slow = push_id(&mut b, move || drop(v));
            b.run_all(&mut None);
            let shared = other.join().unwrap();
            Some((cost_ns(sleepy).unwrap(), cost_ns(slow).unwrap(), shared))
        })
        .join()
        .unwrap();
        let Some((blocked, busy, shared)) = learned else {
            return;
        };
        assert!(blocked >= 5_000_000, "blocked: learned {blocked} ns");
        if shared {
            // `Slow` spins until 100 ms of wall time have passed, about
            // half of them waiting for the CPU.
            assert!(busy < 75_000_000, "busy: learned {busy} ns of 100 ms");
        }
    }

    #[test]
    fn timing_keeps_learning_a_timed_type() {
        let mut b = Buffer::new();
        let mut slow = None;
        for _ in 0..16 * SAMPLE_EVERY {
            let v = Slow(SPIN_US);
            slow = Some(push_id(&mut b, move || drop(v)));
            b.push(|| ()); // a different type: one run per item
        }
        b.run_all(&mut None);
        let learned = cost_ns(slow.unwrap()).expect("timed");
        // Every run of `Slow` takes at least SPIN_US, and the first one is
        // always timed: every later sample keeps the average above 7/8
        // of that.
        assert!(learned >= SPIN_US * 1000 * 7 / 8, "learned {learned} ns");
    }

    #[test]
    fn the_cost_table_keeps_two_types_a_set_and_evicts_one_neighbour() {
        let set = [const { StaticAtomicU64::new(0) }; 2];
        assert_eq!(lookup(&set, 6), None);
        record(&set, 6, 100, false);
        record(&set, 9, 7_000, false);
        assert_eq!(lookup(&set, 6), Some(100));
        assert_eq!(lookup(&set, 9), Some(7_000));
        // Later timings move the estimate an eighth of the way.
        record(&set, 6, 900, false);
        assert_eq!(lookup(&set, 6), Some(100 - 12 + 112));
        // A third tag in a full set takes the way its low bit picks (way
        // 0 for an even tag), every time: tag 9 keeps its estimate.
        record(&set, 4, 50, false);
        assert_eq!(lookup(&set, 6), None, "evicted: untimed again");
        assert_eq!(lookup(&set, 4), Some(50));
        assert_eq!(lookup(&set, 9), Some(7_000));
        // Costs are at least 1 ns, and saturate.
        record(&set, 4, 0, false);
        assert!(lookup(&set, 4).unwrap() >= 1);
        record(&set, 6, u64::MAX, false);
        assert!(lookup(&set, 6).unwrap() <= COST_MASK);
        assert_eq!(lookup(&set, 9), Some(7_000));
    }

    #[test]
    fn a_noisy_timing_moves_a_known_estimate_by_a_bounded_step() {
        let set = [const { StaticAtomicU64::new(0) }; 2];
        // The first timing is taken as it is, noisy or not.
        record(&set, 3, 1_000, true);
        assert_eq!(lookup(&set, 3), Some(1_000));
        // A preempted sample of 5 ms counts as 4 µs at most ...
        record(&set, 3, 5_000_000, true);
        assert_eq!(lookup(&set, 3), Some(1_000 - 125 + 500));
        // ... a trusted one (waits left out) as it is.
        record(&set, 3, 5_000_000, false);
        assert_eq!(lookup(&set, 3), Some(1_375 - 171 + 625_000));
        // A type that really became slower gets there within a few samples.
        let set = [const { StaticAtomicU64::new(0) }; 2];
        record(&set, 5, 1_000, true);
        let mut samples = 0;
        while lookup(&set, 5).unwrap() < 100_000 {
            record(&set, 5, 1_000_000, true);
            samples += 1;
        }
        assert!(samples <= 24, "{samples} samples");
    }

    #[test]
    fn cost_keys_are_stable_and_in_range() {
        let a = cost_key(TypeId::of::<Slow>());
        assert_eq!(a, cost_key(TypeId::of::<Slow>()));
        assert!(a.set < COST_SETS && a.tag <= 0xFFFF);
        assert!(!untimed(&JUMP), "a jump header is never timed");
    }
}
