//! With feature `cuda`: compiles `src/cuda/tally.cu` and `src/cuda/optim.cu` to PTX in
//! `$OUT_DIR` (`ptx-build`), where `tally/cuda.rs` and `optim/cuda.rs` include them.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    for src in ["src/cuda/tally.cu", "src/cuda/optim.cu"] {
        ptx_build::compile(src);
    }
}
