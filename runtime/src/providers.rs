//! Execution providers: TensorRT (FP16/INT8 engines), CUDA and CPU, through ONNX Runtime.
//!
//! Before ONNX Runtime is asked for a GPU provider, [`preflight`] checks for
//! everything that provider loads (the provider library of the ONNX Runtime build,
//! the NVIDIA driver, the CUDA 13 runtime, cuBLAS, cuDNN, TensorRT 10) and reports
//! every missing piece with how to install it, in milliseconds, instead of an
//! opaque failure from inside ONNX Runtime. The provider is then registered with
//! `error_on_failure`, and CPU fallback is disabled unless `--allow-fallback`.
//!
//! TensorRT engines are cached on disk under a directory keyed by the encoder's
//! content hash, the TensorRT version, the GPU model and compute capability, the
//! precision and the batch profile ([`engine_cache_dir`]): two checkpoints with
//! the same graph never share an engine (SPEC §9).

use crate::error::RuntimeError;
use sen_core::Manifest;
use sen_core::manifest::{EncoderIo, Precision};
use std::path::{Path, PathBuf};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    TensorRt,
    Cuda,
    Cpu,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::TensorRt,
        ProviderKind::Cuda,
        ProviderKind::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::TensorRt => "tensorrt",
            ProviderKind::Cuda => "cuda",
            ProviderKind::Cpu => "cpu",
        }
    }

    /// The ONNX Runtime provider library this provider needs beside `libonnxruntime.so`.
    pub fn ort_library(self) -> Option<&'static str> {
        match self {
            ProviderKind::TensorRt => Some("libonnxruntime_providers_tensorrt.so"),
            ProviderKind::Cuda => Some("libonnxruntime_providers_cuda.so"),
            ProviderKind::Cpu => None,
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tensorrt" | "trt" => Ok(ProviderKind::TensorRt),
            "cuda" => Ok(ProviderKind::Cuda),
            "cpu" => Ok(ProviderKind::Cpu),
            _ => Err(format!("unknown provider {s:?}: use tensorrt, cuda or cpu")),
        }
    }
}

/// Batch sizes of a TensorRT optimisation profile (also the batch size encoding uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchProfile {
    pub min: usize,
    pub opt: usize,
    pub max: usize,
}

impl BatchProfile {
    pub const IMAGE_DEFAULT: BatchProfile = BatchProfile {
        min: 1,
        opt: 16,
        max: 64,
    };
    pub const TEXT_DEFAULT: BatchProfile = BatchProfile {
        min: 1,
        opt: 8,
        max: 64,
    };

    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 || self.min > self.opt || self.opt > self.max {
            return Err(format!(
                "batch profile {}/{}/{} must satisfy 1 <= min <= opt <= max",
                self.min, self.opt, self.max
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for BatchProfile {
    type Err = String;
    /// `MIN,OPT,MAX`, e.g. `1,16,64`.
    fn from_str(s: &str) -> Result<Self, String> {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("batch profile {s:?}: expected MIN,OPT,MAX, e.g. 1,16,64"))?;
        let [min, opt, max] = v[..] else {
            return Err(format!(
                "batch profile {s:?}: expected three numbers MIN,OPT,MAX"
            ));
        };
        let p = BatchProfile { min, opt, max };
        p.validate()?;
        Ok(p)
    }
}

/// TensorRT's three profile strings (`min`, `opt`, `max`) for one encoder, in ONNX
/// Runtime's `name:d0xd1x...` format, every input listed, batch varied (and the
/// sequence axis of a format-2 text encoder, by `seq`).
pub fn profile_shapes(
    io: &EncoderIo,
    p: &BatchProfile,
    seq: Option<&BatchProfile>,
) -> Result<[String; 3], RuntimeError> {
    use sen_core::manifest::Dim;
    let mut out = [String::new(), String::new(), String::new()];
    let seqs = seq.map(|s| [s.min, s.opt, s.max]);
    for (k, (slot, batch)) in out.iter_mut().zip([p.min, p.opt, p.max]).enumerate() {
        let mut parts = vec![];
        for t in &io.inputs {
            let dims: Vec<String> = t
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Ok(n.to_string()),
                    Dim::Symbolic(s) if s == "batch" => Ok(batch.to_string()),
                    Dim::Symbolic(s) if s == "sequence" && seqs.is_some() => {
                        Ok(seqs.expect("checked")[k].to_string())
                    }
                    Dim::Symbolic(s) => Err(RuntimeError::Provider(format!(
                        "{}: input {} has a symbolic dimension {s:?} other than batch and \
                         sequence; TensorRT needs a profile for it, which sen does not build",
                        io.file, t.name
                    ))),
                })
                .collect::<Result<_, _>>()?;
            parts.push(format!("{}:{}", t.name, dims.join("x")));
        }
        *slot = parts.join(",");
    }
    Ok(out)
}

/// Precision of a TensorRT engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePrecision {
    /// An fp32 bundle built as is.
    Fp32,
    /// An fp16 bundle, or an fp32 bundle with TensorRT 10's FP16 builder flag.
    Fp16,
    /// A Q/DQ (int8) bundle: INT8 where the graph says, FP16 elsewhere.
    Int8,
    /// An int8 bundle's fp32 models under `implicit/` with their calibration caches:
    /// TensorRT's implicit INT8 (deprecated in 10, removed in 11).
    Int8Implicit,
}

