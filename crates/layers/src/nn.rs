//! Layer constructors with torchvision's initialisation, and the small modules Candle lacks.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::batch_norm::{batch_norm, BatchNorm};

use crate::autocast;
use crate::conv::Conv2d;

use crate::init::WeightInit;

/// `nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups, bias)` with the given
/// initialisation; parameters `weight` of shape `(out_channels, in_channels / groups, kernel,
/// kernel)` (and `bias`, `(out_channels,)`) under `vb`'s prefix. The layer maps `(N,
/// in_channels, H, W)` to `(N, out_channels, H', W')`, `H' = (H + 2 padding - dilation (kernel
/// - 1) - 1) / stride + 1`.
///
/// # Errors
/// `groups` is 0 or does not divide both channel counts (PyTorch's `ValueError`s), or `vb`
/// holds tensors of other shapes under these names, or cannot create them.
pub fn conv2d(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    bias: bool,
    init: WeightInit,
) -> Result<Conv2d> {
    if cfg.groups == 0 {
        candle_core::bail!("groups must be a positive integer, got 0")
    }
    if !in_channels.is_multiple_of(cfg.groups) || !out_channels.is_multiple_of(cfg.groups) {
        candle_core::bail!(
            "in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by \
             groups ({})",
            cfg.groups
        )
    }
    let fan_in = in_channels / cfg.groups * kernel * kernel;
    let weight = vb.get_with_hints(
        (out_channels, in_channels / cfg.groups, kernel, kernel),
        "weight",
        init.weight(fan_in),
    )?;
    let bias = if bias {
        Some(vb.get_with_hints(out_channels, "bias", init.bias(fan_in))?)
    } else {
        None
    };
    Ok(Conv2d::new(weight, bias, cfg))
}

/// Stride and padding for [`conv2d`] (dilation 1, one group).
pub fn conv_cfg(stride: usize, padding: usize) -> Conv2dConfig {
    Conv2dConfig {
        stride,
        padding,
        ..Default::default()
    }
}

/// `nn.Linear(in_features, out_features)` with the given initialisation.
///
/// # Errors
/// `vb` holds tensors of other shapes under these names.
pub fn linear(
    vb: VarBuilder,
    in_features: usize,
    out_features: usize,
    init: WeightInit,
) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_features, in_features),
        "weight",
        init.weight(in_features),
    )?;
    let bias = vb.get_with_hints(out_features, "bias", init.bias(in_features))?;
    Ok(Linear::new(weight, Some(bias)))
}

/// `nn.Linear`: `x W^T + b`, with weight (out, in) and optional bias (out). Under
/// [`autocast`] the product runs in the reduced dtype and the output (and the bias added to
/// it) is float32: the input's dtype, or the weight's for a bf16/f16 input (CUDA's activations
/// under autocast).
/// An f32 (N, in) input on the CPU with a bias runs as one operation (`linear_cpu`), under bf16
/// autocast too ([`autocast::cpu_bf16_kernel`]). Input `(N, in)` (or `(B, N, in)`, `(B1, B2,
/// N, in)`), output `(N, out)` alike: one vector `(in,)` gives `(out,)`, as `nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer with these parameters.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight, (out, in).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // One vector: a batch of one (Candle's product takes no vector).
        if xs.rank() == 1 {
            return self.forward(&xs.unsqueeze(0)?)?.squeeze(0);
        }
        // Under `no_grad`: the same on detached inputs and parameters (no graph recorded).
        if crate::grad_mode::detach_first(&[Some(xs), Some(&self.weight), self.bias.as_ref()]) {
            let detached =
                Linear::new(self.weight.detach(), self.bias.as_ref().map(Tensor::detach));
            return detached.forward(&xs.detach());
        }
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
        if let (Some(b), 2) = (&self.bias, xs.rank()) {
            if f32_cpu(xs) && f32_cpu(&self.weight) && f32_cpu(b) {
                match autocast::compute_dtype(xs) {
                    candle_core::DType::F32 => {
                        return crate::linear_cpu::linear(xs, &self.weight, b, false)
                    }
                    // bf16 autocast: where the CPU has AVX512-BF16 the op rounds its operands,
                    // elsewhere it runs in float32.
                    candle_core::DType::BF16 => {
                        let bf16 = autocast::cpu_bf16_kernel_active();
                        return crate::linear_cpu::linear(xs, &self.weight, b, bf16);
                    }
                    _ => {}
                }
            }
        }
        let (x, w) = match autocast::compute_dtype(xs) {
            // On the CPU: float32 products of rounded operands ([`autocast::round_through`]).
            d if xs.device().is_cpu() && d != xs.dtype() && self.weight.dtype() == xs.dtype() => (
                autocast::round_through(xs, d)?,
                autocast::round_through(&self.weight, d)?,
            ),
            d => (autocast::cast(xs, d)?, autocast::cast(&self.weight, d)?),
        };
        let w = match *x.dims() {
            [b1, b2, _, _] => w.broadcast_left((b1, b2))?.t()?,
            [b, _, _] => w.broadcast_left(b)?.t()?,
            _ => w.t()?,
        };
        // Under autocast the output is the weight's dtype (float32 logits from bf16
        // activations on CUDA); otherwise the input's.
        let out = match autocast::dtype() {
            Some(_) if is_reduced(xs.dtype()) && !is_reduced(self.weight.dtype()) => {
                self.weight.dtype()
            }
            _ => xs.dtype(),
        };
        let ys = autocast::cast(&x.matmul(&w)?, out)?;
        match &self.bias {
            Some(b) => ys.broadcast_add(&autocast::cast(b, out)?),
            None => Ok(ys),
        }
    }
}

