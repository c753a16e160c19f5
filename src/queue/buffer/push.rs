//! Storing items: the push paths, and linking a block when the tail
//! block is full.
//!
//! Growth links one more block and never moves an item; a push that
//! allocates holds no reference to the buffer across the allocator, which
//! may itself push to the same buffer. This file calls nothing else in
//! freeq but `block.rs`, the [`Buffer`] of `mod.rs` and the item header
//! of `run.rs`.

use std::any::TypeId;
use std::ptr;

use crate::queue::block::{
    BLOCK_SLOTS, Block, HEADER, MAX_ITEM_SLOTS, SLOT, Slot, alloc_block, boxed, first_slot,
    item_slots, payload_offset,
};
use crate::queue::buffer::Buffer;
use crate::queue::buffer::run::{Header, JUMP, Meta, run_items};

impl Buffer {
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
        // SAFETY: (1) a momentary read (the caller's promise).
        unsafe { (*buf).room() >= slots * SLOT }
    }

    /// Appends `f`; it runs when its turn comes in a drain.
    #[inline]
    pub(crate) fn push<F: FnOnce() + Send + 'static>(&mut self, f: F) {
        // SAFETY: (2) `self` is a unique reference, so nothing else reaches
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
            // SAFETY: (3) the caller's promise, passed on.
            unsafe { Buffer::push_growing(buf, boxed) }
        } else {
            // SAFETY: (4) as in (3).
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
            // SAFETY: (5) as in (3).
            unsafe { Buffer::push_raw(buf, f) }
        } else {
            // SAFETY: (6) the caller's promises: the buffer is live and
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
        // SAFETY: (7) `buf` is live (the caller's promise); the read is
        // momentary.
        while unsafe { (*buf).room() } < item_slots::<F>() * SLOT {
            // SAFETY: (8) the caller's promise, passed on.
            unsafe { Buffer::grow(buf) };
        }
        // SAFETY: (9) the loop left room; the caller's promise otherwise.
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
        // SAFETY: (10) no other reference to the buffer is live now (the
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
        // SAFETY: (11) a momentary borrow; popping runs nothing.
        let mut block = unsafe { (*buf).pop_free() };
        if block.is_null() {
            block = alloc_block();
            // SAFETY: (12) the allocator has returned; a momentary borrow.
            let b = unsafe { &mut *buf };
            if b.room() >= MAX_ITEM_SLOTS * SLOT {
                // A push inside the allocator linked a block already.
                // SAFETY: (13) `block` is a fresh block, owned here.
                unsafe { b.push_free(block) };
                return;
            }
        }
        // SAFETY: (14) a momentary borrow; `block` is owned here and empty.
        unsafe { (*buf).link(block) };
    }

    /// Makes `block` (owned by the caller, empty) the new tail block.
    ///
    /// # Safety
    /// `block` is a live block that no buffer owns.
    unsafe fn link(&mut self, block: *mut Block) {
        // SAFETY: (15) `block` is live and unowned (the caller's promise);
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
}
