//! What a provider needs on this machine, checked before ONNX Runtime is asked to
//! start it: the provider library's own `DT_NEEDED` entries, the driver, the GPU.

use super::*;
use crate::error::RuntimeError;
use std::path::Path;

/// The GPU a provider would run on (from the CUDA driver API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub name: String,
    pub compute_capability: (u32, u32),
    pub memory_bytes: u64,
    /// e.g. 13000 for CUDA 13.0.
    pub driver_cuda_version: u32,
}

/// What a provider needs on this machine, and what is missing.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub kind: ProviderKind,
    pub gpu: Option<GpuInfo>,
    /// TensorRT version (major, minor, patch) when TensorRT loaded.
    pub tensorrt: Option<(u32, u32, u32)>,
    pub missing: Vec<String>,
}

impl Preflight {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
    }

    /// One error listing everything missing.
    pub fn into_result(self) -> Result<Preflight, RuntimeError> {
        if self.ok() {
            return Ok(self);
        }
        Err(RuntimeError::Provider(format!(
            "the {} provider cannot start on this machine:\n  - {}",
            self.kind,
            self.missing.join("\n  - ")
        )))
    }
}

pub use crate::elf::needed as elf_needed;

/// Libraries every Linux system has (the C and C++ runtimes) or ONNX Runtime ships
/// itself: not worth checking or explaining.
fn is_system_library(name: &str) -> bool {
    const SYSTEM: &[&str] = &[
        "libc.so",
        "libm.so",
        "libdl.so",
        "libpthread.so",
        "librt.so",
        "libstdc++.so",
        "libgcc_s.so",
        "ld-linux",
        "libonnxruntime_providers_shared.so",
        "libonnxruntime.so",
    ];
    SYSTEM.iter().any(|s| name.starts_with(s))
}

/// How to get a library a provider links, from its name and version (`libcudart.so.12`
/// is CUDA 12's runtime, `libnvinfer.so.8` TensorRT 8): the provider library's own
/// `DT_NEEDED` entries decide what is checked, so a JetPack 5 build (CUDA 11,
/// TensorRT 8) is checked for what it needs, not for the CUDA 13 of the x86 wheel.
pub fn how_to_get(lib: &str) -> String {
    let (stem, ver) = match lib.split_once(".so") {
        Some((stem, rest)) => (stem, rest.trim_start_matches('.').to_string()),
        None => (lib, String::new()),
    };
    let major = ver.split('.').next().unwrap_or("").to_string();
    let jetson = "on Jetson, JetPack installs it";
    match stem {
        "libcudart" => format!(
            "the CUDA {major} runtime (CUDA toolkit {major}, or `pip install nvidia-cuda-runtime-cu{major}`; {jetson}), on LD_LIBRARY_PATH"
        ),
        "libcublas" | "libcublasLt" => format!(
            "cuBLAS {major} (CUDA toolkit {major}, or `pip install nvidia-cublas-cu{major}`; {jetson}), on LD_LIBRARY_PATH"
        ),
        "libcurand" => format!("cuRAND ({lib}: CUDA toolkit; {jetson}), on LD_LIBRARY_PATH"),
        "libcufft" => format!("cuFFT ({lib}: CUDA toolkit; {jetson}), on LD_LIBRARY_PATH"),
        "libcudnn" => format!(
            "cuDNN {major} (NVIDIA's cuDNN {major} packages, or `pip install nvidia-cudnn-cu12`/`-cu13` for the matching CUDA; {jetson}), on LD_LIBRARY_PATH"
        ),
        "libnvinfer" | "libnvinfer_plugin" | "libnvonnxparser" => format!(
            "TensorRT {major}.x ({lib}; NVIDIA's TensorRT {major} packages; {jetson}), on LD_LIBRARY_PATH"
        ),
        "libcuda" => "the NVIDIA driver (no driver: is there an NVIDIA GPU?)".to_string(),
        _ => format!("{lib}, which the provider library links, on LD_LIBRARY_PATH"),
    }
}

