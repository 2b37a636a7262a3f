//! A network's first convolution (one to four input channels: grey or RGB images, which need
//! no gradient) as a direct convolution in AVX-512 (or AVX2 and FMA, 8 positions a vector, on
//! CPUs without AVX-512), without `im2col`.
//!
//! With so few input channels the image-by-image `im2col` + GEMM spends most of its time
//! copying: the columns of a 7x7 stride-2 kernel over 3 channels have 147 rows of 16-value runs
//! read with a stride, and the products have an inner dimension of 9 to 147. Here each image is
//! copied once into a padded buffer, its columns split by phase for a stride (`x[.., j·s + p]`
//! as plane `p`, so that every tap reads a contiguous run), and 16 output positions of a row
//! are one vector (8 with AVX2):
//! - forward: for 8 output channels and two such vectors at a time (one with AVX2), every
//!   tap's input run is loaded once and multiplied by the 8 channels' weights (broadcast);
//! - kernel gradient: for 4 output channels and 4 taps at a time (2 with AVX2), the output
//!   gradient's and the input's runs multiplied lane by lane over all positions, summed per
//!   lane, the lanes added once at the end (per thread, the threads' fixed shares of the batch
//!   added in order: the same bits on every run for a given thread count and CPU);
//! - input gradient (only when the input needs one, which the routing avoids): the built-in
//!   image-by-image convolution's.
//!
//! Its bf16 mode (AVX512-BF16 and 16 or more output channels, as the other bf16 kernels)
//! rounds the input, the kernel and the output gradient to bf16 (nearest even) before the
//! products, which are then exact in float32, and sums in float32 (PyTorch's
//! `torch.autocast("cpu", torch.bfloat16)` rounds the same operands); the output and the
//! gradient stay float32. Under bf16 autocast only the `onednn` build's stride-1 first layers
//! run it: without oneDNN the image-by-image path's bf16 GEMM (two products per float32
//! lane's FMA) measured faster at every first layer with bf16 products, and with oneDNN on,
//! strided ones go to oneDNN's bf16 kernels; narrower ones stay here in float32.
//!
//! The kernel gradient's bits are the same on every run for a given thread count and kernel
//! set (each thread's share of the batch fixed by the count, the shares added in order; the
//! AVX-512 and AVX2 kernels sum 16 and 8 lanes, so their bits differ within rounding).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::geometry::Geometry;
use crate::profile::{time, Part};

/// Input channels up to which a first layer runs here.
const MAX_CHANNELS: usize = 4;

/// Output channels per forward register tile (by two vectors of 16 positions with AVX-512, one
/// of 8 with AVX2).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const OB: usize = 8;

/// Output channels and taps per kernel-gradient register tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const GO: usize = 4;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const GT: usize = 4;

