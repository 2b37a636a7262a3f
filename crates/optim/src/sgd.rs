//! `torch.optim.SGD`: momentum, dampening, Nesterov and L2 weight decay.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::flat::{self, GroupKey, Update};
use super::rounding::Rounding;
use super::{buffers_of, check_hyper, fused, restore_like, NamedVar, Optimizer};

/// SGD's hyper-parameters, PyTorch's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 disables the buffer).
    pub momentum: f64,
    /// Dampening for momentum.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and zero dampening).
    pub nesterov: bool,
    /// Maximize the objective: step along the gradient, not against it (PyTorch's `maximize`).
    pub maximize: bool,
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr` (PyTorch's defaults for everything else).
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

struct Param {
    name: String,
    var: Var,
    momentum_buffer: Option<Tensor>,
}

/// Stochastic gradient descent exactly as `torch.optim.SGD` steps it:
/// `g = -g` (with `maximize`); `g += wd * p`; `buf = g` on the first step, else `buf = momentum * buf + (1 - dampening) * g`;
/// `g = g + momentum * buf` (Nesterov) or `g = buf`; `p -= lr * g`.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use candle_core::{Device, Var};
/// use optim::{Optimizer, Sgd, SgdConfig};
/// let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
/// let mut opt = Sgd::new(vec![("w".into(), w.clone())], SgdConfig { momentum: 0.9, ..SgdConfig::new(0.25) })?;
/// let loss = w.as_tensor().sqr()?.sum_all()?;
/// opt.step(&loss.backward()?)?;
/// assert_eq!(w.to_vec1::<f32>()?, [0.5, 1.0]);
/// # Ok(()) }
/// ```
pub struct Sgd {
    params: Vec<Param>,
    config: SgdConfig,
    update: Update,
    /// How the fused CPU step rounds a product added to a value: as PyTorch on this CPU.
    rounding: Rounding,
    flat: flat::Cache,
}