impl EnginePrecision {
    pub fn name(self) -> &'static str {
        match self {
            EnginePrecision::Fp32 => "fp32",
            EnginePrecision::Fp16 => "fp16",
            EnginePrecision::Int8 => "int8",
            EnginePrecision::Int8Implicit => "int8implicit",
        }
    }

    /// The engine precision for a bundle: from its manifest (SPEC §10); `fp16_flag`
    /// (`--precision fp16`) is only meaningful for an fp32 bundle on TensorRT 10, and
    /// `int8_implicit` (`--int8-mode implicit`) only for an int8 bundle on TensorRT <= 10.
    pub fn for_bundle(
        precision: Precision,
        fp16_flag: bool,
        int8_implicit: bool,
        trt_major: Option<u32>,
    ) -> Result<Self, RuntimeError> {
        if int8_implicit && precision != Precision::Int8 {
            return Err(RuntimeError::Provider(format!(
                "--int8-mode implicit needs an int8 bundle (sen-calibrate); this bundle is {precision}"
            )));
        }
        match (precision, fp16_flag) {
            (Precision::Fp32, false) => Ok(EnginePrecision::Fp32),
            (Precision::Fp32, true) => match trt_major {
                Some(m) if m >= 11 => Err(RuntimeError::Provider(format!(
                    "--precision fp16: TensorRT {m} has no FP16 builder flag; export an fp16 bundle \
                     (`sen-export --fp16`) instead"
                ))),
                _ => Ok(EnginePrecision::Fp16),
            },
            (Precision::Fp16, _) => Ok(EnginePrecision::Fp16),
            (Precision::Int8, _) if int8_implicit => match trt_major {
                Some(m) if m >= 11 => Err(RuntimeError::Provider(format!(
                    "--int8-mode implicit: TensorRT {m} removed implicit INT8 calibration; use the \
                     bundle's Q/DQ models (the default, --int8-mode qdq)"
                ))),
                _ => Ok(EnginePrecision::Int8Implicit),
            },
            (Precision::Int8, _) => Ok(EnginePrecision::Int8),
        }
    }
}

/// TensorRT settings.
#[derive(Debug, Clone)]
pub struct TensorRtOptions {
    /// Root of the engine and timing caches (default `$SEN_CACHE/tensorrt`).
    pub cache_root: PathBuf,
    pub image_profile: BatchProfile,
    pub text_profile: BatchProfile,
    /// Build an fp32 bundle with the FP16 flag (TensorRT 10 only).
    pub fp16_flag: bool,
    /// Keep LayerNorm in fp32 inside fp16 engines (`trt_layer_norm_fp32_fallback`).
    pub layer_norm_fp32: bool,
    /// Builder workspace limit in MiB (None: TensorRT's default, the whole GPU).
    pub workspace_mib: Option<usize>,
    /// int8 bundles: build the fp32 models under `implicit/` with their calibration
    /// caches instead of the Q/DQ models (TensorRT <= 10 only).
    pub int8_implicit: bool,
    /// Sequence lengths of the text profile (format-2 bundles; `--text-seq`); None:
    /// 1, 20 (a typical query) and the context length.
    pub text_seq: Option<BatchProfile>,
}

impl TensorRtOptions {
    /// The text profile's sequence lengths for a context of `ctx` tokens.
    pub fn text_sequence(&self, ctx: usize) -> Result<BatchProfile, RuntimeError> {
        let p = self.text_seq.unwrap_or(BatchProfile {
            min: 1,
            opt: 20.min(ctx),
            max: ctx,
        });
        if p.max > ctx {
            return Err(RuntimeError::Input(format!(
                "--text-seq {},{},{}: the bundle's text context is {ctx} tokens; the maximum \
                 cannot exceed it",
                p.min, p.opt, p.max
            )));
        }
        if p.max < ctx {
            // Longer captions would not fit the engine; sen feeds at most `max`.
            return Err(RuntimeError::Input(format!(
                "--text-seq {},{},{}: the maximum must be the bundle's context length {ctx}, \
                 so every caption fits",
                p.min, p.opt, p.max
            )));
        }
        Ok(p)
    }
}

impl Default for TensorRtOptions {
    fn default() -> Self {
        TensorRtOptions {
            cache_root: sen_core::deps::cache_dir().join("tensorrt"),
            image_profile: BatchProfile::IMAGE_DEFAULT,
            text_profile: BatchProfile::TEXT_DEFAULT,
            fp16_flag: false,
            layer_norm_fp32: true,
            workspace_mib: None,
            int8_implicit: false,
            text_seq: None,
        }
    }
}

