//! The whole-batch convolution: `im2col` (a custom op whose backward is `col2im`) and one
//! matrix product, differentiable in all arguments; any dtype, CPU storage.

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::geometry::Geometry;

/// `F.conv2d(xs, weight, bias, stride, padding)` as `im2col` + GEMM (one group, no dilation),
/// differentiable in all arguments: `xs` `(N, C_in, H, W)`, `weight` `(C_out, C_in, kH, kW)`,
/// `bias` `(C_out,)`, output `(N, C_out, H_out, W_out)`.
///
/// # Errors
/// Shapes that do not fit together, or a kernel larger than the padded input.
pub fn conv2d_gemm(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let n = xs.dim(0)?;
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    let ys = columns(xs, geo)?.matmul(&weight.reshape((cout, geo.row_len()))?.t()?)?;
    let ys = match bias {
        Some(b) => ys.broadcast_add(b)?,
        None => ys,
    };
    to_planes(&ys, n, geo, cout)
}

/// The columns of `xs` (N, C, H, W) for `geo`: (N·OH·OW, C·KH·KW). A pointwise kernel (1x1,
/// stride 1, no padding) reads each input value once, so its columns are the images'
/// (H·W, C) transposes: a reshape on a 1x1 map, one transposition otherwise (GoogLeNet's
/// 1x1 convolutions on 2x2 and 1x1 maps spent 2 ns a value in the tap-by-tap copy).
pub(super) fn columns(xs: &Tensor, geo: Geometry) -> Result<Tensor> {
    let xs = xs.contiguous()?;
    let n = xs.dim(0)?;
    if !geo.is_pointwise() {
        return xs.apply_op1(Im2Col(geo));
    }
    let planes = geo.h * geo.w;
    if planes == 1 {
        return xs.reshape((n, geo.c));
    }
    xs.reshape((n, geo.c, planes))?
        .apply_op1(SwapLast2)?
        .reshape((n * planes, geo.c))
}

/// The product's rows (N·OH·OW, C_out) as the output (N, C_out, OH, OW).
pub(super) fn to_planes(ys: &Tensor, n: usize, geo: Geometry, cout: usize) -> Result<Tensor> {
    let planes = geo.oh * geo.ow;
    let ys = match planes {
        1 => ys.contiguous()?,
        _ => ys
            .contiguous()?
            .reshape((n, planes, cout))?
            .apply_op1(SwapLast2)?,
    };
    ys.reshape((n, cout, geo.oh, geo.ow))
}

/// [`conv2d_gemm`] of an f32 CPU input without bias, for the convolutions whose outputs are
/// too small for the image-by-image path (ResNet-18's last stages on 32x32 images): the
/// columns' product with the kernel and both its gradients as one op (`linear_cpu`), the
/// kernel's gradient written (C_out, C_in·KH·KW) where Candle's product of the transposed
/// kernel hands it back transposed, to be copied. With `bf16` (under bf16 autocast) in the
/// AVX512-BF16 kernel (operands rounded to bf16, float32 sums).
pub(crate) fn conv2d_gemm_f32(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    bf16: bool,
) -> Result<Tensor> {
    let n = xs.dim(0)?;
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    let cols = columns(xs, geo)?;
    let w = weight.contiguous()?.reshape((cout, geo.row_len()))?;
    let zero = Tensor::zeros(cout, candle_core::DType::F32, xs.device())?;
    to_planes(
        &crate::linear_cpu::linear(&cols, &w, &zero, bf16)?,
        n,
        geo,
        cout,
    )
}

/// A layout op of this file, run on any float dtype's values.
trait Relayout {
    /// The op's name in errors.
    const NAME: &'static str;
    fn run<T: candle_core::WithDType>(&self, x: &[T], layout: &Layout) -> Result<(Vec<T>, Shape)>;
}

/// `op` on `storage` of f32, f64, bf16 or f16 (timed as layout work), or an error naming it.
fn run_on<O: Relayout>(
    op: &O,
    storage: &CpuStorage,
    layout: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let _t = crate::profile::Timer::start(crate::profile::Part::Im2col);
    match storage {
        CpuStorage::F32(x) => op.run(x, layout).map(|(v, s)| (CpuStorage::F32(v), s)),
        CpuStorage::F64(x) => op.run(x, layout).map(|(v, s)| (CpuStorage::F64(v), s)),
        CpuStorage::BF16(x) => op.run(x, layout).map(|(v, s)| (CpuStorage::BF16(v), s)),
        CpuStorage::F16(x) => op.run(x, layout).map(|(v, s)| (CpuStorage::F16(v), s)),
        _ => candle_core::bail!("{} supports f32, f64, bf16 and f16 tensors", O::NAME),
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("im2col needs a contiguous tensor"),
    }
}

/// (N, C, H, W) -> (N * OH * OW, C * KH * KW): each row the receptive field of one output.
pub(super) struct Im2Col(pub(super) Geometry);

