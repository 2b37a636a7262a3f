//! Adaptive average pooling to any output size, with PyTorch's bins.

use candle_core::{Module, Result, Tensor};

/// PyTorch's bin `i` of `out` over a side of `size`: positions
/// `floor(i * size / out) .. ceil((i + 1) * size / out)`, as (start, length).
fn bin(i: usize, size: usize, out: usize) -> (usize, usize) {
    let start = i * size / out;
    (start, ((i + 1) * size).div_ceil(out) - start)
}

/// The means of `xs` over the `out` bins of its axis `axis` (of `size`), that axis then `out`
/// long: one reshape where the bins are equal and do not overlap, each position repeated where
/// each bin is one position, as many times (a 1x1 map to AlexNet's 6x6), else each bin's own
/// mean.
fn bin_means(xs: &Tensor, axis: usize, size: usize, out: usize) -> Result<Tensor> {
    let mut dims = xs.dims().to_vec();
    if size.is_multiple_of(out) {
        dims.splice(axis..=axis, [out, size / out]);
        return xs.reshape(dims)?.mean(axis + 1);
    }
    if out.is_multiple_of(size) {
        let mut repeated = dims.clone();
        repeated.insert(axis + 1, out / size);
        dims[axis] = out;
        return xs
            .unsqueeze(axis + 1)?
            .broadcast_as(repeated)?
            .reshape(dims);
    }
    let bins = (0..out)
        .map(|i| {
            let (start, len) = bin(i, size, out);
            xs.narrow(axis, start, len)?.mean_keepdim(axis)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&bins, axis)
}

/// `F.adaptive_avg_pool2d(xs, (out_h, out_w))` for (N, C, H, W) input, differentiable and
/// device-agnostic: each output is the mean of its bin, PyTorch's bins (rows
/// `floor(i * H / out_h) .. ceil((i + 1) * H / out_h)`, columns alike; neighbouring bins
/// overlap where H is not a multiple of out_h), the means over the width first. A NaN or an
/// infinity reaches the outputs whose bins hold it, as in PyTorch.
///
/// # Errors
/// `xs` is neither `(N, C, H, W)` nor one image's maps `(C, H, W)` (pooled as PyTorch pools
/// them unbatched), H or W is 0, or an output side is 0. Output: `(N, C, out_h, out_w)`, or
/// `(C, out_h, out_w)`.
pub fn adaptive_avg_pool2d(xs: &Tensor, out: (usize, usize)) -> Result<Tensor> {
    crate::unbatched::or_one_image(xs, |xs| adaptive_avg_pool2d_batch(xs, out))
}

fn adaptive_avg_pool2d_batch(xs: &Tensor, (out_h, out_w): (usize, usize)) -> Result<Tensor> {
    let Ok((_, _, h, w)) = xs.dims4() else {
        candle_core::bail!(
            "adaptive_avg_pool2d: input of shape {:?}: it pools maps (N, C, H, W) or (C, H, W)",
            xs.dims(),
        )
    };
    if h == 0 || w == 0 {
        candle_core::bail!(
            "adaptive_avg_pool2d: input of shape {:?} has no positions",
            xs.dims()
        )
    }
    if out_h == 0 || out_w == 0 {
        candle_core::bail!("adaptive pooling output size must be positive, got {out_h}x{out_w}")
    }
    if (out_h, out_w) == (h, w) {
        return Ok(xs.clone());
    }
    if (out_h, out_w) == (1, 1) {
        // Channels-last: the means over the (N, H, W, C) view, width first as below.
        return match crate::memory_format::nhwc(xs)? {
            Some(v) => crate::memory_format::from_nhwc(&v.mean_keepdim(2)?.mean_keepdim(1)?),
            None => xs.mean_keepdim(3)?.mean_keepdim(2),
        };
    }
    if crate::memory_format::is_channels_last(xs) {
        return crate::memory_format::keep(xs, |xs| adaptive_avg_pool2d(xs, (out_h, out_w)));
    }
    let ys = bin_means(&xs.contiguous()?, 3, w, out_w)?;
    bin_means(&ys, 2, h, out_h)?.contiguous()
}

/// `nn.AdaptiveAvgPool2d((out_h, out_w))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    /// Output height and width.
    pub output: (usize, usize),
}

