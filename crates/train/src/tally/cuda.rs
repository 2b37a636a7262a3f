//! [`Tally::add`](super::Tally::add)'s counts on CUDA in one kernel launch
//! (`src/cuda/tally.cu`, compiled to PTX by the build script) instead of about 25 small
//! operations: the predictions, the confusion cells and the top-5 hits of a batch, added in
//! place to the tally's counts, by the same rules as the device operations of the other path.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Result, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tally.ptx"));

/// Whether [`add`] takes these logits: float32 on a CUDA device.
pub(super) fn takes(logits: &Tensor) -> bool {
    logits.device().is_cuda() && logits.dtype() == DType::F32
}

/// Adds the batch of `logits` `(N, k)` f32 and `labels` `(N,)` u32 to `counts` (`(k * k + 2,)`
/// u32 of the tally's own: confusion cells, the stray slot, top-5 hits) in place, and returns
/// the batch's `(N,)` predicted classes.
pub(super) fn add(logits: &Tensor, labels: &Tensor, counts: &Tensor) -> Result<Tensor> {
    let Device::Cuda(device) = logits.device() else {
        candle_core::bail!("tally-batch: the logits are not on a CUDA device")
    };
    // The kernel takes raw addresses: all three must be on the logits' GPU.
    for (what, t) in [("labels", labels), ("counts", counts)] {
        if !t.device().same_device(logits.device()) {
            candle_core::bail!(
                "tally-batch: the {what} are on {:?}, the logits on {:?}",
                t.device().location(),
                logits.device().location()
            )
        }
    }
    let super::KernelOperands {
        logits,
        labels,
        n,
        k,
        n32,
        k32,
    } = super::kernel_operands(logits, labels, counts)?;
    let slots = k * k + 2;
    let window = |at: usize, len: usize, total: usize| {
        if at + len > total {
            candle_core::bail!("tally-batch: an operand extends past its storage")
        }
        Ok(at..at + len)
    };
    let (xs, xl) = logits.storage_and_layout();
    let (ys, yl) = labels.storage_and_layout();
    let (Storage::Cuda(xs), Storage::Cuda(ys)) = (&*xs, &*ys) else {
        candle_core::bail!("tally-batch: the labels are not on the logits' device")
    };
    let x = xs.as_cuda_slice::<f32>()?;
    let x = x.slice(window(xl.start_offset(), n * k, x.len())?);
    let y = ys.as_cuda_slice::<u32>()?;
    let y = y.slice(window(yl.start_offset(), n, y.len())?);
    // SAFETY: the kernel writes all `n` values before anything reads them (n > 0: `Tally::add`
    // adds no empty batch).
    let mut predicted = unsafe { device.alloc::<u32>(n.max(1))? };
    let func = device.get_or_load_custom_func("tally_batch", "train-tally", PTX)?;
    layers::in_place_cuda(counts, "tally-batch", |cs, cl| {
        if !cl.is_contiguous() || cs.dtype() != DType::U32 {
            candle_core::bail!("tally-batch: the counts are not a contiguous u32 tensor")
        }
        let c = cs.as_cuda_slice_mut::<u32>()?;
        let range = window(cl.start_offset(), slots, c.len())?;
        let mut c = c.slice_mut(range);
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&y);
        builder.arg(&mut c);
        builder.arg(&mut predicted);
        builder.arg(&n32);
        builder.arg(&k32);
        // SAFETY: the kernel reads n * k f32 logits and n u32 labels, adds to k * k + 2 u32
        // counts (all checked to lie within their storages) and writes n u32 predictions.
        unsafe { builder.launch(LaunchConfig::for_num_elems(n32)) }.w()?;
        Ok(())
    })?;
    let storage = CudaStorage::wrap_cuda_slice(predicted, device.clone());
    Tensor::from_storage(Storage::Cuda(storage), n.max(1), BackpropOp::none(), false)
        .narrow(0, 0, n)
}
