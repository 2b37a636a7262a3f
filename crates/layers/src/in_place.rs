//! Write access to a tensor's storage for kernels that update tensors in place: batch norm's
//! running statistics on CUDA (cuDNN moves them in the call that normalises), the optimizers'
//! multi-tensor step (`optim`), which nests one call per parameter, and, on the CPU,
//! the same kernels compiled for tests (`optim`'s `cuda-emulation`).

use std::cell::RefCell;
use std::marker::PhantomData;

use candle_core::{CpuStorage, CudaStorage, InplaceOp1, Layout, Result, Tensor};

/// Runs `f` on the storage of the CUDA tensor `t` (and its layout) while holding it for
/// writing, as Candle's in-place custom ops do; `name` names the operation in errors.
///
/// # Errors
/// `t` is not on a CUDA device, `f` re-enters itself, or what `f` returns.
pub fn in_place_cuda(
    t: &Tensor,
    name: &'static str,
    f: impl FnMut(&mut CudaStorage, &Layout) -> Result<()>,
) -> Result<()> {
    t.inplace_op1(&InPlace::<_, CudaStorage>::new(name, f))
}

/// [`in_place_cuda`] for a tensor on the CPU.
///
/// # Errors
/// `t` is not on the CPU, `f` re-enters itself, or what `f` returns.
pub fn in_place_cpu(
    t: &Tensor,
    name: &'static str,
    f: impl FnMut(&mut CpuStorage, &Layout) -> Result<()>,
) -> Result<()> {
    t.inplace_op1(&InPlace::<_, CpuStorage>::new(name, f))
}

/// `f` on a storage of type `S` held for writing.
struct InPlace<F, S> {
    name: &'static str,
    f: RefCell<F>,
    storage: PhantomData<fn(&mut S)>,
}

impl<F, S> InPlace<F, S> {
    fn new(name: &'static str, f: F) -> Self {
        Self {
            name,
            f: RefCell::new(f),
            storage: PhantomData,
        }
    }

    /// Calls `f` on `storage`, refusing a re-entry.
    fn call(&self, storage: &mut S, layout: &Layout) -> Result<()>
    where
        F: FnMut(&mut S, &Layout) -> Result<()>,
    {
        let mut f = self
            .f
            .try_borrow_mut()
            .map_err(|_| candle_core::Error::Msg(format!("{}: re-entered", self.name)))?;
        f(storage, layout)
    }
}

impl<F: FnMut(&mut CudaStorage, &Layout) -> Result<()>> InplaceOp1 for InPlace<F, CudaStorage> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("{} runs on CUDA tensors only", self.name)
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> Result<()> {
        self.call(storage, layout)
    }
}

impl<F: FnMut(&mut CpuStorage, &Layout) -> Result<()>> InplaceOp1 for InPlace<F, CpuStorage> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        self.call(storage, layout)
    }
}
