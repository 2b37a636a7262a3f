//! The f32 CPU convolution, image by image.
//!
//! [`conv2d_gemm`](crate::conv2d_gemm) makes the `im2col` columns of the whole batch at once
//! (302 MB for the first stage of a CIFAR ResNet-18 at batch 128), keeps them for the
//! backward pass and transposes the NHWC product to NCHW. Here each image's columns are made
//! in a buffer of a few MB, in the (C·KH·KW) x (OH·OW) layout whose product with the kernel is
//! the NCHW output itself, used while still in cache, and made again in the backward pass.
//! Stride-1 input gradients with "same" padding (or Winograd's) are a convolution of the output
//! gradient with the flipped kernel, so that every GEMM has the whole receptive field as its
//! inner dimension; the others are Wᵀ · grad, then `col2im`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::batch_norm::EvalEpilogue;
use super::geometry::Geometry;
use super::winograd;
use crate::bf16_gemm::{self, PackedLhs, View};
use crate::per_channel::with_f32;
pub(super) use crate::products::{bf16_product, gemm, Lhs};
use crate::profile::{time, Part};

/// `F.conv2d(xs, weight, stride=stride, padding=padding)` (one group, no dilation) for
/// contiguous-or-not f32 CPU tensors, differentiable in both: `xs` `(N, C_in, H, W)`, `weight`
/// `(C_out, C_in, kH, kW)`, output `(N, C_out, H_out, W_out)`.
///
/// # Errors
/// Tensors that are not f32 on the CPU, shapes that do not fit together, or a kernel larger than
/// the padded input.
pub fn conv2d_cpu_f32(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_cpu(
        xs,
        weight,
        super::bias::After::Nothing,
        stride,
        padding,
        false,
    )
}

/// [`conv2d_cpu_f32`], with bf16 products ([`bf16_gemm`]) when `bf16`: both operands of each
/// of the three products rounded to bf16 (the output gradient too), sums in float32; plus
/// what `after` asks in the same op ([`super::bias::apply`]).
pub(crate) fn conv2d_cpu(
    xs: &Tensor,
    weight: &Tensor,
    after: super::bias::After,
    stride: usize,
    padding: usize,
    bf16: bool,
) -> Result<Tensor> {
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    let bf16 = bf16 && bf16_gemm::available();
    let conv = ConvCpu { geo, cout, bf16 };
    match after {
        super::bias::After::EvalBatchNorm(eval) => conv.forward_eval(xs, weight, eval),
        after => super::bias::apply(xs, weight, after, conv),
    }
}

