//! For build scripts of crates with CUDA kernels of their own (`layers`, `optim`, `train`, under their
//! `cuda` feature): [`compile`] turns one `.cu` file into PTX in `$OUT_DIR`, which the crate
//! then includes with `include_str!(concat!(env!("OUT_DIR"), "/NAME.ptx"))` and loads with
//! Candle's `CudaDevice::get_or_load_custom_func`.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the `PATH` (where candle-kernels
//! finds it); the target is `compute_$CUDA_COMPUTE_CAP` (default 75, which every GPU from
//! Turing on runs: the driver compiles the PTX for the GPU it finds; the kernels here need 70
//! or more, for `__grid_constant__`).
//!
//! With feature `host`, `host` compiles the same files as C++ for the CPU instead, for tests
//! on machines without a GPU (the crates' `cuda-emulation` feature): each kernel becomes an
//! `extern "C"` function that a test calls once per thread, after setting the thread's indices
//! with `cuda_host_thread(grid, block, block_index, thread_index)`, as a launch of
//! `grid` blocks of `block` threads would run it. `src/cuda_host.h` says what of CUDA that
//! covers.

use std::path::PathBuf;
use std::process::Command;

/// Compiles `src` (a path relative to the crate's manifest directory, ending in `.cu`) to
/// `$OUT_DIR/<file stem>.ptx`, and tells Cargo to rerun when it or the variables above change.
///
/// # Panics
/// When nvcc cannot be run or fails: a build script's way to stop the build with a message.
pub fn compile(src: &str) {
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={src}");
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CUDA_HOME")
                .map(|home| PathBuf::from(home).join("bin/nvcc"))
                .filter(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "75".into())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("Cargo sets OUT_DIR"));
    let stem = std::path::Path::new(src)
        .file_stem()
        .unwrap_or_else(|| panic!("{src}: not a file name"));
    let ptx = out_dir.join(format!("{}.ptx", stem.to_string_lossy()));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&ptx)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} for {src}: {e}", nvcc.display()));
    assert!(
        status.success(),
        "{} failed on {src} ({status})",
        nvcc.display()
    );
}

/// Compiles the `.cu` files `srcs` (paths relative to the crate's manifest directory) as C++
/// for the CPU, with `cuda_host.h` standing in for CUDA, into the static library `lib`, which
/// Cargo links into the crate. IEEE single precision with nothing contracted into FMAs
/// (`-ffp-contract=off`): the GPU's bits wherever the kernel spells its roundings with the
/// `_rn` intrinsics (nvcc may contract plain `a * b + c`).
///
/// # Panics
/// When the C++ compiler cannot be run or fails (a build script's way to stop the build).
#[cfg(feature = "host")]
pub fn host(srcs: &[&str], lib: &str) {
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("Cargo sets OUT_DIR"));
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("Cargo sets it"));
    let header = out_dir.join("cuda_host.h");
    std::fs::write(&header, include_str!("cuda_host.h"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", header.display()));
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .flag("-std=c++17")
        .flag("-ffp-contract=off")
        // Kernels share signatures whose arguments not every one reads.
        .flag("-Wno-unused-parameter")
        .opt_level(2);
    for src in srcs {
        println!("cargo:rerun-if-changed={src}");
        let stem = std::path::Path::new(src)
            .file_stem()
            .unwrap_or_else(|| panic!("{src}: not a file name"))
            .to_string_lossy();
        let unit = out_dir.join(format!("{stem}_host.cpp"));
        let text = format!(
            "#include \"{}\"\n#include \"{}\"\n",
            header.display(),
            dir.join(src).display()
        );
        std::fs::write(&unit, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", unit.display()));
        build.file(unit);
    }
    build.compile(lib);
}
