//! Max and average pooling with PyTorch's full semantics (any kernel, stride, padding and
//! `ceil_mode`) and their backward passes.
//!
//! Candle 0.11's own max-pool refuses backward whenever kernel != stride, which rules out the
//! overlapping 3x3 stride-2 pools of ResNet, AlexNet and GoogLeNet. On the CPU these run as
//! custom ops with hand-written loops; on other devices as a composition of Candle ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

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

/// A 2-D pooling layer over (N, C, H, W) input, as `nn.MaxPool2d` / `nn.AvgPool2d`.
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

    /// The output (height, width) for an input of `h` x `w`, by PyTorch's rule:
    /// `floor_or_ceil((size + 2p - k) / s) + 1`, where a window that would start in the
    /// right/bottom padding is dropped in ceil mode.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let one = |size: usize, k: usize, s: usize, p: usize| -> Result<usize> {
            if k == 0 || s == 0 {
                candle_core::bail!("pooling kernel and stride must be positive, got {k} and {s}")
            }
            if p > k / 2 {
                candle_core::bail!("pooling padding {p} must be at most half the kernel {k}")
            }
            if size + 2 * p < k {
                candle_core::bail!(
                    "pooling input of size {size} (padding {p}) is smaller than the kernel {k}"
                )
            }
            let span = size + 2 * p - k;
            let mut out = if self.ceil_mode {
                span.div_ceil(s) + 1
            } else {
                span / s + 1
            };
            if self.ceil_mode && (out - 1) * s >= size + p {
                out -= 1;
            }
            Ok(out)
        };
        Ok((
            one(h, self.kernel.0, self.stride.0, self.padding.0)?,
            one(w, self.kernel.1, self.stride.1, self.padding.1)?,
        ))
    }
}

impl Module for Pool2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.rank() != 4 {
            candle_core::bail!("pooling expects (N, C, H, W) input, got {:?}", xs.shape())
        }
        if xs.device().is_cpu() {
            xs.contiguous()?.apply_op1(PoolOp(*self))
        } else {
            crate::pool_composite::forward(self, xs)
        }
    }
}

/// `F.max_pool2d(xs, kernel, stride, padding, ceil_mode=ceil_mode)`.
pub fn max_pool2d(
    xs: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
) -> Result<Tensor> {
    Pool2d::max(kernel, stride)
        .padding(padding)
        .ceil_mode(ceil_mode)
        .forward(xs)
}

/// `F.avg_pool2d(xs, kernel, stride, padding, ceil_mode=ceil_mode)` (count_include_pad=True).
pub fn avg_pool2d(
    xs: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
) -> Result<Tensor> {
    Pool2d::avg(kernel, stride)
        .padding(padding)
        .ceil_mode(ceil_mode)
        .forward(xs)
}

/// One output window: its clipped input rows and columns, and the average's divisor.
#[derive(Debug, Clone, Copy)]
struct Window {
    h0: usize,
    h1: usize,
    w0: usize,
    w1: usize,
    divisor: usize,
}

