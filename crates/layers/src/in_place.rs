//! Write access to a CUDA tensor's storage for kernels that update tensors in place: batch
//! norm's running statistics (cuDNN moves them in the call that normalises) and the
//! optimizers' multi-tensor step (`train::optim`), which nests one call per parameter.

use std::cell::RefCell;

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
    t.inplace_op1(&InPlace {
        name,
        f: RefCell::new(f),
    })
}

struct InPlace<F> {
    name: &'static str,
    f: RefCell<F>,
}

impl<F: FnMut(&mut CudaStorage, &Layout) -> Result<()>> InplaceOp1 for InPlace<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("{} runs on CUDA tensors only", self.name)
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> Result<()> {
        let mut f = self
            .f
            .try_borrow_mut()
            .map_err(|_| candle_core::Error::Msg(format!("{}: re-entered", self.name)))?;
        f(storage, layout)
    }
}
