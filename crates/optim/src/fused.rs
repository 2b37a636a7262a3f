//! Adam's and SGD's updates as one pass over contiguous f32 CPU tensors, in place: parameter,
//! optimizer state and gradient read once, each element computed with PyTorch's single-tensor
//! operations in its order (`torch.optim.SGD`, `Adam`, `AdamW` on the CPU), a product added to a
//! value rounded as PyTorch's kernels on this CPU round it ([`Rounding`]). Rounded twice, the
//! result is that of the tensor-by-tensor formulations in [`super::Adam`] and [`super::Sgd`]
//! (about twelve and four to seven whole-tensor Candle operations, each into a fresh buffer, on
//! the calling thread) bit for bit. Element-wise, in chunks across the thread pool, so the
//! result does not depend on the number of threads.

use std::sync::Mutex;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor, Var};
use rayon::prelude::*;

use super::adam::Moments;
use super::rounding::{with_fma, Rounding};
use super::{AdamConfig, SgdConfig};

/// Elements per chunk of the parallel pass; shorter tensors run on the caller.
const CHUNK: usize = 16 * 1024;

/// Whether the fused step can update `var` from `grad`: both f32, contiguous, on the CPU, of
/// one shape.
pub(super) fn applies(var: &Var, grad: &Tensor) -> bool {
    let t = var.as_tensor();
    t.device().is_cpu()
        && grad.device().is_cpu()
        && t.dtype() == DType::F32
        && grad.dtype() == DType::F32
        && t.is_contiguous()
        && grad.is_contiguous()
        && t.shape() == grad.shape()
}

/// An error unless every tensor of `ts` is a contiguous f32 tensor of `var`'s shape.
fn check_like<'a>(var: &Var, ts: impl IntoIterator<Item = &'a Tensor>, what: &str) -> Result<()> {
    for t in ts {
        if t.shape() != var.shape() || !t.is_contiguous() || t.dtype() != DType::F32 {
            bail!(
                "{what}: a {:?} {:?} tensor for a parameter of shape {:?}",
                t.dtype(),
                t.dims(),
                var.dims()
            )
        }
    }
    Ok(())
}

/// The contiguous f32 CPU values behind a tensor's storage and layout (a gradient's).
fn f32_values<'a>(
    storage: &'a candle_core::Storage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(g)), Some((a, b))) => Ok(&g[a..b]),
        _ => bail!("{what}: the gradient must be a contiguous f32 CPU tensor"),
    }
}

/// Runs `f` on the contiguous f32 values of `t`, mutably, in place.
fn with_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()> + Send) -> Result<()> {
    let op = Mutate(Mutex::new(Some(f)), Mutex::new(None));
    t.inplace_op1(&op)?;
    match op.1.into_inner() {
        Ok(Some(err)) => Err(err),
        _ => Ok(()),
    }
}

/// An in-place operation running a closure once; its error is kept apart, since Candle's error
/// type cannot carry an `anyhow` one.
struct Mutate<F>(Mutex<Option<F>>, Mutex<Option<anyhow::Error>>);

impl<F: FnOnce(&mut [f32]) -> Result<()> + Send> InplaceOp1 for Mutate<F> {
    fn name(&self) -> &'static str {
        "optimizer-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("optimizer: the parameter and its state must be contiguous f32")
        };
        let f = self.0.lock().ok().and_then(|mut f| f.take());
        if let Some(Err(e)) = f.map(|f| f(&mut v[a..b])) {
            if let Ok(mut slot) = self.1.lock() {
                *slot = Some(e);
            }
        }
        Ok(())
    }
}

/// The constants of one step, in f32 as PyTorch's and Candle's scalar operations round them.
#[derive(Clone, Copy)]
struct Step {
    rounding: Rounding,
    maximize: bool,
    amsgrad: bool,
    weight_decay: f32,
    decay: Option<bool>,
    shrink: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    sqrt_bc2: f32,
    eps: f32,
    neg_step_size: f32,
}

impl Step {
    fn new(c: &AdamConfig, step: u64, rounding: Rounding) -> Self {
        let bias_correction1 = 1.0 - c.beta1.powf(step as f64);
        let bias_correction2 = 1.0 - c.beta2.powf(step as f64);
        Self {
            rounding,
            maximize: c.maximize,
            amsgrad: c.amsgrad,
            weight_decay: c.weight_decay as f32,
            decay: (c.weight_decay != 0.0).then_some(c.decoupled),
            shrink: (1.0 - c.lr * c.weight_decay) as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            // Python's `bias_correction2 ** 0.5` (C's `pow`, not always `sqrt`'s double).
            sqrt_bc2: bias_correction2.powf(0.5) as f32,
            eps: c.eps as f32,
            neg_step_size: (-(c.lr / bias_correction1)) as f32,
        }
    }

