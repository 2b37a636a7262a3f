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

    /// One chunk.
    fn run(self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        match self.rounding {
            Rounding::Once => with_fma(
                #[inline(always)]
                || self.run_any::<true>(p, g, m, v),
            ),
            Rounding::Twice => layers::wide::run(
                #[inline(always)]
                || self.run_any::<false>(p, g, m, v),
            ),
        }
    }

    /// [`Self::run`] as compiled for any CPU (inlined into its AVX-512 and FMA copies), with
    /// `a * b + c` rounded once where `ONCE`. PyTorch's operations: `param.mul_(1 - lr *
    /// weight_decay)` (AdamW) or `grad = grad.add(param, alpha=weight_decay)`,
    /// `exp_avg.lerp_(grad, 1 - beta1)`, `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 -
    /// beta2)`, `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`,
    /// `param.addcdiv_(exp_avg, denom, value=-step_size)`. Rounded twice, they are also those
    /// of Candle's tensor operations in [`super::adam::tensor_step`] but for the sign of zeros:
    /// Candle's product with a scalar (`affine`, `x * a + 0.0`) turns a `-0.0` into `+0.0`.
    #[inline(always)]
    fn run_any<const ONCE: bool>(self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let rows = p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut()));
        let w = self.one_minus_beta1;
        for ((p, &g), (m, v)) in rows {
            let (mut param, mut g) = (*p, g);
            let (m1, v1, update);
            if ONCE {
                match self.decay {
                    Some(true) => param *= self.shrink,
                    Some(false) => g = param.mul_add(self.weight_decay, g),
                    None => {}
                }
                // `lerp` (`Lerp.h`, `LerpKernel.cpp`): `fma(w, end - start, start)` for a weight
                // under 0.5, else `fma(w - 1, end - start, end)`, so that a weight of 1 (beta1 =
                // 0) gives the gradient itself.
                m1 = match w < 0.5 {
                    true => (g - *m).mul_add(w, *m),
                    false => (g - *m).mul_add(w - 1.0, g),
                };
                v1 = (g * self.one_minus_beta2).mul_add(g, *v * self.beta2);
                let denom = v1.sqrt() / self.sqrt_bc2 + self.eps;
                update = (m1 * self.neg_step_size) / denom;
            } else {
                match self.decay {
                    Some(true) => param *= self.shrink,
                    Some(false) => g += param * self.weight_decay,
                    None => {}
                }
                // PyTorch's `lerp` from the nearer end, each product and sum rounded.
                m1 = match w < 0.5 {
                    true => *m + (g - *m) * w,
                    false => g - (g - *m) * (1.0 - w),
                };
                v1 = *v * self.beta2 + (g * self.one_minus_beta2) * g;
                let denom = v1.sqrt() / self.sqrt_bc2 + self.eps;
                update = (m1 * self.neg_step_size) / denom;
            }
            *p = param + update;
            *m = m1;
            *v = v1;
        }
    }
}

