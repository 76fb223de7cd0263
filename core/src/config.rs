//! `ModelConfig`: every size of the model comes from here (SPEC §1, §10).
//!
//! Saved as `config.json` next to every checkpoint and inside every bundle's
//! manifest. Unknown fields are refused (a typo must not silently become a default).

use crate::error::CoreError;
use crate::tokenizer::{EOT_ID, VOCAB_SIZE};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The image encoder (CLIP ViT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch_size: usize,
    pub image_height: usize,
    pub image_width: usize,
}

/// The text encoder (CLIP causal transformer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub context_length: usize,
    pub vocab_size: usize,
}

/// The text-guided image restoration decoder (training only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TirConfig {
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    pub mlp_width: usize,
    /// Fraction of image tokens (CLS counted) that are masked.
    pub mask_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub embed_dim: usize,
    pub tir: TirConfig,
}

impl VisionConfig {
    /// Patch grid (rows, columns).
    pub fn grid(&self) -> (usize, usize) {
        (
            self.image_height / self.patch_size,
            self.image_width / self.patch_size,
        )
    }
    pub fn num_patches(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }
    /// Patches plus the CLS token.
    pub fn num_tokens(&self) -> usize {
        self.num_patches() + 1
    }
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

impl TirConfig {
    /// Tokens kept visible (CLS counted), IRRA/MAE style: `int(tokens * (1 - mask_ratio))`.
    pub fn kept_tokens(&self, num_tokens: usize) -> usize {
        (num_tokens as f64 * (1.0 - self.mask_ratio)) as usize
    }
}

/// Names of the built-in presets, as accepted on the command line.
pub const PRESETS: &[&str] = &["vit-b16", "tiny"];

impl ModelConfig {
    /// CLIP ViT-B/16 at 384x128, exactly as SPEC §1.
    pub fn vit_b16() -> Self {
        ModelConfig {
            vision: VisionConfig {
                width: 768,
                layers: 12,
                heads: 12,
                patch_size: 16,
                image_height: 384,
                image_width: 128,
            },
            text: TextConfig {
                width: 512,
                layers: 12,
                heads: 8,
                context_length: 77,
                vocab_size: VOCAB_SIZE,
            },
            embed_dim: 512,
            tir: TirConfig {
                width: 512,
                heads: 8,
                layers: 4,
                mlp_width: 2048,
                mask_ratio: 0.7,
            },
        }
    }

    /// The same architecture and vocabulary, small enough to train on two CPU cores:
    /// 48x16 images in 4x4 patches (the same 12x4 = 48-patch grid and 3:1 aspect as
    /// vit-b16's 384x128 in 16x16), 4 layers of width 128 on both sides, a 2-block TIR
    /// decoder. Trained from scratch, fewer pixels per token learn much faster than
    /// 192x64 in 16x16 patches at the same cost (docs/decisions.md, "tiny preset").
    /// A 56-token text context: the synthetic benchmark's longest caption is 54
    /// tokens with SOT and EOT, and every text token costs the same as an image patch
    /// (vit-b16 keeps CLIP's 77; longer captions are cut, and training says how many).
    pub fn tiny() -> Self {
        ModelConfig {
            vision: VisionConfig {
                width: 128,
                layers: 4,
                heads: 4,
                patch_size: 4,
                image_height: 48,
                image_width: 16,
            },
            text: TextConfig {
                width: 128,
                layers: 4,
                heads: 4,
                context_length: 56,
                vocab_size: VOCAB_SIZE,
            },
            embed_dim: 128,
            tir: TirConfig {
                width: 128,
                heads: 4,
                layers: 2,
                mlp_width: 512,
                mask_ratio: 0.7,
            },
        }
    }

    /// A preset by its command-line name (`vit-b16`, `tiny`).
    pub fn preset(name: &str) -> Result<Self, CoreError> {
        match name {
            "vit-b16" | "vit_b16" | "ViT-B/16" => Ok(Self::vit_b16()),
            "tiny" => Ok(Self::tiny()),
            other => Err(CoreError::config(
                "preset",
                format!("unknown preset {other:?}; expected one of {PRESETS:?}"),
            )),
        }
    }

