//! Pooling on the CPU: hand-written loops over each (H, W) plane, forward and backward, as
//! custom ops. A max window's gradient goes to its first maximum in scan order (or first NaN).
//! With AVX-512, 2x2 max pooling of whole blocks runs 16 windows per vector (`simd`; with AVX2
//! alone, 8: `avx2`), and other max poolings 16 outputs at a time (`gather`): each window tap
//! loaded from its input row for 16 outputs of an output row (rows of 12 outputs and more,
//! horizontal stride 1 or 2), or gathered for 16 outputs of a plane or of 16 planes, or, for
//! planes of at most 16 outputs and 64 inputs, permuted from several whole planes held in two
//! or four registers; with AVX2 alone, other max poolings of planes of up to 16384 inputs (128x128) run 8 planes
//! at a time, one a lane, from a transposed copy of the planes (`avx2::max_forward_across`).
//! These keep the chosen inputs for the backward pass as PyTorch's `max_pool2d_with_indices`
//! (the backward then only adds the gradients there), and all give the same bits as the loops.

#[cfg(target_arch = "x86_64")]
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::config::{Pool2d, PoolKind};

/// One output window: its clipped input rows and columns, and the average's divisor.
#[derive(Debug, Clone, Copy)]
struct Window {
    h0: usize,
    h1: usize,
    w0: usize,
    w1: usize,
    divisor: usize,
}

/// The geometry of one pooling call on one (H, W) plane.
#[derive(Debug, Clone, Copy)]
struct Plane {
    pool: Pool2d,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl Plane {
    fn new(pool: Pool2d, dims: &[usize]) -> Result<(usize, Self)> {
        let (n, c, h, w) = match dims {
            [n, c, h, w] => (*n, *c, *h, *w),
            _ => candle_core::bail!("pooling expects (N, C, H, W) input, got {dims:?}"),
        };
        let (oh, ow) = pool.output_size(h, w)?;
        Ok((n * c, Self { pool, h, w, oh, ow }))
    }

    fn window(&self, i: usize, j: usize) -> Window {
        let p = &self.pool;
        let hs = (i * p.stride.0) as isize - p.padding.0 as isize;
        let ws = (j * p.stride.1) as isize - p.padding.1 as isize;
        let he = (hs + p.kernel.0 as isize).min((self.h + p.padding.0) as isize);
        let we = (ws + p.kernel.1 as isize).min((self.w + p.padding.1) as isize);
        let padded = ((he - hs) * (we - ws)) as usize;
        let h0 = hs.max(0) as usize;
        let w0 = ws.max(0) as usize;
        let h1 = (he as usize).min(self.h);
        let w1 = (we as usize).min(self.w);
        let divisor = match p.kind {
            PoolKind::Avg {
                count_include_pad: false,
            } => (h1 - h0) * (w1 - w0),
            _ => padded,
        };
        Window {
            h0,
            h1,
            w0,
            w1,
            divisor,
        }
    }

    /// The flat index (within the plane) of the window's maximum: the first one in scan order,
    /// or the first NaN, as PyTorch picks it.
    fn argmax<T: candle_core::WithDType>(&self, x: &[T], win: Window) -> usize {
        let mut best = win.h0 * self.w + win.w0;
        let mut best_v = x[best];
        for r in win.h0..win.h1 {
            for c in win.w0..win.w1 {
                let idx = r * self.w + c;
                let v = x[idx];
                #[allow(clippy::eq_op)]
                let is_nan = v != v;
                if v > best_v || is_nan {
                    best = idx;
                    best_v = v;
                    if is_nan {
                        return best;
                    }
                }
            }
        }
        best
    }

    /// Whether every window is a whole 2x2 block of the image, none overlapping: kernel 2,
    /// stride 2, no padding, every window inside (the floor-mode output of any size), of an
    /// average pooling. (The same path for max pooling made the MNIST CNN's step 3-12% slower
    /// than the window loops, in interleaved runs; averages were 12% faster in LeNet-5's.)
    fn is_2x2(&self) -> bool {
        matches!(self.pool.kind, PoolKind::Avg { .. }) && self.whole_2x2_blocks()
    }

    /// Whether every window is a whole 2x2 block of the image, none overlapping (any kind).
    fn whole_2x2_blocks(&self) -> bool {
        let p = &self.pool;
        p.kernel == (2, 2)
            && p.stride == (2, 2)
            && p.padding == (0, 0)
            && self.oh * self.ow > 0
            && 2 * self.oh <= self.h
            && 2 * self.ow <= self.w
    }

    /// [`Plane::forward`] for [`Plane::is_2x2`]: the same values, from the same operations
    /// in the same order, without the general window arithmetic.
    fn forward_2x2<T: candle_core::WithDType>(&self, x: &[T], y: &mut [T]) {
        let four = T::from_f64(4.0);
        for (i, yr) in y.chunks_exact_mut(self.ow).enumerate() {
            let r0 = &x[2 * i * self.w..][..2 * self.ow];
            let r1 = &x[(2 * i + 1) * self.w..][..2 * self.ow];
            for ((y, a), b) in yr
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                let q = [a[0], a[1], b[0], b[1]];
                *y = match self.pool.kind {
                    PoolKind::Max => q[argmax4(q)],
                    PoolKind::Avg { .. } => (T::zero() + q[0] + q[1] + q[2] + q[3]) / four,
                };
            }
        }
    }

    /// [`Plane::backward`] for [`Plane::is_2x2`] into a zeroed `gx`: each input is in at most
    /// one window.
    fn backward_2x2<T: candle_core::WithDType>(&self, x: &[T], gy: &[T], gx: &mut [T]) {
        let four = T::from_f64(4.0);
        for (i, gr) in gy.chunks_exact(self.ow).enumerate() {
            let (top, bottom) = gx[2 * i * self.w..].split_at_mut(self.w);
            let (g0, g1) = (&mut top[..2 * self.ow], &mut bottom[..2 * self.ow]);
            let r0 = &x[2 * i * self.w..][..2 * self.ow];
            let r1 = &x[(2 * i + 1) * self.w..][..2 * self.ow];
            let rows = g0.chunks_exact_mut(2).zip(g1.chunks_exact_mut(2));
            let inputs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
            for ((&g, (d0, d1)), (a, b)) in gr.iter().zip(rows).zip(inputs) {
                match self.pool.kind {
                    PoolKind::Max => match argmax4([a[0], a[1], b[0], b[1]]) {
                        0 => d0[0] += g,
                        1 => d0[1] += g,
                        2 => d1[0] += g,
                        _ => d1[1] += g,
                    },
                    PoolKind::Avg { .. } => {
                        let share = T::zero() + g / four;
                        (d0[0], d0[1], d1[0], d1[1]) = (share, share, share, share);
                    }
                }
            }
        }
    }

    fn forward<T: candle_core::WithDType>(&self, x: &[T], y: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        if let Some((x, y)) = self.max_2x2_f32(x, y) {
            // SAFETY: the CPU has AVX-512F or AVX2 (checked by `max_2x2_f32`).
            return unsafe {
                match avx512() {
                    true => simd::max_forward(self, x, y),
                    false => avx2::max_forward(self, x, y),
                }
            };
        }
        match self.is_2x2() {
            true => self.forward_2x2(x, y),
            false => self.forward_windows(x, y),
        }
    }