/// How to run a bundle.
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    pub kind: ProviderKind,
    pub device_id: i32,
    /// Let nodes the provider cannot take run on CUDA/CPU (logged); off by default.
    pub allow_fallback: bool,
    /// CPU intra-op threads (None: one per core).
    pub threads: Option<usize>,
    /// Sessions per encoder (concurrent callers; see `encoders`).
    pub sessions: usize,
    pub tensorrt: TensorRtOptions,
    /// Write ONNX Runtime's optimised graphs here (debugging).
    pub optimized_model_dir: Option<PathBuf>,
    /// Run through ONNX Runtime's I/O binding with reused host buffers (pinned memory
    /// on CUDA/TensorRT). Default: on for GPU providers, off on the CPU (where it
    /// only adds a copy).
    pub io_binding: bool,
    /// CPU provider: rows per image sub-batch (None: from the model's size,
    /// `encoders::cpu_chunk_rows`).
    pub cpu_chunk: Option<usize>,
    /// ONNX Runtime's intra-op threads spin between calls (lower latency for back-to-back
    /// calls, but a spinning thread takes a core from everything else in the process).
    pub spin: bool,
}

impl ProviderOptions {
    pub fn new(kind: ProviderKind) -> Self {
        ProviderOptions {
            kind,
            device_id: 0,
            allow_fallback: false,
            threads: None,
            sessions: 1,
            tensorrt: TensorRtOptions::default(),
            optimized_model_dir: None,
            io_binding: kind != ProviderKind::Cpu,
            cpu_chunk: None,
            spin: true,
        }
    }

    pub fn cpu() -> Self {
        Self::new(ProviderKind::Cpu)
    }
}

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

/// `NVIDIA GeForce RTX 4090` -> `nvidia-geforce-rtx-4090`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The engine-cache directory of one encoder: content hash x TensorRT version x GPU
/// x compute capability x precision x profile. Anything that changes the engine
/// changes the directory, so a stale engine is never loaded.
#[allow(clippy::too_many_arguments)]
pub fn engine_cache_dir(
    root: &Path,
    encoder_digest: &str,
    trt: (u32, u32, u32),
    gpu: &GpuInfo,
    precision: EnginePrecision,
    profile: &BatchProfile,
    seq: Option<&BatchProfile>,
    layer_norm_fp32: bool,
) -> PathBuf {
    let short = &encoder_digest[..encoder_digest.len().min(16)];
    let seq = seq
        .map(|s| format!("-s{}-{}-{}", s.min, s.opt, s.max))
        .unwrap_or_default();
    root.join("engines").join(format!(
        "{short}-trt{}.{}.{}-{}-sm{}{}-{}{}-b{}-{}-{}{seq}",
        trt.0,
        trt.1,
        trt.2,
        slug(&gpu.name),
        gpu.compute_capability.0,
        gpu.compute_capability.1,
        precision.name(),
        if layer_norm_fp32 && precision != EnginePrecision::Fp32 {
            "-lnfp32"
        } else {
            ""
        },
        profile.min,
        profile.opt,
        profile.max
    ))
}

/// Timing caches are valid per GPU model and TensorRT version, across models.
pub fn timing_cache_dir(root: &Path, trt: (u32, u32, u32), gpu: &GpuInfo) -> PathBuf {
    root.join("timing").join(format!(
        "trt{}.{}.{}-{}-sm{}{}",
        trt.0,
        trt.1,
        trt.2,
        slug(&gpu.name),
        gpu.compute_capability.0,
        gpu.compute_capability.1
    ))
}

/// ONNX Runtime's TensorRT options for one encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRtPlan {
    pub engine_dir: PathBuf,
    pub timing_dir: PathBuf,
    pub precision: EnginePrecision,
    pub profile: [String; 3],
    pub layer_norm_fp32: bool,
    pub workspace_bytes: Option<usize>,
    pub device_id: i32,
    /// The model TensorRT builds, relative to the bundle (`implicit/…` for implicit INT8).
    pub model_file: String,
    /// Implicit INT8: the calibration cache's file name, beside the model in the
    /// bundle; it is copied into `engine_dir`, where ONNX Runtime looks for it.
    pub calibration_table: Option<String>,
}

/// Folder of an int8 bundle holding the fp32 models and their TensorRT calibration
/// caches (SPEC §10), and the cache's name for a model file.
pub const IMPLICIT_DIR: &str = "implicit";

pub fn calibration_cache_name(model_file: &str) -> String {
    format!(
        "{}.calib",
        model_file.strip_suffix(".onnx").unwrap_or(model_file)
    )
}

