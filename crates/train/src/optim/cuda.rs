//! SGD's flat update on CUDA in one kernel launch for every 64 parameter tensors
//! (`src/cuda/sgd.cu`): each float32 parameter updated in place from its gradient where both
//! are, the group's momentum buffer read from its flat tensor and written to a new one. The
//! generic flat update gathers parameters and gradients (one copy each), runs 2 to 8
//! element-wise operations and copies every parameter back: for ResNet-18's 62 tensors about
//! 190 launches a step, here one. The kernel applies the same operations with the same
//! roundings in the same order (Candle's `affine` is an fma with 0, its `+` one rounding), so
//! the parameters and buffers are the per-tensor update's bit for bit; the optimizer tests
//! compare them on every device they find.
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

use super::sgd::SgdConfig;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sgd.ptx"));

/// Tensors one launch takes (`MAX_TENSORS` in `sgd.cu`).
const MAX_TENSORS: usize = 64;

/// The kernel's first argument, `struct Tensors` in `sgd.cu`: the parameters' and gradients'
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

const WEIGHT_DECAY: u32 = 1;
const MOMENTUM: u32 = 2;
const HAS_BUFFER: u32 = 4;
const DAMPENING: u32 = 8;
const NESTEROV: u32 = 16;

/// Whether [`sgd_step`] takes these parameters and their gradients (in order): float32,
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

/// One SGD step of `vars` from `grads` (see [`takes`]) with the group's flat momentum buffer
/// `buf` (`None` before the first step with momentum). Returns the new flat buffer: the step's
/// with momentum, `buf` as it was without (as the per-tensor update leaves it).
pub(super) fn sgd_step(
    c: &SgdConfig,
    vars: &[&Var],
    grads: &[&Tensor],
    buf: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let Device::Cuda(device) = vars[0].device() else {
        bail!("the CUDA SGD step needs CUDA parameters")
    };
    let total: usize = vars.iter().map(|v| v.elem_count()).sum();
    let momentum = c.momentum != 0.0;
    let mut flags = 0;
    for (on, flag) in [
        (c.weight_decay != 0.0, WEIGHT_DECAY),
        (momentum, MOMENTUM),
        (buf.is_some(), HAS_BUFFER),
        (c.dampening != 0.0, DAMPENING),
        (c.nesterov, NESTEROV),
    ] {
        if on {
            flags |= flag;
        }
    }
    if let Some(b) = buf {
        if b.dims() != [total] || b.dtype() != DType::F32 || !b.is_contiguous() {
            bail!(
                "the SGD momentum buffer is {:?} {:?}, expected ({total},) F32",
                b.dims(),
                b.dtype()
            )
        }
    }
    let stream = device.cuda_stream();
    // SAFETY: the kernel writes all `total` values.
    let mut new_buf = match momentum {
        true => Some(unsafe { device.alloc::<f32>(total) }?),
        false => None,
    };
    {
        let grads_held: Vec<_> = grads.iter().map(|g| g.storage_and_layout()).collect();
        let buf_held = buf.map(|b| b.storage_and_layout());
        let mut grad_ptrs = Vec::with_capacity(grads.len());
        let mut guards = Vec::with_capacity(grads.len() + 2);
        for (storage, layout) in &grads_held {
            let Storage::Cuda(s) = &**storage else {
                bail!("an SGD gradient is not on the CUDA device")
            };
            let (ptr, guard) =
                f32_ptr(s, layout.start_offset(), layout.shape().elem_count())?.device_ptr(&stream);
            grad_ptrs.push(ptr + 4 * layout.start_offset() as u64);
            guards.push(guard);
        }
        let buf_ptr = match &buf_held {
            Some((storage, layout)) => {
                let Storage::Cuda(s) = &**storage else {
                    bail!("the SGD momentum buffer is not on the CUDA device")
                };
                let (ptr, guard) = f32_ptr(s, layout.start_offset(), total)?.device_ptr(&stream);
                guards.push(guard);
                ptr + 4 * layout.start_offset() as u64
            }
            None => 0,
        };
        let (new_buf_ptr, new_buf_guard) = match &mut new_buf {
            Some(b) => {
                let (ptr, guard) = b.device_ptr_mut(&stream);
                (ptr, Some(guard))
            }
            None => (0, None),
        };
        let scalars = [
            c.weight_decay as f32,
            c.momentum as f32,
            (1.0 - c.dampening) as f32,
            (-c.lr) as f32,
        ];
        let func = device.get_or_load_custom_func("sgd_f32", "train-sgd", PTX)?;
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
            let offset = 4 * first as u64;
            let bufs = [
                if buf_ptr == 0 { 0 } else { buf_ptr + offset },
                if new_buf_ptr == 0 {
                    0
                } else {
                    new_buf_ptr + offset
                },
            ];
            let n = at as usize;
            with_param_ptrs(chunk, &stream, &mut Vec::new(), &mut |params| {
                table.param[..params.len()].copy_from_slice(params);
                let mut builder = func.builder();
                builder.arg(&table);
                builder.arg(&bufs[0]);
                builder.arg(&bufs[1]);
                for s in &scalars {
                    builder.arg(s);
                }
                builder.arg(&flags);
                let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
                let config = LaunchConfig {
                    grid_dim: (blocks, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: every address in `table` and `bufs` is that of a live float32
                // buffer of at least the elements the kernel touches (checked by `f32_ptr`
                // and `with_param_ptrs`), held (parameters for writing) until the launch is
                // queued on the stream that orders all of Candle's work on them.
                unsafe { builder.launch(config) }.w()?;
                Ok(())
            })?;
            first += n;
        }
        drop(new_buf_guard);
        drop(guards);
    }
    let Some(new_buf) = new_buf else {
        return Ok(buf.cloned());
    };
    let storage = CudaStorage::wrap_cuda_slice(new_buf, device.clone());
    Ok(Some(Tensor::from_storage(
        Storage::Cuda(storage),
        total,
        BackpropOp::none(),
        false,
    )))
}

/// The f32 slice of `s`, checked to hold `len` values from `at`.
fn f32_ptr(s: &CudaStorage, at: usize, len: usize) -> candle_core::Result<&CudaSlice<f32>> {
    let slice = s.as_cuda_slice::<f32>()?;
    if at + len > slice.len() {
        candle_core::bail!("SGD: a tensor extends past its storage")
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
    layers::in_place_cuda(first.as_tensor(), "sgd-step", |s, layout| {
        let (at, len) = (layout.start_offset(), layout.shape().elem_count());
        if !layout.is_contiguous() || s.dtype() != DType::F32 {
            candle_core::bail!("SGD: a parameter is not a contiguous f32 tensor")
        }
        let slice = s.as_cuda_slice_mut::<f32>()?;
        if at + len > slice.len() {
            candle_core::bail!("SGD: a parameter extends past its storage")
        }
        let (ptr, _guard) = slice.device_ptr_mut(stream);
        ptrs.push(ptr + 4 * at as u64);
        let done = with_param_ptrs(rest, stream, ptrs, launch);
        ptrs.pop();
        done
    })
}
