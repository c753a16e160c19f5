//! Type-erased, append-only storage for deferred items.
//!
//! This file holds freeq's only serious `unsafe`. A [`Buffer`] is a growable
//! array of 16-byte, 16-aligned slots. Each item takes one header slot (the
//! function that runs it and its length in slots) followed by its payload,
//! written in place: any `FnOnce()` up to [`MAX_INLINE`] bytes with alignment
//! up to 16 is stored with no allocation of its own, so a warmed-up buffer
//! accepts items without touching the allocator. Larger or over-aligned
//! closures are boxed first. Items run oldest first.

use std::alloc::{self, Layout};
use std::any::{Any, TypeId};
use std::mem::{self, MaybeUninit};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use crate::sync::{scaled, thread, Cell};

/// Size and alignment of one slot.
pub(crate) const SLOT: usize = 16;
/// Largest payload, in bytes, stored inline; anything larger is boxed.
pub(crate) const MAX_INLINE: usize = 256;
/// Slots allocated the first time a buffer grows.
const MIN_SLOTS: usize = scaled(64, 4);

/// A panic payload caught while freeing an item.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

#[repr(C, align(16))]
struct Slot(MaybeUninit<[u8; SLOT]>);

/// What freeq knows about one item type: one `'static` instance per type,
/// so the header before each payload is a single pointer store.
struct Meta {
    /// Runs the front item and the items of the same type right behind it.
    run: unsafe fn(&mut Buffer, Option<Watch<'_>>) -> bool,
    /// Slots the item occupies, header included.
    slots: usize,
    /// Tells a run of same-typed items where it ends.
    type_id: TypeId,
}

/// Written in the slot before each payload.
type Header = &'static Meta;

const _: () = assert!(mem::size_of::<Header>() <= SLOT && mem::align_of::<Header>() <= SLOT);
const _: () = assert!(mem::size_of::<Slot>() == SLOT && mem::align_of::<Slot>() == SLOT);

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
/// per item). Each item counts as taken before it runs, so one that panics
/// is not run again. Returns `false` if `watch` stopped the run.
///
/// # Safety
/// The front item of `buf` must be an `F` written by
/// [`Buffer::push_inline`].
unsafe fn run_items<F: FnOnce() + 'static>(buf: &mut Buffer, watch: Option<Watch<'_>>) -> bool {
    let slots = 1 + payload_slots::<F>();
    loop {
        // SAFETY: (1) the front item is an `F` (the caller's promise on the
        // first pass, the type check below on later ones); its payload
        // follows its header slot, 16-aligned because `push_inline` only
        // stores types with alignment <= SLOT at a slot boundary. Moving
        // `head` past it before reading means it is read exactly once.
        let f = unsafe {
            let payload = buf.ptr.as_ptr().add(buf.head + 1).cast::<F>();
            buf.head += slots;
            buf.len -= 1;
            payload.read()
        };
        let more = buf.len != 0;
        if !more {
            buf.head = 0;
            buf.tail = 0;
        }
        f();
        if Watch::hit(watch) {
            return false;
        }
        if !more {
            return true;
        }
        // SAFETY: (2) `len > 0`, so a header written by `push_inline` sits at
        // `head`; `f` could not touch `buf`, which is borrowed here.
        let next: Header = unsafe { buf.ptr.as_ptr().add(buf.head).cast::<Header>().read() };
        if next.type_id != TypeId::of::<F>() {
            return true;
        }
    }
}

/// Number of payload slots an `F` needs.
const fn payload_slots<F>() -> usize {
    mem::size_of::<F>().div_ceil(SLOT)
}

/// A FIFO of type-erased `FnOnce()` items in one reusable allocation.
// `repr(C)` keeps `tail` and `len` apart: adjacent, the compiler merges
// their updates into one vector read-modify-write, and the next push's
// scalar read of `tail` then misses store forwarding.
#[repr(C)]
pub(crate) struct Buffer {
    ptr: NonNull<Slot>,
    /// First free slot.
    tail: usize,
    /// Allocated slots.
    cap: usize,
    /// First slot of the oldest item.
    head: usize,
    /// Items in `head..tail`.
    len: usize,
}

// SAFETY: (2) every item enters through `push`, which requires `F: Send`, and
// the buffer owns its allocation exclusively; moving the whole buffer to
// another thread moves only `Send` values.
unsafe impl Send for Buffer {}

impl Buffer {
    /// An empty buffer; allocates nothing until the first push.
    pub(crate) const fn new() -> Self {
        Buffer {
            ptr: NonNull::dangling(),
            cap: 0,
            head: 0,
            tail: 0,
            len: 0,
        }
    }

