//! PyTorch's optimizers and learning-rate schedules, update for update: `torch.optim.SGD`
//! ([`Sgd`]: momentum, dampening, Nesterov, weight decay), `Adam` and `AdamW` ([`Adam`]), and
//! `torch.optim.lr_scheduler` ([`lr_scheduler`]: StepLR, MultiStepLR, ExponentialLR,
//! CosineAnnealingLR, CosineAnnealingWarmRestarts, OneCycleLR, ReduceLROnPlateau, linear
//! warm-up).
//!
//! This crate is what a training loop of your own needs besides the model crates and
//! [`layers`] (whose [`layers::loss::cross_entropy`] is `F.cross_entropy`); the crate `train`
//! builds the programs' loop, checkpoints, metrics and pictures on it. A hand-written loop:
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use candle_core::{DType, Device, Module, Tensor};
//! use optim::lr_scheduler::{LrSchedule, StepLr};
//! use optim::{Optimizer, Sgd, SgdConfig};
//!
//! let store = layers::ParamStore::new(0, &Device::Cpu); // seeded, PyTorch's names
//! let fc = layers::linear(store.vb().pp("fc"), 4, 3, layers::WeightInit::TorchDefault)?;
//! let mut opt = Sgd::new(store.trainable(), SgdConfig { momentum: 0.9, ..SgdConfig::new(0.1) })?;
//! let x = Tensor::ones((2, 4), DType::F32, &Device::Cpu)?; // (N, in_features)
//! let y = Tensor::new(&[0u32, 2], &Device::Cpu)?; // (N,) class indices
//! // StepLR(step_size=2, gamma=0.5): a schedule is the rate after t scheduler steps, lr(t)
//! let schedule = StepLr { base_lr: 0.1, step_size: 2, gamma: 0.5 };
//! let mut losses = Vec::new();
//! for epoch in 0..5 {
//!     opt.set_learning_rate(schedule.lr(epoch)); // as scheduler.step() after each epoch
//!     let loss = layers::loss::cross_entropy(&fc.forward(&x)?, &y, 0.0)?;
//!     losses.push(loss.to_scalar::<f32>()?);
//!     opt.step(&loss.backward()?)?; // zero_grad is implicit: each backward makes new gradients
//! }
//! assert!(losses[4] < losses[0]);
//! assert_eq!(opt.learning_rate(), 0.025); // 0.1 * 0.5^(4 / 2)
//! # Ok(()) }
//! ```
//!
//! Candle's own SGD has no momentum and its AdamW places epsilon differently, so these are
//! written out here, one small file per algorithm, following PyTorch's single-tensor code path
//! (the one PyTorch takes on CPU) operation by operation.
//!
//! Each optimizer updates either tensor by tensor (on the CPU, where f32 tensors take one fused
//! in-place pass each) or, on a GPU, all parameters of a dtype at once over flat tensors, as
//! PyTorch's `foreach` / `fused` implementations do ([`Update`]); both give the same bits (on a
//! GPU, where the tensor-by-tensor update is Candle's operations, the same values: Candle's
//! products with a scalar turn a `-0.0` into `+0.0`).
//!
//! On the CPU a product added to a value (`param.add_(grad, alpha=-lr)`, `lerp_`, `addcmul_`)
//! is rounded as PyTorch's CPU kernels round it on the same machine: once, as a fused
//! multiply-add, on an x86-64 with AVX2 and FMA (PyTorch's `AVX2` and `AVX512` kernels) and on
//! aarch64, twice on other x86-64 CPUs or where `ATEN_CPU_CAPABILITY` is `default` (PyTorch's
//! variable for its portable kernels) ([`cpu_fused_multiply_add`]). So SGD's steps equal
//! PyTorch's bit for bit (tested against PyTorch's own steps); Adam's differ where PyTorch's
//! `sqrt` (MKL's) is not correctly rounded, about one float32 value in 170. The CUDA kernel, and
//! Candle's tensor operations for other dtypes, round twice.

mod adam;
#[cfg(feature = "cuda")]
mod cuda;
mod flat;
mod fused;
#[cfg(feature = "cuda-emulation")]
mod host;
pub mod lr_scheduler;
#[cfg(any(feature = "cuda", feature = "cuda-emulation"))]
mod multi_tensor;
mod rounding;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use flat::Update;
pub use sgd::{Sgd, SgdConfig};

/// Whether the CPU steps round a product added to a value once on this machine (a fused
/// multiply-add, as PyTorch's AVX2, AVX-512 and aarch64 kernels compute `add(alpha=)`, `lerp_`
/// and `addcmul_`), rather than twice (as its portable kernels: an x86-64 without AVX2 and
/// FMA, or `ATEN_CPU_CAPABILITY=default`). Replicas of a data-parallel job on the CPU must
/// agree on it, or their weights drift apart.
pub fn cpu_fused_multiply_add() -> bool {
    rounding::Rounding::of_this_cpu() == rounding::Rounding::Once
}

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// A parameter with its PyTorch `state_dict()` name, as [`layers::ParamStore::trainable`] lists them.
pub type NamedVar = (String, Var);

