//! What a pooling layer is: its kind, window, stride, padding and rounding, and PyTorch's
//! output-size rule.

use candle_core::Result;

/// Which reduction a [`Pool2d`] applies to each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// The window's maximum (`nn.MaxPool2d`); NaN propagates as in PyTorch.
    Max,
    /// The window's mean (`nn.AvgPool2d`), dividing by the padded window size when
    /// `count_include_pad` (PyTorch's default) and by the valid element count otherwise.
    Avg {
        /// Whether padded zeros count towards the divisor.
        count_include_pad: bool,
    },
}

/// A 2-D pooling layer over (N, C, H, W) input, as `nn.MaxPool2d` / `nn.AvgPool2d`. The
/// output is in the input's memory format ([`memory_format`](crate::memory_format)).
///
/// ```
/// # fn main() -> candle_core::Result<()> {
/// use candle_core::{Device, Module, Tensor};
/// let x = Tensor::arange(1f32, 17., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
/// let y = layers::Pool2d::max(2, 2).forward(&x)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [6., 8., 14., 16.]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    /// Window height and width.
    pub kernel: (usize, usize),
    /// Vertical and horizontal stride.
    pub stride: (usize, usize),
    /// Implicit padding on each side (negative infinity for max, zero for average).
    pub padding: (usize, usize),
    /// Round the output size up instead of down, as PyTorch's `ceil_mode=True`.
    pub ceil_mode: bool,
    /// Max or average.
    pub kind: PoolKind,
}

impl Pool2d {
    /// Max-pooling with a square `kernel` and `stride`, no padding, floor mode.
    pub fn max(kernel: usize, stride: usize) -> Self {
        Self {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (0, 0),
            ceil_mode: false,
            kind: PoolKind::Max,
        }
    }

    /// Average pooling with a square `kernel` and `stride`, no padding, floor mode,
    /// `count_include_pad=True`.
    pub fn avg(kernel: usize, stride: usize) -> Self {
        Self {
            kind: PoolKind::Avg {
                count_include_pad: true,
            },
            ..Self::max(kernel, stride)
        }
    }

    /// The same pooling with `padding` on every side.
    pub fn padding(self, padding: usize) -> Self {
        Self {
            padding: (padding, padding),
            ..self
        }
    }

    /// The same pooling with `ceil_mode` set.
    pub fn ceil_mode(self, ceil_mode: bool) -> Self {
        Self { ceil_mode, ..self }
    }

    /// The output (height, width) for an input of `h` x `w`, by PyTorch's rule
    /// (`pooling_output_shape`): `floor_or_ceil((size + 2p - k) / s) + 1`, where a window that
    /// would start in the right/bottom padding is dropped in ceil mode. In ceil mode an input
    /// smaller than the kernel still gives one window where that window starts inside it (a
    /// 2x2 map under torchvision's GoogLeNet's 3x3 stride-2 pools), as in PyTorch.
    ///
    /// # Errors
    /// A kernel or stride of 0, padding above half the kernel, or an input that leaves no
    /// window (smaller than the kernel, padding included, outside ceil mode), as PyTorch
    /// refuses them.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let one = |size: usize, k: usize, s: usize, p: usize| -> Result<usize> {
            if k == 0 || s == 0 {
                candle_core::bail!("pooling kernel and stride must be positive, got {k} and {s}")
            }
            if p > k / 2 {
                candle_core::bail!("pooling padding {p} must be at most half the kernel {k}")
            }
            // In signed arithmetic, rounded down, as PyTorch's `div_rtn`.
            let (size_i, k_i, s_i, p_i) = (size as i64, k as i64, s as i64, p as i64);
            let extra = if self.ceil_mode { s_i - 1 } else { 0 };
            let mut out = (size_i + 2 * p_i - k_i + extra).div_euclid(s_i) + 1;
            if self.ceil_mode && (out - 1) * s_i >= size_i + p_i {
                out -= 1;
            }
            if out < 1 {
                candle_core::bail!(
                    "pooling input of size {size} (padding {p}) is smaller than the kernel {k}"
                )
            }
            Ok(out as usize)
        };
        Ok((
            one(h, self.kernel.0, self.stride.0, self.padding.0)?,
            one(w, self.kernel.1, self.stride.1, self.padding.1)?,
        ))
    }
}