    /// Items held.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.cap * SLOT
    }

    /// Appends `f`; it runs when its turn comes in a drain.
    #[inline]
    pub(crate) fn push<F: FnOnce() + Send + 'static>(&mut self, f: F) {
        if mem::size_of::<F>() > MAX_INLINE || mem::align_of::<F>() > SLOT {
            let boxed = Box::new(f);
            self.push_inline(boxed);
        } else {
            self.push_inline(f);
        }
    }

    #[inline(always)]
    fn push_inline<F: FnOnce() + 'static>(&mut self, f: F) {
        debug_assert!(mem::align_of::<F>() <= SLOT);
        let meta: Header = const {
            &Meta {
                run: run_items::<F>,
                slots: 1 + payload_slots::<F>(),
                type_id: TypeId::of::<F>(),
            }
        };
        let slots = meta.slots;
        if self.cap - self.tail < slots {
            self.grow(slots);
        }
        // SAFETY: (3) `grow` guarantees `tail + slots <= cap`, so the header
        // slot and `payload_slots::<F>()` payload slots after it lie inside the
        // allocation and hold no live item (live items are in `head..tail`).
        // Slots are 16-aligned and `F`'s alignment is at most 16, so both
        // writes are aligned. For a zero-sized `F` the payload pointer may be
        // one past the end, which is fine for a zero-sized write.
        unsafe {
            let base = self.ptr.as_ptr().add(self.tail);
            base.cast::<Header>().write(meta);
            base.add(1).cast::<F>().write(f);
        }
        self.tail += slots;
        self.len += 1;
    }

    /// Makes room for `slots` more slots at the tail.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, slots: usize) {
        let live = self.tail - self.head;
        if self.head > 0 && live + slots <= self.cap {
            // SAFETY: (4) both ranges lie inside the allocation; `ptr::copy`
            // allows overlap. Items are plain bytes until run, so moving them
            // is a valid Rust move.
            unsafe { ptr::copy(self.ptr.as_ptr().add(self.head), self.ptr.as_ptr(), live) };
            self.head = 0;
            self.tail = live;
            return;
        }
        let new_cap = (self.cap * 2).max(live + slots).max(MIN_SLOTS);
        self.reallocate(new_cap);
    }

    /// Moves the live slots into a fresh allocation of `new_cap >= live`
    /// slots (or frees everything when `new_cap` is zero).
    fn reallocate(&mut self, new_cap: usize) {
        let live = self.tail - self.head;
        debug_assert!(new_cap >= live);
        let new_ptr = if new_cap == 0 {
            NonNull::dangling()
        } else {
            let layout = Layout::array::<Slot>(new_cap).expect("freeq: queue capacity overflow");
            // SAFETY: (5) `layout` has a non-zero size because `new_cap > 0`.
            let raw = unsafe { alloc::alloc(layout) };
            let Some(new_ptr) = NonNull::new(raw.cast::<Slot>()) else {
                alloc::handle_alloc_error(layout)
            };
            // SAFETY: (6) the source range `head..tail` is inside the old
            // allocation, the destination `0..live` inside the new one, and
            // the two allocations are distinct.
            unsafe {
                ptr::copy_nonoverlapping(self.ptr.as_ptr().add(self.head), new_ptr.as_ptr(), live)
            };
            new_ptr
        };
        self.free_allocation();
        self.ptr = new_ptr;
        self.cap = new_cap;
        self.head = 0;
        self.tail = live;
    }

    fn free_allocation(&mut self) {
        if self.cap > 0 {
            // SAFETY: (7) `ptr` was allocated by `reallocate` with exactly
            // this layout (`cap` slots) and has not been freed.
            unsafe {
                alloc::dealloc(
                    self.ptr.as_ptr().cast(),
                    Layout::array::<Slot>(self.cap).expect("layout was valid when allocated"),
                )
            };
            self.cap = 0;
            self.ptr = NonNull::dangling();
        }
    }

    /// Runs items oldest first until the buffer is empty (returns `true`) or
    /// `watch` fires after an item (returns `false`). A panicking item
    /// counts as run; the first panic is kept in `first`, later ones dropped.
    pub(crate) fn run_until(
        &mut self,
        first: &mut Option<Panic>,
        watch: Option<Watch<'_>>,
    ) -> bool {
        loop {
            let run = panic::catch_unwind(AssertUnwindSafe(|| {
                while self.len != 0 {
                    // SAFETY: (8) `len > 0`, so a header written by
                    // `push_inline` sits at `head`, and `run` is the
                    // `run_items` of the type stored behind it.
                    let stopped = unsafe {
                        let header: Header =
                            self.ptr.as_ptr().add(self.head).cast::<Header>().read();
                        !(header.run)(self, watch)
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

    /// Moves all of `other`'s items after this buffer's, keeping their order.
    pub(crate) fn append(&mut self, other: &mut Buffer) {
        let slots = other.tail - other.head;
        if slots == 0 {
            return;
        }
        if self.cap - self.tail < slots {
            self.grow(slots);
        }
        // SAFETY: (10) `grow` made room for `slots` slots at `tail`; the
        // source range `other.head..other.tail` holds `other`'s items, in a
        // different allocation. Ownership of the items moves with the bytes:
        // `other` is emptied below, so nothing runs twice.
        unsafe {
            ptr::copy_nonoverlapping(
                other.ptr.as_ptr().add(other.head),
                self.ptr.as_ptr().add(self.tail),
                slots,
            )
        };
        self.tail += slots;
        self.len += other.len;
        other.head = 0;
        other.tail = 0;
        other.len = 0;
    }

    /// Grows the allocation to at least `bytes` (rounded to slots) now, so
    /// later pushes need not.
    pub(crate) fn reserve_bytes(&mut self, bytes: usize) {
        let slots = bytes.div_ceil(SLOT);
        if self.cap < slots {
            self.reallocate(slots);
        }
    }

    /// Keeps at most `max_bytes` of allocation once the buffer is empty.
    pub(crate) fn trim(&mut self, max_bytes: usize) {
        if self.is_empty() && self.capacity_bytes() > max_bytes {
            self.reallocate(max_bytes / SLOT);
        }
    }
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
        self.free_allocation();
        resume(first);
    }
}

/// Stores `payload` as the first panic, or drops it if one is kept already.
pub(crate) fn keep_first(first: &mut Option<Panic>, payload: Panic) {
    if first.is_none() {
        *first = Some(payload);
    } else {
        drop_quietly(payload);
    }
}

/// Drops a panic payload, swallowing a panic from its own destructor.
pub(crate) fn drop_quietly(payload: Panic) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
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

    #[test]
    fn fifo_order_and_reuse() {
        let seen = log();
        let mut b = Buffer::new();
        for round in 0..3 {
            for i in 0..100u32 {
                let s = seen.clone();
                b.push(move || s.lock().unwrap().push(i));
            }
            assert_eq!(b.len(), 100);
            let cap = b.capacity_bytes();
            b.run_all(&mut None);
            assert!(b.is_empty());
            assert_eq!(b.capacity_bytes(), cap, "round {round} kept its memory");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 300);
        assert!(seen.chunks(100).all(|c| c.iter().copied().eq(0..100)));
    }

    #[test]
    fn sizes_and_alignments() {
        #[repr(align(16))]
        struct A16([u8; 48]);
        #[repr(align(64))]
        struct A64(u8);
        let mut b = Buffer::new();
        let total = Arc::new(Mutex::new(0usize));
        let t = total.clone();
        b.push(move || *t.lock().unwrap() += 1); // one pointer: one payload slot
        let big = [7u8; 1000]; // past MAX_INLINE: boxed
        let t = total.clone();
        b.push(move || *t.lock().unwrap() += big.iter().map(|&x| x as usize).sum::<usize>());
        let a16 = A16([1; 48]);
        let t = total.clone();
        b.push(move || *t.lock().unwrap() += a16.0.len());
        let a64 = A64(5); // over-aligned: boxed
        let t = total.clone();
        b.push(move || *t.lock().unwrap() += a64.0 as usize);
        b.push(|| ()); // zero-sized: header only
        assert_eq!(b.len(), 5);
        b.run_all(&mut None);
        assert_eq!(*total.lock().unwrap(), 1 + 7000 + 48 + 5);
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
        for i in 0..4u32 {
            let s = seen.clone();
            a.push(move || {
                RAN.with(|r| r.set(r.get() + 1));
                s.lock().unwrap().push(i)
            });
            let s = seen.clone();
            b.push(move || s.lock().unwrap().push(10 + i));
        }
        RAN.with(|ran| {
            ran.set(0);
            let watch = Watch {
                cell: ran,
                limit: 2,
            };
            assert!(!a.run_until(&mut None, Some(watch)));
        });
        assert_eq!(a.len(), 2);
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(a.len(), 6);
        drop(a);
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3, 10, 11, 12, 13]);
    }

    #[test]
    fn runs_of_one_type_and_mixed_types_keep_fifo_order() {
        let seen = log();
        let mut b = Buffer::new();
        for i in 0..12u32 {
            let s = seen.clone();
            if i % 4 == 3 {
                let pad = [i as u64; 5];
                b.push(move || s.lock().unwrap().push(pad[0] as u32));
            } else {
                b.push(move || s.lock().unwrap().push(i));
            }
        }
        b.run_all(&mut None);
        assert_eq!(*seen.lock().unwrap(), (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn compaction_and_trim() {
        let mut b = Buffer::new();
        for _ in 0..MIN_SLOTS / 2 {
            b.push(|| {});
        }
        let cap = b.capacity_bytes();
        RAN.with(|ran| {
            ran.set(0);
            let mut c = Buffer::new();
            for _ in 0..MIN_SLOTS / 4 {
                c.push(|| RAN.with(|r| r.set(r.get() + 1)));
            }
            c.append(&mut b);
            let watch = Watch {
                cell: ran,
                limit: MIN_SLOTS / 4,
            };
            assert!(!c.run_until(&mut None, Some(watch)));
            b = c;
        });
        for _ in 0..MIN_SLOTS / 4 {
            b.push(|| {});
        }
        assert!(b.capacity_bytes() >= cap);
        b.run_all(&mut None);
        b.trim(0);
        assert_eq!(b.capacity_bytes(), 0);
        b.push(|| {});
        b.trim(0);
        assert_eq!(b.len(), 1, "trim never drops items");
    }
}
