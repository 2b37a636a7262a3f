//! Convolution on any device with a backward pass made of convolutions only.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `F.conv2d(xs, weight, stride=stride, padding=padding)` (one group, no dilation; `xs`
/// `(N, C_in, H, W)`, `weight` `(C_out, C_in, kH, kW)`, output `(N, C_out, H_out, W_out)`) as
/// Candle's `conv2d` with a backward pass made of `conv2d`s only: the
/// input gradient is the output gradient, zero-dilated by the stride and padded, convolved with
/// the kernel flipped and transposed; the weight gradient is Candle's batch-as-channels
/// convolution. On CUDA both run as im2col + cuBLAS (or cuDNN with the `cudnn` feature), where
/// Candle's own backward uses a direct `conv_transpose2d` kernel for the input gradient.
///
/// # Errors
/// Shapes that do not fit together, or a kernel larger than the padded input.
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
