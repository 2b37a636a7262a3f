//! `torch.optim.Adam` and `torch.optim.AdamW`: bias correction, epsilon outside the square root.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::flat::{self, GroupKey, Update};
use super::rounding::Rounding;
use super::{buffers_of, check_hyper, fused, restore_like, NamedVar, Optimizer};

/// Adam's hyper-parameters, PyTorch's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator after the square root.
    pub eps: f64,
    /// Weight decay: an L2 term added to the gradient (Adam) or decoupled shrinking (AdamW).
    pub weight_decay: f64,
    /// Decoupled weight decay, which makes this `AdamW`.
    pub decoupled: bool,
    /// AMSGrad (Reddi et al., 2018): the denominator takes the largest second moment so far
    /// (kept as `max_exp_avg_sq`), PyTorch's `amsgrad`.
    pub amsgrad: bool,
    /// Maximize the objective: step along the gradient, not against it (PyTorch's `maximize`).
    pub maximize: bool,
}

impl AdamConfig {
    /// `torch.optim.Adam(lr=lr)`.
    pub fn adam(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            amsgrad: false,
            maximize: false,
        }
    }

    /// `torch.optim.AdamW(lr=lr)` (weight decay 0.01).
    pub fn adamw(lr: f64) -> Self {
        Self {
            weight_decay: 0.01,
            decoupled: true,
            ..Self::adam(lr)
        }
    }
}

struct Param {
    name: String,
    var: Var,
    moments: Option<Moments>,
}

/// Adam's state of one parameter tensor (or of a flat group of them).
pub(super) struct Moments {
    /// The steps taken (from 1, once one was).
    pub step: u64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// With `amsgrad`, the largest `exp_avg_sq` so far, element by element.
    pub max_exp_avg_sq: Option<Tensor>,
}

impl Moments {
    /// The zeros of the first step.
    fn zeros(c: &AdamConfig, like: &Tensor) -> Result<Self> {
        Ok(Self {
            step: 0,
            exp_avg: like.zeros_like()?,
            exp_avg_sq: like.zeros_like()?,
            max_exp_avg_sq: c.amsgrad.then(|| like.zeros_like()).transpose()?,
        })
    }
}

/// Adam (or AdamW with [`AdamConfig::adamw`]) as PyTorch's single-tensor path computes it:
/// `g = -g` (with `maximize`); `m = lerp(m, g, 1 - beta1)`; `v = beta2 * v + (1 - beta2) * g * g`;
/// `p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`, with `amsgrad` the
/// largest `v` so far in place of `v`.
/// Adam adds `weight_decay * p` to the gradient; AdamW first multiplies `p` by `1 - lr * weight_decay`.
pub struct Adam {
    params: Vec<Param>,
    config: AdamConfig,
    update: Update,
    /// How the fused CPU step rounds a product added to a value: as PyTorch on this CPU.
    rounding: Rounding,
    flat: flat::Cache,
}

