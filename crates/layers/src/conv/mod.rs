//! 2-D convolution whose backward pass runs as matrix products.
//!
//! Candle 0.11 differentiates `conv2d` with a direct `conv_transpose2d` loop for the input
//! gradient and a convolution with the batch as channels for the weight gradient. On the CPU
//! a convolution here is `im2col` (a custom op whose backward is `col2im`) followed by one
//! matrix product, so forward and backward are GEMMs, as in PyTorch's CPU path. f32
//! convolutions with 4x4 outputs or more run image by image instead
//! ([`conv2d_cpu_f32`](crate::conv2d_cpu_f32)), with columns that stay in cache; a network's
//! first layer (one to four input channels, an input that needs no gradient) runs as a direct
//! convolution in AVX-512 (or AVX2) without `im2col` (`direct.rs`). On other
//! devices the forward is Candle's `conv2d` (im2col + cuBLAS) and the input gradient
//! is a `conv2d` too, of the zero-dilated output gradient with the flipped kernel, in place of
//! Candle's `conv_transpose2d` kernel ([`conv2d_conv_grads`]). With the `cudnn` feature, CUDA
//! convolutions run forward and backward through cuDNN instead (`cudnn.rs`: descriptors and
//! benchmarked algorithms cached per shape, as `torch.backends.cudnn.benchmark`).
//!
//! Under [`autocast`](crate::autocast) the product runs in the reduced dtype and the result
//! comes back in the input's dtype before the bias is added.

pub(crate) mod batch_norm;
mod bias;
pub(crate) mod cpu;
#[cfg(feature = "cudnn")]
pub(crate) mod cudnn;
pub(crate) mod direct;
mod geometry;
mod grads;
mod im2col;
#[cfg(target_arch = "x86_64")]
mod im2col_packed;
#[cfg(feature = "onednn")]
pub mod onednn;
mod padding;
#[cfg(any(test, feature = "cudnn"))]
mod ranked;
#[cfg(test)]
mod tests;
mod window;
mod winograd;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Conv2dConfig;

use crate::{autocast, memory_format, per_channel};

pub use cpu::conv2d_cpu_f32;
pub use direct::set_direct_first_layer;
pub use grads::conv2d_conv_grads;
pub use im2col::conv2d_gemm;
pub use padding::PaddingMode;

/// Output channels from which bf16 autocast runs a CPU convolution's products in bf16.
const MIN_BF16_CHANNELS: usize = 16;

/// `nn.Conv2d`: weight (out, in / groups, k, k), optional bias (out); `padding_mode` and
/// `padding='same'` through [`Conv2d::with_padding_mode`] and [`Conv2d::with_padding_same`]
/// (the input padded first, as PyTorch's `F.pad`; one stride, padding and dilation for both
/// axes, as `Conv2dConfig` holds them). The output is in the
/// input's memory format ([`memory_format`](crate::memory_format): a channels-last input gives
/// a channels-last output); the weight stays (out, in / groups, k, k) either way.
///
/// The arguments are checked as `F.conv2d` checks them (positive stride, dilation and groups,
/// groups dividing both channel counts, a bias of one value per output channel, a dilated
/// kernel that fits the padded input); each refusal names what is wrong. One difference from
/// PyTorch's CPU results: a 3x3 stride-1 convolution of 16 or more input channels runs
/// Winograd's F(2x2, 3x3), whose transforms subtract neighbouring values, so an infinite input
/// value gives NaN at the outputs around it where PyTorch gives an infinity (finite inputs
/// agree to float32 rounding, NaN inputs give NaN in both).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    /// PyTorch's `padding_mode` ([`Conv2d::with_padding_mode`]).
    padding_mode: PaddingMode,
    /// `padding='same'`'s `(before, after)` padding of the height and the width where the
    /// configured (symmetric, square) padding cannot hold it: an even or non-square kernel
    /// ([`Conv2d::with_padding_same`]); the input is then padded first.
    same_padding: Option<[(usize, usize); 2]>,
}

impl Conv2d {
    /// A convolution with these parameters.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
            padding_mode: PaddingMode::Zeros,
            same_padding: None,
        }
    }

    /// The kernel, (out, in / groups, kh, kw).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Stride, padding, dilation and groups (with `padding='same'`, the padding of a square
    /// kernel of odd size, 0 where the input is padded first: an even or non-square kernel).
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    /// The same convolution on detached parameters ([`crate::no_grad`]).
    fn detached(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.as_ref().map(Tensor::detach),
            config: self.config,
            padding_mode: self.padding_mode,
            same_padding: self.same_padding,
        }
    }
}

