//! 2x2 max pooling of whole blocks in AVX2 for CPUs without AVX-512, 8 windows per vector: the
//! rows' even and odd columns split by shuffles, the first maximum in scan order (or first NaN)
//! chosen by the comparisons [`super::argmax4`] makes, in the same order, so the results are
//! its bit for bit (as [`super::simd`]'s 16 windows per vector on AVX-512).

use std::arch::x86_64::*;

use super::Plane;
use crate::avx2::{even_odd, first, interleave as pairs, LANES};

/// `row[0..2n]`'s even and odd values, lane `k` from `row[2k]` and `row[2k + 1]` (`n` at
/// most 8); the lanes past `n` hold what follows in `row` where it has 16 values (whole loads,
/// cheaper than masked ones), else zero.
#[inline(always)]
unsafe fn split(row: &[f32], n: usize) -> (__m256, __m256) {
    let count = 2 * n;
    debug_assert!(row.len() >= count);
    // SAFETY (caller): `row` holds `2n` values; only those lanes are read, or 16 where it holds
    // them.
    let (a, b) = match row.len() >= 16 {
        true => (
            _mm256_loadu_ps(row.as_ptr()),
            _mm256_loadu_ps(row.as_ptr().add(8)),
        ),
        false => (
            _mm256_maskload_ps(row.as_ptr(), first(count.min(8))),
            match count > 8 {
                true => _mm256_maskload_ps(row.as_ptr().add(8), first(count - 8)),
                false => _mm256_setzero_ps(),
            },
        ),
    };
    even_odd(a, b)
}

/// The windows' maxima and which of their four values (0-3, scan order) each is, as all-ones
/// lanes of four masks.
#[inline(always)]
unsafe fn argmax(q: [__m256; 4]) -> (__m256, [__m256; 4]) {
    let mut best = q[0];
    let mut nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(q[0], q[0]);
    let ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    let mut at = [
        ones,
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    ];
    for (k, &v) in q.iter().enumerate().skip(1) {
        let is_nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
        let greater = _mm256_cmp_ps::<_CMP_GT_OQ>(v, best);
        let take = _mm256_andnot_ps(nan, _mm256_or_ps(greater, is_nan));
        best = _mm256_blendv_ps(best, v, take);
        for (j, m) in at.iter_mut().enumerate() {
            *m = match j == k {
                true => _mm256_or_ps(*m, take),
                false => _mm256_andnot_ps(take, *m),
            };
        }
        nan = _mm256_or_ps(nan, _mm256_and_ps(take, is_nan));
    }
    (best, at)
}

/// [`Plane::forward`] of a 2x2 max pooling of whole blocks, `y` the plane's outputs.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn max_forward(plane: &Plane, x: &[f32], y: &mut [f32]) {
    let (w, ow) = (plane.w, plane.ow);
    for i in 0..plane.oh {
        for j in (0..ow).step_by(LANES) {
            let n = (ow - j).min(LANES);
            let (a0, a1) = split(&x[2 * i * w + 2 * j..], n);
            let (b0, b1) = split(&x[(2 * i + 1) * w + 2 * j..], n);
            let (best, _) = argmax([a0, a1, b0, b1]);
            let out = &mut y[i * ow + j..];
            // SAFETY: `out` holds `n` values; only those lanes are written, or 8 where it holds
            // them: the outputs past this row's are those of later rows, written after this.
            match out.len() >= LANES {
                true => _mm256_storeu_ps(out.as_mut_ptr(), best),
                false => _mm256_maskstore_ps(out.as_mut_ptr(), first(n), best),
            }
        }
    }
}

/// `row[0..2n]` := lanes `0..n` of `even` and `odd` interleaved; 16 values where `row` holds
/// them (whole stores: the caller's lanes past `n` hold zero).
#[inline(always)]
unsafe fn interleave(row: &mut [f32], n: usize, even: __m256, odd: __m256) {
    let count = 2 * n;
    let [low, high] = pairs(even, odd);
    // SAFETY (caller): `row` holds `2n` values; only those lanes are written, or 16 where it
    // holds them.
    if row.len() >= 2 * LANES {
        _mm256_storeu_ps(row.as_mut_ptr(), low);
        _mm256_storeu_ps(row.as_mut_ptr().add(8), high);
        return;
    }
    _mm256_maskstore_ps(row.as_mut_ptr(), first(count.min(8)), low);
    if count > 8 {
        _mm256_maskstore_ps(row.as_mut_ptr().add(8), first(count - 8), high);
    }
}

/// [`Plane::backward`] of a 2x2 max pooling of whole blocks into the plane's zeroed `gx`: each
/// window's gradient to its chosen value (added to zero, as the scalar path does, so a -0.0
/// gradient lands as +0.0 there too). A row's last windows, where fewer than 8, are stored as
/// 16 values where `gx` holds them: the lanes past them hold +0.0 (their gradients load as
/// zero), over the rest of the row (zero) and the start of later rows, written after this (a
/// row pair's windows are taken from the last to the first, so that the top row's last ones
/// come before the bottom row's first).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn max_backward(plane: &Plane, x: &[f32], gy: &[f32], gx: &mut [f32]) {
    let (w, ow) = (plane.w, plane.ow);
    let zero = _mm256_setzero_ps();
    for i in 0..plane.oh {
        for j in (0..ow).step_by(LANES).rev() {
            let n = (ow - j).min(LANES);
            let (a0, a1) = split(&x[2 * i * w + 2 * j..], n);
            let (b0, b1) = split(&x[(2 * i + 1) * w + 2 * j..], n);
            let (_, at) = argmax([a0, a1, b0, b1]);
            let g = gy[i * ow + j..][..n].as_ptr();
            // SAFETY: `gy` holds `n` values from `g`; only those lanes are read.
            let g = match n {
                LANES => _mm256_loadu_ps(g),
                _ => _mm256_maskload_ps(g, first(n)),
            };
            let d: [__m256; 4] =
                std::array::from_fn(|k| _mm256_add_ps(zero, _mm256_and_ps(at[k], g)));
            interleave(&mut gx[2 * i * w + 2 * j..], n, d[0], d[1]);
            interleave(&mut gx[(2 * i + 1) * w + 2 * j..], n, d[2], d[3]);
        }
    }
}
