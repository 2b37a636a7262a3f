//! Mixed precision in the manner of PyTorch's `torch.autocast`: while a dtype is set for the
//! current thread, [`Conv2d`](crate::Conv2d) and [`Linear`](crate::Linear) run their products in
//! it (input, weight and bias cast on the way in). Weights, gradients, optimizer state, batch
//! norm's statistics and parameters, and the loss stay float32: [`Linear`](crate::Linear) hands
//! back float32 (the logits), and so do the CPU's convolutions. On CUDA a convolution hands on
//! the reduced dtype, as PyTorch's: the activations between convolutions (batch norm's output,
//! ReLU, pooling, residual joins) and their gradients stay bf16 (or f16), batch norm computing
//! in float32 inside (cuDNN's mixed-precision batch norm with the `cudnn` feature).
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! let _bf16 = layers::autocast::enable(candle_core::DType::BF16)?;
//! assert_eq!(layers::autocast::dtype(), Some(candle_core::DType::BF16));
//! # Ok(()) }
//! ```
//!
//! The setting is per thread, like PyTorch's, and ends when the guard is dropped.

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// The reduced dtype of this thread's products, if autocast is on.
pub fn dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// Restores the previous setting when dropped.
#[derive(Debug)]
#[must_use = "autocast ends when the guard is dropped"]
pub struct Guard {
    previous: Option<DType>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.previous));
    }
}

/// Runs this thread's convolutions and matrix products in `dtype` (BF16 or F16) until the
/// guard is dropped.
///
/// # Errors
/// `dtype` is neither BF16 nor F16.
pub fn enable(dtype: DType) -> Result<Guard> {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        candle_core::bail!("autocast runs products in bf16 or f16, not {dtype:?}")
    }
    Ok(set(Some(dtype)))
}

/// Sets (or with `None`, clears) this thread's autocast dtype until the guard is dropped.
pub fn set(dtype: Option<DType>) -> Guard {
    let previous = AUTOCAST.with(|a| a.replace(dtype));
    Guard { previous }
}

thread_local! {
    static CPU_BF16_KERNEL: Cell<bool> = const { Cell::new(true) };
}

/// Whether bf16 autocast on the CPU may run its products in the built-in bf16 kernel on this
/// thread (per thread, like autocast itself); on by default. Returns the previous setting. The
/// kernel runs AVX512-BF16's `vdpbf16ps`, or Intel AMX's `tdpbf16ps` on its tiles where the CPU
/// has them (and the product has 16 rows or more): the same products and float32 sums, summed
/// in another order ([`cpu_bf16_isa`] says which).
///
/// With the kernel, both operands of each of a convolution's or linear layer's three products
/// (input and weight, output gradient and weight, output gradient and input) are rounded to
/// bf16 as they are packed, each product is exact and the sums are float32, as in oneDNN's bf16
/// kernels; outputs and gradients come back in float32 unrounded. Stride-1 3x3 convolutions
/// with 16 channels or more run Winograd's F(2x2, 3x3) with bf16 products of the transformed
/// operands (3e-3 to 6e-3 of the output's scale from float32, as the direct bf16 products).
/// Convolutions with fewer than 16 output channels run in float32, where bf16 would be slower;
/// those with outputs under 4x4 (too small for the image-by-image path) run one bf16 product
/// over the whole batch's columns (or oneDNN's bf16 kernel, with the `onednn` feature).
///
/// Without it (switched off, or a CPU without AVX512-BF16) bf16 autocast runs the CPU's
/// convolutions and linear layers in float32: never slower than float32. (f16 autocast on the
/// CPU runs float32 products of operands rounded to f16.)
pub fn cpu_bf16_kernel(on: bool) -> bool {
    CPU_BF16_KERNEL.with(|k| k.replace(on))
}

