//! Convolutions through oneDNN (feature `onednn`): the library PyTorch's CPU convolutions run
//! on, linked from the system (`libdnnl-dev`, oneDNN 2.x).
//!
//! Tensors stay NCHW float32; each call reorders into the blocked layout oneDNN picks for its
//! kernels and back, with primitives built once per shape and thread count
//! (`onednn_shim.cpp`).
//!
//! A batch is split evenly over rayon's threads, each part one oneDNN call with one OpenMP
//! thread (the kernel gradient summed over the parts in a fixed order), so the convolutions run
//! on the same threads as everything else. oneDNN's own OpenMP threads (a batch smaller than
//! the pool runs as one call on them) would spin after each call, up to 300,000 times, taking a
//! core from rayon's threads: measured side by side on the 2-core CI machine, OpenMP threads
//! made `resnet18-seed` about 10% slower.
//!
//! Which convolutions (plain: one group, no dilation) go to oneDNN, by measurement
//! (`examples/conv_shapes.rs`, then inside the step): all with 4 or more input channels (in
//! bf16, all), except the 3x3 stride-1 ones with 16 or more channels and outputs of 4x4 and up
//! in float32 (larger than 4x4 from 128 channels; 8x8 and up in bf16, and there from more than
//! 32 input channels: from fewer, oneDNN's bf16 kernels are faster),
//! where the built-in Winograd F(2x2, 3x3) is faster (unless [`set_winograd`] is on, in
//! float32), and the strided 1x1 ones (ResNet's projections) on 4x4 outputs or more, where the
//! built-in product is. So: strided 3x3 and 7x7 kernels, 1x1 kernels of stride 1, 5x5
//! kernels, small outputs, and in bf16 the first layers and narrow ones. On a CPU where oneDNN
//! runs Intel AMX's bf16 tiles ([`amx_bf16`]: Sapphire Rapids and later Xeons), every bf16
//! convolution that reaches this routing goes to oneDNN, as PyTorch's autocast runs them there:
//! its AMX kernels were faster than the built-in ones on AVX512-BF16, and level with the
//! built-in products on AMX's tiles (`resnet18-cifar`'s bf16 step, interleaved: 798-915 ms,
//! median 816, against 824 and 864 with the routing below, tuned on machines without AMX). A stride-1 first layer stays on the built-in direct
//! convolution (below): on AMX, oneDNN's was level on `resnet18-cifar`'s stem (the step 989
//! against 1,009 ms, medians of three interleaved) and slower on the MNIST CNN's 1->32 (11.4
//! against 10.1 ms); some small layers keep the built-in kernel gradient
//! ([`builtin_weight_grad`]), and convolutions to fewer than 16 channels run in float32.
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
//! A network's first layer (one to four input channels, an input that needs no gradient,
//! output rows of 8 or more) runs the built-in direct convolution (`direct.rs`) in float32,
//! before any of this routing; where bf16 autocast would run it in bf16 (16 or more output
//! channels, the AVX512-BF16 kernel active) it comes here (oneDNN's bf16 kernels measured
//! faster).
//!
//! 3x3 convolutions to outputs of 16 positions or fewer (4x4, 2x2) from 192 channels and more
//! in bf16 (in float32, from 128 with stride 1 and 256 with a stride: the ResNets' last stages)
//! take their kernel gradient from the built-in products instead (Winograd's for stride 1;
//! [`builtin_weight_grad`]), faster there than oneDNN 2.6's backward-weights kernel.
//!
//! [`set_enabled`] turns it off per thread (for comparisons); shapes oneDNN has no kernel for
//! fall back to the built-in convolution.

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
    fn cnn_dnnl_amx_bf16() -> i32;
    fn cnn_dnnl_set_threads(n: i32);
    fn cnn_dnnl_prepare(s: *const CnnDnnlConv, err: *mut c_char, len: usize) -> i32;
    fn cnn_dnnl_forward(
        s: *const CnnDnnlConv,
        src: *const f32,
        wei: *const f32,
        wei_ready: *const c_void,
        dst: *mut f32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn cnn_dnnl_backward(
        s: *const CnnDnnlConv,
        src: *const f32,
        wei: *const f32,
        wei_ready: *const c_void,
        diff_dst: *const f32,
        diff_src: *mut f32,
        diff_wei: *mut f32,
        err: *mut c_char,
        len: usize,
    ) -> i32;
    fn cnn_dnnl_impl(s: *const CnnDnnlConv, out: *mut c_char, len: usize) -> i32;
    fn cnn_dnnl_kernel_size(s: *const CnnDnnlConv, pass: i32, block: *mut i64) -> i64;
    #[allow(clippy::too_many_arguments)]
    fn cnn_dnnl_kernel(
        s: *const CnnDnnlConv,
        pass: i32,
        wei: *const f32,
        dst: *mut c_void,
        bytes: i64,
        o0: i64,
        o1: i64,
        err: *mut c_char,
        len: usize,
    ) -> i32;
}

