//! A thread's probe: which of its outermost sections it samples, and the
//! clock readings of the one it is timing.
//!
//! The probe lives in the thread's freeq state, beside its section depth.
//! Off, the queue layer asks only [`on`] (one relaxed load of a static)
//! before a lock is taken and [`Probe::is_open`] (a byte of the state the
//! drain reads anyway) when the outermost section closes. On, a section
//! the countdown picks is timed at four points: the acquisition call
//! ([`Probe::begin`], before the lock is taken; the thread's table is
//! registered there too, so nothing is allocated under the lock), the lock
//! held ([`Probe::acquired`]), the outermost release and the end of the
//! drain that follows ([`Closing`]).
//!
//! This file calls the profile's tables and switches, and the `sync` shim.

use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::profile::clock::now;
use crate::profile::table::{
    self, EVERY, HELD, Key, LockKind, MOVED, Mark, Sample, Table, UNSET, WAITED, add_offloaded,
};
use crate::sync::Cell;

/// No sample under way.
const IDLE: u8 = 0;
/// A sampled acquisition is under way: the lock is not held yet.
const PENDING: u8 = 1;
/// The sampled section is open.
const OPEN: u8 = 2;

/// Whether sampling may be on: the only test on the path of a section
/// when the profile is off. True before the environment was read.
#[inline(always)]
pub(crate) fn on() -> bool {
    EVERY.load(Relaxed) != 0
}

/// A thread's sampling state. No destructor: the thread's exit path calls
/// [`Probe::exit`].
pub(crate) struct Probe {
    /// Outermost sections to let pass before the next sample.
    countdown: Cell<u32>,
    phase: Cell<u8>,
    /// The sampled section's slot in the thread's table.
    slot: Cell<usize>,
    /// The acquisition call, and the lock held (clock ticks).
    t0: Cell<u64>,
    t1: Cell<u64>,
    /// The thread's table (from `Arc::into_raw`), null until the thread
    /// first samples.
    table: Cell<*const Table>,
    /// The last site looked up, and its slot.
    last: Cell<Option<(Key, usize)>>,
    /// The thread's exit path ran: it samples nothing more.
    gone: Cell<bool>,
    /// The slot of the sampled section whose drain runs now, or
    /// [`NOT_DRAINING`].
    draining: Cell<usize>,
}

/// [`Probe::draining`] when no sampled drain runs.
const NOT_DRAINING: usize = usize::MAX;

impl Probe {
    pub(crate) const fn new() -> Self {
        Probe {
            countdown: Cell::new(0),
            phase: Cell::new(IDLE),
            slot: Cell::new(0),
            t0: Cell::new(0),
            t1: Cell::new(0),
            table: Cell::new(std::ptr::null()),
            last: Cell::new(None),
            gone: Cell::new(false),
            draining: Cell::new(NOT_DRAINING),
        }
    }

    /// The thread's table, registered on first use (allocates: call it
    /// before a lock is taken).
    fn table(&self) -> Option<&Table> {
        if self.gone.get() {
            return None;
        }
        let mut t = self.table.get();
        if t.is_null() {
            t = Arc::into_raw(table::register());
            self.table.set(t);
        }
        // SAFETY: (1) `t` came from `Arc::into_raw` and this thread's
        // reference is given up only by `exit`, which clears the pointer
        // first; the reference lives no longer than `&self`, on this
        // thread.
        Some(unsafe { &*t })
    }

    /// With sampling on (or not yet read from the environment): reads the
    /// environment if need be and registers the thread's table, so that
    /// its first sample allocates nothing. For `prepare_thread`.
    #[cold]
    #[inline(never)]
    pub(crate) fn ready(&self) {
        if every() != 0 {
            let _ = self.table();
        }
    }

    /// An outermost section is about to be acquired (the lock not taken
    /// yet) at `at`: whether the countdown samples it. If so, its clock
    /// starts now. Called only when [`on`] and no section is open; a
    /// section the countdown passes over costs a decrement.
    #[inline]
    pub(crate) fn begin(&self, at: &'static Location<'static>, kind: LockKind) -> bool {
        let left = self.countdown.get();
        if left != 0 && left < EVERY.load(Relaxed) {
            self.countdown.set(left - 1);
            return false;
        }
        self.sample(at, kind)
    }

    /// [`begin`](Self::begin) when the countdown has run out.
    #[cold]
    #[inline(never)]
    fn sample(&self, at: &'static Location<'static>, kind: LockKind) -> bool {
        self.phase.set(IDLE);
        if !self.take_turn() {
            return false;
        }
        let Some(table) = self.table() else {
            return false;
        };
        let key = Key { at, kind };
        let slot = match self.last.get() {
            Some((k, slot)) if k == key => slot,
            _ => {
                let slot = table.find(key);
                self.last.set(Some((key, slot)));
                slot
            }
        };
        self.slot.set(slot);
        self.phase.set(PENDING);
        self.t0.set(now());
        true
    }

