//! Where a convolution's kernel taps land: output sizes, and the `im2col` / `col2im` copies
//! between an image and its columns (row-major for the whole-batch path, transposed for the
//! image-by-image CPU path).

use std::ops::Range;

use candle_core::{Result, Tensor};

/// Where the kernel's taps land for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geometry {
    pub(super) fn new(
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} (stride {stride}, padding {padding}) does not fit a {h}x{w} input"
            )
        }
        Ok(Self {
            c,
            h,
            w,
            kh,
            kw,
            stride,
            padding,
            oh: (h + 2 * padding - kh) / stride + 1,
            ow: (w + 2 * padding - kw) / stride + 1,
        })
    }

    /// The geometry of convolving `xs` (N, C, H, W) with `weight` (O, C, KH, KW), and O.
    pub(super) fn of_conv(
        xs: &Tensor,
        weight: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Result<(Self, usize)> {
        let (cout, _, kh, kw) = weight.dims4()?;
        let (_, c, h, w) = check_input(xs, weight, 1)?;
        Ok((Self::new(c, h, w, kh, kw, stride, padding)?, cout))
    }

    pub(super) fn row_len(&self) -> usize {
        self.c * self.kh * self.kw
    }

    pub(super) fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// For output column `ox`: the input column of tap 0 and the valid taps `lo..hi`.
    #[inline]
    pub(super) fn columns(&self, ox: usize) -> (isize, usize, usize) {
        let x0 = (ox * self.stride) as isize - self.padding as isize;
        let lo = (-x0).clamp(0, self.kw as isize) as usize;
        let hi = (self.w as isize - x0).clamp(lo as isize, self.kw as isize) as usize;
        (x0, lo, hi)
    }

    /// The input row read by output row `oy` at tap row `ki`, if inside the image.
    #[inline]
    pub(super) fn row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.stride + ki)
            .checked_sub(self.padding)
            .filter(|y| *y < self.h)
    }

    /// Fills the rows of one output image row `oy` (`out` arrives zeroed): `ow` rows of
    /// `c * kh * kw` values. Element loops, not slice copies: runs are only `kw` long.
    pub(super) fn im2col_row<T: candle_core::WithDType>(
        &self,
        img: &[T],
        oy: usize,
        out: &mut [T],
    ) {
        let row_len = self.row_len();
        let plane_len = self.h * self.w;
        let rows: Vec<Option<usize>> = (0..self.kh).map(|ki| self.row(oy, ki)).collect();
        for ox in 0..self.ow {
            let (x0, lo, hi) = self.columns(ox);
            let row = &mut out[ox * row_len..(ox + 1) * row_len];
            for ch in 0..self.c {
                for (ki, y) in rows.iter().enumerate() {
                    let Some(y) = *y else { continue };
                    let src = ch * plane_len + y * self.w;
                    let dst = (ch * self.kh + ki) * self.kw;
                    for kj in lo..hi {
                        row[dst + kj] = img[src + (x0 + kj as isize) as usize];
                    }
                }
            }
        }
    }

    /// Adds one image's column gradients back onto its input gradient.
    pub(super) fn col2im<T: candle_core::WithDType>(&self, cols: &[T], img: &mut [T]) {
        let row_len = self.row_len();
        let plane_len = self.h * self.w;
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                let (x0, lo, hi) = self.columns(ox);
                if lo >= hi {
                    continue;
                }
                let row = &cols[(oy * self.ow + ox) * row_len..(oy * self.ow + ox + 1) * row_len];
                for (ch, taps) in row.chunks_exact(self.kh * self.kw).enumerate() {
                    let plane = &mut img[ch * plane_len..(ch + 1) * plane_len];
                    for (ki, src) in taps.chunks_exact(self.kw).enumerate() {
                        if let Some(y) = self.row(oy, ki) {
                            let dst = y * self.w + (x0 + lo as isize) as usize;
                            for (d, v) in plane[dst..dst + hi - lo].iter_mut().zip(&src[lo..hi]) {
                                *d += *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Channels ahead of the one being copied whose rows [`Geometry::prefetch_rows`] asks of
/// memory, on planes of [`PREFETCH_PLANE`] values and more: the copies read (or add into) a few
/// rows of each channel's plane, and on planes of a 4 KB page or more the hardware's
/// prefetchers (which stop at page boundaries) missed them, so that each row waited for its
/// load (the 1x1 stride-2 projection of `resnet18-cifar`, 64 channels of 32x32 at batch 128:
/// 6.6 ms of thread time per forward in its `im2col` for 1.4 ms in its product; in the step,
/// forward and both gradients 6.2-6.6 -> 3.1-4.2 ms each). On 16x16 planes (four to a page)
/// the hint measured slower (128->256: 1.48-2.12 against 1.62-2.26 ms). It applies to every
/// kernel on large planes (the default build's strided 3x3 ones too, not measured apart).
const PREFETCH_CHANNELS: usize = 2;

/// Plane sizes (values) from which [`PREFETCH_CHANNELS`] applies: a 4 KB page of f32.
const PREFETCH_PLANE: usize = 1024;

impl Geometry {
    /// Asks the cache for the rows of channel `ch`'s plane in `img` that output rows `rows`
    /// read through the kernel (a hint: no effect on results).
    fn prefetch_rows(&self, img: &[f32], ch: usize, rows: Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let plane = ch * self.h * self.w;
            for oy in rows {
                for ki in 0..self.kh {
                    let Some(y) = self.row(oy, ki) else { continue };
                    let line = plane + y * self.w;
                    for at in (line..line + self.w).step_by(16) {
                        // SAFETY: a prefetch reads nothing and never faults; the address is
                        // inside `img` (row `y < h` of channel `ch < c`).
                        unsafe {
                            _mm_prefetch::<_MM_HINT_T0>(img.as_ptr().wrapping_add(at).cast())
                        };
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (img, ch, rows);
    }

    /// The columns of one image's output rows `rows` as (C·KH·KW) rows of `rows.len()`·OW
    /// values: row (ch, ki, kj) holds the input each output position reads through tap
    /// (ki, kj), zero in the padding. Every entry is written, so `out` may hold anything.
    pub(super) fn im2col_t_rows(&self, img: &[f32], rows: Range<usize>, out: &mut [f32]) {
        let len = rows.len() * self.ow;
        self.im2col_t_rows_strided(img, rows, out, len)
    }

    /// [`Self::im2col_t_rows`] with the (C·KH·KW) rows `stride` values apart in `out`
    /// (`stride` at least the row's length), so that several images' columns sit side by side.
    pub(super) fn im2col_t_rows_strided(
        &self,
        img: &[f32],
        rows: Range<usize>,
        out: &mut [f32],
        stride: usize,
    ) {
        let (len, plane) = (rows.len() * self.ow, self.h * self.w);
        for r in 0..self.c * self.kh * self.kw {
            let row = &mut out[r * stride..r * stride + len];
            let (ch, ki, kj) = (r / (self.kh * self.kw), r / self.kw % self.kh, r % self.kw);
            if ki == 0 && kj == 0 && ch + PREFETCH_CHANNELS < self.c && plane >= PREFETCH_PLANE {
                self.prefetch_rows(img, ch + PREFETCH_CHANNELS, rows.clone());
            }
            let src = &img[ch * plane..(ch + 1) * plane];
            let (lo, hi, x0) = self.span(kj);
            for (oy, out_row) in rows.clone().zip(row.chunks_exact_mut(self.ow)) {
                let Some(y) = self.row(oy, ki) else {
                    out_row.fill(0.0);
                    continue;
                };
                out_row[..lo].fill(0.0);
                out_row[hi..].fill(0.0);
                let line = &src[y * self.w..(y + 1) * self.w];
                if self.stride == 1 {
                    let start = (lo as isize + x0) as usize;
                    out_row[lo..hi].copy_from_slice(&line[start..start + hi - lo]);
                } else if self.stride == 2 && hi > lo {
                    let start = 2 * lo + kj - self.padding;
                    every_other(
                        &line[start..start + 2 * (hi - lo) - 1],
                        &mut out_row[lo..hi],
                    );
                } else {
                    for (ox, v) in out_row[lo..hi].iter_mut().enumerate() {
                        *v = line[((ox + lo) * self.stride) + kj - self.padding];
                    }
                }
            }
        }
    }

    /// Adds the columns of output rows `rows`, in [`Self::im2col_t_rows`]'s layout, back onto
    /// one image's gradient.
    pub(super) fn col2im_t_rows(&self, cols: &[f32], rows: Range<usize>, img: &mut [f32]) {
        let (len, plane) = (rows.len() * self.ow, self.h * self.w);
        for (r, row) in cols.chunks_exact(len).enumerate() {
            let (ch, ki, kj) = (r / (self.kh * self.kw), r / self.kw % self.kh, r % self.kw);
            if ki == 0 && kj == 0 && ch + PREFETCH_CHANNELS < self.c && plane >= PREFETCH_PLANE {
                self.prefetch_rows(img, ch + PREFETCH_CHANNELS, rows.clone());
            }
            let dst = &mut img[ch * plane..(ch + 1) * plane];
            let (lo, hi, _) = self.span(kj);
            for (oy, in_row) in rows.clone().zip(row.chunks_exact(self.ow)) {
                let Some(y) = self.row(oy, ki) else { continue };
                let line = &mut dst[y * self.w..(y + 1) * self.w];
                if self.stride == 2 && hi > lo {
                    let start = 2 * lo + kj - self.padding;
                    add_every_other(&in_row[lo..hi], &mut line[start..start + 2 * (hi - lo) - 1]);
                    continue;
                }
                for (ox, v) in in_row[lo..hi].iter().enumerate() {
                    line[(ox + lo) * self.stride + kj - self.padding] += *v;
                }
            }
        }
    }

    /// Whether `im2col` would copy the image unchanged: a 1x1 kernel, stride 1, no padding.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// For tap column `kj`: the output columns `lo..hi` whose input column is inside the
    /// image, and the input column of output column 0 relative to it (`ox + x0` for stride 1).
    pub(super) fn span(&self, kj: usize) -> (usize, usize, isize) {
        let x0 = kj as isize - self.padding as isize;
        let s = self.stride as isize;
        // The first ox with ox * s + x0 >= 0, and the first with ox * s + x0 >= w.
        let first = |bound: isize| ((bound - x0).max(0) + s - 1) / s;
        let lo = (first(0) as usize).min(self.ow);
        let hi = (first(self.w as isize) as usize).clamp(lo, self.ow);
        (lo, hi, x0)
    }
}

/// `dst[i] = src[2i]`: a stride-2 convolution's taps along a row. `src` holds `2·dst.len() - 1`
/// values (or more). Sixteen at a time with AVX-512 (two loads, one permute; the last sixteen
/// or fewer with masked loads and stores, which touch nothing past the values used), else one
/// by one.
fn every_other(src: &[f32], dst: &mut [f32]) {
    assert!(
        src.len() + 1 >= 2 * dst.len(),
        "every_other: source too short"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::available() {
        // SAFETY: AVX-512F is present; the lengths were checked above.
        unsafe { every_other_avx512(src, dst) };
        return;
    }
    for (i, d) in dst.iter_mut().enumerate() {
        *d = src[2 * i];
    }
}

/// The first `n` (at most 16) lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// [`every_other`] in AVX-512.
///
/// # Safety
/// The CPU has AVX-512F; `src` holds at least `2·dst.len() - 1` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn every_other_avx512(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let even = crate::avx512::index(&crate::avx512::EVEN);
    let mut i = 0;
    while i < dst.len() {
        // `m` values of `dst` from `2m - 1` of `src`, all inside the slices.
        let m = (dst.len() - i).min(16);
        let used = 2 * m - 1;
        let from = src.as_ptr().add(2 * i);
        // SAFETY: the masks read `src[2i..2i + used]` and write `dst[i..i + m]`, in bounds.
        let a = _mm512_maskz_loadu_ps(lanes(used), from);
        let b = match used > 16 {
            true => _mm512_maskz_loadu_ps(lanes(used - 16), from.add(16)),
            false => _mm512_setzero_ps(),
        };
        let picked = _mm512_permutex2var_ps(a, even, b);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), lanes(m), picked);
        i += m;
    }
}

/// `dst[2i] += src[i]`: a stride-2 convolution's column gradients added back along a row (the
/// odd values of `dst` unchanged). `dst` holds `2·src.len() - 1` values (or more). Sixteen at a
/// time with AVX-512 (the values spread to the even lanes by permutes, each sum the scalar
/// one's; the last sixteen or fewer masked), else one by one.
fn add_every_other(src: &[f32], dst: &mut [f32]) {
    assert!(
        dst.len() + 1 >= 2 * src.len(),
        "add_every_other: destination too short"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::available() {
        // SAFETY: AVX-512F is present; the lengths were checked above.
        unsafe { add_every_other_avx512(src, dst) };
        return;
    }
    for (i, v) in src.iter().enumerate() {
        dst[2 * i] += *v;
    }
}

/// [`add_every_other`] in AVX-512.
///
/// # Safety
/// The CPU has AVX-512F; `dst` holds at least `2·src.len() - 1` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_every_other_avx512(src: &[f32], dst: &mut [f32]) {
    use crate::avx512::{index, HIGH, LOW};
    use std::arch::x86_64::*;
    let (low, high) = (index(&LOW), index(&HIGH));
    // Even lanes only: the odd values are stored back as they were read (adding +0.0 would
    // turn a -0.0 into +0.0).
    const EVEN_LANES: __mmask16 = 0x5555;
    let mut i = 0;
    while i < src.len() {
        // `m` values of `src` onto `2m - 1` of `dst`, all inside the slices.
        let m = (src.len() - i).min(16);
        let used = 2 * m - 1;
        // SAFETY: the masks read `src[i..i + m]` and read and write `dst[2i..2i + used]`.
        let v = _mm512_maskz_loadu_ps(lanes(m), src.as_ptr().add(i));
        let zero = _mm512_setzero_ps();
        let (v0, v1) = (
            _mm512_permutex2var_ps(v, low, zero),
            _mm512_permutex2var_ps(v, high, zero),
        );
        let d = dst.as_mut_ptr().add(2 * i);
        let (first, second) = (lanes(used), lanes(used.saturating_sub(16)));
        let a = _mm512_maskz_loadu_ps(first, d);
        _mm512_mask_storeu_ps(d, first, _mm512_mask_add_ps(a, EVEN_LANES, a, v0));
        if second != 0 {
            let b = _mm512_maskz_loadu_ps(second, d.add(16));
            _mm512_mask_storeu_ps(d.add(16), second, _mm512_mask_add_ps(b, EVEN_LANES, b, v1));
        }
        i += m;
    }
}

/// `xs` as a batch (N, C, H, W) of `groups` times the channels of `weight` (O, C / groups, KH,
/// KW), or an error naming the shapes and, where they look like one image (C, H, W) or images
/// (N, H, W, C), the way to (N, C, H, W).
fn check_input(
    xs: &Tensor,
    weight: &Tensor,
    groups: usize,
) -> Result<(usize, usize, usize, usize)> {
    let cin = weight.dims().get(1).copied().unwrap_or(0) * groups;
    let Ok((n, c, h, w)) = xs.dims4() else {
        candle_core::bail!(
            "conv2d: input of shape {:?}: the convolution takes a batch of images (N, C, H, W){}",
            xs.dims(),
            match xs.dims() {
                [c, _, _] if *c == cin => crate::unbatched::ONE_IMAGE,
                _ => "",
            }
        )
    };
    if cin != c {
        candle_core::bail!(
            "conv2d: input has {c} channels, the kernel {:?}{} expects {cin}{}",
            weight.dims(),
            match groups {
                1 => String::new(),
                g => format!(" in {g} groups"),
            },
            match xs.dims()[3] == cin {
                // PIL's and NumPy's layout, where PyTorch's is (N, C, H, W).
                true => format!(
                    " (images (N, H, W, C) of shape {:?}? xs.permute((0, 3, 1, 2)) makes them \
                     (N, C, H, W))",
                    xs.dims()
                ),
                false => String::new(),
            }
        )
    }
    Ok((n, c, h, w))
}

/// PyTorch's checks of `F.conv2d`'s arguments, made before any path runs (Candle's grouped and
/// dilated convolution made none of them: a dilated kernel wider than the input gave a
/// wrapped-around output size, groups that do not divide the output channels dropped kernels,
/// a kernel of zero size panicked in the product): positive stride, dilation and groups; a
/// kernel (O, C / groups, KH, KW) of no zero size whose O divides into the groups; a bias of
/// O values; an input (N, C, H, W) of C channels whose padded sides hold the dilated kernel.
/// Returns the output's shape, (N, O, H_out, W_out).
pub(super) fn check_conv(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    config: &candle_nn::Conv2dConfig,
) -> Result<[usize; 4]> {
    let (stride, padding, dilation, groups) = (
        config.stride,
        config.padding,
        config.dilation,
        config.groups,
    );
    for (name, value) in [
        ("stride", stride),
        ("dilation", dilation),
        ("groups", groups),
    ] {
        if value == 0 {
            candle_core::bail!("conv2d: {name} 0: the {name} must be positive")
        }
    }
    let (cout, kh, kw) = match *weight.dims() {
        [o, c, kh, kw] if o > 0 && c > 0 && kh > 0 && kw > 0 => (o, kh, kw),
        _ => candle_core::bail!(
            "conv2d: kernel of shape {:?}: a kernel is (out channels, in channels / groups, \
             kH, kW), each at least 1",
            weight.dims()
        ),
    };
    if cout % groups != 0 {
        candle_core::bail!(
            "conv2d: {groups} groups do not divide the kernel {:?}'s {cout} output channels",
            weight.dims()
        )
    }
    if let Some(b) = bias {
        if b.dims() != [cout] {
            candle_core::bail!(
                "conv2d: bias of shape {:?} for the kernel {:?}: the bias is ({cout}), one value \
                 per output channel",
                b.dims(),
                weight.dims()
            )
        }
    }
    let (n, _, h, w) = check_input(xs, weight, groups)?;
    let reach = |k: usize| dilation * (k - 1) + 1;
    if h + 2 * padding < reach(kh) || w + 2 * padding < reach(kw) {
        candle_core::bail!(
            "conv2d: kernel {kh}x{kw}{} does not fit the {h}x{w} input padded by {padding} on \
             each side ({}x{})",
            match dilation {
                1 => String::new(),
                d => format!(" (dilation {d}: it spans {}x{})", reach(kh), reach(kw)),
            },
            h + 2 * padding,
            w + 2 * padding
        )
    }
    let out = |size: usize, k: usize| (size + 2 * padding - reach(k)) / stride + 1;
    Ok([n, cout, out(h, kh), out(w, kw)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stride-2 gather equals picking every other value, at every length around the
    /// vector's sixteen, from sources just long enough and longer.
    #[test]
    fn every_other_picks_the_even_values() {
        let src: Vec<f32> = (0..200u16).map(|i| f32::from(i) * 0.5 - 7.0).collect();
        for n in 0..70usize {
            for extra in [0, 1, 2, 31] {
                let len = (2 * n).saturating_sub(1) + extra;
                let mut dst = vec![f32::NAN; n];
                every_other(&src[3..3 + len], &mut dst);
                let want: Vec<f32> = (0..n).map(|i| src[3 + 2 * i]).collect();
                assert_eq!(dst, want, "{n} values from {len}");
            }
        }
    }

    /// The stride-2 scatter-add equals adding to every other value one by one, bit for bit
    /// (a -0.0 in an odd place stays -0.0), at every length around the vector's sixteen.
    #[test]
    fn add_every_other_adds_to_the_even_values() {
        let src: Vec<f32> = (0..100u16).map(|i| f32::from(i) * 0.25 - 3.0).collect();
        for n in 0..70usize {
            for extra in [0, 1, 2, 31] {
                let len = (2 * n).saturating_sub(1) + extra;
                let start: Vec<f32> = (0..len)
                    .map(|i| match i % 3 {
                        0 => -0.0,
                        1 => 1.0 / 3.0,
                        _ => f32::from(i as u16) * -0.125,
                    })
                    .collect();
                let mut dst = start.clone();
                add_every_other(&src[..n], &mut dst);
                let mut want = start;
                (0..n).for_each(|i| want[2 * i] += src[i]);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&dst), bits(&want), "{n} values into {len}");
            }
        }
    }
}