/// Input channels from which a convolution goes through oneDNN.
const MIN_CHANNELS: usize = 4;

thread_local! {
    static ENABLED: Cell<bool> = Cell::new(std::env::var_os("CNN_ONEDNN").is_none_or(|v| v != "0"));
    static EVERYWHERE: Cell<bool> = const { Cell::new(false) };
    static WINOGRAD: Cell<bool> = Cell::new(std::env::var_os("CNN_ONEDNN_WINOGRAD").is_some_and(|v| v == "1"));
    static SHARED_KERNEL: Cell<bool> = const { Cell::new(true) };
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

/// Sends every plain convolution on this thread to oneDNN, whatever the routing would
/// choose (for measurements such as `examples/conv_shapes.rs`); returns the previous setting.
pub fn set_everywhere(on: bool) -> bool {
    EVERYWHERE.with(|e| e.replace(on))
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

/// The images of each oneDNN call for a batch of `n`, and the OpenMP threads of each call: the
/// batch split over rayon's `t` threads into `t` parts of ⌈n/t⌉ or ⌊n/t⌋ images (the larger
/// first), one OpenMP thread each; a batch smaller than the pool is one call on as many OpenMP
/// threads as the pool has.
fn split(n: usize) -> (Vec<usize>, usize) {
    let threads = rayon::current_num_threads().max(1);
    if n < threads {
        return (vec![n], threads);
    }
    let (base, more) = (n / threads, n % threads);
    (
        (0..threads).map(|i| base + usize::from(i < more)).collect(),
        1,
    )
}

/// The parts of `desc`'s batch ([`split`]): each part's description, and OpenMP threads per
/// call.
fn parts(desc: &CnnDnnlConv) -> (Vec<CnnDnnlConv>, usize) {
    let (sizes, threads) = split(desc.n as usize);
    let descs = sizes
        .into_iter()
        .map(|k| CnnDnnlConv {
            n: k as i64,
            ..*desc
        })
        .collect();
    (descs, threads)
}

/// `v` cut into consecutive pieces of `k · each` values for each `k` of `sizes`.
fn cut<'a, T>(mut v: &'a [T], sizes: &[CnnDnnlConv], each: usize) -> Vec<&'a [T]> {
    let mut out = Vec::with_capacity(sizes.len());
    for d in sizes {
        let (a, b) = v.split_at(d.n as usize * each);
        out.push(a);
        v = b;
    }
    out
}

/// [`cut`] for mutable slices.
fn cut_mut<'a, T>(mut v: &'a mut [T], sizes: &[CnnDnnlConv], each: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(sizes.len());
    for d in sizes {
        let (a, b) = v.split_at_mut(d.n as usize * each);
        out.push(a);
        v = b;
    }
    out
}

/// Kernel values from which the parts of a batch share one reorder ([`shared_kernel`]). Wall
/// time of each oneDNN operation inside a `resnet18-cifar` bf16 step at batch 128 on 2 threads,
/// each thread its own reorder against one shared (medians of three interleaved runs, two
/// sittings): 512->512 on 4x4 (2,359,296 values) forward 10.1-10.2 -> 9.2-9.6 ms and input
/// gradient 12.5-13.0 -> 10.8-11.1, 256->512 stride 2 forward 7.2-7.9 -> 6.1-6.4. Smaller
/// kernels gained nothing or lost: 128->256 stride 2 (294,912 values) forward 8.1-8.2 ->
/// 7.5-7.8 but both gradients 20.4-20.9 -> 20.1-22.0; `resnet18-seed`'s 192->192 on 2x2
/// (331,776) level, its 128->192 stride 2 (221,184) forward 0.54 -> 0.58; `resnet18-cifar`'s
/// 64->128 stride 2 (73,728) 8.8 -> 9.3: there the second round of the pool's threads costs as
/// much as the reorder it saves.
const SHARED_KERNEL_MIN: usize = 1 << 19;

