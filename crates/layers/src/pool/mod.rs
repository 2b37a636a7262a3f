//! Max and average pooling with PyTorch's full semantics (any kernel, stride, padding and
//! `ceil_mode`) and their backward passes.
//!
//! Candle 0.11's own max-pool refuses backward whenever kernel != stride, which rules out the
//! overlapping 3x3 stride-2 pools of ResNet, AlexNet and GoogLeNet. On the CPU these run as
//! custom ops with hand-written loops; on other devices as a composition of Candle ops.

mod composite;
mod config;
mod cpu;
#[cfg(test)]
mod tests;

use candle_core::{DType, Module, Result, Tensor};

pub use config::{Pool2d, PoolKind};

/// `xs` as pooling takes it: (N, C, H, W) with channels and positions (a batch may be
/// empty), as PyTorch's `max_pool2d` and `avg_pool2d` check it.
fn check_input(xs: &Tensor) -> Result<()> {
    match *xs.dims() {
        [_, c, h, w] if c > 0 && h > 0 && w > 0 => Ok(()),
        _ => candle_core::bail!(
            "pooling expects (N, C, H, W) input (or one image (C, H, W)) with C, H and W at \
             least 1, got {:?}",
            xs.dims(),
        ),
    }
}

/// `(N, C, H, W)` to `(N, C, H_out, W_out)`; one image `(C, H, W)` to `(C, H_out, W_out)`, as
/// PyTorch's pooling takes it unbatched.
impl Module for Pool2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::unbatched::or_one_image(xs, |xs| self.forward_batch(xs))
    }
}

impl Pool2d {
    fn forward_batch(&self, xs: &Tensor) -> Result<Tensor> {
        check_input(xs)?;
        // bf16 and f16 (as PyTorch pools them on the CPU: in float32, rounded back; the
        // maxima are exact).
        let dtype = xs.dtype();
        if xs.device().is_cpu() && matches!(dtype, DType::BF16 | DType::F16) {
            // In the input's memory format (a cast gives a contiguous tensor).
            return crate::memory_format::keep(xs, |xs| {
                self.forward_batch(&xs.to_dtype(DType::F32)?)?
                    .to_dtype(dtype)
            });
        }
        // A channels-last input is pooled in (N, C, H, W) order and handed on channels-last.
        crate::memory_format::keep(xs, |xs| {
            if xs.device().is_cpu() {
                xs.contiguous()?.apply_op1(cpu::PoolOp::new(*self))
            } else {
                composite::forward(self, xs)
            }
        })
    }

    /// `torch.relu(pool(xs))` on `(N, C, H, W)`: on f32 CPU tensors one op each way (the ReLU
    /// applied to each plane's outputs as they are made; one autograd node, and one
    /// zero-filled gradient sum, fewer than the two apart), with the same bits as apart.
    /// For max pooling it also equals the pooling of the ReLU (the MNIST CNN's
    /// `F.relu(F.max_pool2d(conv(x), 2))`).
    ///
    /// # Errors
    /// As [`Module::forward`] (`xs` is neither `(N, C, H, W)` nor `(C, H, W)`, or the
    /// geometry is refused).
    pub fn forward_relu(&self, xs: &Tensor) -> Result<Tensor> {
        crate::unbatched::or_one_image(xs, |xs| self.forward_relu_batch(xs))
    }

    fn forward_relu_batch(&self, xs: &Tensor) -> Result<Tensor> {
        check_input(xs)?;
        match xs.device().is_cpu() && xs.dtype() == DType::F32 {
            true => crate::memory_format::keep(xs, |xs| {
                xs.contiguous()?.apply_op1(cpu::PoolOp::with_relu(*self))
            }),
            false => crate::relu(&self.forward(xs)?),
        }
    }
}

/// A pooling run inside another CPU op (after a convolution's batch norm and ReLU, in its
/// op): the same forward and backward as [`Module::forward`]'s op on the CPU.
pub(crate) struct Inner(cpu::PoolOp);

impl Inner {
    pub(crate) fn new(pool: Pool2d) -> Self {
        Self(cpu::PoolOp::new(pool))
    }

    /// The pooling of contiguous f32 values of `shape` (N, C, H, W): (output, its shape).
    pub(crate) fn forward(
        &self,
        x: &[f32],
        shape: &candle_core::Shape,
    ) -> Result<(Vec<f32>, candle_core::Shape)> {
        let _t = crate::profile::Timer::start(crate::profile::Part::Pool);
        self.0.run(x, &candle_core::Layout::contiguous(shape))
    }

    /// The input's gradient, from the input `x`, the output `y` and its gradient `gy`.
    pub(crate) fn backward(&self, x: &Tensor, y: &Tensor, gy: &Tensor) -> Result<Tensor> {
        match candle_core::CustomOp1::bwd(&self.0, x, y, gy)? {
            Some(g) => Ok(g),
            None => candle_core::bail!("pooling: no input gradient"),
        }
    }
}

/// `F.max_pool2d(xs, kernel, stride, padding, ceil_mode=ceil_mode)` on `(N, C, H, W)`, giving
/// `(N, C, H_out, W_out)` ([`Pool2d::output_size`]), or on one image `(C, H, W)`; on ties the gradient goes to the first
/// maximum of the window, as PyTorch.  f32 and f64; bf16 and f16 are pooled in float32 on the CPU
/// and rounded back, as PyTorch pools them there.
///
/// # Errors
/// `xs` is neither `(N, C, H, W)` nor `(C, H, W)`, or the geometry is refused
/// ([`Pool2d::output_size`]).
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

/// `F.avg_pool2d(xs, kernel, stride, padding, ceil_mode=ceil_mode)` (count_include_pad=True)
/// on `(N, C, H, W)`, giving `(N, C, H_out, W_out)` ([`Pool2d::output_size`]), or on one
/// image `(C, H, W)`.
///
/// # Errors
/// `xs` is neither `(N, C, H, W)` nor `(C, H, W)`, or the geometry is refused
/// ([`Pool2d::output_size`]).
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
