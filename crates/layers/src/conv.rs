//! 2-D convolution whose backward pass runs as matrix products.
//!
//! Candle 0.11 differentiates `conv2d` with a direct `conv_transpose2d` loop for the input
//! gradient and a convolution with the batch as channels for the weight gradient. On the CPU
//! a convolution here is `im2col` (a custom op whose backward is `col2im`) followed by one
//! matrix product, so forward and backward are GEMMs, as in PyTorch's CPU path. f32
//! convolutions with 4x4 outputs or more run image by image instead
//! ([`conv2d_cpu_f32`](crate::conv2d_cpu_f32)), with columns that stay in cache. On other
//! devices the forward is Candle's `conv2d` (im2col + cuBLAS, or cuDNN) and the input gradient
//! is a `conv2d` too, of the zero-dilated output gradient with the flipped kernel, in place of
//! Candle's `conv_transpose2d` kernel ([`conv2d_conv_grads`]).
//!
//! Under [`autocast`](crate::autocast) the product runs in the reduced dtype and the result
//! comes back in the input's dtype before the bias is added.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::Conv2dConfig;
use rayon::prelude::*;

use crate::autocast;

/// `nn.Conv2d`: weight (out, in / groups, k, k), optional bias (out).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// A convolution with these parameters.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
        }
    }

    /// The kernel, (out, in / groups, kh, kw).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Stride, padding, dilation and groups.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let dtype = autocast::compute_dtype(xs);
        let plain = c.groups == 1 && c.dilation == 1;
        let cpu = xs.device().is_cpu();
        let per_image = cpu
            && plain
            && dtype == DType::F32
            && crate::conv_cpu::per_image_pays(xs, &self.weight, c.stride, c.padding)?;
        if dtype == xs.dtype() && cpu && plain && !per_image {
            return conv2d_gemm(xs, &self.weight, self.bias.as_ref(), c.stride, c.padding);
        }
        let x = autocast::cast(xs, dtype)?;
        let w = autocast::cast(&self.weight, dtype)?;
        let ys = match (plain, cpu) {
            _ if per_image => crate::conv_cpu::conv2d_cpu_f32(&x, &w, c.stride, c.padding)?,
            (true, true) => conv2d_gemm(&x, &w, None, c.stride, c.padding)?,
            (true, false) => conv2d_conv_grads(&x, &w, c.stride, c.padding)?,
            (false, _) => x.conv2d(&w, c.padding, c.stride, c.dilation, c.groups)?,
        };
        let ys = autocast::cast(&ys, xs.dtype())?;
        match &self.bias {
            Some(b) => ys.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(ys),
        }
    }
}

/// Candle's `conv2d` (one group, no dilation) with a backward pass made of `conv2d`s only: the
/// input gradient is the output gradient, zero-dilated by the stride and padded, convolved with
/// the kernel flipped and transposed; the weight gradient is Candle's batch-as-channels
/// convolution. On CUDA both run as im2col + cuBLAS (or cuDNN with the `cudnn` feature), where
/// Candle's own backward uses a direct `conv_transpose2d` kernel for the input gradient.
pub fn conv2d_conv_grads(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    let tracked = xs.track_op() || weight.track_op();
    if tracked && padding + 1 > kh.min(kw) {
        // A padding wider than the kernel (never in the zoo): Candle's own op and backward.
        return xs.conv2d(weight, padding, stride, 1, 1);
    }
    let ys = xs
        .detach()
        .conv2d(&weight.detach(), padding, stride, 1, 1)?;
    if !tracked {
        return Ok(ys);
    }
    xs.apply_op3(weight, &ys, ConvGrads { stride, padding })
}

/// `[n - 1, ..., 1, 0]` as u32 on `device`, made once per device and length: `Tensor::flip`
/// would upload its index from the host at every backward pass.
fn reversed(n: usize, device: &candle_core::Device) -> Result<Tensor> {
    type Cache = Vec<(candle_core::Device, usize, Tensor)>;
    static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, t)) = cache
        .iter()
        .find(|(d, len, _)| *len == n && d.same_device(device))
    {
        return Ok(t.clone());
    }
    let index: Vec<u32> = (0..n as u32).rev().collect();
    let t = Tensor::from_vec(index, n, device)?;
    cache.push((device.clone(), n, t.clone()));
    Ok(t)
}

/// Attaches [`conv2d_conv_grads`]'s backward to an already computed convolution (the third
/// argument), which the forward passes through.
struct ConvGrads {
    stride: usize,
    padding: usize,
}