impl Adam {
    /// An optimizer over `params`, checking the configuration as PyTorch does.
    ///
    /// # Errors
    /// A learning rate, epsilon or weight decay that is negative or not finite, or a beta
    /// outside `[0, 1)` (as `torch.optim.Adam`), named with PyTorch's message (`Invalid beta
    /// parameter at index 1: 1.5`) and the field (`beta2`).
    pub fn new(params: Vec<NamedVar>, config: AdamConfig) -> Result<Self> {
        let name = if config.decoupled { "AdamW" } else { "Adam" };
        check_hyper(name, ("lr", "Invalid learning rate"), config.lr, false)?;
        check_hyper(name, ("eps", "Invalid epsilon value"), config.eps, false)?;
        let beta = |i| format!("Invalid beta parameter at index {i}");
        check_hyper(name, ("beta1", &beta(0)), config.beta1, true)?;
        check_hyper(name, ("beta2", &beta(1)), config.beta2, true)?;
        let decay = ("weight_decay", "Invalid weight_decay value");
        check_hyper(name, decay, config.weight_decay, false)?;
        let update = Update::for_params(&params.iter().map(|p| p.1.clone()).collect::<Vec<_>>());
        let params = params
            .into_iter()
            .map(|(name, var)| Param {
                name,
                var,
                moments: None,
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
        let c = self.config;
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let m = match p.moments.take() {
                Some(m) => m,
                None => Moments::zeros(&c, grad)?,
            };
            let m = Moments {
                step: m.step + 1,
                ..m
            };
            if fused::applies(&p.var, grad) {
                fused::step(&c, self.rounding, &p.var, grad, &m)?;
                p.moments = Some(m);
                continue;
            }
            let (param, m) = tensor_step(&c, p.var.as_tensor(), grad, &m)?;
            p.var.set(&param)?;
            p.moments = Some(m);
        }
        Ok(())
    }

    /// One update per group of parameters with a gradient, of one dtype and device and at the
    /// same step count, over flat tensors ([`flat`]).
    fn step_flat(&mut self, grads: &GradStore) -> Result<()> {
        let grad_of: Vec<Option<&Tensor>> = self
            .params
            .iter()
            .map(|p| grads.get(p.var.as_tensor()))
            .collect();
        let keyed = (self.params.iter().enumerate())
            .filter(|(i, _)| grad_of[*i].is_some())
            .map(|(i, p)| {
                let step = p.moments.as_ref().map_or(0, |m| m.step);
                (i, GroupKey::of(&p.var, step))
            })
            .collect();
        let mut cached = std::mem::take(&mut self.flat);
        for (key, members) in flat::partition(keyed) {
            let vars: Vec<&Var> = members.iter().map(|&i| &self.params[i].var).collect();
            let grads: Vec<&Tensor> = members.iter().filter_map(|&i| grad_of[i]).collect();
            // The group's flat moments, `None` before its first step (zeros).
            let moments = match (key.state, cached.take(&members)) {
                (0, _) => None,
                (_, Some(buffers)) => Some((buffers[0].clone(), buffers[1].clone())),
                (_, None) => {
                    let moments = || {
                        members
                            .iter()
                            .filter_map(|&i| self.params[i].moments.as_ref())
                    };
                    Some((
                        flat::gather(moments().map(|m| &m.exp_avg))?,
                        flat::gather(moments().map(|m| &m.exp_avg_sq))?,
                    ))
                }
            };
            let step = key.state + 1;
            let (exp_avg, exp_avg_sq) = match flat::one_launch(&vars, &grads) {
                // One launch a step for every 64 tensors, in place (`multi_tensor.rs`).
                #[cfg(any(feature = "cuda", feature = "cuda-emulation"))]
                true => super::multi_tensor::adam_step(
                    &self.config,
                    step,
                    &vars,
                    &grads,
                    moments.as_ref().map(|(a, b)| (a, b)),
                )?,
                _ => {
                    let grad = flat::gather(grads.iter().copied())?;
                    let param = flat::gather(vars.iter().map(|v| v.as_tensor()))?;
                    let (exp_avg, exp_avg_sq) = match moments {
                        Some(m) => m,
                        None => (grad.zeros_like()?, grad.zeros_like()?),
                    };
                    // `amsgrad` and `maximize` step per tensor (`Optimizer::step`).
                    let m = Moments {
                        step,
                        exp_avg,
                        exp_avg_sq,
                        max_exp_avg_sq: None,
                    };
                    // f32 on the CPU: the fused step, in place (the flat moments are this
                    // optimizer's own), rounding as the per-tensor update does.
                    let (param, m) = match flat::fused_var(&param, &grad)? {
                        Some(var) => {
                            fused::step(&self.config, self.rounding, &var, &grad, &m)?;
                            (var.into_inner(), m)
                        }
                        None => tensor_step(&self.config, &param, &grad, &m)?,
                    };
                    flat::scatter(&param, vars.iter().copied())?;
                    (m.exp_avg, m.exp_avg_sq)
                }
            };
            let views = flat::views(&exp_avg, vars.iter().copied())?
                .into_iter()
                .zip(flat::views(&exp_avg_sq, vars.iter().copied())?);
            for (&i, (exp_avg, exp_avg_sq)) in members.iter().zip(views) {
                self.params[i].moments = Some(Moments {
                    step,
                    exp_avg,
                    exp_avg_sq,
                    max_exp_avg_sq: None,
                });
            }
            self.flat.put(members, vec![exp_avg, exp_avg_sq]);
        }
        Ok(())
    }

    /// The hyper-parameters in use (the learning rate and beta1 as last set).
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }
}

/// Adam step number `m.step` (from 1) as whole-tensor operations, for any dtype and device:
/// the new parameter and moments.
pub(super) fn tensor_step(
    c: &AdamConfig,
    param: &Tensor,
    grad: &Tensor,
    m: &Moments,
) -> Result<(Tensor, Moments)> {
    let (step, exp_avg, exp_avg_sq) = (m.step, &m.exp_avg, &m.exp_avg_sq);
    let mut param = param.detach();
    let mut grad = match c.maximize {
        true => grad.neg()?,
        false => grad.detach(),
    };
    if c.weight_decay != 0.0 {
        if c.decoupled {
            param = (param * (1.0 - c.lr * c.weight_decay))?;
        } else {
            grad = (grad + (&param * c.weight_decay)?)?;
        }
    }
    // `exp_avg.lerp_(grad, 1 - beta1)` as PyTorch's `lerp` computes it (`Lerp.h`): from the
    // nearer end, with the weight in the tensors' arithmetic type (`opmath_t`): double for
    // float64 tensors, float32 otherwise (float32, and bf16 or f16, computed in float32).
    let (w, one_minus_w) = match exp_avg.dtype() {
        DType::F64 => (1.0 - c.beta1, 1.0 - (1.0 - c.beta1)),
        _ => {
            let w = (1.0 - c.beta1) as f32;
            (f64::from(w), f64::from(1.0 - w))
        }
    };
    let exp_avg = match w < 0.5 {
        true => (exp_avg + ((&grad - exp_avg)? * w)?)?,
        false => (&grad - ((&grad - exp_avg)? * one_minus_w)?)?,
    };
    let exp_avg_sq = ((exp_avg_sq * c.beta2)? + ((&grad * (1.0 - c.beta2))? * &grad)?)?;
    let max_exp_avg_sq = match (c.amsgrad, &m.max_exp_avg_sq) {
        (false, _) => None,
        (true, Some(max)) => Some(maximum(max, &exp_avg_sq)?),
        (true, None) => anyhow::bail!("adam: amsgrad without a max_exp_avg_sq"),
    };
    let bias_correction1 = 1.0 - c.beta1.powf(step as f64);
    let bias_correction2 = 1.0 - c.beta2.powf(step as f64);
    let step_size = c.lr / bias_correction1;
    let denom = (max_exp_avg_sq
        .as_ref()
        .unwrap_or(&exp_avg_sq)
        .sqrt()?
        .broadcast_div(&scalar_like(bias_correction2.powf(0.5), &grad)?)?
        + c.eps)?;
    let update = ((&exp_avg * -step_size)? / denom)?;
    let moments = Moments {
        step,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
    };
    Ok(((param + update)?, moments))
}