/// The geometry of one pooling call on one (H, W) plane.
#[derive(Debug, Clone, Copy)]
struct Plane {
    pool: Pool2d,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl Plane {
    fn new(pool: Pool2d, dims: &[usize]) -> Result<(usize, Self)> {
        let (n, c, h, w) = match dims {
            [n, c, h, w] => (*n, *c, *h, *w),
            _ => candle_core::bail!("pooling expects (N, C, H, W) input, got {dims:?}"),
        };
        let (oh, ow) = pool.output_size(h, w)?;
        Ok((n * c, Self { pool, h, w, oh, ow }))
    }

    fn window(&self, i: usize, j: usize) -> Window {
        let p = &self.pool;
        let hs = (i * p.stride.0) as isize - p.padding.0 as isize;
        let ws = (j * p.stride.1) as isize - p.padding.1 as isize;
        let he = (hs + p.kernel.0 as isize).min((self.h + p.padding.0) as isize);
        let we = (ws + p.kernel.1 as isize).min((self.w + p.padding.1) as isize);
        let padded = ((he - hs) * (we - ws)) as usize;
        let h0 = hs.max(0) as usize;
        let w0 = ws.max(0) as usize;
        let h1 = (he as usize).min(self.h);
        let w1 = (we as usize).min(self.w);
        let divisor = match p.kind {
            PoolKind::Avg {
                count_include_pad: false,
            } => (h1 - h0) * (w1 - w0),
            _ => padded,
        };
        Window {
            h0,
            h1,
            w0,
            w1,
            divisor,
        }
    }

    /// The flat index (within the plane) of the window's maximum: the first one in scan order,
    /// or the first NaN, as PyTorch picks it.
    fn argmax<T: candle_core::WithDType>(&self, x: &[T], win: Window) -> usize {
        let mut best = win.h0 * self.w + win.w0;
        let mut best_v = x[best];
        for r in win.h0..win.h1 {
            for c in win.w0..win.w1 {
                let idx = r * self.w + c;
                let v = x[idx];
                #[allow(clippy::eq_op)]
                let is_nan = v != v;
                if v > best_v || is_nan {
                    best = idx;
                    best_v = v;
                    if is_nan {
                        return best;
                    }
                }
            }
        }
        best
    }

    fn forward<T: candle_core::WithDType>(&self, x: &[T], y: &mut [T]) {
        for i in 0..self.oh {
            for j in 0..self.ow {
                let win = self.window(i, j);
                y[i * self.ow + j] = match self.pool.kind {
                    PoolKind::Max => x[self.argmax(x, win)],
                    PoolKind::Avg { .. } => {
                        let mut sum = T::zero();
                        for r in win.h0..win.h1 {
                            for v in &x[r * self.w + win.w0..r * self.w + win.w1] {
                                sum += *v;
                            }
                        }
                        sum / T::from_f64(win.divisor as f64)
                    }
                };
            }
        }
    }

    fn backward<T: candle_core::WithDType>(&self, x: &[T], gy: &[T], gx: &mut [T]) {
        for i in 0..self.oh {
            for j in 0..self.ow {
                let win = self.window(i, j);
                let g = gy[i * self.ow + j];
                match self.pool.kind {
                    PoolKind::Max => gx[self.argmax(x, win)] += g,
                    PoolKind::Avg { .. } => {
                        let share = g / T::from_f64(win.divisor as f64);
                        for r in win.h0..win.h1 {
                            for v in &mut gx[r * self.w + win.w0..r * self.w + win.w1] {
                                *v += share;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} needs a contiguous tensor"),
    }
}

struct PoolOp(Pool2d);

impl PoolOp {
    fn run<T: candle_core::WithDType>(&self, x: &[T], layout: &Layout) -> Result<(Vec<T>, Shape)> {
        let x = contiguous(x, layout, "pooling")?;
        let (planes, plane) = Plane::new(self.0, layout.dims())?;
        let mut y = vec![T::zero(); planes * plane.oh * plane.ow];
        if !y.is_empty() {
            y.par_chunks_mut(plane.oh * plane.ow)
                .zip(x.par_chunks(plane.h * plane.w))
                .for_each(|(y, x)| plane.forward(x, y));
        }
        let d = layout.dims();
        Ok((y, Shape::from((d[0], d[1], plane.oh, plane.ow))))
    }
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        "pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::F32(x) => {
                let (y, s) = self.run(x, layout)?;
                Ok((CpuStorage::F32(y), s))
            }
            CpuStorage::F64(x) => {
                let (y, s) = self.run(x, layout)?;
                Ok((CpuStorage::F64(y), s))
            }
            _ => candle_core::bail!("pooling supports f32 and f64 tensors"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2(&grad_res.contiguous()?, PoolBackwardOp(self.0))?;
        Ok(Some(grad))
    }
}

/// The input gradient of [`PoolOp`]: takes the input and the output's gradient.
struct PoolBackwardOp(Pool2d);

impl PoolBackwardOp {
    fn run<T: candle_core::WithDType>(
        &self,
        x: &[T],
        lx: &Layout,
        gy: &[T],
        lg: &Layout,
    ) -> Result<Vec<T>> {
        let x = contiguous(x, lx, "pooling backward")?;
        let gy = contiguous(gy, lg, "pooling backward")?;
        let (_, plane) = Plane::new(self.0, lx.dims())?;
        let mut gx = vec![T::zero(); x.len()];
        if !gx.is_empty() {
            gx.par_chunks_mut(plane.h * plane.w)
                .zip(x.par_chunks(plane.h * plane.w))
                .zip(gy.par_chunks(plane.oh * plane.ow))
                .for_each(|((gx, x), gy)| plane.backward(x, gy, gx));
        }
        Ok(gx)
    }
}

impl CustomOp2 for PoolBackwardOp {
    fn name(&self) -> &'static str {
        "pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                Ok((CpuStorage::F32(self.run(x, l1, g, l2)?), shape))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                Ok((CpuStorage::F64(self.run(x, l1, g, l2)?), shape))
            }
            _ => candle_core::bail!("pooling backward supports f32 and f64 of one dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn output_sizes_follow_pytorch() -> Result<()> {
        let p = Pool2d::max(3, 2);
        assert_eq!(p.output_size(13, 13)?, (6, 6));
        assert_eq!(p.ceil_mode(true).output_size(14, 14)?, (7, 7));
        assert_eq!(p.ceil_mode(true).output_size(13, 13)?, (6, 6));
        assert_eq!(p.padding(1).output_size(16, 16)?, (8, 8));
        assert_eq!(Pool2d::max(2, 2).ceil_mode(true).output_size(5, 5)?, (3, 3));
        assert!(p.padding(2).output_size(16, 16).is_err());
        assert!(p.output_size(2, 2).is_err());
        Ok(())
    }

    #[test]
    fn tutorial_pooling_example() -> Result<()> {
        let x = Tensor::arange(1f32, 17., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
        let max = Pool2d::max(2, 2)
            .forward(&x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let avg = Pool2d::avg(2, 2)
            .forward(&x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(max, [6., 8., 14., 16.]);
        assert_eq!(avg, [3.5, 5.5, 11.5, 13.5]);
        Ok(())
    }

    #[test]
    fn max_backward_routes_to_first_maximum_and_accumulates_overlaps() -> Result<()> {
        let x = Var::from_vec(
            vec![1f32, 5., 2., 5., 0., 3., 4., 1., 9.],
            (1, 1, 3, 3),
            &Device::Cpu,
        )?;
        let y = max_pool2d(x.as_tensor(), 2, 1, 0, false)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [5., 5., 5., 9.]);
        let grads = y.sum_all()?.backward()?;
        let g = grads
            .get(&x)
            .expect("gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(g, [0., 2., 0., 1., 0., 0., 0., 0., 1.]);
        Ok(())
    }

    #[test]
    fn avg_with_padding_counts_padding_by_default() -> Result<()> {
        let x = Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
        let y = avg_pool2d(&x, 2, 2, 1, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(y, [0.25, 0.25, 0.25, 0.25]);
        let p = Pool2d {
            kind: PoolKind::Avg {
                count_include_pad: false,
            },
            ..Pool2d::avg(2, 2).padding(1)
        };
        assert_eq!(
            p.forward(&x)?.flatten_all()?.to_vec1::<f32>()?,
            [1., 1., 1., 1.]
        );
        Ok(())
    }

    #[test]
    fn nan_propagates_through_max() -> Result<()> {
        let x = Tensor::new(&[[[[1f32, f32::NAN], [3., 2.]]]], &Device::Cpu)?;
        let y = Pool2d::max(2, 2)
            .forward(&x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(y[0].is_nan());
        Ok(())
    }
}