/// Adam step number `step` (from 1) of `var` with gradient `grad` and moments `exp_avg`,
/// `exp_avg_sq`, all updated in place (the moments must not share storage with anything else).
///
/// # Errors
/// A tensor that is not a contiguous f32 CPU tensor of the parameter's shape.
pub(super) fn step(
    c: &AdamConfig,
    rounding: Rounding,
    step: u64,
    var: &Var,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
) -> Result<()> {
    let n = var.elem_count();
    check_like(var, [grad, exp_avg, exp_avg_sq], "adam")?;
    let k = Step::new(c, step, rounding);
    let (g_storage, g_layout) = grad.storage_and_layout();
    let g = f32_values(&g_storage, g_layout, "adam")?;
    with_mut(var.as_tensor(), |p| {
        with_mut(exp_avg, |m| {
            with_mut(exp_avg_sq, |v| {
                if [p.len(), m.len(), v.len(), g.len()] != [n; 4] {
                    bail!("adam: buffers of different lengths");
                }
                if n <= 2 * CHUNK {
                    k.run(p, g, m, v);
                } else {
                    p.par_chunks_mut(CHUNK)
                        .zip(g.par_chunks(CHUNK))
                        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                        .for_each(|((p, g), (m, v))| k.run(p, g, m, v));
                }
                Ok(())
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
    /// `a * b + c` rounded once where `ONCE`. PyTorch's operations: `grad =
    /// grad.add(param, alpha=weight_decay)`, `buf.mul_(momentum).add_(grad, alpha=1 -
    /// dampening)` (a clone of the gradient at first), `grad = grad.add(buf, alpha=momentum)`
    /// (Nesterov), `param.add_(grad, alpha=-lr)`. Rounded twice, they are also those of
    /// Candle's tensor operations in `sgd.rs` but for the sign of zeros (its products with a
    /// scalar add a `+0.0`).
    #[inline(always)]
    fn run_any<const ONCE: bool>(self, p: &mut [f32], g: &[f32], buf: &mut [f32], first: bool) {
        // `c + s * a` (`torch.add(c, a, alpha=s)`), rounded once or twice.
        let axpy = |a: f32, s: f32, c: f32| if ONCE { a.mul_add(s, c) } else { c + a * s };
        let decayed = |p: f32, g: f32| match self.weight_decay {
            Some(wd) => axpy(p, wd, g),
            None => g,
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

    /// Every kind of Adam the tests step: plain, with L2 weight decay, AdamW.
    fn adam_kinds() -> [AdamConfig; 5] {
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
        ]
    }

    /// Every kind of SGD the tests step: plain, momentum, with weight decay, dampening,
    /// Nesterov, weight decay alone.
    fn sgd_kinds() -> [SgdConfig; 6] {
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
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
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
                let (mut p1, mut m1, mut v1) = (p.clone(), m.clone(), v.clone());
                let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
                k.run(&mut p1, &g, &mut m1, &mut v1);
                match r {
                    Rounding::Once => k.run_any::<true>(&mut p2, &g, &mut m2, &mut v2),
                    Rounding::Twice => k.run_any::<false>(&mut p2, &g, &mut m2, &mut v2),
                }
                for (a, b) in [(&p1, &p2), (&m1, &m2), (&v1, &v2)] {
                    assert_eq!(bits(a), bits(b), "adam {c:?}, {r:?}, {n} values");
                }
                // The AVX2 + FMA copy, which CPUs without AVX-512 run.
                let (mut p3, mut m3, mut v3) = (p.clone(), m.clone(), v.clone());
                let avx2 = on_avx2(
                    #[inline(always)]
                    || k.run_any::<true>(&mut p3, &g, &mut m3, &mut v3),
                );
                if avx2.is_some() && r == Rounding::Once {
                    for (a, b) in [(&p3, &p2), (&m3, &m2), (&v3, &v2)] {
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
                let (m, v) = (p0.zeros_like()?, p0.zeros_like()?);
                let (mut param, mut m2, mut v2) = (p0.copy()?, m.copy()?, v.copy()?);
                for step in 1..=5 {
                    let grad = Tensor::randn(0f32, 1.0, n, &dev)?;
                    assert!(applies(&var, &grad));
                    super::step(&c, Rounding::Twice, step, &var, &grad, &m, &v)?;
                    (param, m2, v2) = tensor_step(&c, step, &param, &grad, &m2, &v2)?;
                }
                for (a, b) in [(var.as_tensor(), &param), (&m, &m2), (&v, &v2)] {
                    assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?, "{c:?}");
                }
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
            Step::new(&c, 2, r).run(&mut p, &g, &mut m, &mut v);
            assert_eq!(m, g, "{r:?}");
        }
        let t = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu);
        let (_, m2, _) = tensor_step(&c, 2, &t(&[1.0; 64])?, &t(&g)?, &t(&m0)?, &t(&[1e-6; 64])?)?;
        assert_eq!(m2.to_vec1::<f32>()?, g);
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
        let mut grad = g.to_vec();
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
    ) {
        let mut grad = g.to_vec();
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
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        let denom: Vec<f32> = v
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
                let (once, twice) = (fresh(&p0)?, fresh(&p0)?);
                let zeros = || Tensor::zeros(n, DType::F32, &dev);
                let (m_once, v_once, m_twice, v_twice) = (zeros()?, zeros()?, zeros()?, zeros()?);
                for (t, g) in (1..).zip(&grads) {
                    torch_adam(&c, t, &mut p, g, &mut m, &mut v);
                    let g = Tensor::from_slice(g, n, &dev)?;
                    step(&c, Rounding::Once, t, &once, &g, &m_once, &v_once)?;
                    step(&c, Rounding::Twice, t, &twice, &g, &m_twice, &v_twice)?;
                }
                assert_eq!(once.to_vec1::<f32>()?, p, "{c:?}, {n} values");
                assert_eq!(m_once.to_vec1::<f32>()?, m, "{c:?}, {n} values");
                assert_eq!(v_once.to_vec1::<f32>()?, v, "{c:?}, {n} values");
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
        assert!(step(&c, Rounding::Once, 1, &var, &grad, &m, &m.copy()?).is_err());
        Ok(())
    }
}