    /// `x` and `y` as f32 when this is a 2x2 max pooling of whole blocks on f32 values and the
    /// CPU has AVX-512F or AVX2: the case [`simd`] and [`avx2`] vectorise.
    #[cfg(target_arch = "x86_64")]
    fn max_2x2_f32<'a, 'b, T: candle_core::WithDType>(
        &self,
        x: &'a [T],
        y: &'b mut [T],
    ) -> Option<(&'a [f32], &'b mut [f32])> {
        if T::DTYPE != candle_core::DType::F32
            || self.pool.kind != PoolKind::Max
            || !self.whole_2x2_blocks()
            || !(avx512() || crate::avx2::available())
        {
            return None;
        }
        // SAFETY: `T` is f32 (its dtype says so), so the slices are f32 slices.
        unsafe {
            Some((
                std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()),
                std::slice::from_raw_parts_mut(y.as_mut_ptr().cast::<f32>(), y.len()),
            ))
        }
    }

    fn forward_windows<T: candle_core::WithDType>(&self, x: &[T], y: &mut [T]) {
        for i in 0..self.oh {
            for j in 0..self.ow {
                let win = self.window(i, j);
                y[i * self.ow + j] = match self.pool.kind {
                    PoolKind::Max => x[self.argmax(x, win)],
                    PoolKind::Avg { .. } => {
                        let mut sum = T::zero();
                        for r in win.h0..win.h1 {
                            for v in &x[r * self.w + win.w0..r * self.w + win.w1] {
                                sum += *v;
                            }
                        }
                        sum / T::from_f64(win.divisor as f64)
                    }
                };
            }
        }
    }

    fn backward<T: candle_core::WithDType>(&self, x: &[T], gy: &[T], gx: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        if let Some((x, gx)) = self.max_2x2_f32(x, gx) {
            // SAFETY: as in `forward`; `gy` holds f32 values as `x` does.
            let gy = unsafe { std::slice::from_raw_parts(gy.as_ptr().cast::<f32>(), gy.len()) };
            // SAFETY: the CPU has AVX-512F or AVX2 (checked by `max_2x2_f32`).
            return unsafe {
                match avx512() {
                    true => simd::max_backward(self, x, gy, gx),
                    false => avx2::max_backward(self, x, gy, gx),
                }
            };
        }
        match self.is_2x2() {
            true => self.backward_2x2(x, gy, gx),
            false => self.backward_windows(x, gy, gx),
        }
    }

    fn backward_windows<T: candle_core::WithDType>(&self, x: &[T], gy: &[T], gx: &mut [T]) {
        for i in 0..self.oh {
            for j in 0..self.ow {
                let win = self.window(i, j);
                let g = gy[i * self.ow + j];
                match self.pool.kind {
                    PoolKind::Max => gx[self.argmax(x, win)] += g,
                    PoolKind::Avg { .. } => {
                        let share = g / T::from_f64(win.divisor as f64);
                        for r in win.h0..win.h1 {
                            for v in &mut gx[r * self.w + win.w0..r * self.w + win.w1] {
                                *v += share;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The index of the first maximum of a 2x2 window in scan order, or of its first NaN, as
/// [`Plane::argmax`].
#[inline(always)]
fn argmax4<T: candle_core::WithDType>(q: [T; 4]) -> usize {
    let mut best = 0;
    let mut best_v = q[0];
    for (k, &v) in q.iter().enumerate() {
        #[allow(clippy::eq_op)]
        let is_nan = v != v;
        if v > best_v || is_nan {
            best = k;
            best_v = v;
            if is_nan {
                return best;
            }
        }
    }
    best
}

#[cfg(target_arch = "x86_64")]
use crate::avx512::available as avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// 2x2 max pooling of whole blocks in AVX-512, 16 windows per vector: the rows' even and odd
/// columns split by permutes, the first maximum in scan order (or first NaN) chosen by the
/// comparisons [`argmax4`] makes, in the same order, so the results are its bit for bit.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::Plane;
    use crate::avx512::{first, index, EVEN, HIGH, LOW, ODD};
    use std::arch::x86_64::*;

    /// `row[0..2n]`'s even and odd values, lane `k` from `row[2k]` and `row[2k + 1]`.
    #[inline(always)]
    unsafe fn split(row: &[f32], n: usize) -> (__m512, __m512) {
        let count = 2 * n;
        // SAFETY (caller): `row` holds `2n` values; only those lanes are read.
        let a = _mm512_maskz_loadu_ps(first(count.min(16)), row.as_ptr());
        let b = match count > 16 {
            true => _mm512_maskz_loadu_ps(first(count - 16), row.as_ptr().add(16)),
            false => _mm512_setzero_ps(),
        };
        (
            _mm512_permutex2var_ps(a, index(&EVEN), b),
            _mm512_permutex2var_ps(a, index(&ODD), b),
        )
    }

    /// The windows' maxima and which of their four values (0-3, scan order) each is.
    #[inline(always)]
    unsafe fn argmax(q: [__m512; 4]) -> (__m512, [__mmask16; 4]) {
        let mut best = q[0];
        let mut nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(q[0], q[0]);
        let mut at = [!0u16, 0, 0, 0];
        for (k, &v) in q.iter().enumerate().skip(1) {
            let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let take = !nan & (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best) | is_nan);
            best = _mm512_mask_mov_ps(best, take, v);
            for (j, m) in at.iter_mut().enumerate() {
                *m = match j == k {
                    true => *m | take,
                    false => *m & !take,
                };
            }
            nan |= take & is_nan;
        }
        (best, at)
    }

    /// [`Plane::forward`] of a 2x2 max pooling of whole blocks.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_forward(plane: &Plane, x: &[f32], y: &mut [f32]) {
        let (w, ow) = (plane.w, plane.ow);
        for i in 0..plane.oh {
            for j in (0..ow).step_by(16) {
                let n = (ow - j).min(16);
                let (a0, a1) = split(&x[2 * i * w + 2 * j..][..2 * n], n);
                let (b0, b1) = split(&x[(2 * i + 1) * w + 2 * j..][..2 * n], n);
                let (best, _) = argmax([a0, a1, b0, b1]);
                let out = &mut y[i * ow + j..][..n];
                // SAFETY: `out` holds `n` values; only those lanes are written.
                _mm512_mask_storeu_ps(out.as_mut_ptr(), first(n), best);
            }
        }
    }

    /// `row[0..2n]` := lanes `0..n` of `even` and `odd` interleaved.
    #[inline(always)]
    unsafe fn interleave(row: &mut [f32], n: usize, even: __m512, odd: __m512) {
        let count = 2 * n;
        let low = _mm512_permutex2var_ps(even, index(&LOW), odd);
        // SAFETY (caller): `row` holds `2n` values; only those lanes are written.
        _mm512_mask_storeu_ps(row.as_mut_ptr(), first(count.min(16)), low);
        if count > 16 {
            let high = _mm512_permutex2var_ps(even, index(&HIGH), odd);
            _mm512_mask_storeu_ps(row.as_mut_ptr().add(16), first(count - 16), high);
        }
    }

    /// [`Plane::backward`] of a 2x2 max pooling of whole blocks into a zeroed `gx`: each
    /// window's gradient to its chosen value (added to zero, as the scalar path does, so a
    /// -0.0 gradient lands as +0.0 there too).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_backward(plane: &Plane, x: &[f32], gy: &[f32], gx: &mut [f32]) {
        let (w, ow) = (plane.w, plane.ow);
        let zero = _mm512_setzero_ps();
        for i in 0..plane.oh {
            for j in (0..ow).step_by(16) {
                let n = (ow - j).min(16);
                let (a0, a1) = split(&x[2 * i * w + 2 * j..][..2 * n], n);
                let (b0, b1) = split(&x[(2 * i + 1) * w + 2 * j..][..2 * n], n);
                let (_, at) = argmax([a0, a1, b0, b1]);
                let g = _mm512_maskz_loadu_ps(first(n), gy[i * ow + j..][..n].as_ptr());
                let d: [__m512; 4] =
                    std::array::from_fn(|k| _mm512_add_ps(zero, _mm512_maskz_mov_ps(at[k], g)));
                interleave(&mut gx[2 * i * w + 2 * j..][..2 * n], n, d[0], d[1]);
                interleave(&mut gx[(2 * i + 1) * w + 2 * j..][..2 * n], n, d[2], d[3]);
            }
        }
    }
}

/// Max pooling of any window, stride and padding in AVX-512, 16 outputs per vector: each window
/// tap's values loaded from its input row for 16 outputs of an output row
/// ([`max_forward_rows`]), gathered for 16 outputs of a plane ([`max_forward`]) or of 16 planes
/// ([`max_forward_across`]), or permuted from small planes held whole in registers
/// ([`max_forward_packed`]); each lane's first maximum in scan order (or first NaN) kept, by
/// the comparisons [`Plane::argmax`] makes ([`Best`]) or by a shorter chain with the same
/// result (`argmax`, `max_forward_rows`), so the results are its bit for bit. The tap tables
/// are the same for every plane: made once per call, but for `max_forward_rows`'s column
/// table, made per plane.
#[cfg(target_arch = "x86_64")]
mod gather {
    use super::Plane;
    use crate::avx512::first;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Per lane, the window's first maximum in scan order (or first NaN) so far, as
    /// [`Plane::argmax`] keeps it, and its input's index.
    struct Best {
        value: __m512,
        at: __m512i,
        /// The lanes that have taken a tap inside their window.
        have: u16,
        /// The lanes whose value is a NaN (kept from then on).
        nan: u16,
    }

    impl Best {
        #[inline(always)]
        unsafe fn new() -> Self {
            Best {
                value: _mm512_setzero_ps(),
                at: _mm512_setzero_si512(),
                have: 0,
                nan: 0,
            }
        }

        /// The next tap: `v` in the lanes `m` whose window has it inside, at input `index`.
        /// A lane takes it if it is its first tap, or if its value is no NaN yet and `v` is
        /// greater or a NaN.
        #[inline(always)]
        unsafe fn next(&mut self, v: __m512, index: __m512i, m: u16) {
            let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let greater = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, self.value);
            let take = m & (!self.have | (!self.nan & (greater | is_nan)));
            self.value = _mm512_mask_mov_ps(self.value, take, v);
            self.at = _mm512_mask_mov_epi32(self.at, take, index);
            self.have |= m;
            self.nan |= take & is_nan;
        }
    }

    /// For each block of 16 outputs (in the plane's row-major order) and each tap of the window
    /// (row-major), the taps' input indices within the plane and which lanes are inside it.
    pub(super) struct Taps {
        table: Vec<([i32; 16], u16)>,
        /// For each block of 16 outputs, each lane's first tap inside its window (its index).
        first_at: Vec<[i32; 16]>,
        taps: usize,
        outputs: usize,
    }

    impl Taps {
        /// The table for `plane`, or `None` when its indices do not fit in i32 or a window
        /// could be empty (neither happens with PyTorch's limits on padding).
        pub(super) fn new(plane: &Plane) -> Option<Self> {
            let p = &plane.pool;
            let (kh, kw) = p.kernel;
            if plane.h * plane.w >= i32::MAX as usize
                || 2 * p.padding.0 > kh
                || 2 * p.padding.1 > kw
            {
                return None;
            }
            let outputs = plane.oh * plane.ow;
            let mut table = Vec::with_capacity(outputs.div_ceil(16) * kh * kw);
            for block in (0..outputs).step_by(16) {
                for tr in 0..kh {
                    for tc in 0..kw {
                        let mut idx = [0i32; 16];
                        let mut mask = 0u16;
                        let lanes = (outputs - block).min(16);
                        for (lane, at) in idx.iter_mut().enumerate().take(lanes) {
                            let (i, j) = ((block + lane) / plane.ow, (block + lane) % plane.ow);
                            let r = (i * p.stride.0 + tr) as isize - p.padding.0 as isize;
                            let c = (j * p.stride.1 + tc) as isize - p.padding.1 as isize;
                            if (0..plane.h as isize).contains(&r)
                                && (0..plane.w as isize).contains(&c)
                            {
                                *at = (r as usize * plane.w + c as usize) as i32;
                                mask |= 1 << lane;
                            }
                        }
                        table.push((idx, mask));
                    }
                }
            }
            let first_at = table
                .chunks_exact(kh * kw)
                .map(|block| {
                    std::array::from_fn(|lane| {
                        let inside = block.iter().find(|(_, m)| m & (1 << lane) != 0);
                        inside.map_or(0, |(idx, _)| idx[lane])
                    })
                })
                .collect();
            Some(Self {
                table,
                first_at,
                taps: kh * kw,
                outputs,
            })
        }
    }

    /// The lanes `lo..hi` of 16 (clipped to them).
    #[inline(always)]
    fn span(lo: isize, hi: isize) -> u16 {
        let (lo, hi) = (lo.clamp(0, 16) as usize, hi.clamp(0, 16) as usize);
        first(hi) & !first(lo.min(hi))
    }

    /// For [`max_forward_rows`]: per block of 16 output columns and tap column (the same for
    /// every row), the column `base` lane 0 reads (lane `l` reads `base + S * l`), the lanes
    /// inside the row (and under the block's outputs `n`), and for stride 2 the values of the
    /// two loads of 32 from `base` inside the row and under 2n (whose even ones are the lanes').
    pub(super) fn row_columns<const S: usize>(plane: &Plane) -> Vec<(isize, u16, u16, u16)> {
        let p = &plane.pool;
        let (wi, ow) = (plane.w as isize, plane.ow);
        (0..ow)
            .step_by(16)
            .flat_map(|j0| (0..p.kernel.1).map(move |tc| (j0, tc)))
            .map(|(j0, tc)| {
                let n = (ow - j0).min(16) as isize;
                let base = (j0 * S + tc) as isize - p.padding.1 as isize;
                let (lo, hi) = match S {
                    1 => (-base, (wi - base).min(n)),
                    _ => (
                        (-base + 1).div_euclid(2),
                        (wi - base + 1).div_euclid(2).min(n),
                    ),
                };
                let (e_lo, e_hi) = (-base, (wi - base).min(2 * n));
                (
                    base,
                    span(lo, hi),
                    span(e_lo, e_hi),
                    span(e_lo - 16, e_hi - 16),
                )
            })
            .collect()
    }

    /// [`max_forward`] of one plane with a horizontal stride `S` of 1 or 2 (the caller takes
    /// it for rows of [`super::ROWS_FROM`] outputs or more: ResNet's 3x3 stride-2 stem pooling
    /// and GoogLeNet's poolings on ImageNet's image sizes), 16 outputs of an output row a vector: each tap's values loaded from its
    /// input row (stride 1) or split from 32 of them (stride 2) instead of gathered, and kept
    /// as [`argmax`] keeps them, so the same bits as the window loops.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_forward_rows<const S: usize>(
        plane: &Plane,
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        chosen: &mut [MaybeUninit<i32>],
    ) {
        let p = &plane.pool;
        let (h, w, oh, ow) = (plane.h, plane.w, plane.oh, plane.ow);
        assert!(x.len() >= h * w && y.len() >= oh * ow && chosen.len() >= oh * ow);
        assert!((S == 1 || S == 2) && p.stride.1 == S && h * w < i32::MAX as usize);
        let steps: [i32; 16] = std::array::from_fn(|l| (l * S) as i32);
        let step = _mm512_loadu_si512(steps.as_ptr().cast());
        let even = crate::avx512::index(&crate::avx512::EVEN);
        let none = _mm512_set1_epi32(i32::MAX);
        let (wi, kw) = (w as isize, p.kernel.1);
        let columns = row_columns::<S>(plane);
        for i in 0..oh {
            let rows = (0..p.kernel.0)
                .map(|tr| (i * p.stride.0 + tr) as isize - p.padding.0 as isize)
                .filter(|r| (0..h as isize).contains(r));
            // Every window has a row inside the plane (PyTorch's limits on padding and ceil
            // mode); row 0 otherwise, so that every output is written.
            let r0 = rows.clone().next().unwrap_or(0);
            for (block, j0) in (0..ow).step_by(16).enumerate() {
                let n = (ow - j0).min(16);
                // Each lane's first tap inside its window: the first row, the first column.
                let c0 = _mm512_max_epi32(
                    _mm512_add_epi32(
                        _mm512_set1_epi32((j0 * S) as i32 - p.padding.1 as i32),
                        step,
                    ),
                    _mm512_setzero_si512(),
                );
                let mut at = _mm512_add_epi32(_mm512_set1_epi32((r0 * wi) as i32), c0);
                let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut nan_at = none;
                for r in rows.clone() {
                    let row = &x[r as usize * w..][..w];
                    for &(base, m, ma, mb) in &columns[block * kw..][..kw] {
                        let from = row.as_ptr().wrapping_offset(base);
                        // SAFETY: only the lanes (values) inside the row are read, as masked.
                        let v = match S {
                            1 => _mm512_maskz_loadu_ps(m, from),
                            _ => _mm512_permutex2var_ps(
                                _mm512_maskz_loadu_ps(ma, from),
                                even,
                                _mm512_maskz_loadu_ps(mb, from.wrapping_add(16)),
                            ),
                        };
                        let vi = _mm512_add_epi32(_mm512_set1_epi32((r * wi + base) as i32), step);
                        let take = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(m, v, best);
                        best = _mm512_mask_mov_ps(best, take, v);
                        at = _mm512_mask_mov_epi32(at, take, vi);
                        let is_nan = _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(m, v, v);
                        nan_at = _mm512_mask_min_epi32(nan_at, is_nan, nan_at, vi);
                    }
                }
                let nan = _mm512_cmpneq_epi32_mask(nan_at, none) & first(n);
                if nan != 0 {
                    // SAFETY: a NaN lane's index is one of its taps', inside the plane.
                    best = _mm512_mask_i32gather_ps::<4>(best, nan, nan_at, x.as_ptr().cast());
                    at = _mm512_mask_mov_epi32(at, nan, nan_at);
                }
                let out = i * ow + j0;
                // SAFETY: outputs `out..out + n` are inside `y` and `chosen` (checked above).
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(out).cast(), first(n), best);
                _mm512_mask_storeu_epi32(chosen.as_mut_ptr().add(out).cast(), first(n), at);
            }
        }
    }

    /// Planes of at most 16 outputs and 64 inputs, several to a vector: each vector holds the
    /// outputs of `planes` planes side by side, lane `g * outputs + o` output `o` of plane `g`,
    /// and each tap's values are a permutation of the planes' inputs, loaded whole into two
    /// registers (or four, blended) instead of gathered (GoogLeNet's 3x3 poolings of 8x8, 4x4,
    /// 2x2 and 1x1 maps on 32x32 images).
    pub(super) struct Packed {
        /// Per tap that any lane reads (row-major): each lane's index into the registers, its
        /// input's index in its own plane, the lanes whose window has the tap inside, and the
        /// lanes whose index is in the third or fourth register.
        taps: Vec<([i32; 16], [i32; 16], u16, u16)>,
        /// Planes per vector.
        pub(super) planes: usize,
        hw: usize,
        outputs: usize,
    }

    impl Packed {
        /// The table for planes of `hw` inputs pooled through `taps`, or `None` where a plane
        /// has more than 16 outputs or 64 inputs.
        pub(super) fn new(taps: &Taps, hw: usize) -> Option<Self> {
            let outputs = taps.outputs;
            if outputs == 0 || outputs > 16 || hw == 0 || hw > 64 {
                return None;
            }
            let planes = (16 / outputs).min(64 / hw);
            let mut table = Vec::with_capacity(taps.taps);
            // One block of 16 outputs holds the plane's outputs.
            for (idx, m) in &taps.table[..taps.taps] {
                let (mut perm, mut at, mut mask, mut high) = ([0i32; 16], [0i32; 16], 0u16, 0u16);
                for lane in 0..planes * outputs {
                    let (g, o) = (lane / outputs, lane % outputs);
                    if m & (1 << o) != 0 {
                        let from = g * hw + idx[o] as usize;
                        // The permutes read the index's low 5 bits: a value of the register
                        // pair `from / 32`.
                        perm[lane] = (from % 32) as i32;
                        at[lane] = idx[o];
                        mask |= 1 << lane;
                        if from >= 32 {
                            high |= 1 << lane;
                        }
                    }
                }
                // A tap no window has inside changes nothing in `argmax`: left out.
                if mask != 0 {
                    table.push((perm, at, mask, high));
                }
            }
            Some(Self {
                taps: table,
                planes,
                hw,
                outputs,
            })
        }
    }

    /// [`max_forward`] of `count` planes `x` side by side into `y` and `chosen`, [`Packed::planes`]
    /// to a vector (the last vector possibly short): the window loops' comparisons in their
    /// order per lane ([`Best`]), so the same bits.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_forward_packed(
        packed: &Packed,
        count: usize,
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        chosen: &mut [MaybeUninit<i32>],
    ) {
        match packed.planes * packed.hw > 32 {
            true => packed_planes::<4>(packed, count, x, y, chosen),
            false => packed_planes::<2>(packed, count, x, y, chosen),
        }
    }

    /// [`max_forward_packed`] with the planes of a vector in `REGISTERS` (2 or 4) registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn packed_planes<const REGISTERS: usize>(
        packed: &Packed,
        count: usize,
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        chosen: &mut [MaybeUninit<i32>],
    ) {
        let (hw, outputs) = (packed.hw, packed.outputs);
        assert!(x.len() >= count * hw && y.len() >= count * outputs);
        assert!(chosen.len() >= count * outputs);
        assert!(packed.planes * hw <= 16 * REGISTERS);
        for g in (0..count).step_by(packed.planes) {
            let planes = (count - g).min(packed.planes);
            let (inputs, lanes) = (planes * hw, first(planes * outputs));
            let x = &x[g * hw..][..inputs];
            // These planes' values (at most `16 * REGISTERS`, checked above); only those read.
            let r: [__m512; REGISTERS] = std::array::from_fn(|k| match inputs > 16 * k {
                // SAFETY: values `16k..inputs` (at most 16 of them) are inside `x`.
                true => {
                    _mm512_maskz_loadu_ps(first((inputs - 16 * k).min(16)), x[16 * k..].as_ptr())
                }
                false => _mm512_setzero_ps(),
            });
            let mut best = Best::new();
            for (perm, idx, m, high) in &packed.taps {
                let perm = _mm512_loadu_si512(perm.as_ptr().cast());
                let v = _mm512_permutex2var_ps(r[0], perm, r[1]);
                let v = match REGISTERS {
                    2 => v,
                    _ => _mm512_mask_mov_ps(v, *high, _mm512_permutex2var_ps(r[2], perm, r[3])),
                };
                best.next(v, _mm512_loadu_si512(idx.as_ptr().cast()), m & lanes);
            }
            // SAFETY: these planes' outputs (checked above against `y` and `chosen`); only
            // those lanes are written.
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(g * outputs).cast(), lanes, best.value);
            let chosen = chosen.as_mut_ptr().add(g * outputs);
            _mm512_mask_storeu_epi32(chosen.cast(), lanes, best.at);
        }
    }

    /// The first maximum (or first NaN) over the taps, per lane, and its index, as
    /// [`Plane::argmax`] keeps it, with each lane's first tap inside its window (`first_at`)
    /// given: from negative infinity there, a lane takes a tap only if it is greater, so that
    /// each tap waits on one comparison and no mask arithmetic; a NaN is never greater, and the
    /// lane's first NaN is its NaN of lowest index (the taps' indices grow in scan order),
    /// kept apart by a minimum and read back at the end.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn argmax(
        x: &[f32],
        taps: &[([i32; 16], u16)],
        first_at: &[i32; 16],
    ) -> (__m512, __m512i) {
        let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut at = _mm512_loadu_si512(first_at.as_ptr().cast());
        let none = _mm512_set1_epi32(i32::MAX);
        let mut nan_at = none;
        for (idx, m) in taps {
            let vi = _mm512_loadu_si512(idx.as_ptr().cast());
            // SAFETY (caller): every index of a set lane is inside the plane `x`.
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), *m, vi, x.as_ptr().cast());
            let take = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(*m, v, best);
            best = _mm512_mask_mov_ps(best, take, v);
            at = _mm512_mask_mov_epi32(at, take, vi);
            let is_nan = _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(*m, v, v);
            nan_at = _mm512_mask_min_epi32(nan_at, is_nan, nan_at, vi);
        }
        let nan = _mm512_cmpneq_epi32_mask(nan_at, none);
        if nan != 0 {
            // SAFETY: a NaN lane's index is one of its taps', inside the plane.
            best = _mm512_mask_i32gather_ps::<4>(best, nan, nan_at, x.as_ptr().cast());
            at = _mm512_mask_mov_epi32(at, nan, nan_at);
        }
        (best, at)
    }

    /// [`Plane::forward`] of a max pooling, for one plane `x` into `y`, with the index in the
    /// plane of each output's chosen value in `chosen` (for the backward pass).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_forward(
        taps: &Taps,
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        chosen: &mut [MaybeUninit<i32>],
    ) {
        for (b, block) in taps.table.chunks_exact(taps.taps).enumerate() {
            let (best, at) = argmax(x, block, &taps.first_at[b]);
            let o = b * 16;
            let n = (taps.outputs - o).min(16);
            let lanes = first(n);
            // SAFETY: `y` and `chosen` hold the plane's outputs; only the `n` lanes that exist
            // are written.
            _mm512_mask_storeu_ps(y[o..][..n].as_mut_ptr().cast(), lanes, best);
            _mm512_mask_storeu_epi32(chosen[o..][..n].as_mut_ptr().cast(), lanes, at);
        }
    }

    /// [`max_forward`] for up to 16 planes at once, one plane a lane: for planes of fewer than
    /// 16 outputs (GoogLeNet's 3x3 stride-1 poolings of 2x2 and 1x1 maps), where a vector of
    /// one plane's outputs would be mostly empty. `x` holds the `planes` planes of `hw` inputs
    /// each, `y` and `chosen` their outputs; the window loops' comparisons in their order per
    /// lane ([`Best`]), so the same bits. The caller keeps `16 * hw` and `16 * outputs` within i32 (the lanes'
    /// offsets).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_forward_across(
        taps: &Taps,
        hw: usize,
        planes: usize,
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        chosen: &mut [MaybeUninit<i32>],
    ) {
        let outputs = taps.outputs;
        let lanes = first(planes.min(16));
        let lane: [i32; 16] = std::array::from_fn(|k| k as i32);
        let lane = _mm512_loadu_si512(lane.as_ptr().cast());
        let base = _mm512_mullo_epi32(lane, _mm512_set1_epi32(hw as i32));
        let out_at = _mm512_mullo_epi32(lane, _mm512_set1_epi32(outputs as i32));
        // Each output is lane `o % 16` of block `o / 16`'s taps.
        for o in 0..outputs {
            let block = &taps.table[(o / 16) * taps.taps..][..taps.taps];
            let bit = 1u16 << (o % 16);
            let mut best = Best::new();
            for (idx, m) in block {
                if m & bit == 0 {
                    continue;
                }
                let index = _mm512_set1_epi32(idx[o % 16]);
                // SAFETY (caller): plane `k`'s index `idx` is inside `x` for the lanes set.
                let v = _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    lanes,
                    _mm512_add_epi32(base, index),
                    x.as_ptr().cast(),
                );
                best.next(v, index, lanes);
            }
            let to = _mm512_add_epi32(out_at, _mm512_set1_epi32(o as i32));
            // SAFETY: `y` and `chosen` hold `planes` planes of `outputs` each; only the lanes
            // of planes that exist are written.
            _mm512_mask_i32scatter_ps::<4>(y.as_mut_ptr().cast(), lanes, to, best.value);
            _mm512_mask_i32scatter_epi32::<4>(chosen.as_mut_ptr().cast(), lanes, to, best.at);
        }
    }
}

