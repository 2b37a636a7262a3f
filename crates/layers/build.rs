//! With feature `onednn`: compiles the C++ shim over oneDNN and links the system's libdnnl, or,
//! with `CNN_DNNL_ROOT=DIR`, the static `DIR/lib/libdnnl.a` (headers from `DIR/include`; a
//! oneDNN 2.x or 3.x built with `ONEDNN_LIBRARY_TYPE=STATIC` and the OpenMP runtime).
//!
//! With feature `cuda`: compiles `src/cuda/*.cu` to PTX with the toolkit's nvcc (`$NVCC`, else
//! `$CUDA_HOME/bin/nvcc`, else `nvcc` on the `PATH`, as candle-kernels finds it) for
//! `compute_$CUDA_COMPUTE_CAP` (default 75, which every GPU from Turing on runs), into
//! `$OUT_DIR`, where `activation_cuda.rs` includes it.

fn main() {
    #[cfg(feature = "cuda")]
    compile_cuda_kernels();
    #[cfg(feature = "onednn")]
    {
        println!("cargo:rerun-if-changed=src/conv/onednn_shim.cpp");
        println!("cargo:rerun-if-env-changed=CNN_DNNL_ROOT");
        let root = std::env::var("CNN_DNNL_ROOT").ok();
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file("src/conv/onednn_shim.cpp")
            .flag("-std=c++17")
            .opt_level(2);
        if let Some(root) = &root {
            build.include(format!("{root}/include"));
        }
        build.compile("cnn_onednn_shim");
        if let Some(root) = &root {
            println!("cargo:rustc-link-search=native={root}/lib");
            println!("cargo:rustc-link-lib=static=dnnl");
            // After libdnnl.a, which needs it.
            println!("cargo:rustc-link-lib=stdc++");
        } else {
            println!("cargo:rustc-link-lib=dnnl");
        }
        println!("cargo:rustc-link-lib=gomp");
    }
}

#[cfg(feature = "cuda")]
fn compile_cuda_kernels() {
    use std::path::PathBuf;
    use std::process::Command;
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
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
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let name = "activation";
    let src = format!("src/cuda/{name}.cu");
    println!("cargo:rerun-if-changed={src}");
    let ptx = out_dir.join(format!("{name}.ptx"));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&ptx)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("layers: cannot run {} for {src}: {e}", nvcc.display()));
    assert!(
        status.success(),
        "layers: {} failed on {src} ({status})",
        nvcc.display()
    );
}
