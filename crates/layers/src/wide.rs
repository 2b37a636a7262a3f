//! Loops the compiler vectorises, compiled twice: for the default target and for AVX-512F, the
//! copy picked at run time.
//!
//! The workspace builds for any x86-64, whose vectors are SSE2's four f32 lanes; the kernels
//! that matter most (products, Winograd's transforms, pooling) are written for AVX-512 and
//! check for it at run time. The element-wise and per-channel passes (batch norm's statistics,
//! output and gradients, the optimizers' updates, Tanh) are plain loops that the compiler
//! vectorises: [`run`] compiles such a loop a second time for AVX-512F (sixteen lanes) and
//! picks that copy where the CPU has it (a CPU with AVX2 alone runs the SSE2 copy). For plain
//! arithmetic (`+ - * /`, `sqrt`, conversions, comparisons feeding a select) the same
//! operations in the same order, so the same bits: the compiler does not reorder
//! floating-point arithmetic or fuse a multiply and an add, it only widens them. (`f32::min`
//! and `max`, which may return either zero of `±0.0`, would be a case to test apart.)
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

/// `f()` compiled for AVX-512F (which implies AVX2 and FMA; harmless to the bits, since Rust
/// never contracts `a * b + c` into a fused multiply-add on its own).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Tests switch the AVX-512 copies off to compare their bits with the default target's
/// (process-wide: other tests running meanwhile get the same bits either way), through
/// [`baseline_only`].
#[cfg(test)]
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The AVX-512 copies switched off until the guard drops (also when a test panics), one test
/// at a time.
#[cfg(test)]
pub(crate) fn baseline_only() -> impl Drop {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    struct Guard(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    ENABLED.store(false, std::sync::atomic::Ordering::Relaxed);
    Guard(lock)
}

#[cfg(all(test, target_arch = "x86_64"))]
fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(all(not(test), target_arch = "x86_64"))]
#[inline(always)]
fn enabled() -> bool {
    true
}
