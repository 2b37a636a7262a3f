//! The multi-tensor optimizer step (`multi_tensor.rs`) on a CUDA device: the kernels of
//! `src/cuda/optim.cu` as PTX (compiled by the build script), launched on Candle's stream with
//! the tensors' device addresses.

use anyhow::{bail, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Storage, Tensor, Var};

use super::multi_tensor::{Call, Scalars, Tensors, BLOCK};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/optim.ptx"));

// SAFETY: plain data with the layout of the kernel's `struct Tensors` (repr(C), the same
// field types and order).
unsafe impl DeviceRepr for Tensors {}

// SAFETY: plain data with the layout of the kernel's `struct Scalars`.
unsafe impl DeviceRepr for Scalars {}

/// Runs `call` on `device`: one launch a chunk, queued on Candle's stream.
pub(super) fn launch(device: &CudaDevice, call: &Call) -> Result<Vec<Tensor>> {
    let total = call.total;
    let stream = device.cuda_stream();
    // SAFETY: the kernel writes all `total` values of each.
    let mut new: Vec<CudaSlice<f32>> = (0..call.outs)
        .map(|_| unsafe { device.alloc::<f32>(total) })
        .collect::<candle_core::Result<_>>()?;
    {
        let grads_held: Vec<_> = call.grads.iter().map(|g| g.storage_and_layout()).collect();
        let ins_held: Vec<_> = call
            .ins
            .iter()
            .map(|t| t.map(|t| t.storage_and_layout()))
            .collect();
        let mut grad_ptrs = Vec::with_capacity(call.grads.len());
        let mut guards = Vec::with_capacity(call.grads.len() + 2);
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
        let mut out_guards = Vec::with_capacity(call.outs);
        for (slice, ptr) in new.iter_mut().zip(&mut out_ptrs) {
            let (p, guard) = slice.device_ptr_mut(&stream);
            *ptr = p;
            out_guards.push(guard);
        }
        let func = device.get_or_load_custom_func(call.kernel, "optim", PTX)?;
        for chunk in call.chunks() {
            let vars = &call.vars[chunk.tensors.clone()];
            let flat = chunk.flat(in_ptrs, out_ptrs);
            with_param_ptrs(vars, &stream, &mut Vec::new(), &mut |params| {
                let table = chunk.table(vars, params, &grad_ptrs[chunk.tensors.clone()]);
                let mut builder = func.builder();
                builder.arg(&table);
                for p in &flat {
                    builder.arg(p);
                }
                builder.arg(&call.scalars);
                builder.arg(&call.flags);
                let config = LaunchConfig {
                    grid_dim: (chunk.blocks(), 1, 1),
                    block_dim: (BLOCK, 1, 1),
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
