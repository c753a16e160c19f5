//! Buffers: type-erased, append-only FIFOs of deferred items.
//!
//! This file and `block.rs` hold freeq's only serious `unsafe`. A
//! [`Buffer`] is a FIFO of items in a chain of fixed-size blocks of
//! 16-byte, 16-aligned slots. Each item starts with a header (a pointer to its type's static [`Meta`]:
//! 8 bytes on 64-bit targets, 4 on 32-bit ones); the payload is packed
//! right behind the header, at the first offset its alignment allows. On
//! 64-bit targets a payload with alignment up to 8 starts at byte 8 of the
//! header's slot, so values of up to 8 bytes take one slot (16 bytes), and
//! a 16-aligned payload starts at the next slot. On 32-bit targets a
//! payload with alignment up to 4 starts at byte 4 (values of up to 12
//! bytes take one slot), an 8-aligned one at byte 8 (up to 8 bytes in one
//! slot) and a 16-aligned one at the next slot. Any `FnOnce()` up to
//! `MAX_INLINE` (256) bytes with alignment up to 16 is stored with no
//! allocation of its own; larger or over-aligned closures are boxed first.
//!
//! Growth links one more block and never moves an item: when the tail
//! block is full, a *jump* header written in its last free slot sends the
//! reader on to the next block. Drained blocks go to the buffer's free list
//! and are reused, so a warmed-up buffer accepts items without touching the
//! allocator, and a whole batch changes hands in O(1) (its chain of blocks).
//! Items run oldest first.
//!
//! A run of items of one type can be timed as it is freed: whoever runs
//! a buffer supplies a [`DropTimer`] (the cost model above the queue),
//! and the buffer only calls it. This file calls nothing else in freeq but
//! `block.rs`, `hooks.rs` and `panic.rs`.

use std::any::TypeId;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use crate::queue::block::{
    BLOCK_BYTES, BLOCK_SLOTS, Block, HEADER, MAX_ITEM_SLOTS, SLOT, Slot, alloc_block, boxed,
    dealloc_block, first_slot, item_slots, payload_offset,
};
use crate::queue::hooks::{DropTimer, NoTimer, Watch};
use crate::queue::panic::{Panic, keep_first, resume};

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

// A header is a pointer, `HEADER` bytes (see `block.rs`): it and a jump
// header's position after it fit in one slot; a payload placed right
// after the header is aligned for anything up to the header's own
// alignment.
const _: () = assert!(mem::size_of::<Header>() == HEADER);
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
    /// Each run of one type is offered to `T` to time (see [`DropTimer`]).
    pub(crate) fn run_until<T: DropTimer>(
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
                    // One offer per run of one type, not per item; a jump
                    // header is not an item and is never timed.
                    let mark = if ptr::eq(header, &JUMP) {
                        None
                    } else {
                        T::start(header.type_id)
                    };
                    let stopped = match mark {
                        Some(mark) => {
                            let before = self.ran;
                            // SAFETY: (24) as in (23).
                            let stopped = unsafe { !(header.run)(self, watch) };
                            T::finish(header.type_id, mark, self.ran - before);
                            stopped
                        }
                        // SAFETY: (25) as in (23).
                        None => unsafe { !(header.run)(self, watch) },
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
    pub(crate) fn run_all<T: DropTimer>(&mut self, first: &mut Option<Panic>) {
        self.run_until::<T>(first, None);
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

    /// Moves one of `other`'s free blocks to this buffer's free list, if
    /// it has one; whether it did. Allocates nothing.
    pub(crate) fn take_one_free(&mut self, other: &mut Buffer) -> bool {
        let block = other.pop_free();
        if block.is_null() {
            return false;
        }
        // SAFETY: (27b) a free block, now owned by no buffer.
        unsafe { self.push_free(block) };
        true
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

    /// Calls `f` with each run of same-typed items, oldest first: its
    /// type and its length, until `f` returns `false`. Along a run, the
    /// next position depends on no read of the type's `Meta`, and nothing
    /// but a count is done per item. O(items): meant for after the unlock.
    pub(crate) fn runs(&self, mut f: impl FnMut(TypeId, usize) -> bool) {
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
                        && !f(h.type_id, n)
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
            f(h.type_id, n);
        }
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

/// A buffer dropped with items in it runs them, untimed: the paths that
/// free batches run them first, with the cost model's timer.
impl Drop for Buffer {
    fn drop(&mut self) {
        let mut first = None;
        self.run_all::<NoTimer>(&mut first);
        self.trim(0);
        resume(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::block::MAX_INLINE;
    use crate::sync::Cell;
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
            b.run_all::<NoTimer>(&mut None);
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
        b.run_all::<NoTimer>(&mut None);
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
        b.run_all::<NoTimer>(&mut None);
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
        b.run_all::<NoTimer>(&mut None);
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
        assert!(b.run_until::<NoTimer>(&mut first, None));
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
            assert!(!a.run_until::<NoTimer>(&mut None, Some(watch)));
        });
        assert_eq!(a.len(), n as usize - stop_at);
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(a.len(), 2 * n as usize - stop_at);
        let mut c = a.take_items();
        assert!(a.is_empty());
        drop(a);
        c.run_all::<NoTimer>(&mut None);
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
        b.run_all::<NoTimer>(&mut None);
        assert_eq!(*seen.lock().unwrap(), (0..MANY).collect::<Vec<_>>());
    }

    #[test]
    fn append_to_an_empty_buffer_and_take_free_blocks() {
        let mut a = Buffer::new();
        a.push(|| ());
        a.run_all::<NoTimer>(&mut None);
        assert_eq!(a.capacity_bytes(), BLOCK_BYTES);
        let mut b = Buffer::new();
        for _ in 0..MANY {
            b.push(|| ());
        }
        let held = b.capacity_bytes();
        a.append(&mut b);
        assert_eq!(b.capacity_bytes(), 0, "the chain moved");
        assert_eq!(a.capacity_bytes(), held + BLOCK_BYTES);
        a.run_all::<NoTimer>(&mut None);
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
        b.run_all::<NoTimer>(&mut None);
        b.trim(BLOCK_BYTES);
        assert_eq!(b.capacity_bytes(), BLOCK_BYTES);
        b.trim(0);
        assert_eq!(b.capacity_bytes(), 0);
        b.push(|| {});
        assert_eq!(b.len(), 1);
    }
}