/// A cache line of a kernel in oneDNN's layout (its buffers aligned as oneDNN aligns its own).
#[repr(C, align(64))]
struct Line(MaybeUninit<[u8; 64]>);

/// The kernel `w` (O, C, kH, kW) in the layout of `pass` (0: forward, 1: input gradient) of
/// every part's primitive, reordered once: each of the pool's threads reorders a range of whole
/// blocks of output channels (before, each part's call reordered all of it: the same kernel
/// once per thread). `None` (each part reorders it itself) for one part, parts of unequal
/// sizes (their primitives may differ), kernels under [`SHARED_KERNEL_MIN`] values, oneDNN's
/// Winograd (its buffers keep a spare page: `onednn_shim.cpp`), a primitive that reads the
/// OIHW kernel itself, a layout whose output channels cannot be reordered by ranges (padded,
/// or not blocked by whole blocks of them), and on the thread where [`share_kernels`] is off.
/// The same bits either way.
fn shared_kernel(
    parts: &[CnnDnnlConv],
    threads: usize,
    pass: i32,
    w: &[f32],
) -> Result<Option<Vec<Line>>> {
    let Some(part) = parts.first() else {
        return Ok(None);
    };
    if parts.len() < 2
        || parts.iter().any(|p| p.n != part.n)
        || part.kernel_len() < SHARED_KERNEL_MIN
        || part.winograd != 0
        || !SHARED_KERNEL.with(Cell::get)
    {
        return Ok(None);
    }
    let mut block = 0i64;
    // The primitives of the parts' thread count (the shim's cache is keyed by it).
    // SAFETY: plain setter; `part` was set up (`run`); `block` is written.
    let bytes = unsafe {
        cnn_dnnl_set_threads(threads as i32);
        cnn_dnnl_kernel_size(part, pass, &mut block)
    };
    if bytes < 0 {
        candle_core::bail!("conv2d: oneDNN has no kernel layout for a shape it set up")
    }
    if bytes == 0 || block < 1 || part.o % block != 0 {
        return Ok(None);
    }
    let (blocks, k) = (part.o / block, parts.len() as i64);
    let ranges: Vec<(i64, i64)> = (0..k)
        .map(|i| (blocks * i / k * block, blocks * (i + 1) / k * block))
        .filter(|(a, b)| a < b)
        .collect();
    // Every byte of the layout is written by the ranges' reorders (it has no padding).
    let lines = (bytes as usize).div_ceil(64);
    let mut out = Vec::with_capacity(lines);
    out.resize_with(lines, || Line(MaybeUninit::uninit()));
    let dst = out.as_mut_ptr() as usize;
    ranges.into_par_iter().try_for_each(|(o0, o1)| {
        let result = call("kernel reorder", threads, |e, l| {
            // SAFETY: `dst` holds the layout's `bytes` (the shim checks them against the
            // layout); ranges of output channels are disjoint whole blocks, so the threads
            // write disjoint bytes; `w` is the (O, C, kH, kW) kernel `part` was set up for
            // (lengths checked by the callers).
            unsafe {
                let dst = dst as *mut c_void;
                cnn_dnnl_kernel(part, pass, w.as_ptr(), dst, bytes, o0, o1, e, l)
            }
        });
        done("kernel reorder", result)
    })?;
    #[cfg(test)]
    SHARED_KERNELS_MADE.with(|m| m.set(m.get() + 1));
    Ok(Some(out))
}

#[cfg(test)]
thread_local! {
    /// Kernels [`shared_kernel`] reordered on this thread (for tests: whether the shared path
    /// ran; the ops run on the caller's thread).
    pub(super) static SHARED_KERNELS_MADE: Cell<usize> = const { Cell::new(0) };
}

/// Whether oneDNN's calls on this thread reorder a kernel once for all parts of a batch
/// ([`shared_kernel`]; default yes); returns the previous setting. For tests and comparisons.
pub fn share_kernels(on: bool) -> bool {
    SHARED_KERNEL.with(|s| s.replace(on))
}