/// [`Plane::backward`] of a max pooling from the forward pass's choices, into a zeroed `gx`:
/// each output's gradient added to its chosen value, outputs in order (as the window loop).
fn scatter(chosen: &[i32], gy: &[f32], gx: &mut [f32]) {
    for (&i, &g) in chosen.iter().zip(gy) {
        gx[i as usize] += g;
    }
}

#[cfg(target_arch = "x86_64")]
/// Output rows from which a plane's max pooling runs row by row ([`gather::max_forward_rows`])
/// rather than gathered: one thread, 2^20 inputs, 3x3 windows, 28x28 and 14x14 maps with
/// stride 1 and 112x112, 56x56 and 32x32 with stride 2 took half the gathered kernel's time;
/// 8x8 and 7x7 (stride 1) and 16x16 (stride 2, rows of 8) took about as long or longer.
const ROWS_FROM: usize = 12;

#[cfg(test)]
thread_local! {
    /// Whether this thread's max poolings take the AVX2 kernel across planes on a CPU with
    /// AVX-512 too (for tests of both; read where the op chooses its kernel, on the calling
    /// thread).
    pub(crate) static AVX2_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Max poolings run by the AVX2 kernel across planes on this thread (for tests).
    pub(crate) static ACROSS_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether this thread's max poolings take AVX-512's kernels (where the CPU has it).
#[cfg(target_arch = "x86_64")]
fn avx512_pooling() -> bool {
    #[cfg(test)]
    if AVX2_ONLY.with(|a| a.get()) {
        return false;
    }
    avx512()
}

/// Whether a max pooling of `(N, C, H, W)` input `dims` on f32 takes the AVX2 kernel across
/// planes on this thread (for tests).
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn takes_avx2_across(pool: Pool2d, dims: &[usize]) -> bool {
    Plane::new(pool, dims).is_ok_and(|(_, plane)| avx2_windows::<f32>(&plane).is_some())
}

/// The gather table for a max pooling on f32 with AVX-512, where the 2x2 kernels do not apply.
#[cfg(target_arch = "x86_64")]
fn gather_taps<T: candle_core::WithDType>(plane: &Plane) -> Option<gather::Taps> {
    let applies = T::DTYPE == candle_core::DType::F32
        && plane.pool.kind == PoolKind::Max
        && !plane.whole_2x2_blocks()
        && avx512_pooling();
    applies.then(|| gather::Taps::new(plane)).flatten()
}

/// The window table for a max pooling on f32 with AVX2 but not AVX-512, where the 2x2
/// kernels do not apply, on planes small enough ([`avx2::ACROSS_INPUTS`]).
#[cfg(target_arch = "x86_64")]
fn avx2_windows<T: candle_core::WithDType>(plane: &Plane) -> Option<avx2::Windows> {
    let applies = T::DTYPE == candle_core::DType::F32
        && plane.pool.kind == PoolKind::Max
        && !plane.whole_2x2_blocks()
        && !avx512_pooling()
        && crate::avx2::available();
    applies.then(|| avx2::Windows::new(plane)).flatten()
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} needs a contiguous tensor"),
    }
}