impl ConvGrads {
    fn pass_through<S: BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            candle_core::bail!("conv-grads expects a fresh contiguous convolution output")
        }
        Ok((s.try_clone(l)?, l.shape().clone()))
    }

    /// dL/dx: `grad` (N, O, OH, OW) spread back onto the (N, C, H, W) input: a full
    /// correlation of the zero-dilated gradient with the flipped kernel.
    fn input_grad(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (_, _, h, wd) = x.dims4()?;
        let (n, o, oh, ow) = grad.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let s = self.stride;
        // Zero-dilated by the stride, with s - 1 trailing zeros: OH * s rows.
        let mut g = grad.clone();
        if s > 1 {
            g = g
                .reshape((n, o, oh, 1, ow, 1))?
                .pad_with_zeros(3, 0, s - 1)?
                .pad_with_zeros(5, 0, s - 1)?
                .reshape((n, o, oh * s, ow * s))?;
        }
        // Rows above and below so that a valid correlation with the kernel gives H rows.
        let (top, left) = (kh - 1 - self.padding, kw - 1 - self.padding);
        let mut bottom = (h + kh - 1) as isize - (top + oh * s) as isize;
        let mut right = (wd + kw - 1) as isize - (left + ow * s) as isize;
        if bottom < 0 {
            g = g.narrow(2, 0, (oh * s) - bottom.unsigned_abs())?;
            bottom = 0;
        }
        if right < 0 {
            g = g.narrow(3, 0, (ow * s) - right.unsigned_abs())?;
            right = 0;
        }
        let flipped = w
            .index_select(&reversed(kh, w.device())?, 2)?
            .index_select(&reversed(kw, w.device())?, 3)?
            .transpose(0, 1)?
            .contiguous()?;
        let (bottom, right) = (bottom as usize, right as usize);
        if top == bottom && left == right && top == left {
            // The usual case (stride 1, or an even input): the convolution pads by itself.
            return g.contiguous()?.conv2d(&flipped, top, 1, 1, 1);
        }
        g.pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?
            .conv2d(&flipped, 0, 1, 1, 1)
    }

    /// dL/dw, as Candle computes it: the batch plays the channels.
    fn weight_grad(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (_, _, kh, kw) = w.dims4()?;
        let gw = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, self.padding, 1, self.stride, 1)?
            .transpose(0, 1)?;
        let (_, _, gh, gwd) = gw.dims4()?;
        if gh != kh || gwd != kw {
            gw.narrow(2, 0, kh)?.narrow(3, 0, kw)
        } else {
            Ok(gw)
        }
    }
}

impl CustomOp3 for ConvGrads {
    fn name(&self) -> &'static str {
        "conv2d-conv-grads"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        ys: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::pass_through(ys, l)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        ys: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Self::pass_through(ys, l)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _ys: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The images entering the first layer need no gradient: skip its largest product.
        let gx = match x.track_op() {
            true => Some(self.input_grad(x, w, &grad)?),
            false => None,
        };
        let gw = match w.track_op() {
            true => Some(self.weight_grad(x, w, &grad)?),
            false => None,
        };
        Ok((gx, gw, None))
    }
}

/// Convolution as `im2col` + GEMM (one group, no dilation), differentiable in all arguments.
pub fn conv2d_gemm(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let n = xs.dim(0)?;
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    let ys = xs
        .contiguous()?
        .apply_op1(Im2Col(geo))?
        .matmul(&weight.reshape((cout, geo.row_len()))?.t()?)?;
    let ys = match bias {
        Some(b) => ys.broadcast_add(b)?,
        None => ys,
    };
    ys.reshape((n, geo.oh * geo.ow, cout))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, cout, geo.oh, geo.ow))
}