/// `Ok(true)` of [`call`] for a shape set up before: anything else is an error.
fn done(what: &str, result: Result<bool>) -> Result<()> {
    match result? {
        true => Ok(()),
        false => candle_core::bail!("conv2d ({what}): oneDNN has no kernel for a shape it set up"),
    }
}

/// Runs a shim call with an error buffer, on `threads` OpenMP threads: `Ok(true)` done,
/// `Ok(false)` no implementation.
fn call(what: &str, threads: usize, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<bool> {
    let mut err = [0 as c_char; 512];
    // SAFETY: the shim writes at most `err.len()` bytes, NUL-terminated (snprintf).
    unsafe { cnn_dnnl_set_threads(threads as i32) };
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
/// tensors, differentiable in both, then what `after` asks in the same op
/// ([`super::bias::apply`]); `None` where oneDNN has no kernel for the shape.
pub(crate) fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    after: super::bias::After,
    stride: usize,
    padding: usize,
    bf16: bool,
) -> Result<Option<Tensor>> {
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    if !routes(&geo, cout, bf16) {
        return Ok(None);
    }
    run(xs, weight, after, &geo, cout, bf16)
}

/// Input channels up to which oneDNN runs every bf16 convolution.
const MAX_FEW_CHANNELS: usize = 32;

/// Whether oneDNN runs bf16 convolutions on Intel AMX's tiles here (`tdpbf16ps`: a 16x16
/// block of float32 sums over 32 bf16 products in one instruction, where the built-in kernel's
/// `vdpbf16ps` takes 16 values over 2), as PyTorch's autocast does on such a CPU (Sapphire
/// Rapids and later Xeons).
pub fn amx_bf16() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: a query of oneDNN's CPU dispatch, without arguments.
    *AMX.get_or_init(|| unsafe { cnn_dnnl_amx_bf16() } == 1)
}

/// Whether oneDNN is the faster way to run this convolution.
pub(super) fn routes(geo: &Geometry, cout: usize, bf16: bool) -> bool {
    if EVERYWHERE.with(|e| e.get()) {
        return true;
    }
    // With AMX, oneDNN's bf16 kernels are as fast as the built-in ones or faster:
    // `resnet18-cifar`'s bf16 step at batch 128 on a 2-core Xeon with AMX, 1,520 ms with the
    // routing below (measured on AVX512-BF16 machines without AMX) and 898 ms with every bf16
    // convolution on oneDNN while the built-in products ran `vdpbf16ps`; with the built-in
    // products on AMX's tiles, 824 and 864 ms against 798-915 (median 816).
    if bf16 && amx_bf16() {
        return true;
    }
    // One to three input channels (a network's first layer on grey or RGB images): in float32
    // the built-in convolution is as fast or faster (measured with `examples/conv_shapes.rs`:
    // LeNet-5's 1->6 2.2 against 3.9 ms, ResNet's 3->64 50 against 49-51 ms); in bf16 oneDNN
    // is (3->64: 40 against 55-57 ms; the MNIST CNN's 1->32: 6.8-7.1 against 9.7-10.3 ms).
    if geo.c < MIN_CHANNELS && !bf16 {
        return false;
    }
    // bf16 from few input channels: oneDNN's kernels are faster than the built-in Winograd's
    // narrow products (`examples/conv_shapes.rs`, forward and both gradients: the MNIST CNN's
    // 32->64 14x14 at batch 64 5.3-5.4 against 7.1-8.7 ms; 32->32 16x16 at batch 128 13.4
    // against 20.0), not from 64 (64->64 8x8: 8.9-11.3 against 7.3-9.6).
    if bf16 && geo.c <= MAX_FEW_CHANNELS {
        return true;
    }
    // Strided 1x1 kernels (ResNet's projections) on outputs of 4x4 and up: the built-in
    // product is faster (forward and backward at batch 128, float32 / bf16: 64->128 from 32x32
    // 48-55 against 57-72 / 47-59 against 51-71 ms; 128->256 from 16x16 24-36 against 36-46 /
    // 20-26 against 28-35; 256->512 from 8x8 13-24 against 17-26 / 10-14 against 11-19).
    let onednn_winograd = winograd() && !bf16;
    if geo.kh == 1 && geo.kw == 1 && geo.stride > 1 && geo.oh * geo.ow >= 16 && !onednn_winograd {
        return false;
    }
    // Where the built-in Winograd F(2x2, 3x3) runs on outputs of 8x8 and up, it is faster than
    // oneDNN's direct convolution in float32 and as fast in bf16
    // (`resnet18-cifar`'s shapes at batch 128, forward and backward, float32 / bf16: 64->64
    // 32x32 153-162 against 198-209 / 131-133 against 131-138 ms; 128->128 16x16 115-129
    // against 170-213 / 88-98 against 103-105; 256->256 8x8 109-118 against 144-151 / 85-88
    // against 80-87); on 2x2 outputs, with a stride, and on 4x4, oneDNN is (512->512 2x2: 58-70
    // against 46-52 ms in float32; 512->512 4x4 96-109 against 75-93 in bf16). In float32 on
    // 4x4 from 128 channels, oneDNN's forward and input gradient with the built-in kernel
    // gradient ([`builtin_weight_grad`]) beat the built-in Winograd's three inside the step
    // (medians of three interleaved runs at batch 128): `resnet18-cifar`'s 512->512 70.1 ->
    // 57.3 ms a layer, `resnet18-seed`'s 128->128 4.50 -> 3.59 (all three on oneDNN: 72.3 and
    // 4.08); from fewer channels (no built-in kernel gradient there) it was not measured.
    let min_positions = match (bf16, geo.c >= 128) {
        (true, _) => 64,
        (false, true) => 17,
        (false, false) => 16,
    };
    onednn_winograd || !(super::winograd::applies(geo, cout) && geo.oh * geo.ow >= min_positions)
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
    run(xs, weight, super::bias::After::Nothing, &geo, cout, bf16)
}

