//! [`Pool2d`] as a composition of Candle ops, for devices without a hand-written kernel.
//! Autograd differentiates it. A max window's gradient goes to its first maximum in scan order
//! (or its first NaN), as PyTorch and the CPU kernel pick it, on every device.

use candle_core::{DType, Result, Tensor};

use super::config::{Pool2d, PoolKind};

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
pub(super) fn forward(pool: &Pool2d, xs: &Tensor) -> Result<Tensor> {
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
    match pool.kind {
        PoolKind::Max => first_maximum(&windows),
        PoolKind::Avg { count_include_pad } => {
            let stacked = Tensor::stack(&windows, 0)?;
            let divisors = divisors(pool, h, w, oh, ow, count_include_pad)?
                .to_device(stacked.device())?
                .to_dtype(stacked.dtype())?;
            stacked.sum(0)?.broadcast_div(&divisors)
        }
    }
}

/// The elementwise maximum of `windows` (in scan order), taken from the first window that holds
/// it, or from the first that holds NaN: a chain of selections, so the gradient reaches exactly
/// that window's element.
fn first_maximum(windows: &[Tensor]) -> Result<Tensor> {
    let mut best = windows[0].clone();
    for w in &windows[1..] {
        let larger = w.gt(&best)?;
        let first_nan = w.ne(w)?.mul(&best.eq(&best)?)?;
        best = larger.maximum(&first_nan)?.where_cond(w, &best)?;
    }
    Ok(best)
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
