//! `sen-runtime`: the crate an edge box embeds (no libtorch).
//!
//! Today: ONNX Runtime loading ([`onnxruntime`]) and the `sen` CLI's tokenizer and
//! preprocessing tools, which call `sen-core` (the only copy of both). Encoders,
//! the gallery index, search and evaluation arrive with the runtime issue (#6).

pub mod encoders;
pub mod error;
pub mod onnxruntime;

pub use error::RuntimeError;

use sen_core::{ClipTokenizer, CoreError, Manifest, ModelConfig, PreprocessSpec};
use std::path::Path;

/// The tokenizer of a bundle (its `tokenizer.json`), or the CLIP vocabulary from `make deps`.
pub fn load_tokenizer(bundle: Option<&Path>) -> Result<ClipTokenizer, CoreError> {
    match bundle {
        Some(dir) => {
            let m = Manifest::load(dir)?;
            ClipTokenizer::from_file(&dir.join(&m.tokenizer.file), m.tokenizer.context_length)
        }
        None => ClipTokenizer::from_vocab_gz(
            &sen_core::deps::clip_vocab_path()?,
            ModelConfig::vit_b16().text.context_length,
        ),
    }
}

/// The preprocessing of a bundle (from its verified manifest) or of a preset.
pub fn preprocess_spec(bundle: Option<&Path>, preset: &str) -> Result<PreprocessSpec, CoreError> {
    match bundle {
        Some(dir) => Ok(Manifest::load(dir)?.preprocess),
        None => Ok(PreprocessSpec::for_model(&ModelConfig::preset(preset)?)),
    }
}
