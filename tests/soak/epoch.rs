//! Epoch retirement with pinned readers, and the check that a retired
//! value is never freed while a reader that could still see it is pinned.
//!
//! Every reader slot holds 0 while its reader is unpinned, and otherwise
//! the ticket the reader took right after pinning; it is cleared before
//! the reader unpins. A writer unlinks a value, then takes a ticket `r`
//! and stores it in the value, then retires it. Tickets come from one
//! `SeqCst` counter, so a reader with ticket `s < r` pinned before the
//! value was unlinked, and freeq (through crossbeam-epoch) must keep the
//! value alive until that reader unpins. The value's drop reads every
//! slot: a slot holding `0 < s < r` means such a reader is still pinned
//! (its slot is cleared before it unpins, and the free happens after the
//! unpin it waited for, so a reader that has left cannot still show its
//! ticket). A slot read as 0 or a later ticket proves nothing either way,
//! so the check has no false alarms; it misses only a free that races
//! with the reader's own clearing of its slot.

use std::sync::atomic::Ordering::{AcqRel, Acquire, SeqCst};
use std::sync::atomic::{AtomicI64, AtomicU64};

use freeq::epoch::{self as cepoch, Atomic, Owned};

use crate::values::{Rng, Tracked, fail};

/// Reader slots: as many readers as run at once.
pub const READERS: usize = 8;

static PINNED: [AtomicU64; READERS] = [const { AtomicU64::new(0) }; READERS];
static TICKET: AtomicU64 = AtomicU64::new(1);
/// Retired values not yet dropped.
static RETIRED_LIVE: AtomicI64 = AtomicI64::new(0);
/// Reads that found their value retired before they were done with it.
pub static HELD_RETIRED: AtomicU64 = AtomicU64::new(0);
/// Values retired.
pub static RETIRED: AtomicU64 = AtomicU64::new(0);
/// Reads made.
pub static READS: AtomicU64 = AtomicU64::new(0);

fn ticket() -> u64 {
    TICKET.fetch_add(1, SeqCst)
}

/// Retired values not yet dropped.
pub fn retired_live() -> i64 {
    RETIRED_LIVE.load(SeqCst)
}

/// Called by the drop of a value retired at `ticket`.
pub fn on_retired_drop(id: u64, retired: u64) {
    for (i, slot) in PINNED.iter().enumerate() {
        let s = slot.load(SeqCst);
        if s != 0 && s < retired {
            fail(format!(
                "retired value {id} (ticket {retired}) freed while reader {i}, \
                 pinned at ticket {s}, is still pinned"
            ));
        }
    }
    RETIRED_LIVE.fetch_sub(1, SeqCst);
}

/// A retired value: the pointer a reader may still hold, freed as the
/// `Owned` crossbeam allocated it as. (Never a `Box` while readers may
/// hold references into it.)
struct Retired(*mut Tracked);

// SAFETY: (1) `Retired` owns the `Tracked` it points to (unlinked from its
// slot, so no writer reaches it again); `Tracked` is `Send`.
unsafe impl Send for Retired {}

impl Drop for Retired {
    fn drop(&mut self) {
        // SAFETY: (2) the pointer came from `Owned::new` (through a slot) and
        // was unlinked by a swap, so this is its only owner; freeq runs
        // this drop once, after every reader pinned at the drain unpinned.
        drop(unsafe { Owned::from_raw(self.0) });
    }
}

/// Slots that lock-free readers read and writers replace.
pub struct Slots {
    slots: Vec<Atomic<Tracked>>,
}

impl Slots {
    pub fn new(n: usize, rng: &mut Rng) -> Self {
        Slots {
            slots: (0..n).map(|_| Atomic::new(rng.value())).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Puts `value` in slot `k` and retires what was there.
    pub fn replace(&self, k: usize, value: Tracked) {
        let old = {
            let guard = cepoch::pin();
            self.slots[k]
                .swap(Owned::new(value), AcqRel, &guard)
                .as_raw()
                .cast_mut()
        };
        retire(old);
    }

    /// Empties every slot, retiring what they held.
    pub fn retire_all(&self) {
        for slot in &self.slots {
            let old = {
                let guard = cepoch::pin();
                slot.swap(cepoch::Shared::null(), AcqRel, &guard)
                    .as_raw()
                    .cast_mut()
            };
            retire(old);
        }
    }

    /// One read under a pin: pin, register, load, hold the value a while,
    /// check it again, unregister, unpin.
    pub fn read(&self, reader: usize, rng: &mut Rng) {
        let guard = cepoch::pin();
        PINNED[reader].store(ticket(), SeqCst);
        let k = rng.below(self.slots.len() as u64) as usize;
        let p = self.slots[k].load(Acquire, &guard);
        // SAFETY: (3) `p` was loaded under `guard`; a value unlinked after
        // that is freed only once `guard` is gone (what this soak checks).
        if let Some(v) = unsafe { p.as_ref() } {
            v.check("read under a pin");
            for _ in 0..rng.below(256) {
                std::hint::spin_loop();
            }
            if rng.one_in(8) {
                std::thread::yield_now();
            }
            v.check("read under a pin, later");
            if v.is_retired() {
                HELD_RETIRED.fetch_add(1, SeqCst);
            }
            READS.fetch_add(1, SeqCst);
        }
        PINNED[reader].store(0, SeqCst);
        drop(guard);
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // Values still in their slots were never retired: freed here.
        for slot in &self.slots {
            // SAFETY: (4) `&mut self`: no reader or writer is left.
            let owned = unsafe { slot.load(Acquire, cepoch::unprotected()) };
            if !owned.is_null() {
                // SAFETY: (5) as in (4); the slot's value came from `Owned::new`.
                drop(unsafe { owned.into_owned() });
            }
        }
    }
}

/// Marks the unlinked value at `old` retired and retires it.
fn retire(old: *mut Tracked) {
    if old.is_null() {
        return;
    }
    // SAFETY: (6) `old` is unlinked but alive (readers may hold it too):
    // a shared reference is all this takes.
    unsafe { &*old }.mark_retired(ticket());
    RETIRED_LIVE.fetch_add(1, SeqCst);
    RETIRED.fetch_add(1, SeqCst);
    freeq::retire(Retired(old));
}

/// Lets the epoch collect until every retired value is dropped, or gives
/// up after `tries` rounds (the caller reports what is left).
pub fn collect_all(tries: usize) -> i64 {
    for _ in 0..tries {
        if retired_live() == 0 {
            break;
        }
        cepoch::pin().flush();
        let _ = std::panic::catch_unwind(freeq::quiesce);
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    retired_live()
}
