//! The profile's clock: the time-stamp counter where it ticks at a
//! constant rate, paired with `Instant` to convert its ticks.
//!
//! This file calls `platform` (for `Instant`) and the `sync` shim only.

use crate::platform::Instant;
use crate::sync::{StaticAtomicPtr, publish_once};

/// The profile's clock: the time-stamp counter where it ticks at a
/// constant rate in every power state (x86-64 with an invariant TSC),
/// read in a few nanoseconds; elsewhere nanoseconds from `Instant`
/// (0 where there is no clock). [`ns_per_tick`] converts.
struct Clock {
    tsc: bool,
    base: Instant,
    base_tick: u64,
}

/// The clock, read once and published without a `OnceLock` (see
/// [`publish_once`]): a child forked while another thread of its parent
/// was reading the clock (which can take a few tries on a busy machine)
/// would otherwise wait on it forever.
fn clock() -> &'static Clock {
    static CLOCK: StaticAtomicPtr<Clock> = StaticAtomicPtr::new(std::ptr::null_mut());
    publish_once(&CLOCK, read_clock)
}

/// Reads the clock's base: see [`Clock`].
fn read_clock() -> Clock {
    let tsc = invariant_tsc();
    if !tsc {
        return Clock {
            tsc,
            base: Instant::now(),
            base_tick: 0,
        };
    }
    let (base, base_tick) = paired_reading(Instant::now);
    Clock {
        tsc,
        base,
        base_tick,
    }
}

/// Most ticks allowed between the two counter readings around one
/// `Instant` reading (a few µs at any TSC rate in use): more means the
/// thread was preempted between them, and the pair is read again.
const PAIR_TICKS: u64 = 20_000;

/// `read()` and the counter at the same moment: the counter is read
/// before and after, and the pair kept only when the two readings are
/// close (see [`PAIR_TICKS`]), taking their middle. A preemption between
/// the readings would otherwise skew the conversion on a busy machine.
fn paired_reading<T>(read: impl Fn() -> T) -> (T, u64) {
    let mut tries = 0;
    loop {
        let before = tsc_now();
        let value = read();
        let after = tsc_now();
        let apart = after.wrapping_sub(before);
        tries += 1;
        if apart <= PAIR_TICKS || tries >= 1000 {
            return (value, before.wrapping_add(apart / 2));
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn invariant_tsc() -> bool {
    use std::arch::x86_64::__cpuid;
    // Leaf 0x8000_0007, EDX bit 8: the TSC runs at a constant rate in
    // every P-, C- and T-state.
    __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

#[cfg(not(all(target_arch = "x86_64", not(miri))))]
fn invariant_tsc() -> bool {
    false
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline(always)]
fn tsc_now() -> u64 {
    // SAFETY: (1) `rdtsc` has no preconditions on x86-64: it reads the
    // time-stamp counter and touches no memory.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(all(target_arch = "x86_64", not(miri))))]
#[inline(always)]
fn tsc_now() -> u64 {
    0
}

/// The clock, in ticks: see [`ns_per_tick`].
#[inline]
pub(crate) fn now() -> u64 {
    let c = clock();
    if c.tsc {
        return tsc_now();
    }
    c.base.elapsed().as_nanos() as u64
}

/// Nanoseconds per tick of [`now`]: 1 without the time-stamp counter;
/// with it, measured against `Instant` over the time since the clock's
/// first reading (at least 20 ms, waited for if need be), each end read
/// as a close pair (see [`paired_reading`]).
pub(crate) fn ns_per_tick() -> f64 {
    let c = clock();
    if !c.tsc {
        return 1.0;
    }
    loop {
        let (ns, tick) = paired_reading(|| c.base.elapsed());
        let ticks = tick.wrapping_sub(c.base_tick);
        if ns >= std::time::Duration::from_millis(20) && ticks != 0 {
            return ns.as_nanos() as f64 / ticks as f64;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
