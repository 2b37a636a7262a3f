//! With the `cuda-emulation` feature: this crate's CUDA kernels (`src/cuda/*.cu`) compiled as
//! C++ for the CPU by the build script (`ptx-build`'s `host`), so that the tests check the
//! kernels, and the code that prepares their launches, on machines without a GPU. The
//! multi-tensor optimizer step and the tally then run them on CPU tensors, where a CUDA build
//! runs them on CUDA ones. For tests only: one thread at a time, slow.

use std::cell::RefCell;

use candle_core::{CpuStorage, CudaStorage, InplaceOp1, Layout, Result, Tensor};

extern "C" {
    /// Sets the indices the kernels read (`src/cuda_host.h` of `ptx-build`).
    fn cuda_host_thread(grid: u32, block: u32, block_index: u32, thread_index: u32);
}

/// Runs `thread` as a launch of `grid` blocks of `block` threads runs a kernel: once for each
/// thread, in turn, with the thread's indices set.
pub(crate) fn launch(grid: u32, block: u32, mut thread: impl FnMut()) {
    for b in 0..grid {
        for t in 0..block {
            // SAFETY: sets four thread-local variables.
            unsafe { cuda_host_thread(grid, block, b, t) };
            thread();
        }
    }
}

/// Runs `f` on the storage of the CPU tensor `t` (and its layout) while holding it for
/// writing, as `layers::in_place_cuda` does on CUDA; `name` names the operation in errors.
pub(crate) fn in_place(
    t: &Tensor,
    name: &'static str,
    f: impl FnMut(&mut CpuStorage, &Layout) -> Result<()>,
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

impl<F: FnMut(&mut CpuStorage, &Layout) -> Result<()>> InplaceOp1 for InPlace<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let mut f = self
            .f
            .try_borrow_mut()
            .map_err(|_| candle_core::Error::Msg(format!("{}: re-entered", self.name)))?;
        f(storage, layout)
    }

    fn cuda_fwd(&self, _: &mut CudaStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("{} emulated runs on CPU tensors only", self.name)
    }
}

/// The address of `len` values of type `T` from `at` in the CPU storage `s`, checked.
pub(crate) fn host_ptr<T: candle_core::WithDType>(
    s: &CpuStorage,
    at: usize,
    len: usize,
) -> Result<*const T> {
    let slice = s.as_slice::<T>()?;
    if at + len > slice.len() {
        candle_core::bail!("an operand extends past its storage")
    }
    Ok(slice[at..].as_ptr())
}