/// The kernel taps `first..=last` along one side that reach the input for some output position
/// of a side of `size` (with `padding`, `stride`, a kernel of `k`), or `None` when every tap does
/// or no output exists.
fn reaching_taps(size: usize, k: usize, stride: usize, padding: usize) -> Option<(usize, usize)> {
    let span = size + 2 * padding;
    if span < k || stride == 0 {
        return None;
    }
    let out = (span - k) / stride + 1;
    // Output `o` reads rows `o·stride - padding + tap`: tap `t` reaches the input for some `o`
    // when `padding - (out - 1)·stride <= t <= padding + size - 1`.
    let first = padding.saturating_sub((out - 1) * stride);
    let last = (padding + size - 1).min(k - 1);
    // No tap reaches the input (every output in the padding, with a large stride): the full
    // kernel, which multiplies zeros only.
    if first > last {
        return None;
    }
    (first > 0 || last < k - 1).then_some((first, last))
}

impl Conv2d {
    /// The same convolution without the kernel rows and columns that only ever meet the zero
    /// padding (ResNet-18's last stage on a 32x32 image runs 3x3 kernels over 1x1 maps: 8 of
    /// the 9 taps multiply zeros), when a narrower kernel with a smaller, still symmetric
    /// padding gives the same output; `None` otherwise. The dropped taps' gradient is zero,
    /// as before (the narrowed weight's backward fills it in).
    fn without_padding_taps(&self, xs: &Tensor) -> Result<Option<Self>> {
        let c = &self.config;
        if c.dilation != 1 || xs.rank() != 4 || self.weight.rank() != 4 {
            return Ok(None);
        }
        let (_, _, h, w) = xs.dims4()?;
        let (_, _, kh, kw) = self.weight.dims4()?;
        let rows = reaching_taps(h, kh, c.stride, c.padding);
        let cols = reaching_taps(w, kw, c.stride, c.padding);
        if rows.is_none() && cols.is_none() {
            return Ok(None);
        }
        let (r0, r1) = rows.unwrap_or((0, kh - 1));
        let (c0, c1) = cols.unwrap_or((0, kw - 1));
        // One padding for both sides and both axes: the taps dropped at the start of each axis
        // must be as many, and the output size must stay.
        if c.padding - r0 != c.padding - c0 {
            return Ok(None);
        }
        let padding = c.padding - r0;
        let (nh, nw) = (r1 - r0 + 1, c1 - c0 + 1);
        let out = |size: usize, k: usize, p: usize| (size + 2 * p - k) / c.stride + 1;
        if h + 2 * padding < nh
            || w + 2 * padding < nw
            || out(h, nh, padding) != out(h, kh, c.padding)
            || out(w, nw, padding) != out(w, kw, c.padding)
        {
            return Ok(None);
        }
        let weight = window::kernel_window(&self.weight, (r0, nh), (c0, nw))?;
        Ok(Some(Self {
            weight,
            bias: self.bias.clone(),
            config: Conv2dConfig { padding, ..*c },
            padding_mode: self.padding_mode,
            same_padding: self.same_padding,
        }))
    }
}

impl Conv2d {
    /// The output's dims (N, O, OH, OW) for `xs` (one group, no dilation), or `None` (another
    /// kind of convolution, or an input the convolution refuses: it says why itself).
    fn output_dims(&self, xs: &Tensor) -> Option<[usize; 4]> {
        let c = &self.config;
        let explicit = self.same_padding.is_some()
            || (self.padding_mode != PaddingMode::Zeros && c.padding > 0);
        if c.groups != 1 || c.dilation != 1 || explicit {
            return None;
        }
        let (geo, cout) =
            geometry::Geometry::of_conv(xs, &self.weight, c.stride, c.padding).ok()?;
        Some([xs.dim(0).ok()?, cout, geo.oh, geo.ow])
    }
}

