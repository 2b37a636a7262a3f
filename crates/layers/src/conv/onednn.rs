//! Convolutions through oneDNN (feature `onednn`): the library PyTorch's CPU convolutions run
//! on, linked from the system (`libdnnl-dev`, oneDNN 2.x).
//!
//! Tensors stay NCHW float32; each call reorders into the blocked layout oneDNN picks for its
//! kernels and back, with primitives built once per shape and thread count
//! (`onednn_shim.cpp`).
//!
//! Which convolutions (plain: one group, no dilation) go to oneDNN, by measurement
//! (`examples/conv_shapes.rs`): all with 4 or more input channels, except the 3x3 stride-1
//! ones with 16 or more channels and 8x8 outputs or more, where the built-in Winograd F(2x2,
//! 3x3) is faster (unless [`set_winograd`] is on, in float32). So: strided and 1x1 kernels,
//! 5x5 kernels, small outputs.
//! - float32: oneDNN's direct convolution; with [`set_winograd`] (or `CNN_ONEDNN_WINOGRAD=1`),
//!   its Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions where it has one (16 or more
//!   channels in and out, AVX-512): faster, less exact.
//! - bf16 autocast (with AVX512-BF16, and 16 or more output channels, as the built-in bf16
//!   kernel): both operands of every product rounded to bf16 nearest even, sums in float32, the
//!   output and the input gradient rounded to bf16, as PyTorch's
//!   `torch.autocast("cpu", torch.bfloat16)` convolution (oneDNN's too). The kernel gradient
//!   stays float32, where PyTorch's is rounded to bf16 by the backward of its bf16 copy of the
//!   kernel. Elsewhere oneDNN runs these shapes in float32.
//!
//! [`set_enabled`] turns it off per thread (for comparisons); shapes oneDNN has no kernel for
//! fall back to the built-in convolution.

use std::cell::Cell;
use std::ffi::{c_char, CStr};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::f32_slice;
use super::geometry::Geometry;
use crate::profile::{time, Part};

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CnnDnnlConv {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
    o: i64,
    kh: i64,
    kw: i64,
    oh: i64,
    ow: i64,
    stride: i64,
    pad: i64,
    bf16: i32,
    winograd: i32,
}