#[cfg(test)]
thread_local! {
    /// Direct convolutions run on this thread (for tests).
    pub(crate) static RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

thread_local! {
    static ENABLED: std::cell::Cell<bool> =
        std::cell::Cell::new(std::env::var_os("CNN_DIRECT_CONV").is_none_or(|v| v != "0"));
}

/// Whether first layers on this thread run the direct convolution (on by default, off with
/// `CNN_DIRECT_CONV=0`; off, they take the other paths: for comparisons). Returns the
/// previous setting.
pub fn set_direct_first_layer(on: bool) -> bool {
    ENABLED.with(|e| e.replace(on))
}

#[cfg(test)]
thread_local! {
    /// Whether this thread's direct convolutions take the AVX2 kernels on a CPU with AVX-512
    /// too (for tests of both).
    pub(crate) static AVX2_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Forward passes and kernel gradients by the AVX2 kernels on this thread (for tests).
    pub(crate) static AVX2_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether first layers of output rows of 8 or more run here on this thread (for tests that
/// tell the paths apart).
#[cfg(test)]
pub(crate) fn active() -> bool {
    available() && ENABLED.with(|e| e.get())
}

/// The kernels this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Isa {
    /// AVX-512F: 16 positions a vector.
    Avx512,
    /// AVX2 and FMA: 8 positions a vector.
    Avx2,
}

impl Isa {
    /// Output positions per vector (a run's most).
    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }
}

/// The kernels this CPU runs (AVX-512F, else AVX2 and FMA), if any.
fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        let isa = *ISA.get_or_init(|| {
            let avx2 = crate::avx2::available() && is_x86_feature_detected!("fma");
            match crate::avx512::available() {
                true => Some(Isa::Avx512),
                false => avx2.then_some(Isa::Avx2),
            }
        });
        #[cfg(test)]
        if AVX2_ONLY.with(|a| a.get()) && isa.is_some() {
            return Some(Isa::Avx2);
        }
        isa
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Whether this CPU runs the direct convolution (AVX-512F, or AVX2 and FMA).
fn available() -> bool {
    isa().is_some()
}

/// Whether a convolution of this geometry whose input needs no gradient (`x_tracked` false)
/// runs here: one to four input channels, output rows of 8 or more, AVX-512 or AVX2.
pub(super) fn applies(geo: &Geometry, x_tracked: bool) -> bool {
    !x_tracked
        && (1..=MAX_CHANNELS).contains(&geo.c)
        && geo.ow >= 8
        && available()
        && ENABLED.with(|e| e.get())
}

/// The direct convolution's op: `(N, C, H, W)` images with a `(O, C, KH, KW)` kernel, both
/// contiguous float32.
pub(super) struct Direct {
    pub(super) geo: Geometry,
    pub(super) cout: usize,
    pub(super) bf16: bool,
}

/// `v` rounded to the nearest bf16 (ties to even), as float32; NaN stays NaN.
fn round_bf16(v: f32) -> f32 {
    f32::from_bits(crate::bf16_gemm::bf16_bits(v) << 16)
}

/// Where the taps land in an image's padded, phase-split copy.
struct Plan {
    /// Rows of each plane.
    hp: usize,
    /// Values per row of each plane.
    wq: usize,
    /// Offset of each tap `(c, ki, kj)` (in the kernel's order) for output (0, 0).
    taps: Vec<usize>,
    /// Each run of up to 16 output positions (8 with AVX2): (offset of its first output in a
    /// plane of the output, offset of its first input for tap offset 0, mask of its lanes).
    runs: Vec<(usize, usize, u16)>,
    /// The kernels that run (the runs' length).
    isa: Isa,
}

impl Direct {
    /// The plan for `isa`'s kernels.
    fn layout(&self, isa: Isa) -> Plan {
        let g = &self.geo;
        let s = g.stride;
        let hp = (g.oh - 1) * s + g.kh;
        let wq = g.ow + (g.kw - 1) / s;
        let mut taps = Vec::with_capacity(g.c * g.kh * g.kw);
        for c in 0..g.c {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    taps.push(((c * s + kj % s) * hp + ki) * wq + kj / s);
                }
            }
        }
        let mut runs = Vec::new();
        let most = isa.lanes();
        for oy in 0..g.oh {
            for ox in (0..g.ow).step_by(most) {
                let lanes = (g.ow - ox).min(most);
                let mask = if lanes == 16 {
                    u16::MAX
                } else {
                    (1u16 << lanes) - 1
                };
                runs.push((oy * g.ow + ox, oy * s * wq + ox, mask));
            }
        }
        Plan {
            hp,
            wq,
            taps,
            runs,
            isa,
        }
    }

    /// One image's padded, phase-split copy: plane `(c, p)` row `y` value `j` is the padded
    /// image's `(c, y, j·s + p)`, rounded to bf16 when `self.bf16`.
    fn pad_image(&self, lay: &Plan, img: &[f32], xp: &mut Vec<f32>) {
        let g = &self.geo;
        let s = g.stride;
        xp.clear();
        xp.resize(g.c * s * lay.hp * lay.wq, 0.0);
        for c in 0..g.c {
            let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
            for p in 0..s {
                for y in 0..lay.hp {
                    let Some(iy) = y.checked_sub(g.padding).filter(|iy| *iy < g.h) else {
                        continue;
                    };
                    let row = &plane[iy * g.w..(iy + 1) * g.w];
                    let dst = &mut xp[((c * s + p) * lay.hp + y) * lay.wq..][..lay.wq];
                    for (j, d) in dst.iter_mut().enumerate() {
                        if let Some(v) = (j * s + p)
                            .checked_sub(g.padding)
                            .and_then(|ix| row.get(ix))
                        {
                            *d = if self.bf16 { round_bf16(*v) } else { *v };
                        }
                    }
                }
            }
        }
    }

    /// The kernel in tiles of [`OB`] output channels: `[(tile·taps + t)·OB + o]`, zero past O.
    fn pack_kernel(&self, w: &[f32]) -> Vec<f32> {
        let taps = self.geo.row_len();
        let tiles = self.cout.div_ceil(OB);
        let mut packed = vec![0f32; tiles * taps * OB];
        for o in 0..self.cout {
            for t in 0..taps {
                let v = w[o * taps + t];
                packed[((o / OB) * taps + t) * OB + o % OB] =
                    if self.bf16 { round_bf16(v) } else { v };
            }
        }
        packed
    }

    /// (N, O, OH, OW) output, by `isa`'s kernels.
    fn forward(&self, isa: Isa, x: &[f32], w: &[f32], n: usize) -> Vec<f32> {
        let g = &self.geo;
        let lay = self.layout(isa);
        let packed = self.pack_kernel(w);
        let per_image = self.cout * g.oh * g.ow;
        crate::profile::gemm_flops(2 * n * per_image * g.row_len());
        let img_len = g.image_len();
        let fill = |i: usize, out: &mut [std::mem::MaybeUninit<f32>]| {
            let mut xp = Vec::new();
            time(Part::Im2col, || {
                self.pad_image(&lay, &x[i * img_len..][..img_len], &mut xp)
            });
            let out = out.as_mut_ptr().cast();
            // SAFETY: `isa` (from `isa()`, checked by the caller) runs here; the kernels write
            // every value of `out` (each output channel's every run).
            time(Part::Gemm, || unsafe {
                match lay.isa {
                    Isa::Avx512 => simd::forward(&lay, &xp, &packed, self.cout, out, per_image),
                    Isa::Avx2 => avx2::forward(&lay, &xp, &packed, self.cout, out, per_image),
                }
            });
        };
        // SAFETY: each image's chunk is written whole by `fill`.
        unsafe { crate::fill::par_filled(n * per_image, per_image, fill) }
    }

    /// (O, C, KH, KW) kernel gradient from the (N, O, OH, OW) output gradient, by `isa`'s
    /// kernels.
    fn weight_grad(&self, isa: Isa, x: &[f32], grad: &[f32], n: usize) -> Vec<f32> {
        let g = &self.geo;
        let lay = self.layout(isa);
        let taps = g.row_len();
        let (img_len, per_image) = (g.image_len(), self.cout * g.oh * g.ow);
        crate::profile::gemm_flops(2 * n * per_image * taps);
        let lanes = self.cout * taps * isa.lanes();
        let share = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let starts: Vec<usize> = (0..n).step_by(share).collect();
        let partials: Vec<Vec<f32>> = starts
            .par_iter()
            .map(|&start| {
                let mut acc = vec![0f32; lanes];
                let (mut xp, mut gr) = (Vec::new(), Vec::new());
                for i in start..(start + share).min(n) {
                    time(Part::Im2col, || {
                        self.pad_image(&lay, &x[i * img_len..][..img_len], &mut xp)
                    });
                    let mut gi = &grad[i * per_image..][..per_image];
                    if self.bf16 {
                        gr.clear();
                        gr.extend(gi.iter().map(|v| round_bf16(*v)));
                        gi = &gr;
                    }
                    let (cout, plane) = (self.cout, g.oh * g.ow);
                    // SAFETY: `isa` runs here (checked by the caller); `acc` holds
                    // O·taps·lanes values, `gi` one image's gradient.
                    time(Part::Gemm, || unsafe {
                        match isa {
                            Isa::Avx512 => simd::weight_grad(&lay, &xp, gi, cout, plane, &mut acc),
                            Isa::Avx2 => avx2::weight_grad(&lay, &xp, gi, cout, plane, &mut acc),
                        }
                    });
                }
                // Each (o, tap)'s lanes, added in order.
                acc.chunks_exact(isa.lanes())
                    .map(|l| l.iter().fold(0f32, |a, b| a + b))
                    .collect()
            })
            .collect();
        let mut partials = partials.into_iter();
        let mut total = partials
            .next()
            .unwrap_or_else(|| vec![0f32; self.cout * taps]);
        for p in partials {
            total.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        total
    }
}