    /// Whether the countdown samples the acquisition called now: an
    /// outermost section's ([`begin`](Self::begin)) or an async guard's
    /// (whose sample travels with the guard), on the same countdown.
    pub(crate) fn take_turn(&self) -> bool {
        let every = every();
        if every == 0 || self.gone.get() {
            return false;
        }
        let left = self.countdown.get();
        if left != 0 && left < every {
            self.countdown.set(left - 1);
            return false;
        }
        self.countdown.set(every - 1);
        true
    }

    /// The sampled acquisition holds its lock now.
    pub(crate) fn acquired(&self) {
        if self.phase.get() == PENDING {
            self.t1.set(now());
            self.phase.set(OPEN);
        }
    }

    /// The sampled section opened with nothing to wait for (a `section()`,
    /// a guard taken before): no wait.
    pub(crate) fn opened(&self) {
        if self.phase.get() == PENDING {
            self.t1.set(self.t0.get());
            self.phase.set(OPEN);
        }
    }

    /// The sampled acquisition failed (a `try_lock`): no sample.
    pub(crate) fn cancel(&self) {
        if self.phase.get() == PENDING {
            self.phase.set(IDLE);
        }
    }

    /// Whether a sampled section is open.
    #[inline(always)]
    pub(crate) fn is_open(&self) -> bool {
        self.phase.get() == OPEN
    }

    /// The thread's outermost section has closed: if it was sampled, its
    /// hold ends now, and the returned [`Closing`] records it when dropped
    /// (after the drain, if one follows).
    pub(crate) fn close(&self) -> Option<Closing<'_>> {
        if !self.is_open() {
            return None;
        }
        self.phase.set(IDLE);
        let t2 = now();
        let (t0, t1) = (self.t0.get(), self.t1.get());
        let mut sample = Sample::default();
        sample.times[WAITED] = t1.saturating_sub(t0);
        sample.times[HELD] = t2.saturating_sub(t1);
        Some(Closing {
            probe: self,
            slot: self.slot.get(),
            t2,
            sample,
            base: None,
        })
    }

    /// In the drain of a sampled section: the mark a batch leaving the
    /// thread (for a reclaimer or the user's executor) carries, so that
    /// its free is added to the section's site ([`Freeing`]). May
    /// allocate, once per site: called in drains only, after the unlock.
    pub(crate) fn drain_mark(&self) -> Option<Mark> {
        let slot = self.draining.get();
        let t = self.table.get();
        if slot == NOT_DRAINING || t.is_null() {
            return None;
        }
        // SAFETY: (4) as in (1).
        Some(unsafe { &*t }.mark(slot))
    }

    /// Thread exit: the thread's table joins the exited threads' sums.
    pub(crate) fn exit(&self) {
        self.gone.set(true);
        self.phase.set(IDLE);
        let t = self.table.replace(std::ptr::null());
        if !t.is_null() {
            // SAFETY: (2) `t` came from `Arc::into_raw` and is turned back
            // once: the pointer was cleared above.
            let table = unsafe { Arc::from_raw(t) };
            table::unregister(&table);
        }
    }
}

/// The sampling rate, reading the environment the first time.
fn every() -> u32 {
    match EVERY.load(Relaxed) {
        UNSET => crate::profile::start_from_env(),
        every => every,
    }
}

/// A sampled section whose lock is released: records the sample when
/// dropped, also while a panic from its drain unwinds.
pub(crate) struct Closing<'a> {
    probe: &'a Probe,
    slot: usize,
    /// The outermost release.
    t2: u64,
    sample: Sample,
    /// The thread's counts of items deferred and frees held when the drain
    /// started; `None` if no drain ran.
    base: Option<(u64, u64)>,
}

impl Closing<'_> {
    /// A drain starts, with the thread's running counts of items deferred
    /// and of frees held.
    pub(crate) fn drain_starts(&mut self, deferred: u64, frees: u64) {
        self.base = Some((deferred, frees));
        self.probe.draining.set(self.slot);
    }

    /// The drain is done: the same counts, before they are published.
    pub(crate) fn drain_ends(&mut self, deferred: u64, frees: u64) {
        if let Some((d, f)) = self.base {
            self.sample.values = deferred.wrapping_sub(d);
            self.sample.frees = frees.wrapping_sub(f);
        }
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.probe.draining.set(NOT_DRAINING);
        if self.base.is_some() {
            self.sample.times[MOVED] = now().saturating_sub(self.t2);
        }
        let t = self.probe.table.get();
        if !t.is_null() {
            // SAFETY: (3) as in (1).
            unsafe { &*t }.record(self.slot, &self.sample);
        }
    }
}

/// Times the free of a batch a sampled section handed off, wherever it
/// runs (a reclaimer, the user's executor), and adds it to the section's
/// site when dropped: also while a panic from a free unwinds.
pub(crate) struct Freeing {
    mark: Option<Mark>,
    start: u64,
}

impl Freeing {
    /// Starts timing the free of a batch marked `mark` (nothing if `None`).
    #[inline]
    pub(crate) fn start(mark: Option<Mark>) -> Freeing {
        let start = if mark.is_some() { now() } else { 0 };
        Freeing { mark, start }
    }
}

impl Drop for Freeing {
    #[inline]
    fn drop(&mut self) {
        if let Some(mark) = self.mark.take() {
            add_offloaded(mark, now().saturating_sub(self.start));
        }
    }
}