/// `(N, C, H, W)` to `(N, O, H_out, W_out)`; one image `(C, H, W)` to `(O, H_out, W_out)`, as
/// PyTorch's `nn.Conv2d` takes it unbatched.
impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // One image of other channels: perhaps (H, W, C), as PIL and NumPy lay images out.
        let cin = self.weight.dims().get(1).copied().unwrap_or(0) * self.config.groups;
        if let [c, _, last] = *xs.dims() {
            if c != cin {
                candle_core::bail!(
                    "conv2d: one image of shape {:?} for the kernel {:?}, which takes {cin} \
                     channels (C, H, W){}",
                    xs.dims(),
                    self.weight.dims(),
                    match last == cin {
                        true => ": an (H, W, C) image? xs.permute((2, 0, 1))",
                        false => "",
                    }
                )
            }
        }
        crate::unbatched::or_one_image(xs, |xs| Ok(self.forward_then(xs, None, None)?.0))
    }
}

impl Conv2d {
    /// `relu?(bn(self(xs)))`, `bn` in training mode (batch statistics, running statistics
    /// updated) when `train`, else with its running statistics. In training, on f32 CPU
    /// tensors, with a convolution without bias and no cross-process statistics, the batch norm
    /// (and ReLU) run inside the convolution's op where its path allows, with
    /// the same bits as apart and one autograd node (and one zero-filled gradient sum the size
    /// of the output) fewer; otherwise the two run apart. `xs` is (N, C, H, W); the output is
    /// the convolution's, (N, O, H_out, W_out), `bn` over its O channels. PyTorch:
    /// `F.relu(bn(conv(x)))` (torchvision's `conv1, bn1, relu` in a ResNet block).
    ///
    /// # Errors
    /// As [`Conv2d::forward`] and [`BatchNorm::forward_relu`](crate::BatchNorm::forward_relu).
    pub fn forward_batch_norm(
        &self,
        xs: &Tensor,
        bn: &crate::BatchNorm,
        relu: bool,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_batch_norm_then(xs, bn, relu, None, None, train)
    }

    /// `pool(relu(bn(self(xs))))`, `bn` as in [`Conv2d::forward_batch_norm`]: a ResNet's stem
    /// (torchvision's `maxpool(relu(bn1(conv1(x))))`). In training on f32 CPU tensors, where
    /// the convolution's path allows, all in the convolution's op: the same bits as apart, and
    /// no autograd node (nor zero-filled gradient sum) for the full-size output before the
    /// pooling. `xs` is (N, C, H, W); the output is the pooling's, (N, O, H_pool, W_pool).
    ///
    /// # Errors
    /// As [`Conv2d::forward_batch_norm`], and the pooling's ([`Pool2d`](crate::Pool2d)).
    pub fn forward_batch_norm_relu_pool(
        &self,
        xs: &Tensor,
        bn: &crate::BatchNorm,
        pool: &crate::Pool2d,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_batch_norm_then(xs, bn, true, None, Some(pool), train)
    }

    /// `relu(bn(self(xs)) + residual)`, `bn` in training mode when `train`, else with its running
    /// statistics (a residual block's last convolution, batch norm and join): as
    /// [`Conv2d::forward_batch_norm`], in training in the
    /// convolution's op where the output has at least four times the kernel's values (the
    /// kernel travels with the batch norm's parameters, copied once each way), otherwise as
    /// [`BatchNorm::forward_add_relu`](crate::BatchNorm::forward_add_relu). `residual` has the
    /// output's shape, (N, O, H_out, W_out). PyTorch: torchvision's `out = self.bn2(self.conv2(
    /// out)); out += identity; out = self.relu(out)`.
    ///
    /// # Errors
    /// As [`Conv2d::forward`] and [`BatchNorm::forward_add_relu`](crate::BatchNorm::forward_add_relu).
    pub fn forward_batch_norm_add_relu(
        &self,
        xs: &Tensor,
        bn: &crate::BatchNorm,
        residual: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_batch_norm_then(xs, bn, true, Some(residual), None, train)
    }