/// A pooling on the CPU. Where a max pooling kernel that keeps its choices runs (AVX-512's
/// gathered kernels, AVX2's across planes), the forward pass keeps
/// each output's chosen input (as PyTorch's `max_pool2d_with_indices`) and the backward pass
/// only adds the gradients there.
pub(super) struct PoolOp {
    pool: Pool2d,
    chosen: OnceLock<Arc<Vec<i32>>>,
    relu: bool,
}

impl PoolOp {
    pub(super) fn new(pool: Pool2d) -> Self {
        Self {
            pool,
            chosen: OnceLock::new(),
            relu: false,
        }
    }

    /// `relu(pool(x))` as one op (f32 only): the ReLU applied to each plane's outputs as they
    /// are made, its backward a pass over the output gradient before the pooling's.
    pub(super) fn with_relu(pool: Pool2d) -> Self {
        Self {
            relu: true,
            ..Self::new(pool)
        }
    }

    /// The ReLU of a plane's outputs, in place, if asked: `torch.relu` (NaN stays NaN).
    fn relu_plane<T: candle_core::WithDType>(&self, y: &mut [T]) {
        if self.relu {
            for v in y {
                if *v <= T::zero() {
                    *v = T::zero();
                }
            }
        }
    }

    /// A max pooling on f32 whose `kernel(x, y, chosen)` pools the planes `x` into `y` and
    /// writes each output's chosen input (its index in the plane) into `chosen`, every one of
    /// them, `group` planes a task: the outputs, ReLU'd if asked, with the choices kept for
    /// the backward pass. `kernel` must write every output and choice of its planes (the
    /// outputs are read as written).
    #[cfg(target_arch = "x86_64")]
    fn with_choices<T: candle_core::WithDType>(
        &self,
        x: &[T],
        planes: usize,
        plane: &Plane,
        group: usize,
        shape: Shape,
        kernel: impl Fn(&[f32], &mut [MaybeUninit<f32>], &mut [MaybeUninit<i32>]) + Sync,
    ) -> Result<(Vec<T>, Shape)> {
        if T::DTYPE != candle_core::DType::F32 {
            candle_core::bail!("pooling: the vector kernels take f32, not {:?}", T::DTYPE)
        }
        // SAFETY: `T` is f32 (checked above).
        let x = unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) };
        let (ohw, hw) = (plane.oh * plane.ow, plane.h * plane.w);
        let n = planes * ohw;
        let (mut y, mut chosen) = (Vec::<f32>::with_capacity(n), Vec::<i32>::with_capacity(n));
        let chunk = (group.max(1) * ohw).max(1);
        y.spare_capacity_mut()[..n]
            .par_chunks_mut(chunk)
            .zip(chosen.spare_capacity_mut()[..n].par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(i, (y, chosen))| {
                let count = y.len() / ohw.max(1);
                kernel(&x[i * group.max(1) * hw..][..count * hw], y, chosen)
            });
        // SAFETY: the kernels wrote every plane's outputs (their contract).
        unsafe {
            y.set_len(n);
            chosen.set_len(n);
        }
        if self.relu {
            y.par_chunks_mut(ohw.max(1))
                .for_each(|y| self.relu_plane(y));
        }
        if self.chosen.set(Arc::new(chosen)).is_err() {
            candle_core::bail!("pooling: the op ran twice")
        }
        // SAFETY: `T` is f32 (checked above).
        let y: Vec<T> = unsafe {
            let mut y = std::mem::ManuallyDrop::new(y);
            Vec::from_raw_parts(y.as_mut_ptr().cast::<T>(), y.len(), y.capacity())
        };
        Ok((y, shape))
    }

    pub(super) fn run<T: candle_core::WithDType>(
        &self,
        x: &[T],
        layout: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        let x = contiguous(x, layout, "pooling")?;
        let (planes, plane) = Plane::new(self.pool, layout.dims())?;
        let (ohw, hw) = (plane.oh * plane.ow, plane.h * plane.w);
        let d = layout.dims();
        let shape = Shape::from((d[0], d[1], plane.oh, plane.ow));
        #[cfg(target_arch = "x86_64")]
        if let Some(taps) = gather_taps::<T>(&plane) {
            // Planes of at most 16 outputs and 64 inputs several to a vector, their taps
            // permuted from registers; other planes of fewer than 16 outputs 16 at a time, one
            // a lane (where 16 planes' indices fit the gather's i32 offsets); others one at a
            // time.
            let packed = gather::Packed::new(&taps, hw);
            let group = match &packed {
                // Many vectors a task, so that their comparisons' chains overlap.
                Some(p) => p.planes * 32,
                None if ohw < 16 && hw.saturating_mul(16) < i32::MAX as usize => 16,
                None => 1,
            };
            return self.with_choices(x, planes, &plane, group, shape, |x, y, chosen| {
                let count = y.len() / ohw.max(1);
                // SAFETY: the CPU has AVX-512F (checked by `gather_taps`); `x` holds the
                // `count` planes whose outputs are `y` and `chosen`; the kernels write every
                // output of the planes.
                unsafe {
                    match (&packed, group) {
                        (Some(p), _) => gather::max_forward_packed(p, count, x, y, chosen),
                        (None, 1) if plane.ow >= ROWS_FROM && plane.pool.stride.1 == 1 => {
                            gather::max_forward_rows::<1>(&plane, x, y, chosen)
                        }
                        (None, 1) if plane.ow >= ROWS_FROM && plane.pool.stride.1 == 2 => {
                            gather::max_forward_rows::<2>(&plane, x, y, chosen)
                        }
                        (None, 1) => gather::max_forward(&taps, x, y, chosen),
                        _ => gather::max_forward_across(&taps, hw, count, x, y, chosen),
                    }
                }
            });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(windows) = avx2_windows::<T>(&plane) {
            // Groups of 8 planes, several a task on planes of up to 1024 inputs (at most 256
            // planes and about 8192 inputs a task: the transposed buffers are made once a
            // task), one on larger ones, and at least a task a thread where there are planes
            // enough.
            let threads = rayon::current_num_threads().max(1);
            let group = (8 * 1024 / hw)
                .clamp(8, 256)
                .min(planes.div_ceil(threads).next_multiple_of(8))
                / 8
                * 8;
            #[cfg(test)]
            ACROSS_RUNS.with(|r| r.set(r.get() + 1));
            return self.with_choices(x, planes, &plane, group, shape, |x, y, chosen| {
                let count = y.len() / ohw.max(1);
                // SAFETY: the CPU has AVX2 (checked by `avx2_windows`); `x` holds the `count`
                // planes whose outputs are `y` and `chosen`.
                unsafe { avx2::max_forward_across(&windows, count, x, y, chosen) }
            });
        }
        let y = crate::fill::par_init(planes * ohw, ohw, T::zero(), |i, y| {
            plane.forward(&x[i * hw..][..hw], y);
            self.relu_plane(y);
        });
        Ok((y, shape))
    }
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = crate::profile::Timer::start(crate::profile::Part::Pool);
        match storage {
            CpuStorage::F32(x) => {
                let (y, s) = self.run(x, layout)?;
                Ok((CpuStorage::F32(y), s))
            }
            CpuStorage::F64(x) => {
                let (y, s) = self.run(x, layout)?;
                Ok((CpuStorage::F64(y), s))
            }
            _ => candle_core::bail!("pooling supports f32 and f64 tensors"),
        }
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // Through the ReLU first: the pooling's output gradient.
        let relu_grad;
        let grad_res = match self.relu {
            true => {
                relu_grad = crate::activation::relu_backward(res, grad_res)?;
                &relu_grad
            }
            false => grad_res,
        };
        if let Some(chosen) = self.chosen.get() {
            let op = Scatter {
                chosen: chosen.clone(),
                input: arg.shape().clone(),
            };
            return grad_res.contiguous()?.apply_op1_no_bwd(&op).map(Some);
        }
        let grad = arg.apply_op2(&grad_res.contiguous()?, PoolBackwardOp(self.pool))?;
        Ok(Some(grad))
    }
}

