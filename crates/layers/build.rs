//! With feature `onednn`: compiles the C++ shim over oneDNN and links the system's libdnnl.

fn main() {
    #[cfg(feature = "onednn")]
    {
        println!("cargo:rerun-if-changed=src/conv/onednn_shim.cpp");
        cc::Build::new()
            .cpp(true)
            .file("src/conv/onednn_shim.cpp")
            .flag("-std=c++17")
            .opt_level(2)
            .compile("cnn_onednn_shim");
        println!("cargo:rustc-link-lib=dnnl");
        println!("cargo:rustc-link-lib=gomp");
    }
}