fn is_reduced(dtype: candle_core::DType) -> bool {
    matches!(dtype, candle_core::DType::BF16 | candle_core::DType::F16)
}

/// `nn.Dropout(p)`: zeroes each element with probability `p` in training and scales the rest by
/// `1 / (1 - p)`; the identity in evaluation. Masks come from [`crate::rng`], so runs repeat:
/// one value per element on the CPU; on CUDA one seed per mask, for cuRAND's Philox generator
/// on the device (no mask made on the host and copied).
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    /// A dropout layer with drop probability `p` in [0, 1] (`p = 1` zeroes everything in
    /// training, as PyTorch's does).
    ///
    /// # Errors
    /// `p` outside [0, 1] or NaN, as `nn.Dropout` raises `ValueError`.
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            candle_core::bail!("dropout probability has to be between 0 and 1, but got {p}")
        }
        Ok(Self { p })
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        if self.p == 1.0 {
            // `input * zeros`, as PyTorch: zero gradients reach the layers before (and NaN
            // stays). (Candle's `affine(0, 0)` would cut the graph.)
            return xs.mul(&xs.zeros_like()?);
        }
        let keep = 1.0 - self.p as f64;
        // On CUDA the mask is drawn there (cuRAND's Philox, seeded from `crate::rng`).
        #[cfg(feature = "cuda")]
        if xs.device().is_cuda() {
            return crate::dropout_cuda::dropout(xs, keep);
        }
        let scale = (1.0 / keep) as f32;
        let n = xs.elem_count();
        // f32 on the CPU: one op, forward and backward one pass each (`x · m`, `g · m`), the
        // mask kept as one byte per element. The same draws and the same products as the
        // tensor formulation below, so the same bits.
        if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
            let keep_mask: Vec<bool> =
                crate::rng::with(|rng| (0..n).map(|_| rng.next_f64() < keep).collect());
            let op = DropoutCpu {
                keep: std::sync::Arc::new(keep_mask),
                scale,
            };
            return xs.contiguous()?.apply_op1(op);
        }
        let mask: Vec<f32> = crate::rng::with(|rng| {
            (0..n)
                .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
                .collect()
        });
        let mask = Tensor::from_vec(mask, xs.shape(), &candle_core::Device::Cpu)?
            .to_device(xs.device())?
            .to_dtype(xs.dtype())?;
        xs * mask
    }
}

/// Dropout's product on the CPU: `x · m`, with `m` = `scale` where `keep` holds and 0
/// elsewhere. Its gradient is the same product of the output's gradient, so the op is its own
/// backward. The element count of the input must be the mask's.
#[derive(Debug, Clone)]
struct DropoutCpu {
    keep: std::sync::Arc<Vec<bool>>,
    scale: f32,
}

impl candle_core::CustomOp1 for DropoutCpu {
    fn name(&self) -> &'static str {
        "dropout-cpu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = crate::per_channel::f32_slice(s, l, self.name(), "input")?;
        if x.len() != self.keep.len() {
            candle_core::bail!(
                "{}: {} values for a mask of {}",
                self.name(),
                x.len(),
                self.keep.len()
            )
        }
        const CHUNK: usize = 16 * 1024;
        let (keep, scale) = (&self.keep[..], self.scale);
        // SAFETY: each chunk writes every one of its elements.
        let y = unsafe {
            crate::fill::par_filled(x.len(), CHUNK, |i, out| {
                let at = i * CHUNK..i * CHUNK + out.len();
                for ((o, &x), &k) in out.iter_mut().zip(&x[at.clone()]).zip(&keep[at]) {
                    // 1·scale or 0·scale: the factor without a branch, so the loop vectorises.
                    o.write(x * (k as u8 as f32 * scale));
                }
            })
        };
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad.contiguous()?.apply_op1_no_bwd(self).map(Some)
    }
}

