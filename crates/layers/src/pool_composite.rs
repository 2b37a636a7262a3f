//! [`Pool2d`] as a composition of Candle ops, for devices without a hand-written kernel.
//! Autograd differentiates it; ties in a max window share the gradient (PyTorch picks one).

use candle_core::{DType, Result, Tensor};

use crate::pool::{Pool2d, PoolKind};

/// Pads `xs` along `dim` with `before` and `after` copies of `fill`; a negative `after`
/// trims trailing entries that no window reads.
fn pad(xs: &Tensor, dim: usize, before: usize, after: isize, fill: f64) -> Result<Tensor> {
    let xs = if after < 0 {
        xs.narrow(dim, 0, xs.dim(dim)? - after.unsigned_abs())?
    } else {
        xs.clone()
    };
    let mut parts = Vec::with_capacity(3);
    let block = |len: usize| -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        dims[dim] = len;
        Tensor::full(fill, dims, xs.device())?.to_dtype(xs.dtype())
    };
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(xs.clone());
    if after > 0 {
        parts.push(block(after as usize)?);
    }
    Tensor::cat(&parts, dim)
}

/// Rows `offset, offset + stride, ...` (`count` of them) of `xs` along `dim`.
fn strided(xs: &Tensor, dim: usize, offset: usize, stride: usize, count: usize) -> Result<Tensor> {
    let idx: Vec<u32> = (0..count).map(|i| (offset + i * stride) as u32).collect();
    let idx = Tensor::new(idx, xs.device())?;
    xs.contiguous()?.index_select(&idx, dim)
}

/// The pooled output of `xs` (N, C, H, W).
pub fn forward(pool: &Pool2d, xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let (oh, ow) = pool.output_size(h, w)?;
    let (kh, kw) = pool.kernel;
    let (sh, sw) = pool.stride;
    let (ph, pw) = pool.padding;
    let fill = match pool.kind {
        PoolKind::Max => f64::NEG_INFINITY,
        PoolKind::Avg { .. } => 0.0,
    };
    let need_h = (oh - 1) * sh + kh;
    let need_w = (ow - 1) * sw + kw;
    let xs = pad(xs, 2, ph, need_h as isize - (h + ph) as isize, fill)?;
    let xs = pad(&xs, 3, pw, need_w as isize - (w + pw) as isize, fill)?;
    let mut windows = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        let rows = strided(&xs, 2, i, sh, oh)?;
        for j in 0..kw {
            windows.push(strided(&rows, 3, j, sw, ow)?);
        }
    }
    let stacked = Tensor::stack(&windows, 0)?;
    match pool.kind {
        PoolKind::Max => stacked.max(0),
        PoolKind::Avg { count_include_pad } => {
            let divisors = divisors(pool, h, w, oh, ow, count_include_pad)?
                .to_device(stacked.device())?
                .to_dtype(stacked.dtype())?;
            stacked.sum(0)?.broadcast_div(&divisors)
        }
    }
}

/// Each output position's divisor, as PyTorch's average pooling computes it.
fn divisors(
    pool: &Pool2d,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    count_include_pad: bool,
) -> Result<Tensor> {
    let extent = |i: usize, k: usize, s: usize, p: usize, size: usize| -> (usize, usize) {
        let start = (i * s) as isize - p as isize;
        let end = (start + k as isize).min((size + p) as isize);
        let padded = (end - start) as usize;
        let valid = (end.min(size as isize) - start.max(0)) as usize;
        (padded, valid)
    };
    let mut d = Vec::with_capacity(oh * ow);
    for i in 0..oh {
        let (ph, vh) = extent(i, pool.kernel.0, pool.stride.0, pool.padding.0, h);
        for j in 0..ow {
            let (pw, vw) = extent(j, pool.kernel.1, pool.stride.1, pool.padding.1, w);
            d.push(if count_include_pad { ph * pw } else { vh * vw } as f32);
        }
    }
    Tensor::from_vec(d, (oh, ow), &candle_core::Device::Cpu)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};

    fn check(pool: Pool2d, h: usize, w: usize) -> Result<()> {
        let n = 2 * 3 * h * w;
        let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 / 97.0).collect();
        let x = Var::from_vec(v, (2, 3, h, w), &Device::Cpu)?;
        let g: Vec<f32> = {
            let (oh, ow) = pool.output_size(h, w)?;
            (0..2 * 3 * oh * ow).map(|i| (i % 5) as f32 - 2.0).collect()
        };
        let y_op = pool.forward(x.as_tensor())?;
        let y_ref = forward(&pool, x.as_tensor())?;
        let diff = (&y_op - &y_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{pool:?} forward differs by {diff}");
        let g = Tensor::from_vec(g, y_op.shape(), &Device::Cpu)?;
        let gx_op = (y_op * &g)?.sum_all()?.backward()?;
        let gx_ref = (y_ref * &g)?.sum_all()?.backward()?;
        let a = gx_op.get(&x).expect("grad");
        let b = gx_ref.get(&x).expect("grad");
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{pool:?} backward differs by {diff}");
        Ok(())
    }

    #[test]
    fn composite_matches_the_cpu_kernel() -> Result<()> {
        check(Pool2d::max(3, 2).padding(1), 16, 16)?;
        check(Pool2d::max(3, 2).ceil_mode(true), 14, 14)?;
        check(Pool2d::max(3, 2), 13, 13)?;
        check(Pool2d::max(2, 2), 7, 9)?;
        check(Pool2d::avg(3, 2).padding(1).ceil_mode(true), 10, 11)?;
        check(Pool2d::avg(2, 2), 8, 8)?;
        check(
            Pool2d {
                kind: PoolKind::Avg {
                    count_include_pad: false,
                },
                ..Pool2d::avg(3, 1).padding(1)
            },
            5,
            6,
        )
    }
}
