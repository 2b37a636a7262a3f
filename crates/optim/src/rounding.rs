//! How the CPU steps round a product added to a value: once, as PyTorch's CPU kernels on this
//! machine do.
//!
//! PyTorch's SGD and Adam on the CPU are whole-tensor operations (`param.add_(grad,
//! alpha=-lr)`, `exp_avg.lerp_(grad, 1 - beta1)`, `exp_avg_sq.addcmul_(grad, grad, value=1 -
//! beta2)`), and which kernels run them depends on the CPU: on an x86-64 with AVX2 and FMA (its
//! `AVX2` and `AVX512` capabilities, `torch.backends.cpu.get_cpu_capability()`) and on ARM they
//! compute `a + alpha * b` as one fused multiply-add, rounded once (`vec::fmadd`, and the
//! compiler's contraction in their scalar tails); on an x86-64 without FMA, or with
//! `ATEN_CPU_CAPABILITY=default`, the product is rounded, then the sum. The fused CPU steps
//! (`fused.rs`) round as PyTorch does on the machine they run on: [`Rounding::of_this_cpu`].
//! Candle's tensor operations (the steps for other dtypes and devices) and the CUDA kernel
//! round twice.

use std::sync::OnceLock;

/// How a CPU step rounds `a * b + c` where PyTorch's kernels compute one (`add(alpha=)`,
/// `lerp_`, `addcmul_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rounding {
    /// Once, a fused multiply-add: PyTorch's kernels on an x86-64 with AVX2 and FMA, and on ARM.
    Once,
    /// Twice, the product and then the sum: PyTorch's `default` kernels (an x86-64 without FMA,
    /// or `ATEN_CPU_CAPABILITY=default`), and Candle's tensor operations.
    Twice,
}

impl Rounding {
    /// As PyTorch's CPU kernels round on this machine, asked once: [`Rounding::Twice`] where
    /// `ATEN_CPU_CAPABILITY` is `default` (PyTorch's variable, which makes it run its portable
    /// kernels) or the CPU is an x86-64 without AVX2 and FMA (or neither x86-64 nor ARM), else
    /// [`Rounding::Once`].
    pub(crate) fn of_this_cpu() -> Self {
        static ROUNDING: OnceLock<Rounding> = OnceLock::new();
        *ROUNDING.get_or_init(|| {
            let portable = std::env::var("ATEN_CPU_CAPABILITY")
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("default"));
            if !portable && fma_kernels() {
                Self::Once
            } else {
                Self::Twice
            }
        })
    }
}

/// Whether PyTorch picks kernels with fused multiply-adds on this CPU.
fn fma_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Runs `f` compiled for the CPU's fused multiply-add: for AVX-512F where the CPU has it, else
/// for AVX2 and FMA where it has those, else as built (there [`f32::mul_add`] is a call into the
/// C library, exact and slow: on such a CPU [`Rounding::of_this_cpu`] is `Twice`). Mark the
/// closure `#[inline(always)]`, as for [`layers::wide::run`]. The results are the same in every
/// copy: fused multiply-adds are exact operations, and nothing else is contracted.
#[inline(always)]
pub(crate) fn with_fma<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
