//! Blocks changing hands: the free list, whole chains appended in O(1),
//! reserving ahead and trimming what is kept.
//!
//! Nothing here runs an item or allocates under a borrow of the buffer.
//! This file calls nothing else in freeq but `block.rs`, the [`Buffer`]
//! of `mod.rs` and the jump header of `run.rs`.

use std::ptr;

use crate::queue::block::{Block, HEADER, Slot, alloc_block, dealloc_block};
use crate::queue::buffer::Buffer;
use crate::queue::buffer::run::{Header, JUMP};

impl Buffer {
    /// # Safety
    /// `block` is a live block with no live item that no buffer owns.
    pub(super) unsafe fn push_free(&mut self, block: *mut Block) {
        // SAFETY: (1) the caller's promise.
        unsafe { (*block).next = self.free };
        self.free = block;
        self.free_blocks += 1;
    }

    pub(super) fn pop_free(&mut self) -> *mut Block {
        let block = self.free;
        if !block.is_null() {
            // SAFETY: (2) blocks on the free list are live.
            self.free = unsafe { (*block).next };
            self.free_blocks -= 1;
        }
        block
    }

    /// Moves the chain (empty of items) to the free list.
    fn release_chain(&mut self) {
        debug_assert!(self.is_empty());
        let mut block = self.head_block;
        while !block.is_null() {
            // SAFETY: (3) chain blocks are live; with no items left,
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
            // SAFETY: (4) `tail <= limit` in the tail block leaves the slot
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
        // SAFETY: (5) a free block, now owned by no buffer.
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
            // SAFETY: (6) a free block, now owned by no buffer.
            unsafe { self.push_free(block) };
        }
    }

    // Kept for the offload path, which reserves through `reserve_raw` here
    // but may hold a buffer of its own.
    #[allow(dead_code)]
    /// Makes sure the buffer holds at least `bytes` (rounded up to whole
    /// blocks), so later pushes need not allocate.
    pub(crate) fn reserve_bytes(&mut self, bytes: usize) {
        // SAFETY: (7) `self` is a unique reference.
        unsafe { Buffer::reserve_raw(self, bytes) }
    }

    /// Makes sure `*buf` [`is_ready`](Buffer::is_ready), allocating a free
    /// block if needed, with no reference held across allocation.
    ///
    /// # Safety
    /// As for [`Buffer::push_raw`].
    pub(crate) unsafe fn ready_raw(buf: *mut Buffer) {
        // SAFETY: (8) momentary borrows between allocations.
        while unsafe { !(*buf).is_ready() } {
            let block = alloc_block();
            // SAFETY: (9) a fresh block, handed to the buffer.
            unsafe { (*buf).push_free(block) };
        }
    }

    /// [`Buffer::reserve_bytes`] with no reference held across allocation.
    ///
    /// # Safety
    /// As for [`Buffer::push_raw`].
    pub(crate) unsafe fn reserve_raw(buf: *mut Buffer, bytes: usize) {
        // SAFETY: (10) momentary borrows between allocations.
        while unsafe { (*buf).capacity_bytes() } < bytes {
            let block = alloc_block();
            // SAFETY: (11) a fresh block, handed to the buffer.
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
            // SAFETY: (12) a free block, unlinked above; freed once.
            unsafe { dealloc_block(block) };
        }
    }
}
