//! The bundle manifest (SPEC §10): the one reader and writer of `manifest.json`.
//!
//! A bundle directory holds `image_encoder.onnx`, `text_encoder.onnx`,
//! `tokenizer.json` and `manifest.json`. [`Manifest::load`] only returns a
//! manifest whose every listed file is present with the recorded size and sha256.

use crate::config::ModelConfig;
use crate::error::CoreError;
use crate::preprocess::PreprocessSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the manifest layout this code writes: 2, whose text encoder takes a
/// dynamic `sequence` axis (SPEC §11); 1 (fixed context) still reads and runs.
pub const MANIFEST_FORMAT_VERSION: u32 = 2;
/// Every version this code reads.
pub const MANIFEST_FORMAT_VERSIONS: [u32; 2] = [1, 2];
pub const MANIFEST_FILE: &str = "manifest.json";
pub const IMAGE_ENCODER_FILE: &str = "image_encoder.onnx";
pub const TEXT_ENCODER_FILE: &str = "text_encoder.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        })
    }
}

/// A tensor dimension: fixed, or symbolic (`"batch"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Symbolic(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    /// ONNX element type name: `float32`, `float16`, `int64`.
    pub dtype: String,
    pub shape: Vec<Dim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderIo {
    pub file: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl EncoderIo {
    /// Whether the first input's second axis is the symbolic `sequence` (a format-2
    /// text encoder).
    pub fn has_dynamic_sequence(&self) -> bool {
        self.inputs
            .first()
            .and_then(|t| t.shape.get(1))
            .is_some_and(|d| matches!(d, Dim::Symbolic(s) if s == "sequence"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSpec {
    pub image: EncoderIo,
    pub text: EncoderIo,
}

/// How text becomes `input_ids` / `eot_index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    pub file: String,
    pub kind: String,
    pub context_length: usize,
    pub sot_id: u32,
    pub eot_id: u32,
    pub pad_id: u32,
    /// Text cleaning applied before BPE (`open_clip-lower`: ftfy, html unescape, whitespace, lower case).
    pub clean: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationInfo {
    pub method: String,
    pub samples: usize,
    pub data_sha256: String,
    /// Precision of the Q/DQ encoders' weights: 8 ([-127, 127]) or 7 ([-63, 63],
    /// ONNX Runtime's `reduce_range`, for x86-64 CPUs without VNNI whose u8 x s8
    /// kernels saturate 16-bit sums). Bundles written before it existed are 8. The
    /// TensorRT path (`implicit/`) quantises the fp32 weights itself, always 8-bit.
    #[serde(default = "eight")]
    pub weight_bits: u8,
    /// Why `weight_bits` was chosen (the flag, or the CPU calibrated on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_bits_why: Option<String>,
}

fn eight() -> u8 {
    8
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub precision: Precision,
    pub model: ModelConfig,
    pub preprocess: PreprocessSpec,
    pub tokenizer: TokenizerSpec,
    pub io: IoSpec,
    /// Every file of the bundle except `manifest.json`, by relative path.
    pub files: BTreeMap<String, FileEntry>,
    pub source_checkpoint_sha256: String,
    /// Tool name -> version that produced the bundle.
    pub tools: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationInfo>,
    /// The score calibration's two files (SPEC §12; `sen calibrate-scores`), when the
    /// bundle carries one: without it, results carry no `p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_calibration: Option<crate::scores::bundle::ScoreCalibrationRef>,
}

impl Manifest {
    /// Read `manifest.json` from `dir` without checking the files (for `sen info` on a damaged bundle).
    pub fn read_unverified(dir: &Path) -> Result<Self, CoreError> {
        let path = dir.join(MANIFEST_FILE);
        let s = std::fs::read_to_string(&path).map_err(|e| CoreError::io(&path, e))?;
        Self::parse(&s, &path)
    }

    /// Parse and check a manifest's text (`path` names it in errors): its format
    /// version, its encoders' axes, the model and preprocessing sections. The files
    /// it lists are not looked at.
    pub fn parse(s: &str, path: &Path) -> Result<Self, CoreError> {
        let path = path.to_path_buf();
        let de = &mut serde_json::Deserializer::from_str(s);
        let m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            CoreError::format(&path, format!("field `{}`: {}", e.path(), e.inner()))
        })?;
        if !MANIFEST_FORMAT_VERSIONS.contains(&m.format_version) {
            return Err(CoreError::format(
                &path,
                format!(
                    "format_version {} is not supported (this sen reads 1 and 2); re-export the bundle",
                    m.format_version
                ),
            ));
        }
        let dynamic = m.text_sequence_is_dynamic();
        if dynamic != (m.format_version >= 2) {
            return Err(CoreError::format(
                &path,
                format!(
                    "format_version {} but the text encoder's input_ids {} a dynamic `sequence` axis; \
                     the manifest was edited or damaged: re-export the bundle",
                    m.format_version,
                    if dynamic { "has" } else { "lacks" }
                ),
            ));
        }
        m.model
            .validate()
            .map_err(|e| CoreError::format(&path, e.to_string()))?;
        m.preprocess
            .validate()
            .map_err(|e| CoreError::format(&path, e.to_string()))?;
        if let Some(c) = &m.calibration
            && !matches!(c.weight_bits, 7 | 8)
        {
            return Err(CoreError::format(
                &path,
                format!(
                    "field `calibration.weight_bits`: {} (sen writes 7 or 8); the manifest was edited or damaged: calibrate again",
                    c.weight_bits
                ),
            ));
        }
        Ok(m)
    }

    /// Whether the text encoder takes a dynamic `sequence` axis (bundle format 2), so
    /// `input_ids` may be trimmed to the batch's last EOT + 1.
    pub fn text_sequence_is_dynamic(&self) -> bool {
        self.io.text.has_dynamic_sequence()
    }

    /// Read `manifest.json` and check every listed file's size and sha256.
    pub fn load(dir: &Path) -> Result<Self, CoreError> {
        let m = Self::read_unverified(dir)?;
        m.verify_files(dir)?;
        Ok(m)
    }

    /// Check that every file in `files` exists with the recorded size and sha256.
    pub fn verify_files(&self, dir: &Path) -> Result<(), CoreError> {
        let scores = self
            .score_calibration
            .iter()
            .flat_map(|r| [&r.file, &r.background]);
        for required in [
            &self.io.image.file,
            &self.io.text.file,
            &self.tokenizer.file,
        ]
        .into_iter()
        .chain(scores)
        {
            if !self.files.contains_key(required) {
                return Err(CoreError::format(
                    dir.join(MANIFEST_FILE),
                    format!(
                        "`files` does not list {required}, which `io`/`tokenizer`/`score_calibration` refer to"
                    ),
                ));
            }
        }
        for (name, entry) in &self.files {
            let path = dir.join(name);
            let (digest, bytes) = crate::hash::sha256_file(&path)?;
            if bytes != entry.bytes || digest != entry.sha256 {
                return Err(CoreError::format(
                    &path,
                    format!(
                        "does not match the bundle manifest ({bytes} bytes, sha256 {digest}; manifest says {} bytes, \
                         sha256 {}); the bundle was modified or damaged: export it again",
                        entry.bytes, entry.sha256
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Record `name` (relative to `dir`) in `files` with its current size and sha256.
    pub fn add_file(&mut self, dir: &Path, name: &str) -> Result<(), CoreError> {
        let (sha256, bytes) = crate::hash::sha256_file(&dir.join(name))?;
        self.files
            .insert(name.to_string(), FileEntry { sha256, bytes });
        Ok(())
    }

    /// The content hash of one encoder: its `.onnx` file's sha256, or, for a model
    /// with external data, the sha256 of `"<onnx sha256>\n<data sha256>\n"` (the
    /// `.onnx` alone would not change with the weights). Keys the gallery index
    /// and the TensorRT engine cache (SPEC §9, §10).
    pub fn encoder_digest(&self, io: &EncoderIo) -> Result<String, CoreError> {
        let entry = |name: &str| {
            self.files.get(name).ok_or_else(|| {
                CoreError::Invalid(format!("the bundle manifest does not list {name}"))
            })
        };
        let onnx = entry(&io.file)?;
        let data_name = format!("{}.data", io.file);
        Ok(match self.files.get(&data_name) {
            None => onnx.sha256.clone(),
            Some(data) => {
                crate::hash::sha256_hex(format!("{}\n{}\n", onnx.sha256, data.sha256).as_bytes())
            }
        })
    }

    /// A tiny-preset fp32 manifest whose three files (placeholder bytes) are written into
    /// `dir`: for tests of code that takes a manifest (index, runtime).
    #[doc(hidden)]
    pub fn example(dir: &Path) -> Manifest {
        let model = ModelConfig::tiny();
        let spec = |file: &str| EncoderIo {
            file: file.into(),
            inputs: vec![],
            outputs: vec![],
        };
        let tensor = |name: &str, dtype: &str, shape: Vec<Dim>| TensorSpec {
            name: name.into(),
            dtype: dtype.into(),
            shape,
        };
        let batch = || Dim::Symbolic("batch".into());
        let text = EncoderIo {
            inputs: vec![
                tensor(
                    "input_ids",
                    "int64",
                    vec![batch(), Dim::Symbolic("sequence".into())],
                ),
                tensor("eot_index", "int64", vec![batch()]),
            ],
            ..spec(TEXT_ENCODER_FILE)
        };
        let mut m = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            precision: Precision::Fp32,
            preprocess: PreprocessSpec::for_model(&model),
            tokenizer: TokenizerSpec {
                file: TOKENIZER_FILE.into(),
                kind: "clip-bpe".into(),
                context_length: 77,
                sot_id: 49406,
                eot_id: 49407,
                pad_id: 0,
                clean: "open_clip-lower".into(),
            },
            model,
            io: IoSpec {
                image: spec(IMAGE_ENCODER_FILE),
                text,
            },
            files: BTreeMap::new(),
            source_checkpoint_sha256: "0".repeat(64),
            tools: BTreeMap::from([(
                "sen-core".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
            calibration: None,
            score_calibration: None,
        };
        for f in [IMAGE_ENCODER_FILE, TEXT_ENCODER_FILE, TOKENIZER_FILE] {
            std::fs::write(dir.join(f), f.as_bytes()).unwrap();
            m.add_file(dir, f).unwrap();
        }
        m
    }

    /// Write `manifest.json` into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), CoreError> {
        let s = serde_json::to_string_pretty(self).expect("Manifest serialises");
        crate::fsutil::write_atomic(&dir.join(MANIFEST_FILE), s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Manifest {
        Manifest::example(dir)
    }

    #[test]
    fn round_trip_and_verification() {
        let d = tempfile::tempdir().unwrap();
        let m = sample(d.path());
        m.save(d.path()).unwrap();
        let back = Manifest::load(d.path()).unwrap();
        assert_eq!(back, m);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join(MANIFEST_FILE)).unwrap())
                .unwrap();
        assert_eq!(v["precision"], "fp32");
        assert!(v.get("calibration").is_none());
        assert_eq!(v["preprocess"]["resize"], "bicubic");

        // A modified file is refused, naming it.
        std::fs::write(d.path().join(TEXT_ENCODER_FILE), b"tampered").unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(TEXT_ENCODER_FILE) && e.contains("does not match"),
            "{e}"
        );
        // A missing file is refused, naming it.
        std::fs::remove_file(d.path().join(TEXT_ENCODER_FILE)).unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains(TEXT_ENCODER_FILE), "{e}");
    }

    #[test]
    fn version_1_reads_and_must_have_a_fixed_context() {
        let d = tempfile::tempdir().unwrap();
        let mut m = sample(d.path());
        assert!(m.text_sequence_is_dynamic());
        // Version 2 with a fixed context, or version 1 with a dynamic one, is a
        // damaged or hand-edited manifest.
        m.format_version = 1;
        m.save(d.path()).unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("format_version 1") && e.contains("has a dynamic"),
            "{e}"
        );
        m.io.text.inputs[0].shape[1] = Dim::Fixed(77);
        m.save(d.path()).unwrap();
        let back = Manifest::load(d.path()).unwrap();
        assert!(!back.text_sequence_is_dynamic());
        m.format_version = 2;
        m.save(d.path()).unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("lacks a dynamic"), "{e}");
    }

    #[test]
    fn unknown_version_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut m = sample(d.path());
        m.format_version = 99;
        m.save(d.path()).unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("format_version 99"), "{e}");
    }
}
