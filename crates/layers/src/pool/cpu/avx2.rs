//! 2x2 max pooling of whole blocks in AVX2 for CPUs without AVX-512, 8 windows per vector: the
//! rows' even and odd columns split by shuffles, the first maximum in scan order (or first NaN)
//! chosen by the comparisons [`super::argmax4`] makes, in the same order, so the results are
//! its bit for bit (as [`super::simd`]'s 16 windows per vector on AVX-512). Other max poolings
//! of small planes run 8 planes at a time, one a lane ([`max_forward_across`]), keeping each
//! output's chosen input for the backward pass, as the AVX-512 gathered kernels do.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

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

/// Inputs per plane (of any shape) up to which [`max_forward_across`] runs: 128x128 maps,
/// GoogLeNet's and the ResNets' poolings on 32x32 images (16x16 and smaller maps there) and
/// the ResNets' stem pooling on 224x224 ones (112x112 maps). Its transposed planes then take
/// up to 8 x 64 KiB (Zen 1's whole L2), and its transposed outputs and choices 64 bytes an
/// output; on 112x112 maps it still took a third of the window loops' time (`resnet50`'s
/// 224x224 forward, batch 16, on a Zen 1: its pooling 1.65% -> 0.59% of the profile).
pub(super) const ACROSS_INPUTS: usize = 16384;

/// Taps in all up to which [`Windows`] holds a table (16 MiB): 3x3 windows of stride 1 on
/// 128x128 maps take 147,456, 9x9 ones 1.3 million.
const MAX_TAPS: usize = 1 << 22;

/// Max pooling of any window, stride and padding on planes of at most [`ACROSS_INPUTS`]
/// inputs: each output's window taps (input indices in the plane, scan order), the same for
/// every plane, for [`max_forward_across`].
pub(super) struct Windows {
    /// Output `o`'s taps are `taps[starts[o]..starts[o + 1]]`.
    starts: Vec<u32>,
    /// Each below `hw`, each window's in scan order, none empty.
    taps: Vec<u32>,
    pub(super) hw: usize,
    pub(super) outputs: usize,
}

impl Windows {
    /// The table for `plane`, or `None` where it has more than [`ACROSS_INPUTS`] inputs, no
    /// outputs, an empty window (not with PyTorch's limits on padding), or more than
    /// [`MAX_TAPS`] taps in all (large windows on large maps: the window loops then).
    pub(super) fn new(plane: &Plane) -> Option<Self> {
        let (hw, outputs) = (plane.h * plane.w, plane.oh * plane.ow);
        if hw == 0 || hw > ACROSS_INPUTS || outputs == 0 {
            return None;
        }
        let mut starts = Vec::with_capacity(outputs + 1);
        let mut taps = Vec::new();
        for i in 0..plane.oh {
            for j in 0..plane.ow {
                let win = plane.window(i, j);
                if win.h0 >= win.h1 || win.w0 >= win.w1 {
                    return None;
                }
                starts.push(taps.len() as u32);
                if taps.len() + (win.h1 - win.h0) * (win.w1 - win.w0) > MAX_TAPS {
                    return None;
                }
                for r in win.h0..win.h1 {
                    taps.extend((win.w0..win.w1).map(|c| (r * plane.w + c) as u32));
                }
            }
        }
        starts.push(taps.len() as u32);
        Some(Self {
            starts,
            taps,
            hw,
            outputs,
        })
    }
}