    /// One chunk; `mx` (the largest second moments, with `amsgrad`) is empty without it.
    fn run(self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], mx: &mut [f32]) {
        match self.rounding {
            Rounding::Once => with_fma(
                #[inline(always)]
                || self.run_any::<true>(p, g, m, v, mx),
            ),
            Rounding::Twice => layers::wide::run(
                #[inline(always)]
                || self.run_any::<false>(p, g, m, v, mx),
            ),
        }
    }

    /// [`Self::run`] as compiled for any CPU (inlined into its AVX-512 and FMA copies), with
    /// `a * b + c` rounded once where `ONCE`. PyTorch's operations: `grad = -grad`
    /// (`maximize`), `param.mul_(1 - lr * weight_decay)` (AdamW) or `grad = grad.add(param,
    /// alpha=weight_decay)`, `exp_avg.lerp_(grad, 1 - beta1)`,
    /// `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)`, with `amsgrad`
    /// `torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)`, `denom =
    /// (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)` (of `max_exp_avg_sq` with
    /// `amsgrad`), `param.addcdiv_(exp_avg, denom, value=-step_size)`. Rounded twice, they are
    /// also those of Candle's tensor operations in [`super::adam::tensor_step`] but for the
    /// sign of zeros: Candle's product with a scalar (`affine`, `x * a + 0.0`) turns a `-0.0`
    /// into `+0.0`.
    #[inline(always)]
    fn run_any<const ONCE: bool>(
        self,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        mx: &mut [f32],
    ) {
        let rows = p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut()));
        if !self.amsgrad {
            for ((p, &g), (m, v)) in rows {
                let (param, m1, v1) = self.moments::<ONCE>(*p, g, *m, *v);
                *p = self.apply(param, m1, v1);
                *m = m1;
                *v = v1;
            }
            return;
        }
        for (((p, &g), (m, v)), mx) in rows.zip(mx.iter_mut()) {
            let (param, m1, v1) = self.moments::<ONCE>(*p, g, *m, *v);
            // `torch.maximum`: NaN where either is NaN (the NaN itself, so that every copy of
            // this loop gives the same bits).
            let hi = if *mx >= v1 || mx.is_nan() { *mx } else { v1 };
            *p = self.apply(param, m1, hi);
            *m = m1;
            *v = v1;
            *mx = hi;
        }
    }

    /// The parameter after weight decay and the new moments of one element.
    #[inline(always)]
    fn moments<const ONCE: bool>(self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        // `-g` is exact.
        let (mut param, mut g) = (p, if self.maximize { -g } else { g });
        let w = self.one_minus_beta1;
        if ONCE {
            match self.decay {
                Some(true) => param *= self.shrink,
                Some(false) => g = param.mul_add(self.weight_decay, g),
                None => {}
            }
            // `lerp` (`Lerp.h`, `LerpKernel.cpp`): `fma(w, end - start, start)` for a weight
            // under 0.5, else `fma(w - 1, end - start, end)`, so that a weight of 1 (beta1 =
            // 0) gives the gradient itself.
            let m1 = match w < 0.5 {
                true => (g - m).mul_add(w, m),
                false => (g - m).mul_add(w - 1.0, g),
            };
            let v1 = (g * self.one_minus_beta2).mul_add(g, v * self.beta2);
            (param, m1, v1)
        } else {
            match self.decay {
                Some(true) => param *= self.shrink,
                Some(false) => g += param * self.weight_decay,
                None => {}
            }
            // PyTorch's `lerp` from the nearer end, each product and sum rounded.
            let m1 = match w < 0.5 {
                true => m + (g - m) * w,
                false => g - (g - m) * (1.0 - w),
            };
            let v1 = v * self.beta2 + (g * self.one_minus_beta2) * g;
            (param, m1, v1)
        }
    }

    /// The parameter after the step, from the second moment `v` the denominator takes.
    #[inline(always)]
    fn apply(self, param: f32, m1: f32, v: f32) -> f32 {
        let denom = v.sqrt() / self.sqrt_bc2 + self.eps;
        param + (m1 * self.neg_step_size) / denom
    }
}

