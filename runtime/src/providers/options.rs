//! How a bundle runs: the provider, its threads and sessions, batch profiles and
//! TensorRT settings.

use crate::error::RuntimeError;
use sen_core::manifest::EncoderIo;
use std::path::PathBuf;

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