fn run(
    xs: &Tensor,
    weight: &Tensor,
    after: super::bias::After,
    geo: &Geometry,
    cout: usize,
    bf16: bool,
) -> Result<Option<Tensor>> {
    let desc = describe(geo, cout, xs.dim(0)?, bf16);
    let (mut descs, threads) = parts(&desc);
    descs.dedup_by_key(|d| d.n);
    for part in &descs {
        // SAFETY: `part` lives across the call; the buffer is the shim's to write.
        if !call("set-up", threads, |e, l| unsafe {
            cnn_dnnl_prepare(part, e, l)
        })? {
            return Ok(None);
        }
    }
    let op = ConvDnnl {
        desc,
        builtin_weight_grad: builtin_weight_grad(geo, bf16).then_some(*geo),
    };
    Ok(Some(super::bias::apply(xs, weight, after, op)?))
}

/// Whether the kernel gradient of a convolution oneDNN runs forward is the built-in one's
/// (Winograd's for stride 1). In bf16, 3x3 kernels to outputs of 16 positions or fewer (4x4, 2x2)
/// from 192 input channels, where oneDNN 2.6's backward-weights kernel is the slower. Wall
/// time of each operation inside the step at batch 128, both gradients, three interleaved runs:
/// `resnet18-cifar`'s 512->512 on 4x4 37.6-41.1 ms (oneDNN) against 29.8-31.7 (oneDNN's input
/// gradient, the built-in kernel gradient), 256->512 stride 2 from 8x8 30.7-32.4 against
/// 28.9-30.0; `resnet18-seed`'s 192->192 on 2x2 2.60-2.68 against 1.94-2.17. From fewer channels
/// or to larger outputs oneDNN's is as fast or faster (`resnet18-seed`'s 128->128 on 4x4
/// 2.06-2.11 against 2.13-2.38, 128->192 stride 2 from 4x4 2.3 against 3.1, 64->128 stride 2
/// from 8x8 2.0 against 3.0-3.2; the kernel gradient alone, `resnet18-cifar`'s 128->256 stride
/// 2 from 16x16 10.0-10.2 against 10.3, 64->128 from 32x32 11.4 against 14.4). oneDNN's forward
/// and input gradient stay: on these shapes they are the faster (512->512 on 4x4: 8.8-9.5 and
/// 11.2-11.7 ms against Winograd's 12.2-13.4 and 20).
///
/// In float32, 3x3 kernels to outputs of 16 positions or fewer from 128 channels with stride 1,
/// from 256 with a stride (medians of interleaved runs inside the step, input gradient +
/// kernel gradient): `resnet18-cifar`'s 512->512 on 4x4 both gradients 50.5 ms (oneDNN)
/// against 18.5 + 17.3, its 256->512 stride 2 from 8x8 39.0 against 17.6 + 16.3,
/// `resnet18-seed`'s 128->128 on 4x4 2.63 against 1.03 + 1.19, its 192->192 on 2x2 2.23-2.25
/// against 0.80-0.81 + 1.02-1.08; its 128->192 stride 2 from 4x4 keeps oneDNN's (2.21 against
/// 1.14 + 2.00).
pub(super) fn builtin_weight_grad(geo: &Geometry, bf16: bool) -> bool {
    let small = geo.kh == 3 && geo.kw == 3 && geo.oh * geo.ow <= 16;
    match bf16 {
        true => small && geo.c >= 192,
        false => small && geo.c >= if geo.stride == 1 { 128 } else { 256 },
    }
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
    let (descs, threads) = parts(&describe(&geo, cout, xs.dim(0)?, bf16));
    let mut out = [0 as c_char; 256];
    // SAFETY: as in `call`.
    let rc = unsafe {
        cnn_dnnl_set_threads(threads as i32);
        cnn_dnnl_impl(&descs[0], out.as_mut_ptr(), out.len())
    };
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
    /// Whether the last window reaches the input's last row and column (the shim hands oneDNN
    /// the input without the ones no window reads, and their gradient is not written).
    fn windows_reach_the_input(&self) -> bool {
        let far = |o: i64, k: i64, size: i64| (o - 1) * self.stride + k - self.pad >= size;
        far(self.oh, self.kh, self.h) && far(self.ow, self.kw, self.w)
    }
}