impl CustomOp2 for Direct {
    fn name(&self) -> &'static str {
        "conv2d-direct"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = crate::per_channel::f32_slice(xs, xl, self.name(), "input")?;
        let w = crate::per_channel::f32_slice(ws, wl, self.name(), "kernel")?;
        let n = xl.dims()[0];
        let g = &self.geo;
        let Some(isa) = isa() else {
            candle_core::bail!("{}: this CPU has neither AVX-512 nor AVX2", self.name())
        };
        if x.len() != n * g.image_len() || w.len() != self.cout * g.row_len() {
            candle_core::bail!(
                "{}: input {:?} or kernel {:?} does not fit the convolution's geometry",
                self.name(),
                xl.dims(),
                wl.dims()
            )
        }
        #[cfg(test)]
        RUNS.with(|r| r.set(r.get() + 1));
        #[cfg(test)]
        if isa == Isa::Avx2 {
            AVX2_RUNS.with(|r| r.set(r.get() + 1));
        }
        Ok((
            CpuStorage::F32(self.forward(isa, x, w, n)),
            Shape::from((n, self.cout, g.oh, g.ow)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = match x.track_op() {
            true => Some(super::cpu::grad(
                (self.geo, self.cout, self.bf16),
                true,
                w,
                &grad,
            )?),
            false => None,
        };
        let gw = match w.track_op() {
            true => Some(grad.apply_op2_no_bwd(x, &KernelGrad(Direct { ..*self }))?),
            false => None,
        };
        Ok((gx, gw))
    }
}

/// [`Direct`]'s kernel gradient: arguments (output gradient, input).
struct KernelGrad(Direct);

impl CustomOp2 for KernelGrad {
    fn name(&self) -> &'static str {
        "conv2d-direct-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let grad = crate::per_channel::f32_slice(gs, gl, self.name(), "output gradient")?;
        let x = crate::per_channel::f32_slice(xs, xl, self.name(), "input")?;
        let g = &self.0.geo;
        let n = xl.dims()[0];
        if gl.dims() != [n, self.0.cout, g.oh, g.ow] || x.len() != n * g.image_len() {
            candle_core::bail!("{}: output gradient of shape {:?}", self.name(), gl.dims())
        }
        let Some(isa) = isa() else {
            candle_core::bail!("{}: this CPU has neither AVX-512 nor AVX2", self.name())
        };
        #[cfg(test)]
        if isa == Isa::Avx2 {
            AVX2_RUNS.with(|r| r.set(r.get() + 1));
        }
        Ok((
            CpuStorage::F32(self.0.weight_grad(isa, x, grad, n)),
            Shape::from((self.0.cout, g.c, g.kh, g.kw)),
        ))
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Plan, GO, GT, OB};
    use std::arch::x86_64::*;

    /// One image's output (`cout` planes of `plane` values at `out`) from its padded copy `xp`
    /// and the packed kernel: [`OB`] channels by two runs at a time.
    ///
    /// # Safety
    /// AVX-512F; `out` has `cout · plane` writable values; `xp` and `packed` as
    /// [`super::Direct::pad_image`] and [`super::Direct::pack_kernel`] made them for `lay`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn forward(
        lay: &Plan,
        xp: &[f32],
        packed: &[f32],
        cout: usize,
        out: *mut f32,
        per_image: usize,
    ) {
        let plane = per_image / cout;
        let taps = lay.taps.len();
        for tile in 0..cout.div_ceil(OB) {
            let w = &packed[tile * taps * OB..][..taps * OB];
            let outs = (cout - tile * OB).min(OB);
            let dst = out.add(tile * OB * plane);
            let mut runs = lay.runs.chunks_exact(2);
            for pair in &mut runs {
                tile_runs::<2>(lay, xp, w, [pair[0], pair[1]], outs, dst, plane);
            }
            if let [last] = runs.remainder() {
                tile_runs::<1>(lay, xp, w, [*last], outs, dst, plane);
            }
        }
    }

