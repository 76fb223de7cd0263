//! The cross-crate tests compare against the tch model, so they link libtorch: the
//! same rpath set-up as `train/build.rs` (without the CUDA part).
//!
//! torch-sys puts libtorch on the link line but its rpath does not reach this
//! crate's binaries, so they would not find `libtorch_cpu.so` at run time. We add
//! an rpath to the resolved libtorch folder (through the `.sen-cache` link, resolved
//! to the real cache so binaries keep working from any checkout). With the `cuda`
//! feature, `--no-as-needed -ltorch_cuda` keeps libtorch_cuda linked even though no
//! symbol of it is referenced directly (it registers the CUDA backend on load), and
//! `--allow-shlib-undefined` lets a CPU-only build machine link it.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(l) => l,
        Err(_) => {
            println!("cargo:warning=torch-sys did not report its libtorch folder; run `make deps`");
            return;
        }
    };
    let resolved = std::fs::canonicalize(&lib)
        .map(|p| p.display().to_string())
        .unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{resolved}");
}
