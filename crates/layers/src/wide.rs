//! Loops the compiler vectorises, compiled at run time for the widest vectors the CPU has.
//!
//! The workspace builds for any x86-64, whose vectors are SSE2's four f32 lanes; the kernels
//! that matter most (products, Winograd's transforms, pooling) are written for AVX-512 and
//! check for it at run time. The element-wise and per-channel passes (batch norm's statistics,
//! output and gradients, the optimizers' updates) are plain loops that the compiler vectorises:
//! [`run`] compiles such a loop a second time for AVX-512 (sixteen lanes) and picks that copy
//! where the CPU has AVX-512F. The same operations in the same order, so the same bits: the
//! compiler does not reorder floating-point arithmetic, it only widens it.
//!
//! ```
//! let x = vec![1.5f32; 1000];
//! let mut y = vec![0f32; 1000];
//! layers::wide::run(
//!     #[inline(always)]
//!     || {
//!         for (y, &x) in y.iter_mut().zip(&x) {
//!             *y = x * 2.0 + 1.0;
//!         }
//!     },
//! );
//! assert!(y.iter().all(|&v| v == 4.0));
//! ```

/// Runs `f` compiled for AVX-512 where the CPU has AVX-512F (asked once), else as built.
///
/// Mark the closure `#[inline(always)]` (as in the module's example): only code inlined into
/// the AVX-512 copy is compiled for it, and a closure the compiler chose not to inline would
/// run on SSE2's lanes in both copies. Closures and functions that `f` calls are inlined as the
/// compiler sees fit (small ones are); a rayon task inside `f` runs its own, unwidened code.
#[inline(always)]
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::available() && enabled() {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { avx512(f) };
    }
    f()
}

/// `f()` compiled for AVX-512F (and the AVX2 and FMA it implies are not used for contraction:
/// Rust never fuses a multiply and an add on its own).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Tests switch the AVX-512 copies off to compare their bits with the default target's
/// (process-wide: other tests running meanwhile get the same bits either way).
#[cfg(test)]
pub(crate) static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[cfg(test)]
fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(test))]
#[inline(always)]
fn enabled() -> bool {
    true
}