/// The libraries to check for a provider whose library links `needed` (its `DT_NEEDED`
/// entries): those, less the system's, ONNX Runtime's own and the driver (checked
/// apart, see [`preflight`]), plus what the CUDA
/// provider loads at run time instead of linking. ONNX Runtime's CUDA provider opens
/// cuDNN with `dlopen` (the 1.31.1 build links cuBLAS, cuRAND and the CUDA runtime but
/// not cuDNN; its TensorRT provider does link `libcudnn.so.9`): cuDNN 9 for a CUDA 12
/// or newer build, cuDNN 8 for a CUDA 11 one, read from the CUDA runtime it links.
pub fn provider_requirements(kind: ProviderKind, needed: &[String]) -> Vec<String> {
    let mut out: Vec<String> = needed
        .iter()
        // The driver is checked on its own (with Jetson's Tegra folders).
        .filter(|n| !is_system_library(n) && !n.starts_with("libcuda.so"))
        .cloned()
        .collect();
    if kind == ProviderKind::Cuda && !out.iter().any(|n| n.starts_with("libcudnn.so")) {
        let cuda = out.iter().find_map(|n| {
            n.strip_prefix("libcudart.so.")
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.parse::<u32>().ok())
        });
        if let Some(cuda) = cuda {
            out.push(format!("libcudnn.so.{}", if cuda >= 12 { 9 } else { 8 }));
        }
    }
    out
}

/// Where the CUDA driver library may live: the loader's path, then Jetson's Tegra
/// folders (L4T keeps `libcuda.so.1` under `/usr/lib/aarch64-linux-gnu/tegra`).
const DRIVER_CANDIDATES: &[&str] = &[
    "libcuda.so.1",
    "/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1",
    "/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1",
];

/// Check everything `kind` needs, without starting it. `ort_lib` is the loaded
/// `libonnxruntime.so` (its provider libraries sit beside it). What the provider
/// links comes from its library's `DT_NEEDED` entries; each is loaded the way the
/// dynamic loader would find it, and a missing one is named with how to get it.
pub fn preflight(kind: ProviderKind, ort_lib: &Path, device_id: i32) -> Preflight {
    let mut p = Preflight {
        kind,
        gpu: None,
        tensorrt: None,
        missing: vec![],
    };
    let Some(lib) = kind.ort_library() else {
        return p;
    };
    let dir = ort_lib.parent().unwrap_or(Path::new("."));
    let provider = dir.join(lib);
    let needed = if provider.is_file() {
        match elf_needed(&provider) {
            Ok(n) => n,
            Err(e) => {
                p.missing.push(format!("{lib}: {e}"));
                vec![]
            }
        }
    } else {
        p.missing.push(format!(
            "{lib}: the ONNX Runtime at {} is a build without the {kind} provider. Use a GPU \
             build with the {kind} provider for this machine's CUDA (on x86-64 `make \
             deps-ort-gpu` fetches onnxruntime-gpu 1.31.1 for CUDA 13; on Jetson see the \
             README, \"Jetson\") and point --ort-lib or ORT_DYLIB_PATH at its libonnxruntime.so",
            ort_lib.display()
        ));
        vec![]
    };
    // The driver first: the GPU's name and capability come from it.
    let mut driver_err = None;
    for cand in DRIVER_CANDIDATES {
        // SAFETY: loading the driver runs its initialisers, as ONNX Runtime would.
        match unsafe { libloading::Library::new(*cand) } {
            Ok(l) => {
                match unsafe { gpu_info_from(&l, device_id) } {
                    Ok(info) => p.gpu = Some(info),
                    Err(e) => p.missing.push(format!("a usable GPU {device_id}: {e}")),
                }
                // The driver stays loaded for the process (as ONNX Runtime keeps it).
                std::mem::forget(l);
                driver_err = None;
                break;
            }
            Err(e) => {
                driver_err.get_or_insert_with(|| {
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
                });
            }
        }
    }
    if let Some(why) = driver_err {
        p.missing.push(format!(
            "libcuda.so.1 cannot be loaded ({why}; also looked in the Tegra folders): install {}",
            how_to_get("libcuda.so.1")
        ));
    }
    for name in &provider_requirements(kind, &needed) {
        // SAFETY: loading a system library runs its initialisers, as ONNX Runtime would.
        match unsafe { libloading::Library::new(name) } {
            Ok(l) => {
                if name.starts_with("libnvinfer.so") {
                    p.tensorrt = unsafe { tensorrt_version_from(&l) };
                }
            }
            Err(e) => {
                let why =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                p.missing.push(format!(
                    "{name} cannot be loaded ({why}), which {lib} needs: install {}",
                    how_to_get(name)
                ));
            }
        }
    }
    p
}

