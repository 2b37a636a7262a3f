//! What every classic CNN in this workspace shares and Candle lacks or does differently.
//!
//! - [`Conv2d`]: convolution with its own backward pass: on the CPU GEMMs, Winograd F(2x2, 3x3)
//!   for 3x3 stride-1 kernels, a direct kernel for a network's first layer and, with the
//!   `onednn` feature, oneDNN where it is faster; on CUDA cuDNN with `cudnn` (Candle's backward
//!   is a direct loop, several times slower); PyTorch's `padding_mode` ([`PaddingMode`]) and
//!   `padding='same'`;
//! - [`Pool2d`]: max and average pooling with PyTorch's kernel/stride/padding/`ceil_mode`
//!   semantics and a backward pass for every configuration;
//! - [`adaptive_avg_pool2d`] with PyTorch's bins;
//! - [`BatchNorm`]: PyTorch's batch norm (optionally with its ReLU) as one operation with a
//!   closed-form backward; `nn.BatchNorm2d`'s `momentum=None`, `affine` and
//!   `track_running_stats` through [`batch_norm2d`] and [`BatchNormConfig`];
//! - [`Linear`], and [`autocast`]: bf16/f16 products with float32 weights, as `torch.autocast`;
//! - [`no_grad`]: inference without an autograd graph, as `torch.no_grad()`;
//! - [`loss`]: cross-entropy with label smoothing, as `torch.nn.functional.cross_entropy`;
//! - [`tanh`] and [`relu`] as one-pass CPU operations (Candle's call `tanhf` per element);
//! - [`Dropout`] (seeded, identity in eval), [`flatten`], [`ConvBnRelu`];
//! - constructors with torchvision's initialisation ([`conv2d`], [`linear`], [`batch_norm`],
//!   [`WeightInit`]);
//! - [`ParamStore`], a seeded parameter store keyed by PyTorch `state_dict()` names, and
//!   [`checkpoint`], strict safetensors loading and atomic, synced saving; [`file`](mod@file), reads of a
//!   run's files that refuse pipes and devices;
//! - [`memory_format`]: PyTorch's `torch.channels_last` activations (cuDNN's NHWC kernels on
//!   CUDA);
//! - [`Network`], the surface every model exposes;
//! - [`wide`]: plain loops compiled a second time for AVX-512, picked at run time.

mod activation;
#[cfg(feature = "cuda")]
mod activation_cuda;
mod adaptive;
pub mod autocast;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod batch_norm;
mod bf16_gemm;
pub mod checkpoint;
mod conv;
#[cfg(feature = "cuda-emulation")]
#[doc(hidden)]
pub mod cuda_host;
#[cfg(feature = "cuda")]
pub mod cuda_memory;
#[cfg(feature = "cudnn")]
mod cudnn;
#[cfg(feature = "cuda")]
mod dropout_cuda;
mod empty;
pub mod file;
mod fill;
mod grad_mode;
mod in_place;
pub mod init;
mod linear_cpu;
pub mod loss;
pub mod memory_format;
mod nn;
mod params;
mod per_channel;
mod pool;
mod products;
mod unbatched;
#[cfg(test)]
mod test_values {
    /// `len` values in [-1, 1] from a xorshift generator seeded by `seed`: the same on every run.
    pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The bits of an f32 tensor's values, for comparisons that must be exact.
    pub(crate) fn bits(t: &candle_core::Tensor) -> candle_core::Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    }
}
pub mod profile;
pub mod rng;
pub mod tap;
pub mod wide;

pub use activation::{add_relu, relu, tanh};
pub use adaptive::{adaptive_avg_pool2d, AdaptiveAvgPool2d};
pub use batch_norm::{
    batch_norm, batch_norm2d, set_stats_sync, BatchNorm, BatchNormConfig, StatsSync,
};
#[cfg(feature = "cudnn")]
pub use conv::cudnn::{cudnn_nhwc_kernels, NhwcKernels};
#[cfg(feature = "onednn")]
pub use conv::onednn;
pub use conv::{
    conv2d_conv_grads, conv2d_cpu_f32, conv2d_gemm, set_direct_first_layer, Conv2d, PaddingMode,
};
pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};
pub use in_place::{in_place_cpu, in_place_cuda};
pub use init::WeightInit;
pub use memory_format::{to_channels_last, MemoryFormat};
pub use nn::{conv2d, conv_cfg, flatten, linear, ConvBnRelu, Dropout, Linear};
pub use params::{is_buffer, ParamStore};
pub use pool::{avg_pool2d, max_pool2d, Pool2d, PoolKind};
pub use unbatched::check_images;

use candle_core::{Result, Tensor};

/// The surface every network of the workspace exposes: `ModuleT` (the train flag drives dropout
/// and batch norm) plus its intermediate activations, for pictures of what it sees.
pub trait Network: candle_nn::ModuleT + Send + Sync {
    /// The activations after each stage for `xs` in evaluation mode, named and in order
    /// (the last one is the logits).
    fn forward_stages(&self, xs: &Tensor) -> Result<Vec<(String, Tensor)>>;
}
