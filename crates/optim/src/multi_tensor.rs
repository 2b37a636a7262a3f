//! The flat update in one kernel launch for every 64 float32 parameter tensors
//! (`src/cuda/optim.cu`, PyTorch's multi-tensor step): SGD, and Adam / AdamW. Each parameter
//! is updated in place from its gradient where both are; the group's optimizer state is read
//! from its flat tensors and written to new ones. The generic flat update gathers parameters
//! and gradients (one copy each), runs 2 to 8 (SGD) or about 15 (Adam) element-wise
//! operations and copies every parameter back: for ResNet-18's 62 tensors about 190 launches
//! a step, here one. The kernels apply the same operations with the same roundings in the
//! same order (Candle's `affine` is an fma, its `+ - * /` and `sqrt` IEEE-rounded), so the
//! parameters and the state are the per-tensor update's bit for bit; the optimizer tests
//! compare them on every device they find.
//!
//! The kernels run on CUDA devices (`cuda.rs`), and, with the `cuda-emulation` feature, on
//! the CPU too (`host.rs`: the same source compiled as C++, one thread at a time), so that the
//! tests check the kernels and everything here on machines without a GPU.
//!
//! With more than 64 tensors the launches go in turn: an error in a later one (a failed
//! launch) leaves the earlier tensors updated and the step failed, which ends the run before
//! anything is saved.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::adam::AdamConfig;
use super::sgd::SgdConfig;

/// Tensors one launch takes (`MAX_TENSORS` in `optim.cu`).
pub(super) const MAX_TENSORS: usize = 64;

/// Threads a block of a launch.
pub(super) const BLOCK: u32 = 256;

/// The kernels' first argument, `struct Tensors` in `optim.cu`: the parameters' and gradients'
/// addresses and each tensor's first position in the flat order.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Tensors {
    pub param: [u64; MAX_TENSORS],
    pub grad: [u64; MAX_TENSORS],
    pub start: [u64; MAX_TENSORS + 1],
    pub count: u32,
}

/// The kernels' scalars, `struct Scalars` in `optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct Scalars(pub [f32; 8]);

// The flags of `optim.cu`'s kernels.
const SGD_WEIGHT_DECAY: u32 = 1;
const SGD_MOMENTUM: u32 = 2;
const SGD_HAS_BUFFER: u32 = 4;
const SGD_DAMPENING: u32 = 8;
const SGD_NESTEROV: u32 = 16;
const ADAM_WEIGHT_DECAY: u32 = 1;
const ADAM_DECOUPLED: u32 = 2;
const ADAM_HAS_MOMENTS: u32 = 4;

/// Whether [`sgd_step`] and [`adam_step`] take these parameters and their gradients (in
/// order): float32, contiguous, on one CUDA device (or the CPU, with `cuda-emulation`), each
/// gradient of its parameter's shape, every parameter with a storage of its own (shared by no
/// other parameter and no gradient: the step holds the gradients for reading while it takes
/// each parameter for writing), and something to update.
pub(super) fn takes(vars: &[&Var], grads: &[&Tensor]) -> bool {
    let Some(first) = vars.first() else {
        return false;
    };
    let device = first.device();
    let fits =
        |t: &Tensor| t.dtype() == DType::F32 && t.device().same_device(device) && t.is_contiguous();
    // A storage's identity: the address of the storage behind its lock.
    let key = |t: &Tensor| std::ptr::from_ref(&*t.storage_and_layout().0).addr();
    let params: std::collections::HashSet<usize> = vars.iter().map(|v| key(v)).collect();
    let runs_here = (device.is_cuda() && cfg!(feature = "cuda"))
        || (device.is_cpu() && cfg!(feature = "cuda-emulation"));
    runs_here
        && vars.len() == grads.len()
        && params.len() == vars.len()
        && grads.iter().all(|g| !params.contains(&key(g)))
        && vars.iter().map(|v| v.elem_count()).sum::<usize>() > 0
        && vars
            .iter()
            .zip(grads)
            .all(|(v, g)| fits(v.as_tensor()) && fits(g) && v.shape() == g.shape())
}

