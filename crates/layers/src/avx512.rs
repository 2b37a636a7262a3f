//! What the AVX-512 kernels share (Winograd's transforms, 2x2 max pooling): whether the CPU
//! has AVX-512F, and the permutes that split 32 values into their even and odd ones and
//! interleave two vectors back.

use std::arch::x86_64::{__m512i, _mm512_loadu_si512};

/// Whether this CPU has AVX-512F (asked once).
pub(crate) fn available() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// `_mm512_permutex2var_ps` indices: the even values of `a` then `b` (lanes 0, 2, ... 30).
pub(crate) const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
/// The odd values of `a` then `b`.
pub(crate) const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
/// Lanes 0-7 of `a` and `b` interleaved (`a0, b0, a1, b1, ...`).
pub(crate) const LOW: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
/// Lanes 8-15 of `a` and `b` interleaved.
pub(crate) const HIGH: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];

/// The mask of the first `n` lanes of a vector of 16 (`n` at most 16).
#[inline(always)]
pub(crate) fn first(n: usize) -> u16 {
    debug_assert!(n <= 16);
    ((1u32 << n.min(16)) - 1) as u16
}

/// The lanes of a 16-lane load from column `x` of a row of `w` values that lie inside the row
/// and before column `x + count` (the others read as zero): a masked load's mask where a run
/// of a row may start before it or end past it (Winograd's patches, a convolution's columns).
#[inline(always)]
pub(crate) fn load_mask(w: usize, x: isize, count: isize) -> u16 {
    let lo = (-x).clamp(0, 16);
    let hi = (w as isize - x).min(count).clamp(lo, 16);
    if lo >= hi {
        return 0;
    }
    (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16
}

/// A permute's index vector.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
pub(crate) unsafe fn index(i: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(i.as_ptr().cast())
}
