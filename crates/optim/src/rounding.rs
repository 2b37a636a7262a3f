//! How the CPU steps round a product added to a value: as PyTorch's CPU kernels on the same
//! machine do.
//!
//! PyTorch's SGD and Adam on the CPU are whole-tensor operations (`param.add_(grad,
//! alpha=-lr)`, `exp_avg.lerp_(grad, 1 - beta1)`, `exp_avg_sq.addcmul_(grad, grad, value=1 -
//! beta2)`), and which kernels run them depends on the CPU: on an x86-64 with AVX2 and FMA (its
//! `AVX2` and `AVX512` capabilities, `torch.backends.cpu.get_cpu_capability()`) and on aarch64
//! they compute `a + alpha * b` as one fused multiply-add, rounded once (`vec::fmadd`, and the
//! compiler's contraction in their scalar tails); on an x86-64 without FMA, or with
//! `ATEN_CPU_CAPABILITY=default`, the product is rounded, then the sum. The fused CPU steps
//! (`fused.rs`) round as PyTorch does on the machine they run on: [`Rounding::of_this_cpu`].
//! The CUDA kernel rounds twice, as do Candle's tensor operations (the steps for other dtypes),
//! whose products with a scalar also turn a `-0.0` into `+0.0`.

use std::sync::OnceLock;

/// How a CPU step rounds `a * b + c` where PyTorch's kernels compute one (`add(alpha=)`,
/// `lerp_`, `addcmul_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rounding {
    /// Once, a fused multiply-add: PyTorch's kernels on an x86-64 with AVX2 and FMA, and on
    /// aarch64.
    Once,
    /// Twice, the product and then the sum: PyTorch's `default` kernels on an x86-64 (one
    /// without AVX2 and FMA, or with `ATEN_CPU_CAPABILITY=default`).
    Twice,
}

impl Rounding {
    /// As PyTorch's CPU kernels round on this machine, asked once ([`rounding_for`] of the CPU
    /// and of `ATEN_CPU_CAPABILITY`, PyTorch's variable that makes it run its portable kernels).
    pub(crate) fn of_this_cpu() -> Self {
        static ROUNDING: OnceLock<Rounding> = OnceLock::new();
        *ROUNDING.get_or_init(|| {
            let capability = std::env::var("ATEN_CPU_CAPABILITY").ok();
            #[cfg(target_arch = "x86_64")]
            let fma = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            #[cfg(not(target_arch = "x86_64"))]
            let fma = false;
            rounding_for(std::env::consts::ARCH, capability.as_deref(), fma)
        })
    }
}

/// How PyTorch's CPU kernels round `a * b + c` on an `arch` CPU (Rust's name for it) with
/// `ATEN_CPU_CAPABILITY` set to `capability`; `x86_fma`: an x86-64 CPU has AVX2 and FMA.
///
/// - x86-64: its `AVX2` kernels (AVX2 and FMA) and `AVX512` ones fuse; `ATEN_CPU_CAPABILITY`
///   set to exactly `default` (PyTorch compares the value as it is, and ignores others with a
///   warning) picks the portable ones, which do not, as on a CPU without AVX2 and FMA.
/// - aarch64: fused whatever the variable says (NEON's `vfmaq_f32` in its default kernels,
///   SVE's `svmad` in its `sve256` ones).
/// - other CPUs: rounded twice (not measured against PyTorch).
fn rounding_for(arch: &str, capability: Option<&str>, x86_fma: bool) -> Rounding {
    match arch {
        "x86_64" if x86_fma && capability != Some("default") => Rounding::Once,
        "aarch64" => Rounding::Once,
        _ => Rounding::Twice,
    }
}

/// Runs `f` compiled for the CPU's fused multiply-add: for AVX-512F where the CPU has it (and FMA), else
/// for AVX2 and FMA where it has those, else as built (there [`f32::mul_add`] is a call into the
/// C library, exact and slow: on such a CPU [`Rounding::of_this_cpu`] is `Twice`). Mark the
/// closure `#[inline(always)]`, as for [`layers::wide::run`]. The results are the same in every
/// copy: fused multiply-adds are exact operations, and nothing else is contracted.
#[inline(always)]
pub(crate) fn with_fma<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX-512F and FMA (checked just above).
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
/// The CPU has AVX-512F and FMA.
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

/// `f()` compiled for AVX2 and FMA where the CPU has them (the copy [`with_fma`] runs on a CPU
/// without AVX-512), else `None`: for the tests, on CPUs that have AVX-512 too.
#[cfg(test)]
pub(crate) fn on_avx2<R>(f: impl FnOnce() -> R) -> Option<R> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return Some(unsafe { avx2(f) });
    }
    let _ = f;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's choice of kernels, as `rounding_for` reads it: the variable's exact value
    /// `default` only, and only on x86-64.
    #[test]
    fn the_rounding_follows_pytorchs_choice_of_kernels() {
        let x86 = |capability, fma| rounding_for("x86_64", capability, fma);
        assert_eq!(x86(None, true), Rounding::Once);
        assert_eq!(x86(Some("avx2"), true), Rounding::Once);
        assert_eq!(x86(Some("default"), true), Rounding::Twice);
        // PyTorch ignores a value it does not know (with a warning) and keeps its best kernels.
        assert_eq!(x86(Some("DEFAULT"), true), Rounding::Once);
        assert_eq!(x86(Some(" default"), true), Rounding::Once);
        assert_eq!(x86(None, false), Rounding::Twice);
        assert_eq!(x86(Some("avx512"), false), Rounding::Twice);
        assert_eq!(
            rounding_for("aarch64", Some("default"), false),
            Rounding::Once
        );
        assert_eq!(rounding_for("aarch64", None, false), Rounding::Once);
        assert_eq!(rounding_for("riscv64", None, false), Rounding::Twice);
    }
}