    /// [`OB`] output channels (the first `outs` stored) at `R` runs.
    #[inline]
    #[allow(clippy::needless_range_loop)] // a register tile, indexed both ways
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_runs<const R: usize>(
        lay: &Plan,
        xp: &[f32],
        w: &[f32],
        runs: [(usize, usize, u16); R],
        outs: usize,
        dst: *mut f32,
        plane: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); OB]; R];
        let x = xp.as_ptr();
        for (t, &off) in lay.taps.iter().enumerate() {
            let wt = w.as_ptr().add(t * OB);
            let xv: [__m512; R] =
                std::array::from_fn(|r| _mm512_maskz_loadu_ps(runs[r].2, x.add(off + runs[r].1)));
            for o in 0..OB {
                let wv = _mm512_set1_ps(*wt.add(o));
                for r in 0..R {
                    acc[r][o] = _mm512_fmadd_ps(wv, xv[r], acc[r][o]);
                }
            }
        }
        for r in 0..R {
            for (o, a) in acc[r].iter().enumerate().take(outs) {
                _mm512_mask_storeu_ps(dst.add(o * plane + runs[r].0), runs[r].2, *a);
            }
        }
    }

    /// Adds one image's kernel-gradient products to `acc` (`[(o·taps + t)·16 + lane]`):
    /// [`GO`] channels by [`GT`] taps at a time over every run.
    ///
    /// # Safety
    /// AVX-512F; `grad` is one image's `cout · plane` output gradient, `xp` as
    /// [`super::Direct::pad_image`] made it for `lay`, `acc` has `cout · taps · 16` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weight_grad(
        lay: &Plan,
        xp: &[f32],
        grad: &[f32],
        cout: usize,
        plane: usize,
        acc: &mut [f32],
    ) {
        let taps = lay.taps.len();
        assert!(grad.len() >= cout * plane && acc.len() >= cout * taps * 16);
        for o0 in (0..cout).step_by(GO) {
            let outs = (cout - o0).min(GO);
            let mut t0 = 0;
            while t0 + GT <= taps {
                block::<GT>(lay, xp, grad, (o0, outs), t0, plane, taps, acc);
                t0 += GT;
            }
            for t in t0..taps {
                block::<1>(lay, xp, grad, (o0, outs), t, plane, taps, acc);
            }
        }
    }

    /// Channels `o0..o0 + outs` (at most [`GO`]) by taps `t0..t0 + T`, over every run.
    #[inline]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const T: usize>(
        lay: &Plan,
        xp: &[f32],
        grad: &[f32],
        (o0, outs): (usize, usize),
        t0: usize,
        plane: usize,
        taps: usize,
        acc: &mut [f32],
    ) {
        let mut sum = [[_mm512_setzero_ps(); T]; GO];
        let (x, g) = (xp.as_ptr(), grad.as_ptr().add(o0 * plane));
        let offs: [usize; T] = std::array::from_fn(|t| lay.taps[t0 + t]);
        for &(out_at, in_at, mask) in &lay.runs {
            let gv: [__m512; GO] = std::array::from_fn(|o| match o < outs {
                true => _mm512_maskz_loadu_ps(mask, g.add(o * plane + out_at)),
                false => _mm512_setzero_ps(),
            });
            for t in 0..T {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(offs[t] + in_at));
                for o in 0..GO {
                    sum[o][t] = _mm512_fmadd_ps(gv[o], xv, sum[o][t]);
                }
            }
        }
        for (o, row) in sum.iter().enumerate().take(outs) {
            for (t, s) in row.iter().enumerate() {
                let a = acc.as_mut_ptr().add(((o0 + o) * taps + t0 + t) * 16);
                _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), *s));
            }
        }
    }
}

