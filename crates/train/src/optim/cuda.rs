//! The flat update on CUDA in one kernel launch for every 64 float32 parameter tensors
//! (`src/cuda/optim.cu`): SGD, and Adam / AdamW. Each parameter is updated in place from its
//! gradient where both are; the group's optimizer state is read from its flat tensors and
//! written to new ones. The generic flat update gathers parameters and gradients (one copy
//! each), runs 2 to 8 (SGD) or about 15 (Adam) element-wise operations and copies every
//! parameter back: for ResNet-18's 62 tensors about 190 launches a step, here one. The
//! kernels apply the same operations with the same roundings in the same order (Candle's
//! `affine` is an fma, its `+ - * /` and `sqrt` IEEE-rounded), so the parameters and the state
//! are the per-tensor update's bit for bit; the optimizer tests compare them on every device
//! they find.
//!
//! With more than 64 tensors the launches go in turn: an error in a later one (a failed
//! launch) leaves the earlier tensors updated and the step failed, which ends the run before
//! anything is saved.

use anyhow::{bail, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Storage, Tensor, Var};

use super::adam::AdamConfig;
use super::sgd::SgdConfig;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/optim.ptx"));

/// Tensors one launch takes (`MAX_TENSORS` in `optim.cu`).
const MAX_TENSORS: usize = 64;

/// The kernels' first argument, `struct Tensors` in `optim.cu`: the parameters' and gradients'
/// addresses and each tensor's first position in the flat order.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tensors {
    param: [u64; MAX_TENSORS],
    grad: [u64; MAX_TENSORS],
    start: [u64; MAX_TENSORS + 1],
    count: u32,
}

// SAFETY: plain data with the layout of the kernel's `struct Tensors` (repr(C), the same
// field types and order).
unsafe impl DeviceRepr for Tensors {}

/// Whether [`sgd_step`] and [`adam_step`] take these parameters and their gradients (in order): float32,
/// contiguous, on one CUDA device, each gradient of its parameter's shape, every parameter
/// with a storage of its own (shared by no other parameter and no gradient: the step holds
/// the gradients for reading while it takes each parameter for writing), and something to
/// update.
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
    device.is_cuda()
        && vars.len() == grads.len()
        && params.len() == vars.len()
        && grads.iter().all(|g| !params.contains(&key(g)))
        && vars.iter().map(|v| v.elem_count()).sum::<usize>() > 0
        && vars
            .iter()
            .zip(grads)
            .all(|(v, g)| fits(v.as_tensor()) && fits(g) && v.shape() == g.shape())
}

/// The kernels' scalars, `struct Scalars` in `optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Scalars([f32; 8]);

// SAFETY: plain data with the layout of the kernel's `struct Scalars`.
unsafe impl DeviceRepr for Scalars {}

// The flags of `optim.cu`'s kernels.
const SGD_WEIGHT_DECAY: u32 = 1;
const SGD_MOMENTUM: u32 = 2;
const SGD_HAS_BUFFER: u32 = 4;
const SGD_DAMPENING: u32 = 8;
const SGD_NESTEROV: u32 = 16;
const ADAM_WEIGHT_DECAY: u32 = 1;
const ADAM_DECOUPLED: u32 = 2;
const ADAM_HAS_MOMENTS: u32 = 4;

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
        bias_correction2.sqrt() as f32,
        c.eps as f32,
        (-(c.lr / bias_correction1)) as f32,
        0.0,
    ]);
    let ins = [moments.map(|m| m.0), moments.map(|m| m.1)];
    let outs = launch("adam_f32", vars, grads, ins, 2, s, bits)?;
    let Ok([exp_avg, exp_avg_sq]) = <[Tensor; 2]>::try_from(outs) else {
        bail!("the CUDA Adam step gave no moments")
    };
    Ok((exp_avg, exp_avg_sq))
}

