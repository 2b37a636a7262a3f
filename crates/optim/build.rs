//! With feature `cuda`: compiles `src/cuda/optim.cu` to PTX in `$OUT_DIR` (`ptx-build`), where
//! `cuda.rs` includes it.
//!
//! With feature `cuda-emulation`: compiles the same file as C++ for the CPU into a static library
//! (`ptx-build`'s `host`), which `host.rs` runs.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    ptx_build::compile("src/cuda/optim.cu");
    #[cfg(feature = "cuda-emulation")]
    ptx_build::host(&["src/cuda/optim.cu"], "optim_cuda_host");
}
