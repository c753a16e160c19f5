//! Running a buffer's items: each item's header, the loop that runs a
//! run of one type, and the walk over runs.
//!
//! Each item starts with a header, a pointer to its type's static
//! [`Meta`]; a jump header (the static [`JUMP`]) ends a block's items and
//! names where the next block's items start. Running takes items oldest first
//! and recycles each block it leaves. This file calls nothing else in
//! freeq but `block.rs`, `hooks.rs`, `panic.rs` and the [`Buffer`] of
//! `mod.rs`.

use std::any::TypeId;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use crate::queue::block::{HEADER, SLOT, Slot, first_slot, item_slots, payload_offset};
use crate::queue::buffer::Buffer;
use crate::queue::hooks::{DropTimer, Watch};
use crate::queue::panic::{Panic, keep_first};

/// What freeq knows about one item type: one `'static` instance per type,
/// so the header before each payload is a single pointer store.
pub(super) struct Meta {
    /// Runs the front item and the items of the same type right behind it.
    pub(super) run: unsafe fn(&mut Buffer, Option<Watch<'_>>) -> bool,
    /// Slots the item occupies, header included.
    pub(super) slots: usize,
    /// Tells a run of same-typed items where it ends, and indexes the
    /// type's learned drop cost.
    pub(super) type_id: TypeId,
}

/// Written at the start of each item.
pub(super) type Header = &'static Meta;

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
pub(super) static JUMP: Meta = Meta {
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
pub(super) unsafe fn run_items<F: FnOnce() + 'static>(
    buf: &mut Buffer,
    watch: Option<Watch<'_>>,
) -> bool {
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

impl Buffer {
    /// The buffer has just been emptied: write from the start of the tail
    /// block again, which is also the head block.
    #[inline(always)]
    fn rewind(&mut self) {
        debug_assert!(self.is_empty() && self.head_block == self.tail_block);
        // SAFETY: (4) with items taken from it, the tail block is live.
        let start = unsafe { first_slot(self.tail_block) };
        self.head = start;
        self.tail = start;
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
                    // SAFETY: (5) `head != tail`, so a header written by
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
                            // SAFETY: (6) as in (5).
                            let stopped = unsafe { !(header.run)(self, watch) };
                            T::finish(header.type_id, mark, self.ran - before);
                            stopped
                        }
                        // SAFETY: (7) as in (5).
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

    /// Calls `f` with each run of same-typed items, oldest first: its
    /// type and its length, until `f` returns `false`. Along a run, the
    /// next position depends on no read of the type's `Meta`, and nothing
    /// but a count is done per item. O(items): meant for after the unlock.
    pub(crate) fn runs(&self, mut f: impl FnMut(TypeId, usize) -> bool) {
        let mut at = self.head;
        let mut run: Option<(Header, usize)> = None;
        let mut slots = 1;
        while at != self.tail {
            // SAFETY: (8) between `head` and `tail` lie items written by
            // `push_raw`, each starting with its header, and jump headers
            // that lead from the end of one block's items to the start of
            // the next block's: a header sits at every position visited.
            let header: Header = unsafe { at.cast::<Header>().read() };
            if ptr::eq(header, &JUMP) {
                // SAFETY: (9) a jump header's second word is the position
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
            // SAFETY: (10) the item lies inside its block; `at` ends at
            // most at the block's `limit` slot (a jump header, or `tail`).
            at = unsafe { at.add(slots) };
        }
        if let Some((h, n)) = run {
            f(h.type_id, n);
        }
    }
}