/// The input gradient of a max pooling from its forward pass's choices (per plane).
struct Scatter {
    chosen: Arc<Vec<i32>>,
    input: Shape,
}

impl CustomOp1 for Scatter {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = crate::profile::Timer::start(crate::profile::Part::Pool);
        let gy = match storage {
            CpuStorage::F32(g) => contiguous(g, layout, "pooling backward")?,
            _ => candle_core::bail!("max pooling backward: an f32 gradient was expected"),
        };
        let (planes, hw) = match self.input.dims() {
            [n, c, h, w] => (n * c, h * w),
            d => candle_core::bail!("max pooling backward: input of shape {d:?}"),
        };
        if planes == 0 {
            return Ok((CpuStorage::F32(Vec::new()), self.input.clone()));
        }
        if gy.len() != self.chosen.len() {
            candle_core::bail!(
                "max pooling backward: {} gradients for {} outputs",
                gy.len(),
                self.chosen.len()
            )
        }
        let ohw = gy.len() / planes;
        let gx = crate::fill::par_init(planes * hw, hw, 0f32, |i, gx| {
            let at = i * ohw..(i + 1) * ohw;
            scatter(&self.chosen[at.clone()], &gy[at], gx)
        });
        Ok((CpuStorage::F32(gx), self.input.clone()))
    }
}