    fn forward_batch_norm_then(
        &self,
        xs: &Tensor,
        bn: &crate::BatchNorm,
        relu: bool,
        residual: Option<&Tensor>,
        pool: Option<&crate::Pool2d>,
        train: bool,
    ) -> Result<Tensor> {
        // Without running statistics the batch's normalise in evaluation too, not synchronised
        // across processes (PyTorch's SyncBatchNorm syncs in training only).
        if !train && !bn.tracks_running_stats() {
            let previous = crate::set_stats_sync(None);
            let result = self.forward_batch_norm_then(xs, bn, relu, residual, pool, true);
            crate::set_stats_sync(previous);
            return result;
        }
        // Under `no_grad`: the same on detached inputs and parameters (no graph recorded).
        let inputs = [Some(xs), Some(&self.weight), self.bias.as_ref()];
        let bn_inputs = [Some(bn.weight()), Some(bn.bias()), residual];
        if crate::grad_mode::detach_first(&[inputs, bn_inputs].concat()) {
            let residual = residual.map(Tensor::detach);
            let bn = bn.detached();
            return self.detached().forward_batch_norm_then(
                &xs.detach(),
                &bn,
                relu,
                residual.as_ref(),
                pool,
                train,
            );
        }
        let conv = (xs, &self.weight, self.bias.is_some());
        let pooled = |ys: Tensor| match pool {
            Some(p) => candle_core::Module::forward(p, &ys),
            None => Ok(ys),
        };
        if let Some(epilogue) = bn.conv_epilogue(conv, relu, residual, pool, train)? {
            let (ys, fused) = self.forward_then(xs, Some(&epilogue), None)?;
            if fused {
                bn.update_from(&epilogue)?;
                return Ok(ys);
            }
            return pooled(bn.forward_after(&ys, relu, residual, train)?);
        }
        // Evaluation with nothing tracked (inference): the batch norm applied by the
        // convolution's op to its fresh output (the image-by-image convolution on each block of
        // output rows while it is in cache), else in place after it: no new tensor either way.
        let eval = match !train && self.bias.is_none() && !xs.track_op() && !self.weight.track_op()
        {
            true => match self.output_dims(xs) {
                Some(dims) => bn.eval_epilogue(&dims, relu, residual)?,
                None => None,
            },
            false => None,
        };
        let (ys, ran) = self.forward_then(xs, None, eval.as_ref())?;
        if ran {
            return pooled(ys);
        }
        // `ys` must be held here alone (every path of `forward` makes a new output): the write
        // is not checked against other holders.
        if !train && bn.eval_in_place(&ys, relu, residual)? {
            return pooled(ys);
        }
        pooled(bn.forward_after(&ys, relu, residual, train)?)
    }

