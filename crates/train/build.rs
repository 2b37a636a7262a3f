//! With feature `cuda`: compiles `src/cuda/tally.cu` to PTX in `$OUT_DIR` (`ptx-build`), where
//! `tally/cuda.rs` includes it.
//!
//! With feature `cuda-emulation`: compiles the same file as C++ for the CPU into a static
//! library (`ptx-build`'s `host`), which `tally/host.rs` runs (through `layers::cuda_host`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    ptx_build::compile("src/cuda/tally.cu");
    #[cfg(feature = "cuda-emulation")]
    ptx_build::host(&["src/cuda/tally.cu"], "train_cuda_host");
}