/// The model file (relative to the bundle) a session loads for `io`: the Q/DQ model,
/// or with `--int8-mode implicit` on TensorRT the fp32 model under `implicit/`.
pub fn model_file(
    manifest: &Manifest,
    io: &EncoderIo,
    opts: &ProviderOptions,
) -> Result<String, RuntimeError> {
    if !opts.tensorrt.int8_implicit {
        return Ok(io.file.clone());
    }
    if opts.kind != ProviderKind::TensorRt {
        return Err(RuntimeError::Provider(format!(
            "--int8-mode implicit is a TensorRT build mode; --provider {} runs the bundle's Q/DQ models",
            opts.kind
        )));
    }
    if manifest.precision != Precision::Int8 {
        return Err(RuntimeError::Provider(format!(
            "--int8-mode implicit needs an int8 bundle (sen-calibrate); this bundle is {}",
            manifest.precision
        )));
    }
    Ok(implicit_files(manifest, io)?.0)
}

/// The implicit-INT8 model and calibration cache of `io`, relative to the bundle,
/// both checked to be listed in the manifest.
fn implicit_files(manifest: &Manifest, io: &EncoderIo) -> Result<(String, String), RuntimeError> {
    let file = format!("{IMPLICIT_DIR}/{}", io.file);
    let cache = format!("{IMPLICIT_DIR}/{}", calibration_cache_name(&io.file));
    for f in [&file, &cache] {
        if !manifest.files.contains_key(f) {
            return Err(RuntimeError::Provider(format!(
                "--int8-mode implicit: the bundle has no {f}; recalibrate it with sen-calibrate, \
                 which writes the implicit models and caches"
            )));
        }
    }
    Ok((file, cache))
}

