//! With feature `cuda`: compiles `src/cuda/tally.cu` and `src/cuda/optim.cu` to PTX in
//! `$OUT_DIR` (`ptx-build`), where `tally/cuda.rs` and `optim/cuda.rs` include them.
//!
//! With feature `cuda-emulation`: compiles the same two files as C++ for the CPU into a static
//! library (`ptx-build`'s `host`), which `cuda_host.rs` and the `host.rs` files run.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    for src in ["src/cuda/tally.cu", "src/cuda/optim.cu"] {
        ptx_build::compile(src);
    }
    #[cfg(feature = "cuda-emulation")]
    ptx_build::host(
        &["src/cuda/tally.cu", "src/cuda/optim.cu"],
        "train_cuda_host",
    );
}