/// Adam step number `m.step` (from 1) of `var` with gradient `grad` and moments `m`, all
/// updated in place (the moments must not share storage with anything else).
///
/// # Errors
/// A tensor that is not a contiguous f32 CPU tensor of the parameter's shape, or no
/// `max_exp_avg_sq` with `amsgrad` (or one without).
pub(super) fn step(
    c: &AdamConfig,
    rounding: Rounding,
    var: &Var,
    grad: &Tensor,
    m: &Moments,
) -> Result<()> {
    let n = var.elem_count();
    let (exp_avg, exp_avg_sq, max) = (&m.exp_avg, &m.exp_avg_sq, m.max_exp_avg_sq.as_ref());
    let state = [grad, exp_avg, exp_avg_sq].into_iter().chain(max);
    check_like(var, state, "adam")?;
    if c.amsgrad != max.is_some() {
        bail!(
            "adam: amsgrad {} with a max_exp_avg_sq: {}",
            c.amsgrad,
            max.is_some()
        );
    }
    let k = Step::new(c, m.step, rounding);
    let (g_storage, g_layout) = grad.storage_and_layout();
    let g = f32_values(&g_storage, g_layout, "adam")?;
    let pass = |p: &mut [f32], m: &mut [f32], v: &mut [f32], mx: &mut [f32]| {
        if [p.len(), m.len(), v.len(), g.len()] != [n; 4] || (k.amsgrad && mx.len() != n) {
            bail!("adam: buffers of different lengths");
        }
        if n <= 2 * CHUNK {
            k.run(p, g, m, v, mx);
        } else if k.amsgrad {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .zip(mx.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), (m, v)), mx)| k.run(p, g, m, v, mx));
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (m, v))| k.run(p, g, m, v, &mut []));
        }
        Ok(())
    };
    with_mut(var.as_tensor(), |p| {
        with_mut(exp_avg, |m| {
            with_mut(exp_avg_sq, |v| match max {
                Some(mx) => with_mut(mx, |mx| pass(p, m, v, mx)),
                None => pass(p, m, v, &mut []),
            })
        })
    })
}

/// The constants of one SGD step, in f32 as PyTorch's and Candle's scalar operations round
/// them.
#[derive(Clone, Copy)]
struct SgdStep {
    rounding: Rounding,
    weight_decay: Option<f32>,
    momentum: Option<f32>,
    /// `1 - dampening`, where the dampening is not zero.
    undamped: Option<f32>,
    nesterov: bool,
    maximize: bool,
    neg_lr: f32,
}

impl SgdStep {
    fn new(c: &SgdConfig, rounding: Rounding) -> Self {
        Self {
            rounding,
            weight_decay: (c.weight_decay != 0.0).then_some(c.weight_decay as f32),
            momentum: (c.momentum != 0.0).then_some(c.momentum as f32),
            undamped: (c.dampening != 0.0).then_some((1.0 - c.dampening) as f32),
            nesterov: c.nesterov,
            maximize: c.maximize,
            neg_lr: -c.lr as f32,
        }
    }

    /// One chunk; `buf` is empty without momentum, and is written (not read) with `first`.
    fn run(self, p: &mut [f32], g: &[f32], buf: &mut [f32], first: bool) {
        match self.rounding {
            Rounding::Once => with_fma(
                #[inline(always)]
                || self.run_any::<true>(p, g, buf, first),
            ),
            Rounding::Twice => layers::wide::run(
                #[inline(always)]
                || self.run_any::<false>(p, g, buf, first),
            ),
        }
    }

    /// [`Self::run`] as compiled for any CPU (inlined into its AVX-512 and FMA copies), with
    /// `a * b + c` rounded once where `ONCE`. PyTorch's operations: `grad = -grad`
    /// (`maximize`), `grad = grad.add(param, alpha=weight_decay)`, `buf.mul_(momentum).add_(grad, alpha=1 -
    /// dampening)` (a clone of the gradient at first), `grad = grad.add(buf, alpha=momentum)`
    /// (Nesterov), `param.add_(grad, alpha=-lr)`. Rounded twice, they are also those of
    /// Candle's tensor operations in `sgd.rs` but for the sign of zeros (its products with a
    /// scalar add a `+0.0`).
    #[inline(always)]
    fn run_any<const ONCE: bool>(self, p: &mut [f32], g: &[f32], buf: &mut [f32], first: bool) {
        // `c + s * a` (`torch.add(c, a, alpha=s)`), rounded once or twice.
        let axpy = |a: f32, s: f32, c: f32| if ONCE { a.mul_add(s, c) } else { c + a * s };
        let sign = if self.maximize { -1.0 } else { 1.0 };
        // `-g` is exact, as a product with -1.
        let decayed = |p: f32, g: f32| match self.weight_decay {
            Some(wd) => axpy(p, wd, g * sign),
            None => g * sign,
        };
        let Some(m) = self.momentum else {
            for (p, &g) in p.iter_mut().zip(g) {
                *p = axpy(decayed(*p, g), self.neg_lr, *p);
            }
            return;
        };
        // Zipped, not indexed, so that the loop is vectorised.
        for ((p, &g), buf) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let d = decayed(*p, g);
            let kept = *buf * m;
            let b = match (first, self.undamped) {
                (true, _) => d,
                (false, None) => kept + d,
                (false, Some(u)) => axpy(d, u, kept),
            };
            *buf = b;
            let d = if self.nesterov { axpy(b, m, d) } else { b };
            *p = axpy(d, self.neg_lr, *p);
        }
    }
}