#[cfg(test)]
thread_local! {
    /// Evaluation-mode batch norms the image-by-image convolution ran on its blocks of output
    /// rows ([`ConvCpu::forward_eval`]), on this thread.
    pub(crate) static EVAL_IN_CONV_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// Forward passes on this thread whose bf16 products gathered their columns packed
    /// ([`super::im2col_packed`]).
    pub(crate) static GATHERED_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Output positions per image from which the image-by-image convolution beats the whole-batch
/// one. Measured on the CI machine: with 4x4 outputs and up it is faster (`resnet18-seed` 10%
/// with 4x4 included against 8x8 and up); with 2x2 and 1x1 the per-image GEMMs are too
/// narrow.
const MIN_POSITIONS: usize = 16;

/// Whether [`conv2d_cpu_f32`] is the faster way to convolve `xs` with `weight`.
pub(crate) fn per_image_pays(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<bool> {
    let (geo, _) = Geometry::of_conv(xs, weight, stride, padding)?;
    Ok(geo.oh * geo.ow >= MIN_POSITIONS)
}

/// One task's buffers: the columns, and the bf16 products' packed operands. Every value a task
/// reads from them it wrote first (the columns of each image, its packed operands), so a
/// thread keeps them from one task and one convolution to the next ([`Work::kept`]).
#[derive(Debug, Default)]
struct Work {
    cols: Vec<f32>,
    /// The weight gradient's output gradients of several images side by side.
    staged: Vec<f32>,
    lhs: PackedLhs,
    packed: bf16_gemm::Scratch,
}

thread_local! {
    /// The thread's [`Work`] between tasks: fresh ones zero-filled several MB of columns and
    /// packed operands for every task (2% of a ResNet-50 step at 224x224 in `memset`). Kept
    /// for the thread's life, at the size of the largest convolution it ran (about 5 MB a
    /// thread for ResNet-50 at 224x224), as Winograd's transforms' buffer is.
    static KEPT: std::cell::Cell<Option<Work>> = const { std::cell::Cell::new(None) };
}

/// A [`Work`] taken from its thread's [`KEPT`] (or made), handed back there when dropped.
struct KeptWork(Option<Work>);

impl Work {
    /// The thread's kept buffers with at least `cols` column values, or new ones (a task that
    /// runs inside another's on the same thread, stolen while it waits, gets new ones).
    fn kept(cols: usize) -> KeptWork {
        let mut work = KEPT.take().unwrap_or_default();
        if work.cols.len() < cols {
            work.cols.resize(cols, 0.0);
        }
        KeptWork(Some(work))
    }
}

impl std::ops::Deref for KeptWork {
    type Target = Work;
    fn deref(&self) -> &Work {
        self.0.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for KeptWork {
    fn deref_mut(&mut self) -> &mut Work {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for KeptWork {
    fn drop(&mut self) {
        KEPT.set(self.0.take());
    }
}

/// The convolution of contiguous (N, C, H, W) images with a contiguous (O, C, KH, KW) kernel,
/// its products in bf16 when `bf16` (and [`bf16_gemm::available`]).
struct ConvCpu {
    geo: Geometry,
    cout: usize,
    bf16: bool,
}

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::per_channel::f32_slice(s, l, "conv2d-cpu", what)
}

/// How many images run side by side, each with a one-threaded GEMM, and how many threads each
/// GEMM gets: a batch smaller than the thread pool runs its images one after the other.
fn split(n: usize) -> (bool, usize) {
    let threads = rayon::current_num_threads();
    if n >= threads {
        (true, 1)
    } else {
        (false, threads)
    }
}

/// `n` images' outputs of `per_image` values each, image `i`'s written by `one((i, out_i),
/// scratch)`: side by side on the thread pool, each task with its own `scratch` of
/// `scratch_len`, or one after the other. `out_i` may be uninitialised: the products write
/// into it directly ([`Lhs::product_uninit`]), with no zero-filling pass first, which sent every
/// value to memory twice and read it back once more.
///
/// # Safety
/// `one` must initialise every value of each `out_i` it is given.
unsafe fn each_image(
    n: usize,
    per_image: usize,
    scratch_len: usize,
    side_by_side: bool,
    one: impl Fn((usize, &mut [MaybeUninit<f32>]), &mut Work) + Sync,
) -> Vec<f32> {
    let len = n * per_image;
    if len == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if side_by_side {
        spare
            .par_chunks_mut(per_image)
            .enumerate()
            .for_each_init(|| Work::kept(scratch_len), |scratch, p| one(p, scratch));
    } else {
        let mut scratch = Work::kept(scratch_len);
        spare
            .chunks_mut(per_image)
            .enumerate()
            .for_each(|p| one(p, &mut scratch));
    }
    // SAFETY: the chunks cover the first `len` values, and `one` initialised each (the
    // caller's promise).
    unsafe { out.set_len(len) };
    out
}

/// `out` set to zeros, as initialised values.
fn zeroed(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    out.fill(MaybeUninit::new(0.0));
    // SAFETY: every value was just initialised; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), out.len()) }
}

/// A product's destination: (values, row stride, column stride).
type Dst<'a> = (&'a mut [MaybeUninit<f32>], usize, usize);

/// `dst := lhs` (O x C·KH·KW) times the columns of output rows `rows` of `img`, gathered into
/// bf16 pairs block by block as the product asks for them ([`super::im2col_packed`]); or
/// `dst` back where this CPU or stride has no such gathers. The same bits as the product of
/// the float32 columns.
fn packed_columns_product<'a>(
    geo: &Geometry,
    img: &[f32],
    rows: Range<usize>,
    (cout, lhs): (usize, &PackedLhs),
    dst: Dst<'a>,
    threads: usize,
    work: &mut Work,
) -> std::result::Result<(), Dst<'a>> {
    #[cfg(target_arch = "x86_64")]
    if let Some(columns) = super::im2col_packed::Im2colPacked::new(geo, img, rows.clone()) {
        let dims = (cout, rows.len() * geo.ow, geo.row_len());
        crate::products::bf16_product_produced(dims, dst, lhs, &columns, threads, &mut work.packed);
        return Ok(());
    }
    let _ = (geo, img, rows, cout, lhs, threads, work);
    Err(dst)
}

/// [`Geometry::im2col_t_rows_strided`] (rows `stride` apart in `out`), through the planned
/// masked loads of [`super::im2col_packed`] where this CPU has them: the same values.
fn im2col_rows(geo: &Geometry, img: &[f32], rows: Range<usize>, out: &mut [f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(columns) = super::im2col_packed::Im2colPacked::new(geo, img, rows.clone()) {
        return columns.write_f32(out, stride);
    }
    geo.im2col_t_rows_strided(img, rows, out, stride)
}

/// Whether [`packed_columns_product`] gathers the columns of `geo` on this CPU.
fn packs_columns(geo: &Geometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::im2col_packed::Im2colPacked::applies(geo);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = geo;
        false
    }
}

/// Bytes of columns made at a time: a block of output rows whose columns stay in a core's L2
/// cache between `im2col` and the GEMM that reads them.
const BLOCK_BYTES: usize = 384 << 10;

/// Positions a weight-gradient product gathers from several small images, and the most bytes
/// of columns that takes.
const GROUP_POSITIONS: usize = 256;
const GROUP_BYTES: usize = 3 << 19;

/// Output positions a block of [`row_blocks`] holds at least (or the whole image): with deep
/// columns (`k` in the thousands: a 3x3 kernel over 256 or 512 channels) [`BLOCK_BYTES`] alone
/// would give products of one or two output rows (14 positions on 7x7 outputs), each reading
/// the whole packed kernel (4.7 MB for 512 -> 512) and, for the kernel gradient, reading and
/// writing the whole sum: ResNet-50's strided 3x3 convolutions at 224x224 (forward and both
/// gradients, batch 16, bf16) took 29-44 ms each with those blocks and 22-27 with these.
pub(super) const MIN_BLOCK_POSITIONS: usize = 256;

/// The output rows of `geo`, in blocks whose columns (`k` values per position) fit
/// [`BLOCK_BYTES`] but hold at least [`MIN_BLOCK_POSITIONS`] positions (or the whole image),
/// as many blocks as that takes, of sizes that differ by at most one row.
pub(super) fn row_blocks(geo: &Geometry, k: usize) -> impl Iterator<Item = Range<usize>> {
    let oh = geo.oh;
    let fit = BLOCK_BYTES / (4 * k * geo.ow).max(1);
    let min_rows = MIN_BLOCK_POSITIONS.div_ceil(geo.ow.max(1));
    let rows = fit.max(min_rows).clamp(1, oh.max(1));
    // Block `i` spans rows `i·oh/blocks .. (i + 1)·oh/blocks` (sizes within one row of each
    // other); `blocks` is capped so that none has fewer than `min_rows` rows in an image that
    // has them, a block then longer than `rows` (`block_len` sizes the scratch from the blocks).
    let blocks = oh.div_ceil(rows).min((oh / min_rows).max(1));
    (0..blocks).map(move |i| i * oh / blocks..(i + 1) * oh / blocks)
}

/// The longest block [`row_blocks`] makes, in output positions.
pub(super) fn block_len(geo: &Geometry, k: usize) -> usize {
    row_blocks(geo, k).map(|r| r.len()).max().unwrap_or(0) * geo.ow
}

impl ConvCpu {
    fn len(&self) -> (usize, usize, usize) {
        let g = &self.geo;
        (g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w)
    }

    /// The convolution of `xs` with `weight` followed by `eval` (evaluation-mode batch norm,
    /// ReLU, residual join), each block of output rows as soon as its products wrote it, while
    /// it is in cache, instead of a pass over the whole output after. Nothing may be tracked by
    /// autograd (the output is not): [`crate::BatchNorm::eval_epilogue`]'s conditions.
    fn forward_eval(&self, xs: &Tensor, weight: &Tensor, eval: &EvalEpilogue) -> Result<Tensor> {
        #[cfg(test)]
        {
            crate::batch_norm::EVAL_IN_PLACE_RUNS.with(|r| r.set(r.get() + 1));
            EVAL_IN_CONV_RUNS.with(|r| r.set(r.get() + 1));
        }
        let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
        let n = xs.dim(0)?;
        let (g, cout) = (&self.geo, self.cout);
        let out_len = n * cout * g.oh * g.ow;
        if eval.scale.len() != cout
            || eval
                .residual
                .as_ref()
                .is_some_and(|r| r.elem_count() != out_len)
        {
            candle_core::bail!("conv2d-cpu: a batch norm over {} channels, or a residual of another shape, after {cout} output channels", eval.scale.len())
        }
        let not_f32 =
            || candle_core::Error::Msg("conv2d-cpu: expected contiguous f32 tensors".into());
        let out = with_f32(&xs, |x| {
            with_f32(&weight, |w| match &eval.residual {
                None => self.forward_with(x, w, n, Some((eval, None))),
                Some(r) => with_f32(r, |r| self.forward_with(x, w, n, Some((eval, Some(r)))))
                    .ok_or_else(not_f32)?,
            })
            .ok_or_else(not_f32)?
        })
        .ok_or_else(not_f32)??;
        Tensor::from_vec(out, (n, cout, g.oh, g.ow), xs.device())
    }

    /// `out` (N, O, OH, OW) = the convolution of `x` with `w`, block of output rows by block.
    fn forward(&self, x: &[f32], w: &[f32], n: usize) -> Result<Vec<f32>> {
        self.forward_with(x, w, n, None)
    }

    /// [`Self::forward`], then `eval` with its residual's values (N, O, OH, OW), if any, on
    /// each block of output rows.
    fn forward_with(
        &self,
        x: &[f32],
        w: &[f32],
        n: usize,
        eval: Option<(&EvalEpilogue, Option<&[f32]>)>,
    ) -> Result<Vec<f32>> {
        let (k, ohw, img_len) = self.len();
        let (cout, geo) = (self.cout, &self.geo);
        if winograd::applies(geo, cout) {
            let u = time(Part::Im2col, || winograd::transform_kernel(w, cout, geo.c));
            let mut out = winograd::convolved(geo, cout, x, &u, n, self.bf16);
            if let Some((e, r)) = eval {
                e.on_values(&mut out, r, ohw)?;
            }
            return Ok(out);
        }
        let (side_by_side, threads) = split(n);
        let lhs = Lhs::new(self.bf16, (cout, k), (w, k, 1));
        let pointwise = geo.is_pointwise();
        // No float32 columns where the bf16 products gather them packed.
        let gathered = matches!(lhs, Lhs::Bf16(_)) && !pointwise && packs_columns(geo);
        #[cfg(test)]
        GATHERED_RUNS.with(|r| r.set(r.get() + usize::from(gathered)));
        let one = |(i, o): (usize, &mut [MaybeUninit<f32>]), work: &mut Work| {
            let img = &x[i * img_len..(i + 1) * img_len];
            for rows in row_blocks(geo, k) {
                let (p0, len) = (rows.start * geo.ow, rows.len() * geo.ow);
                let dst = (&mut o[p0..], ohw, 1);
                // bf16 products: the columns gathered into bf16 pairs as the products ask for
                // them, where this CPU can.
                let packed = match &lhs {
                    Lhs::Bf16(lhs) if gathered => packed_columns_product(
                        geo,
                        img,
                        rows.clone(),
                        (cout, lhs),
                        dst,
                        threads,
                        work,
                    ),
                    _ => Err(dst),
                };
                if let Err(dst) = packed {
                    // A 1x1 convolution with stride 1 and no padding reads the image as it is:
                    // its (C, H·W) rows are the columns `im2col` would copy.
                    let rhs: View = if pointwise {
                        (&img[p0..], ohw, 1)
                    } else {
                        if work.cols.len() < k * len {
                            work.cols.resize(k * len, 0.0);
                        }
                        let cols = &mut work.cols[..k * len];
                        time(Part::Im2col, || geo.im2col_t_rows(img, rows, cols));
                        (cols, len, 1)
                    };
                    lhs.product_uninit((cout, len, k), dst, rhs, threads, &mut work.packed);
                }
                if let Some((e, r)) = eval {
                    for c in 0..cout {
                        let at = c * ohw + p0;
                        // SAFETY: the product just wrote row `c`'s `len` values from `p0`;
                        // `MaybeUninit<f32>` has `f32`'s layout.
                        let y = unsafe {
                            std::slice::from_raw_parts_mut(o[at..at + len].as_mut_ptr().cast(), len)
                        };
                        let r = r.map(|r| &r[i * cout * ohw + at..][..len]);
                        e.on_row(c, y, r);
                    }
                }
            }
        };
        let cols = if pointwise || gathered {
            0
        } else {
            k * block_len(geo, k)
        };
        // SAFETY: the row blocks cover the output rows `0..oh`, and each block's product writes
        // all `cout` rows of its `len` positions: every value of an image's (cout, oh·ow).
        Ok(unsafe { each_image(n, cout * ohw, cols, side_by_side, one) })
    }

    /// dL/dw (O, C·KH·KW) = sum over images and blocks of grad_i (O, block) · cols_iᵀ.
    fn weight_grad(&self, x: &[f32], grad: &[f32], n: usize) -> Vec<f32> {
        let (k, ohw, img_len) = self.len();
        let (cout, geo) = (self.cout, &self.geo);
        if winograd::applies(geo, cout) {
            return winograd::weight_grad(geo, cout, x, grad, n, self.bf16);
        }
        // Images whose columns are one block go several at a time, up to GROUP_POSITIONS
        // positions: each product reads and writes the whole (O, C·KH·KW) sum, which for a
        // 4x4 or 8x8 image's positions costs more than the products.
        let group = match row_blocks(geo, k).count() {
            1 => (GROUP_POSITIONS / ohw).clamp(1, (GROUP_BYTES / (4 * k * ohw)).max(1)),
            _ => 1,
        };
        let scratch = k * block_len(geo, k) * group;
        let one = |acc: &mut Vec<f32>, work: &mut Work, imgs: Range<usize>, threads: usize| {
            let product = |lhs: View,
                           rhs: View,
                           len: usize,
                           acc: &mut [f32],
                           work_lhs: &mut PackedLhs,
                           packed: &mut bf16_gemm::Scratch| {
                let dims = (cout, k, len);
                if self.bf16 {
                    work_lhs.pack(cout, len, lhs);
                    bf16_product(dims, (acc, k, 1), work_lhs, rhs, true, threads, packed);
                } else {
                    gemm(dims, (acc, k, 1), lhs, rhs, true, threads);
                }
            };
            if group > 1 {
                for first in imgs.clone().step_by(group) {
                    let count = group.min(imgs.end - first);
                    let len = count * ohw;
                    let cols = &mut work.cols[..k * len];
                    work.staged.resize(cout * len, 0.0);
                    let staged = &mut work.staged[..];
                    time(Part::Im2col, || {
                        for (j, i) in (first..first + count).enumerate() {
                            let img = &x[i * img_len..(i + 1) * img_len];
                            im2col_rows(geo, img, 0..geo.oh, &mut cols[j * ohw..], len);
                            let g = &grad[i * cout * ohw..(i + 1) * cout * ohw];
                            for (o, row) in g.chunks_exact(ohw).enumerate() {
                                staged[o * len + j * ohw..o * len + (j + 1) * ohw]
                                    .copy_from_slice(row);
                            }
                        }
                    });
                    let (lhs, rhs) = ((&work.staged[..], len, 1), (&work.cols[..k * len], 1, len));
                    product(lhs, rhs, len, acc, &mut work.lhs, &mut work.packed);
                }
                return;
            }
            for i in imgs {
                let img = &x[i * img_len..(i + 1) * img_len];
                let g = &grad[i * cout * ohw..(i + 1) * cout * ohw];
                for rows in row_blocks(geo, k) {
                    let (p0, len) = (rows.start * geo.ow, rows.len() * geo.ow);
                    // 1x1: the image's (C, H·W) rows are the columns, as in `forward`.
                    let rhs: View = if geo.is_pointwise() {
                        (&img[p0..], 1, ohw)
                    } else {
                        let cols = &mut work.cols[..k * len];
                        time(Part::Im2col, || im2col_rows(geo, img, rows, cols, len));
                        (&work.cols[..k * len], 1, len)
                    };
                    product(
                        (&g[p0..], ohw, 1),
                        rhs,
                        len,
                        acc,
                        &mut work.lhs,
                        &mut work.packed,
                    );
                }
            }
        };
        let (side_by_side, threads) = split(n);
        if !side_by_side {
            let (mut acc, mut work) = (vec![0f32; cout * k], Work::kept(scratch));
            one(&mut acc, &mut work, 0..n, threads);
            return acc;
        }
        // A fixed share of the images per thread, partial sums added in order: the same
        // result bit for bit on every run, whichever thread takes which share.
        let share = n.div_ceil(rayon::current_num_threads());
        let starts: Vec<usize> = (0..n).step_by(share).collect();
        let partials: Vec<Vec<f32>> = starts
            .par_iter()
            .map(|&start| {
                let (mut acc, mut work) = (vec![0f32; cout * k], Work::kept(scratch));
                one(&mut acc, &mut work, start..(start + share).min(n), 1);
                acc
            })
            .collect();
        let mut partials = partials.into_iter();
        let mut total = partials.next().unwrap_or_else(|| vec![0f32; cout * k]);
        for p in partials {
            total.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        total
    }

    /// dL/dx (N, C, H, W). Stride 1 with a square kernel and padding below it: the full
    /// convolution of the gradient with the flipped kernel, where it is Winograd's or the
    /// output is the input's size ("same" padding). Otherwise: Wᵀ · grad_i, then `col2im`.
    /// Both block of rows by block.
    ///
    /// Without padding ("valid", LeNet-5's second convolution: 6->16, 5x5 on 14x14), the full
    /// convolution would read the gradient padded by `k - 1` on every side: 16·25 rows of 14x14
    /// columns, mostly zeros, and twice the products of `col2im`'s 6·25 rows of 10x10.
    fn input_grad(&self, w: &[f32], grad: &[f32], n: usize) -> Result<Vec<f32>> {
        let g = &self.geo;
        let (_, ohw, img_len) = self.len();
        let cout = self.cout;
        let (side_by_side, threads) = split(n);
        if g.stride == 1 && g.kh == g.kw && g.padding < g.kh {
            // w'[ch][(o, ki, kj)] = w[o][ch][kh-1-ki][kw-1-kj]: (C, O·KH·KW).
            let taps = g.kh * g.kw;
            let back = Geometry::new(cout, g.oh, g.ow, g.kh, g.kw, 1, g.kh - 1 - g.padding)?;
            let winograd = winograd::applies(&back, g.c);
            if !winograd && g.oh * g.ow < g.h * g.w {
                return Ok(self.input_grad_col2im(w, grad, n));
            }
            if winograd {
                // The flipped kernel's taps read in place (3x3: `applies`).
                let u = time(Part::Im2col, || {
                    winograd::transform_kernel_of(g.c, cout, |ch, o| {
                        std::array::from_fn(|t| w[(o * g.c + ch) * 9 + 8 - t])
                    })
                });
                // The backward convolution's output is the input's size: all of dL/dx.
                return Ok(winograd::convolved(&back, g.c, grad, &u, n, self.bf16));
            }
            // In 16x16 tiles of (output, input) channels: a 1x1 kernel's flip is a transposition
            // of its (O, C) matrix, whose row-by-row writes 4·O bytes apart each missed the
            // cache (2% of a ResNet-50 step at 224x224, its 2048x512 kernels).
            // Not zero-filled first (4 MB for ResNet-50's largest, every step): each value is
            // written once below.
            let len = g.c * cout * taps;
            let mut flipped: Vec<f32> = Vec::with_capacity(len);
            let to = &mut flipped.spare_capacity_mut()[..len];
            for o0 in (0..cout).step_by(16) {
                for ch0 in (0..g.c).step_by(16) {
                    for ch in ch0..(ch0 + 16).min(g.c) {
                        for o in o0..(o0 + 16).min(cout) {
                            for t in 0..taps {
                                to[(ch * cout + o) * taps + taps - 1 - t]
                                    .write(w[(o * g.c + ch) * taps + t]);
                            }
                        }
                    }
                }
            }
            // SAFETY: the loops above visit every (ch, o, t) once, and with it every one of the
            // `len` values: (ch·O + o)·taps + (taps - 1 - t) is a bijection onto 0..len.
            unsafe { flipped.set_len(len) };
            let (bk, hw) = (cout * taps, g.h * g.w);
            let lhs = Lhs::new(self.bf16, (g.c, bk), (&flipped, bk, 1));
            let pointwise = back.is_pointwise();
            let one = |(i, dst): (usize, &mut [MaybeUninit<f32>]), work: &mut Work| {
                let gi = &grad[i * cout * ohw..(i + 1) * cout * ohw];
                for rows in row_blocks(&back, bk) {
                    let (p0, len) = (rows.start * back.ow, rows.len() * back.ow);
                    // 1x1: the gradient's (O, H·W) rows are the columns, as in `forward`.
                    let rhs: View = if pointwise {
                        (&gi[p0..], ohw, 1)
                    } else {
                        let cols = &mut work.cols[..bk * len];
                        time(Part::Im2col, || im2col_rows(&back, gi, rows, cols, len));
                        (cols, len, 1)
                    };
                    lhs.product_uninit(
                        (g.c, len, bk),
                        (&mut dst[p0..], hw, 1),
                        rhs,
                        threads,
                        &mut work.packed,
                    );
                }
            };
            let scratch = if pointwise {
                0
            } else {
                bk * block_len(&back, bk)
            };
            // SAFETY: the row blocks cover `back`'s output rows, the input's `0..h`, and each
            // block's product writes all `c` channels of its positions: every value of an
            // image's (c, h·w).
            return Ok(unsafe { each_image(n, img_len, scratch, side_by_side, one) });
        }
        Ok(self.input_grad_col2im(w, grad, n))
    }

    /// dL/dx (N, C, H, W) as Wᵀ · grad_i, then `col2im`, block of rows by block.
    fn input_grad_col2im(&self, w: &[f32], grad: &[f32], n: usize) -> Vec<f32> {
        let g = &self.geo;
        let (k, ohw, img_len) = self.len();
        let cout = self.cout;
        let (side_by_side, threads) = split(n);
        let lhs = Lhs::new(self.bf16, (k, cout), (w, 1, k));
        let one = |(i, dst): (usize, &mut [MaybeUninit<f32>]), work: &mut Work| {
            // `col2im` adds each column into its place: onto zeros.
            let dst = zeroed(dst);
            let gi = &grad[i * cout * ohw..(i + 1) * cout * ohw];
            for rows in row_blocks(g, k) {
                let (p0, len) = (rows.start * g.ow, rows.len() * g.ow);
                let cols = &mut work.cols[..k * len];
                lhs.product(
                    (k, len, cout),
                    (cols, len, 1),
                    (&gi[p0..], ohw, 1),
                    false,
                    threads,
                    &mut work.packed,
                );
                time(Part::Im2col, || g.col2im_t_rows(cols, rows, dst));
            }
        };
        // SAFETY: `one` zeroes each image's gradient first.
        unsafe { each_image(n, img_len, k * block_len(g, k), side_by_side, one) }
    }
}

impl CustomOp2 for ConvCpu {
    fn name(&self) -> &'static str {
        "conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(xs, xl, "input")?, f32_slice(ws, wl, "kernel")?);
        let n = xl.dims()[0];
        let g = &self.geo;
        Ok((
            CpuStorage::F32(self.forward(x, w, n)?),
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
        let op = ConvCpuGrads {
            conv: ConvCpu { ..*self },
            want_input: x.track_op(),
        };
        let gx = match x.track_op() {
            true => Some(grad.apply_op2_no_bwd(w, &op)?),
            false => None,
        };
        let gw = match w.track_op() {
            true => {
                let op = ConvCpuGrads {
                    want_input: false,
                    ..op
                };
                Some(grad.apply_op2_no_bwd(x, &op)?)
            }
            false => None,
        };
        Ok((gx, gw))
    }
}

/// One gradient of the image-by-image convolution of geometry `geo` (`cout` output channels)
/// from the output gradient `grad` (N, O, OH, OW), contiguous: with `input`, the input's
/// (N, C, H, W) from the kernel `other` (O, C, KH, KW); otherwise the kernel's from the input
/// `other` (the built-in products, Winograd's where they apply).
pub(super) fn grad(
    (geo, cout, bf16): (Geometry, usize, bool),
    input: bool,
    other: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    let op = ConvCpuGrads {
        conv: ConvCpu { geo, cout, bf16 },
        want_input: input,
    };
    grad.apply_op2_no_bwd(&other.contiguous()?, &op)
}

/// One gradient of [`ConvCpu`] from the output gradient and the other argument: the input's
/// (second argument the kernel) or the kernel's (second argument the input).
struct ConvCpuGrads {
    conv: ConvCpu,
    want_input: bool,
}

impl CustomOp2 for ConvCpuGrads {
    fn name(&self) -> &'static str {
        "conv2d-cpu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        os: &CpuStorage,
        ol: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let grad = f32_slice(gs, gl, "output gradient")?;
        let n = gl.dims()[0];
        let g = &self.conv.geo;
        if self.want_input {
            let w = f32_slice(os, ol, "kernel")?;
            let gx = self.conv.input_grad(w, grad, n)?;
            Ok((CpuStorage::F32(gx), Shape::from((n, g.c, g.h, g.w))))
        } else {
            let x = f32_slice(os, ol, "input")?;
            let gw = self.conv.weight_grad(x, grad, n);
            let shape = Shape::from((self.conv.cout, g.c, g.kh, g.kw));
            Ok((CpuStorage::F32(gw), shape))
        }
    }
}