/// The flags whose condition holds.
fn flags(bits: &[(bool, u32)]) -> u32 {
    bits.iter().filter(|(on, _)| *on).fold(0, |f, (_, b)| f | b)
}

/// One SGD step of `vars` from `grads` (see [`takes`]) with the group's flat momentum buffer
/// `buf` (`None` before the first step with momentum). Returns the new flat buffer: the step's
/// with momentum, `buf` as it was without (as the per-tensor update leaves it).
pub(super) fn sgd_step(
    c: &SgdConfig,
    vars: &[&Var],
    grads: &[&Tensor],
    buf: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let momentum = c.momentum != 0.0;
    let bits = flags(&[
        (c.weight_decay != 0.0, SGD_WEIGHT_DECAY),
        (momentum, SGD_MOMENTUM),
        (buf.is_some(), SGD_HAS_BUFFER),
        (c.dampening != 0.0, SGD_DAMPENING),
        (c.nesterov, SGD_NESTEROV),
    ]);
    let mut s = Scalars::default();
    s.0[..4].copy_from_slice(&[
        c.weight_decay as f32,
        c.momentum as f32,
        (1.0 - c.dampening) as f32,
        (-c.lr) as f32,
    ]);
    let ins = [buf.filter(|_| momentum), None];
    let mut outs = launch("sgd_f32", vars, grads, ins, usize::from(momentum), s, bits)?;
    Ok(match outs.pop() {
        Some(new_buf) => Some(new_buf),
        None => buf.cloned(),
    })
}

/// One Adam (or AdamW, `c.decoupled`) step, the `step`-th (from 1), of `vars` from `grads`
/// (see [`takes`]) with the group's flat `exp_avg` and `exp_avg_sq` (`None` before the first
/// step: zeros). Returns the new flat `exp_avg` and `exp_avg_sq`.
pub(super) fn adam_step(
    c: &AdamConfig,
    step: u64,
    vars: &[&Var],
    grads: &[&Tensor],
    moments: Option<(&Tensor, &Tensor)>,
) -> Result<(Tensor, Tensor)> {
    let bits = flags(&[
        (c.weight_decay != 0.0, ADAM_WEIGHT_DECAY),
        (c.decoupled, ADAM_DECOUPLED),
        (moments.is_some(), ADAM_HAS_MOMENTS),
    ]);
    let bias_correction1 = 1.0 - c.beta1.powf(step as f64);
    let bias_correction2 = 1.0 - c.beta2.powf(step as f64);
    let decay = match c.decoupled {
        true => 1.0 - c.lr * c.weight_decay,
        false => c.weight_decay,
    };
    let s = Scalars([
        decay as f32,
        (1.0 - c.beta1) as f32,
        c.beta2 as f32,
        (1.0 - c.beta2) as f32,
        bias_correction2.powf(0.5) as f32,
        c.eps as f32,
        (-(c.lr / bias_correction1)) as f32,
        0.0,
    ]);
    let ins = [moments.map(|m| m.0), moments.map(|m| m.1)];
    let outs = launch("adam_f32", vars, grads, ins, 2, s, bits)?;
    let Ok([exp_avg, exp_avg_sq]) = <[Tensor; 2]>::try_from(outs) else {
        bail!("the multi-tensor Adam step gave no moments")
    };
    Ok((exp_avg, exp_avg_sq))
}

/// One launch's call of a kernel of `optim.cu`.
pub(super) struct Call<'a> {
    /// The kernel's name.
    pub kernel: &'a str,
    pub vars: &'a [&'a Var],
    pub grads: &'a [&'a Tensor],
    /// Flat state tensors read (each the group's length, f32, or `None`: a null address).
    pub ins: [Option<&'a Tensor>; 2],
    /// New flat tensors the kernel writes whole.
    pub outs: usize,
    pub scalars: Scalars,
    pub flags: u32,
    /// The group's elements.
    pub total: usize,
}

