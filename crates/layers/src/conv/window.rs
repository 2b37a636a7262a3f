//! A window of a convolution kernel as its own differentiable op (the taps that reach the input).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};

use crate::fill::{par_filled, par_init};

/// `weight[:, :, r0..r0 + nh, c0..c0 + nw]` of an (O, I, kH, kW) f32 CPU kernel as a contiguous
/// kernel, differentiable: the gradient is the full kernel's, zero outside the window, made in
/// one pass. Candle's `narrow` of the two axes pads the gradient back with two `cat`s of
/// zero tensors on the calling thread (ResNet-18's last stage: 2.4M values each, per step).
pub(super) fn kernel_window(
    weight: &Tensor,
    (r0, nh): (usize, usize),
    (c0, nw): (usize, usize),
) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    if weight.dtype() != DType::F32 || !weight.device().is_cpu() || r0 + nh > kh || c0 + nw > kw {
        return weight.narrow(2, r0, nh)?.narrow(3, c0, nw);
    }
    weight.contiguous()?.apply_op1(KernelWindow {
        full: (kh, kw),
        rows: (r0, nh),
        cols: (c0, nw),
    })
}

#[derive(Debug, Clone, Copy)]
struct KernelWindow {
    full: (usize, usize),
    rows: (usize, usize),
    cols: (usize, usize),
}

impl candle_core::CustomOp1 for KernelWindow {
    fn name(&self) -> &'static str {
        "kernel-window"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = crate::per_channel::f32_slice(s, l, self.name(), "kernel")?;
        let (o, i, kh, kw) = l.shape().dims4()?;
        let ((r0, nh), (c0, nw)) = (self.rows, self.cols);
        // Output channels in parallel, tap by tap (a 1x1 window is one value per channel pair:
        // a `memcpy` call per value was a serial stretch of ResNet-18's last stage).
        let fill = |oc: usize, out: &mut [MaybeUninit<f32>]| {
            let w = &w[oc * i * kh * kw..];
            for (k, out) in w.chunks_exact(kh * kw).zip(out.chunks_exact_mut(nh * nw)) {
                for (r, out) in out.chunks_exact_mut(nw).enumerate() {
                    for (o, &v) in out.iter_mut().zip(&k[(r0 + r) * kw + c0..][..nw]) {
                        o.write(v);
                    }
                }
            }
        };
        // SAFETY: each chunk is the windows of whole output channels, every value written.
        let out = unsafe { par_filled(o * i * nh * nw, i * nh * nw, fill) };
        Ok((CpuStorage::F32(out), Shape::from((o, i, nh, nw))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad.contiguous()?
            .apply_op1_no_bwd(&PadWindow(*self))
            .map(Some)
    }
}

/// The gradient of [`KernelWindow`]: the window's gradient placed in a zero full kernel.
struct PadWindow(KernelWindow);

impl candle_core::CustomOp1 for PadWindow {
    fn name(&self) -> &'static str {
        "kernel-window-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = crate::per_channel::f32_slice(s, l, self.name(), "gradient")?;
        let (o, i, nh, nw) = l.shape().dims4()?;
        let KernelWindow {
            full: (kh, kw),
            rows: (r0, _),
            cols: (c0, _),
        } = self.0;
        let out = par_init(o * i * kh * kw, i * kh * kw, 0f32, |oc, out| {
            let g = &g[oc * i * nh * nw..];
            for (k, g) in out.chunks_exact_mut(kh * kw).zip(g.chunks_exact(nh * nw)) {
                for (r, g) in g.chunks_exact(nw).enumerate() {
                    for (k, &v) in k[(r0 + r) * kw + c0..][..nw].iter_mut().zip(g) {
                        *k = v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((o, i, kh, kw))))
    }
}