/// The input gradient of [`PoolOp`]: takes the input and the output's gradient.
struct PoolBackwardOp(Pool2d);

impl PoolBackwardOp {
    fn run<T: candle_core::WithDType>(
        &self,
        x: &[T],
        lx: &Layout,
        gy: &[T],
        lg: &Layout,
    ) -> Result<Vec<T>> {
        let x = contiguous(x, lx, "pooling backward")?;
        let gy = contiguous(gy, lg, "pooling backward")?;
        let (_, plane) = Plane::new(self.0, lx.dims())?;
        let (ohw, hw) = (plane.oh * plane.ow, plane.h * plane.w);
        Ok(crate::fill::par_init(x.len(), hw, T::zero(), |i, gx| {
            plane.backward(&x[i * hw..][..hw], &gy[i * ohw..][..ohw], gx)
        }))
    }
}

impl CustomOp2 for PoolBackwardOp {
    fn name(&self) -> &'static str {
        "pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = crate::profile::Timer::start(crate::profile::Part::Pool);
        let shape = l1.shape().clone();
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                Ok((CpuStorage::F32(self.run(x, l1, g, l2)?), shape))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                Ok((CpuStorage::F64(self.run(x, l1, g, l2)?), shape))
            }
            _ => candle_core::bail!("pooling backward supports f32 and f64 of one dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    /// The 2x2 paths give the general window loops' results bit for bit, forward and backward,
    /// on even and odd planes, with ties, NaN and signed zeros, for max (which does not take
    /// them in the layer) and both averages.
    #[test]
    fn the_2x2_paths_equal_the_window_loops() -> Result<()> {
        let kinds = [
            PoolKind::Max,
            PoolKind::Avg {
                count_include_pad: true,
            },
            PoolKind::Avg {
                count_include_pad: false,
            },
        ];
        for kind in kinds {
            for (h, w) in [(8, 6), (7, 9), (2, 2), (3, 2)] {
                let pool = Pool2d {
                    kind,
                    ..Pool2d::max(2, 2)
                };
                let (_, plane) = Plane::new(pool, &[1, 1, h, w])?;
                assert_eq!(plane.is_2x2(), kind != PoolKind::Max);
                let x: Vec<f32> = (0..h * w)
                    .map(|i| match i % 11 {
                        3 => f32::NAN,
                        5 => -0.0,
                        k => ((i * 7) % 4) as f32 - k as f32 / 3.0,
                    })
                    .collect();
                let gy: Vec<f32> = (0..plane.oh * plane.ow).map(|i| i as f32 - 2.5).collect();
                let (mut y1, mut y2) = (vec![0f32; gy.len()], vec![0f32; gy.len()]);
                plane.forward_2x2(&x, &mut y1);
                plane.forward_windows(&x, &mut y2);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y1), bits(&y2), "{kind:?} {h}x{w} forward");
                let (mut g1, mut g2) = (vec![0f32; x.len()], vec![0f32; x.len()]);
                plane.backward_2x2(&x, &gy, &mut g1);
                plane.backward_windows(&x, &gy, &mut g2);
                assert_eq!(bits(&g1), bits(&g2), "{kind:?} {h}x{w} backward");
            }
        }
        // The AVX-512 and AVX2 max pooling against the window loops: rows of 1 to 20 windows
        // (one vector and a part, two and a half of AVX2's), odd sides, ties, NaN (first,
        // later, two in a window), signed zeros, and a -0.0 gradient.
        #[cfg(target_arch = "x86_64")]
        {
            type Kernels = (
                unsafe fn(&Plane, &[f32], &mut [f32]),
                unsafe fn(&Plane, &[f32], &[f32], &mut [f32]),
            );
            let mut vectors: Vec<(&str, Kernels)> = Vec::new();
            if avx512() {
                vectors.push(("AVX-512", (simd::max_forward, simd::max_backward)));
            }
            if crate::avx2::available() {
                vectors.push(("AVX2", (avx2::max_forward, avx2::max_backward)));
            }
            for (name, (forward, backward)) in vectors {
                for (h, w) in [
                    (8, 6),
                    (7, 9),
                    (2, 2),
                    (3, 2),
                    (24, 24),
                    (4, 40),
                    (5, 33),
                    (2, 31),
                    (4, 34),
                    (6, 28),
                ] {
                    let (_, plane) = Plane::new(Pool2d::max(2, 2), &[1, 1, h, w])?;
                    let (x, gy) = awkward(h * w, plane.oh * plane.ow, 13);
                    let (mut y1, mut y2) = (vec![0f32; gy.len()], vec![0f32; gy.len()]);
                    // SAFETY: the CPU has what the kernels need (checked above).
                    unsafe { forward(&plane, &x, &mut y1) };
                    plane.forward_windows(&x, &mut y2);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y1), bits(&y2), "{name} max {h}x{w} forward");
                    let (mut g1, mut g2) = (vec![0f32; x.len()], vec![0f32; x.len()]);
                    // SAFETY: as above.
                    unsafe { backward(&plane, &x, &gy, &mut g1) };
                    plane.backward_windows(&x, &gy, &mut g2);
                    assert_eq!(bits(&g1), bits(&g2), "{name} max {h}x{w} backward");
                }
            }
        }
        assert!(
            !Plane::new(Pool2d::max(2, 2).ceil_mode(true), &[1, 1, 3, 3])?
                .1
                .is_2x2()
        );
        assert!(!Plane::new(Pool2d::max(2, 1), &[1, 1, 4, 4])?.1.is_2x2());
        Ok(())
    }

    /// `n` inputs with NaN (two in a row every `period`), signed zeros, ties and negatives, and
    /// `m` output gradients with -0.0 every fifth.
    fn awkward(n: usize, m: usize, period: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..n)
            .map(|i| match i % period {
                3 | 4 => f32::NAN,
                5 => -0.0,
                6 => 0.0,
                k => ((i * 7) % 4) as f32 - k as f32 / 3.0,
            })
            .collect();
        let gy = (0..m)
            .map(|i| if i % 5 == 0 { -0.0 } else { i as f32 - 2.5 })
            .collect();
        (x, gy)
    }

    /// `kernel(x, y, chosen)` pools `count` planes of `plane`'s shape side by side (each with
    /// its NaNs, ties and signed zeros in other places; then all negative, so that a padding
    /// value taken for an input would win; then all negative infinity but the NaNs, so that
    /// only the first tap inside a window is its maximum) as the window loops pool each: the same output
    /// bits and the same chosen inputs ([`Plane::argmax`]), and the backward from those
    /// choices the same; nothing read past the planes (NaN there) nor written past their
    /// outputs (sentinels there).
    #[cfg(target_arch = "x86_64")]
    fn many_planes(
        plane: &Plane,
        count: usize,
        what: &str,
        kernel: impl Fn(&[f32], &mut [MaybeUninit<f32>], &mut [MaybeUninit<i32>]),
    ) {
        let values = awkward(count * plane.h * plane.w, 0, 7 + count).0;
        let negative = values.iter().map(|v| v - 100.0).collect();
        let infinite = values
            .iter()
            .map(|v| if v.is_nan() { *v } else { f32::NEG_INFINITY })
            .collect();
        for (values, what) in [
            (values, what.to_string()),
            (negative, format!("{what} (< 0)")),
            (infinite, format!("{what} (-inf)")),
        ] {
            pools_as_the_loops(plane, count, values, &what, &kernel);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn pools_as_the_loops(
        plane: &Plane,
        count: usize,
        mut x: Vec<f32>,
        what: &str,
        kernel: impl Fn(&[f32], &mut [MaybeUninit<f32>], &mut [MaybeUninit<i32>]),
    ) {
        const PAST: usize = 32;
        let (hw, outputs) = (plane.h * plane.w, plane.oh * plane.ow);
        x.extend([f32::NAN; PAST]);
        let mut y = vec![MaybeUninit::new(1234.5f32); count * outputs + PAST];
        let mut chosen = vec![MaybeUninit::new(-7i32); count * outputs + PAST];
        let n = count * outputs;
        kernel(&x[..count * hw], &mut y[..n], &mut chosen[..n]);
        // SAFETY: every element was initialised above (and is overwritten or not).
        let y: Vec<f32> = y.iter().map(|v| unsafe { v.assume_init() }).collect();
        let chosen: Vec<i32> = chosen.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert!(
            y[n..].iter().all(|v| *v == 1234.5),
            "{what} {count}: written past"
        );
        assert!(
            chosen[n..].iter().all(|c| *c == -7),
            "{what} {count}: written past"
        );
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        // Output gradients without zeros, so that every choice moves a gradient.
        let gy: Vec<f32> = (0..outputs).map(|o| o as f32 + 1.5).collect();
        for k in 0..count {
            let xk = &x[k * hw..][..hw];
            let mut want = vec![0f32; outputs];
            plane.forward_windows(xk, &mut want);
            let got = &y[k * outputs..][..outputs];
            assert_eq!(bits(got), bits(&want), "{what} {k}/{count} forward");
            let ck = &chosen[k * outputs..][..outputs];
            for (o, c) in ck.iter().enumerate() {
                let at = plane.argmax(xk, plane.window(o / plane.ow, o % plane.ow));
                assert_eq!(*c as usize, at, "{what} {k}/{count} output {o}'s choice");
            }
            let (mut g1, mut g2) = (vec![0f32; hw], vec![0f32; hw]);
            scatter(ck, &gy, &mut g1);
            plane.backward_windows(xk, &gy, &mut g2);
            assert_eq!(bits(&g1), bits(&g2), "{what} {k}/{count} backward");
        }
    }

    /// The max poolings the vector kernels are tested on: overlapping windows (3x3 stride 2, as
    /// ResNet's stem; stride 1), padding, ceil mode, non-square kernels and strides.
    #[cfg(target_arch = "x86_64")]
    fn pools() -> [Pool2d; 11] {
        [
            Pool2d::max(3, 2).padding(1),
            Pool2d::max(3, 2),
            Pool2d::max(3, 2).ceil_mode(true),
            Pool2d::max(3, 1).padding(1),
            Pool2d::max(2, 2).ceil_mode(true),
            Pool2d::max(5, 3).padding(2),
            Pool2d::max(5, 1).padding(2),
            Pool2d::max(5, 2).padding(2),
            Pool2d::max(3, 2).padding(1).ceil_mode(true),
            Pool2d {
                kernel: (3, 1),
                stride: (1, 1),
                padding: (1, 0),
                ..Pool2d::max(2, 2)
            },
            Pool2d {
                kernel: (2, 3),
                stride: (1, 2),
                padding: (1, 1),
                ..Pool2d::max(2, 2)
            },
        ]
    }

    /// The (H, W) maps they are tested on: 1 to 40 outputs, square and not, odd sides.
    #[cfg(target_arch = "x86_64")]
    const MAPS: [(usize, usize); 10] = [
        (16, 16),
        (7, 9),
        (3, 3),
        (5, 4),
        (12, 13),
        (6, 40),
        (1, 1),
        (2, 2),
        (4, 4),
        (2, 3),
    ];

    /// The gathered AVX-512 max pooling gives the window loops' results bit for bit, forward
    /// and backward: overlapping windows (3x3 stride 2, as ResNet's stem; stride 1), padding,
    /// ceil mode, non-square kernels and strides, planes of 1 to 40 outputs, ties, NaN (first,
    /// later, several in a window), signed zeros and a -0.0 gradient.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_gathered_max_pooling_equals_the_window_loops() -> Result<()> {
        if !avx512() {
            return Ok(());
        }
        for pool in pools() {
            for (h, w) in MAPS {
                let Ok((_, plane)) = Plane::new(pool, &[1, 1, h, w]) else {
                    continue;
                };
                let Some(taps) = gather_taps::<f32>(&plane) else {
                    // Whole 2x2 blocks take the permuted kernels instead.
                    assert!(plane.whole_2x2_blocks(), "{pool:?} {h}x{w}");
                    continue;
                };
                let (x, gy) = awkward(h * w, plane.oh * plane.ow, 17);
                let what = format!("{pool:?} {h}x{w}");
                let mut y2 = vec![0f32; gy.len()];
                let mut y1 = vec![std::mem::MaybeUninit::new(0f32); gy.len()];
                let mut chosen = vec![std::mem::MaybeUninit::new(-1i32); gy.len()];
                // SAFETY: the CPU has AVX-512F.
                unsafe { gather::max_forward(&taps, &x, &mut y1, &mut chosen) };
                // SAFETY: initialised above (and every one written by `max_forward`).
                let y1: Vec<f32> = y1.iter().map(|v| unsafe { v.assume_init() }).collect();
                let chosen: Vec<i32> = chosen.iter().map(|v| unsafe { v.assume_init() }).collect();
                plane.forward_windows(&x, &mut y2);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y1), bits(&y2), "{what} forward");
                // Rows of 16 outputs, taps loaded (horizontal stride 1) or split (stride 2).
                let rows = |x: &[f32], y: &mut [MaybeUninit<f32>], c: &mut [MaybeUninit<i32>]| {
                    let (hw, outputs) = (h * w, plane.oh * plane.ow);
                    for k in 0..3 {
                        let (x, y) = (&x[k * hw..][..hw], &mut y[k * outputs..][..outputs]);
                        let c = &mut c[k * outputs..][..outputs];
                        // SAFETY: the CPU has AVX-512F; the stride is the kernel's.
                        match pool.stride.1 {
                            1 => unsafe { gather::max_forward_rows::<1>(&plane, x, y, c) },
                            _ => unsafe { gather::max_forward_rows::<2>(&plane, x, y, c) },
                        }
                    }
                };
                if pool.stride.1 <= 2 {
                    many_planes(&plane, 3, &format!("{what} rows"), rows);
                    // Every lane read, and every value loaded (the odd ones of stride 2 too,
                    // whose values no output shows), is inside the row; every lane inside it
                    // and under the block's outputs is read.
                    let (wi, s) = (w as isize, pool.stride.1 as isize);
                    let columns = match s {
                        1 => gather::row_columns::<1>(&plane),
                        _ => gather::row_columns::<2>(&plane),
                    };
                    for (k, &(base, m, ma, mb)) in columns.iter().enumerate() {
                        let j0 = (k / pool.kernel.1 * 16) as isize;
                        let n = (plane.ow as isize - j0).min(16);
                        let inside = |e: isize| (0..wi).contains(&(base + e));
                        for l in 0..16isize {
                            let read = m & (1 << l) != 0;
                            assert_eq!(read, l < n && inside(s * l), "{what} lane {l} of {k}");
                            let loaded = (ma & (1 << l) != 0, mb & (1 << l) != 0);
                            assert!(!loaded.0 || inside(l), "{what}: value {l} of {k}");
                            assert!(
                                !loaded.1 || inside(l + 16),
                                "{what}: value {} of {k}",
                                l + 16
                            );
                        }
                    }
                }
                // Plane by plane (three of them).
                let (hw, outputs) = (h * w, plane.oh * plane.ow);
                many_planes(&plane, 3, &format!("{what} plane by plane"), |x, y, c| {
                    for k in 0..3 {
                        let (x, y) = (&x[k * hw..][..hw], &mut y[k * outputs..][..outputs]);
                        // SAFETY: the CPU has AVX-512F.
                        unsafe {
                            gather::max_forward(&taps, x, y, &mut c[k * outputs..][..outputs])
                        }
                    }
                });
                // Planes side by side, one a lane (1 to 16 of them, each with its NaNs, ties
                // and signed zeros in other places): each plane's outputs and choices as its
                // own.
                for count in [1, 5, 16] {
                    many_planes(&plane, count, &format!("{what} across"), |x, y, c| {
                        // SAFETY: the CPU has AVX-512F; `x` holds `count` planes, `y` and `c`
                        // their outputs.
                        unsafe { gather::max_forward_across(&taps, h * w, count, x, y, c) }
                    });
                }
                // Small planes several to a vector, taps permuted from registers: 1 to two
                // vectors' worth and one plane more (the last vector possibly short).
                if let Some(packed) = gather::Packed::new(&taps, h * w) {
                    assert!(plane.oh * plane.ow <= 16 && h * w <= 64, "{what}");
                    for count in 1..=2 * packed.planes + 1 {
                        many_planes(&plane, count, &format!("{what} packed"), |x, y, c| {
                            // SAFETY: as above.
                            unsafe { gather::max_forward_packed(&packed, count, x, y, c) }
                        });
                    }
                } else {
                    assert!(plane.oh * plane.ow > 16 || h * w > 64, "{what}");
                }
                let (mut g1, mut g2) = (vec![0f32; x.len()], vec![0f32; x.len()]);
                scatter(&chosen, &gy, &mut g1);
                plane.backward_windows(&x, &gy, &mut g2);
                assert_eq!(bits(&g1), bits(&g2), "{what} backward");
            }
        }
        Ok(())
    }

    /// The AVX2 max pooling of small planes, 8 at a time, one a lane, gives the window loops'
    /// results bit for bit, forward and backward, on the gathered kernels' poolings and maps
    /// and 64x64 and 128x128 ones (the largest it takes; 129x128 it does not): 1 to 17 planes
    /// (a group of 8 and a part, two and one more; 3 and 9 of the larger ones), each with its
    /// NaNs, ties and signed zeros in other places.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_max_pooling_across_planes_equals_the_window_loops() -> Result<()> {
        if !crate::avx2::available() {
            return Ok(());
        }
        for pool in pools() {
            for (h, w) in MAPS.into_iter().chain([(64, 64), (128, 128), (129, 128)]) {
                let Ok((_, plane)) = Plane::new(pool, &[1, 1, h, w]) else {
                    continue;
                };
                let windows = avx2::Windows::new(&plane);
                assert_eq!(
                    windows.is_some(),
                    h * w <= avx2::ACROSS_INPUTS,
                    "{pool:?} {h}x{w}"
                );
                let Some(windows) = windows else {
                    continue;
                };
                // Large windows on large maps: too many taps for a table.
                let (_, wide) = Plane::new(Pool2d::max(33, 1).padding(16), &[1, 1, 128, 128])?;
                assert!(avx2::Windows::new(&wide).is_none());
                let what = format!("{pool:?} {h}x{w} AVX2 across");
                let counts: &[usize] = match h * w > 1024 {
                    true => &[3, 9],
                    false => &[1, 3, 8, 9, 17],
                };
                for &count in counts {
                    many_planes(&plane, count, &what, |x, y, c| {
                        // SAFETY: the CPU has AVX2; `x` holds `count` planes, `y` and `c`
                        // their outputs.
                        unsafe { avx2::max_forward_across(&windows, count, x, y, c) }
                    });
                }
            }
        }
        Ok(())
    }
}
