//! TensorRT: engine precision, engine and timing caches keyed by everything that
//! changes an engine, profiles and ONNX Runtime's options per encoder.

use super::*;
use crate::error::RuntimeError;
use sen_core::Manifest;
use sen_core::manifest::{EncoderIo, Precision};
use std::path::{Path, PathBuf};

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
