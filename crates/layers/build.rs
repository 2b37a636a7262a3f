//! With feature `onednn`: compiles the C++ shim over oneDNN and links the system's libdnnl, or,
//! with `CNN_DNNL_ROOT=DIR`, the static `DIR/lib/libdnnl.a` (headers from `DIR/include`; a
//! oneDNN 2.x or 3.x built with `ONEDNN_LIBRARY_TYPE=STATIC` and the OpenMP runtime).
//!
//! With feature `cuda`: compiles `src/cuda/activation.cu` to PTX in `$OUT_DIR` (`ptx-build`),
//! where `activation_cuda.rs` includes it.
//!
//! With feature `cuda-emulation`: compiles the same file as C++ for the CPU into a static
//! library (`ptx-build`'s `host`), whose kernels `activation_host_tests.rs` checks.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    ptx_build::compile("src/cuda/activation.cu");
    #[cfg(feature = "cuda-emulation")]
    ptx_build::host(&["src/cuda/activation.cu"], "layers_cuda_host");
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
