//! [`Tally::add`](super::Tally::add)'s counts on CUDA in one kernel launch
//! (`src/cuda/tally.cu`, compiled to PTX by the build script) instead of about 25 small
//! operations: the predictions, the confusion cells and the top-5 hits of a batch, added to
//! the previous counts, by the same rules as the device operations of the other path.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tally.ptx"));

/// Whether [`add`] takes these logits: float32 on a CUDA device.
pub(super) fn takes(logits: &Tensor) -> bool {
    logits.device().is_cuda() && logits.dtype() == DType::F32
}

/// The counts `prev` (`(k * k + 2,)` u32: confusion cells, the stray slot, top-5 hits) with the
/// batch of `logits` `(N, k)` f32 and `labels` `(N,)` u32 added, and the batch's `(N,)`
/// predicted classes.
pub(super) fn add(logits: &Tensor, labels: &Tensor, prev: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, k) = logits.dims2()?;
    let out = logits.contiguous()?.apply_op3_no_bwd(
        &labels.contiguous()?,
        &prev.contiguous()?,
        &Batch { n, k },
    )?;
    let slots = k * k + 2;
    Ok((out.narrow(0, 0, slots)?, out.narrow(0, slots, n)?))
}

/// (logits, labels, previous counts) -> new counts followed by the predictions.
struct Batch {
    n: usize,
    k: usize,
}

impl CustomOp3 for Batch {
    fn name(&self) -> &'static str {
        "tally-batch"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA tensors only", self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, k) = (self.n, self.k);
        let slots = k * k + 2;
        let fits = |l: &Layout, dims: &[usize]| l.is_contiguous() && l.dims() == dims;
        if !fits(xl, &[n, k]) || !fits(yl, &[n]) || !fits(pl, &[slots]) {
            candle_core::bail!(
                "{}: logits {:?}, labels {:?} and counts {:?} for {n} samples of {k} classes",
                self.name(),
                xl.dims(),
                yl.dims(),
                pl.dims()
            )
        }
        let (Ok(n32), Ok(k32), Ok(_)) =
            (u32::try_from(n), u32::try_from(k), u32::try_from(slots + n))
        else {
            candle_core::bail!("{}: {n} samples of {k} classes are too many", self.name())
        };
        let device = x.device().clone();
        let window = |at: usize, len: usize, total: usize| {
            if at + len > total {
                candle_core::bail!("tally-batch: an operand extends past its storage")
            }
            Ok(at..at + len)
        };
        let logits = x.as_cuda_slice::<f32>()?;
        let logits = logits.slice(window(xl.start_offset(), n * k, logits.len())?);
        let labels = y.as_cuda_slice::<u32>()?;
        let labels = labels.slice(window(yl.start_offset(), n, labels.len())?);
        let prev = p.as_cuda_slice::<u32>()?;
        let prev = prev.slice(window(pl.start_offset(), slots, prev.len())?);
        // SAFETY: the kernel writes all `slots + n` values before anything reads them.
        let out = unsafe { device.alloc::<u32>(slots + n)? };
        let func = device.get_or_load_custom_func("tally_batch", "train-tally", PTX)?;
        let mut builder = func.builder();
        builder.arg(&logits);
        builder.arg(&labels);
        builder.arg(&prev);
        builder.arg(&out);
        builder.arg(&n32);
        builder.arg(&k32);
        // One block, so that its barrier orders the copy of the previous counts before the
        // additions.
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel reads n * k f32 logits, n u32 labels and k * k + 2 u32 counts (all
        // checked to lie within their storages) and writes k * k + 2 + n u32 values of `out`.
        unsafe { builder.launch(config) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from(slots + n),
        ))
    }
}
