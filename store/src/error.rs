//! The error type of `sen-store`: every message names the store, file, row or field
//! and says what would fix it.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Core(#[from] sen_core::CoreError),
    /// Bad input: a time, an id, a camera name, a flag (names it).
    #[error("{0}")]
    Input(String),
    /// Ids that do not exist (nothing was changed).
    #[error("unknown ids (nothing was deleted): {}", .0.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))]
    UnknownIds(Vec<u64>),
    /// A row id that does not exist.
    #[error("no row with id {0}")]
    NotFound(u64),
    /// A damaged, mismatched or unreadable store or index file (names the file).
    #[error("{0}")]
    Damaged(String),
    /// Another process holds the store's writer lock.
    #[error("{0}")]
    Locked(String),
    /// The store was made for another image encoder (or dimension).
    #[error("{0}")]
    Mismatch(String),
    /// An I/O failure (names the path); the store keeps everything acknowledged.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// SQLite failed (names the store).
    #[error("{context}: {error}")]
    Db {
        context: String,
        error: rusqlite::Error,
    },
    /// The store was closed (the writer thread stopped).
    #[error("{0}")]
    Closed(String),
}

impl StoreError {
    pub fn io(path: impl AsRef<std::path::Path>, error: std::io::Error) -> Self {
        StoreError::Io {
            path: path.as_ref().display().to_string(),
            error,
        }
    }

    pub fn db(context: impl std::fmt::Display, error: rusqlite::Error) -> Self {
        StoreError::Db {
            context: context.to_string(),
            error,
        }
    }

    /// Whether the cause is a full disk (or a file-size limit): nothing acknowledged
    /// is lost, free space and retry.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { error, .. } => matches!(error.raw_os_error(), Some(28) | Some(27)),
            StoreError::Db { error, .. } => matches!(
                error,
                rusqlite::Error::SqliteFailure(e, _)
                    if e.code == rusqlite::ErrorCode::DiskFull
            ),
            _ => false,
        }
    }
}