/// `torch.flatten(x, 1)`: keeps the batch dimension, flattens the rest: `(N, C, H, W)` to
/// `(N, C * H * W)`.
///
/// # Errors
/// `xs` has exactly one dimension.
pub fn flatten(xs: &Tensor) -> Result<Tensor> {
    xs.flatten_from(1)
}

/// Convolution without bias, batch norm, optionally ReLU: torchvision's `BasicConv2d`
/// (parameters `conv.weight`, `bn.*`).
#[derive(Debug, Clone)]
pub struct ConvBnRelu {
    /// The convolution.
    pub conv: Conv2d,
    /// The batch norm after it.
    pub bn: BatchNorm,
    /// Whether a ReLU follows.
    pub relu: bool,
}

impl ConvBnRelu {
    /// Builds `conv` (as [`conv2d`], no bias, its weight initialised by `init`: torchvision's
    /// GoogLeNet passes its truncated normal) and `bn` (`nn.BatchNorm2d(out_channels, eps =
    /// bn_eps)`) under `vb`. The block maps `(N, in_channels, H, W)` to `(N, out_channels, H',
    /// W')` as [`conv2d`] says.
    ///
    /// # Errors
    /// Those of [`conv2d`] and of the batch norm's parameters.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        cfg: Conv2dConfig,
        bn_eps: f64,
        relu: bool,
        init: WeightInit,
    ) -> Result<Self> {
        let conv = conv2d(
            vb.pp("conv"),
            in_channels,
            out_channels,
            kernel,
            cfg,
            false,
            init,
        )?;
        let bn = batch_norm(vb.pp("bn"), out_channels, bn_eps)?;
        Ok(Self { conv, bn, relu })
    }
}