impl AdaptiveAvgPool2d {
    /// Pools to `output` (height, width).
    pub fn new(output: (usize, usize)) -> Self {
        Self { output }
    }
}

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        adaptive_avg_pool2d(xs, self.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bins_overlap_as_pytorch() {
        // 5 -> 3: [0,2), [1,4), [3,5)
        assert_eq!(
            [bin(0, 5, 3), bin(1, 5, 3), bin(2, 5, 3)],
            [(0, 2), (1, 3), (3, 2)]
        );
    }

    /// A NaN or an infinity reaches only the outputs whose bins hold it (PyTorch 2.15's values;
    /// the bins were matrix products, whose zeros times NaN spread it to every output).
    #[test]
    fn a_non_finite_value_stays_in_its_bins() -> Result<()> {
        for (size, out, at, want) in [
            (8, 2, (0, 0), vec![f32::NAN, 1.0, 1.0, 1.0]),
            (
                5,
                3,
                (2, 2),
                vec![1.0, 1.0, 1.0, 1.0, f32::INFINITY, 1.0, 1.0, 1.0, 1.0],
            ),
            (5, 2, (2, 2), vec![f32::INFINITY; 4]),
            (
                7,
                3,
                (0, 6),
                vec![1.0, 1.0, f32::NAN, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            ),
        ] {
            let mut v = vec![1f32; size * size];
            v[at.0 * size + at.1] = want.iter().copied().find(|x| !x.is_finite()).unwrap();
            let x = Tensor::from_vec(v, (1, 1, size, size), &Device::Cpu)?;
            let got = adaptive_avg_pool2d(&x, (out, out))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
            assert!(
                got.iter().zip(&want).all(|(a, b)| same(*a, *b)),
                "{size} -> {out}: {got:?}, want {want:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn refuses_empty_maps_and_pools_one_image_as_pytorch() -> Result<()> {
        let empty = Tensor::zeros((1, 2, 0, 4), candle_core::DType::F32, &Device::Cpu)?;
        let err = adaptive_avg_pool2d(&empty, (2, 2)).unwrap_err().to_string();
        assert!(err.contains("no positions"), "{err}");
        // One image's maps (C, H, W), pooled unbatched as PyTorch pools them.
        let image = Tensor::randn(0f32, 1.0, (2, 5, 7), &Device::Cpu)?;
        for out in [(2, 3), (1, 1), (5, 7), (6, 6)] {
            let one = adaptive_avg_pool2d(&image, out)?;
            let batch = adaptive_avg_pool2d(&image.unsqueeze(0)?, out)?.squeeze(0)?;
            assert_eq!(one.dims(), [2, out.0, out.1]);
            assert_eq!(one.to_vec3::<f32>()?, batch.to_vec3::<f32>()?);
        }
        let line = Tensor::zeros((5, 7), candle_core::DType::F32, &Device::Cpu)?;
        let err = adaptive_avg_pool2d(&line, (2, 2)).unwrap_err().to_string();
        assert!(err.contains("(N, C, H, W) or (C, H, W)"), "{err}");
        Ok(())
    }

    /// Every way to the bins (overlapping, equal, repeated, one of each per axis) against the
    /// means of the windows taken one by one.
    #[test]
    fn matches_direct_means_on_non_square_input() -> Result<()> {
        for ((h, w), (oh, ow)) in [
            ((6, 7), (4, 3)),
            ((2, 3), (4, 6)),
            ((8, 6), (2, 3)),
            ((1, 1), (6, 6)),
            ((3, 8), (2, 4)),
            ((4, 5), (2, 3)),
        ] {
            let x = Tensor::arange(0f32, (2 * h * w) as f32, &Device::Cpu)?
                .sin()?
                .reshape((1, 2, h, w))?;
            let y = adaptive_avg_pool2d(&x, (oh, ow))?;
            assert_eq!(y.dims(), [1, 2, oh, ow]);
            let yv = y.flatten_all()?.to_vec1::<f32>()?;
            for c in 0..2 {
                for i in 0..oh {
                    for j in 0..ow {
                        let ((r0, rn), (c0, cn)) = (bin(i, h, oh), bin(j, w, ow));
                        let want = x
                            .narrow(1, c, 1)?
                            .narrow(2, r0, rn)?
                            .narrow(3, c0, cn)?
                            .mean_all()?
                            .to_scalar::<f32>()?;
                        let got = yv[(c * oh + i) * ow + j];
                        assert!(
                            (want - got).abs() < 1e-6,
                            "{h}x{w}: {c},{i},{j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