/// Launches `kernel` of `optim.cu` over `vars` and `grads` in chunks of [`MAX_TENSORS`], with
/// the flat state tensors `ins` (each the group's length, f32, or `None`: a null address) and
/// `outs` new flat tensors (written whole by the kernel), and returns those.
fn launch(
    kernel: &str,
    vars: &[&Var],
    grads: &[&Tensor],
    ins: [Option<&Tensor>; 2],
    outs: usize,
    scalars: Scalars,
    flags: u32,
) -> Result<Vec<Tensor>> {
    let Device::Cuda(device) = vars[0].device() else {
        bail!("the CUDA optimizer step needs CUDA parameters")
    };
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
    let stream = device.cuda_stream();
    // SAFETY: the kernel writes all `total` values of each.
    let mut new: Vec<CudaSlice<f32>> = (0..outs)
        .map(|_| unsafe { device.alloc::<f32>(total) })
        .collect::<candle_core::Result<_>>()?;
    {
        let grads_held: Vec<_> = grads.iter().map(|g| g.storage_and_layout()).collect();
        let ins_held: Vec<_> = ins
            .iter()
            .map(|t| t.map(|t| t.storage_and_layout()))
            .collect();
        let mut grad_ptrs = Vec::with_capacity(grads.len());
        let mut guards = Vec::with_capacity(grads.len() + 2);
        for (storage, layout) in &grads_held {
            let Storage::Cuda(s) = &**storage else {
                bail!("a gradient is not on the CUDA device")
            };
            let (ptr, guard) =
                f32_ptr(s, layout.start_offset(), layout.shape().elem_count())?.device_ptr(&stream);
            grad_ptrs.push(ptr + 4 * layout.start_offset() as u64);
            guards.push(guard);
        }
        let mut in_ptrs = [0u64; 2];
        for (held, ptr) in ins_held.iter().zip(&mut in_ptrs) {
            if let Some((storage, layout)) = held {
                let Storage::Cuda(s) = &**storage else {
                    bail!("a flat optimizer state is not on the CUDA device")
                };
                let (p, guard) = f32_ptr(s, layout.start_offset(), total)?.device_ptr(&stream);
                guards.push(guard);
                *ptr = p + 4 * layout.start_offset() as u64;
            }
        }
        let mut out_ptrs = [0u64; 2];
        let mut out_guards = Vec::with_capacity(outs);
        for (slice, ptr) in new.iter_mut().zip(&mut out_ptrs) {
            let (p, guard) = slice.device_ptr_mut(&stream);
            *ptr = p;
            out_guards.push(guard);
        }
        let func = device.get_or_load_custom_func(kernel, "train-optim", PTX)?;
        let mut first = 0;
        for (chunk, chunk_grads) in vars.chunks(MAX_TENSORS).zip(grad_ptrs.chunks(MAX_TENSORS)) {
            let mut table = Tensors {
                param: [0; MAX_TENSORS],
                grad: [0; MAX_TENSORS],
                start: [0; MAX_TENSORS + 1],
                count: chunk.len() as u32,
            };
            let mut at = 0u64;
            for (j, (v, &g)) in chunk.iter().zip(chunk_grads).enumerate() {
                table.grad[j] = g;
                table.start[j] = at;
                at += v.elem_count() as u64;
            }
            table.start[chunk.len()] = at;
            // The chunk's part of each flat state (null stays null).
            let offset = |p: u64| if p == 0 { 0 } else { p + 4 * first as u64 };
            let flat = [
                offset(in_ptrs[0]),
                offset(in_ptrs[1]),
                offset(out_ptrs[0]),
                offset(out_ptrs[1]),
            ];
            let n = at as usize;
            with_param_ptrs(chunk, &stream, &mut Vec::new(), &mut |params| {
                table.param[..params.len()].copy_from_slice(params);
                let mut builder = func.builder();
                builder.arg(&table);
                for p in &flat {
                    builder.arg(p);
                }
                builder.arg(&scalars);
                builder.arg(&flags);
                let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
                let config = LaunchConfig {
                    grid_dim: (blocks, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: every address in `table` and `flat` is null (not read: the flags
                // say so) or that of a live float32 buffer of at least the elements the kernel
                // touches (checked by `f32_ptr` and `with_param_ptrs`), held (parameters and
                // outputs for writing) until the launch is queued on the stream that orders
                // all of Candle's work on them.
                unsafe { builder.launch(config) }.w()?;
                Ok(())
            })?;
            first += n;
        }
        drop(out_guards);
        drop(guards);
    }
    Ok(new
        .into_iter()
        .map(|slice| {
            let storage = CudaStorage::wrap_cuda_slice(slice, device.clone());
            Tensor::from_storage(Storage::Cuda(storage), total, BackpropOp::none(), false)
        })
        .collect())
}

/// The f32 slice of `s`, checked to hold `len` values from `at`.
fn f32_ptr(s: &CudaStorage, at: usize, len: usize) -> candle_core::Result<&CudaSlice<f32>> {
    let slice = s.as_cuda_slice::<f32>()?;
    if at + len > slice.len() {
        candle_core::bail!("optimizer step: a tensor extends past its storage")
    }
    Ok(slice)
}

/// Calls `launch` with the device addresses of `vars` (in order), each held for writing
/// meanwhile: one in-place access inside the other.
fn with_param_ptrs(
    vars: &[&Var],
    stream: &CudaStream,
    ptrs: &mut Vec<u64>,
    launch: &mut dyn FnMut(&[u64]) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let Some((first, rest)) = vars.split_first() else {
        return launch(ptrs);
    };
    layers::in_place_cuda(first.as_tensor(), "optimizer-step", |s, layout| {
        let (at, len) = (layout.start_offset(), layout.shape().elem_count());
        if !layout.is_contiguous() || s.dtype() != DType::F32 {
            candle_core::bail!("optimizer step: a parameter is not a contiguous f32 tensor")
        }
        let slice = s.as_cuda_slice_mut::<f32>()?;
        if at + len > slice.len() {
            candle_core::bail!("optimizer step: a parameter extends past its storage")
        }
        let (ptr, _guard) = slice.device_ptr_mut(stream);
        ptrs.push(ptr + 4 * at as u64);
        let done = with_param_ptrs(rest, stream, ptrs, launch);
        ptrs.pop();
        done
    })
}
