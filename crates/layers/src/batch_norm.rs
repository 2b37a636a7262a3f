//! `nn.BatchNorm2d` (and the ReLU that usually follows it) as one differentiable operation.
//!
//! Candle's `BatchNorm` normalises through a dozen tensor operations, each a node of the
//! autograd graph: a training step pays for every one of them forward, again backward, and once
//! more for the zero-filled gradient buffer Candle adds each node's gradient into. Here the
//! statistics are computed detached, the output is one custom operation over the input, the
//! weight and the bias, and its backward is PyTorch's closed form: a few passes over the
//! activation instead of several dozen, on every device. With the `cudnn` feature a float32
//! training step on CUDA is cuDNN's instead: one call forward, one backward (`cudnn.rs`).

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{
    CpuStorage, CustomOp3, DType, Layout, ModuleT, Result, Shape, Storage, Tensor, Var,
};

use crate::{memory_format, per_channel};

#[cfg(feature = "cudnn")]
pub(crate) mod cudnn;

/// Sums per-channel batch statistics over the processes of a data-parallel job: with one
/// installed ([`set_stats_sync`]), every training-mode [`BatchNorm`] normalises with the
/// statistics of the whole global batch and back-propagates through them (PyTorch's
/// `SyncBatchNorm`). The transport (MPI, NCCL) lives with the implementor; `layers` knows none.
pub trait StatsSync: Send + Sync {
    /// The element-wise sum over every process of `local`, a 1-D tensor (f32 or f64) on the
    /// model's device; the result has the same shape, dtype and device. Every process calls it
    /// the same number of times, in the same order, with tensors of the same length.
    ///
    /// Errors: the transport failed.
    fn all_reduce_sum(&self, local: &Tensor) -> Result<Tensor>;

    /// The values per channel over every process, given this process's `local` (N x H x W of
    /// its input), where the implementor knows it without asking the others (the step's global
    /// batch size); `None` (the default) has the batch norm all-reduce the count with its sums.
    /// Knowing it saves a read of the reduced count to the host in every batch norm's forward,
    /// which on a GPU would wait there for the reduction.
    fn global_count(&self, local: usize) -> Option<usize> {
        let _ = local;
        None
    }
}

thread_local! {
    static STATS_SYNC: RefCell<Option<Arc<dyn StatsSync>>> = const { RefCell::new(None) };
}

/// Installs (`Some`) or removes (`None`) the [`StatsSync`] of the training-mode batch norms
/// that run on this thread (forward and backward run on the training thread, as autocast);
/// returns the one it replaces.
pub fn set_stats_sync(sync: Option<Arc<dyn StatsSync>>) -> Option<Arc<dyn StatsSync>> {
    STATS_SYNC.with(|slot| slot.replace(sync))
}

