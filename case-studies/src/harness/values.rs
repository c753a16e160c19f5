//! Values of a given size, fresh tags for them, and a small random number
//! generator.

/// A heap buffer of `size` bytes, every byte written (as a `String` or a
/// `Vec` a program fills is): one allocation, one free. From 16 bytes (a
/// short string) to 1 MiB (above glibc's mmap threshold: its free is an
/// `munmap`).
pub fn value(size: usize, tag: u64) -> Vec<u8> {
    vec![(tag as u8) | 1; size]
}

/// `parts` values of `size` bytes (see [`value`]), one composite value of
/// `parts` + 1 allocations.
pub fn value_parts(size: usize, parts: usize, tag: u64) -> Vec<Vec<u8>> {
    (0..parts as u64).map(|p| value(size, tag ^ p)).collect()
}

/// An operation that calls `f` with `after + 1`, `after + 2`, and so on,
/// one tag per call: the freeing thread's fresh keys or messages.
pub fn counting(after: u64, mut f: impl FnMut(u64)) -> impl FnMut() {
    let mut tag = after;
    move || {
        tag += 1;
        f(tag);
    }
}

/// xorshift64*: cheap, deterministic per seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}
