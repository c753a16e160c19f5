//! The process's global allocator, chosen once per process from the
//! environment: glibc's (`System`), jemalloc or mimalloc, each either as
//! published or wrapped in `freeq::alloc::DeferFrees`.
//!
//! The choice is read with `getenv` on the first allocation, before the
//! Rust runtime or `main` allocate anything, so every block is freed by
//! the allocator that made it. The driver sets the variable for each child
//! process; a process without it (the driver itself) uses `System`.
//! Every configuration pays the same dispatch (one relaxed load and a
//! predictable branch per call), so comparisons stay fair.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use freeq::alloc::DeferFrees;
use mimalloc::MiMalloc;
use serde::{Deserialize, Serialize};
use tikv_jemallocator::Jemalloc;

/// The environment variable naming the allocator of a child process:
/// `glibc`, `jemalloc` or `mimalloc`, with `+defer` appended for the
/// `DeferFrees` wrapper.
pub const ALLOC_ENV: &str = "CASE_STUDIES_ALLOC";

/// An allocator under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alloc {
    /// The system allocator (glibc's malloc on Linux).
    Glibc,
    /// jemalloc, through tikv-jemallocator.
    Jemalloc,
    /// mimalloc.
    Mimalloc,
}

impl Alloc {
    /// All three, in report order.
    pub const ALL: [Alloc; 3] = [Alloc::Glibc, Alloc::Jemalloc, Alloc::Mimalloc];

    /// The name used on the command line and in [`ALLOC_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Alloc::Glibc => "glibc",
            Alloc::Jemalloc => "jemalloc",
            Alloc::Mimalloc => "mimalloc",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Alloc> {
        Alloc::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The value of [`ALLOC_ENV`] for this allocator, wrapped or not.
    pub fn env_value(self, defer_frees: bool) -> String {
        if defer_frees {
            format!("{}+defer", self.name())
        } else {
            self.name().to_string()
        }
    }
}

/// What this process runs on: the allocator and whether it is wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveAlloc {
    /// The allocator.
    pub alloc: Alloc,
    /// Whether `DeferFrees` wraps it.
    pub defer_frees: bool,
}

const UNSET: u8 = 0;
const SYS: u8 = 1;
const JE: u8 = 2;
const MI: u8 = 3;
const DEFER: u8 = 4; // added to one of the above

static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

static SYSTEM: System = System;
static JEMALLOC: Jemalloc = Jemalloc;
static MIMALLOC: MiMalloc = MiMalloc;
static D_SYSTEM: DeferFrees<System> = DeferFrees::new(System);
static D_JEMALLOC: DeferFrees<Jemalloc> = DeferFrees::new(Jemalloc);
static D_MIMALLOC: DeferFrees<MiMalloc> = DeferFrees::new(MiMalloc);

/// Reads [`ALLOC_ENV`] without allocating.
#[cold]
fn init() -> u8 {
    let choice = from_env();
    // The first caller wins; all callers agree anyway (the environment
    // of a child is never changed).
    match CHOICE.compare_exchange(UNSET, choice, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => choice,
        Err(c) => c,
    }
}

#[cfg(unix)]
fn from_env() -> u8 {
    // SAFETY: the name is a NUL-terminated literal; no thread of this
    // program calls `setenv` (children get their environment from the
    // driver's `Command`).
    let p = unsafe { libc::getenv(c"CASE_STUDIES_ALLOC".as_ptr()) };
    if p.is_null() {
        return SYS;
    }
    // SAFETY: `getenv` returned a NUL-terminated string that lives as
    // long as the environment is unchanged.
    let v = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    let (name, defer) = match v.strip_suffix(b"+defer") {
        Some(n) => (n, DEFER),
        None => (v, 0),
    };
    let base = match name {
        b"jemalloc" => JE,
        b"mimalloc" => MI,
        _ => SYS,
    };
    base + defer
}

#[cfg(not(unix))]
fn from_env() -> u8 {
    SYS
}

#[inline(always)]
fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNSET { c } else { init() }
}

/// The allocator this process runs on.
pub fn active() -> ActiveAlloc {
    let c = choice();
    let defer_frees = c > DEFER;
    let alloc = match if defer_frees { c - DEFER } else { c } {
        JE => Alloc::Jemalloc,
        MI => Alloc::Mimalloc,
        _ => Alloc::Glibc,
    };
    ActiveAlloc { alloc, defer_frees }
}

/// The global allocator of every binary in this package; see the module
/// docs.
pub struct Dispatch;

macro_rules! dispatch {
    ($method:ident($($arg:expr),*)) => {
        match choice() {
            JE => JEMALLOC.$method($($arg),*),
            MI => MIMALLOC.$method($($arg),*),
            x if x == SYS + DEFER => D_SYSTEM.$method($($arg),*),
            x if x == JE + DEFER => D_JEMALLOC.$method($($arg),*),
            x if x == MI + DEFER => D_MIMALLOC.$method($($arg),*),
            _ => SYSTEM.$method($($arg),*),
        }
    };
}

// SAFETY: every call forwards to one allocator, the same one for the whole
// life of the process (the choice is made once, before the first block is
// handed out), so each block is freed or resized by the allocator that
// made it.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { dispatch!(alloc(layout)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { dispatch!(alloc_zeroed(layout)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, passed on; the block came from
        // the same allocator (see the impl's comment).
        unsafe { dispatch!(dealloc(ptr, layout)) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`.
        unsafe { dispatch!(realloc(ptr, layout, new_size)) }
    }
}

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;
