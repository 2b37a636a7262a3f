//! Adaptive average pooling to any output size, with PyTorch's bins.

use candle_core::{Module, Result, Tensor};

/// The averaging matrix (out x size) whose row i averages input positions
/// `floor(i * size / out) .. ceil((i + 1) * size / out)`, PyTorch's bins.
fn bins(size: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * size];
    for i in 0..out {
        let start = i * size / out;
        let end = ((i + 1) * size).div_ceil(out);
        let weight = 1.0 / (end - start) as f32;
        for j in start..end {
            m[i * size + j] = weight;
        }
    }
    m
}

/// `F.adaptive_avg_pool2d(xs, (out_h, out_w))` for (N, C, H, W) input, differentiable and
/// device-agnostic: two small matrix products with the bin-averaging matrices.
///
/// # Errors
/// `xs` is not `(N, C, H, W)`, or an output side is 0. Output: `(N, C, out_h, out_w)`.
pub fn adaptive_avg_pool2d(xs: &Tensor, (out_h, out_w): (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
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
    let dev = xs.device();
    let aw = Tensor::from_vec(bins(w, out_w), (out_w, w), &candle_core::Device::Cpu)?
        .to_device(dev)?
        .to_dtype(xs.dtype())?;
    let ah = Tensor::from_vec(bins(h, out_h), (out_h, h), &candle_core::Device::Cpu)?
        .to_device(dev)?
        .to_dtype(xs.dtype())?;
    // (N*C*H, W) x (W, ow) -> (N*C, H, ow) -> (N*C*ow, H) x (H, oh) -> (N*C, ow, oh)
    let ys = xs
        .contiguous()?
        .reshape((n * c * h, w))?
        .matmul(&aw.t()?)?
        .reshape((n * c, h, out_w))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * c * out_w, h))?
        .matmul(&ah.t()?)?
        .reshape((n * c, out_w, out_h))?
        .transpose(1, 2)?
        .contiguous()?;
    ys.reshape((n, c, out_h, out_w))
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
        let m = bins(5, 3);
        assert_eq!(&m[0..5], &[0.5, 0.5, 0.0, 0.0, 0.0]);
        let third = 1.0 / 3.0;
        assert_eq!(&m[5..10], &[0.0, third, third, third, 0.0]);
        assert_eq!(&m[10..15], &[0.0, 0.0, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn matches_direct_means_on_non_square_input() -> Result<()> {
        let x = Tensor::arange(0f32, 2. * 6. * 7., &Device::Cpu)?.reshape((1, 2, 6, 7))?;
        let y = adaptive_avg_pool2d(&x, (4, 3))?;
        assert_eq!(y.dims(), [1, 2, 4, 3]);
        let get = |c: usize, r0: usize, r1: usize, c0: usize, c1: usize| -> Result<f32> {
            x.narrow(1, c, 1)?
                .narrow(2, r0, r1 - r0)?
                .narrow(3, c0, c1 - c0)?
                .mean_all()?
                .to_scalar::<f32>()
        };
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        for c in 0..2 {
            for i in 0..4usize {
                for j in 0..3usize {
                    let (r0, r1) = (i * 6 / 4, ((i + 1) * 6).div_ceil(4));
                    let (c0, c1) = (j * 7 / 3, ((j + 1) * 7).div_ceil(3));
                    let want = get(c, r0, r1, c0, c1)?;
                    let got = yv[c * 12 + i * 3 + j];
                    assert!((want - got).abs() < 1e-4, "{c},{i},{j}: {got} vs {want}");
                }
            }
        }
        Ok(())
    }
}
