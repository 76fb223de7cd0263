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
            let version = library_version(&path)?;
            check_version(&version, &path)?;
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
            Ok(OrtLibrary { path, version, env })
        })
        .as_ref()
        .map_err(|m| RuntimeError::Dependency(m.clone()))
}

/// The oldest ONNX Runtime sen accepts: 1.19, the oldest PyPI wheel that ships the C
/// library, which `make test` checks against the pinned 1.31.1 (tests/ort_versions.rs).
/// sen is built against C API level 17 (ort's `api-17` feature), so 1.17 and 1.18 would
/// load, but nothing here has run them; they are refused rather than trusted untested.
pub const MIN_MINOR: u32 = 19;
const _: () = assert!(
    ort::MINOR_VERSION <= MIN_MINOR,
    "the ort api-NN feature must not exceed MIN_MINOR"
);

/// The version the library reports (`OrtGetApiBase()->GetVersionString()`, present in
/// every ONNX Runtime), read before ort asks for its API level.
pub fn library_version(path: &std::path::Path) -> Result<String, String> {
    // SAFETY: loading ONNX Runtime runs its initialisers, as ort's own loading would;
    // `OrtGetApiBase` takes nothing and returns a static table whose
    // `GetVersionString` returns a static NUL-terminated string.
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| {
            format!(
                "cannot load ONNX Runtime from {}: {e}; run `make deps` to restore it, or point \
                 --ort-lib / ORT_DYLIB_PATH at a libonnxruntime.so",
                path.display()
            )
        })?;
        let base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").map_err(|_| {
                format!(
                    "{} is not ONNX Runtime's C library (no OrtGetApiBase); Python wheels before \
                     1.19 carry only their Python module",
                    path.display()
                )
            })?;
        let b = base();
        if b.is_null() {
            return Err(format!("{}: OrtGetApiBase returned null", path.display()));
        }
        let v = ((*b).GetVersionString)();
        let v = std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned();
        // ONNX Runtime stays loaded for the process (ort loads it again, refcounted).
        std::mem::forget(lib);
        Ok(v)
    }
}

/// Refuse a library older than [`MIN_MINOR`], naming the minimum.
pub fn check_version(version: &str, path: &std::path::Path) -> Result<(), String> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(1)), Some(Ok(minor))) if minor >= MIN_MINOR => Ok(()),
        (Some(Ok(major)), Some(Ok(_))) if major > 1 => Ok(()),
        _ => Err(format!(
            "ONNX Runtime {version} at {} is older than 1.{MIN_MINOR}, the oldest sen runs on \
             (the C API level it is built against); use ONNX Runtime 1.{MIN_MINOR} or newer",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_library_older_than_the_api_level_is_refused_by_name() {
        let p = std::path::Path::new("/opt/ort/libonnxruntime.so");
        let e = super::check_version("1.16.3", p).unwrap_err();
        assert!(
            e.contains("1.16.3") && e.contains(&format!("1.{}", super::MIN_MINOR)),
            "{e}"
        );
        assert!(super::check_version("garbage", p).is_err());
        assert!(super::check_version(&format!("1.{}.0", super::MIN_MINOR), p).is_ok());
        assert!(super::check_version("1.31.1", p).is_ok());
        assert!(super::check_version("2.0.0", p).is_ok());
    }

    #[test]
    fn loads_the_pinned_library() {
        let lib = super::init().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lib.version, "1.31.1");
        assert!(ort::info().starts_with("ORT Build Info"), "{}", ort::info());
    }
}
