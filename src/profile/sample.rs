//! Samples of async guards: acquisitions that may cross `.await` and
//! threads.
//!
//! An async guard's section is not a thread's: it starts on the thread
//! that calls `lock()`, may be released on another, and its bin is freed
//! where it is released (or by a reclaimer). So its sample travels with
//! the guard's bin instead of living in a thread's probe, and it is added
//! to its site's row among the exited threads' sums (readied at the
//! acquisition call, before the lock is taken) under the registry's lock,
//! allocating nothing. Which acquisitions are sampled is the calling
//! thread's countdown, as for its outermost sections.
//!
//! This file calls the profile's tables and clock.

use std::panic::Location;

use crate::profile::clock::now;
use crate::profile::table::{HELD, Key, LockKind, MOVED, Mark, Sample, WAITED, add_sample, ready};

/// A sampled async acquisition, from the acquisition call to the end of
/// its bin's free.
#[derive(Debug)]
pub(crate) struct AsyncSample {
    mark: Mark,
    /// The acquisition call, the lock held, the release (clock ticks;
    /// `t2` is 0 until the release is noted).
    t0: u64,
    t1: u64,
    t2: u64,
}

impl AsyncSample {
    /// A sample of the acquisition called at `at`, of `kind`, starting
    /// now. Readies the site's row: it may allocate, so it is called
    /// before the lock is taken.
    pub(crate) fn begin(at: &'static Location<'static>, kind: LockKind) -> Box<AsyncSample> {
        let mark = ready(Some(Key { at, kind }));
        let t0 = now();
        Box::new(AsyncSample {
            mark,
            t0,
            t1: t0,
            t2: 0,
        })
    }

    /// The lock is held now.
    pub(crate) fn acquired(&mut self) {
        self.t1 = now();
    }

    /// The lock is released now (its hold ends; the free may come later,
    /// as after `unlock().await`'s yield).
    pub(crate) fn note_release(&mut self) {
        self.t2 = now();
    }

    /// The bin's `values` items are about to be freed (the lock released
    /// now, unless [`note_release`](Self::note_release) said when). The
    /// returned [`AsyncFreeing`] times the free and adds the sample when
    /// dropped (also while a panic from a free unwinds).
    pub(crate) fn released(mut self: Box<Self>, values: u64) -> AsyncFreeing {
        let start = now();
        if self.t2 == 0 {
            self.t2 = start;
        }
        AsyncFreeing {
            start,
            sample: self,
            values,
        }
    }
}

/// A sampled async guard's bin being freed: see [`AsyncSample::released`].
#[derive(Debug)]
pub(crate) struct AsyncFreeing {
    sample: Box<AsyncSample>,
    values: u64,
    /// When the free started (clock ticks).
    start: u64,
}

impl AsyncFreeing {
    /// The mark a bin that leaves the thread carries: its free is then
    /// added to the site when a reclaimer or the executor has done it.
    pub(crate) fn mark(&self) -> Mark {
        self.sample.mark
    }
}

impl Drop for AsyncFreeing {
    fn drop(&mut self) {
        let s = &self.sample;
        let mut sample = Sample::default();
        sample.times[WAITED] = s.t1.saturating_sub(s.t0);
        sample.times[HELD] = s.t2.saturating_sub(s.t1);
        sample.times[MOVED] = now().saturating_sub(self.start);
        sample.values = self.values;
        add_sample(s.mark, &sample);
    }
}
