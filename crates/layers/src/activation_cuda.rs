//! ReLU, Tanh and `relu(a + b)` on CUDA, forward and backward, one kernel each
//! (`src/cuda/activation.cu`, compiled to PTX by the build script), for float32 and bf16
//! tensors (PyTorch's `relu`, `tanh`, `threshold_backward`, `tanh_backward`).
//!
//! Candle's own ReLU backward is four kernels (a zero tensor, a comparison, a conversion, a
//! product), with an output-sized buffer each; `relu(a + b)` adds one more forward, and
//! Tanh's backward is four or five. Here each is one pass reading its inputs and writing its
//! output. Element-wise, so a channels-last tensor is handed over as its (N, H, W, C) view.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda::CudaDType;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/activation.ptx"));
const MODULE: &str = "layers-activation";

/// Whether the kernels here take `t`: a CUDA tensor in float32 or bf16 of fewer than 2^32
/// elements.
pub(crate) fn takes(t: &Tensor) -> bool {
    t.device().is_cuda()
        && matches!(t.dtype(), DType::F32 | DType::BF16)
        && t.elem_count() <= u32::MAX as usize
}

/// The kernel `name` (`relu`, `tanh`, `add_relu`, `relu_bwd`, `tanh_bwd`) on the contiguous
/// operands, one or two of one dtype and shape; returns the new output.
pub(crate) fn launch(
    name: &str,
    operands: &[(&CudaStorage, &Layout)],
) -> Result<(CudaStorage, Shape)> {
    let Some(&(first, first_layout)) = operands.first() else {
        candle_core::bail!("{name} on CUDA: no operand")
    };
    let shape = first_layout.shape().clone();
    for (s, l) in operands {
        if !l.is_contiguous() || l.shape() != &shape || s.dtype() != first.dtype() {
            candle_core::bail!(
                "{name} on CUDA: operands must be contiguous, of one shape and dtype: {:?} {:?} against {shape:?} {:?}",
                s.dtype(),
                l.shape(),
                first.dtype()
            )
        }
    }
    match first.dtype() {
        DType::F32 => typed::<f32>(name, "f32", operands, shape),
        DType::BF16 => typed::<bf16>(name, "bf16", operands, shape),
        d => candle_core::bail!("{name} on CUDA: no kernel for {d:?}"),
    }
}

fn typed<T: CudaDType + DeviceRepr + 'static>(
    name: &str,
    suffix: &str,
    operands: &[(&CudaStorage, &Layout)],
    shape: Shape,
) -> Result<(CudaStorage, Shape)> {
    let n = shape.elem_count();
    let Ok(count) = u32::try_from(n) else {
        candle_core::bail!("{name} on CUDA: {n} elements, more than the kernels index")
    };
    let device = operands[0].0.device().clone();
    let func = device.get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, PTX)?;
    let views = operands
        .iter()
        .map(|(s, l)| {
            let slice = s.as_cuda_slice::<T>()?;
            let at = l.start_offset();
            if at + n > slice.len() {
                candle_core::bail!("{name} on CUDA: an operand extends past its storage")
            }
            Ok(slice.slice(at..at + n))
        })
        .collect::<Result<Vec<_>>>()?;
    // SAFETY: the kernel writes all `n` values before anything reads them.
    let mut out = unsafe { device.alloc::<T>(n.max(1))? };
    if n > 0 {
        let mut builder = func.builder();
        for v in &views {
            builder.arg(v);
        }
        builder.arg(&mut out);
        builder.arg(&count);
        // SAFETY: the kernel reads `count` values of each operand (checked above to lie
        // within their storages) and writes `count` values of `out`, all of type `T`.
        unsafe { builder.launch(LaunchConfig::for_num_elems(count)) }.w()?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, device), shape))
}
