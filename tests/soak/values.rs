//! Values with an identity, the table that counts their drops, the
//! failure record, and the switches that make the soak fail on purpose.

use std::fmt::Write as _;
use std::sync::Mutex as StdMutex;
use std::sync::OnceLock;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};

use crate::epoch;

/// A value's `magic` while it is alive, and after its drop.
const ALIVE: u64 = 0xA11C_E5A1_1CE5_A11C;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// Ids left when a cycle is told to end: every thread finishes its step
/// well within them.
const HEADROOM: u64 = 1 << 16;

/// The drop count of every id, allocated once, before the memory baseline.
struct Table {
    counts: Box<[AtomicU8]>,
    next: AtomicU64,
}

static TABLE: OnceLock<Table> = OnceLock::new();
/// Set when the ids of this cycle are nearly used up: the cycle ends.
static FULL: AtomicBool = AtomicBool::new(false);

fn table() -> &'static Table {
    TABLE.get().expect("values::init runs first")
}

/// Allocates the drop-count table: `capacity` ids per cycle.
pub fn init(capacity: usize) {
    let counts = (0..capacity).map(|_| AtomicU8::new(0)).collect();
    let _ = TABLE.set(Table {
        counts,
        next: AtomicU64::new(0),
    });
}

/// Whether this cycle's ids are nearly used up.
pub fn full() -> bool {
    FULL.load(Relaxed)
}

/// A fresh id. Past the headroom mark the cycle is told to end; past the
/// table's end the soak stops with an error (a step made far more values
/// than any step does).
fn next_id() -> u64 {
    let t = table();
    let id = t.next.fetch_add(1, Relaxed);
    let cap = t.counts.len() as u64;
    if id + HEADROOM >= cap {
        FULL.store(true, Relaxed);
    }
    assert!(id < cap, "soak: the id table ({cap}) overflowed");
    id
}

/// How many ids this cycle has made so far.
pub fn made() -> u64 {
    table().next.load(SeqCst).min(table().counts.len() as u64)
}

/// The drop count of `id`.
pub fn drops(id: u64) -> u8 {
    table().counts[id as usize].load(SeqCst)
}

/// What [`verify_and_reset`] found over one cycle's ids.
#[derive(Default, Debug)]
pub struct Verdict {
    pub values: u64,
    pub leaked: u64,
    pub doubled: u64,
}

/// Checks that every id made this cycle was dropped exactly once, records
/// a failure for each one that was not, and clears the table for the next
/// cycle.
pub fn verify_and_reset() -> Verdict {
    let t = table();
    let n = made();
    let mut v = Verdict {
        values: n,
        ..Verdict::default()
    };
    let mut leaked_ids = Vec::new();
    let mut doubled_ids = Vec::new();
    for id in 0..n {
        match t.counts[id as usize].swap(0, SeqCst) {
            1 => {}
            0 => {
                v.leaked += 1;
                if leaked_ids.len() < 8 {
                    leaked_ids.push(id);
                }
            }
            c => {
                v.doubled += 1;
                if doubled_ids.len() < 8 {
                    doubled_ids.push((id, c));
                }
            }
        }
    }
    if v.leaked > 0 {
        fail(format!(
            "{} value(s) leaked (made, never dropped), e.g. ids {leaked_ids:?}",
            v.leaked
        ));
    }
    if v.doubled > 0 {
        fail(format!(
            "{} value(s) dropped twice or more, e.g. (id, drops) {doubled_ids:?}",
            v.doubled
        ));
    }
    t.next.store(0, SeqCst);
    FULL.store(false, SeqCst);
    v
}

/// The payload of a panic the soak makes on purpose.
pub struct Planned;

/// Failures seen so far (the first few kept in words).
static FAILURES: AtomicUsize = AtomicUsize::new(0);
static MESSAGES: StdMutex<Vec<String>> = StdMutex::new(Vec::new());
/// Set in a forked child: failures are only counted there (the message
/// list's lock may have been held by a thread the child does not have).
static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// Records a failure; the soak reports it at the end of the cycle.
pub fn fail(message: String) {
    FAILURES.fetch_add(1, SeqCst);
    if IN_CHILD.load(Relaxed) {
        return;
    }
    let mut m = MESSAGES.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() < 20 {
        m.push(message);
    }
}

