//! What the AVX2 kernels share (Winograd's transforms, max pooling, the direct first layer,
//! for CPUs without AVX-512), as [`crate::avx512`] is for the AVX-512 ones: whether the CPU has
//! AVX2, lane masks, and the shuffles that split 16 values into their even and odd ones and
//! interleave two vectors back.

use std::arch::x86_64::*;

/// Lanes of a vector.
pub(crate) const LANES: usize = 8;

/// Whether this CPU has AVX2 (asked once).
pub(crate) fn available() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2"))
}

/// A `vmaskmovps` mask of the lanes `k` for which `lane(k)` holds.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
pub(crate) unsafe fn mask(lane: impl Fn(isize) -> bool) -> __m256i {
    let m: [i32; LANES] = std::array::from_fn(|k| -i32::from(lane(k as isize)));
    _mm256_loadu_si256(m.as_ptr().cast())
}

/// The mask of the first `n` lanes (`n` at most 8).
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
pub(crate) unsafe fn first(n: usize) -> __m256i {
    mask(|k| k < n as isize)
}

/// The even values of `a` then `b` (`a0, a2, a4, a6, b0, ... b6`), and the odd ones.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
pub(crate) unsafe fn even_odd(a: __m256, b: __m256) -> (__m256, __m256) {
    // Within each 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs reordered.
    let e = _mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b));
    let o = _mm256_castps_pd(_mm256_shuffle_ps::<0xdd>(a, b));
    (
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(e)),
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(o)),
    )
}

/// Lanes 0-3 of `a` and `b` interleaved (`a0, b0, a1, b1, ...`), then lanes 4-7: the inverse of
/// [`even_odd`].
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
pub(crate) unsafe fn interleave(a: __m256, b: __m256) -> [__m256; 2] {
    // a0 b0 a1 b1 | a4 b4 a5 b5 and a2 b2 a3 b3 | a6 b6 a7 b7, then lanes 0-3 and 4-7.
    let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    [
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    ]
}
