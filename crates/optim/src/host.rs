//! The multi-tensor optimizer step (`multi_tensor.rs`) on the CPU, with `cuda-emulation`: the
//! kernels of `src/cuda/optim.cu` compiled as C++ (the build script), run one thread at a
//! time over the tensors' host addresses, so that the optimizer tests check them, and the
//! chunks, tables and scalars made for them, against the per-tensor update without a GPU.

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Device, Storage, Tensor, Var};

use super::multi_tensor::{Call, Scalars, Tensors, BLOCK};
use layers::cuda_host;

type Kernel =
    unsafe extern "C" fn(Tensors, *const f32, *const f32, *mut f32, *mut f32, Scalars, u32);

extern "C" {
    fn sgd_f32(
        t: Tensors,
        in0: *const f32,
        in1: *const f32,
        out0: *mut f32,
        out1: *mut f32,
        s: Scalars,
        flags: u32,
    );
    fn adam_f32(
        t: Tensors,
        in0: *const f32,
        in1: *const f32,
        out0: *mut f32,
        out1: *mut f32,
        s: Scalars,
        flags: u32,
    );
}

/// Runs `call` on the CPU, a chunk at a time, as the CUDA launches would.
pub(super) fn launch(call: &Call) -> Result<Vec<Tensor>> {
    let kernel: Kernel = match call.kernel {
        "sgd_f32" => sgd_f32,
        "adam_f32" => adam_f32,
        k => bail!("no emulated kernel {k}"),
    };
    let total = call.total;
    let mut new: Vec<Vec<f32>> = (0..call.outs).map(|_| vec![0.0; total]).collect();
    {
        let grads_held: Vec<_> = call.grads.iter().map(|g| g.storage_and_layout()).collect();
        let ins_held: Vec<_> = call
            .ins
            .iter()
            .map(|t| t.map(|t| t.storage_and_layout()))
            .collect();
        let mut grad_ptrs = Vec::with_capacity(call.grads.len());
        for (storage, layout) in &grads_held {
            let Storage::Cpu(s) = &**storage else {
                bail!("a gradient is not on the CPU")
            };
            let n = layout.shape().elem_count();
            grad_ptrs.push(
                cuda_host::host_ptr::<f32>(s, layout.start_offset(), n)?.expose_provenance() as u64,
            );
        }
        let mut in_ptrs = [0u64; 2];
        for (held, ptr) in ins_held.iter().zip(&mut in_ptrs) {
            if let Some((storage, layout)) = held {
                let Storage::Cpu(s) = &**storage else {
                    bail!("a flat optimizer state is not on the CPU")
                };
                *ptr = cuda_host::host_ptr::<f32>(s, layout.start_offset(), total)?
                    .expose_provenance() as u64;
            }
        }
        let mut out_ptrs = [0u64; 2];
        for (v, ptr) in new.iter_mut().zip(&mut out_ptrs) {
            *ptr = v.as_mut_ptr().expose_provenance() as u64;
        }
        for chunk in call.chunks() {
            let vars = &call.vars[chunk.tensors.clone()];
            let [in0, in1, out0, out1] = chunk.flat(in_ptrs, out_ptrs);
            with_param_ptrs(vars, &mut Vec::new(), &mut |params| {
                let table = chunk.table(vars, params, &grad_ptrs[chunk.tensors.clone()]);
                cuda_host::launch(chunk.blocks(), BLOCK, || {
                    // SAFETY: as on CUDA (`cuda.rs`): every address is null (not read: the
                    // flags say so) or that of a live f32 buffer of at least the elements the
                    // kernel touches, the parameters and outputs held for writing.
                    unsafe {
                        kernel(
                            table,
                            in0 as *const f32,
                            in1 as *const f32,
                            out0 as *mut f32,
                            out1 as *mut f32,
                            call.scalars,
                            call.flags,
                        )
                    }
                });
                Ok(())
            })?;
        }
    }
    new.into_iter()
        .map(|v| Ok(Tensor::from_vec(v, total, &Device::Cpu)?))
        .collect()
}

/// Calls `launch` with the host addresses of `vars` (in order), each held for writing
/// meanwhile: one in-place access inside the other.
fn with_param_ptrs(
    vars: &[&Var],
    ptrs: &mut Vec<u64>,
    launch: &mut dyn FnMut(&[u64]) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let Some((first, rest)) = vars.split_first() else {
        return launch(ptrs);
    };
    layers::in_place_cpu(first.as_tensor(), "optimizer-step", |s, layout| {
        let (at, len) = (layout.start_offset(), layout.shape().elem_count());
        let CpuStorage::F32(values) = s else {
            candle_core::bail!("optimizer step: a parameter is not an f32 tensor")
        };
        if !layout.is_contiguous() || at + len > values.len() {
            candle_core::bail!("optimizer step: a parameter is not contiguous within its storage")
        }
        ptrs.push(values[at..].as_mut_ptr().expose_provenance() as u64);
        let done = with_param_ptrs(rest, ptrs, launch);
        ptrs.pop();
        done
    })
}