impl ModuleT for ConvBnRelu {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.conv.forward_batch_norm(xs, &self.bn, self.relu, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn linear_matches_candle_and_autocasts_to_bf16() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.3, (5, 7), &dev)?;
        let b = Tensor::randn(0f32, 1., 5, &dev)?;
        let ours = Linear::new(w.clone(), Some(b.clone()));
        let theirs = candle_nn::Linear::new(w, Some(b));
        for x in [
            Tensor::randn(0f32, 1., (3, 7), &dev)?,
            Tensor::randn(0f32, 1., (2, 3, 7), &dev)?,
        ] {
            let (a, r) = (ours.forward(&x)?, theirs.forward(&x)?);
            assert_eq!(a.dims(), r.dims());
            let diff = (&a - &r)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{diff}");
            let _bf16 = crate::autocast::enable(DType::BF16)?;
            let h = ours.forward(&x)?;
            assert_eq!(h.dtype(), DType::F32);
            let diff = (&h - &r)?.abs()?.max_all()?.to_scalar::<f32>()?;
            // Batches (N, in) run the CPU op, in float32 without AVX512-BF16; other shapes
            // take float32 products of operands rounded to bf16 on every CPU.
            if crate::autocast::cpu_bf16_kernel_active() || x.rank() != 2 {
                assert!(diff > 0.0 && diff < 0.05, "bf16 differs by {diff}");
            } else {
                assert!(diff < 1e-5, "float32 products expected, differs by {diff}");
            }
        }
        Ok(())
    }

    /// One vector `(in,)` gives `(out,)`, the batch of one's row, as `nn.Linear` gives it
    /// (Candle's product refused it with a shape mismatch).
    #[test]
    fn one_vector_is_a_batch_of_one() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.3, (5, 7), &dev)?;
        let x = Tensor::randn(0f32, 1., 7, &dev)?;
        for bias in [None, Some(Tensor::randn(0f32, 1., 5, &dev)?)] {
            let linear = Linear::new(w.clone(), bias);
            let one = linear.forward(&x)?;
            assert_eq!(one.dims(), [5]);
            let row = linear.forward(&x.unsqueeze(0)?)?.squeeze(0)?;
            assert_eq!(one.to_vec1::<f32>()?, row.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn dropout_op_equals_the_mask_product_bit_for_bit() -> Result<()> {
        // Values across chunks, with a NaN, infinities, a negative zero and negatives.
        let n = 40_000;
        let mut values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        values[5] = f32::NAN;
        values[6] = f32::INFINITY;
        values[7] = f32::NEG_INFINITY;
        values[8] = -0.0;
        let x = candle_core::Var::from_vec(values, (4, 10, 1000), &Device::Cpu)?;
        let g = Tensor::randn(0f32, 1.0, (4, 10, 1000), &Device::Cpu)?;
        let d = Dropout::new(0.3)?;
        // The mask is redrawn from the thread's generator state before the call (the retry is
        // for a generator shared between threads, which it no longer is).
        let keep = 1.0 - 0.3f64;
        let scale = (1.0 / keep) as f32;
        let (ours, mask) = (0..20)
            .find_map(|_| {
                let before = crate::rng::state();
                let ours = d.forward_t(x.as_tensor(), true).ok()?;
                let mut rng = crate::rng::Rng::from_state(before);
                let mask: Vec<f32> = (0..n)
                    .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
                    .collect();
                (rng.state() == crate::rng::state()).then_some((ours, mask))
            })
            .expect("the generator was drawn by other tests 20 times in a row");
        let mask = Tensor::from_vec(mask, (4, 10, 1000), &Device::Cpu)?;
        let theirs = (x.as_tensor() * &mask)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        assert_eq!(bits(&ours)?, bits(&theirs)?);
        let kept = mask
            .ne(0f32)?
            .to_dtype(DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!((0.68..0.72).contains(&kept), "{kept}");
        let ga = (&ours * &g)?.sum_all()?.backward()?;
        let gb = (&theirs * &g)?.sum_all()?.backward()?;
        let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
        assert_eq!(bits(ga)?, bits(gb)?);
        Ok(())
    }

    #[test]
    fn dropout_is_identity_in_eval_scales_in_train_and_repeats_with_the_seed() -> Result<()> {
        let x = Tensor::ones((1000,), candle_core::DType::F32, &Device::Cpu)?;
        let d = Dropout::new(0.25)?;
        assert_eq!(
            d.forward_t(&x, false)?.to_vec1::<f32>()?,
            x.to_vec1::<f32>()?
        );
        let y: Vec<f32> = d.forward_t(&x, true)?.to_vec1()?;
        let zeros = y.iter().filter(|v| **v == 0.0).count();
        assert!((150..350).contains(&zeros), "{zeros} zeros");
        assert!(y
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        // The global generator is shared by every test in this process: seed and draw in one test.
        crate::rng::set_seed(11);
        let a: Vec<f32> = d.forward_t(&x, true)?.to_vec1()?;
        crate::rng::set_seed(11);
        let b: Vec<f32> = d.forward_t(&x, true)?.to_vec1()?;
        assert_eq!(a, b);
        Ok(())
    }

    /// `nn.Conv2d`'s checks of `groups`: positive, dividing both channel counts.
    #[test]
    fn conv2d_groups_are_checked() -> Result<()> {
        let store = crate::ParamStore::new(0, &Device::Cpu);
        let grouped = |groups: usize, name: &str| {
            let cfg = Conv2dConfig {
                groups,
                ..Default::default()
            };
            conv2d(
                store.vb().pp(name),
                6,
                4,
                3,
                cfg,
                false,
                WeightInit::TorchDefault,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let err = grouped(0, "a").unwrap_err();
        assert!(err.contains("groups must be a positive integer"), "{err}");
        let err = grouped(3, "b").unwrap_err();
        assert!(err.contains("must be divisible by groups (3)"), "{err}");
        assert!(grouped(2, "c").is_ok());
        Ok(())
    }

    /// `nn.Dropout`'s bounds: `p` in [0, 1], `p = 1` zeroes everything in training.
    #[test]
    fn dropout_probability_is_checked_when_built() -> Result<()> {
        for p in [-0.1, 1.5, f32::NAN] {
            let err = Dropout::new(p).unwrap_err().to_string();
            assert!(err.contains("between 0 and 1"), "{p}: {err}");
        }
        let x = Tensor::ones((8,), candle_core::DType::F32, &Device::Cpu)?;
        let all = Dropout::new(1.0)?;
        assert_eq!(all.forward_t(&x, true)?.to_vec1::<f32>()?, [0.0; 8]);
        // `input * 0`: the layers before still get a (zero) gradient, as in PyTorch.
        let v = candle_core::Var::from_tensor(&x)?;
        let grads = all.forward_t(v.as_tensor(), true)?.sum_all()?.backward()?;
        let g = grads.get(&v).expect("a gradient reaches the input");
        assert_eq!(g.to_vec1::<f32>()?, [0.0; 8]);
        assert_eq!(all.forward_t(&x, false)?.to_vec1::<f32>()?, [1.0; 8]);
        Ok(())
    }
}
