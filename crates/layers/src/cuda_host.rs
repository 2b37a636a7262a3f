//! With the `cuda-emulation` feature: CUDA kernels (`src/cuda/*.cu` of this crate, `optim` and
//! `train`) compiled as C++ for the CPU by their build scripts (`ptx-build`'s `host`), so that
//! the tests check the kernels, and the code that prepares their launches, on machines without
//! a GPU: this module runs such a kernel as a launch would. The activations' tests, the
//! multi-tensor optimizer step and the tally run them on CPU tensors, where a CUDA build runs
//! them on CUDA ones. For tests only: one thread at a time, slow; not a stable interface (it is
//! public for `optim`'s and `train`'s tests).

use candle_core::{CpuStorage, Result};

extern "C" {
    /// Sets the indices the kernels read (`src/cuda_host.h` of `ptx-build`).
    fn cuda_host_thread(grid: u32, block: u32, block_index: u32, thread_index: u32);
}

/// Runs `thread` as a launch of `grid` blocks of `block` threads runs a kernel: once for each
/// thread, in turn, with the thread's indices set.
pub fn launch(grid: u32, block: u32, mut thread: impl FnMut()) {
    for b in 0..grid {
        for t in 0..block {
            // SAFETY: sets four thread-local variables.
            unsafe { cuda_host_thread(grid, block, b, t) };
            thread();
        }
    }
}

/// The address of `len` values of type `T` from `at` in the CPU storage `s`, checked.
pub fn host_ptr<T: candle_core::WithDType>(
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