/// [`simd`]'s kernels in AVX2 and FMA for CPUs without AVX-512: runs of 8 output positions,
/// one run by [`OB`] channels forward (16 registers), [`GO`] channels by 2 taps for the
/// kernel gradient; a run's lanes past its positions are loaded as zero.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Plan, GO, OB};
    use crate::avx2::LANES;
    use std::arch::x86_64::*;

    /// Taps per kernel-gradient register tile.
    const GT: usize = 2;

    /// The load/store mask of a run's lanes.
    #[inline(always)]
    unsafe fn lanes(m: u16) -> __m256i {
        crate::avx2::mask(|k| m >> k & 1 != 0)
    }

    /// A run's 8 values from `at`: a whole load for a whole run, else only its lanes `m`,
    /// the others zero.
    #[inline(always)]
    unsafe fn load(at: *const f32, m: u16) -> __m256 {
        match m == 0xff {
            true => _mm256_loadu_ps(at),
            false => _mm256_maskload_ps(at, lanes(m)),
        }
    }

    /// [`super::simd::forward`] in AVX2: one image's output (`cout` planes of `plane` values at
    /// `out`) from its padded copy `xp` and the packed kernel, [`OB`] channels by one run at a
    /// time. A run's 8 values are stored whole where they stay inside the plane (a short run's
    /// last lanes then land on the next row's first outputs of the same channel, which a later
    /// run of this tile overwrites), else only its lanes.
    ///
    /// # Safety
    /// AVX2 and FMA; `out` has `cout · plane` writable values; `xp` and `packed` as
    /// [`super::Direct::pad_image`] and [`super::Direct::pack_kernel`] made them for `lay`,
    /// whose runs are of at most 8 positions.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward(
        lay: &Plan,
        xp: &[f32],
        packed: &[f32],
        cout: usize,
        out: *mut f32,
        per_image: usize,
    ) {
        let plane = per_image / cout;
        let taps = lay.taps.len();
        for tile in 0..cout.div_ceil(OB) {
            let w = packed[tile * taps * OB..][..taps * OB].as_ptr();
            let outs = (cout - tile * OB).min(OB);
            let dst = out.add(tile * OB * plane);
            for &(out_at, in_at, m) in &lay.runs {
                debug_assert!(m <= 0xff);
                let x = xp.as_ptr().add(in_at);
                let mut acc = [_mm256_setzero_ps(); OB];
                for (t, &off) in lay.taps.iter().enumerate() {
                    let xv = load(x.add(off), m);
                    for (o, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_set1_ps(*w.add(t * OB + o)), xv, *a);
                    }
                }
                let whole = out_at + LANES <= plane;
                for (o, a) in acc.iter().enumerate().take(outs) {
                    let d = dst.add(o * plane + out_at);
                    match whole {
                        true => _mm256_storeu_ps(d, *a),
                        false => _mm256_maskstore_ps(d, lanes(m), *a),
                    }
                }
            }
        }
    }

    /// [`super::simd::weight_grad`] in AVX2: adds one image's kernel-gradient products to `acc`
    /// (`[(o·taps + t)·8 + lane]`), [`GO`] channels by [`GT`] taps at a time over every run.
    ///
    /// # Safety
    /// AVX2 and FMA; `grad` is one image's `cout · plane` output gradient, `xp` as
    /// [`super::Direct::pad_image`] made it for `lay` (runs of at most 8 positions), `acc` has
    /// `cout · taps · 8` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad(
        lay: &Plan,
        xp: &[f32],
        grad: &[f32],
        cout: usize,
        plane: usize,
        acc: &mut [f32],
    ) {
        let taps = lay.taps.len();
        assert!(grad.len() >= cout * plane && acc.len() >= cout * taps * LANES);
        for o0 in (0..cout).step_by(GO) {
            let outs = (cout - o0).min(GO);
            let mut t0 = 0;
            while t0 + GT <= taps {
                block::<GT>(lay, xp, grad, (o0, outs), t0, plane, taps, acc);
                t0 += GT;
            }
            for t in t0..taps {
                block::<1>(lay, xp, grad, (o0, outs), t, plane, taps, acc);
            }
        }
    }

    /// Channels `o0..o0 + outs` (at most [`GO`]) by taps `t0..t0 + T`, over every run.
    #[inline]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const T: usize>(
        lay: &Plan,
        xp: &[f32],
        grad: &[f32],
        (o0, outs): (usize, usize),
        t0: usize,
        plane: usize,
        taps: usize,
        acc: &mut [f32],
    ) {
        let mut sum = [[_mm256_setzero_ps(); T]; GO];
        let (x, g) = (xp.as_ptr(), grad.as_ptr().add(o0 * plane));
        let offs: [usize; T] = std::array::from_fn(|t| lay.taps[t0 + t]);
        for &(out_at, in_at, m) in &lay.runs {
            let gv: [__m256; GO] = std::array::from_fn(|o| match o < outs {
                true => load(g.add(o * plane + out_at), m),
                false => _mm256_setzero_ps(),
            });
            for t in 0..T {
                let xv = load(x.add(offs[t] + in_at), m);
                for o in 0..GO {
                    sum[o][t] = _mm256_fmadd_ps(gv[o], xv, sum[o][t]);
                }
            }
        }
        for (o, row) in sum.iter().enumerate().take(outs) {
            for (t, s) in row.iter().enumerate() {
                let a = acc.as_mut_ptr().add(((o0 + o) * taps + t0 + t) * LANES);
                _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), *s));
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    use super::Plan;

    pub(super) unsafe fn forward(_: &Plan, _: &[f32], _: &[f32], _: usize, _: *mut f32, _: usize) {
        unreachable!("the direct convolution runs only where AVX-512 or AVX2 does")
    }

    pub(super) unsafe fn weight_grad(
        _: &Plan,
        _: &[f32],
        _: &[f32],
        _: usize,
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("the direct convolution runs only where AVX-512 or AVX2 does")
    }
}

