//! What the AVX2 kernels share (Winograd's transforms, max pooling, the direct first layer,
//! for CPUs without AVX-512), as [`crate::avx512`] is for the AVX-512 ones: whether the CPU has
//! AVX2, lane masks, the shuffles that split 16 values into their even and odd ones and
//! interleave two vectors back, and a blocked transposition (`im2col`'s batched one, the max
//! pooling's of 8 planes).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

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

/// Within each 128-bit half, the 4x4 transposition of `w`: half `h` of result `j` holds
/// value `j` of half `h` of `w[0]`, `w[1]`, `w[2]`, `w[3]`.
#[inline(always)]
unsafe fn transpose4(w: [__m256; 4]) -> [__m256; 4] {
    let t0 = _mm256_unpacklo_ps(w[0], w[1]);
    let t1 = _mm256_unpackhi_ps(w[0], w[1]);
    let t2 = _mm256_unpacklo_ps(w[2], w[3]);
    let t3 = _mm256_unpackhi_ps(w[2], w[3]);
    [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xee>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xee>(t1, t3),
    ]
}

/// The transposition `out[j * a + i] = x[i * b + j]` of the (A, B) matrix `x` into its
/// (B, A) `out` (uninitialised), in blocks of 8 rows by 4 columns (or 4 rows by 8 columns
/// where there are fewer than 8 rows), each a 4x4 transposition within the 128-bit halves of
/// four vectors (`vunpcklps`, `vunpckhps`, `vshufps`): for the rows `i < rows` and columns
/// `j < columns` it returns (`(a / 8 * 8, b / 4 * 4)`, or `(a / 4 * 4, b / 8 * 8)` for fewer
/// than 8 rows, or none); the caller copies the rest.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose_blocks(
    x: &[f32],
    (a, b): (usize, usize),
    out: &mut [MaybeUninit<f32>],
) -> (usize, usize) {
    let n = a.checked_mul(b);
    assert!(n.is_some_and(|n| x.len() >= n && out.len() >= n));
    let (x, o) = (x.as_ptr(), out.as_mut_ptr().cast::<f32>());
    if a >= 8 && b >= 4 {
        let (rows, columns) = (a / 8 * 8, b / 4 * 4);
        for i0 in (0..rows).step_by(8) {
            for j0 in (0..columns).step_by(4) {
                // SAFETY: rows `i0..i0 + 8`, columns `j0..j0 + 4` are inside `x`.
                let at = |k: usize| x.add((i0 + k) * b + j0);
                // Half 0 of `w[k]` from row `i0 + k`, half 1 from row `i0 + k + 4`.
                let w: [__m256; 4] = std::array::from_fn(|k| {
                    let low = _mm256_castps128_ps256(_mm_loadu_ps(at(k)));
                    _mm256_insertf128_ps::<1>(low, _mm_loadu_ps(at(k + 4)))
                });
                for (j, v) in transpose4(w).iter().enumerate() {
                    // SAFETY: output row `j0 + j`'s columns `i0..i0 + 8` are inside `out`.
                    _mm256_storeu_ps(o.add((j0 + j) * a + i0), *v);
                }
            }
        }
        return (rows, columns);
    }
    if a >= 4 && b >= 8 {
        let (rows, columns) = (a / 4 * 4, b / 8 * 8);
        for i0 in (0..rows).step_by(4) {
            for j0 in (0..columns).step_by(8) {
                // SAFETY: rows `i0..i0 + 4`, columns `j0..j0 + 8` are inside `x`.
                let w: [__m256; 4] =
                    std::array::from_fn(|k| _mm256_loadu_ps(x.add((i0 + k) * b + j0)));
                for (j, v) in transpose4(w).iter().enumerate() {
                    // SAFETY: output rows `j0 + j` and `j0 + j + 4`, columns `i0..i0 + 4`,
                    // are inside `out`.
                    _mm_storeu_ps(o.add((j0 + j) * a + i0), _mm256_castps256_ps128(*v));
                    let high = _mm256_extractf128_ps::<1>(*v);
                    _mm_storeu_ps(o.add((j0 + j + 4) * a + i0), high);
                }
            }
        }
        return (rows, columns);
    }
    (0, 0)
}