/// Max pooling of `count` planes `x` (each of `windows.hw` inputs) into `y`, with each output's
/// chosen input (its index in the plane) in `chosen`, 8 planes at a time, one a lane: the 8
/// planes transposed (input `k` of each side by side), so that every tap of every window is
/// one load for the 8 planes, the same window in every lane; each lane's first maximum in scan
/// order (or first NaN) kept by the comparisons [`Plane::argmax`] makes, in its order, so the
/// same bits; then the outputs and choices transposed back. (GoogLeNet's 3x3 poolings of 8x8
/// to 1x1 maps on 32x32 images, where vectors of one plane's outputs would be mostly empty,
/// and the ResNets' stem pooling, up to 112x112 maps on 224x224 images.)
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn max_forward_across(
    windows: &Windows,
    count: usize,
    x: &[f32],
    y: &mut [MaybeUninit<f32>],
    chosen: &mut [MaybeUninit<i32>],
) {
    let (hw, outputs) = (windows.hw, windows.outputs);
    assert!(x.len() >= count * hw && y.len() >= count * outputs);
    assert!(chosen.len() >= count * outputs);
    // Input `k` of lane `l`'s plane at `k * 8 + l`; the outputs and choices likewise.
    let mut t = vec![0f32; hw * LANES];
    let mut best_t = vec![0f32; outputs * LANES];
    let mut at_t = vec![0i32; outputs * LANES];
    for g in (0..count).step_by(LANES) {
        let planes = (count - g).min(LANES);
        let x = &x[g * hw..][..planes * hw];
        // 8 planes as an (8, hw) matrix transposed in blocks, the rest value by value; the
        // lanes past `planes` keep the previous planes' values: computed, never stored.
        let (mut rows, mut columns) = (0, 0);
        if planes == LANES {
            // SAFETY: `t` has `hw * 8` values; f32 and `MaybeUninit<f32>` share a layout.
            let t = std::slice::from_raw_parts_mut(t.as_mut_ptr().cast(), t.len());
            (rows, columns) = crate::avx2::transpose_blocks(x, (LANES, hw), t);
        }
        for (l, p) in x.chunks_exact(hw).enumerate() {
            let from = if l < rows { columns } else { 0 };
            for (k, v) in p.iter().enumerate().skip(from) {
                t[k * LANES + l] = *v;
            }
        }
        for o in 0..outputs {
            let taps = &windows.taps[windows.starts[o] as usize..windows.starts[o + 1] as usize];
            // SAFETY: every tap is below `hw` (`Windows::new`), and `t` holds `hw * 8`.
            let mut best = _mm256_loadu_ps(t.as_ptr().add(taps[0] as usize * LANES));
            let mut at = _mm256_castsi256_ps(_mm256_set1_epi32(taps[0] as i32));
            let mut nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(best, best);
            for &k in &taps[1..] {
                // SAFETY: as above.
                let v = _mm256_loadu_ps(t.as_ptr().add(k as usize * LANES));
                let is_nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
                let greater = _mm256_cmp_ps::<_CMP_GT_OQ>(v, best);
                let take = _mm256_andnot_ps(nan, _mm256_or_ps(greater, is_nan));
                best = _mm256_blendv_ps(best, v, take);
                let index = _mm256_castsi256_ps(_mm256_set1_epi32(k as i32));
                at = _mm256_blendv_ps(at, index, take);
                nan = _mm256_or_ps(nan, _mm256_and_ps(take, is_nan));
            }
            // SAFETY: `best_t` and `at_t` hold `outputs * 8`.
            _mm256_storeu_ps(best_t.as_mut_ptr().add(o * LANES), best);
            _mm256_storeu_ps(at_t.as_mut_ptr().add(o * LANES).cast(), at);
        }
        let y = &mut y[g * outputs..][..planes * outputs];
        let c = &mut chosen[g * outputs..][..planes * outputs];
        // The (outputs, 8) maxima and choices transposed back in blocks where there are 8
        // planes (the choices' bits as f32's), the rest value by value.
        let (mut done, mut lanes) = (0, 0);
        if planes == LANES {
            // SAFETY: `y` and `c` hold 8 planes' outputs, `best_t` and `at_t` theirs
            // transposed; i32 and f32 share a layout, and every bit pattern is an f32 (the
            // bits are copied).
            let c = std::slice::from_raw_parts_mut(c.as_mut_ptr().cast(), c.len());
            let at = std::slice::from_raw_parts(at_t.as_ptr().cast(), at_t.len());
            (done, lanes) = crate::avx2::transpose_blocks(&best_t, (outputs, LANES), y);
            let also = crate::avx2::transpose_blocks(at, (outputs, LANES), c);
            debug_assert_eq!(also, (done, lanes));
        }
        let y = y.chunks_exact_mut(outputs);
        let c = c.chunks_exact_mut(outputs);
        for (l, (y, c)) in y.zip(c).enumerate() {
            let from = if l < lanes { done } else { 0 };
            for (o, (y, c)) in y.iter_mut().zip(c).enumerate().skip(from) {
                y.write(best_t[o * LANES + l]);
                c.write(at_t[o * LANES + l]);
            }
        }
    }
}
