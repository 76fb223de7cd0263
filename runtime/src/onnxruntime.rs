//! Loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! The library comes from `make deps` (or `ORT_DYLIB_PATH`); a missing or
//! incompatible library is one clear error that says what to do, not a dlopen panic.

use crate::error::RuntimeError;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The loaded library and its process-wide environment.
#[derive(Clone)]
pub struct OrtLibrary {
    pub path: PathBuf,
    /// Version reported by the library itself, e.g. `1.31.1`.
    pub version: String,
    pub env: ort::environment::Environment,
}

impl std::fmt::Debug for OrtLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtLibrary")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

static LOADED: OnceLock<Result<OrtLibrary, String>> = OnceLock::new();
static OVERRIDE: OnceLock<PathBuf> = OnceLock::new();

/// Use this `libonnxruntime.so` (the `--ort-lib` flag) instead of `ORT_DYLIB_PATH` or
/// the `make deps` cache. Must come before the first [`init`].
pub fn set_library_path(path: PathBuf) -> Result<(), RuntimeError> {
    if !path.is_file() {
        return Err(RuntimeError::Dependency(format!(
            "--ort-lib {}: no such file; give the path of libonnxruntime.so (a GPU build for --provider cuda/tensorrt)",
            path.display()
        )));
    }
    if LOADED.get().is_some() {
        return Err(RuntimeError::Dependency(
            "--ort-lib: ONNX Runtime is already loaded in this process".into(),
        ));
    }
    OVERRIDE
        .set(path)
        .map_err(|_| RuntimeError::Dependency("--ort-lib given twice".into()))
}

/// Load ONNX Runtime once per process and create its global environment.
pub fn init() -> Result<&'static OrtLibrary, RuntimeError> {
    LOADED
        .get_or_init(|| {
            let path = match OVERRIDE.get() {
                Some(p) => p.clone(),
                None => sen_core::deps::onnxruntime_path().map_err(|e| e.to_string())?,
            };
            let builder = ort::init_from(&path).map_err(|e| {
                format!(
                    "cannot load ONNX Runtime from {}: {e}; run `make deps` to restore it",
                    path.display()
                )
            })?;
            let env = builder.with_name("sen").build().map_err(|e| {
                format!(
                    "ONNX Runtime loaded from {} but its environment failed: {e}",
                    path.display()
                )
            })?;
            let version = version_from_path(&path).unwrap_or_else(|| "unknown".into());
            Ok(OrtLibrary { path, version, env })
        })
        .as_ref()
        .map_err(|m| RuntimeError::Dependency(m.clone()))
}

/// `libonnxruntime.so.1.31.1` -> `1.31.1`.
fn version_from_path(p: &std::path::Path) -> Option<String> {
    let name = std::fs::canonicalize(p)
        .ok()?
        .file_name()?
        .to_str()?
        .to_string();
    name.strip_prefix("libonnxruntime.so.").map(str::to_string)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loads_the_pinned_library() {
        let lib = super::init().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lib.version, "1.31.1");
        assert!(ort::info().starts_with("ORT Build Info"), "{}", ort::info());
    }
}