/// Whether the built-in bf16 kernel runs this thread's bf16 products: allowed
/// ([`cpu_bf16_kernel`]) and this CPU has AVX-512 with BF16 (and so, where it has them, AMX's
/// tiles: [`cpu_bf16_isa`]).
pub fn cpu_bf16_kernel_active() -> bool {
    CPU_BF16_KERNEL.with(Cell::get) && crate::bf16_gemm::available()
}

/// The instructions that run this thread's bf16 products on the CPU, for logs: `"AMX"` (Intel
/// AMX's tiles, `tdpbf16ps`, where [`cpu_has_amx_bf16`] and Linux grants the process the
/// tiles; oneDNN's kernels too, with the `onednn` feature), `"AVX512-BF16"` (`vdpbf16ps`), or
/// `None` where they run in float32 ([`cpu_bf16_kernel_active`] false).
pub fn cpu_bf16_isa() -> Option<&'static str> {
    match crate::bf16_gemm::Kernel::best() {
        _ if !cpu_bf16_kernel_active() => None,
        crate::bf16_gemm::Kernel::Amx => Some("AMX"),
        crate::bf16_gemm::Kernel::Avx512 => Some("AVX512-BF16"),
    }
}

/// Whether this CPU has Intel AMX with bf16 (`AMX-BF16` and `AMX-TILE`, CPUID leaf 7, EDX bits
/// 22 and 24: Sapphire Rapids and later Xeons) and the operating system keeps its tile state
/// (`XCR0` bits 17 and 18, Linux from 5.16), the tiles PyTorch's bf16 autocast runs its
/// convolutions on through oneDNN. The built-in bf16 kernel runs its products there too
/// ([`cpu_bf16_isa`]), and so does oneDNN with the `onednn` feature
/// (`onednn::amx_bf16`).
pub fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        // CPUID is on every x86-64 CPU; leaf 7 is read only where leaf 0 lists it.
        let leaf7 = (__cpuid_count(0, 0).eax >= 7).then(|| __cpuid_count(7, 0).edx);
        let osxsave = __cpuid_count(1, 0).ecx & (1 << 27) != 0;
        #[target_feature(enable = "xsave")]
        unsafe fn xcr0() -> u64 {
            std::arch::x86_64::_xgetbv(0)
        }
        // SAFETY: XGETBV runs where CPUID says the OS enabled XSAVE (OSXSAVE).
        let tiles = osxsave && unsafe { xcr0() } & (3 << 17) == 3 << 17;
        // AMX-BF16 (bit 22) and AMX-TILE (bit 24).
        let amx = 1 << 22 | 1 << 24;
        tiles && leaf7.is_some_and(|edx| edx & amx == amx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Restores Candle's TF32 setting when dropped.
#[derive(Debug)]
#[must_use = "TF32 ends when the guard is dropped"]
pub struct Tf32Guard {
    previous: bool,
}

impl Drop for Tf32Guard {
    fn drop(&mut self) {
        candle_core::cuda::set_gemm_reduced_precision_f32(self.previous);
    }
}

/// Lets CUDA float32 matrix products (cuBLAS, and so the convolutions' GEMMs) use TF32 tensor
/// cores, as `torch.backends.cuda.matmul.allow_tf32 = True`, until the guard is dropped.
/// Candle's flag is process-wide, unlike autocast; on the CPU it changes nothing.
pub fn tf32(on: bool) -> Tf32Guard {
    let previous = candle_core::cuda::gemm_reduced_precision_f32();
    candle_core::cuda::set_gemm_reduced_precision_f32(on);
    Tf32Guard { previous }
}

/// The dtype a product over `xs` runs in: the autocast dtype for float32 inputs when on,
/// else the input's own.
pub(crate) fn compute_dtype(xs: &Tensor) -> DType {
    match dtype() {
        Some(d) if xs.dtype() == DType::F32 => d,
        _ => xs.dtype(),
    }
}

/// The dtype a convolution under autocast hands on, given its input `xs` and the dtype its
/// product ran in: on CUDA the product's (bf16 or f16 activations from there on, as PyTorch's
/// autocast, so batch norm, activations, joins and their gradients move half the bytes); on
/// the CPU the input's (float32 there, see [`cpu_bf16_kernel`]).
pub(crate) fn output_dtype(xs: &Tensor, computed: DType) -> DType {
    match xs.device().is_cuda() {
        true => computed,
        false => xs.dtype(),
    }
}

/// `t` rounded to `dtype` and back to its own dtype, differentiable (the gradient is rounded
/// the same way on its way back). The CPU runs autocast's products as float32 products of such
/// operands: a product of two bf16 (or f16) values is exact in float32, and the sums are
/// float32, as in oneDNN's bf16 kernels, which accumulate in f32; the float32 kernels are
/// faster here than Candle's reduced-precision CPU products.
pub(crate) fn round_through(t: &Tensor, dtype: DType) -> Result<Tensor> {
    match (t.device().is_cpu(), t.dtype(), dtype) {
        (true, DType::F32, DType::BF16 | DType::F16) => t.contiguous()?.apply_op1(Round(dtype)),
        _ => t.to_dtype(dtype)?.to_dtype(t.dtype()),
    }
}

/// f32 values rounded to bf16 or f16 (nearest, ties to even, as `to_dtype`) and kept in f32,
/// in one pass; the gradient is rounded the same way.
struct Round(DType);

impl Round {
    fn round(&self, v: f32) -> f32 {
        match self.0 {
            DType::F16 => half::f16::from_f32(v).to_f32(),
            _ => half::bf16::from_f32(v).to_f32(),
        }
    }
}

impl candle_core::CustomOp1 for Round {
    fn name(&self) -> &'static str {
        "round-through"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (candle_core::CpuStorage::F32(v), Some((a, b))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("round-through: expected a contiguous f32 tensor")
        };
        let mut out = vec![0f32; b - a];
        out.par_chunks_mut(1 << 16)
            .zip(v[a..b].par_chunks(1 << 16))
            .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, x)| *o = self.round(*x)));
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        round_through(&grad.contiguous()?, self.0).map(Some)
    }
}