#[cfg(not(target_arch = "x86_64"))]
use simd as avx2;

/// `xs` convolved with `weight` by the direct convolution, with `after` in the same op, when
/// [`applies`]; `None` otherwise.
pub(super) fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    after: super::bias::After,
    stride: usize,
    padding: usize,
    bf16: bool,
) -> Result<Option<Tensor>> {
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    if !applies(&geo, xs.track_op()) {
        return Ok(None);
    }
    let bf16 = bf16 && crate::bf16_gemm::available();
    super::bias::apply(xs, weight, after, Direct { geo, cout, bf16 }).map(Some)
}

#[cfg(test)]
mod tests {
    use super::super::bias::After;
    use super::*;
    use crate::Conv2d;
    use candle_core::{Device, Module, Var};
    use candle_nn::Conv2dConfig;

    /// `conv2d` and its kernel gradient for the output gradient `gy`, in f64, of inputs and
    /// kernel already rounded as the kernel would round them: (output, kernel gradient).
    fn reference(
        x: &[f32],
        w: &[f32],
        gy: &[f32],
        (n, c, h, wd): (usize, usize, usize, usize),
        (o, k, s, p): (usize, usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
        let mut y = vec![0f64; n * o * oh * ow];
        let mut gw = vec![0f64; o * c * k * k];
        for i in 0..n {
            for oc in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let at = ((i * o + oc) * oh + oy) * ow + ox;
                        for ic in 0..c {
                            for ki in 0..k {
                                for kj in 0..k {
                                    let (iy, ix) = (
                                        (oy * s + ki) as isize - p as isize,
                                        (ox * s + kj) as isize - p as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((i * c + ic) * h + iy as usize) * wd + ix as usize]
                                        as f64;
                                    let t = ((oc * c + ic) * k + ki) * k + kj;
                                    y[at] += xv * w[t] as f64;
                                    gw[t] += xv * gy[at] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, gw)
    }

    /// The `AVX2_ONLY` settings to test on this CPU: both where it has AVX-512 (its kernels,
    /// then AVX2's), else the one (`false`) that runs the kernels it has.
    fn kernels() -> Vec<bool> {
        match isa() {
            Some(Isa::Avx512) => vec![false, true],
            _ => vec![false],
        }
    }

    /// Runs `f` with this thread's direct convolutions on AVX2's kernels if `avx2_only`; the
    /// AVX2 kernels must have run (forward and kernel gradient) exactly when they are asked for
    /// or are the CPU's.
    fn with_kernels<R>(avx2_only: bool, f: impl FnOnce() -> R) -> R {
        let before = AVX2_ONLY.with(|a| a.replace(avx2_only));
        let runs = AVX2_RUNS.with(|r| r.get());
        let r = f();
        AVX2_ONLY.with(|a| a.set(before));
        let ran = AVX2_RUNS.with(|r| r.get()) > runs;
        assert_eq!(
            ran,
            avx2_only || isa() == Some(Isa::Avx2),
            "AVX2 kernels ran: {ran}"
        );
        r
    }

    fn rounded(v: &[f32], bf16: bool) -> Vec<f32> {
        v.iter()
            .map(|v| if bf16 { round_bf16(*v) } else { *v })
            .collect()
    }

    /// The first-layer shapes of the zoo and a few odd ones: output and kernel gradient
    /// against f64 sums, in float32 and with bf16 rounding, by each kernel set the CPU runs
    /// (AVX-512's and AVX2's); the direct path must have run.
    #[test]
    fn direct_first_layer_matches_f64_sums() -> Result<()> {
        if !available() {
            eprintln!("skipped: neither AVX-512 nor AVX2");
            return Ok(());
        }
        for avx2_only in kernels() {
            with_kernels(avx2_only, || first_layers_match_f64_sums(avx2_only))?;
        }
        Ok(())
    }

    fn first_layers_match_f64_sums(avx2_only: bool) -> Result<()> {
        // With oneDNN on, strided bf16 first layers go to it (this thread only).
        #[cfg(feature = "onednn")]
        crate::onednn::set_enabled(false);
        let dev = Device::Cpu;
        // (n, c, h, w, o, k, s, p)
        let cases = [
            (2, 1, 28, 28, 32, 3, 1, 1),
            (2, 1, 28, 28, 6, 5, 1, 2),
            (3, 3, 32, 32, 64, 3, 1, 1),
            (2, 3, 32, 32, 64, 7, 2, 3),
            (2, 3, 13, 19, 5, 3, 2, 0),
            (1, 4, 20, 37, 17, 4, 3, 2),
            (3, 2, 9, 8, 9, 1, 1, 0),
            (2, 1, 7, 17, 3, 3, 1, 1),
        ];
        for (n, c, h, w, o, k, s, p) in cases {
            for bf16 in [false, true] {
                let what =
                    format!("n{n} c{c} {h}x{w} o{o} k{k} s{s} p{p} bf16 {bf16} AVX2 {avx2_only}");
                let x = Tensor::randn(0f32, 1., (n, c, h, w), &dev)?;
                let wt = Var::from_tensor(&Tensor::randn(0f32, 0.3, (o, c, k, k), &dev)?)?;
                let cfg = Conv2dConfig {
                    padding: p,
                    stride: s,
                    ..Default::default()
                };
                let conv = Conv2d::new(wt.as_tensor().clone(), None, cfg);
                let _guard = crate::autocast::set(bf16.then_some(candle_core::DType::BF16));
                let before = RUNS.with(|r| r.get());
                // bf16 only where the bf16 kernels run: 16 or more output channels.
                let round = bf16 && o >= 16 && crate::bf16_gemm::available();
                // Where bf16 products run, `Conv2d` takes the bf16 GEMM (the direct kernel's bf16
                // mode only with oneDNN on, stride 1): that mode called directly.
                let y = match round {
                    true => {
                        let gemm = Module::forward(&conv, &x)?;
                        assert_eq!(RUNS.with(|r| r.get()), before, "{what}: the bf16 GEMM");
                        let y = super::conv2d(&x, wt.as_tensor(), After::Nothing, s, p, true)?
                            .expect("the direct convolution applies");
                        // Both bf16 products with float32 sums, summed in other orders.
                        let most = |t: &Tensor| t.abs()?.max_all()?.to_scalar::<f32>();
                        let apart = most(&(&gemm - &y)?)?;
                        assert!(apart <= 1e-5 * most(&y)?.max(1.0), "{what}: {apart} apart");
                        y
                    }
                    false => Module::forward(&conv, &x)?,
                };
                assert_eq!(RUNS.with(|r| r.get()), before + 1, "{what}: direct path");
                let gy = Tensor::randn(0f32, 1., y.shape(), &dev)?;
                let grads = (&y * &gy)?.sum_all()?.backward()?;
                let gw = grads
                    .get(&wt)
                    .expect("kernel gradient")
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let (xs, ws) = (
                    x.flatten_all()?.to_vec1::<f32>()?,
                    wt.flatten_all()?.to_vec1::<f32>()?,
                );
                let gys = gy.flatten_all()?.to_vec1::<f32>()?;
                let (ry, rgw) = reference(
                    &rounded(&xs, round),
                    &rounded(&ws, round),
                    &rounded(&gys, round),
                    (n, c, h, w),
                    (o, k, s, p),
                );
                let y = y.flatten_all()?.to_vec1::<f32>()?;
                let close = |a: &[f32], b: &[f64], name: &str| {
                    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
                    for (i, (a, b)) in a.iter().zip(b).enumerate() {
                        assert!(
                            (*a as f64 - b).abs() <= 1e-5 * scale,
                            "{what}: {name}[{i}] {a} against {b}"
                        );
                    }
                };
                assert_eq!(y.len(), ry.len());
                close(&y, &ry, "output");
                close(&gw, &rgw, "kernel gradient");
            }
        }
        Ok(())
    }

    /// An input that needs a gradient stays on the image-by-image path; the direct path's
    /// bits do not depend on how the batch was split between images.
    #[test]
    fn direct_path_only_without_input_gradient_and_reproducible() -> Result<()> {
        if !available() {
            return Ok(());
        }
        for avx2_only in kernels() {
            with_kernels(avx2_only, tracked_input_and_reproducible)?;
        }
        Ok(())
    }

    fn tracked_input_and_reproducible() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (5, 3, 16, 16), &dev)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.3, (16, 3, 3, 3), &dev)?)?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(wt.as_tensor().clone(), None, cfg);
        let xv = Var::from_tensor(&x)?;
        let before = RUNS.with(|r| r.get());
        let tracked = Module::forward(&conv, xv.as_tensor())?;
        assert_eq!(
            RUNS.with(|r| r.get()),
            before,
            "tracked input took the direct path"
        );
        let run = || -> Result<(Vec<f32>, Vec<f32>)> {
            let y = Module::forward(&conv, &x)?;
            let g = y.sqr()?.sum_all()?.backward()?;
            let gw = g
                .get(&wt)
                .expect("kernel gradient")
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok((y.flatten_all()?.to_vec1::<f32>()?, gw))
        };
        let (a, b) = (run()?, run()?);
        assert_eq!(a, b, "two runs differ");
        let d = (tracked.flatten_all()? - Tensor::new(a.0.as_slice(), &dev)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "direct and image-by-image outputs differ by {d}");
        Ok(())
    }

