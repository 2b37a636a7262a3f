//! The whole-batch convolution: `im2col` (a custom op whose backward is `col2im`) and one
//! matrix product, differentiable in all arguments; any dtype, CPU storage.

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

/// [`conv2d_gemm`] of an f32 CPU input without bias under bf16 autocast: the columns' product
/// with the kernel, and both its gradients, in the AVX512-BF16 kernel (operands rounded to
/// bf16, float32 sums; `linear_cpu`), for the convolutions whose outputs are too small for the
/// image-by-image path (ResNet-18's last stages on 32x32 images).
pub(crate) fn conv2d_gemm_bf16(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let n = xs.dim(0)?;
    let (geo, cout) = Geometry::of_conv(xs, weight, stride, padding)?;
    let cols = columns(xs, geo)?;
    let w = weight.contiguous()?.reshape((cout, geo.row_len()))?;
    let zero = Tensor::zeros(cout, candle_core::DType::F32, xs.device())?;
    to_planes(
        &crate::linear_cpu::linear(&cols, &w, &zero, true)?,
        n,
        geo,
        cout,
    )
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("im2col needs a contiguous tensor"),
    }
}

/// (N, C, H, W) -> (N * OH * OW, C * KH * KW): each row the receptive field of one output.
pub(super) struct Im2Col(pub(super) Geometry);

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
        let _t = crate::profile::Timer::start(crate::profile::Part::Im2col);
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
        let _t = crate::profile::Timer::start(crate::profile::Part::Im2col);
        match storage {
            CpuStorage::F32(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F32(v), s)),
            CpuStorage::F64(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F64(v), s)),
            CpuStorage::BF16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::BF16(v), s)),
            CpuStorage::F16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F16(v), s)),
            _ => candle_core::bail!("col2im supports f32, f64, bf16 and f16 tensors"),
        }
    }
}

/// (N, A, B) -> (N, B, A), contiguous in and out: `t.transpose(1, 2).contiguous()` in tiles
/// (Candle's strided copy computes every element's index). Its gradient is the same
/// transposition back.
struct SwapLast2;

/// The side of the square tiles [`SwapLast2`] copies: 16 f32 rows of a cache line each.
const TILE: usize = 16;

impl SwapLast2 {
    fn run<T: candle_core::WithDType>(&self, x: &[T], layout: &Layout) -> Result<(Vec<T>, Shape)> {
        let x = contiguous(x, layout)?;
        let (n, a, b) = layout.shape().dims3()?;
        if a * b == 0 {
            return Ok((Vec::new(), Shape::from((n, b, a))));
        }
        let transpose = |i: usize, out: &mut [std::mem::MaybeUninit<T>]| {
            let x = &x[i * a * b..(i + 1) * a * b];
            for i0 in (0..a).step_by(TILE) {
                for j0 in (0..b).step_by(TILE) {
                    for j in j0..(j0 + TILE).min(b) {
                        let row = &mut out[j * a..(j + 1) * a];
                        for i in i0..(i0 + TILE).min(a) {
                            row[i].write(x[i * b + j]);
                        }
                    }
                }
            }
        };
        // One image a task, no zeroing pass first. SAFETY: the tiles cover every (j, i) of
        // each image's (B, A) output.
        let out = unsafe { crate::fill::par_filled(x.len(), a * b, transpose) };
        Ok((out, Shape::from((n, b, a))))
    }
}

impl CustomOp1 for SwapLast2 {
    fn name(&self) -> &'static str {
        "swap-last-2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = crate::profile::Timer::start(crate::profile::Part::Im2col);
        match storage {
            CpuStorage::F32(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F32(v), s)),
            CpuStorage::F64(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F64(v), s)),
            CpuStorage::BF16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::BF16(v), s)),
            CpuStorage::F16(x) => self.run(x, layout).map(|(v, s)| (CpuStorage::F16(v), s)),
            _ => candle_core::bail!("swap-last-2 supports f32, f64, bf16 and f16 tensors"),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(SwapLast2)?))
    }
}
