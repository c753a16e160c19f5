//! Buffers: type-erased, append-only FIFOs of deferred items.
//!
//! This folder and `block.rs` hold freeq's only serious `unsafe`. A
//! [`Buffer`] is a FIFO of items in a chain of fixed-size blocks of
//! 16-byte, 16-aligned slots. Each item starts with a header (a pointer to
//! its type's static [`Meta`](run::Meta): 8 bytes on 64-bit targets, 4 on
//! 32-bit ones); the payload is packed right behind the header, at the
//! first offset its alignment allows. On 64-bit targets a payload with
//! alignment up to 8 starts at byte 8 of the header's slot, so values of up
//! to 8 bytes take one slot (16 bytes), and a 16-aligned payload starts at
//! the next slot. On 32-bit targets a payload with alignment up to 4 starts
//! at byte 4 (values of up to 12 bytes take one slot), an 8-aligned one at
//! byte 8 (up to 8 bytes in one slot) and a 16-aligned one at the next
//! slot. Any `FnOnce()` up to `MAX_INLINE` (256) bytes with alignment up to
//! 16 is stored with no allocation of its own; larger or over-aligned
//! closures are boxed first.
//!
//! Growth links one more block and never moves an item: when the tail
//! block is full, a *jump* header written in its last free slot sends the
//! reader on to the next block. Drained blocks go to the buffer's free list
//! and are reused, so a warmed-up buffer accepts items without touching the
//! allocator, and a whole batch changes hands in O(1) (its chain of blocks).
//! Items run oldest first.
//!
//! A run of items of one type can be timed as it is freed: whoever runs
//! a buffer supplies a [`DropTimer`](crate::queue::hooks::DropTimer) (the
//! cost model above the queue), and the buffer only calls it.
//!
//! The buffer's parts: this file, the [`Buffer`] and what it counts;
//! `run.rs`, an item's header and the running and walking of items;
//! `push.rs`, storing an item and linking a block for it; `chain.rs`,
//! blocks changing hands (the free list, whole chains appended in O(1),
//! reserving and trimming). This file calls nothing else in freeq but
//! `block.rs`, `hooks.rs` and `panic.rs`.

mod chain;
mod push;
mod run;

use std::mem;
use std::ptr;

use crate::queue::block::{BLOCK_BYTES, Block, MAX_ITEM_SLOTS, SLOT, Slot};
use crate::queue::hooks::NoTimer;
use crate::queue::panic::resume;

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

// SAFETY: (1) every item enters through `push`/`push_raw`, which require
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
    use crate::queue::block::{BLOCK_SLOTS, HEADER, MAX_INLINE, item_slots, payload_offset};
    use crate::queue::hooks::{NoTimer, Watch};
    use crate::sync::Cell;
    use std::mem;
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
