//! The error type of `sen-runtime`.

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Core(#[from] sen_core::CoreError),
    /// ONNX Runtime (or another native dependency) is missing or unusable.
    #[error("{0}")]
    Dependency(String),
}