#[cfg(test)]
thread_local! {
    /// Evaluation-mode batch norms run in place, or by the convolution's op, on this thread
    /// (`conv::batch_norm::EvalEpilogue`).
    pub(crate) static EVAL_IN_PLACE_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn stats_sync() -> Option<Arc<dyn StatsSync>> {
    STATS_SYNC.with(|slot| slot.borrow().clone())
}

/// Sums `parts` (1-D tensors) across the processes with one call of `sync`, returning them in
/// the same order and lengths.
fn all_reduce_parts(sync: &dyn StatsSync, parts: &[&Tensor]) -> Result<Vec<Tensor>> {
    let lengths: Vec<usize> = parts.iter().map(|p| p.elem_count()).collect();
    let total = sync.all_reduce_sum(&Tensor::cat(parts, 0)?)?;
    let mut at = 0;
    lengths
        .into_iter()
        .map(|len| {
            let part = total.narrow(0, at, len);
            at += len;
            part
        })
        .collect()
}

/// Batch normalisation over dimension 1 of an (N, C, ...) input, with PyTorch's semantics:
/// the biased batch variance normalises, the unbiased one enters the running estimate, and
/// `running = (1 - momentum) * running + momentum * batch`. Parameters `weight`, `bias`,
/// buffers `running_mean`, `running_var`. The output is in the input's memory format
/// ([`memory_format`](crate::memory_format)). PyTorch's other arguments: `momentum=None`
/// ([`BatchNorm::with_cumulative_average`]), `track_running_stats=False`
/// ([`BatchNorm::without_running_stats`]), `affine=False` (a constant weight and bias), all
/// through [`batch_norm2d`]'s [`BatchNormConfig`]. An empty input gives an empty output, the
/// running statistics unchanged, as PyTorch (under a [`StatsSync`] in training, where another
/// process has images; with none anywhere it is refused).
///
/// ```
/// use candle_core::{Device, ModuleT, Tensor};
///
/// let store = layers::ParamStore::new(0, &Device::Cpu);
/// let bn = layers::batch_norm(store.vb().pp("bn1"), 8, 1e-5)?;
/// let x = (Tensor::randn(0f32, 1.0, (4, 8, 5, 5), &Device::Cpu)? + 2.0)?;
/// let y = bn.forward_t(&x, true)?; // batch statistics; the running ones move towards them
/// let mean = y.mean_all()?.to_scalar::<f32>()?;
/// assert!(mean.abs() < 1e-5);
/// let y = bn.forward_relu(&x, false)?; // relu(bn(x)) with the running statistics
/// assert_eq!(y.dims(), x.dims());
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchNorm {
    /// `(running_mean, running_var)`; `None` without running statistics (PyTorch's
    /// `track_running_stats=False`, [`BatchNorm::without_running_stats`]).
    running: Option<(Var, Var)>,
    num_batches_tracked: Option<Var>,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    /// `None`: the cumulative average (PyTorch's `momentum=None`).
    momentum: Option<f64>,
    /// Only (N, C, H, W) input, as `nn.BatchNorm2d` ([`BatchNorm::as_batch_norm2d`]).
    images_only: bool,
}

impl BatchNorm {
    /// A batch norm over `weight.dim(0)` features. The running statistics are updated in place
    /// in training mode (they share storage with the given tensors when those are variables).
    ///
    /// # Errors
    /// A statistic or parameter whose shape is not `(C,)` for `C = weight.dim(0)`, a negative
    /// `eps`, or a `momentum` outside `[0, 1]`.
    pub fn new(
        running_mean: Tensor,
        running_var: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        Self::build(Some((running_mean, running_var)), weight, bias, eps)?.with_momentum(momentum)
    }

    /// A batch norm without running statistics, PyTorch's `track_running_stats=False`: the
    /// batch's own statistics normalise in training and in evaluation alike, and nothing is
    /// counted ([`BatchNorm::running_mean`] and [`BatchNorm::num_batches_tracked`] are `None`).
    ///
    /// # Errors
    /// As [`BatchNorm::new`].
    pub fn without_running_stats(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        Self::build(None, weight, bias, eps)
    }

    fn build(
        running: Option<(Tensor, Tensor)>,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    ) -> Result<Self> {
        let c = weight.elem_count();
        let mut named = vec![("weight", &weight), ("bias", &bias)];
        if let Some((running_mean, running_var)) = &running {
            named.extend([("running_mean", running_mean), ("running_var", running_var)]);
        }
        for &(name, t) in &named {
            if t.dims() != [c] {
                candle_core::bail!("batch-norm {name} has shape {:?}, expected [{c}]", t.dims())
            }
        }
        // Float32 (or float64) alike: the statistics' updates and the ops take them so, and
        // PyTorch's autocast keeps a batch norm's parameters float32 (bf16 compute here is
        // `autocast`'s too).
        let dtype = weight.dtype();
        for &(name, t) in &named {
            if !matches!(t.dtype(), DType::F32 | DType::F64) || t.dtype() != dtype {
                candle_core::bail!(
                    "batch-norm {name} is {:?} (weight {dtype:?}): its parameters and running \
                     statistics must be float32 (or float64), all alike; for bfloat16 compute \
                     keep them float32 and use autocast (`--precision bf16`, \
                     `layers::autocast`), as PyTorch's autocast does",
                    t.dtype()
                )
            }
        }
        if eps < 0.0 {
            candle_core::bail!("batch-norm eps {eps} must be at least 0")
        }
        let running = match running {
            Some((mean, var)) => Some((Var::from_tensor(&mean)?, Var::from_tensor(&var)?)),
            None => None,
        };
        Ok(Self {
            running,
            num_batches_tracked: None,
            weight,
            bias,
            eps,
            momentum: Some(0.1),
            images_only: false,
        })
    }

    /// The same batch norm taking only images `(N, C, H, W)`, as `nn.BatchNorm2d` takes them
    /// ([`batch_norm`] makes one): one image `(C, H, W)` (which [`Conv2d`](crate::Conv2d)
    /// takes unbatched, as PyTorch's) is refused, where read as `(N, C, L)` it would be
    /// normalised over its rows whenever its height is the channel count.
    pub fn as_batch_norm2d(self) -> Self {
        Self {
            images_only: true,
            ..self
        }
    }

    /// An error unless `xs` is (N, C, H, W) where [`BatchNorm::as_batch_norm2d`] says so.
    fn check_images(&self, xs: &Tensor) -> Result<()> {
        if self.images_only && xs.rank() != 4 {
            candle_core::bail!(
                "BatchNorm2d over {} channels got an input of shape {:?}: it takes images \
                 (N, C, H, W){}",
                self.weight.elem_count(),
                xs.dims(),
                if xs.rank() == 3 {
                    crate::unbatched::ONE_IMAGE
                } else {
                    ""
                }
            )
        }
        Ok(())
    }

    /// The same batch norm with the running statistics' `momentum` (PyTorch's: the weight of
    /// the batch's statistics, 0.1 by default), e.g. `nn.BatchNorm2d(c, momentum=0.01)`.
    ///
    /// Errors: `momentum` outside `[0, 1]`.
    pub fn with_momentum(self, momentum: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&momentum) {
            candle_core::bail!("batch-norm momentum {momentum} must lie in [0, 1]")
        }
        Ok(Self {
            momentum: Some(momentum),
            ..self
        })
    }

    /// The same batch norm with running statistics that are the cumulative (equal-weight)
    /// average of every training batch's statistics, PyTorch's `momentum=None`: the `k`-th
    /// training-mode pass moves them by `1 / k` of the way to the batch's, `k` counted in
    /// `num_batches_tracked` (a count starting at 0 is made here where
    /// [`BatchNorm::with_batches_tracked`] gave none: that one is in no `VarMap`, so a
    /// checkpoint does not keep it; [`batch_norm2d`] registers its count under the module's
    /// name, as PyTorch's `state_dict` holds it).
    ///
    /// Errors: the count could not be made on the parameters' device.
    pub fn with_cumulative_average(self) -> Result<Self> {
        let num_batches_tracked = match self.num_batches_tracked {
            Some(count) => Some(count),
            None if self.running.is_some() => {
                Some(Var::zeros((), DType::I64, self.weight.device())?)
            }
            None => None,
        };
        Ok(Self {
            momentum: None,
            num_batches_tracked,
            ..self
        })
    }

    /// The batch statistics' weight in the running ones (PyTorch's `momentum`); `None` for the
    /// cumulative average ([`BatchNorm::with_cumulative_average`]).
    pub fn momentum(&self) -> Option<f64> {
        self.momentum
    }

    /// Whether running statistics are kept (PyTorch's `track_running_stats`); without them
    /// evaluation mode normalises with the batch's statistics too.
    pub fn tracks_running_stats(&self) -> bool {
        self.running.is_some()
    }

    /// The same batch norm counting its training-mode passes in `count` (an int64 scalar,
    /// PyTorch's `num_batches_tracked` buffer), incremented in place.
    ///
    /// Errors: `count` is not an int64 scalar, or the batch norm keeps no running statistics
    /// (PyTorch has no `num_batches_tracked` then).
    pub fn with_batches_tracked(self, count: Tensor) -> Result<Self> {
        if self.running.is_none() {
            candle_core::bail!(
                "num_batches_tracked given to a batch norm without running statistics \
                 (track_running_stats=False counts no batches)"
            )
        }
        if count.dtype() != candle_core::DType::I64 || count.rank() != 0 {
            candle_core::bail!(
                "num_batches_tracked must be an int64 scalar, got {:?} {:?}",
                count.dtype(),
                count.dims()
            )
        }
        Ok(Self {
            num_batches_tracked: Some(Var::from_tensor(&count)?),
            ..self
        })
    }

    /// The training-mode passes so far (`num_batches_tracked`), if counted.
    pub fn num_batches_tracked(&self) -> Option<&Tensor> {
        self.num_batches_tracked.as_ref().map(Var::as_tensor)
    }

    /// The running mean (C); `None` without running statistics
    /// ([`BatchNorm::without_running_stats`]).
    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|(mean, _)| mean.as_tensor())
    }

    /// The running (unbiased) variance (C); `None` without running statistics.
    pub fn running_var(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|(_, var)| var.as_tensor())
    }

    /// The scale, gamma (C).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift, beta (C).
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// `F.relu(F.batch_norm(xs, ...))` on `(N, C, H, W)` (or `(N, C, ...)` where not made as
    /// `nn.BatchNorm2d`, [`BatchNorm::as_batch_norm2d`]) input, one operation in training mode;
    /// same shape out.
    ///
    /// # Errors
    /// `xs` has fewer than two dimensions (or not four, as `nn.BatchNorm2d`), or not `C`
    /// channels in dimension 1.
    pub fn forward_relu(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_inner(xs, train, true)
    }

    /// `F.relu(F.batch_norm(xs, ...) + residual)` on `(N, C, H, W)` (or `(N, C, ...)`, as
    /// [`BatchNorm::forward_relu`]) input and a
    /// residual of the same shape: a residual block's last batch norm and the join after it
    /// (torchvision's `out = self.bn3(out); out += identity; out = self.relu(out)`); same shape
    /// out. In training mode on f32 CPU tensors one operation each way, with the bits of
    /// [`forward_t`](ModuleT::forward_t) followed by [`add_relu`](crate::add_relu) (which it is
    /// elsewhere) and one autograd node fewer.
    ///
    /// # Errors
    /// `xs` has fewer than two dimensions (or not four, as `nn.BatchNorm2d`), or not `C`
    /// channels in dimension 1, or `residual` another shape.
    pub fn forward_add_relu(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        let tracked = [xs, residual, &self.weight, &self.bias];
        if crate::grad_mode::detach_first(&tracked.map(Some)) {
            let residual = residual.detach();
            return self
                .detached()
                .forward_add_relu(&xs.detach(), &residual, train);
        }
        // Without running statistics the batch's normalise in evaluation too, not synchronised
        // across processes (PyTorch's SyncBatchNorm syncs in training only).
        if !train && self.running.is_none() {
            return local_stats(|| self.forward_add_relu(xs, residual, true));
        }
        self.check_images(xs)?;
        let c = self.weight.elem_count();
        if xs.rank() < 2 || xs.dim(1)? != c || residual.dims() != xs.dims() {
            candle_core::bail!(
                "batch-norm over {c} features got an input of shape {:?} and a residual of shape {:?}",
                xs.dims(),
                residual.dims()
            )
        }
        if train {
            self.refuse_one_value(xs)?;
        }
        // Channels-last on the CPU: the (N, C, H, W) path on contiguous copies, the output
        // channels-last. On CUDA the batch norm below keeps the format, and so does the join.
        if memory_format::is_channels_last(xs) && xs.device().is_cpu() {
            let r = residual.contiguous()?;
            return memory_format::keep(xs, |xs| self.forward_add_relu(xs, &r, train));
        }
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        let fused = train
            && stats_sync().is_none()
            && xs.elem_count() > 0
            && f32_cpu(xs)
            && f32_cpu(residual)
            && f32_cpu(&self.weight)
            && f32_cpu(&self.bias);
        if !fused {
            return crate::add_relu(&self.forward_t(xs, train)?, residual);
        }
        let (n, l) = (xs.dim(0)?, xs.elem_count() / (xs.dim(0)? * c).max(1));
        let x = xs.contiguous()?.reshape((n, c, l))?;
        let (mean, invstd) = self.cpu_stats(&x)?;
        let wb = Tensor::cat(&[&self.weight, &self.bias], 0)?;
        let r = residual.contiguous()?.reshape((n, c, l))?;
        x.apply_op3(&r, &wb, per_channel::BatchNormAddRelu { mean, invstd })?
            .reshape(xs.shape())
    }

    fn forward_inner(&self, xs: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if crate::grad_mode::detach_first(&[Some(xs), Some(&self.weight), Some(&self.bias)]) {
            return self.detached().forward_inner(&xs.detach(), train, relu);
        }
        // Without running statistics the batch's normalise in evaluation too, not synchronised
        // across processes (PyTorch's SyncBatchNorm syncs in training only).
        if !train && self.running.is_none() {
            return local_stats(|| self.forward_inner(xs, true, relu));
        }
        self.check_images(xs)?;
        let c = self.weight.elem_count();
        if xs.rank() < 2 || xs.dim(1)? != c {
            candle_core::bail!(
                "batch-norm over {c} features got an input of shape {:?}",
                xs.dims()
            )
        }
        if xs.elem_count() == 0 && stats_sync().is_none() {
            return self.empty_batch(xs, train);
        }
        if train {
            self.refuse_one_value(xs)?;
        }
        if memory_format::is_channels_last(xs) {
            // cuDNN's NHWC batch norm in training on CUDA, on the (N, H, W, C) view.
            #[cfg(feature = "cudnn")]
            if let Some(ys) = self.train_nhwc(xs, train, relu)? {
                return Ok(ys);
            }
            // Evaluation: the same per-channel scale and shift, over the (N, H, W, C) view.
            if !train {
                let dtype = match xs.dtype() {
                    DType::F16 | DType::BF16 => DType::F32,
                    d => d,
                };
                let v = memory_format::nhwc(xs)?.ok_or_else(|| {
                    candle_core::Error::Msg("batch-norm: no channels-last view".into())
                })?;
                let ys = self.eval(&v.to_dtype(dtype)?, relu, 3)?;
                return memory_format::from_nhwc(&ys.to_dtype(xs.dtype())?);
            }
            // Elsewhere the (N, C, H, W) path on a contiguous copy, handed on channels-last.
            return memory_format::keep(xs, |xs| self.forward_inner(xs, train, relu));
        }
        let (n, l) = (xs.dim(0)?, xs.elem_count() / (xs.dim(0)? * c).max(1));
        // A bfloat16 or float16 input in training on CUDA (what convolutions hand on under
        // autocast there): cuDNN's mixed-precision batch norm, output in the input's dtype, as
        // PyTorch. Where cuDNN refuses the dtype at this shape, the float32 path below, for
        // that shape from then on.
        #[cfg(feature = "cudnn")]
        if train
            && matches!(xs.dtype(), DType::F16 | DType::BF16)
            && n * l >= 2
            && stats_sync().is_none()
            && cudnn::supports(self, xs)
            && cudnn::reduced_allowed([n, c, l], xs.dtype(), false)
        {
            if let Some(ys) = cudnn::train_reduced(self, &xs.reshape((n, c, l))?, relu, false)? {
                return ys.reshape(xs.shape());
            }
        }
        let dtype = match xs.dtype() {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = xs.to_dtype(dtype)?.reshape((n, c, l))?;
        let ys = if train {
            self.train(&x, relu)?
        } else {
            self.eval(&x, relu, 1)?
        };
        ys.reshape(xs.shape())?.to_dtype(xs.dtype())
    }

    /// The training step of a channels-last `xs` (N, C, H, W) through cuDNN's NHWC batch norm,
    /// channels-last out, where cuDNN takes it (as in [`forward_inner`](Self::forward_inner):
    /// training, no cross-process statistics, a dtype it normalises); `None` otherwise.
    #[cfg(feature = "cudnn")]
    fn train_nhwc(&self, xs: &Tensor, train: bool, relu: bool) -> Result<Option<Tensor>> {
        let (n, c, h, w) = xs.dims4()?;
        if !train || n * h * w < 2 || stats_sync().is_some() || !cudnn::supports(self, xs) {
            return Ok(None);
        }
        let Some(v) = memory_format::nhwc(xs)? else {
            return Ok(None);
        };
        let v = v.reshape((n, h * w, c))?;
        let ys = match xs.dtype() {
            DType::F16 | DType::BF16 if cudnn::reduced_allowed([n, c, h * w], xs.dtype(), true) => {
                cudnn::train_reduced(self, &v, relu, true)?
            }
            // cuDNN refused the reduced dtype: float32 there and back, channels-last.
            DType::F16 | DType::BF16 => {
                let ys = cudnn::train(self, &v.to_dtype(DType::F32)?, relu, true)?;
                Some(ys.to_dtype(xs.dtype())?)
            }
            _ => Some(cudnn::train(self, &v, relu, true)?),
        };
        match ys {
            Some(ys) => Ok(Some(memory_format::from_nhwc(&ys.reshape((n, h, w, c))?)?)),
            None => Ok(None),
        }
    }

    /// PyTorch's batch norm of an empty input `xs` (N, C, ...) (`N` or a spatial size 0): an
    /// empty output of its shape and dtype, in the graph (the weight's and bias's gradients are
    /// zeros, as PyTorch's: Candle's arithmetic on an empty tensor would leave them out), the
    /// running statistics as they were; in training one more batch counted.
    fn empty_batch(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && self.running.is_some() {
            self.count_batch()?;
        }
        crate::empty::output(xs.dims(), xs.dtype(), [xs, &self.weight, &self.bias])
    }

    /// PyTorch's refusal of one value per channel in training (`(1, C)`, `(1, C, 1, 1)`), after
    /// counting the pass as PyTorch does (its module counts before `F.batch_norm` refuses; the
    /// cumulative average's later factors depend on it). Under a [`StatsSync`] the whole global
    /// batch's count decides, later.
    fn refuse_one_value(&self, xs: &Tensor) -> Result<()> {
        let (n, c) = (xs.dim(0)?, xs.dim(1)?);
        let l = xs.elem_count() / (n * c).max(1);
        if n * l == 1 && stats_sync().is_none() {
            if self.running.is_some() {
                self.count_batch()?;
            }
            candle_core::bail!(
                "batch-norm in training needs more than one value per channel, got input (N, C, L) = ({n}, {c}, {l})"
            )
        }
        Ok(())
    }

    /// The evaluation-mode `relu?(x * scale + shift)` of `x` whose channels are dimension
    /// `axis` (1 of (N, C, L), 3 of a channels-last tensor's (N, H, W, C) view).
    fn eval(&self, x: &Tensor, relu: bool, axis: usize) -> Result<Tensor> {
        let (scale, shift) = self.eval_scale_shift()?;
        let mut dims = vec![1; x.rank()];
        dims[axis] = scale.elem_count();
        let ys = x
            .broadcast_mul(&scale.reshape(dims.as_slice())?)?
            .broadcast_add(&shift.reshape(dims.as_slice())?)?;
        if relu {
            // NaN stays NaN, as torch.relu (Candle's `relu` makes it 0).
            crate::activation::relu(&ys)
        } else {
            Ok(ys)
        }
    }

    /// The same batch norm with detached weight and bias ([`crate::no_grad`]); the running
    /// statistics are shared, and still move in training mode, as under `torch.no_grad()`.
    pub(crate) fn detached(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            ..self.clone()
        }
    }

    /// Evaluation mode's per-channel `scale = weight / sqrt(running_var + eps)` and `shift =
    /// bias - running_mean · scale`, (C) each.
    fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let Some((running_mean, running_var)) = &self.running else {
            candle_core::bail!("batch-norm: no running statistics to evaluate with")
        };
        let invstd = (running_var.as_detached_tensor() + self.eps)?
            .sqrt()?
            .recip()?;
        let scale = (&self.weight * invstd)?;
        let shift = (&self.bias - (running_mean.as_detached_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// Evaluation mode on a convolution's fresh output `ys` (N, C, H, W), in place where
    /// nothing needs a gradient: `relu?(ys · scale + shift)`, or `relu(ys · scale + shift +
    /// residual)`, in one pass over `ys` with no new tensor, the same values bit for bit as
    /// [`forward_after`](Self::forward_after) in evaluation mode (the product and the sums
    /// rounded one by one, as there). Returns whether it ran: only for contiguous f32 CPU
    /// tensors (a residual of `ys`'s shape) of which none is tracked by autograd (inference
    /// under [`crate::no_grad`], or a frozen network), `ys` held by the caller alone.
    pub(crate) fn eval_in_place(
        &self,
        ys: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
    ) -> Result<bool> {
        let plain = ys.device().is_cpu()
            && ys.dtype() == DType::F32
            && ys.is_contiguous()
            && !ys.track_op()
            && !memory_format::is_channels_last(ys);
        let Some(epilogue) = plain
            .then(|| self.eval_epilogue(ys.dims(), relu, residual))
            .transpose()?
            .flatten()
        else {
            return Ok(false);
        };
        epilogue.in_place(ys)?;
        Ok(true)
    }

    /// This batch norm in evaluation mode as a convolution's op applies it to an output of
    /// `dims` (N, C, ...) where nothing needs a gradient ([`Self::eval_in_place`]'s
    /// conditions): the parameters f32 CPU tensors not tracked by autograd, a residual (of
    /// `dims`) contiguous, f32, on the CPU and untracked. `None` where they do not hold.
    pub(crate) fn eval_epilogue(
        &self,
        dims: &[usize],
        relu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Option<crate::conv::batch_norm::EvalEpilogue>> {
        let plain = |t: &Tensor| {
            t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && !t.track_op()
        };
        let c = self.weight.elem_count();
        if self.running.is_none()
            || dims.len() < 2
            || dims[1] != c
            || [&self.weight, &self.bias]
                .into_iter()
                .any(|p| p.track_op() || !p.device().is_cpu() || p.dtype() != DType::F32)
            || residual.is_some_and(|r| {
                !plain(r) || r.dims() != dims || memory_format::is_channels_last(r)
            })
        {
            return Ok(None);
        }
        let (scale, shift) = self.eval_scale_shift()?;
        Ok(Some(crate::conv::batch_norm::EvalEpilogue {
            scale: scale.to_vec1::<f32>()?,
            shift: shift.to_vec1::<f32>()?,
            // A residual join always ends in a ReLU, as in `forward_add_relu`.
            relu: relu || residual.is_some(),
            residual: residual.cloned(),
        }))
    }

    fn train(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (n, c, l) = x.dims3()?;
        let sync = stats_sync();
        if sync.is_none()
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
        {
            return self.train_cpu(x, relu);
        }
        #[cfg(feature = "cudnn")]
        if sync.is_none() && cudnn::supports(self, x) {
            return cudnn::train(self, x, relu, false);
        }
        let detached = x.detach();
        // Local sums; under a StatsSync the whole global batch's, reduced with the count.
        let known = sync.as_ref().and_then(|sync| sync.global_count(n * l));
        let (sum, count) = match (&sync, known) {
            (None, _) => (sum_per_channel(&detached)?, (n * l) as f64),
            (Some(sync), Some(count)) => (
                sync.all_reduce_sum(&sum_per_channel(&detached)?)?,
                count as f64,
            ),
            (Some(sync), None) => {
                let local = Tensor::new(&[(n * l) as f32], x.device())?.to_dtype(x.dtype())?;
                let parts =
                    all_reduce_parts(sync.as_ref(), &[&sum_per_channel(&detached)?, &local])?;
                let count = parts[1].to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
                (parts[0].clone(), count.round())
            }
        };
        if count < 2.0 {
            candle_core::bail!(
                "batch-norm in training needs more than one value per channel, got input (N, C, L) = ({n}, {c}, {l}){}",
                if sync.is_some() { format!(", {count} values per channel over all processes") } else { String::new() }
            )
        }
        let mean = (sum / count)?;
        let centered = detached.broadcast_sub(&mean.reshape((1, c, 1))?)?;
        let squares = sum_per_channel(&centered.sqr()?)?;
        let squares = match &sync {
            None => squares,
            Some(sync) => sync.all_reduce_sum(&squares)?,
        };
        let var = (squares / count)?;
        self.update_running(&mean, &var, count)?;
        let invstd = (var + self.eps)?.sqrt()?.recip()?;
        let ys = x.apply_op3(
            &self.weight.to_dtype(x.dtype())?,
            &self.bias.to_dtype(x.dtype())?,
            BatchNormOp {
                centered: centered.contiguous()?,
                invstd,
                count,
                sync,
            },
        )?;
        match relu {
            // NaN stays NaN, as torch.relu (Candle's `relu` makes it 0).
            true => crate::activation::relu(&ys),
            false => Ok(ys),
        }
    }

    /// [`train`](Self::train) for an f32 CPU input: statistics, output and backward in a few
    /// passes ([`per_channel`](crate::per_channel)).
    fn train_cpu(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (mean, invstd) = self.cpu_stats(&x)?;
        x.apply_op3(
            &self.weight.contiguous()?,
            &self.bias.contiguous()?,
            per_channel::BatchNormTrain { mean, invstd, relu },
        )
    }

    /// The batch mean and `1 / sqrt(var + eps)` of a contiguous f32 CPU (N, C, L) input, with
    /// the running statistics updated.
    fn cpu_stats(&self, x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let (n, c, l) = x.dims3()?;
        if n * l < 2 {
            candle_core::bail!(
                "batch-norm in training needs more than one value per channel, got input (N, C, L) = ({n}, {c}, {l})"
            )
        }
        let Some((mean, var)) =
            per_channel::with_f32(x, |v| per_channel::batch_stats(v, (n, c, l)))
        else {
            candle_core::bail!("batch-norm: expected a contiguous f32 CPU input")
        };
        let eps = self.eps as f32;
        let invstd: Vec<f32> = var.iter().map(|v| (v + eps).sqrt().recip()).collect();
        let dev = x.device();
        self.update_running(
            &Tensor::from_slice(&mean, c, dev)?,
            &Tensor::from_vec(var, c, dev)?,
            (n * l) as f64,
        )?;
        Ok((mean, invstd))
    }

    /// The batch norm for a convolution's op to run after it ([`crate::Conv2d::forward_batch_norm`]),
    /// with `residual` added before the ReLU, or `pool` after it: `None` unless training on f32
    /// CPU tensors (input, kernel, weight, bias, residual) with no bias on the convolution and no
    /// cross-process statistics; with a residual, also unless the output has at least four times the kernel's
    /// values (the kernel is copied once each way to travel with the batch norm's parameters).
    pub(crate) fn conv_epilogue(
        &self,
        (xs, kernel, conv_bias): (&Tensor, &Tensor, bool),
        relu: bool,
        residual: Option<&Tensor>,
        pool: Option<&crate::Pool2d>,
        train: bool,
    ) -> Result<Option<crate::conv::batch_norm::Epilogue>> {
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        // (Batches of two images or more: an empty one or one of a single value per channel
        // takes the path apart, which returns or refuses it as PyTorch does.)
        let applies = train
            && !conv_bias
            && stats_sync().is_none()
            && xs.dims().first().is_some_and(|&n| n >= 2)
            && [xs, kernel, &self.weight, &self.bias]
                .into_iter()
                .all(f32_cpu)
            && kernel.rank() == 4
            && kernel.dim(0)? == self.weight.elem_count()
            && residual.is_none_or(|r| {
                // A frozen kernel would pay for its gradient there (it travels with the batch
                // norm's parameters).
                f32_cpu(r) && r.elem_count() >= 4 * kernel.elem_count() && kernel.track_op()
            });
        if !applies {
            return Ok(None);
        }
        Ok(Some(crate::conv::batch_norm::Epilogue {
            wb: Tensor::cat(&[&self.weight, &self.bias], 0)?,
            eps: self.eps as f32,
            relu,
            residual: residual.cloned(),
            pool: pool.map(|p| Arc::new(crate::pool::Inner::new(*p))),
            saved: Default::default(),
        }))
    }

    /// `relu?(self(ys))`, or `relu(self(ys) + residual)`.
    pub(crate) fn forward_after(
        &self,
        ys: &Tensor,
        relu: bool,
        residual: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        match residual {
            Some(r) => self.forward_add_relu(ys, r, train),
            None => self.forward_inner(ys, train, relu),
        }
    }

    /// The running statistics updated from the batch statistics a fused op left.
    pub(crate) fn update_from(&self, epilogue: &crate::conv::batch_norm::Epilogue) -> Result<()> {
        let Some(saved) = epilogue.saved.get() else {
            candle_core::bail!("batch-norm: the fused convolution left no statistics")
        };
        let (n, c, l) = saved.y.dims3()?;
        let dev = saved.y.device();
        self.update_running(
            &Tensor::from_slice(&saved.mean, c, dev)?,
            &Tensor::from_slice(&saved.var, c, dev)?,
            (n * l) as f64,
        )
    }

    /// `running = (1 - momentum) running + momentum batch`, the variance unbiased, and one more
    /// batch tracked; nothing without running statistics.
    fn update_running(&self, mean: &Tensor, var: &Tensor, count: f64) -> Result<()> {
        let Some((running_mean, running_var)) = &self.running else {
            return Ok(());
        };
        let m = self.next_momentum()?;
        let unbiased = count / (count - 1.0);
        running_mean.set(&((running_mean.as_detached_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        self.count_batch()?;
        running_var
            .set(&((running_var.as_detached_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?)
    }

    /// The weight of the next training batch's statistics in the running ones: the momentum,
    /// or for the cumulative average `1 / k` where this is the `k`-th batch counted (PyTorch's
    /// `exponential_average_factor`, read before the count moves).
    pub(crate) fn next_momentum(&self) -> Result<f64> {
        match (self.momentum, &self.num_batches_tracked) {
            (Some(m), _) => Ok(m),
            (None, Some(count)) => {
                let k = count.as_tensor().to_scalar::<i64>()? + 1;
                Ok(1.0 / k as f64)
            }
            (None, None) => {
                candle_core::bail!("batch-norm: the cumulative average needs num_batches_tracked")
            }
        }
    }

    /// One more training-mode pass in `num_batches_tracked`, if counted.
    fn count_batch(&self) -> Result<()> {
        if let Some(count) = &self.num_batches_tracked {
            let one = Tensor::ones((), candle_core::DType::I64, count.device())?;
            count.set(&(count.as_detached_tensor() + one)?)?;
        }
        Ok(())
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_inner(xs, train, false)
    }
}

/// `f()` with no [`StatsSync`] installed on this thread (then the one before again).
fn local_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let previous = set_stats_sync(None);
    let result = f();
    set_stats_sync(previous);
    result
}

/// Sum of an (N, C, L) tensor over N and L, as (C): the contiguous axis first.
fn sum_per_channel(x: &Tensor) -> Result<Tensor> {
    x.sum(2)?.sum(0)
}

/// The training-mode output `centered * weight * invstd + bias` of an (N, C, L) input,
/// with the batch statistics already taken; its backward is the closed form of the gradient
/// through the batch mean and variance. Under a [`StatsSync`], `count` is the global batch's
/// values per channel and the backward's two per-channel sums are reduced across processes
/// for the input's gradient; the weight's and bias's stay this process's share (the gradient
/// all-reduce of data-parallel training sums them).
struct BatchNormOp {
    centered: Tensor,
    invstd: Tensor,
    count: f64,
    sync: Option<Arc<dyn StatsSync>>,
}

impl BatchNormOp {
    /// The forward on whichever backend holds the tensors: a per-channel scale and shift, as
    /// Candle's own broadcast kernels.
    fn fwd<S: BackendStorage>(
        &self,
        weight: (&S, &Layout),
        bias: (&S, &Layout),
        centered: (&S, &Layout),
        invstd: (&S, &Layout),
    ) -> Result<(S, Shape)> {
        let (cs, cl) = centered;
        let shape = cl.shape().clone();
        let per_channel = |l: &Layout| {
            let mut stride = vec![0; 3];
            stride[1] = l.stride()[0];
            Layout::new(shape.clone(), stride, l.start_offset())
        };
        let scale = weight.0.binary_impl::<Mul>(invstd.0, weight.1, invstd.1)?;
        let scale_l = per_channel(&Layout::contiguous(weight.1.shape().clone()));
        let ys = cs.binary_impl::<Mul>(&scale, cl, &scale_l)?;
        let out = Layout::contiguous(shape.clone());
        let ys = ys.binary_impl::<Add>(bias.0, &out, &per_channel(bias.1))?;
        Ok((ys, shape))
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (c, cl) = self.centered.storage_and_layout();
        let (i, il) = self.invstd.storage_and_layout();
        match (&*c, &*i) {
            (Storage::Cpu(c), Storage::Cpu(i)) => self.fwd((w, wl), (b, bl), (c, cl), (i, il)),
            _ => candle_core::bail!("batch-norm: statistics and input on different devices"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (c, cl) = self.centered.storage_and_layout();
        let (i, il) = self.invstd.storage_and_layout();
        match (&*c, &*i) {
            (Storage::Cuda(c), Storage::Cuda(i)) => self.fwd((w, wl), (b, bl), (c, cl), (i, il)),
            _ => candle_core::bail!("batch-norm: statistics and input on different devices"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _ys: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.centered.dim(1)?;
        let count = self.count;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1));
        let grad_sum = sum_per_channel(grad)?;
        let grad_dot = sum_per_channel(&(grad * &self.centered)?)?;
        let grad_w = (&grad_dot * &self.invstd)?;
        let (grad_sum_all, grad_dot_all) = match &self.sync {
            None => (grad_sum.clone(), grad_dot.clone()),
            Some(sync) => {
                let parts = all_reduce_parts(sync.as_ref(), &[&grad_sum, &grad_dot])?;
                (parts[0].clone(), parts[1].clone())
            }
        };
        let grad_x = if x.track_op() {
            // dx = w invstd / M * (M g - sum g - xhat * sum(g xhat)), xhat = centered * invstd.
            let a = (w * &self.invstd)?;
            let k = ((&a * self.invstd.sqr()?)? * &grad_dot_all)?.affine(-1.0 / count, 0.0)?;
            let shift = (&a * &grad_sum_all)?.affine(-1.0 / count, 0.0)?;
            let gx = (grad.broadcast_mul(&per_channel(&a)?)?
                + self.centered.broadcast_mul(&per_channel(&k)?)?)?
            .broadcast_add(&per_channel(&shift)?)?;
            Some(gx)
        } else {
            None
        };
        // A frozen weight or bias gets no gradient (PyTorch leaves its `.grad` None); the sums
        // above are still taken (and reduced across ranks) for the input's gradient.
        Ok((
            grad_x,
            w.track_op().then_some(grad_w),
            b.track_op().then_some(grad_sum),
        ))
    }
}

/// `nn.BatchNorm2d(num_features, eps)` with momentum 0.1 ([`BatchNorm::with_momentum`] sets
/// another), weight 1 and bias 0, parameters and buffers (`running_mean`, `running_var`,
/// `num_batches_tracked`) under `vb`'s prefix; it takes images (N, C, H, W) only
/// ([`BatchNorm::as_batch_norm2d`]). [`batch_norm2d`] takes PyTorch's other arguments.
///
/// # Errors
/// `vb` holds tensors of other shapes under these names.
pub fn batch_norm(vb: candle_nn::VarBuilder, num_features: usize, eps: f64) -> Result<BatchNorm> {
    batch_norm2d(
        vb,
        num_features,
        BatchNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// `nn.BatchNorm2d`'s arguments after `num_features`, with its defaults
/// (`BatchNormConfig::default()`: `eps=1e-5, momentum=0.1, affine=True,
/// track_running_stats=True`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance.
    pub eps: f64,
    /// The batch statistics' weight in the running ones; `None` for their cumulative average
    /// ([`BatchNorm::with_cumulative_average`]).
    pub momentum: Option<f64>,
    /// A learnable per-channel `weight` and `bias`; without them the scale is 1 and the shift
    /// 0, and neither is a parameter.
    pub affine: bool,
    /// Keep `running_mean`, `running_var` and `num_batches_tracked` for evaluation mode;
    /// without them evaluation normalises with the batch's statistics
    /// ([`BatchNorm::without_running_stats`]).
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// `nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)`: the parameters
/// (`weight` 1, `bias` 0, where `affine`) and buffers (`running_mean` 0, `running_var` 1,
/// `num_batches_tracked` 0, where `track_running_stats`) under `vb`'s prefix, the same names
/// (and so the same `state_dict` keys) as PyTorch's module; it takes images (N, C, H, W) only
/// ([`BatchNorm::as_batch_norm2d`]).
///
/// ```
/// use candle_core::{Device, ModuleT, Tensor};
/// use layers::BatchNormConfig;
///
/// let store = layers::ParamStore::new(0, &Device::Cpu);
/// let config = BatchNormConfig { momentum: None, affine: false, ..Default::default() };
/// let bn = layers::batch_norm2d(store.vb().pp("bn"), 3, config)?;
/// for shift in [1.0, 3.0] {
///     let x = (Tensor::randn(0f32, 1.0, (4, 3, 5, 5), &Device::Cpu)? + shift)?;
///     bn.forward_t(&x, true)?;
/// }
/// // The running mean is the average of the two batches' means, about 2.
/// let mean = bn.running_mean().expect("tracked").mean_all()?.to_scalar::<f32>()?;
/// assert!((mean - 2.0).abs() < 0.5);
/// # Ok::<(), candle_core::Error>(())
/// ```
///
/// # Errors
/// `vb` holds tensors of other shapes under these names, a negative `eps` or a momentum
/// outside `[0, 1]`.
pub fn batch_norm2d(
    vb: candle_nn::VarBuilder,
    num_features: usize,
    config: BatchNormConfig,
) -> Result<BatchNorm> {
    use candle_nn::Init;
    let (weight, bias) = if config.affine {
        (
            vb.get_with_hints(num_features, "weight", Init::Const(1.))?,
            vb.get_with_hints(num_features, "bias", Init::Const(0.))?,
        )
    } else {
        (
            Tensor::ones(num_features, vb.dtype(), vb.device())?,
            Tensor::zeros(num_features, vb.dtype(), vb.device())?,
        )
    };
    let bn = if config.track_running_stats {
        let running_mean = vb.get_with_hints(num_features, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(num_features, "running_var", Init::Const(1.))?;
        let count = vb.get_with_hints_dtype(
            (),
            "num_batches_tracked",
            Init::Const(0.),
            candle_core::DType::I64,
        )?;
        BatchNorm::new(running_mean, running_var, weight, bias, config.eps, 0.1)?
            .with_batches_tracked(count)?
    } else {
        BatchNorm::without_running_stats(weight, bias, config.eps)?
    };
    let bn = match config.momentum {
        Some(m) => bn.with_momentum(m)?,
        None => bn.with_cumulative_average()?,
    };
    Ok(bn.as_batch_norm2d())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::bits;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> Result<()> {
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        assert!(diff <= tol * scale, "differ by {diff} (scale {scale})");
        Ok(())
    }

    /// Ours and Candle's batch norm on the same input, with the same parameters.
    fn pair(c: usize, dev: &Device) -> Result<(BatchNorm, candle_nn::BatchNorm, Var, Var)> {
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, c, dev)?)?;
        let rm = Tensor::randn(0f32, 0.1, c, dev)?;
        let rv = (Tensor::rand(0.5f32, 1.5, c, dev)?).contiguous()?;
        let ours = BatchNorm::new(
            rm.copy()?,
            rv.copy()?,
            w.as_tensor().clone(),
            b.as_tensor().clone(),
            1e-5,
            0.1,
        )?;
        let theirs = candle_nn::BatchNorm::new(
            c,
            rm,
            rv,
            w.as_tensor().clone(),
            b.as_tensor().clone(),
            1e-5,
        )?;
        Ok((ours, theirs, w, b))
    }

    /// The fused `forward_add_relu` gives the bits of `forward_t` then `add_relu`: output,
    /// gradients of the input, the residual, the weight and the bias, running statistics; in
    /// training and evaluation; 2-D and 4-D inputs, a tracked and an untracked residual; a
    /// residual of another shape is an error; short rows and long ones (32 values and more).
    #[test]
    fn batch_norm_add_relu_equals_the_two_operations() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, tracked) in [
            (vec![4, 3, 5, 6], true),
            (vec![6, 5], true),
            (vec![3, 8, 2, 2], false),
            // Rows of 32 values and more; of 256 and more, the residual's gradient made in the
            // sums' pass.
            (vec![3, 4, 6, 7], true),
            (vec![2, 3, 8, 8], false),
            (vec![3, 2, 16, 17], true),
        ] {
            let c = shape[1];
            for train in [true, false] {
                let (fused, _, w1, b1) = pair(c, &dev)?;
                let (w2, b2) = (
                    Var::from_tensor(w1.as_tensor())?,
                    Var::from_tensor(b1.as_tensor())?,
                );
                let plain = BatchNorm::new(
                    fused.running_mean().expect("running statistics").copy()?,
                    fused.running_var().expect("running statistics").copy()?,
                    w2.as_tensor().clone(),
                    b2.as_tensor().clone(),
                    1e-5,
                    0.1,
                )?;
                let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, &shape[..], &dev)? + 1.0)?)?;
                let mut r0 = Tensor::randn(0f32, 1.0, &shape[..], &dev)?;
                if tracked && shape.len() == 4 {
                    // A NaN in the residual: both give NaN there and pass its gradient.
                    let mut v = r0.flatten_all()?.to_vec1::<f32>()?;
                    v[5] = f32::NAN;
                    r0 = Tensor::from_vec(v, &shape[..], &dev)?;
                }
                let r = Var::from_tensor(&r0)?;
                let res = if tracked {
                    r.as_tensor().clone()
                } else {
                    r0.clone()
                };
                let up = Tensor::randn(0f32, 1.0, &shape[..], &dev)?;
                let ya = fused.forward_add_relu(x.as_tensor(), &res, train)?;
                let yb = crate::add_relu(&plain.forward_t(x.as_tensor(), train)?, &res)?;
                assert_eq!(bits(&ya)?, bits(&yb)?, "{shape:?} train {train}: outputs");
                for (a, b) in [
                    (
                        fused.running_mean().expect("running statistics"),
                        plain.running_mean().expect("running statistics"),
                    ),
                    (
                        fused.running_var().expect("running statistics"),
                        plain.running_var().expect("running statistics"),
                    ),
                ] {
                    assert_eq!(bits(a)?, bits(b)?, "{shape:?}: running statistics");
                }
                let ga = (&ya * &up)?.sum_all()?.backward()?;
                let gb = (&yb * &up)?.sum_all()?.backward()?;
                let pairs = [
                    (&x, &x, "input"),
                    (&w1, &w2, "weight"),
                    (&b1, &b2, "bias"),
                    (&r, &r, "residual"),
                ];
                for (va, vb, what) in pairs {
                    let (a, b) = (ga.get(va.as_tensor()), gb.get(vb.as_tensor()));
                    match (a, b) {
                        (Some(a), Some(b)) => {
                            assert_eq!(bits(a)?, bits(b)?, "{shape:?} train {train}: {what}")
                        }
                        (None, None) => assert!(!tracked && what == "residual"),
                        _ => panic!("{shape:?} train {train}: {what} gradient in one only"),
                    }
                }
            }
        }
        let (bn, _, _, _) = pair(3, &dev)?;
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev)?;
        assert!(bn.forward_add_relu(&x, &x.narrow(2, 0, 2)?, true).is_err());
        Ok(())
    }

    #[test]
    fn matches_candle_forward_backward_and_running_statistics() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, relu) in [
            ((4, 3, 5, 6), false),
            ((8, 5, 3, 3), true),
            ((2, 4, 1, 1), false),
        ] {
            let c = shape.1;
            let (ours, theirs, w, b) = pair(c, &dev)?;
            // An offset mean checks that the statistics are centred before squaring.
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape, &dev)? + 3.0)?)?;
            let upstream = Tensor::randn(0f32, 1.0, shape, &dev)?;
            let ya = ours.forward_inner(x.as_tensor(), true, relu)?;
            let mut yb = theirs.forward_t(x.as_tensor(), true)?;
            if relu {
                yb = yb.relu()?;
            }
            close(&ya, &yb, 1e-5)?;
            close(
                ours.running_mean().expect("running statistics"),
                theirs.running_mean(),
                1e-6,
            )?;
            close(
                ours.running_var().expect("running statistics"),
                theirs.running_var(),
                1e-6,
            )?;
            let ga = (&ya * &upstream)?.sum_all()?.backward()?;
            let gb = (&yb * &upstream)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let (a, r) = (ga.get(v.as_tensor()), gb.get(v.as_tensor()));
                // Two summation orders over unseeded random data: f32 rounding reaches 1.2e-4.
                close(a.expect("ours"), r.expect("candle's"), 5e-4)?;
            }
            close(
                &ours.forward_t(x.as_tensor(), false)?,
                &theirs.forward_t(x.as_tensor(), false)?,
                1e-5,
            )?;
        }
        Ok(())
    }

    /// Two processes holding the same half batch: the sum over them is twice the local one.
    struct TwoIdentical;

    impl StatsSync for TwoIdentical {
        fn all_reduce_sum(&self, local: &Tensor) -> Result<Tensor> {
            local.affine(2.0, 0.0)
        }
    }

    /// [`TwoIdentical`] that knows the global count: the count is not reduced.
    struct TwoIdenticalCounted(std::sync::atomic::AtomicUsize);

    impl StatsSync for TwoIdenticalCounted {
        fn all_reduce_sum(&self, local: &Tensor) -> Result<Tensor> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            local.affine(2.0, 0.0)
        }

        fn global_count(&self, local: usize) -> Option<usize> {
            Some(2 * local)
        }
    }

    /// A sync that knows the global count gives the same bits as one that reduces it with the
    /// sums, and reduces only the sums (forward: sums and squares; backward: the two gradient
    /// sums, in one call each).
    #[test]
    fn a_known_global_count_is_not_reduced_and_changes_nothing() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (4, 3, 2, 5), &dev)? + 1.0)?)?;
        let upstream = Tensor::randn(0f32, 1.0, (4, 3, 2, 5), &dev)?;
        let (template, _, _, _) = pair(3, &dev)?;
        let run = |sync: Arc<dyn StatsSync>| -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            let bn = BatchNorm::new(
                template
                    .running_mean()
                    .expect("running statistics")
                    .copy()?,
                template.running_var().expect("running statistics").copy()?,
                template.weight().copy()?,
                template.bias().copy()?,
                1e-5,
                0.1,
            )?;
            let previous = set_stats_sync(Some(sync));
            let out = (|| {
                let y = bn.forward_relu(x.as_tensor(), true)?;
                let grads = (&y * &upstream)?.sum_all()?.backward()?;
                let gx = grads.get(x.as_tensor()).expect("input gradient").clone();
                Ok::<_, candle_core::Error>((y, gx))
            })();
            set_stats_sync(previous);
            let (y, gx) = out?;
            Ok((
                y.flatten_all()?.to_vec1()?,
                gx.flatten_all()?.to_vec1()?,
                bn.running_var().expect("running statistics").to_vec1()?,
            ))
        };
        let counted = Arc::new(TwoIdenticalCounted(0.into()));
        let a = run(Arc::new(TwoIdentical))?;
        let b = run(counted.clone())?;
        assert_eq!(
            a.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            a.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            a.2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(counted.0.load(std::sync::atomic::Ordering::Relaxed), 3);
        Ok(())
    }

    #[test]
    fn synced_statistics_match_the_whole_global_batch() -> Result<()> {
        let dev = Device::Cpu;
        let (c, shape) = (3, (4, 3, 2, 5));
        let (ours, _, w, _b) = pair(c, &dev)?;
        let b = ours.bias().clone();
        let whole = BatchNorm::new(
            ours.running_mean().expect("running statistics").copy()?,
            ours.running_var().expect("running statistics").copy()?,
            w.as_tensor().clone(),
            b,
            1e-5,
            0.1,
        )?;
        let half = Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape, &dev)? + 1.0)?)?;
        let both = Var::from_tensor(&Tensor::cat(&[half.as_tensor(), half.as_tensor()], 0)?)?;
        let upstream = Tensor::randn(0f32, 1.0, shape, &dev)?;
        let previous = set_stats_sync(Some(Arc::new(TwoIdentical)));
        let synced = (|| {
            let y = ours.forward_relu(half.as_tensor(), true)?;
            let grads = (&y * &upstream)?.sum_all()?.backward()?;
            Ok::<_, candle_core::Error>((y, grads))
        })();
        set_stats_sync(previous);
        let (synced, synced_grads) = synced?;
        let full = whole.forward_relu(both.as_tensor(), true)?;
        let full_grads = (&full * Tensor::cat(&[&upstream, &upstream], 0)?)?
            .sum_all()?
            .backward()?;
        close(&synced, &full.narrow(0, 0, shape.0)?, 1e-5)?;
        close(
            ours.running_mean().expect("running statistics"),
            whole.running_mean().expect("running statistics"),
            1e-6,
        )?;
        close(
            ours.running_var().expect("running statistics"),
            whole.running_var().expect("running statistics"),
            1e-6,
        )?;
        let gx = synced_grads.get(half.as_tensor()).expect("input gradient");
        let full_gx = full_grads.get(both.as_tensor()).expect("input gradient");
        close(gx, &full_gx.narrow(0, 0, shape.0)?, 1e-4)?;
        // The weight's gradient is this process's share: half of the whole batch's.
        let gw = synced_grads.get(w.as_tensor()).expect("weight gradient");
        let full_gw = full_grads.get(w.as_tensor()).expect("weight gradient");
        close(&gw.affine(2.0, 0.0)?, full_gw, 1e-4)?;
        Ok(())
    }

    /// NaN stays NaN through the ReLU after the batch norm, as `torch.relu` keeps it: a
    /// negative running variance in evaluation (its square root), in both memory formats, and
    /// a NaN input value in training (its channel's statistics); the other channels stay
    /// finite. Short rows and long ones (the two CPU passes).
    #[test]
    fn nan_stays_nan_through_the_relu() -> Result<()> {
        let dev = Device::Cpu;
        let channel_nan = |y: &Tensor| -> Result<Vec<bool>> {
            let y = y.contiguous()?.to_dtype(DType::F32)?;
            let (c, per) = (y.dim(1)?, y.elem_count() / y.dim(0)? / y.dim(1)?);
            let v = y.flatten_all()?.to_vec1::<f32>()?;
            Ok((0..c)
                .map(|ch| {
                    let of = |f: fn(&f32) -> bool| {
                        v.chunks(c * per)
                            .all(|image| image[ch * per..][..per].iter().all(f))
                    };
                    assert!(of(|v| v.is_nan()) || of(|v| !v.is_nan()), "channel {ch}");
                    of(|v| v.is_nan())
                })
                .collect())
        };
        for (h, w) in [(2, 2), (16, 16)] {
            let ones = Tensor::ones(3, DType::F32, &dev)?;
            let zeros = Tensor::zeros(3, DType::F32, &dev)?;
            let var = Tensor::new(&[1f32, -1.0, 1.0], &dev)?;
            let bn = BatchNorm::new(zeros.clone(), var, ones, zeros, 1e-5, 0.1)?;
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?;
            for x in [x.clone(), memory_format::to_channels_last(&x)?] {
                let y = bn.forward_relu(&x, false)?;
                assert_eq!(channel_nan(&y)?, [false, true, false], "eval {h}x{w}");
            }
            let mut v = x.flatten_all()?.to_vec1::<f32>()?;
            v[2 * h * w + 1] = f32::NAN;
            // A bias that is a variable: its gradient is the sum of the ReLU's passed
            // gradients, which threshold_backward passes where the output is NaN (all of
            // channel 2: 2 images x h x w ones).
            let bias = Var::zeros(3, DType::F32, &dev)?;
            let bn = BatchNorm::new(
                Tensor::zeros(3, DType::F32, &dev)?,
                Tensor::ones(3, DType::F32, &dev)?,
                Tensor::ones(3, DType::F32, &dev)?,
                bias.as_tensor().clone(),
                1e-5,
                0.1,
            )?;
            let x = Tensor::from_vec(v, (2, 3, h, w), &dev)?;
            // The generic pass too (any dtype and device; here under a statistics
            // reduction, SyncBatchNorm's, of two identical processes: the bias's gradient is
            // this process's share).
            let previous = set_stats_sync(Some(Arc::new(TwoIdentical)));
            let synced = (|| bn.forward_relu(&x, true)?.sum_all()?.backward())();
            set_stats_sync(previous);
            let gb = synced?
                .get(bias.as_tensor())
                .expect("bias gradient")
                .to_vec1::<f32>()?;
            assert_eq!(gb[2], (2 * h * w) as f32, "synced {h}x{w}");
            let y = bn.forward_relu(&x, true)?;
            assert_eq!(channel_nan(&y)?, [false, false, true], "train {h}x{w}");
            let grads = y.sum_all()?.backward()?;
            let gb = grads.get(bias.as_tensor()).expect("bias gradient");
            let gb = gb.to_vec1::<f32>()?;
            assert_eq!(gb[2], (2 * h * w) as f32, "train {h}x{w}: {gb:?}");
            assert!(gb[..2]
                .iter()
                .all(|g| g.is_finite() && *g < (2 * h * w) as f32));
        }
        Ok(())
    }

    #[test]
    fn untracked_input_gets_no_gradient_and_parameters_still_do() -> Result<()> {
        let dev = Device::Cpu;
        let (ours, _, w, b) = pair(3, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 2, 2), &dev)?;
        let grads = ours.forward_relu(&x, true)?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
        assert!(grads.get(b.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn frozen_weight_and_bias_get_no_gradient() -> Result<()> {
        // Plain tensors (not variables) as weight and bias, as a frozen backbone holds them:
        // PyTorch leaves their `.grad` None; the input still gets its gradient. On the one-pass
        // CPU op, the residual join's op and the generic path (f64).
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let frozen = BatchNorm::new(
                Tensor::zeros(3, dtype, &dev)?,
                Tensor::ones(3, dtype, &dev)?,
                Tensor::new(&[1.5f32, 0.5, 2.0], &dev)?.to_dtype(dtype)?,
                Tensor::new(&[0.1f32, -0.2, 0.3], &dev)?.to_dtype(dtype)?,
                1e-5,
                0.1,
            )?;
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 2, 2), &dev)?.to_dtype(dtype)?)?;
            let r =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 2, 2), &dev)?.to_dtype(dtype)?)?;
            for joined in [false, true] {
                let y = match joined {
                    false => frozen.forward_relu(&x, true)?,
                    true => frozen.forward_add_relu(&x, &r, true)?,
                };
                let grads = y.sum_all()?.backward()?;
                assert!(grads.get(x.as_tensor()).is_some(), "{dtype:?} {joined}");
                assert!(grads.get(frozen.weight()).is_none(), "{dtype:?} {joined}");
                assert!(grads.get(frozen.bias()).is_none(), "{dtype:?} {joined}");
            }
        }
        Ok(())
    }

    #[test]
    fn bfloat16_parameters_are_refused_clearly() -> Result<()> {
        let dev = Device::Cpu;
        let f = |d: DType| Tensor::ones(3, d, &dev);
        for (w, stat) in [
            (DType::BF16, DType::BF16),
            (DType::F16, DType::F16),
            (DType::F32, DType::BF16),
            (DType::F32, DType::F64),
        ] {
            let Err(err) = BatchNorm::new(f(stat)?, f(stat)?, f(w)?, f(w)?, 1e-5, 0.1) else {
                panic!("{w:?} {stat:?} accepted")
            };
            let err = err.to_string();
            assert!(
                err.contains("must be float32") && err.contains("autocast"),
                "{err}"
            );
        }
        assert!(BatchNorm::new(
            f(DType::F64)?,
            f(DType::F64)?,
            f(DType::F64)?,
            f(DType::F64)?,
            1e-5,
            0.1
        )
        .is_ok());
        Ok(())
    }

    #[test]
    fn one_value_per_channel_and_wrong_width_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let (ours, _, _, _) = pair(3, &dev)?;
        let one = Tensor::zeros((1, 3, 1, 1), DType::F32, &dev)?;
        let err = ours.forward_t(&one, true).unwrap_err().to_string();
        assert!(err.contains("more than one value per channel"), "{err}");
        assert!(ours.forward_t(&one, false).is_ok());
        let wide = Tensor::zeros((2, 4, 3, 3), DType::F32, &dev)?;
        let err = ours.forward_t(&wide, true).unwrap_err().to_string();
        assert!(err.contains("3 features"), "{err}");
        Ok(())
    }

    #[test]
    fn bf16_input_is_normalised_in_f32_and_returned_in_bf16() -> Result<()> {
        let dev = Device::Cpu;
        let (ours, theirs, _, _) = pair(3, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 4, 4), &dev)?;
        let y = ours.forward_t(&x.to_dtype(DType::BF16)?, true)?;
        assert_eq!(y.dtype(), DType::BF16);
        close(&y.to_dtype(DType::F32)?, &theirs.forward_t(&x, true)?, 0.05)?;
        Ok(())
    }

    /// `batch_norm` is `nn.BatchNorm2d`: one image `(C, H, W)` is refused with the way to a
    /// batch (read as `(N, C, L)`, a 16x16x16 map would be normalised over its rows), and so
    /// is a 5-D input; `BatchNorm::new` takes any `(N, C, ...)`. `with_momentum` sets the
    /// running statistics' momentum, as `nn.BatchNorm2d(c, momentum=...)`.
    #[test]
    fn batch_norm2d_takes_images_only_and_any_momentum() -> Result<()> {
        let dev = Device::Cpu;
        let store = crate::ParamStore::new(0, &dev);
        let bn = batch_norm(store.vb().pp("bn"), 16, 1e-5)?;
        for train in [false, true] {
            let one = Tensor::randn(0f32, 1.0, (16, 16, 16), &dev)?;
            let err = bn.forward_t(&one, train).unwrap_err().to_string();
            assert!(
                err.contains("BatchNorm2d over 16 channels got an input of shape [16, 16, 16]"),
                "{err}"
            );
            assert!(err.contains("xs.unsqueeze(0)"), "{err}");
            let err = bn
                .forward_add_relu(&one, &one, train)
                .unwrap_err()
                .to_string();
            assert!(err.contains("it takes images (N, C, H, W)"), "{err}");
            let volume = Tensor::randn(0f32, 1.0, (2, 16, 3, 3, 3), &dev)?;
            assert!(bn.forward_relu(&volume, train).is_err());
            assert!(bn.forward_t(&one.unsqueeze(0)?, train).is_ok());
        }
        let (any, _, _, _) = pair(3, &dev)?;
        assert!(any
            .forward_t(&Tensor::randn(0f32, 1.0, (4, 3, 5), &dev)?, true)
            .is_ok());
        let slow = batch_norm(store.vb().pp("slow"), 2, 1e-5)?.with_momentum(0.05)?;
        assert_eq!(slow.momentum(), Some(0.05));
        let x = Tensor::new(&[[[[1f32]], [[4.0]]], [[[3.0]], [[8.0]]]], &dev)?;
        slow.forward_t(&x, true)?;
        let mean = slow
            .running_mean()
            .expect("running statistics")
            .to_vec1::<f32>()?;
        assert_eq!(mean, [0.05 * 2.0, 0.05 * 6.0]);
        assert!(slow.with_momentum(1.5).is_err());
        Ok(())
    }

    /// A `k`x`k` convolution `cin -> cout` ("conv" in `store`), stride 1, padding `k / 2`, no
    /// bias.
    fn test_conv(
        store: &crate::ParamStore,
        cin: usize,
        cout: usize,
        k: usize,
    ) -> Result<crate::Conv2d> {
        crate::conv2d(
            store.vb().pp("conv"),
            cin,
            cout,
            k,
            crate::conv_cfg(1, k / 2),
            false,
            crate::WeightInit::KaimingFanOut,
        )
    }

    /// A deterministic batch `k` of (2, 3, 3, 4) (the same formula as the PyTorch script that
    /// gave the expected values below).
    fn formula_batch(k: usize) -> Result<Tensor> {
        let v: Vec<f32> = (0..72)
            .map(|i| ((i as f64 * 0.37 + k as f64).sin() * 2.0 + (k * (i % 3)) as f64) as f32)
            .collect();
        Tensor::from_vec(v, (2, 3, 3, 4), &Device::Cpu)
    }

    /// `momentum=None` keeps the cumulative average of the batches' statistics, as PyTorch
    /// 2.15's `nn.BatchNorm2d(3, momentum=None)` after the same three batches (and the
    /// exponential average with `momentum=0.1`); on the fused f32 CPU pass, the generic pass
    /// (float64) and a convolution's fused op alike.
    #[test]
    fn cumulative_average_matches_pytorch() -> Result<()> {
        let dev = Device::Cpu;
        let cma_mean = [0.875_755_2_f32, 1.465_430_4, 0.873_812_4];
        let cma_var = [2.855_472_8_f32, 2.781_552_6, 3.328_533_4];
        let ema_mean = [0.246_016_95_f32, 0.416_052_04, 0.266_158_7];
        for config in [
            BatchNormConfig {
                momentum: None,
                ..Default::default()
            },
            BatchNormConfig::default(),
        ] {
            for dtype in [DType::F32, DType::F64] {
                let store = crate::ParamStore::new(0, &dev);
                let vb = store.vb().set_dtype(dtype);
                let bn = batch_norm2d(vb, 3, config)?;
                assert_eq!(bn.momentum(), config.momentum);
                for k in 0..3 {
                    bn.forward_t(&formula_batch(k)?.to_dtype(dtype)?, true)?;
                }
                let got = |t: Option<&Tensor>| -> Result<Vec<f32>> {
                    t.expect("running statistics")
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()
                };
                let count = bn.num_batches_tracked().expect("counted");
                assert_eq!(count.to_scalar::<i64>()?, 3);
                let (mean, var) = (got(bn.running_mean())?, got(bn.running_var())?);
                let want_mean = if config.momentum.is_none() {
                    cma_mean
                } else {
                    ema_mean
                };
                for (g, w) in mean.iter().zip(want_mean) {
                    assert!(
                        (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                        "{config:?} {dtype:?}: mean {mean:?}"
                    );
                }
                if config.momentum.is_none() {
                    for (g, w) in var.iter().zip(cma_var) {
                        assert!((g - w).abs() <= 1e-6 * w, "{dtype:?}: var {var:?}");
                    }
                }
            }
        }
        // Through a convolution's fused op (training, f32 CPU, no bias): the same statistics
        // as the convolution's output through the batch norm apart.
        let config = BatchNormConfig {
            momentum: None,
            ..Default::default()
        };
        let store = crate::ParamStore::new(1, &dev);
        let conv = test_conv(&store, 3, 4, 3)?;
        let fused = batch_norm2d(store.vb().pp("fused"), 4, config)?;
        let apart = batch_norm2d(store.vb().pp("apart"), 4, config)?;
        for k in 0..3 {
            let x = Var::from_tensor(&formula_batch(k)?)?;
            conv.forward_batch_norm(x.as_tensor(), &fused, true, true)?;
            let ys = candle_core::Module::forward(&conv, x.as_tensor())?;
            apart.forward_relu(&ys, true)?;
        }
        for (a, b) in [
            (fused.running_mean(), apart.running_mean()),
            (fused.running_var(), apart.running_var()),
        ] {
            close(a.expect("stats"), b.expect("stats"), 1e-6)?;
        }
        Ok(())
    }

    /// `track_running_stats=False`: evaluation normalises with the batch's statistics (PyTorch
    /// 2.15's output), the same bits as training; nothing is counted or kept; `affine=False`
    /// has no parameters; the module's names are PyTorch's `state_dict` keys either way.
    #[test]
    fn without_running_stats_or_affine_parameters_as_pytorch() -> Result<()> {
        let dev = Device::Cpu;
        let config = BatchNormConfig {
            affine: false,
            track_running_stats: false,
            ..Default::default()
        };
        let store = crate::ParamStore::new(0, &dev);
        let bn = batch_norm2d(store.vb().pp("bn"), 3, config)?;
        assert!(store.named_vars().is_empty());
        assert!(!bn.tracks_running_stats());
        assert!(bn.running_mean().is_none() && bn.num_batches_tracked().is_none());
        let x = formula_batch(1)?;
        let eval = bn.forward_t(&x, false)?;
        let want = [0.536_133_5_f32, -2.299_896_5, -0.943_590_4];
        let got = eval.narrow(0, 0, 1)?.flatten_from(1)?.to_vec2::<f32>()?;
        for (c, w) in want.iter().enumerate() {
            let g = got[0][c * 12];
            assert!(
                (g - w).abs() <= 2e-6 * w.abs().max(1.0),
                "channel {c}: {g} vs {w}"
            );
        }
        let v = eval.flatten_all()?.to_vec1::<f32>()?;
        assert!((v[5] - 1.090_877_3).abs() <= 2e-6, "{}", v[5]);
        assert_eq!(bits(&eval)?, bits(&bn.forward_t(&x, true)?)?);
        // A convolution then the batch norm in evaluation: batch statistics too.
        let conv_store = crate::ParamStore::new(2, &dev);
        let conv = test_conv(&conv_store, 3, 3, 3)?;
        let ys = candle_core::Module::forward(&conv, &x)?;
        let mean = conv
            .forward_batch_norm(&x, &bn, false, false)?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!(mean.abs() < 1e-5, "{mean}");
        assert_eq!(
            bits(&conv.forward_batch_norm(&x, &bn, true, false)?)?,
            bits(&bn.forward_relu(&ys, true)?)?
        );
        let counted = Tensor::zeros((), DType::I64, &dev)?;
        let error = bn.clone().with_batches_tracked(counted).unwrap_err();
        assert!(
            error.to_string().contains("track_running_stats=False"),
            "{error}"
        );
        // The names each setting makes, as PyTorch's state_dict keys.
        for (affine, track, keys) in [
            (true, false, vec!["bn.bias", "bn.weight"]),
            (
                false,
                true,
                vec![
                    "bn.num_batches_tracked",
                    "bn.running_mean",
                    "bn.running_var",
                ],
            ),
        ] {
            let store = crate::ParamStore::new(0, &dev);
            let config = BatchNormConfig {
                affine,
                track_running_stats: track,
                ..Default::default()
            };
            batch_norm2d(store.vb().pp("bn"), 3, config)?;
            let mut names: Vec<String> = store.named_vars().into_iter().map(|(n, _)| n).collect();
            names.sort();
            assert_eq!(names, keys);
        }
        Ok(())
    }

    /// An empty batch in training: PyTorch's empty output, in the graph (zero gradients for
    /// the weight and bias), the running statistics as they were and one more batch counted;
    /// through the fused passes (ReLU, residual join, a convolution's op) too.
    #[test]
    fn an_empty_batch_in_training_gives_an_empty_output() -> Result<()> {
        let dev = Device::Cpu;
        for dims in [[0, 3, 4, 4], [2, 3, 0, 4]] {
            let store = crate::ParamStore::new(0, &dev);
            let bn = batch_norm(store.vb().pp("bn"), 3, 1e-5)?;
            let x = Tensor::zeros(&dims[..], DType::F32, &dev)?;
            let residual = Tensor::zeros(&dims[..], DType::F32, &dev)?;
            let outs = [
                bn.forward_t(&x, true)?,
                bn.forward_relu(&x, true)?,
                bn.forward_add_relu(&x, &residual, true)?,
                memory_format::to_channels_last(&bn.forward_t(&x, true)?)?,
            ];
            for y in &outs {
                assert_eq!(y.dims(), dims);
            }
            let count = bn.num_batches_tracked().expect("counted");
            assert_eq!(count.to_scalar::<i64>()?, 4, "{dims:?}");
            let mean = bn.running_mean().expect("stats").to_vec1::<f32>()?;
            let var = bn.running_var().expect("stats").to_vec1::<f32>()?;
            assert_eq!((mean, var), (vec![0.0; 3], vec![1.0; 3]));
            let grads = outs[0].sum_all()?.backward()?;
            let weight = store
                .named_vars()
                .into_iter()
                .find(|(n, _)| n == "bn.weight")
                .expect("weight")
                .1;
            let gw = grads.get(weight.as_tensor()).expect("weight gradient");
            assert_eq!(gw.to_vec1::<f32>()?, vec![0.0; 3]);
        }
        // A convolution of an empty batch with its batch norm.
        let store = crate::ParamStore::new(0, &dev);
        let conv = test_conv(&store, 3, 4, 3)?;
        let bn = batch_norm(store.vb().pp("bn"), 4, 1e-5)?;
        let x = Tensor::zeros((0, 3, 5, 5), DType::F32, &dev)?;
        let residual = Tensor::zeros((0, 4, 5, 5), DType::F32, &dev)?;
        assert_eq!(
            conv.forward_batch_norm(&x, &bn, true, true)?.dims(),
            [0, 4, 5, 5]
        );
        let y = conv.forward_batch_norm_add_relu(&x, &bn, &residual, true)?;
        assert_eq!(y.dims(), [0, 4, 5, 5]);
        // One value per channel is still refused, as PyTorch.
        assert!(bn
            .forward_t(&Tensor::zeros((1, 4, 1, 1), DType::F32, &dev)?, true)
            .is_err());
        Ok(())
    }

    /// A refused batch of one value per channel is counted first, as PyTorch's module counts
    /// it before `F.batch_norm` refuses: with `momentum=None` the later batches' weights, and
    /// so the running statistics, are PyTorch 2.15's after `x0`, the refusal, `x2`.
    #[test]
    fn a_refused_batch_is_counted_as_pytorch_counts_it() -> Result<()> {
        let dev = Device::Cpu;
        let store = crate::ParamStore::new(0, &dev);
        let config = BatchNormConfig {
            momentum: None,
            ..Default::default()
        };
        let bn = batch_norm2d(store.vb().pp("bn"), 3, config)?;
        bn.forward_t(&formula_batch(0)?, true)?;
        let one = Tensor::ones((1, 3, 1, 1), DType::F32, &dev)?;
        assert!(bn.forward_t(&one, true).is_err());
        bn.forward_t(&formula_batch(2)?, true)?;
        let count = bn
            .num_batches_tracked()
            .expect("counted")
            .to_scalar::<i64>()?;
        assert_eq!(count, 3);
        let mean = bn.running_mean().expect("stats").to_vec1::<f32>()?;
        let var = bn.running_var().expect("stats").to_vec1::<f32>()?;
        let (want_mean, want_var) = (
            [0.751_279_35_f32, 1.028_855, 0.387_172_6],
            [2.594_663_1_f32, 2.820_529, 2.661_973],
        );
        for (g, w) in mean
            .iter()
            .chain(&var)
            .zip(want_mean.iter().chain(&want_var))
        {
            assert!((g - w).abs() <= 2e-6 * w.abs().max(1.0), "{mean:?} {var:?}");
        }
        // The same through a convolution with its batch norm (one image of one value).
        let conv = test_conv(&store, 3, 3, 1)?;
        assert!(conv.forward_batch_norm(&one, &bn, true, true).is_err());
        let count = bn
            .num_batches_tracked()
            .expect("counted")
            .to_scalar::<i64>()?;
        assert_eq!(count, 4);
        Ok(())
    }

    /// An empty batch in evaluation mode too: the weight's and bias's gradients are zeros (as
    /// PyTorch's), nothing counted.
    #[test]
    fn an_empty_batch_in_evaluation_keeps_the_parameters_in_the_graph() -> Result<()> {
        let dev = Device::Cpu;
        let store = crate::ParamStore::new(0, &dev);
        let bn = batch_norm(store.vb().pp("bn"), 3, 1e-5)?;
        let x = Tensor::zeros((0, 3, 3, 4), DType::F32, &dev)?;
        let y = bn.forward_t(&x, false)?;
        assert_eq!(y.dims(), [0, 3, 3, 4]);
        let grads = y.sum_all()?.backward()?;
        for (name, var) in store.trainable() {
            let g = grads.get(var.as_tensor()).expect("a gradient");
            assert_eq!(g.to_vec1::<f32>()?, vec![0.0; 3], "{name}");
        }
        let count = bn
            .num_batches_tracked()
            .expect("counted")
            .to_scalar::<i64>()?;
        assert_eq!(count, 0);
        Ok(())
    }

    /// Without running statistics, evaluation mode normalises with this process's batch alone
    /// under a [`StatsSync`] (PyTorch's SyncBatchNorm synchronises in training only): no
    /// all-reduce, and the output of no sync; training does synchronise.
    #[test]
    fn untracked_evaluation_is_not_synchronised() -> Result<()> {
        let dev = Device::Cpu;
        let store = crate::ParamStore::new(0, &dev);
        let config = BatchNormConfig {
            track_running_stats: false,
            ..Default::default()
        };
        let bn = batch_norm2d(store.vb().pp("bn"), 3, config)?;
        let x = formula_batch(1)?;
        let alone = bn.forward_t(&x, false)?;
        let counted = Arc::new(TwoIdenticalCounted(0.into()));
        let previous = set_stats_sync(Some(counted.clone()));
        let run = || -> Result<(Tensor, Tensor, Tensor)> {
            let conv = test_conv(&store, 3, 3, 1)?;
            let eval = bn.forward_t(&x, false)?;
            bn.forward_relu(&x, false)?;
            bn.forward_add_relu(&x, &x, false)?;
            conv.forward_batch_norm(&x, &bn, true, false)?;
            let fused = conv.forward_batch_norm_add_relu(&x, &bn, &x, false)?;
            let evaluated = counted.0.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(evaluated, 0);
            let train = bn.forward_t(&x, true)?;
            Ok((eval, fused, train))
        };
        let result = run();
        set_stats_sync(previous);
        let (eval, _, _) = result?;
        assert!(counted.0.load(std::sync::atomic::Ordering::Relaxed) > 0);
        close(&eval, &alone, 0.0)?;
        Ok(())
    }
}
