//! With feature `cuda`: compiles `src/cuda/tally.cu` to PTX in `$OUT_DIR` (`ptx-build`), where
//! `tally/cuda.rs` includes it.

fn main() {
    #[cfg(feature = "cuda")]
    ptx_build::compile("src/cuda/tally.cu");
}