    /// Check every constraint the model code relies on; the error names the field.
    pub fn validate(&self) -> Result<(), CoreError> {
        let v = &self.vision;
        let t = &self.text;
        let r = &self.tir;
        let positive = [
            ("vision.width", v.width),
            ("vision.layers", v.layers),
            ("vision.heads", v.heads),
            ("vision.patch_size", v.patch_size),
            ("vision.image_height", v.image_height),
            ("vision.image_width", v.image_width),
            ("text.width", t.width),
            ("text.layers", t.layers),
            ("text.heads", t.heads),
            ("text.context_length", t.context_length),
            ("embed_dim", self.embed_dim),
            ("tir.width", r.width),
            ("tir.heads", r.heads),
            ("tir.layers", r.layers),
            ("tir.mlp_width", r.mlp_width),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(CoreError::config(field, "must be greater than 0"));
            }
        }
        for (field, width, heads) in [
            ("vision.width", v.width, v.heads),
            ("text.width", t.width, t.heads),
            ("tir.width", r.width, r.heads),
        ] {
            if width % heads != 0 {
                return Err(CoreError::config(
                    field,
                    format!("{width} is not divisible by the {heads} heads"),
                ));
            }
        }
        for (field, size) in [
            ("vision.image_height", v.image_height),
            ("vision.image_width", v.image_width),
        ] {
            if size % v.patch_size != 0 {
                return Err(CoreError::config(
                    field,
                    format!(
                        "{size} is not divisible by vision.patch_size {}",
                        v.patch_size
                    ),
                ));
            }
        }
        if t.context_length < 2 {
            return Err(CoreError::config(
                "text.context_length",
                "must be at least 2 (start and end tokens)",
            ));
        }
        if t.vocab_size <= EOT_ID as usize {
            return Err(CoreError::config(
                "text.vocab_size",
                format!(
                    "{} cannot hold the CLIP tokenizer's ids (up to {EOT_ID}); use {VOCAB_SIZE}",
                    t.vocab_size
                ),
            ));
        }
        if !(r.mask_ratio >= 0.0 && r.mask_ratio < 1.0) {
            return Err(CoreError::config(
                "tir.mask_ratio",
                format!("{} must be in [0, 1)", r.mask_ratio),
            ));
        }
        if r.kept_tokens(v.num_tokens()) < 1 {
            return Err(CoreError::config(
                "tir.mask_ratio",
                "keeps no token at this image size",
            ));
        }
        Ok(())
    }

    /// Parse and validate JSON; `origin` names the source in errors.
    pub fn from_json_str(s: &str, origin: &Path) -> Result<Self, CoreError> {
        let de = &mut serde_json::Deserializer::from_str(s);
        let cfg: ModelConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            CoreError::format(origin, format!("field `{path}`: {}", e.inner()))
        })?;
        cfg.validate()
            .map_err(|e| CoreError::format(origin, e.to_string()))?;
        Ok(cfg)
    }

    pub fn from_json_file(path: &Path) -> Result<Self, CoreError> {
        let s = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        Self::from_json_str(&s, path)
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("ModelConfig serialises")
    }

    /// Write `config.json` atomically.
    pub fn save(&self, path: &Path) -> Result<(), CoreError> {
        crate::fsutil::write_atomic(path, self.to_json_pretty().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b16_matches_spec() {
        let c = ModelConfig::vit_b16();
        c.validate().unwrap();
        assert_eq!(c.vision.grid(), (24, 8));
        assert_eq!(c.vision.num_tokens(), 193);
        assert_eq!(c.vision.head_dim(), 64);
        assert_eq!(c.text.width / c.text.heads, 64);
        // SPEC §4: keep int(193 * 0.3) = 57 tokens counting CLS.
        assert_eq!(c.tir.kept_tokens(193), 57);
    }

    #[test]
    fn tiny_is_valid_and_shares_vocabulary() {
        let c = ModelConfig::tiny();
        c.validate().unwrap();
        assert_eq!(c.text.vocab_size, 49408);
        assert_eq!(c.text.context_length, 56);
    }

    #[test]
    fn json_round_trip_uses_spec_field_names() {
        let c = ModelConfig::vit_b16();
        let v: serde_json::Value = serde_json::from_str(&c.to_json_pretty()).unwrap();
        assert_eq!(v["vision"]["image_height"], 384);
        assert_eq!(v["text"]["context_length"], 77);
        assert_eq!(v["tir"]["mask_ratio"], 0.7);
        assert_eq!(v["embed_dim"], 512);
        let back = ModelConfig::from_json_str(&c.to_json_pretty(), Path::new("x.json")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = ModelConfig::tiny();
        c.vision.image_width = 70;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("vision.image_width") && e.contains("patch_size"),
            "{e}"
        );

        let mut c = ModelConfig::tiny();
        c.text.heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("text.width"));

        let mut v: serde_json::Value =
            serde_json::from_str(&ModelConfig::tiny().to_json_pretty()).unwrap();
        v["vision"].as_object_mut().unwrap().remove("layers");
        let e = ModelConfig::from_json_str(&v.to_string(), Path::new("cfg.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.json") && e.contains("layers"), "{e}");

        v["vision"]["layers"] = 2.into();
        v["vision"]["depth"] = 2.into();
        let e = ModelConfig::from_json_str(&v.to_string(), Path::new("cfg.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("depth"), "{e}");

        v["vision"].as_object_mut().unwrap().remove("depth");
        v["text"]["vocab_size"] = 1000.into();
        let e = ModelConfig::from_json_str(&v.to_string(), Path::new("cfg.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("text.vocab_size"), "{e}");
    }
}