/// `torch.maximum(a, b)`: NaN where either is (Candle's `maximum` passes over a NaN in `b`), as
/// the fused step keeps it.
fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let nan = |t: &Tensor| t.ne(t);
    // `a` where it is at least `b` or NaN, else `b` (NaN or the larger).
    let keep_a = (a.ge(b)?.to_dtype(DType::U8)? + nan(a)?)?.gt(0u8)?;
    Ok(keep_a.where_cond(a, b)?)
}

fn scalar_like(value: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(value, like.device())?.to_dtype(like.dtype())?)
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        crate::ensure_a_gradient(
            match self.config.decoupled {
                true => "AdamW",
                false => "Adam",
            },
            self.params.iter().map(|p| &p.var),
            grads,
        )?;
        match self.update {
            // The one-launch CUDA kernel steps without `amsgrad` and `maximize`.
            Update::Flat if !(self.config.amsgrad || self.config.maximize) => self.step_flat(grads),
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
        self.config.beta1
    }

    fn set_momentum(&mut self, momentum: f64) {
        self.config.beta1 = momentum;
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            if let Some(m) = &p.moments {
                let step = Tensor::new(m.step as f64, m.exp_avg.device())?;
                out.insert(format!("{}.step", p.name), step);
                // Copies: the step updates the moments in place.
                out.insert(format!("{}.exp_avg", p.name), m.exp_avg.copy()?);
                out.insert(format!("{}.exp_avg_sq", p.name), m.exp_avg_sq.copy()?);
                if let Some(max) = &m.max_exp_avg_sq {
                    out.insert(format!("{}.max_exp_avg_sq", p.name), max.copy()?);
                }
            }
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.flat.clear();
        let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let amsgrad = self.config.amsgrad;
        let saved_amsgrad = state.keys().any(|k| k.ends_with(".max_exp_avg_sq"));
        if saved_amsgrad && !amsgrad {
            anyhow::bail!(
                "the optimizer state holds AMSGrad's largest second moments (max_exp_avg_sq): \
                 it was saved with amsgrad, and resumes only with amsgrad on"
            );
        }
        let kept = ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"];
        let buffers = buffers_of(state, &names, &kept[..3 + usize::from(amsgrad)])?;
        for (p, bufs) in self.params.iter_mut().zip(buffers) {
            if bufs.is_empty() {
                p.moments = None;
                continue;
            }
            let get = |b: &str| {
                bufs.get(b)
                    .with_context(|| format!("optimizer state lacks {}.{b}", p.name))
            };
            let step = get("step")?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            // What no step writes (an edited or damaged state): the bias corrections would
            // divide by zero, the root of the second moment be NaN, and the run train to NaN.
            ensure!(
                step >= 1.0 && step.fract() == 0.0,
                "optimizer state {}.step is {step}: Adam's step count is a whole number from 1 \
                 (the state was edited or damaged)",
                p.name
            );
            let squares = |b: &str| -> Result<Tensor> {
                let key = format!("{}.{b}", p.name);
                let t = restore_like(get(b)?, &p.var, &key)?;
                if t.elem_count() > 0 {
                    let low = (t.flatten_all()?.min(0)?)
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?;
                    ensure!(
                        low >= 0.0 || low.is_nan(),
                        "optimizer state {key} holds {low}: a running mean of squared \
                         gradients is never negative (the state was edited or damaged)",
                    );
                }
                // A copy: the step updates the moments in place, and `state` is the caller's.
                Ok(t.copy()?)
            };
            let max_exp_avg_sq = match amsgrad {
                true if !saved_amsgrad => anyhow::bail!(
                    "optimizer state lacks {}.max_exp_avg_sq: AMSGrad keeps the largest second \
                     moments, and a state saved without amsgrad does not resume with it",
                    p.name
                ),
                true => Some(squares("max_exp_avg_sq")?),
                false => None,
            };
            p.moments = Some(Moments {
                step: step as u64,
                exp_avg: restore_like(get("exp_avg")?, &p.var, &format!("{}.exp_avg", p.name))?
                    .copy()?,
                exp_avg_sq: squares("exp_avg_sq")?,
                max_exp_avg_sq,
            });
        }
        Ok(())
    }
}