    /// With oneDNN on, a strided bf16 first layer goes to oneDNN's bf16 kernels; stride-1 bf16
    /// ones and float32 ones stay here.
    #[cfg(feature = "onednn")]
    #[test]
    fn strided_bf16_first_layers_go_to_onednn() -> Result<()> {
        if !available() || !crate::bf16_gemm::available() {
            return Ok(());
        }
        crate::onednn::set_enabled(true);
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 16, 16), &dev)?;
        for (k, stride) in [(3, 1), (7, 2)] {
            let w = Tensor::randn(0f32, 0.3, (16, 3, k, k), &dev)?;
            let cfg = Conv2dConfig {
                padding: k / 2,
                stride,
                ..Default::default()
            };
            let conv = Conv2d::new(w, None, cfg);
            for dtype in [None, Some(candle_core::DType::BF16)] {
                let direct = dtype.is_none() || stride == 1;
                let _guard = crate::autocast::set(dtype);
                let before = RUNS.with(|r| r.get());
                Module::forward(&conv, &x)?;
                assert_eq!(
                    RUNS.with(|r| r.get()) - before,
                    usize::from(direct),
                    "{k}x{k} stride {stride} {dtype:?}"
                );
            }
        }
        Ok(())
    }

    /// The direct path inside the fused ops (bias; batch norm and ReLU, with the stem's max
    /// pooling after; a residual join) against the same ops with it off, in a one-thread pool
    /// (several images per share of the kernel gradient); strides past the kernel, a
    /// non-square kernel and an empty batch.
    #[test]
    fn direct_path_in_fused_ops_and_odd_shapes_matches_the_other_paths() -> Result<()> {
        if !available() {
            return Ok(());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(candle_core::Error::wrap)?;
        kernels().into_iter().try_for_each(|avx2_only| {
            pool.install(|| with_kernels(avx2_only, || fused_ops_match(avx2_only)))
        })
    }

    fn fused_ops_match(avx2_only: bool) -> Result<()> {
        let dev = Device::Cpu;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        // (n, c, h, w, o, kh, kw, s, p, what follows)
        let cases = [
            (6, 3, 32, 32, 16, 7, 7, 2, 3, "bn-pool"),
            (5, 3, 16, 16, 16, 3, 3, 1, 1, "bn"),
            (4, 3, 16, 16, 16, 3, 3, 1, 1, "bn-add"),
            (4, 1, 28, 28, 6, 5, 5, 1, 2, "bias"),
            (3, 2, 17, 17, 8, 1, 1, 2, 0, "none"),
            (3, 3, 20, 27, 5, 2, 2, 3, 1, "none"),
            (3, 3, 12, 20, 9, 3, 5, 1, 2, "none"),
            (0, 3, 16, 16, 16, 3, 3, 1, 1, "none"),
        ];
        for (n, c, h, w, o, kh, kw, s, p, what) in cases {
            let tag =
                format!("n{n} c{c} {h}x{w} o{o} k{kh}x{kw} s{s} p{p} {what} AVX2 {avx2_only}");
            let x = Tensor::randn(0f32, 1., (n, c, h, w), &dev)?;
            let wt = Var::from_tensor(&Tensor::randn(0f32, 0.3, (o, c, kh, kw), &dev)?)?;
            let bias = Var::from_tensor(&Tensor::randn(0f32, 0.3, o, &dev)?)?;
            let cfg = Conv2dConfig {
                padding: p,
                stride: s,
                ..Default::default()
            };
            let b = (what == "bias").then(|| bias.as_tensor().clone());
            let conv = Conv2d::new(wt.as_tensor().clone(), b, cfg);
            let bn_w = Var::from_tensor(&Tensor::randn(1f32, 0.2, o, &dev)?)?;
            let run = |direct: bool| -> Result<(Tensor, Vec<Tensor>, usize)> {
                let previous = set_direct_first_layer(direct);
                let bn = crate::BatchNorm::new(
                    Tensor::zeros(o, candle_core::DType::F32, &dev)?,
                    Tensor::ones(o, candle_core::DType::F32, &dev)?,
                    bn_w.as_tensor().clone(),
                    bias.as_tensor().clone(),
                    1e-5,
                    0.1,
                )?;
                let before = RUNS.with(|r| r.get());
                let y = match what {
                    "bn-pool" => {
                        let pool = crate::Pool2d::max(3, 2).padding(1);
                        conv.forward_batch_norm_relu_pool(&x, &bn, &pool, true)?
                    }
                    "bn" => conv.forward_batch_norm(&x, &bn, true, true)?,
                    "bn-add" => {
                        let r = Tensor::randn(0f32, 1., (n, o, h, w), &dev)?;
                        conv.forward_batch_norm_add_relu(&x, &bn, &r.ones_like()?, true)?
                    }
                    _ => Module::forward(&conv, &x)?,
                };
                let runs = RUNS.with(|r| r.get()) - before;
                set_direct_first_layer(previous);
                let g = y.sqr()?.sum_all()?.backward()?;
                let grads = [&wt, &bn_w, &bias]
                    .iter()
                    .filter_map(|v| g.get(v).cloned())
                    .collect();
                Ok((y, grads, runs))
            };
            let (ya, ga, runs) = run(true)?;
            let (yb, gb, off) = run(false)?;
            assert_eq!((runs, off), (1, 0), "{tag}: direct path runs");
            assert_eq!(ya.dims(), yb.dims(), "{tag}");
            if n == 0 {
                continue;
            }
            let d = max_diff(&ya, &yb)?;
            assert!(d < 1e-4, "{tag}: output differs by {d}");
            assert_eq!(ga.len(), gb.len(), "{tag}: gradients");
            for (a, b) in ga.iter().zip(&gb) {
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                let d = max_diff(a, b)?;
                assert!(
                    d < 1e-4 * scale,
                    "{tag}: gradient differs by {d} (scale {scale})"
                );
            }
        }
        Ok(())
    }
}