/// Where the kernel's taps land for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) stride: usize,
    pub(crate) padding: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl Geometry {
    pub(crate) fn new(
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
    pub(crate) fn of_conv(
        xs: &Tensor,
        weight: &Tensor,
        stride: usize,
        padding: usize,
    ) -> Result<(Self, usize)> {
        let (_, c, h, w) = xs.dims4()?;
        let (cout, cin, kh, kw) = weight.dims4()?;
        if cin != c {
            candle_core::bail!(
                "conv2d: input has {c} channels, the kernel {:?} expects {cin}",
                weight.dims()
            )
        }
        Ok((Self::new(c, h, w, kh, kw, stride, padding)?, cout))
    }

    fn row_len(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// For output column `ox`: the input column of tap 0 and the valid taps `lo..hi`.
    #[inline]
    fn columns(&self, ox: usize) -> (isize, usize, usize) {
        let x0 = (ox * self.stride) as isize - self.padding as isize;
        let lo = (-x0).clamp(0, self.kw as isize) as usize;
        let hi = (self.w as isize - x0).clamp(lo as isize, self.kw as isize) as usize;
        (x0, lo, hi)
    }

    /// The input row read by output row `oy` at tap row `ki`, if inside the image.
    #[inline]
    pub(crate) fn row(&self, oy: usize, ki: usize) -> Option<usize> {
        (oy * self.stride + ki)
            .checked_sub(self.padding)
            .filter(|y| *y < self.h)
    }

    /// Fills the rows of one output image row `oy` (`out` arrives zeroed): `ow` rows of
    /// `c * kh * kw` values. Element loops, not slice copies: runs are only `kw` long.
    fn im2col_row<T: candle_core::WithDType>(&self, img: &[T], oy: usize, out: &mut [T]) {
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
    fn col2im<T: candle_core::WithDType>(&self, cols: &[T], img: &mut [T]) {
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

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("im2col needs a contiguous tensor"),
    }
}

/// (N, C, H, W) -> (N * OH * OW, C * KH * KW): each row the receptive field of one output.
struct Im2Col(Geometry);

impl Im2Col {
    fn run<T: candle_core::WithDType>(&self, x: &[T], layout: &Layout) -> Result<(Vec<T>, Shape)> {
        let g = self.0;
        let x = contiguous(x, layout)?;
        let n = layout.dims()[0];
        let row_block = g.ow * g.row_len();
        let mut cols = vec![T::zero(); n * g.oh * row_block];
        cols.par_chunks_mut(row_block)
            .enumerate()
            .for_each(|(r, out)| {
                let (img, oy) = (r / g.oh, r % g.oh);
                g.im2col_row(&x[img * g.image_len()..(img + 1) * g.image_len()], oy, out);
            });
        Ok((cols, Shape::from((n * g.oh * g.ow, g.row_len()))))
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F32(v), s)),
            CpuStorage::F64(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F64(v), s)),
            CpuStorage::BF16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::BF16(v), s)),
            CpuStorage::F16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F16(v), s)),
            _ => candle_core::bail!("im2col supports f32, f64, bf16 and f16 tensors"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let n = arg.dim(0)?;
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op1(Col2Im { geo: self.0, n })?,
        ))
    }
}

/// The adjoint of [`Im2Col`]: sums each row's values back onto the input positions it read.
struct Col2Im {
    geo: Geometry,
    n: usize,
}

