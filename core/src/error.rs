//! The error type of `sen-core`. Load-time problems (files, formats, configs,
//! dependencies) and run-time problems (bad inputs to a computation) are kept apart.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file was read but its content is wrong (names the file and what is wrong).
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A configuration value is out of range (names the field).
    #[error("invalid config: {field}: {message}")]
    Config { field: String, message: String },
    /// An image could not be decoded (names the file).
    #[error("{path}: cannot decode image: {message}")]
    Image { path: PathBuf, message: String },
    /// An image over the size limits (side or area), read from its header before
    /// decoding (names the file and the limit).
    #[error("{path}: {message}")]
    ImageTooLarge { path: PathBuf, message: String },
    /// A native dependency or data file from `make deps` is missing or damaged.
    #[error("{0}")]
    Dependency(String),
    /// Bad input to a computation (shapes, ids, empty sets).
    #[error("{0}")]
    Invalid(String),
}

impl CoreError {
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        CoreError::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        CoreError::Format {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