/// The forward pass, a custom op so that its backward is oneDNN's too (the kernel gradient
/// the built-in one's where [`builtin_weight_grad`]).
struct ConvDnnl {
    desc: CnnDnnlConv,
    /// The geometry, where the kernel gradient is the built-in one's ([`builtin_weight_grad`]).
    builtin_weight_grad: Option<Geometry>,
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
        let shape = Shape::from((d.n as usize, d.o as usize, d.oh as usize, d.ow as usize));
        if d.output_len() == 0 {
            return Ok((CpuStorage::F32(Vec::new()), shape));
        }
        // oneDNN writes every value of the output: no zero-filling pass first.
        let mut out: Vec<f32> = Vec::with_capacity(d.output_len());
        let (parts, threads) = parts(d);
        let (x_img, out_img) = (d.input_len() / d.n as usize, d.output_len() / d.n as usize);
        let outs = cut_mut(
            &mut out.spare_capacity_mut()[..d.output_len()],
            &parts,
            out_img,
        );
        let jobs: Vec<_> = parts.iter().zip(cut(x, &parts, x_img)).zip(outs).collect();
        time(Part::Gemm, || {
            let kernel = shared_kernel(&parts, threads, 0, w)?;
            let ready = kernel.as_ref().map_or(0, |k| k.as_ptr() as usize);
            jobs.into_par_iter().try_for_each(|((part, x), out)| {
                let dst = out.as_mut_ptr().cast::<f32>();
                done(
                    "forward",
                    call("forward", threads, |e, l| {
                        // SAFETY: the slices have the lengths `part` gives (checked above);
                        // `ready` is null or the kernel in the forward's layout, alive here.
                        unsafe {
                            let ready = ready as *const c_void;
                            cnn_dnnl_forward(part, x.as_ptr(), w.as_ptr(), ready, dst, e, l)
                        }
                    }),
                )
            })
        })?;
        // SAFETY: every part's call succeeded, and a successful forward writes its whole output.
        unsafe { out.set_len(d.output_len()) };
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
        if let (Some(geo), true) = (self.builtin_weight_grad, want_w) {
            let grad = grad.contiguous()?;
            let gx = match want_x {
                true => {
                    let op = ConvDnnlGrads {
                        desc: self.desc,
                        want_x,
                        want_w: false,
                    };
                    Some(grad.apply_op3_no_bwd(x, w, &op)?.reshape(x.shape())?)
                }
                false => None,
            };
            let (cout, bf16) = (self.desc.o as usize, self.desc.bf16 != 0);
            let gw = super::cpu::grad((geo, cout, bf16), false, x, &grad)?;
            return Ok((gx, Some(gw)));
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
        let n = d.n as usize;
        if n == 0 || d.output_len() == 0 {
            return Ok((CpuStorage::F32(vec![0f32; nx + nw]), Shape::from(nx + nw)));
        }
        // oneDNN writes every value of both gradients, except the input's rows and columns
        // that no window reaches (a 1x1 stride-2 kernel on an even size): zeros first only then.
        let mut out = Vec::with_capacity(nx + nw);
        let (gx, gw) = out.spare_capacity_mut()[..nx + nw].split_at_mut(nx);
        // Tests run on NaNs where a value left unwritten would otherwise read as a fresh page's 0.
        #[cfg(test)]
        gx.iter_mut()
            .chain(gw.iter_mut())
            .for_each(|v| *v = MaybeUninit::new(f32::NAN));
        if !d.windows_reach_the_input() {
            gx.par_chunks_mut(1 << 16)
                .for_each(|c| c.fill(MaybeUninit::new(0.0)));
        }
        let (parts, threads) = parts(d);
        let (x_img, g_img) = (d.input_len() / n, d.output_len() / n);
        // The kernel gradient of each part but the first apart, summed after in order.
        let mut extra = vec![MaybeUninit::<f32>::uninit(); parts.len().saturating_sub(1) * nw];
        #[cfg(test)]
        extra
            .iter_mut()
            .for_each(|v| *v = MaybeUninit::new(f32::NAN));
        let gx_parts: Vec<Option<&mut [MaybeUninit<f32>]>> = match self.want_x {
            true => cut_mut(gx, &parts, x_img).into_iter().map(Some).collect(),
            false => parts.iter().map(|_| None).collect(),
        };
        let gw_parts: Vec<Option<&mut [MaybeUninit<f32>]>> = match self.want_w {
            true => std::iter::once(gw)
                .chain(extra.chunks_mut(nw.max(1)))
                .map(Some)
                .collect(),
            false => parts.iter().map(|_| None).collect(),
        };
        let jobs: Vec<_> = parts
            .iter()
            .zip(
                cut(grad, &parts, g_img)
                    .into_iter()
                    .zip(cut(x, &parts, x_img)),
            )
            .zip(gx_parts.into_iter().zip(gw_parts))
            .collect();
        time(Part::Gemm, || {
            let kernel = match self.want_x {
                true => shared_kernel(&parts, threads, 1, w)?,
                false => None,
            };
            let ready = kernel.as_ref().map_or(0, |k| k.as_ptr() as usize);
            jobs.into_par_iter()
                .try_for_each(|((part, (grad, x)), (gx, gw))| {
                    let px = gx.map_or(std::ptr::null_mut(), |g| g.as_mut_ptr().cast::<f32>());
                    let pw = gw.map_or(std::ptr::null_mut(), |g| g.as_mut_ptr().cast::<f32>());
                    let result = call("backward", threads, |e, l| {
                        // SAFETY: every slice has the length `part` gives (checked above); null
                        // pointers mark the gradients not wanted; `ready` is null or the
                        // kernel in the input gradient's layout, alive here.
                        unsafe {
                            cnn_dnnl_backward(
                                part,
                                x.as_ptr(),
                                w.as_ptr(),
                                ready as *const c_void,
                                grad.as_ptr(),
                                px,
                                pw,
                                e,
                                l,
                            )
                        }
                    });
                    done("backward", result)
                })
        })?;
        // SAFETY: every part's call succeeded, and a successful backward writes the whole
        // gradients asked for (the input's rows and columns it skips were zeroed above).
        unsafe { out.set_len(nx + nw) };
        if nw > 0 && !extra.is_empty() {
            // In parallel over stretches of the kernel, each summed over the parts in order.
            const STRETCH: usize = 1 << 14;
            out[nx..]
                .par_chunks_mut(STRETCH)
                .enumerate()
                .for_each(|(i, gw)| {
                    for part in extra.chunks(nw) {
                        let part = &part[i * STRETCH..][..gw.len()];
                        // SAFETY: as above, for the other parts' kernel gradients.
                        gw.iter_mut()
                            .zip(part)
                            .for_each(|(a, b)| *a += unsafe { b.assume_init() });
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from(nx + nw)))
    }
}