extern "C" {
    fn cnn_dnnl_set_threads(n: i32);
    fn cnn_dnnl_prepare(s: *const CnnDnnlConv, err: *mut c_char, len: usize) -> i32;
    fn cnn_dnnl_forward(
        s: *const CnnDnnlConv,
        src: *const f32,
        wei: *const f32,
        dst: *mut f32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn cnn_dnnl_backward(
        s: *const CnnDnnlConv,
        src: *const f32,
        wei: *const f32,
        diff_dst: *const f32,
        diff_src: *mut f32,
        diff_wei: *mut f32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn cnn_dnnl_impl(s: *const CnnDnnlConv, out: *mut c_char, len: usize) -> i32;
}

/// Input channels from which a convolution goes through oneDNN.
const MIN_CHANNELS: usize = 4;

thread_local! {
    static ENABLED: Cell<bool> = Cell::new(std::env::var_os("CNN_ONEDNN").is_none_or(|v| v != "0"));
    static WINOGRAD: Cell<bool> = Cell::new(std::env::var_os("CNN_ONEDNN_WINOGRAD").is_some_and(|v| v == "1"));
}

/// Whether float32 3x3 stride-1 convolutions on this thread use oneDNN's Winograd F(4x4, 3x3)
/// (default no; environment variable `CNN_ONEDNN_WINOGRAD=1` starts with yes).
///
/// About 2x faster than its direct convolution at ResNet's shapes, but less exact: 1e-6 to 2e-6
/// of the output's scale per convolution here (against 2e-7 to 9e-7 for the built-in F(2x2,
/// 3x3)), which three SGD steps of `resnet18-seed` amplify to a loss 4.7e-4 from PyTorch's,
/// outside the parity test's 1e-4. So it runs only where asked for.
pub fn winograd() -> bool {
    WINOGRAD.with(|e| e.get())
}

/// Turns oneDNN's float32 Winograd on or off for this thread; returns the previous setting.
pub fn set_winograd(on: bool) -> bool {
    WINOGRAD.with(|e| e.replace(on))
}

/// Whether convolutions on this thread go through oneDNN (default yes; environment variable
/// `CNN_ONEDNN=0` starts with no).
pub fn enabled() -> bool {
    ENABLED.with(|e| e.get())
}

/// Turns oneDNN convolutions on or off for this thread; returns the previous setting.
pub fn set_enabled(on: bool) -> bool {
    ENABLED.with(|e| e.replace(on))
}

/// Runs a shim call with an error buffer: `Ok(true)` done, `Ok(false)` no implementation.
fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<bool> {
    let mut err = [0 as c_char; 512];
    // SAFETY: the shim writes at most `err.len()` bytes, NUL-terminated (snprintf).
    unsafe { cnn_dnnl_set_threads(rayon::current_num_threads() as i32) };
    match f(err.as_mut_ptr(), err.len()) {
        0 => Ok(true),
        1 => Ok(false),
        _ => {
            // SAFETY: snprintf terminated the message inside `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            candle_core::bail!("conv2d ({what}) failed: {msg}")
        }
    }
}

/// The oneDNN convolution of `xs` (N, C, H, W) with `weight` (O, C, kH, kW), float32 CPU
/// tensors, differentiable in both; `None` where oneDNN has no kernel for the shape.
pub(crate) fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    bf16: bool,
) -> Result<Option<Tensor>> {
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    if !routes(&geo, cout, bf16) {
        return Ok(None);
    }
    run(xs, weight, &geo, cout, bf16)
}

/// Whether oneDNN is the faster way to run this convolution.
fn routes(geo: &Geometry, cout: usize, bf16: bool) -> bool {
    // One to three input channels (a network's first layer on grey or RGB images): the
    // built-in convolution is as fast or faster (measured with `examples/conv_shapes.rs`:
    // LeNet-5's 1->6 3.4 against 4.1 ms, ResNet's 3->64 57 against 69 ms in float32).
    if geo.c < MIN_CHANNELS {
        return false;
    }
    // Where the built-in Winograd F(2x2, 3x3) runs on outputs of 8x8 and up, it is faster than
    // oneDNN's direct convolution, in float32 and bf16 (`resnet18-cifar`'s 64->64 32x32 at
    // batch 128, forward and backward: 162 against 210 ms in float32, 128 against 142 in bf16);
    // on 4x4 and 2x2 outputs, with a stride or a 1x1 kernel, oneDNN is (2x2: 71 against 38 ms).
    let onednn_winograd = winograd() && !bf16;
    onednn_winograd || !(super::winograd::applies(geo, cout) && geo.oh * geo.ow >= 64)
}

/// [`conv2d`] through oneDNN whatever the shape (for tests): `None` only where oneDNN has no
/// kernel for it.
#[cfg(test)]
pub(crate) fn conv2d_any_shape(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    bf16: bool,
) -> Result<Option<Tensor>> {
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    run(xs, weight, &geo, cout, bf16)
}

fn run(
    xs: &Tensor,
    weight: &Tensor,
    geo: &Geometry,
    cout: usize,
    bf16: bool,
) -> Result<Option<Tensor>> {
    let desc = describe(geo, cout, xs.dim(0)?, bf16);
    // SAFETY: `desc` lives across the call; the buffer is the shim's to write.
    if !call("set-up", |e, l| unsafe { cnn_dnnl_prepare(&desc, e, l) })? {
        return Ok(None);
    }
    let op = ConvDnnl { desc };
    Ok(Some(xs.contiguous()?.apply_op2(&weight.contiguous()?, op)?))
}

/// The kernel oneDNN runs for this convolution's forward pass, e.g. `jit_wino_4x3:avx512_core`.
///
/// # Errors
/// oneDNN has no convolution for these shapes.
pub fn implementation(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    bf16: bool,
) -> Result<String> {
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    let desc = describe(&geo, cout, xs.dim(0)?, bf16);
    let mut out = [0 as c_char; 256];
    // SAFETY: as in `call`.
    let rc = unsafe { cnn_dnnl_impl(&desc, out.as_mut_ptr(), out.len()) };
    // SAFETY: snprintf terminated the text inside `out`.
    let text = unsafe { CStr::from_ptr(out.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    match rc {
        0 => Ok(text),
        _ => candle_core::bail!("conv2d: {text}"),
    }
}

fn describe(geo: &Geometry, cout: usize, n: usize, bf16: bool) -> CnnDnnlConv {
    let i = |v: usize| v as i64;
    CnnDnnlConv {
        n: i(n),
        c: i(geo.c),
        h: i(geo.h),
        w: i(geo.w),
        o: i(cout),
        kh: i(geo.kh),
        kw: i(geo.kw),
        oh: i(geo.oh),
        ow: i(geo.ow),
        stride: i(geo.stride),
        pad: i(geo.padding),
        bf16: bf16 as i32,
        winograd: (winograd() && geo.kh == 3 && geo.kw == 3 && geo.stride == 1) as i32,
    }
}

impl CnnDnnlConv {
    fn input_len(&self) -> usize {
        (self.n * self.c * self.h * self.w) as usize
    }
    fn kernel_len(&self) -> usize {
        (self.o * self.c * self.kh * self.kw) as usize
    }
    fn output_len(&self) -> usize {
        (self.n * self.o * self.oh * self.ow) as usize
    }
}

/// The forward pass, a custom op so that its backward is oneDNN's too.
struct ConvDnnl {
    desc: CnnDnnlConv,
}

impl CustomOp2 for ConvDnnl {
    fn name(&self) -> &'static str {
        "conv2d-onednn"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(xs, xl, "input")?, f32_slice(ws, wl, "kernel")?);
        let d = &self.desc;
        if x.len() != d.input_len() || w.len() != d.kernel_len() {
            candle_core::bail!("conv2d-onednn: operands changed shape since set-up")
        }
        let mut out = vec![0f32; d.output_len()];
        time(Part::Gemm, || {
            call("forward", |e, l| {
                // SAFETY: the slices have the lengths `desc` gives (checked above).
                unsafe { cnn_dnnl_forward(d, x.as_ptr(), w.as_ptr(), out.as_mut_ptr(), e, l) }
            })
        })?;
        let shape = Shape::from((d.n as usize, d.o as usize, d.oh as usize, d.ow as usize));
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w) = (x.track_op(), w.track_op());
        if !want_x && !want_w {
            return Ok((None, None));
        }
        let op = ConvDnnlGrads {
            desc: self.desc,
            want_x,
            want_w,
        };
        // Both gradients in one call (the output gradient is reordered once), side by side.
        let both = grad.contiguous()?.apply_op3_no_bwd(x, w, &op)?;
        let nx = if want_x { self.desc.input_len() } else { 0 };
        let gx = match want_x {
            true => Some(both.narrow(0, 0, nx)?.reshape(x.shape())?),
            false => None,
        };
        let gw = match want_w {
            true => Some(
                both.narrow(0, nx, self.desc.kernel_len())?
                    .reshape(w.shape())?,
            ),
            false => None,
        };
        Ok((gx, gw))
    }
}