impl Relayout for Im2Col {
    const NAME: &'static str = "im2col";

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
        run_on(self, storage, layout)
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

impl Relayout for Col2Im {
    const NAME: &'static str = "col2im";

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
        run_on(self, storage, layout)
    }
}

/// (N, A, B) -> (N, B, A), contiguous in and out: `t.transpose(1, 2).contiguous()` in tiles
/// (Candle's strided copy computes every element's index). Its gradient is the same
/// transposition back.
pub(super) struct SwapLast2;

/// The side of the square tiles [`SwapLast2`] copies: 16 f32 rows of a cache line each.
const TILE: usize = 16;

impl Relayout for SwapLast2 {
    const NAME: &'static str = "swap-last-2";

    fn run<T: candle_core::WithDType>(&self, x: &[T], layout: &Layout) -> Result<(Vec<T>, Shape)> {
        let x = contiguous(x, layout)?;
        let (n, a, b) = layout.shape().dims3()?;
        if a * b == 0 {
            return Ok((Vec::new(), Shape::from((n, b, a))));
        }
        let transpose = |i: usize, out: &mut [MaybeUninit<T>]| {
            let x = &x[i * a * b..(i + 1) * a * b];
            // Four positions a row (2x2 maps), or four rows, 16 columns a vector in AVX-512.
            #[cfg(target_arch = "x86_64")]
            if let Some((xf, of)) = as_f32(x, out).filter(|_| crate::avx512::available()) {
                // SAFETY: the CPU has AVX-512F; `xf` and `of` are one image's (A, B) input
                // and (B, A) output.
                if b == 4 {
                    let done = unsafe { simd::from_rows_of_4(xf, a, of) };
                    return tiles(x, (a, b), out, done..a, 0..b);
                }
                if a == 4 {
                    let done = unsafe { simd::to_rows_of_4(xf, b, of) };
                    return tiles(x, (a, b), out, 0..a, done..b);
                }
            }
            // 8 rows by 4 columns (or 4 by 8) a block in AVX2 where the CPU has no AVX-512.
            #[cfg(target_arch = "x86_64")]
            if let Some((xf, of)) =
                as_f32(x, out).filter(|_| !crate::avx512::available() && crate::avx2::available())
            {
                // SAFETY: the CPU has AVX2; `xf` and `of` are one image's (A, B) input and
                // (B, A) output.
                return unsafe { swap_avx2(xf, (a, b), of) };
            }
            tiles(x, (a, b), out, 0..a, 0..b)
        };
        // One image a task, no zeroing pass first. SAFETY: the vectors and the tiles cover
        // every (j, i) of each image's (B, A) output.
        let out = unsafe { crate::fill::par_filled(x.len(), a * b, transpose) };
        Ok((out, Shape::from((n, b, a))))
    }
}

/// [`SwapLast2`] of one f32 image `x` (A, B) into `out` (B, A) with AVX2:
/// [`crate::avx2::transpose_blocks`]'s blocks, then the tiles for the rows and columns they
/// leave.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn swap_avx2(x: &[f32], (a, b): (usize, usize), out: &mut [MaybeUninit<f32>]) {
    let (rows, columns) = crate::avx2::transpose_blocks(x, (a, b), out);
    tiles(x, (a, b), out, rows..a, 0..b);
    tiles(x, (a, b), out, 0..rows, columns..b);
}

/// Writes `out[j * a + i] = x[i * b + j]` for `i` in `is` and `j` in `js`, in square tiles.
fn tiles<T: Copy>(
    x: &[T],
    (a, b): (usize, usize),
    out: &mut [MaybeUninit<T>],
    is: Range<usize>,
    js: Range<usize>,
) {
    for i0 in is.clone().step_by(TILE) {
        for j0 in js.clone().step_by(TILE) {
            for j in j0..(j0 + TILE).min(js.end) {
                let row = &mut out[j * a..(j + 1) * a];
                for i in i0..(i0 + TILE).min(is.end) {
                    row[i].write(x[i * b + j]);
                }
            }
        }
    }
}

/// `x` and `out` as f32 slices when `T` is f32.
#[cfg(target_arch = "x86_64")]
fn as_f32<'a, 'b, T: candle_core::WithDType>(
    x: &'a [T],
    out: &'b mut [MaybeUninit<T>],
) -> Option<(&'a [f32], &'b mut [MaybeUninit<f32>])> {
    if T::DTYPE != candle_core::DType::F32 {
        return None;
    }
    // SAFETY: `T` is f32 (its dtype says so): the same layout.
    unsafe {
        Some((
            std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()),
            std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<MaybeUninit<f32>>(), out.len()),
        ))
    }
}

