//! The error type of `sen-runtime`.

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Core(#[from] sen_core::CoreError),
    /// The store, an index or a search kernel (names the file or setting).
    #[error(transparent)]
    Store(#[from] sen_store::StoreError),
    /// ONNX Runtime (or another native dependency) is missing or unusable.
    #[error("{0}")]
    Dependency(String),
    /// ONNX Runtime refused a model or a run (names the model file).
    #[error("{context}: {message}")]
    Onnx { context: String, message: String },
    /// Bad input to an encoder (names the tensor and what would fix it).
    #[error("{0}")]
    Input(String),
    /// An execution provider that cannot start here (names what is missing and how to install it).
    #[error("{0}")]
    Provider(String),
}

impl RuntimeError {
    pub fn onnx(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        RuntimeError::Onnx {
            context: context.to_string(),
            message: e.to_string(),
        }
    }
}