impl Col2Im {
    fn run<T: candle_core::WithDType>(
        &self,
        cols: &[T],
        layout: &Layout,
    ) -> Result<(Vec<T>, Shape)> {
        let g = self.geo;
        let cols = contiguous(cols, layout)?;
        let per_image = g.oh * g.ow * g.row_len();
        let mut img = vec![T::zero(); self.n * g.image_len()];
        img.par_chunks_mut(g.image_len())
            .enumerate()
            .for_each(|(i, out)| g.col2im(&cols[i * per_image..(i + 1) * per_image], out));
        Ok((img, Shape::from((self.n, g.c, g.h, g.w))))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F32(v), s)),
            CpuStorage::F64(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F64(v), s)),
            CpuStorage::BF16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::BF16(v), s)),
            CpuStorage::F16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F16(v), s)),
            _ => candle_core::bail!("col2im supports f32, f64, bf16 and f16 tensors"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[allow(clippy::too_many_arguments)]
    fn check(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (cout, c, k, k), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., cout, &dev)?)?;
        let ours = conv2d_gemm(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor()), s, p)?;
        let reference = x
            .as_tensor()
            .conv2d(wt.as_tensor(), p, s, 1, 1)?
            .broadcast_add(&b.as_tensor().reshape((1, cout, 1, 1))?)?;
        same_with_grads(
            ours,
            reference,
            &[("input", &x), ("weight", &wt), ("bias", &b)],
            &format!("k{k} s{s} p{p}"),
        )
    }

    /// Asserts that `ours` equals `reference` (1e-4) and so do the gradients of `vars` (1e-3)
    /// for one random output gradient.
    fn same_with_grads(
        ours: Tensor,
        reference: Tensor,
        vars: &[(&str, &Var)],
        what: &str,
    ) -> Result<()> {
        assert_eq!(ours.dims(), reference.dims(), "{what}");
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        let d = max_diff(&ours, &reference)?;
        assert!(d < 1e-4, "{what}: output differs by {d}");
        let g = Tensor::randn(0f32, 1., ours.shape(), ours.device())?;
        let ga = (ours * &g)?.sum_all()?.backward()?;
        let gb = (reference * &g)?.sum_all()?.backward()?;
        for (name, v) in vars {
            let (a, b) = (ga.get(v).expect("grad"), gb.get(v).expect("grad"));
            assert_eq!(a.dims(), b.dims(), "{what}: {name} gradient");
            let d = max_diff(a, b)?;
            assert!(d < 1e-3, "{what}: {name} gradient differs by {d}");
        }
        Ok(())
    }

    #[test]
    fn matches_candle_conv_forward_and_backward() -> Result<()> {
        check(2, 3, 9, 7, 4, 3, 1, 1)?;
        check(2, 3, 11, 11, 5, 7, 2, 3)?;
        check(3, 4, 8, 8, 6, 1, 2, 0)?;
        check(1, 2, 6, 6, 3, 5, 1, 0)?;
        check(2, 2, 5, 5, 2, 3, 2, 1)
    }

    /// `conv` against the im2col path (whose backward is checked against Candle's above),
    /// output and both gradients.
    pub(crate) fn against_im2col(
        (n, c, h, w): (usize, usize, usize, usize),
        (cout, kh, kw): (usize, usize, usize),
        s: usize,
        p: usize,
        conv: impl Fn(&Tensor, &Tensor, usize, usize) -> Result<Tensor>,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (n, c, h, w), &dev)?)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (cout, c, kh, kw), &dev)?)?;
        let ours = conv(x.as_tensor(), wt.as_tensor(), s, p)?;
        let reference = conv2d_gemm(x.as_tensor(), wt.as_tensor(), None, s, p)?;
        same_with_grads(
            ours,
            reference,
            &[("input", &x), ("weight", &wt)],
            &format!("n{n} {h}x{w} k{kh}x{kw} s{s} p{p}"),
        )
    }

    /// `conv2d_conv_grads` against the im2col path (Candle's own backward fails on non-square
    /// inputs with stride 2).
    fn check_conv_grads(
        shape: (usize, usize, usize, usize),
        kernel: (usize, usize, usize),
        s: usize,
        p: usize,
    ) -> Result<()> {
        against_im2col(shape, kernel, s, p, conv2d_conv_grads)
    }

    #[test]
    fn conv_grads_match_candle_for_every_stride_and_padding() -> Result<()> {
        check_conv_grads((2, 3, 9, 7), (4, 3, 3), 1, 1)?;
        check_conv_grads((2, 3, 8, 8), (4, 3, 3), 2, 1)?;
        check_conv_grads((2, 3, 9, 9), (4, 3, 3), 2, 1)?;
        check_conv_grads((2, 4, 8, 7), (5, 1, 1), 2, 0)?;
        check_conv_grads((1, 3, 15, 14), (4, 7, 7), 2, 3)?;
        check_conv_grads((2, 2, 11, 10), (3, 5, 3), 3, 0)?;
        check_conv_grads((2, 2, 6, 6), (3, 3, 3), 1, 0)?;
        // Padding wider than the kernel falls back to Candle's op.
        check_conv_grads((1, 2, 5, 5), (2, 1, 1), 1, 1)
    }

    #[test]
    fn conv_grads_skip_the_gradient_of_an_input_that_needs_none() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev)?)?;
        let ours = conv2d_conv_grads(&x, wt.as_tensor(), 2, 1)?
            .sum_all()?
            .backward()?;
        let reference = conv2d_gemm(&x, wt.as_tensor(), None, 2, 1)?
            .sum_all()?
            .backward()?;
        assert!(ours.get(&x).is_none());
        let (a, b) = (
            ours.get(&wt).expect("grad"),
            reference.get(&wt).expect("grad"),
        );
        assert!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
        // Nothing to differentiate: no custom op at all.
        let plain = conv2d_conv_grads(&x, &wt.as_tensor().detach(), 1, 1)?;
        assert!(!plain.track_op());
        Ok(())
    }

    #[test]
    fn autocast_runs_the_product_in_bf16_and_returns_f32() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 8, 10, 10), &dev)?;
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.1, (6, 8, 3, 3), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., 6, &dev)?)?;
        let conv = Conv2d::new(
            wt.as_tensor().clone(),
            Some(b.as_tensor().clone()),
            Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            },
        );
        let full = conv.forward(&x)?;
        let half = {
            let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
            conv.forward(&x)?
        };
        assert_eq!(half.dtype(), candle_core::DType::F32);
        assert_eq!(half.dims(), full.dims());
        let err = (&half - &full)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = full.abs()?.max_all()?.to_scalar::<f32>()?;
        // bf16 keeps 8 bits of mantissa: about 0.4% per operand, less after summation.
        assert!(err > 0.0 && err < 0.02 * scale, "err {err} scale {scale}");
        let grads = {
            let _bf16 = crate::autocast::enable(candle_core::DType::BF16)?;
            conv.forward(&x)?.sqr()?.sum_all()?.backward()?
        };
        let gw = grads.get(&wt).expect("weight grad");
        assert_eq!(gw.dtype(), candle_core::DType::F32);
        let exact = full.sqr()?.sum_all()?.backward()?;
        let gw_exact = exact.get(&wt).expect("weight grad");
        let rel = ((gw - gw_exact)?.abs()?.max_all()?.to_scalar::<f32>()?)
            / gw_exact.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(rel < 0.03, "bf16 weight gradient off by {rel} relative");
        Ok(())
    }

    #[test]
    fn kernel_larger_than_padded_input_is_an_error() {
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((1, 1, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(conv2d_gemm(&x, &w, None, 1, 0).is_err());
    }
}