    /// The convolution, and `bn` in its op where the path allows: (output, whether `bn` ran).
    fn forward_then(
        &self,
        xs: &Tensor,
        bn: Option<&batch_norm::Epilogue>,
        eval: Option<&batch_norm::EvalEpilogue>,
    ) -> Result<(Tensor, bool)> {
        // Images of integers (u8 pixels not yet converted) or of another float type than the
        // kernel's (on the CPU, bf16 or f16 images for a float32 kernel too: autocast takes
        // float32 images, as PyTorch's): said here, where Candle's own message names only its
        // im2col or matmul.
        let (x_type, w_type) = (xs.dtype(), self.weight.dtype());
        if !x_type.is_float()
            || (x_type == DType::F64) != (w_type == DType::F64)
            || (xs.device().is_cpu() && w_type == DType::F32 && x_type != DType::F32)
        {
            candle_core::bail!(
                "conv2d: input of dtype {x_type:?} {:?} for a {w_type:?} kernel {:?}: the \
                 convolution takes float images (N, C, H, W) of its kernel's type \
                 (`xs.to_dtype(DType::{w_type:?})`, pixels scaled and normalised as the model's \
                 transform says)",
                xs.dims(),
                self.weight.dims()
            )
        }
        // A padding mode other than zeros, or `'same'`'s uneven padding: the input padded here.
        if let Some((padded, plain)) = self.explicit_padding(xs)? {
            return plain.forward_then(&padded, bn, eval);
        }
        let out = geometry::check_conv(xs, &self.weight, self.bias.as_ref(), &self.config)?;
        // An empty batch: PyTorch's empty output (Candle's grouped and dilated convolution
        // panicked on it; the others' ops take it), in the graph of the kernel and the bias
        // (their gradients zeros, as PyTorch's), in the dtype a product would hand on.
        let c = &self.config;
        if out[0] == 0 && (c.groups > 1 || c.dilation > 1) {
            let dtype = autocast::output_dtype(xs, autocast::compute_dtype(xs));
            let bias = self.bias.as_ref().unwrap_or(&self.weight);
            let ys = crate::empty::output(&out, dtype, [xs, &self.weight, bias])?;
            return Ok((ys, false));
        }
        if crate::grad_mode::detach_first(&[Some(xs), Some(&self.weight), self.bias.as_ref()]) {
            return self.detached().forward_then(&xs.detach(), bn, eval);
        }
        // A channels-last input (or a one-channel one while channels-last is preferred) without
        // cuDNN's NHWC kernels to take it: the (N, C, H, W) paths on a contiguous copy, the
        // output handed on channels-last (as PyTorch's fallbacks).
        if memory_format::takes_channels_last(xs) && !nhwc_kernels(xs) {
            let (ys, fused) = {
                // A one-channel input is its own contiguous copy: taken as such inside.
                let _plain = memory_format::prefer(memory_format::MemoryFormat::Contiguous);
                self.forward_then(&xs.contiguous()?, bn, eval)?
            };
            return Ok((memory_format::to_channels_last(&ys)?, fused));
        }
        // On the CPU, kernel taps that only meet padding are not multiplied (on CUDA, cuDNN
        // chooses its own algorithms).
        if xs.device().is_cpu() {
            if let Some(trimmed) = self.without_padding_taps(xs)? {
                return trimmed.forward_then(xs, bn, eval);
            }
        }
        let plain = c.groups == 1 && c.dilation == 1;
        let cpu = xs.device().is_cpu();
        let cpu_f32 = cpu && xs.dtype() == DType::F32;
        let f32_weight = self.weight.dtype() == DType::F32;
        // What the convolution's op adds where it can (one autograd node): the batch norm, or
        // the bias.
        // An evaluation-mode batch norm only without a bias (which would come first).
        let after = match (bn, eval, &self.bias) {
            (Some(bn), _, _) => bias::After::BatchNorm(bn),
            (None, Some(eval), None) => bias::After::EvalBatchNorm(eval),
            (None, _, Some(b)) => bias::After::Bias(b),
            (None, None, None) => bias::After::Nothing,
        };
        let fused = after.fused();
        let bn_in_op = matches!(
            after,
            bias::After::BatchNorm(_) | bias::After::EvalBatchNorm(_)
        );
        // A network's first layer (one to four input channels, an input that needs no
        // gradient): the direct convolution ([`direct`]) in float32 (and under bf16 autocast
        // where the products stay float32: fewer than 16 output channels, or no bf16 kernel).
        // Where bf16 products run, the image-by-image path's bf16 GEMM (`vdpbf16ps`: two
        // products per float32 FMA's lane) beat the direct convolution's float32 FMAs on
        // rounded operands at every first layer measured (Zen 5, forward and kernel gradient,
        // 2026-12-05: ResNet-50's 7x7 stem at 224x224, batch 16, 28-30 -> 20-21 ms; the 3x3 and
        // 7x7 stems on 32x32 and the MNIST CNN's 1->32 6-15% faster); with oneDNN, stride-1
        // first layers run the direct convolution in bf16 (below).
        if cpu_f32 && plain && f32_weight {
            let bf16_products = autocast::dtype() == Some(DType::BF16)
                && self.weight.dim(0)? >= MIN_BF16_CHANNELS
                && autocast::cpu_bf16_kernel_active();
            let bf16 = match autocast::dtype() {
                None | Some(DType::F32) => Some(false),
                Some(DType::BF16) if !bf16_products => Some(false),
                Some(DType::BF16) => onednn_direct_bf16(c.stride).then_some(true),
                Some(_) => None,
            };
            if let Some(bf16) = bf16 {
                let (s, p) = (c.stride, c.padding);
                if let Some(ys) = direct::conv2d(xs, &self.weight, after, s, p, bf16)? {
                    return self.then_unfused_bias(ys, fused, bn_in_op, cpu_f32);
                }
            }
        }
        // bf16 autocast on the CPU ([`autocast::cpu_bf16_kernel`]): with AVX512-BF16 the
        // image-by-image convolution rounds the operands of its products (the output gradient
        // too) to bf16 as it packs them, and sums in float32; without it, float32.
        if cpu_f32 && plain && f32_weight && autocast::dtype() == Some(DType::BF16) {
            let per_image = cpu::per_image_pays(xs, &self.weight, c.stride, c.padding)?;
            // Fewer than 16 output channels (LeNet-5's): the bf16 products' packing and
            // rounding cost more than they save, and these run in float32 (more precise, and
            // faster here). Outputs under 4x4 (the last stages of a ResNet on 32x32 images)
            // skip the image-by-image path: one product over the batch (or oneDNN's).
            let bf16 = per_image
                && self.weight.dim(0)? >= MIN_BF16_CHANNELS
                && autocast::cpu_bf16_kernel_active();
            // Outputs too small for the image-by-image path: one product over the whole
            // batch's columns, in bf16 from 16 output channels.
            let batch_bf16 = !per_image
                && self.weight.dim(0)? >= MIN_BF16_CHANNELS
                && autocast::cpu_bf16_kernel_active();
            #[cfg(feature = "onednn")]
            if onednn::enabled() {
                let bf16 = bf16 || batch_bf16;
                let (s, p) = (c.stride, c.padding);
                if let Some(ys) = onednn::conv2d(xs, &self.weight, after, s, p, bf16)? {
                    return self.then_unfused_bias(ys, fused, bn_in_op, cpu_f32);
                }
            }
            let ys = match per_image {
                true => {
                    let ys = cpu::conv2d_cpu(xs, &self.weight, after, c.stride, c.padding, bf16)?;
                    return self.then_unfused_bias(ys, fused, bn_in_op, cpu_f32);
                }
                false => {
                    im2col::conv2d_gemm_f32(xs, &self.weight, c.stride, c.padding, batch_bf16)?
                }
            };
            return Ok((self.add_bias(ys, cpu_f32)?, false));
        }
        // Otherwise autocast on the CPU (f16, or a grouped or dilated convolution): float32
        // products of operands rounded to the reduced dtype ([`autocast::round_through`]).
        let (x, w, dtype) = match autocast::compute_dtype(xs) {
            d if cpu_f32 && d != DType::F32 && f32_weight => (
                autocast::round_through(xs, d)?,
                autocast::round_through(&self.weight, d)?,
                DType::F32,
            ),
            d => (autocast::cast(xs, d)?, autocast::cast(&self.weight, d)?, d),
        };
        // CUDA with cuDNN: forward and both gradients through cuDNN, any groups and dilation.
        #[cfg(feature = "cudnn")]
        if cudnn::supports(&x) {
            let ys = cudnn::conv2d(&x, &w, c)?;
            let ys = autocast::cast(&ys, autocast::output_dtype(xs, dtype))?;
            return Ok((self.add_bias(ys, false)?, false));
        }
        let per_image = cpu
            && plain
            && dtype == DType::F32
            && cpu::per_image_pays(&x, &w, c.stride, c.padding)?;
        // Added inside the convolution's op only for f32 products of f32 tensors.
        let after = match cpu_f32 && x.dtype() == xs.dtype() {
            true => after,
            false => bias::After::Nothing,
        };
        let fused = after.fused();
        let bn_fused = matches!(
            after,
            bias::After::BatchNorm(_) | bias::After::EvalBatchNorm(_)
        );
        #[cfg(feature = "onednn")]
        if cpu_f32 && plain && dtype == DType::F32 && onednn::enabled() {
            if let Some(ys) = onednn::conv2d(&x, &w, after, c.stride, c.padding, false)? {
                let ys = autocast::cast(&ys, xs.dtype())?;
                return self.then_unfused_bias(ys, fused, bn_fused, cpu_f32);
            }
        }
        if dtype == xs.dtype() && cpu && plain && !per_image && !cpu_f32 {
            let ys = conv2d_gemm(xs, &self.weight, self.bias.as_ref(), c.stride, c.padding)?;
            return Ok((ys, false));
        }
        if per_image {
            let ys = cpu::conv2d_cpu(&x, &w, after, c.stride, c.padding, false)?;
            let ys = autocast::cast(&ys, autocast::output_dtype(xs, dtype))?;
            return self.then_unfused_bias(ys, fused, bn_fused, cpu_f32);
        }
        let ys = match (plain, cpu) {
            (true, true) if cpu_f32 && x.dtype() == DType::F32 => {
                im2col::conv2d_gemm_f32(&x, &w, c.stride, c.padding, false)?
            }
            (true, true) => conv2d_gemm(&x, &w, None, c.stride, c.padding)?,
            (true, false) => conv2d_conv_grads(&x, &w, c.stride, c.padding)?,
            (false, _) => {
                even_remainders(&x, &w, c)?.conv2d(&w, c.padding, c.stride, c.dilation, c.groups)?
            }
        };
        let ys = autocast::cast(&ys, autocast::output_dtype(xs, dtype))?;
        Ok((self.add_bias(ys, cpu_f32)?, false))
    }
}