/// The input's and the kernel's gradients from (output gradient, input, kernel), as one flat
/// tensor: the input's first, when wanted.
struct ConvDnnlGrads {
    desc: CnnDnnlConv,
    want_x: bool,
    want_w: bool,
}

impl CustomOp3 for ConvDnnlGrads {
    fn name(&self) -> &'static str {
        "conv2d-onednn-grads"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let grad = f32_slice(gs, gl, "output gradient")?;
        let (x, w) = (f32_slice(xs, xl, "input")?, f32_slice(ws, wl, "kernel")?);
        let d = &self.desc;
        if grad.len() != d.output_len() || x.len() != d.input_len() || w.len() != d.kernel_len() {
            candle_core::bail!("conv2d-onednn: operands changed shape since set-up")
        }
        let nx = if self.want_x { d.input_len() } else { 0 };
        let nw = if self.want_w { d.kernel_len() } else { 0 };
        let mut out = vec![0f32; nx + nw];
        let (gx, gw) = out.split_at_mut(nx);
        let px = if self.want_x {
            gx.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        };
        let pw = if self.want_w {
            gw.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        };
        time(Part::Gemm, || {
            call("backward", |e, l| {
                // SAFETY: every slice has the length `desc` gives (checked above); null
                // pointers mark the gradients not wanted.
                unsafe { cnn_dnnl_backward(d, x.as_ptr(), w.as_ptr(), grad.as_ptr(), px, pw, e, l) }
            })
        })?;
        Ok((CpuStorage::F32(out), Shape::from(nx + nw)))
    }
}
