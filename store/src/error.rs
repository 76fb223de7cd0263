//! The error type of `sen-store`: every message names the store, file, row or field
//! and says what would fix it.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Core(#[from] sen_core::CoreError),
    /// Bad input: a time, an id, a camera name, a flag (names it).
    #[error("{0}")]
    Input(String),
    /// Ids that do not exist (nothing was changed); the message names at most the
    /// first 20.
    #[error("{}", unknown_ids(.0))]
    UnknownIds(Vec<u64>),
    /// A row id that does not exist.
    #[error("no row with id {0}")]
    NotFound(u64),
    /// A track with no live rows.
    #[error("no rows of track {track:?} on camera {camera:?}")]
    UnknownTrack { camera: String, track: String },
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
    /// The disk (or a file-size limit) is full: nothing of the failed write was
    /// stored; deletes still work (the store's reserve is released for them).
    #[error("{0}")]
    DiskFull(String),
}

/// How many unknown ids an error names before it only counts the rest.
const NAMED_IDS: usize = 20;

fn unknown_ids(ids: &[u64]) -> String {
    let named: Vec<String> = ids.iter().take(NAMED_IDS).map(u64::to_string).collect();
    let more = ids.len().saturating_sub(NAMED_IDS);
    if more == 0 {
        format!("unknown ids (nothing was deleted): {}", named.join(", "))
    } else {
        format!(
            "{} unknown ids (nothing was deleted): {} and {more} more",
            ids.len(),
            named.join(", ")
        )
    }
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
            StoreError::DiskFull(_) => true,
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

impl StoreError {
    /// The same failure again, for each of several waiting callers (errors hold
    /// non-cloneable causes): the kind is kept, so a full disk stays a full disk
    /// (507, not 503) and bad input stays bad input.
    pub fn duplicate(&self) -> StoreError {
        if self.is_disk_full() {
            return StoreError::DiskFull(self.to_string());
        }
        match self {
            StoreError::Core(e) => StoreError::Input(e.to_string()),
            StoreError::Input(m) => StoreError::Input(m.clone()),
            StoreError::UnknownIds(v) => StoreError::UnknownIds(v.clone()),
            StoreError::NotFound(id) => StoreError::NotFound(*id),
            StoreError::UnknownTrack { camera, track } => StoreError::UnknownTrack {
                camera: camera.clone(),
                track: track.clone(),
            },
            StoreError::Damaged(m) => StoreError::Damaged(m.clone()),
            StoreError::Locked(m) => StoreError::Locked(m.clone()),
            StoreError::Mismatch(m) => StoreError::Mismatch(m.clone()),
            StoreError::Io { path, error } => StoreError::Io {
                path: path.clone(),
                error: std::io::Error::new(error.kind(), error.to_string()),
            },
            StoreError::Db { context, error } => StoreError::Db {
                context: context.clone(),
                error: match error {
                    rusqlite::Error::SqliteFailure(f, m) => {
                        rusqlite::Error::SqliteFailure(*f, m.clone())
                    }
                    other => rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                        Some(other.to_string()),
                    ),
                },
            },
            StoreError::Closed(m) => StoreError::Closed(m.clone()),
            StoreError::DiskFull(m) => StoreError::DiskFull(m.clone()),
        }
    }
}