/// [`SwapLast2`] of one image with four values a row, or four rows, in AVX-512: 16 rows (or
/// columns) of four at a time, as four vectors through two rounds of permutes.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use crate::avx512::index;

    /// Lanes 0-7: value 0 of the first 8 rows of four in `a`, `b`; lanes 8-15: their value 1.
    const VALUES_01: [i32; 16] = [0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29];
    /// Values 2 and 3 of the same rows.
    const VALUES_23: [i32; 16] = [2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31];
    /// The low halves of `a` and `b`.
    const LOW_HALVES: [i32; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
    /// The high halves of `a` and `b`.
    const HIGH_HALVES: [i32; 16] = [8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31];
    /// The inverse of [`VALUES_01`] and [`VALUES_23`] for the first 4 rows: from `a` (values 0
    /// and 1 of 8 rows) and `b` (values 2 and 3), rows 0-3 of four again.
    const ROWS_0_3: [i32; 16] = [0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27];
    /// Rows 4-7 of four, likewise.
    const ROWS_4_7: [i32; 16] = [4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31];

    /// `out[j * a + i] = x[i * 4 + j]` for the first `16 * (a / 16)` rows `i` of the (A, 4)
    /// image `x` (into its (4, A) `out`); returns how many rows it did.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn from_rows_of_4(
        x: &[f32],
        a: usize,
        out: &mut [MaybeUninit<f32>],
    ) -> usize {
        assert!(x.len() >= 4 * a && out.len() >= 4 * a);
        let whole = a / 16 * 16;
        let o = out.as_mut_ptr().cast::<f32>();
        for i0 in (0..whole).step_by(16) {
            // SAFETY: rows `i0..i0 + 16` of four values are inside `x` (checked above).
            let v: [__m512; 4] =
                std::array::from_fn(|k| _mm512_loadu_ps(x.as_ptr().add(4 * i0 + 16 * k)));
            let p01 = _mm512_permutex2var_ps(v[0], index(&VALUES_01), v[1]);
            let q01 = _mm512_permutex2var_ps(v[0], index(&VALUES_23), v[1]);
            let p23 = _mm512_permutex2var_ps(v[2], index(&VALUES_01), v[3]);
            let q23 = _mm512_permutex2var_ps(v[2], index(&VALUES_23), v[3]);
            // SAFETY: columns `i0..i0 + 16` of the four output rows are inside `out`.
            _mm512_storeu_ps(
                o.add(i0),
                _mm512_permutex2var_ps(p01, index(&LOW_HALVES), p23),
            );
            _mm512_storeu_ps(
                o.add(a + i0),
                _mm512_permutex2var_ps(p01, index(&HIGH_HALVES), p23),
            );
            _mm512_storeu_ps(
                o.add(2 * a + i0),
                _mm512_permutex2var_ps(q01, index(&LOW_HALVES), q23),
            );
            _mm512_storeu_ps(
                o.add(3 * a + i0),
                _mm512_permutex2var_ps(q01, index(&HIGH_HALVES), q23),
            );
        }
        whole
    }

    /// `out[j * 4 + i] = x[i * b + j]` for the first `16 * (b / 16)` columns `j` of the (4, B)
    /// image `x` (into its (B, 4) `out`); returns how many columns it did.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn to_rows_of_4(x: &[f32], b: usize, out: &mut [MaybeUninit<f32>]) -> usize {
        assert!(x.len() >= 4 * b && out.len() >= 4 * b);
        let whole = b / 16 * 16;
        let o = out.as_mut_ptr().cast::<f32>();
        for j0 in (0..whole).step_by(16) {
            // SAFETY: columns `j0..j0 + 16` of the four input rows are inside `x`.
            let r: [__m512; 4] =
                std::array::from_fn(|i| _mm512_loadu_ps(x.as_ptr().add(i * b + j0)));
            // Undo `from_rows_of_4`'s second round, then its first.
            let p01 = _mm512_permutex2var_ps(r[0], index(&LOW_HALVES), r[1]);
            let p23 = _mm512_permutex2var_ps(r[0], index(&HIGH_HALVES), r[1]);
            let q01 = _mm512_permutex2var_ps(r[2], index(&LOW_HALVES), r[3]);
            let q23 = _mm512_permutex2var_ps(r[2], index(&HIGH_HALVES), r[3]);
            // SAFETY: rows `j0..j0 + 16` of four values are inside `out`.
            _mm512_storeu_ps(
                o.add(4 * j0),
                _mm512_permutex2var_ps(p01, index(&ROWS_0_3), q01),
            );
            _mm512_storeu_ps(
                o.add(4 * j0 + 16),
                _mm512_permutex2var_ps(p01, index(&ROWS_4_7), q01),
            );
            _mm512_storeu_ps(
                o.add(4 * j0 + 32),
                _mm512_permutex2var_ps(p23, index(&ROWS_0_3), q23),
            );
            _mm512_storeu_ps(
                o.add(4 * j0 + 48),
                _mm512_permutex2var_ps(p23, index(&ROWS_4_7), q23),
            );
        }
        whole
    }
}

impl CustomOp1 for SwapLast2 {
    fn name(&self) -> &'static str {
        "swap-last-2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        run_on(self, storage, layout)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(SwapLast2)?))
    }
}