/// `t` in `dtype` (no copy when it already is).
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        // A channels-last activation stays channels-last (a cast of its (N, H, W, C) view).
        crate::memory_format::map(t, |t| t.to_dtype(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_through_matches_the_dtype_round_trip_and_rounds_the_gradient() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 3.0, (4, 33), &dev)?)?;
        let up = Tensor::randn(0f32, 1.0, (4, 33), &dev)?;
        for dtype in [DType::BF16, DType::F16] {
            let ours = round_through(&x, dtype)?;
            let theirs = x.to_dtype(dtype)?.to_dtype(DType::F32)?;
            assert_eq!(ours.to_vec2::<f32>()?, theirs.to_vec2::<f32>()?);
            let g1 = (&ours * &up)?.sum_all()?.backward()?;
            let g2 = (&theirs * &up)?.sum_all()?.backward()?;
            let (g1, g2) = (g1.get(&x).expect("grad"), g2.get(&x).expect("grad"));
            assert_eq!(g1.to_vec2::<f32>()?, g2.to_vec2::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn guards_nest_and_restore() -> Result<()> {
        assert_eq!(dtype(), None);
        {
            let _outer = enable(DType::BF16)?;
            assert_eq!(dtype(), Some(DType::BF16));
            {
                let _off = set(None);
                assert_eq!(dtype(), None);
            }
            assert_eq!(dtype(), Some(DType::BF16));
        }
        assert_eq!(dtype(), None);
        assert!(enable(DType::F32).is_err());
        Ok(())
    }

    #[test]
    fn the_setting_is_per_thread() -> Result<()> {
        let _on = enable(DType::F16)?;
        let other = std::thread::spawn(dtype).join().expect("thread");
        assert_eq!(other, None);
        assert_eq!(dtype(), Some(DType::F16));
        Ok(())
    }
}