/// `xs` with zero columns (or rows) added on the right (or bottom), never reached by a window,
/// so that the rows and the columns past the last window are as many.
///
/// Candle 0.11's own `conv2d` backward, which grouped and dilated convolutions still use,
/// takes the height's count for both as `conv_transpose2d`'s output padding, and fails on a
/// strided convolution of a non-square input where they differ ("shape mismatch in add").
/// The output and the gradient of the original columns are unchanged.
fn even_remainders(xs: &Tensor, weight: &Tensor, c: &Conv2dConfig) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    let left_over = |size: usize, k: usize| -> usize {
        let reach = c.dilation * (k - 1) + 1;
        match size + 2 * c.padding < reach {
            true => 0,
            false => {
                let out = (size + 2 * c.padding - reach) / c.stride + 1;
                size + 2 * c.padding - ((out - 1) * c.stride + reach)
            }
        }
    };
    let (rows, cols) = (left_over(h, kh), left_over(w, kw));
    match rows.cmp(&cols) {
        std::cmp::Ordering::Equal => Ok(xs.clone()),
        std::cmp::Ordering::Greater => xs.pad_with_zeros(3, 0, rows - cols),
        std::cmp::Ordering::Less => xs.pad_with_zeros(2, 0, cols - rows),
    }
}

