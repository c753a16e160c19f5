//! Blocks: the fixed-size memory a buffer's items live in.
//!
//! A block is a link to the next block and then a run of 16-byte,
//! 16-aligned slots. This file owns their layout and their allocation; the
//! buffer (`buffer/`) decides what goes in them; the layout of an item
//! (where its payload starts, how many slots it takes) is computed here.
//! It calls nothing in freeq but the `sync` shim's `scaled`.

use std::alloc::{self, Layout};
use std::mem::{self, MaybeUninit};

use crate::sync::scaled;

/// Size and alignment of one slot.
pub(crate) const SLOT: usize = 16;
/// Largest payload, in bytes, stored inline; anything larger is boxed.
pub(crate) const MAX_INLINE: usize = 256;
/// Slots in one block.
pub(crate) const BLOCK_SLOTS: usize = scaled(255, 31);
/// Slots the largest inline item takes (header and a 16-aligned payload).
pub(crate) const MAX_ITEM_SLOTS: usize = 1 + MAX_INLINE / SLOT;
/// Bytes one block takes, its link included.
pub(crate) const BLOCK_BYTES: usize = mem::size_of::<Block>();

/// Bytes an item header takes: a pointer's size (8 on 64-bit targets, 4
/// on 32-bit ones).
pub(crate) const HEADER: usize = mem::size_of::<*const ()>();

/// Byte offset of an `F` payload from its header: the first offset past
/// the header that `F`'s alignment allows (headers are slot-aligned). For
/// alignments up to 16 that is within the header's slot, or the next slot.
pub(crate) const fn payload_offset<F>() -> usize {
    HEADER.next_multiple_of(mem::align_of::<F>())
}

/// Slots an `F` item takes, header included.
pub(crate) const fn item_slots<F>() -> usize {
    let slots = (payload_offset::<F>() + mem::size_of::<F>()).div_ceil(SLOT);
    if slots == 0 { 1 } else { slots }
}

/// Whether an `F` is boxed before it is stored: too large or too aligned
/// to sit in the slots.
pub(crate) const fn boxed<F>() -> bool {
    mem::size_of::<F>() > MAX_INLINE || mem::align_of::<F>() > SLOT
}

/// One slot: where an item header, or part of a payload, goes.
#[repr(C, align(16))]
pub(crate) struct Slot(MaybeUninit<[u8; SLOT]>);

/// One link of a buffer's chain: the next block, then the slots.
#[repr(C, align(16))]
pub(crate) struct Block {
    pub(crate) next: *mut Block,
    slots: [Slot; BLOCK_SLOTS],
}

// Every item, and a jump header after it, fits in one block.
const _: () = assert!(MAX_ITEM_SLOTS < BLOCK_SLOTS);
const _: () = assert!(mem::size_of::<Slot>() == SLOT && mem::align_of::<Slot>() == SLOT);
const _: () = assert!(mem::size_of::<Block>() == (BLOCK_SLOTS + 1) * SLOT);

/// Allocates one block. No buffer may be borrowed across this call: the
/// global allocator may itself use freeq.
pub(crate) fn alloc_block() -> *mut Block {
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
pub(crate) unsafe fn dealloc_block(block: *mut Block) {
    // SAFETY: (5) allocated by `alloc_block` with this layout (the
    // caller's promise).
    unsafe { alloc::dealloc(block.cast(), Layout::new::<Block>()) }
}

/// The first slot of `block`.
///
/// # Safety
/// `block` points at a live block.
#[inline(always)]
pub(crate) unsafe fn first_slot(block: *mut Block) -> *mut Slot {
    // SAFETY: (6) in bounds of the live block (the caller's promise); no
    // reference is created.
    unsafe { (&raw mut (*block).slots).cast::<Slot>() }
}
