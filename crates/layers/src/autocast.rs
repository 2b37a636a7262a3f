//! Mixed precision in the manner of PyTorch's `torch.autocast`: while a dtype is set for the
//! current thread, [`Conv2d`](crate::Conv2d) and [`Linear`](crate::Linear) run their products in
//! it (input, weight and bias cast on the way in) and hand back float32, so weights, gradients,
//! optimizer state, batch norm and the loss stay float32.
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

/// `t` rounded to `dtype` and back to its own dtype, differentiable (the gradient is rounded
/// the same way on its way back). The CPU runs autocast's products as float32 products of such
/// operands: a product of two bf16 (or f16) values is exact in float32, and the sums are
/// float32, as in oneDNN's bf16 kernels, which accumulate in f32; the float32 kernels are
/// faster here than Candle's reduced-precision CPU products.
pub(crate) fn round_through(t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)?.to_dtype(t.dtype())
}

/// `t` in `dtype` (no copy when it already is).
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