/// How many failures were recorded.
pub fn failures() -> usize {
    FAILURES.load(SeqCst)
}

/// The failures recorded, in words.
pub fn failure_report() -> String {
    let m = MESSAGES.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = String::new();
    for line in m.iter() {
        let _ = writeln!(s, "soak: FAIL: {line}");
    }
    let n = failures();
    if n > m.len() {
        let _ = writeln!(s, "soak: ... {} failure(s) in all", n);
    }
    s
}

/// Marks this process as a forked child.
pub fn enter_child() {
    IN_CHILD.store(true, SeqCst);
}

/// A fault the soak injects on purpose (`FREEQ_SOAK_INJECT`), to show
/// that it catches it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Inject {
    None,
    /// One value is forgotten instead of deferred.
    Leak,
    /// One drop is counted twice.
    Double,
}

static INJECT: AtomicU8 = AtomicU8::new(0);
static INJECTED: AtomicBool = AtomicBool::new(false);

pub fn set_inject(i: Inject) {
    INJECT.store(i as u8, SeqCst);
}

/// Whether to inject `i` now: true once per process.
pub fn inject_now(i: Inject) -> bool {
    INJECT.load(Relaxed) == i as u8 && !INJECTED.swap(true, SeqCst)
}

/// A value with an identity. Its drop counts itself in the table, checks
/// it was alive, and, if it was retired, that no reader pinned before its
/// retirement is still pinned.
pub struct Tracked {
    id: u64,
    magic: AtomicU64,
    /// The ticket taken when the value was retired (after it was
    /// unlinked); 0 if it never was.
    retired: AtomicU64,
    panics: bool,
    payload: Vec<u8>,
}

impl Tracked {
    /// A value with a heap payload of `len` bytes.
    pub fn new(len: usize) -> Self {
        let id = next_id();
        Tracked {
            id,
            magic: AtomicU64::new(ALIVE),
            retired: AtomicU64::new(0),
            panics: false,
            payload: vec![id as u8; len],
        }
    }

    /// A value whose drop panics (with [`Planned`]), after counting itself,
    /// unless its thread is unwinding already.
    pub fn panicking(len: usize) -> Self {
        let mut v = Tracked::new(len);
        v.panics = true;
        v
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Checks the value is still alive and intact; records a failure if not.
    pub fn check(&self, what: &str) {
        let magic = self.magic.load(SeqCst);
        if magic != ALIVE {
            fail(format!(
                "{what}: value {} is not alive (magic {magic:#x})",
                self.id
            ));
            return;
        }
        let byte = self.id as u8;
        if let (Some(&a), Some(&b)) = (self.payload.first(), self.payload.last())
            && (a != byte || b != byte)
        {
            fail(format!("{what}: value {}'s payload is corrupt", self.id));
        }
    }

    /// Marks the value retired: `ticket` was taken after it was unlinked.
    pub fn mark_retired(&self, ticket: u64) {
        self.retired.store(ticket, SeqCst);
    }

    /// Whether the value has been retired.
    pub fn is_retired(&self) -> bool {
        self.retired.load(SeqCst) != 0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let was = self.magic.swap(DEAD, SeqCst);
        if was != ALIVE {
            fail(format!(
                "value {} dropped while not alive (magic {was:#x})",
                self.id
            ));
            return;
        }
        let count = if inject_now(Inject::Double) { 2 } else { 1 };
        let before = table().counts[self.id as usize].fetch_add(count, SeqCst);
        if before != 0 {
            fail(format!(
                "value {} dropped again (drop {})",
                self.id,
                before + 1
            ));
        }
        let retired = self.retired.load(SeqCst);
        if retired != 0 {
            epoch::on_retired_drop(self.id, retired);
        }
        if self.panics && !std::thread::panicking() {
            std::panic::panic_any(Planned);
        }
    }
}

/// A small xorshift generator, one per thread.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True once in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// A payload length: mostly small, some a page, a few 64 KiB.
    pub fn payload(&mut self) -> usize {
        match self.below(256) {
            0 => 64 << 10,
            1..=15 => 4096,
            _ => self.below(256) as usize,
        }
    }

    /// A fresh value.
    pub fn value(&mut self) -> Tracked {
        Tracked::new(self.payload())
    }
}
