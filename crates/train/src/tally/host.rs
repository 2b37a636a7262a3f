//! [`Tally::add`](super::Tally::add)'s counts on the CPU with `cuda-emulation`: the kernel of
//! `src/cuda/tally.cu` compiled as C++ (the build script), run one thread at a time as its
//! CUDA launch (`tally/cuda.rs`) would, so that the tally tests check it against the host
//! computation without a GPU.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

use layers::cuda_host;

/// Threads a block of the launch (Cudarc's `LaunchConfig::for_num_elems`, as `tally/cuda.rs`).
const BLOCK: u32 = 1024;

extern "C" {
    fn tally_batch(
        logits: *const f32,
        labels: *const u32,
        counts: *mut u32,
        predicted: *mut u32,
        n: u32,
        k: u32,
    );
}

/// Whether [`add`] takes these logits: float32 on the CPU.
pub(super) fn takes(logits: &Tensor) -> bool {
    logits.device().is_cpu() && logits.dtype() == DType::F32
}

/// Adds the batch of `logits` `(N, k)` f32 and `labels` `(N,)` u32 to `counts` (`(k * k + 2,)`
/// u32) in place, and returns the batch's `(N,)` predicted classes (as `tally/cuda.rs`).
pub(super) fn add(logits: &Tensor, labels: &Tensor, counts: &Tensor) -> Result<Tensor> {
    let super::KernelOperands {
        logits,
        labels,
        n,
        k,
        n32,
        k32,
    } = super::kernel_operands(logits, labels, counts)?;
    let slots = k * k + 2;
    let (xs, xl) = logits.storage_and_layout();
    let (ys, yl) = labels.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ys)) = (&*xs, &*ys) else {
        candle_core::bail!("tally-batch: the labels are not on the logits' device")
    };
    let x = cuda_host::host_ptr::<f32>(xs, xl.start_offset(), n * k)?;
    let y = cuda_host::host_ptr::<u32>(ys, yl.start_offset(), n)?;
    let mut predicted = vec![0u32; n];
    layers::in_place_cpu(counts, "tally-batch", |cs, cl| {
        let CpuStorage::U32(c) = cs else {
            candle_core::bail!("tally-batch: the counts are not a u32 tensor")
        };
        let at = cl.start_offset();
        if !cl.is_contiguous() || at + slots > c.len() {
            candle_core::bail!("tally-batch: the counts are not contiguous within their storage")
        }
        let c = c[at..].as_mut_ptr();
        let p = predicted.as_mut_ptr();
        cuda_host::launch(n32.div_ceil(BLOCK), BLOCK, || {
            // SAFETY: as on CUDA: the kernel reads n * k f32 logits and n u32 labels, adds to
            // k * k + 2 u32 counts (all checked to lie within their storages) and writes n u32
            // predictions.
            unsafe { tally_batch(x, y, c, p, n32, k32) }
        });
        Ok(())
    })?;
    Tensor::from_vec(predicted, n, logits.device())
}