impl Sgd {
    /// An optimizer over `params`, checking the configuration as PyTorch does.
    ///
    /// # Errors
    /// A learning rate, momentum or weight decay that is negative or not finite
    /// (named with PyTorch's message, `Invalid learning rate: -0.1`, and the field), or Nesterov
    /// without momentum or with dampening (as `torch.optim.SGD`).
    pub fn new(params: Vec<NamedVar>, config: SgdConfig) -> Result<Self> {
        check_hyper("SGD", ("lr", "Invalid learning rate"), config.lr, false)?;
        check_hyper(
            "SGD",
            ("momentum", "Invalid momentum value"),
            config.momentum,
            false,
        )?;
        let decay = ("weight_decay", "Invalid weight_decay value");
        check_hyper("SGD", decay, config.weight_decay, false)?;
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            bail!(
                "SGD: Nesterov momentum requires a momentum and zero dampening, got momentum {} and dampening {}",
                config.momentum,
                config.dampening
            );
        }
        let update = Update::for_params(&params.iter().map(|p| p.1.clone()).collect::<Vec<_>>());
        let params = params
            .into_iter()
            .map(|(name, var)| Param {
                name,
                var,
                momentum_buffer: None,
            })
            .collect();
        Ok(Self {
            params,
            config,
            update,
            rounding: Rounding::of_this_cpu(),
            flat: flat::Cache::default(),
        })
    }

    /// The same optimizer updating as `update` says (by default [`Update::for_device`] of the
    /// parameters' device); the results do not depend on it.
    pub fn with_update(mut self, update: Update) -> Self {
        self.update = update;
        self.flat.clear();
        self
    }

    /// The same optimizer with its fused CPU step rounding as `rounding` says (tests compare
    /// it with the CUDA kernel and Candle's operations, which round twice).
    #[cfg(test)]
    pub(crate) fn with_rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// One update per parameter tensor (f32 CPU tensors in one fused pass each).
    fn step_per_tensor(&mut self, grads: &GradStore) -> Result<()> {
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let buf_fits = (p.momentum_buffer.as_ref())
                .is_none_or(|b| fused::applies(&p.var, b) && b.device().is_cpu());
            if fused::applies(&p.var, grad) && buf_fits {
                let buf = p.momentum_buffer.take();
                p.momentum_buffer =
                    fused::sgd_step(&self.config, self.rounding, &p.var, grad, buf)?;
                continue;
            }
            let (param, buf) = update(
                &self.config,
                p.var.as_tensor(),
                grad,
                p.momentum_buffer.take(),
            )?;
            p.var.set(&param)?;
            p.momentum_buffer = buf;
        }
        Ok(())
    }

    /// One update per group of parameters with a gradient, of one dtype and device and with
    /// or without a momentum buffer, over flat tensors ([`flat`]).
    fn step_flat(&mut self, grads: &GradStore) -> Result<()> {
        let grad_of: Vec<Option<&Tensor>> = self
            .params
            .iter()
            .map(|p| grads.get(p.var.as_tensor()))
            .collect();
        let keyed = (self.params.iter().enumerate())
            .filter(|(i, _)| grad_of[*i].is_some())
            .map(|(i, p)| (i, GroupKey::of(&p.var, p.momentum_buffer.is_some())))
            .collect();
        let mut cached = std::mem::take(&mut self.flat);
        for (key, members) in flat::partition(keyed) {
            let vars: Vec<&Var> = members.iter().map(|&i| &self.params[i].var).collect();
            let grads: Vec<&Tensor> = members.iter().filter_map(|&i| grad_of[i]).collect();
            let buf = match (key.state, cached.take(&members)) {
                (false, _) => None,
                (true, Some(mut bufs)) => bufs.pop(),
                (true, None) => Some(flat::gather(
                    members
                        .iter()
                        .filter_map(|&i| self.params[i].momentum_buffer.as_ref()),
                )?),
            };
            let buf = match flat::one_launch(&vars, &grads) {
                // One launch a step for every 64 tensors, in place (`multi_tensor.rs`).
                #[cfg(any(feature = "cuda", feature = "cuda-emulation"))]
                true => super::multi_tensor::sgd_step(&self.config, &vars, &grads, buf.as_ref())?,
                _ => {
                    let grad = flat::gather(grads.iter().copied())?;
                    let param = flat::gather(vars.iter().map(|v| v.as_tensor()))?;
                    // f32 on the CPU: the fused step, in place (the flat buffer is this
                    // optimizer's own), rounding as the per-tensor update does.
                    let var = flat::fused_var(&param, &grad)?;
                    let var = var.filter(|v| buf.as_ref().is_none_or(|b| fused::applies(v, b)));
                    let (param, buf) = match var {
                        Some(var) => {
                            let (c, r) = (&self.config, self.rounding);
                            let buf = fused::sgd_step(c, r, &var, &grad, buf)?;
                            (var.into_inner(), buf)
                        }
                        None => update(&self.config, &param, &grad, buf)?,
                    };
                    flat::scatter(&param, vars.iter().copied())?;
                    buf
                }
            };
            if let Some(buf) = buf {
                let views = flat::views(&buf, vars.iter().copied())?;
                for (&i, view) in members.iter().zip(views) {
                    self.params[i].momentum_buffer = Some(view);
                }
                self.flat.put(members, vec![buf]);
            }
        }
        Ok(())
    }

    /// The hyper-parameters in use (the learning rate and momentum as last set).
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        crate::ensure_a_gradient("SGD", self.params.iter().map(|p| &p.var), grads)?;
        match self.update {
            // The one-launch CUDA kernel steps without `maximize`.
            Update::Flat if !self.config.maximize => self.step_flat(grads),
            _ => self.step_per_tensor(grads),
        }
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn momentum(&self) -> f64 {
        self.config.momentum
    }

    fn set_momentum(&mut self, momentum: f64) {
        self.config.momentum = momentum;
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self
            .params
            .iter()
            .filter_map(|p| {
                let buf = p.momentum_buffer.as_ref()?;
                // Copies: the step updates the buffers in place.
                Some(
                    buf.copy()
                        .map(|b| (format!("{}.momentum_buffer", p.name), b)),
                )
            })
            .collect::<candle_core::Result<_>>()?)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.flat.clear();
        let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let buffers = buffers_of(state, &names, &["momentum_buffer"])?;
        for (p, bufs) in self.params.iter_mut().zip(buffers) {
            let key = format!("{}.momentum_buffer", p.name);
            p.momentum_buffer = match bufs.get("momentum_buffer") {
                // Copies: the step updates the buffers in place, and `state` is the caller's.
                Some(t) => Some(restore_like(t, &p.var, &key)?.copy()?),
                None => None,
            };
        }
        Ok(())
    }
}

/// One SGD update of `param` (any shape, or flat) from `grad` and its momentum buffer, as
/// whole-tensor operations: the new parameter and the new buffer (the buffer as it was while
/// the momentum is 0, as PyTorch leaves it).
#[cfg(test)]
pub(super) fn tensor_update(
    c: &SgdConfig,
    param: &Tensor,
    grad: &Tensor,
    momentum_buffer: Option<Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    update(c, param, grad, momentum_buffer)
}

fn update(
    c: &SgdConfig,
    param: &Tensor,
    grad: &Tensor,
    momentum_buffer: Option<Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let param = param.detach();
    let mut d_p = match c.maximize {
        true => grad.neg()?,
        false => grad.detach(),
    };
    if c.weight_decay != 0.0 {
        d_p = (d_p + (&param * c.weight_decay)?)?;
    }
    let mut kept = momentum_buffer;
    if c.momentum != 0.0 {
        let buf = match kept {
            // A copy: the buffer must not share the gradient's storage (the fused CPU step
            // updates buffers in place).
            None => d_p.copy()?,
            Some(buf) if c.dampening == 0.0 => ((buf * c.momentum)? + &d_p)?,
            Some(buf) => ((buf * c.momentum)? + (&d_p * (1.0 - c.dampening))?)?,
        };
        d_p = if c.nesterov {
            (d_p + (&buf * c.momentum)?)?
        } else {
            buf.clone()
        };
        kept = Some(buf);
    }
    Ok(((param + (d_p * -c.lr)?)?, kept))
}
