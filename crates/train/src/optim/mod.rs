//! Optimizers with PyTorch's exact update rules (`torch.optim.SGD`, `Adam`, `AdamW`).
//!
//! Candle's own SGD has no momentum and its AdamW places epsilon differently, so these are
//! written out here, one small file per algorithm, following PyTorch's single-tensor code path
//! (the one PyTorch takes on CPU) operation by operation.
//!
//! Each optimizer updates either tensor by tensor (on the CPU, where Adam's f32 tensors take
//! one fused in-place pass each) or, on a GPU, all parameters of a dtype at once over flat
//! tensors, as PyTorch's `foreach` / `fused` implementations do ([`Update`]); both give the
//! same bits.

mod adam;
#[cfg(feature = "cuda")]
mod cuda;
mod flat;
mod fused;
#[cfg(feature = "cuda-emulation")]
mod host;
#[cfg(any(feature = "cuda", feature = "cuda-emulation"))]
mod multi_tensor;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use flat::Update;
pub use sgd::{Sgd, SgdConfig};

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
