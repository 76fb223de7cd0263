//! Where `make deps` put the native dependencies and data files.
//!
//! The cache is `$SEN_CACHE` if set, else `~/.cache/sen` (the same rule as
//! `scripts/deps.py`). Every lookup that fails says to run `make deps`.

use crate::error::CoreError;
use std::path::PathBuf;

/// The cache root.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("SEN_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"));
            home.join(".cache").join("sen")
        }
    }
}

/// `bpe_simple_vocab_16e6.txt.gz` (override with `SEN_CLIP_VOCAB`).
pub fn clip_vocab_path() -> Result<PathBuf, CoreError> {
    if let Some(p) = std::env::var_os("SEN_CLIP_VOCAB").filter(|p| !p.is_empty()) {
        return existing(PathBuf::from(p), "SEN_CLIP_VOCAB");
    }
    existing(
        cache_dir()
            .join("clip")
            .join("bpe_simple_vocab_16e6.txt.gz"),
        "the CLIP vocabulary",
    )
}

/// `libonnxruntime.so.1.31.1` (override with `ORT_DYLIB_PATH`, as ort itself does).
pub fn onnxruntime_path() -> Result<PathBuf, CoreError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(PathBuf::from(p), "ORT_DYLIB_PATH");
    }
    existing(
        cache_dir()
            .join("onnxruntime")
            .join("lib")
            .join("libonnxruntime.so.1.31.1"),
        "ONNX Runtime",
    )
}

fn existing(p: PathBuf, what: &str) -> Result<PathBuf, CoreError> {
    if p.is_file() {
        Ok(p)
    } else {
        Err(CoreError::Dependency(format!(
            "{what} not found at {} (cache {}): run `make deps` in the sen checkout (set SEN_CACHE if the cache lives elsewhere)",
            p.display(),
            cache_dir().display()
        )))
    }
}