/// `getInferLibVersion()`: 10.3.0 is 100300 (TensorRT >= 10), 8.6.1 is 8601.
pub fn decode_tensorrt_version(v: i32) -> (u32, u32, u32) {
    let v = v.max(0) as u32;
    if v >= 100_000 {
        (v / 10_000, (v / 100) % 100, v % 100)
    } else {
        (v / 1000, (v / 100) % 10, v % 100)
    }
}

unsafe fn tensorrt_version_from(l: &libloading::Library) -> Option<(u32, u32, u32)> {
    // SAFETY: `int32_t getInferLibVersion()` is TensorRT's exported C function.
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn() -> i32> =
            l.get(b"getInferLibVersion").ok()?;
        Some(decode_tensorrt_version(f()))
    }
}

/// GPU name, compute capability and memory through the CUDA driver API.
unsafe fn gpu_info_from(l: &libloading::Library, device: i32) -> Result<GpuInfo, String> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Count = unsafe extern "C" fn(*mut i32) -> i32;
    type Get = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type Name = unsafe extern "C" fn(*mut u8, i32, i32) -> i32;
    type Attr = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    type Mem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    type Ver = unsafe extern "C" fn(*mut i32) -> i32;
    const MAJOR: i32 = 75; // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    const MINOR: i32 = 76;
    let sym = |n: &[u8]| format!("libcuda.so.1 lacks {}", String::from_utf8_lossy(n));
    // SAFETY: the CUDA driver API's documented C signatures; buffers sized as passed.
    unsafe {
        let init: libloading::Symbol<Init> = l.get(b"cuInit").map_err(|_| sym(b"cuInit"))?;
        let count: libloading::Symbol<Count> = l
            .get(b"cuDeviceGetCount")
            .map_err(|_| sym(b"cuDeviceGetCount"))?;
        let get: libloading::Symbol<Get> =
            l.get(b"cuDeviceGet").map_err(|_| sym(b"cuDeviceGet"))?;
        let name: libloading::Symbol<Name> = l
            .get(b"cuDeviceGetName")
            .map_err(|_| sym(b"cuDeviceGetName"))?;
        let attr: libloading::Symbol<Attr> = l
            .get(b"cuDeviceGetAttribute")
            .map_err(|_| sym(b"cuDeviceGetAttribute"))?;
        let mem: libloading::Symbol<Mem> = l
            .get(b"cuDeviceTotalMem_v2")
            .map_err(|_| sym(b"cuDeviceTotalMem_v2"))?;
        let ver: libloading::Symbol<Ver> = l
            .get(b"cuDriverGetVersion")
            .map_err(|_| sym(b"cuDriverGetVersion"))?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!(
                "cuInit failed with CUDA error {rc} (driver installed but no usable GPU?)"
            ));
        }
        let mut n = 0;
        count(&mut n);
        if device < 0 || device >= n {
            return Err(format!("--device {device}, but the driver sees {n} GPU(s)"));
        }
        let mut dev = 0;
        let rc = get(&mut dev, device);
        if rc != 0 {
            return Err(format!("cuDeviceGet({device}) failed with CUDA error {rc}"));
        }
        let mut buf = [0u8; 256];
        name(buf.as_mut_ptr(), buf.len() as i32, dev);
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let (mut ma, mut mi) = (0, 0);
        attr(&mut ma, MAJOR, dev);
        attr(&mut mi, MINOR, dev);
        let mut bytes = 0usize;
        mem(&mut bytes, dev);
        let mut v = 0;
        ver(&mut v);
        Ok(GpuInfo {
            name: String::from_utf8_lossy(&buf[..end]).trim().to_string(),
            compute_capability: (ma.max(0) as u32, mi.max(0) as u32),
            memory_bytes: bytes as u64,
            driver_cuda_version: v.max(0) as u32,
        })
    }
}