/// What every optimizer offers the training loop and the checkpoint code.
///
/// Parameters without a gradient in a step are skipped, as PyTorch skips `p.grad is None`.
pub trait Optimizer: Send {
    /// Applies one update from the gradients of the last backward pass.
    fn step(&mut self, grads: &GradStore) -> Result<()>;

    /// The current learning rate.
    fn learning_rate(&self) -> f64;

    /// Sets the learning rate (schedules call this).
    fn set_learning_rate(&mut self, lr: f64);

    /// SGD's momentum, or Adam's `beta1`: the value PyTorch's OneCycleLR cycles.
    fn momentum(&self) -> f64;

    /// Sets SGD's momentum, or Adam's `beta1`.
    fn set_momentum(&mut self, momentum: f64);

    /// The optimizer's buffers by `<param name>.<buffer>` (for example `fc.weight.exp_avg`),
    /// including per-parameter step counts, ready to be written as safetensors.
    fn state(&self) -> Result<HashMap<String, Tensor>>;

    /// Restores buffers saved by [`Optimizer::state`]; unknown keys and shape mismatches are errors.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// `value` of the hyper-parameter `field` checked as PyTorch's optimizers check it, in
/// PyTorch's wording (`"Invalid learning rate: -0.1"`) after the optimizer's name, with the
/// field's name in the config: a finite number in `[0, ∞)`, or in `[0, 1)` where `below_one`
/// (Adam's betas). NaN and infinities are refused too, deliberately, where PyTorch lets some
/// through (an infinite rate or decay, SGD's NaN ones): none of them trains.
fn check_hyper(
    optimizer: &str,
    (field, pytorch): (&str, &str),
    value: f64,
    below_one: bool,
) -> Result<()> {
    let ok = value.is_finite() && value >= 0.0 && (!below_one || value < 1.0);
    if !ok {
        let expected = match below_one {
            true => "a number in [0, 1)",
            false => "a finite number >= 0",
        };
        bail!("{optimizer}: {pytorch}: {value} (`{field}` must be {expected})");
    }
    Ok(())
}

/// Refuses a step whose `grads` hold no gradient of any of the optimizer's `vars` (when it has
/// any): the loss was computed without autograd (inside `layers::no_grad()`, or from detached
/// tensors), and the step would change nothing, silently, where PyTorch's `backward` raises
/// ("element 0 of tensors does not require grad and does not have a grad_fn"). A step where
/// some parameters have gradients and others none (unused in the forward pass) updates those
/// that have them, as PyTorch's.
fn ensure_a_gradient<'a>(
    optimizer: &str,
    mut vars: impl Iterator<Item = &'a Var>,
    grads: &GradStore,
) -> Result<()> {
    let mut any = false;
    for var in vars.by_ref() {
        any = true;
        if grads.get(var.as_tensor()).is_some() {
            return Ok(());
        }
    }
    if any {
        bail!(
            "{optimizer}.step: no parameter has a gradient: the loss was computed without \
             autograd (inside layers::no_grad(), whose guard must be dropped before training, \
             or from detached tensors), so the step would change nothing; PyTorch's backward \
             raises here"
        );
    }
    Ok(())
}

/// Moves the buffers of `state` that belong to parameter `name` into a map keyed by buffer name.
fn buffers_of(
    state: &HashMap<String, Tensor>,
    names: &[&str],
    allowed: &[&str],
) -> Result<Vec<HashMap<String, Tensor>>> {
    let mut out: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); names.len()];
    for (key, tensor) in state {
        let found = names.iter().enumerate().find_map(|(i, name)| {
            let rest = key.strip_prefix(name)?.strip_prefix('.')?;
            allowed.contains(&rest).then_some((i, rest))
        });
        match found {
            Some((i, buffer)) => {
                out[i].insert(buffer.to_string(), tensor.clone());
            }
            None => bail!("optimizer state has an unexpected entry {key}"),
        }
    }
    Ok(out)
}

/// Checks that a saved buffer has the parameter's shape and moves it to the parameter's device.
fn restore_like(buffer: &Tensor, var: &Var, key: &str) -> Result<Tensor> {
    if buffer.shape() != var.shape() {
        bail!(
            "optimizer state {key} has shape {:?} but the parameter has shape {:?}",
            buffer.dims(),
            var.dims()
        );
    }
    Ok(buffer.to_dtype(var.dtype())?.to_device(var.device())?)
}

#[cfg(test)]
mod tests;