impl TensorRtPlan {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        manifest: &Manifest,
        io: &EncoderIo,
        profile: &BatchProfile,
        opts: &TensorRtOptions,
        trt: (u32, u32, u32),
        gpu: &GpuInfo,
        device_id: i32,
    ) -> Result<Self, RuntimeError> {
        let precision = EnginePrecision::for_bundle(
            manifest.precision,
            opts.fp16_flag,
            opts.int8_implicit,
            Some(trt.0),
        )?;
        let (model_file, calibration_table, digest) = if precision == EnginePrecision::Int8Implicit
        {
            let (file, cache) = implicit_files(manifest, io)?;
            let model_io = EncoderIo {
                file: file.clone(),
                ..io.clone()
            };
            // The engine depends on the fp32 weights and on the ranges.
            let digest = sen_core::hash::sha256_hex(
                format!(
                    "{}\n{}\n",
                    manifest.encoder_digest(&model_io)?,
                    manifest.files[&cache].sha256
                )
                .as_bytes(),
            );
            (file, Some(calibration_cache_name(&io.file)), digest)
        } else {
            (io.file.clone(), None, manifest.encoder_digest(io)?)
        };
        // A format-2 text encoder's sequence axis gets its own profile.
        let seq = if io.has_dynamic_sequence() {
            Some(opts.text_sequence(manifest.tokenizer.context_length)?)
        } else {
            None
        };
        Ok(TensorRtPlan {
            engine_dir: engine_cache_dir(
                &opts.cache_root,
                &digest,
                trt,
                gpu,
                precision,
                profile,
                seq.as_ref(),
                opts.layer_norm_fp32,
            ),
            timing_dir: timing_cache_dir(&opts.cache_root, trt, gpu),
            precision,
            profile: profile_shapes(io, profile, seq.as_ref())?,
            layer_norm_fp32: opts.layer_norm_fp32 && precision != EnginePrecision::Fp32,
            workspace_bytes: opts.workspace_mib.map(|m| m << 20),
            device_id,
            model_file,
            calibration_table,
        })
    }

    /// Implicit INT8: copy the calibration cache from beside `model` into the engine
    /// directory (ONNX Runtime reads `trt_int8_calibration_table_name` relative to
    /// the engine cache path).
    pub fn install_calibration_table(&self, model: &Path) -> Result<(), RuntimeError> {
        if let Some(name) = &self.calibration_table {
            let from = model.with_file_name(name);
            let to = self.engine_dir.join(name);
            std::fs::copy(&from, &to).map_err(|e| {
                RuntimeError::Provider(format!(
                    "cannot copy the calibration cache {} to {}: {e}",
                    from.display(),
                    to.display()
                ))
            })?;
        }
        Ok(())
    }

    /// The provider, configured. On TensorRT 10 the FP16/INT8 builder flags select
    /// precision; an fp16/int8 bundle's graph already carries it.
    pub fn provider(&self) -> ort::ep::TensorRT {
        let mut p = ort::ep::TensorRT::default()
            .with_device_id(self.device_id)
            .with_engine_cache(true)
            .with_engine_cache_path(self.engine_dir.display())
            .with_timing_cache(true)
            .with_timing_cache_path(self.timing_dir.display())
            .with_fp16(self.precision != EnginePrecision::Fp32)
            .with_int8(matches!(
                self.precision,
                EnginePrecision::Int8 | EnginePrecision::Int8Implicit
            ))
            .with_layer_norm_fp32_fallback(self.layer_norm_fp32)
            .with_profile_min_shapes(&self.profile[0])
            .with_profile_opt_shapes(&self.profile[1])
            .with_profile_max_shapes(&self.profile[2]);
        if let Some(w) = self.workspace_bytes {
            p = p.with_max_workspace_size(w);
        }
        if let Some(t) = &self.calibration_table {
            p = p
                .with_int8_calibration_table_name(t)
                .with_int8_use_native_calibration_table(true);
        }
        p
    }

    /// True when an engine for this plan is already on disk.
    pub fn engine_cached(&self) -> bool {
        std::fs::read_dir(&self.engine_dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".engine"))
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> GpuInfo {
        GpuInfo {
            name: "NVIDIA Jetson AGX Orin".into(),
            compute_capability: (8, 7),
            memory_bytes: 32 << 30,
            driver_cuda_version: 13000,
        }
    }

    #[test]
    fn provider_names_parse() {
        for k in ProviderKind::ALL {
            assert_eq!(k.name().parse::<ProviderKind>().unwrap(), k);
        }
        assert_eq!(
            "TRT".parse::<ProviderKind>().unwrap(),
            ProviderKind::TensorRt
        );
        assert!(
            "rocm"
                .parse::<ProviderKind>()
                .unwrap_err()
                .contains("tensorrt, cuda or cpu")
        );
    }

    #[test]
    fn batch_profiles_parse_and_validate() {
        assert_eq!(
            "1,16,64".parse::<BatchProfile>().unwrap(),
            BatchProfile {
                min: 1,
                opt: 16,
                max: 64
            }
        );
        assert!("8,4,16".parse::<BatchProfile>().is_err());
        assert!("0,1,1".parse::<BatchProfile>().is_err());
        assert!("1,2".parse::<BatchProfile>().is_err());
        assert!("a,b,c".parse::<BatchProfile>().is_err());
        BatchProfile::IMAGE_DEFAULT.validate().unwrap();
        BatchProfile::TEXT_DEFAULT.validate().unwrap();
    }

    #[test]
    fn profile_shapes_vary_only_the_batch() {
        use sen_core::manifest::{Dim, TensorSpec};
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest::example(d.path());
        m.io.image.inputs = vec![TensorSpec {
            name: "pixel_values".into(),
            dtype: "float32".into(),
            shape: vec![
                Dim::Symbolic("batch".into()),
                Dim::Fixed(3),
                Dim::Fixed(192),
                Dim::Fixed(64),
            ],
        }];
        m.io.text.inputs = vec![
            TensorSpec {
                name: "input_ids".into(),
                dtype: "int64".into(),
                shape: vec![Dim::Symbolic("batch".into()), Dim::Fixed(77)],
            },
            TensorSpec {
                name: "eot_index".into(),
                dtype: "int64".into(),
                shape: vec![Dim::Symbolic("batch".into())],
            },
        ];
        let p = BatchProfile {
            min: 1,
            opt: 16,
            max: 64,
        };
        let s = profile_shapes(&m.io.image, &p, None).unwrap();
        assert_eq!(
            s,
            [
                "pixel_values:1x3x192x64".to_string(),
                "pixel_values:16x3x192x64".into(),
                "pixel_values:64x3x192x64".into()
            ]
        );
        let s = profile_shapes(&m.io.text, &p, None).unwrap();
        assert_eq!(s[1], "input_ids:16x77,eot_index:16");
        // A format-2 text encoder: the sequence axis follows its own profile.
        m.io.text.inputs[0].shape[1] = Dim::Symbolic("sequence".into());
        let seq = BatchProfile {
            min: 1,
            opt: 20,
            max: 77,
        };
        let s = profile_shapes(&m.io.text, &p, Some(&seq)).unwrap();
        assert_eq!(
            s,
            [
                "input_ids:1x1,eot_index:1".to_string(),
                "input_ids:16x20,eot_index:16".into(),
                "input_ids:64x77,eot_index:64".into()
            ]
        );
        assert!(profile_shapes(&m.io.text, &p, None).is_err());
        m.io.text.inputs[1].shape = vec![Dim::Symbolic("seq".into())];
        assert!(profile_shapes(&m.io.text, &p, Some(&seq)).is_err());
    }

    #[test]
    fn engine_cache_key_separates_everything_that_changes_an_engine() {
        let root = Path::new("/c");
        let p = BatchProfile::IMAGE_DEFAULT;
        let base = engine_cache_dir(
            root,
            &"a".repeat(64),
            (10, 3, 0),
            &gpu(),
            EnginePrecision::Fp16,
            &p,
            None,
            true,
        );
        assert_eq!(
            base,
            Path::new(
                "/c/engines/aaaaaaaaaaaaaaaa-trt10.3.0-nvidia-jetson-agx-orin-sm87-fp16-lnfp32-b1-16-64"
            )
        );
        let mut other_gpu = gpu();
        other_gpu.compute_capability = (8, 6);
        let variants = [
            engine_cache_dir(
                root,
                &"b".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 4, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &other_gpu,
                EnginePrecision::Fp16,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Int8,
                &p,
                None,
                true,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                None,
                false,
            ),
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &BatchProfile {
                    min: 1,
                    opt: 8,
                    max: 64,
                },
                None,
                true,
            ),
        ];
        for v in &variants {
            assert_ne!(v, &base);
        }
        // The text profile's sequence range is part of the key.
        let seq = |opt| {
            engine_cache_dir(
                root,
                &"a".repeat(64),
                (10, 3, 0),
                &gpu(),
                EnginePrecision::Fp16,
                &p,
                Some(&BatchProfile {
                    min: 1,
                    opt,
                    max: 77,
                }),
                true,
            )
        };
        assert!(seq(20).to_string_lossy().ends_with("-b1-16-64-s1-20-77"));
        assert_ne!(seq(20), seq(32));
        assert_ne!(seq(20), base);
        assert_eq!(
            timing_cache_dir(root, (10, 3, 0), &gpu()),
            Path::new("/c/timing/trt10.3.0-nvidia-jetson-agx-orin-sm87")
        );
    }

    #[test]
    fn two_checkpoints_with_one_graph_get_two_engine_dirs() {
        // Same graph, different weights: the .onnx hashes differ, so do the dirs;
        // with external data only the .data differs, and the digest still does.
        let d = tempfile::tempdir().unwrap();
        let mut a = Manifest::example(d.path());
        let mut b = a.clone();
        let f = a.io.image.file.clone();
        let data = format!("{f}.data");
        for (m, w) in [(&mut a, "1"), (&mut b, "2")] {
            m.files.insert(
                data.clone(),
                sen_core::manifest::FileEntry {
                    sha256: w.repeat(64),
                    bytes: 4,
                },
            );
        }
        let opts = TensorRtOptions {
            cache_root: PathBuf::from("/c"),
            ..Default::default()
        };
        let plan = |m: &Manifest| {
            TensorRtPlan::new(
                m,
                &m.io.image,
                &BatchProfile::IMAGE_DEFAULT,
                &opts,
                (10, 3, 0),
                &gpu(),
                0,
            )
            .unwrap()
        };
        assert_ne!(plan(&a).engine_dir, plan(&b).engine_dir);
        assert_eq!(plan(&a).engine_dir, plan(&a.clone()).engine_dir);
    }

    #[test]
    fn implicit_int8_builds_the_fp32_model_with_its_calibration_cache() {
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest::example(d.path());
        m.precision = Precision::Int8;
        let f = m.io.image.file.clone();
        let cache = format!("{IMPLICIT_DIR}/{}", calibration_cache_name(&f));
        assert_eq!(cache, "implicit/image_encoder.calib");
        let entry = |w: &str| sen_core::manifest::FileEntry {
            sha256: w.repeat(64),
            bytes: 4,
        };
        m.files.insert(format!("{IMPLICIT_DIR}/{f}"), entry("a"));
        m.files.insert(cache.clone(), entry("b"));
        let mut opts = ProviderOptions::new(ProviderKind::TensorRt);
        opts.tensorrt.cache_root = PathBuf::from("/c");
        let plan = |m: &Manifest, o: &ProviderOptions| {
            TensorRtPlan::new(
                m,
                &m.io.image,
                &BatchProfile::IMAGE_DEFAULT,
                &o.tensorrt,
                (10, 3, 0),
                &gpu(),
                0,
            )
        };
        let qdq = plan(&m, &opts).unwrap();
        assert_eq!(qdq.precision, EnginePrecision::Int8);
        assert_eq!(qdq.model_file, f);
        assert_eq!(qdq.calibration_table, None);
        assert_eq!(model_file(&m, &m.io.image, &opts).unwrap(), f);

        opts.tensorrt.int8_implicit = true;
        let imp = plan(&m, &opts).unwrap();
        assert_eq!(imp.precision, EnginePrecision::Int8Implicit);
        assert_eq!(imp.model_file, "implicit/image_encoder.onnx");
        assert_eq!(model_file(&m, &m.io.image, &opts).unwrap(), imp.model_file);
        assert_eq!(
            imp.calibration_table.as_deref(),
            Some("image_encoder.calib")
        );
        assert_ne!(imp.engine_dir, qdq.engine_dir);
        assert!(imp.engine_dir.to_string_lossy().contains("-int8implicit-"));
        // New ranges, same weights: another engine.
        let mut m2 = m.clone();
        m2.files.insert(cache.clone(), entry("c"));
        assert_ne!(plan(&m2, &opts).unwrap().engine_dir, imp.engine_dir);

        // The cache lands in the engine directory, where ONNX Runtime reads it.
        let bundle = tempfile::tempdir().unwrap();
        let model = bundle.path().join("implicit").join("image_encoder.onnx");
        std::fs::create_dir_all(model.parent().unwrap()).unwrap();
        std::fs::write(
            model.with_file_name("image_encoder.calib"),
            "TRT-100300-x\n",
        )
        .unwrap();
        let mut imp = imp;
        imp.engine_dir = bundle.path().join("engine");
        std::fs::create_dir_all(&imp.engine_dir).unwrap();
        imp.install_calibration_table(&model).unwrap();
        assert!(imp.engine_dir.join("image_encoder.calib").is_file());

        // Refused: implicit on another provider, without the implicit files, on a non-int8 bundle.
        let mut cpu = ProviderOptions::cpu();
        cpu.tensorrt.int8_implicit = true;
        assert!(model_file(&m, &m.io.image, &cpu).is_err());
        let mut bare = m.clone();
        bare.files.remove(&cache);
        let e = model_file(&bare, &bare.io.image, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no implicit/image_encoder.calib"), "{e}");
        m.precision = Precision::Fp32;
        assert!(model_file(&m, &m.io.image, &opts).is_err());
    }

    #[test]
    fn precision_comes_from_the_bundle() {
        use EnginePrecision as E;
        assert_eq!(
            E::for_bundle(Precision::Fp32, false, false, Some(10)).unwrap(),
            E::Fp32
        );
        assert_eq!(
            E::for_bundle(Precision::Fp32, true, false, Some(10)).unwrap(),
            E::Fp16
        );
        assert!(E::for_bundle(Precision::Fp32, true, false, Some(11)).is_err());
        assert_eq!(
            E::for_bundle(Precision::Fp16, false, false, Some(11)).unwrap(),
            E::Fp16
        );
        assert_eq!(
            E::for_bundle(Precision::Int8, false, false, Some(10)).unwrap(),
            E::Int8
        );
        assert_eq!(
            E::for_bundle(Precision::Int8, false, true, Some(10)).unwrap(),
            E::Int8Implicit
        );
        let e = E::for_bundle(Precision::Int8, false, true, Some(11)).unwrap_err();
        assert!(e.to_string().contains("removed implicit"), "{e}");
        let e = E::for_bundle(Precision::Fp32, false, true, Some(10)).unwrap_err();
        assert!(e.to_string().contains("needs an int8 bundle"), "{e}");
    }

    #[test]
    fn tensorrt_versions_decode() {
        assert_eq!(decode_tensorrt_version(100300), (10, 3, 0));
        assert_eq!(decode_tensorrt_version(101302), (10, 13, 2));
        assert_eq!(decode_tensorrt_version(8601), (8, 6, 1));
        assert_eq!(decode_tensorrt_version(110000), (11, 0, 0));
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("NVIDIA GeForce RTX 4090"), "nvidia-geforce-rtx-4090");
        assert_eq!(slug("  A100-SXM4 (80GB) "), "a100-sxm4-80gb");
    }

    /// A shared library at `dir/file` with soname `soname`, linking `links` (so they
    /// become its DT_NEEDED entries), built by the C compiler.
    fn stub_library(dir: &Path, file: &str, soname: &str, links: &[&str]) {
        let src = dir.join("stub.c");
        std::fs::write(&src, "int sen_stub(void) { return 1; }\n").unwrap();
        let out = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .arg("-shared")
            .arg("-fPIC")
            .arg("-o")
            .arg(dir.join(file))
            .arg(&src)
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-Wl,--no-as-needed")
            .args(links.iter().map(|l| dir.join(l)))
            .output()
            .expect("a C compiler (cc) builds the stub libraries; the README lists it");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn what_to_check_comes_from_the_provider_librarys_own_dependencies() {
        // A TensorRT provider library of the JetPack 6 / JetPack 5 kind: CUDA 12's
        // runtime, cuDNN 8, TensorRT 8 (none of which this machine has on its path).
        let d = tempfile::tempdir().unwrap();
        for so in ["libcudart.so.12", "libcudnn.so.8", "libnvinfer.so.8"] {
            stub_library(d.path(), so, so, &[]);
        }
        stub_library(
            d.path(),
            "libonnxruntime_providers_tensorrt.so",
            "libonnxruntime_providers_tensorrt.so",
            &["libcudart.so.12", "libcudnn.so.8", "libnvinfer.so.8"],
        );
        let needed = elf_needed(&d.path().join("libonnxruntime_providers_tensorrt.so")).unwrap();
        for so in ["libcudart.so.12", "libcudnn.so.8", "libnvinfer.so.8"] {
            assert!(needed.iter().any(|n| n == so), "{needed:?}");
        }
        let p = preflight(
            ProviderKind::TensorRt,
            &d.path().join("libonnxruntime.so.1.20.1"),
            0,
        );
        let all = p.missing.join("\n");
        assert!(
            all.contains("libcudart.so.12") && all.contains("CUDA 12"),
            "{all}"
        );
        assert!(
            all.contains("libnvinfer.so.8") && all.contains("TensorRT 8"),
            "{all}"
        );
        assert!(
            all.contains("libcudnn.so.8") && all.contains("cuDNN 8"),
            "{all}"
        );
        assert!(
            !all.contains(".so.13"),
            "nothing of CUDA 13 is asked for: {all}"
        );
        // Not an ELF file: a clear error naming it.
        std::fs::write(
            d.path().join("libonnxruntime_providers_cuda.so"),
            b"not elf",
        )
        .unwrap();
        let p = preflight(ProviderKind::Cuda, &d.path().join("libonnxruntime.so"), 0);
        assert!(
            p.missing
                .iter()
                .any(|m| m.contains("libonnxruntime_providers_cuda.so")
                    && m.contains("not a 64-bit ELF")),
            "{:?}",
            p.missing
        );
        assert!(how_to_get("libcublasLt.so.11").contains("cuBLAS 11"));
        // A CUDA 11 build of the CUDA provider (JetPack 5): cuDNN 8, from its runtime.
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            provider_requirements(
                ProviderKind::Cuda,
                &v(&["libcublas.so.11", "libcudart.so.11.0", "libc.so.6"])
            ),
            v(&["libcublas.so.11", "libcudart.so.11.0", "libcudnn.so.8"])
        );
        assert_eq!(
            provider_requirements(ProviderKind::Cuda, &v(&["libcudart.so.12"])),
            v(&["libcudart.so.12", "libcudnn.so.9"])
        );
    }

    #[test]
    fn the_cuda_13_provider_library_names_cuda_13() {
        // The onnxruntime-gpu 1.31.1 build `make deps-ort-gpu` fetches (skipped when
        // that optional set is not in the cache).
        let dir = sen_core::deps::cache_dir().join("onnxruntime-gpu/lib");
        let cuda = dir.join("libonnxruntime_providers_cuda.so");
        if !cuda.is_file() {
            println!(
                "SKIPPED: {} is absent (make deps-ort-gpu fetches it)",
                cuda.display()
            );
            return;
        }
        let needed = elf_needed(&cuda).unwrap();
        for so in ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13"] {
            assert!(needed.iter().any(|n| n == so), "{needed:?}");
        }
        // cuDNN is not linked but opened at run time: it is checked all the same.
        assert!(
            !needed.iter().any(|n| n.starts_with("libcudnn")),
            "{needed:?}"
        );
        let check = provider_requirements(ProviderKind::Cuda, &needed);
        assert!(check.iter().any(|n| n == "libcudnn.so.9"), "{check:?}");
        assert!(!check.iter().any(|n| n.starts_with("libc.so")), "{check:?}");
        // The preflight names every one of them the loader cannot find.
        let p = preflight(ProviderKind::Cuda, &dir.join("libonnxruntime.so.1.31.1"), 0);
        let all = p.missing.join("\n");
        for name in &check {
            // SAFETY: loading a library runs its initialisers, as the preflight does.
            let loads = unsafe { libloading::Library::new(name) }.is_ok();
            assert!(
                loads || all.contains(name.as_str()),
                "{name} not named: {all}"
            );
        }
        let trt = elf_needed(&dir.join("libonnxruntime_providers_tensorrt.so")).unwrap();
        assert!(
            trt.iter().any(|n| n.starts_with("libnvinfer.so.10")),
            "{trt:?}"
        );
    }

    #[test]
    fn gpu_providers_fail_fast_here_naming_what_is_missing() {
        // This machine has the CPU-only ONNX Runtime and no NVIDIA driver. (On a GPU box
        // with the GPU build these lists are empty and the test checks nothing more.)
        let lib = crate::onnxruntime::init().unwrap_or_else(|e| panic!("{e}"));
        for kind in [ProviderKind::Cuda, ProviderKind::TensorRt] {
            let t = std::time::Instant::now();
            let p = preflight(kind, &lib.path, 0);
            assert!(
                t.elapsed().as_secs() < 5,
                "preflight took {:?}",
                t.elapsed()
            );
            if p.ok() {
                continue;
            }
            let e = p.into_result().unwrap_err().to_string();
            assert!(
                e.contains(&format!("the {kind} provider cannot start")),
                "{e}"
            );
            let has_lib = !lib
                .path
                .parent()
                .unwrap()
                .join(kind.ort_library().unwrap())
                .exists();
            if has_lib {
                assert!(
                    e.contains(kind.ort_library().unwrap()) && e.contains("--ort-lib"),
                    "{e}"
                );
            }
        }
        assert!(preflight(ProviderKind::Cpu, &lib.path, 0).ok());
    }
}