impl Conv2d {
    /// `ys` (the op's output), with the bias added unless the op added what was asked
    /// (`fused`), and whether that was the batch norm (`bn`).
    fn then_unfused_bias(
        &self,
        ys: Tensor,
        fused: bool,
        bn: bool,
        cpu_f32: bool,
    ) -> Result<(Tensor, bool)> {
        match fused {
            true => Ok((ys, bn)),
            false => Ok((self.add_bias(ys, cpu_f32)?, false)),
        }
    }

    /// `ys` plus the bias, if any, broadcast over (N, ·, H, W) (over the channels of the
    /// (N, H, W, C) view of a channels-last `ys`, which stays channels-last).
    fn add_bias(&self, ys: Tensor, cpu_f32: bool) -> Result<Tensor> {
        match &self.bias {
            Some(b) if cpu_f32 && b.dtype() == DType::F32 && ys.is_contiguous() => {
                per_channel::add_channel_bias(&ys, b)
            }
            Some(b) => {
                let b = autocast::cast(b, ys.dtype())?;
                match memory_format::nhwc(&ys)? {
                    Some(v) => {
                        memory_format::from_nhwc(&v.broadcast_add(&b.reshape((1, 1, 1, ()))?)?)
                    }
                    None => ys.broadcast_add(&b.reshape((1, (), 1, 1))?),
                }
            }
            None => Ok(ys),
        }
    }
}

/// Whether a convolution of `xs` runs cuDNN's NHWC kernels when `xs` is channels-last: CUDA
/// with the `cudnn` feature, in a dtype cuDNN convolves.
fn nhwc_kernels(xs: &Tensor) -> bool {
    #[cfg(feature = "cudnn")]
    return cudnn::supports(xs);
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = xs;
        false
    }
}

/// Whether a first layer of `stride` under bf16 autocast runs the direct convolution in bf16:
/// only with oneDNN switched on and stride 1. oneDNN's bf16 kernels run strided first layers;
/// stride-1 ones measured faster here (per operation inside the step, forward + kernel
/// gradient, medians of three, oneDNN's reorders included: `resnet18-seed`'s 7x7 stride-2
/// stem 3.8 ms with oneDNN against 6.1 direct; `resnet18-cifar`'s 3x3 stem 8.7 against 6.0,
/// the MNIST CNN's 1->32 1.05 against 0.81). Without oneDNN, the built-in bf16 GEMM runs them.
fn onednn_direct_bf16(stride: usize) -> bool {
    #[cfg(feature = "onednn")]
    return onednn::enabled() && stride == 1;
    #[cfg(not(feature = "onednn"))]
    {
        let _ = stride;
        false
    }
}
