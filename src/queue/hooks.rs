//! What a run of items is handed from outside the buffer: the watch that
//! stops a drain when its thread re-enters a section, and the timer that
//! times runs of one type for the cost model above.
//!
//! Both are supplied by the buffer's callers; this file calls nothing in
//! freeq but the `sync` shim.

use std::any::TypeId;

use crate::sync::Cell;

/// Stops a drain between two items: once `cell` holds at least `limit`
/// (the owning thread has re-entered a section), the rest waits.
#[derive(Clone, Copy)]
pub(crate) struct Watch<'a> {
    pub(crate) cell: &'a Cell<usize>,
    pub(crate) limit: usize,
}

impl Watch<'_> {
    #[inline(always)]
    pub(crate) fn hit(watch: Option<Watch<'_>>) -> bool {
        watch.is_some_and(|w| w.cell.get() >= w.limit)
    }
}

/// Times runs of one item type as a buffer frees them. The buffer calls
/// it and knows nothing of what it learns; the layer above supplies it.
pub(crate) trait DropTimer {
    /// What [`DropTimer::start`] hands to [`DropTimer::finish`].
    type Mark;
    /// Called before a run of items of type `id`: `Some` times the run.
    fn start(id: TypeId) -> Option<Self::Mark>;
    /// Called after a timed run of `items` items of type `id`, unless one
    /// of them panicked.
    fn finish(id: TypeId, mark: Self::Mark, items: usize);
}

/// A [`DropTimer`] that times nothing.
pub(crate) struct NoTimer;

impl DropTimer for NoTimer {
    type Mark = ();
    #[inline(always)]
    fn start(_: TypeId) -> Option<()> {
        None
    }
    #[inline(always)]
    fn finish(_: TypeId, _: (), _: usize) {}
}