/// Launches `kernel` of `optim.cu` over `vars` and `grads` in chunks of [`MAX_TENSORS`], with
/// the flat state tensors `ins` and `outs` new flat tensors, and returns those.
fn launch(
    kernel: &str,
    vars: &[&Var],
    grads: &[&Tensor],
    ins: [Option<&Tensor>; 2],
    outs: usize,
    scalars: Scalars,
    flags: u32,
) -> Result<Vec<Tensor>> {
    let total: usize = vars.iter().map(|v| v.elem_count()).sum();
    for t in ins.iter().flatten() {
        if t.dims() != [total]
            || t.dtype() != DType::F32
            || !t.is_contiguous()
            || !t.device().same_device(vars[0].device())
        {
            bail!(
                "a flat optimizer state is {:?} {:?} on {:?}, expected ({total},) F32 on the parameters' device",
                t.dims(),
                t.dtype(),
                t.device().location()
            )
        }
    }
    let call = Call {
        kernel,
        vars,
        grads,
        ins,
        outs,
        scalars,
        flags,
        total,
    };
    match vars[0].device() {
        #[cfg(feature = "cuda")]
        Device::Cuda(device) => super::cuda::launch(device, &call),
        #[cfg(feature = "cuda-emulation")]
        Device::Cpu => super::host::launch(&call),
        d => bail!(
            "the multi-tensor optimizer step does not run on {:?}",
            d.location()
        ),
    }
}

/// The part of a step one launch takes: up to [`MAX_TENSORS`] tensors.
pub(super) struct Chunk {
    /// The chunk's tensors among the call's.
    pub tensors: std::ops::Range<usize>,
    /// The chunk's first position in the flat order.
    pub first: usize,
    /// The chunk's elements.
    pub len: usize,
}

impl Call<'_> {
    /// The launches' chunks, in order.
    pub fn chunks(&self) -> Vec<Chunk> {
        let mut first = 0;
        (0..self.vars.len())
            .step_by(MAX_TENSORS)
            .map(|from| {
                let tensors = from..(from + MAX_TENSORS).min(self.vars.len());
                let len = self.vars[tensors.clone()]
                    .iter()
                    .map(|v| v.elem_count())
                    .sum();
                let chunk = Chunk {
                    tensors,
                    first,
                    len,
                };
                first += len;
                chunk
            })
            .collect()
    }
}

impl Chunk {
    /// The kernel's table of the chunk's tensors from their parameters' and gradients'
    /// addresses (the chunk's own, in order).
    pub fn table(&self, vars: &[&Var], params: &[u64], grads: &[u64]) -> Tensors {
        let mut table = Tensors {
            param: [0; MAX_TENSORS],
            grad: [0; MAX_TENSORS],
            start: [0; MAX_TENSORS + 1],
            count: self.tensors.len() as u32,
        };
        let mut at = 0u64;
        for (j, ((v, &p), &g)) in vars.iter().zip(params).zip(grads).enumerate() {
            table.param[j] = p;
            table.grad[j] = g;
            table.start[j] = at;
            at += v.elem_count() as u64;
        }
        table.start[self.tensors.len()] = at;
        table
    }

    /// The chunk's part of each flat state, from the addresses of the whole flat tensors read
    /// (`ins`) and written (`outs`), f32 each: in0, in1, out0, out1 (null stays null).
    pub fn flat(&self, ins: [u64; 2], outs: [u64; 2]) -> [u64; 4] {
        let offset = |p: u64| if p == 0 { 0 } else { p + 4 * self.first as u64 };
        [
            offset(ins[0]),
            offset(ins[1]),
            offset(outs[0]),
            offset(outs[1]),
        ]
    }

    /// Blocks of [`BLOCK`] threads the launch runs (the kernel strides over the rest).
    pub fn blocks(&self) -> u32 {
        self.len.div_ceil(BLOCK as usize).clamp(1, 4096) as u32
    }
}