/// One SGD step of `var` from `grad` and its momentum buffer `buf` (updated in place; made on
/// the first step with momentum; left as it is without momentum, as PyTorch): the buffer to
/// keep. `buf` must not share storage with anything else.
///
/// # Errors
/// A gradient or buffer that is not a contiguous f32 CPU tensor of the parameter's shape.
pub(super) fn sgd_step(
    c: &SgdConfig,
    rounding: Rounding,
    var: &Var,
    grad: &Tensor,
    buf: Option<Tensor>,
) -> Result<Option<Tensor>> {
    let n = var.elem_count();
    check_like(var, std::iter::once(grad).chain(&buf), "sgd")?;
    let k = SgdStep::new(c, rounding);
    let (g_storage, g_layout) = grad.storage_and_layout();
    let g = f32_values(&g_storage, g_layout, "sgd")?;
    let pass = |p: &mut [f32], b: &mut [f32], first: bool| {
        if p.len() != n || g.len() != n || (k.momentum.is_some() && b.len() != n) {
            bail!("sgd: buffers of different lengths");
        }
        if n <= 2 * CHUNK {
            k.run(p, g, b, first);
        } else if k.momentum.is_some() {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(b.par_chunks_mut(CHUNK))
                .for_each(|((p, g), b)| k.run(p, g, b, first));
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(p, g)| k.run(p, g, &mut [], first));
        }
        Ok(())
    };
    match (k.momentum, buf) {
        (Some(_), Some(buf)) => {
            with_mut(var.as_tensor(), |p| with_mut(&buf, |b| pass(p, b, false)))?;
            Ok(Some(buf))
        }
        (Some(_), None) => {
            let mut b = vec![0f32; n];
            with_mut(var.as_tensor(), |p| pass(p, &mut b, true))?;
            Ok(Some(Tensor::from_vec(b, var.shape(), var.device())?))
        }
        (None, kept) => {
            with_mut(var.as_tensor(), |p| pass(p, &mut [], false))?;
            Ok(kept)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::adam::tensor_step;
    use super::super::rounding::on_avx2;
    use super::*;

    /// Every kind of Adam the tests step: plain, with L2 weight decay, AdamW, AMSGrad,
    /// maximizing.
    fn adam_kinds() -> [AdamConfig; 7] {
        [
            AdamConfig::adam(1e-3),
            // Lerp weights 1 - beta1 of 0.6 and 1: PyTorch's `lerp` from the gradient's end.
            AdamConfig {
                beta1: 0.4,
                ..AdamConfig::adam(1e-3)
            },
            AdamConfig {
                beta1: 0.0,
                ..AdamConfig::adamw(0.1)
            },
            AdamConfig {
                weight_decay: 0.1,
                ..AdamConfig::adam(0.05)
            },
            AdamConfig::adamw(0.1),
            AdamConfig {
                amsgrad: true,
                weight_decay: 0.1,
                ..AdamConfig::adam(0.05)
            },
            AdamConfig {
                amsgrad: true,
                maximize: true,
                ..AdamConfig::adamw(0.1)
            },
        ]
    }

    /// Every kind of SGD the tests step: plain, momentum, with weight decay, dampening,
    /// Nesterov, weight decay alone, maximizing.
    fn sgd_kinds() -> [SgdConfig; 7] {
        let base = SgdConfig::new(0.1);
        [
            base,
            SgdConfig {
                momentum: 0.9,
                ..base
            },
            SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                ..base
            },
            SgdConfig {
                momentum: 0.8,
                dampening: 0.3,
                weight_decay: 0.01,
                ..base
            },
            SgdConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-3,
                ..base
            },
            SgdConfig {
                weight_decay: 0.1,
                ..base
            },
            SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                maximize: true,
                ..base
            },
        ]
    }

    /// Both roundings.
    const ROUNDINGS: [Rounding; 2] = [Rounding::Once, Rounding::Twice];

    /// The updates as compiled for AVX-512 or FMA (`layers::wide`, `rounding::with_fma`, where
    /// this CPU has them), and rounding once in the AVX2 + FMA copy that CPUs without AVX-512
    /// run, give the bits of the default target's copy (`run_any`, whose fused multiply-adds
    /// are the C library's `fmaf`), for every kind of Adam and SGD in both roundings, over
    /// lengths with and without a vector remainder, with zeros, NaN and infinities among the
    /// values.
    #[test]
    fn widened_updates_give_the_default_targets_bits() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        // Any NaN as one: a maximizing step's negated NaN gradient meets the state's NaNs, and
        // which of two NaNs an operation hands on depends on the order of its operands, which
        // each copy's compiler chooses (x86 returns the first; a NaN's sign means nothing).
        let bits = |v: &[f32]| {
            (v.iter())
                .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
                .collect::<Vec<u32>>()
        };
        for n in [1, 15, 16, 37, 1000] {
            let mut values = |scale: f32| -> Vec<f32> {
                let mut v: Vec<f32> = (0..n).map(|_| uniform() * 4.0 * scale).collect();
                for (i, s) in [0.0, -0.0, f32::NAN, f32::INFINITY].into_iter().enumerate() {
                    if 3 * i + 1 < n {
                        v[3 * i + 1] = s;
                    }
                }
                v
            };
            let (p, g, m) = (values(1.0), values(0.1), values(0.01));
            let v: Vec<f32> = values(1e-3).iter().map(|x| x.abs()).collect();
            for (c, r) in adam_kinds()
                .into_iter()
                .flat_map(|c| ROUNDINGS.map(|r| (c, r)))
            {
                let k = Step::new(&c, 3, r);
                // The largest second moments so far: some above the new ones, some below.
                let mx: Vec<f32> = match c.amsgrad {
                    true => v
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * (i % 3) as f32)
                        .collect(),
                    false => Vec::new(),
                };
                let (mut p1, mut m1, mut v1, mut x1) =
                    (p.clone(), m.clone(), v.clone(), mx.clone());
                let (mut p2, mut m2, mut v2, mut x2) =
                    (p.clone(), m.clone(), v.clone(), mx.clone());
                k.run(&mut p1, &g, &mut m1, &mut v1, &mut x1);
                match r {
                    Rounding::Once => k.run_any::<true>(&mut p2, &g, &mut m2, &mut v2, &mut x2),
                    Rounding::Twice => k.run_any::<false>(&mut p2, &g, &mut m2, &mut v2, &mut x2),
                }
                for (a, b) in [(&p1, &p2), (&m1, &m2), (&v1, &v2), (&x1, &x2)] {
                    assert_eq!(bits(a), bits(b), "adam {c:?}, {r:?}, {n} values");
                }
                // The AVX2 + FMA copy, which CPUs without AVX-512 run.
                let (mut p3, mut m3, mut v3, mut x3) = (p.clone(), m.clone(), v.clone(), mx);
                let avx2 = on_avx2(
                    #[inline(always)]
                    || k.run_any::<true>(&mut p3, &g, &mut m3, &mut v3, &mut x3),
                );
                if avx2.is_some() && r == Rounding::Once {
                    for (a, b) in [(&p3, &p2), (&m3, &m2), (&v3, &v2), (&x3, &x2)] {
                        assert_eq!(bits(a), bits(b), "adam {c:?} on AVX2, {n} values");
                    }
                }
            }
            for (c, r) in sgd_kinds()
                .into_iter()
                .flat_map(|c| ROUNDINGS.map(|r| (c, r)))
            {
                let k = SgdStep::new(&c, r);
                for first in [true, false] {
                    let buf = if c.momentum != 0.0 {
                        m.clone()
                    } else {
                        Vec::new()
                    };
                    let (mut p1, mut b1) = (p.clone(), buf.clone());
                    let (mut p2, mut b2) = (p.clone(), buf);
                    k.run(&mut p1, &g, &mut b1, first);
                    match r {
                        Rounding::Once => k.run_any::<true>(&mut p2, &g, &mut b2, first),
                        Rounding::Twice => k.run_any::<false>(&mut p2, &g, &mut b2, first),
                    }
                    let what = format!("sgd {c:?}, {r:?}, {n} values, first {first}");
                    assert_eq!(bits(&p1), bits(&p2), "{what}");
                    assert_eq!(bits(&b1), bits(&b2), "{what}");
                    let mut p3 = p.clone();
                    let mut b3 = if c.momentum != 0.0 {
                        m.clone()
                    } else {
                        Vec::new()
                    };
                    let avx2 = on_avx2(
                        #[inline(always)]
                        || k.run_any::<true>(&mut p3, &g, &mut b3, first),
                    );
                    if avx2.is_some() && r == Rounding::Once {
                        assert_eq!(bits(&p3), bits(&p2), "{what} on AVX2");
                        assert_eq!(bits(&b3), bits(&b2), "{what} on AVX2");
                    }
                }
            }
        }
    }

    /// Five steps of every kind of Adam, fused and rounding twice, and as whole-tensor Candle
    /// operations, give the same values (bit for bit but for the sign of zeros, which Candle's
    /// products with a scalar drop), on a tensor split across threads and on a short one.
    #[test]
    fn fused_steps_equal_the_tensor_formulation() -> Result<()> {
        let dev = Device::Cpu;
        for c in adam_kinds() {
            for n in [7, 3 * CHUNK + 5] {
                let p0 = Tensor::randn(0f32, 1.0, n, &dev)?;
                let var = Var::from_tensor(&p0)?;
                let zeros = || -> Result<Moments> {
                    Ok(Moments {
                        step: 0,
                        exp_avg: p0.zeros_like()?,
                        exp_avg_sq: p0.zeros_like()?,
                        max_exp_avg_sq: c.amsgrad.then(|| p0.zeros_like()).transpose()?,
                    })
                };
                let (mut fused, mut whole) = (zeros()?, zeros()?);
                let mut param = p0.copy()?;
                for step in 1..=5 {
                    let grad = Tensor::randn(0f32, 1.0, n, &dev)?;
                    assert!(applies(&var, &grad));
                    fused.step = step;
                    whole.step = step;
                    super::step(&c, Rounding::Twice, &var, &grad, &fused)?;
                    (param, whole) = tensor_step(&c, &param, &grad, &whole)?;
                }
                let pairs = [
                    (var.as_tensor(), &param),
                    (&fused.exp_avg, &whole.exp_avg),
                    (&fused.exp_avg_sq, &whole.exp_avg_sq),
                ];
                let maxima = fused
                    .max_exp_avg_sq
                    .as_ref()
                    .zip(whole.max_exp_avg_sq.as_ref());
                for (a, b) in pairs.into_iter().chain(maxima) {
                    assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?, "{c:?}");
                }
                assert_eq!(maxima.is_some(), c.amsgrad);
            }
        }
        Ok(())
    }

    /// `exp_avg.lerp_(grad, 1 - beta1)` as PyTorch computes it: with beta1 = 0 (a weight of 1)
    /// the first moment is the gradient itself, whatever it was (`m + (g - m) * 1` rounds), in
    /// the fused step and in the whole-tensor one.
    #[test]
    fn adam_first_moment_with_beta1_zero_is_the_gradient() -> Result<()> {
        let c = AdamConfig {
            beta1: 0.0,
            ..AdamConfig::adam(1e-3)
        };
        let g: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 1e-3).collect();
        let m0: Vec<f32> = (0..64).map(|i| (i as f32 * 0.91).cos() * 7.3).collect();
        for r in ROUNDINGS {
            let (mut p, mut m, mut v) = (vec![1.0f32; 64], m0.clone(), vec![1e-6f32; 64]);
            Step::new(&c, 2, r).run(&mut p, &g, &mut m, &mut v, &mut []);
            assert_eq!(m, g, "{r:?}");
        }
        let t = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu);
        let m = Moments {
            step: 2,
            exp_avg: t(&m0)?,
            exp_avg_sq: t(&[1e-6; 64])?,
            max_exp_avg_sq: None,
        };
        let (_, m2) = tensor_step(&c, &t(&[1.0; 64])?, &t(&g)?, &m)?;
        assert_eq!(m2.exp_avg.to_vec1::<f32>()?, g);
        Ok(())
    }

    /// Six steps of every kind of SGD, fused and rounding twice, and as whole-tensor Candle
    /// operations, give the same values (as above)
    /// (parameters and momentum buffers), with the learning rate and momentum changed between
    /// steps, on a tensor split across threads and on a short one.
    #[test]
    fn fused_sgd_steps_equal_the_tensor_formulation() -> Result<()> {
        let dev = Device::Cpu;
        for c in sgd_kinds() {
            for n in [7, 3 * CHUNK + 5] {
                let p0 = Tensor::randn(0f32, 1.0, n, &dev)?;
                let var = Var::from_tensor(&p0)?;
                let (mut param, mut buf, mut fused_buf) = (p0.copy()?, None, None);
                for step in 0..6 {
                    let c = SgdConfig {
                        lr: c.lr / (1 + step) as f64,
                        momentum: if step == 3 {
                            0.5 * c.momentum
                        } else {
                            c.momentum
                        },
                        ..c
                    };
                    let grad = Tensor::randn(0f32, 1.0, n, &dev)?;
                    assert!(applies(&var, &grad));
                    fused_buf = sgd_step(&c, Rounding::Twice, &var, &grad, fused_buf)?;
                    (param, buf) = super::super::sgd::tensor_update(&c, &param, &grad, buf)?;
                }
                assert_eq!(var.to_vec1::<f32>()?, param.to_vec1::<f32>()?, "{c:?}");
                match (&fused_buf, &buf) {
                    (Some(a), Some(b)) => {
                        assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?, "{c:?}")
                    }
                    (None, None) => {}
                    _ => panic!("{c:?}: one formulation kept a buffer, the other not"),
                }
            }
        }
        Ok(())
    }

    /// PyTorch's single-tensor SGD step on the CPU, one whole-vector operation at a time as its
    /// Python code runs them, with the kernels of a CPU with FMA: `torch.add(a, b, alpha=s)` is
    /// `fma(b, s, a)`, scalars are converted to float32 as the kernels take them.
    fn torch_sgd(c: &SgdConfig, p: &mut Vec<f32>, g: &[f32], buf: &mut Option<Vec<f32>>) {
        let add = |a: &[f32], b: &[f32], s: f64| -> Vec<f32> {
            a.iter()
                .zip(b)
                .map(|(a, b)| b.mul_add(s as f32, *a))
                .collect()
        };
        // grad = grads[i] if not maximize else -grads[i]
        let mut grad: Vec<f32> = g.iter().map(|&g| if c.maximize { -g } else { g }).collect();
        if c.weight_decay != 0.0 {
            grad = add(&grad, p, c.weight_decay); // grad = grad.add(param, alpha=weight_decay)
        }
        if c.momentum != 0.0 {
            let b = match buf.take() {
                None => grad.clone(), // torch.clone(grad).detach()
                Some(b) => {
                    // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    let b: Vec<f32> = b.iter().map(|b| b * c.momentum as f32).collect();
                    add(&b, &grad, 1.0 - c.dampening)
                }
            };
            grad = match c.nesterov {
                true => add(&grad, &b, c.momentum), // grad = grad.add(buf, alpha=momentum)
                false => b.clone(),
            };
            *buf = Some(b);
        }
        *p = add(p, &grad, -c.lr); // param.add_(grad, alpha=-lr)
    }

    /// PyTorch's single-tensor Adam / AdamW step (`_single_tensor_adam`) on the CPU in the same
    /// way: `lerp_` as `LerpKernel.cpp`'s vector kernel, `addcmul_` as `fma(value * t1, t2,
    /// self)`, `addcdiv_` as `self + value * t1 / t2`.
    fn torch_adam(
        c: &AdamConfig,
        t: u64,
        p: &mut [f32],
        g: &[f32],
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        max_v: &mut [f32],
    ) {
        // grad = grads[i] if not maximize else -grads[i]
        let mut grad: Vec<f32> = g.iter().map(|&g| if c.maximize { -g } else { g }).collect();
        if c.weight_decay != 0.0 {
            if c.decoupled {
                let shrink = (1.0 - c.lr * c.weight_decay) as f32; // param.mul_(1 - lr * wd)
                p.iter_mut().for_each(|p| *p *= shrink);
            } else {
                let wd = c.weight_decay as f32; // grad = grad.add(param, alpha=weight_decay)
                grad = grad
                    .iter()
                    .zip(p.iter())
                    .map(|(g, p)| p.mul_add(wd, *g))
                    .collect();
            }
        }
        let w = (1.0 - c.beta1) as f32; // exp_avg.lerp_(grad, 1 - beta1)
        *m = m
            .iter()
            .zip(&grad)
            .map(|(&s, &e)| match w.abs() < 0.5 {
                true => w.mul_add(e - s, s),
                false => (w - 1.0).mul_add(e - s, e),
            })
            .collect();
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        let value = (1.0 - c.beta2) as f32;
        *v = v
            .iter()
            .zip(&grad)
            .map(|(&v, &g)| (value * g).mul_add(g, v * c.beta2 as f32))
            .collect();
        let bias_correction1 = 1.0 - c.beta1.powf(t as f64);
        let bias_correction2 = 1.0 - c.beta2.powf(t as f64);
        let step_size = c.lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        // torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
        for (x, &v) in max_v.iter_mut().zip(v.iter()) {
            *x = if *x >= v || x.is_nan() { *x } else { v };
        }
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), of max_exp_avg_sqs[i]
        // with amsgrad
        let denom: Vec<f32> = if c.amsgrad { &max_v[..] } else { &v[..] }
            .iter()
            .map(|v| v.sqrt() / bias_correction2_sqrt as f32 + c.eps as f32)
            .collect();
        // param.addcdiv_(exp_avg, denom, value=-step_size)
        let value = -step_size as f32;
        for ((p, m), d) in p.iter_mut().zip(m.iter()).zip(&denom) {
            *p += value * m / d;
        }
    }

    /// Rounding once, the fused steps are PyTorch's single-tensor steps with its FMA kernels
    /// ([`torch_sgd`], [`torch_adam`]) bit for bit, over five steps of every kind of SGD and
    /// Adam, on a tensor split across threads and on a short one; and they differ from the
    /// steps rounding twice (the switch is not lost on the way).
    #[test]
    fn rounding_once_gives_pytorchs_fma_kernels_steps() -> Result<()> {
        let dev = Device::Cpu;
        let mut differs = (0, 0);
        for n in [7, 3 * CHUNK + 5] {
            let values = |seed: u64, scale: f64| -> Result<Vec<f32>> {
                let t = Tensor::randn(0f32, 1.0, n, &dev)?;
                let t = ((t * scale)? + 1e-3 * seed as f64)?;
                Ok(t.to_vec1::<f32>()?)
            };
            let p0 = values(1, 1.0)?;
            let grads: Vec<Vec<f32>> = (0..5).map(|s| values(s + 2, 0.1)).collect::<Result<_>>()?;
            let fresh = |p: &[f32]| Var::from_slice(p, n, &dev);
            for c in sgd_kinds() {
                let (mut p, mut buf) = (p0.clone(), None);
                let (once, twice) = (fresh(&p0)?, fresh(&p0)?);
                let (mut buf_once, mut buf_twice) = (None, None);
                for g in &grads {
                    torch_sgd(&c, &mut p, g, &mut buf);
                    let g = Tensor::from_slice(g, n, &dev)?;
                    buf_once = sgd_step(&c, Rounding::Once, &once, &g, buf_once)?;
                    buf_twice = sgd_step(&c, Rounding::Twice, &twice, &g, buf_twice)?;
                }
                assert_eq!(once.to_vec1::<f32>()?, p, "{c:?}, {n} values");
                let b = buf_once.map(|b| b.to_vec1::<f32>()).transpose()?;
                assert_eq!(b, buf, "{c:?}, {n} values");
                differs.0 += usize::from(once.to_vec1::<f32>()? != twice.to_vec1::<f32>()?);
            }
            for c in adam_kinds() {
                let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
                let mut max_v = vec![0f32; if c.amsgrad { n } else { 0 }];
                let (once, twice) = (fresh(&p0)?, fresh(&p0)?);
                let zeros = || -> Result<Moments> {
                    let zeros = || Tensor::zeros(n, DType::F32, &dev);
                    Ok(Moments {
                        step: 0,
                        exp_avg: zeros()?,
                        exp_avg_sq: zeros()?,
                        max_exp_avg_sq: c.amsgrad.then(zeros).transpose()?,
                    })
                };
                let (mut m_once, mut m_twice) = (zeros()?, zeros()?);
                for (t, g) in (1..).zip(&grads) {
                    torch_adam(&c, t, &mut p, g, &mut m, &mut v, &mut max_v);
                    let g = Tensor::from_slice(g, n, &dev)?;
                    (m_once.step, m_twice.step) = (t, t);
                    step(&c, Rounding::Once, &once, &g, &m_once)?;
                    step(&c, Rounding::Twice, &twice, &g, &m_twice)?;
                }
                assert_eq!(once.to_vec1::<f32>()?, p, "{c:?}, {n} values");
                assert_eq!(m_once.exp_avg.to_vec1::<f32>()?, m, "{c:?}, {n} values");
                assert_eq!(m_once.exp_avg_sq.to_vec1::<f32>()?, v, "{c:?}, {n} values");
                let kept_max = m_once.max_exp_avg_sq.map(|x| x.to_vec1::<f32>());
                assert_eq!(kept_max.transpose()?.unwrap_or_default(), max_v, "{c:?}");
                differs.1 += usize::from(once.to_vec1::<f32>()? != twice.to_vec1::<f32>()?);
            }
        }
        // On the long tensor every kind differs somewhere between the two roundings.
        assert!(
            differs.0 >= sgd_kinds().len() && differs.1 >= adam_kinds().len(),
            "{differs:?}"
        );
        Ok(())
    }

    #[test]
    fn a_gradient_of_another_shape_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::zeros(4, DType::F32, &dev)?)?;
        let grad = Tensor::zeros(5, DType::F32, &dev)?;
        assert!(!applies(&var, &grad));
        let m = Tensor::zeros(4, DType::F32, &dev)?;
        let c = AdamConfig::adam(0.1);
        let moments = Moments {
            step: 1,
            exp_avg: m.copy()?,
            exp_avg_sq: m.copy()?,
            max_exp_avg_sq: None,
        };
        assert!(step(&c, Rounding::Once, &var, &grad, &moments).is_err());
        // AMSGrad without the largest second moments (or with them, without AMSGrad).
        let grad = m.copy()?;
        assert!(step(&c, Rounding::Once, &var, &grad, &moments).is_ok());
        let amsgrad = AdamConfig { amsgrad: true, ..c };
        assert!(step(&amsgrad, Rounding::Once, &var, &grad, &moments).is_err());
        Ok(())
    }
}
