//! What goes in and out of a store: rows, selectors, queries, results, statistics,
//! settings, and the one camera-name rule.

use super::*;

/// Rows kept in the database's `pending` log before they are written to a segment.
pub const FLUSH_ROWS: usize = 65_536;
/// Compaction writes segments of at most this many rows, and merges segments
/// smaller than a quarter of it.
pub const SEGMENT_ROWS: usize = 1 << 20;
pub const SEGMENTS_DIR: &str = "segments";
pub const LOCK_FILE: &str = "lock";
/// Longest camera name, in bytes of UTF-8 (SPEC §11).
pub const MAX_CAMERA_BYTES: usize = 128;
pub const DEFAULT_CAMERA: &str = "default";

/// What a store is bound to, given at creation.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub image_encoder_sha256: String,
    pub dim: usize,
    pub dtype: Storage,
    /// Keep each row's crop (the image bytes).
    pub crops: bool,
    pub bundle_precision: String,
}

/// A store's identity and settings (`meta` table).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreInfo {
    pub uuid: String,
    pub format_version: u32,
    pub image_encoder_sha256: String,
    pub dim: usize,
    pub storage: Storage,
    pub crops: bool,
    pub bundle_precision: String,
    pub created_ms: i64,
}

/// An image crop's bytes and content type (`image/jpeg`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A row to add (SPEC §11); its id is assigned by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    pub camera: String,
    pub time_ms: i64,
    pub path: String,
    pub pid: Option<i64>,
    pub attrs: Option<serde_json::Map<String, serde_json::Value>>,
    pub embedding: Vec<f32>,
    pub crop: Option<Crop>,
}

/// Which rows to delete.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// These ids, all or nothing (an unknown id fails the whole delete).
    Ids(Vec<u64>),
    Camera(String),
    /// Rows captured before this time (Unix ms).
    Before(i64),
}

/// One search: a query embedding (unit length), how many results, filters, and an id
/// to leave out ("more like this" of that row).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub vector: Vec<f32>,
    pub k: usize,
    /// Only these cameras (None: every camera).
    pub cameras: Option<Vec<String>>,
    pub time: TimeRange,
    pub exclude: Option<u64>,
}

/// One entry of the change sequence: rows `first_id..=last_id` added, or row
/// `first_id` deleted (SPEC §11).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub delete: bool,
    pub first_id: u64,
    pub last_id: u64,
    /// When the change was committed (Unix ms).
    pub at_ms: i64,
}

/// One result row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Found {
    pub id: u64,
    pub score: f32,
    pub camera: String,
    pub time_ms: i64,
    pub path: String,
    pub pid: Option<i64>,
    pub attrs: Option<serde_json::Value>,
}

/// A camera's summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CameraSummary {
    pub camera: String,
    pub rows: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub last_ingest_ms: Option<i64>,
}

/// `sen store stats`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stats {
    pub info: StoreInfo,
    pub rows: u64,
    /// Deleted rows whose embeddings are still in segments (until compaction).
    pub deleted_pending: u64,
    /// Rows not yet in a segment.
    pub unflushed: u64,
    pub segments: usize,
    pub cameras: Vec<CameraSummary>,
    pub bytes: BTreeMap<String, u64>,
    /// The last change sequence number.
    pub change_seq: i64,
}

/// Tuning and the file layer (tests shrink the sizes and use [`crate::io::testing::FaultFs`]).
#[derive(Debug, Clone)]
pub struct Options {
    pub fs: Arc<dyn Durable>,
    /// Pending rows that trigger a flush to a segment.
    pub flush_rows: usize,
    /// The most rows compaction puts in one segment.
    pub segment_rows: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fs: Arc::new(RealFs),
            flush_rows: FLUSH_ROWS,
            segment_rows: SEGMENT_ROWS,
        }
    }
}

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The single writer (takes the lock).
    Writer,
    /// A reader: searches and reads while a writer works.
    Reader,
}

/// What an add did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Added {
    pub first_id: u64,
    pub last_id: u64,
    /// The idempotency key was seen before (within a day): these are the ids of that
    /// first add, and nothing was added now.
    pub replayed: bool,
}

/// What [`Store::compact`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CompactReport {
    pub segments_before: usize,
    pub segments_after: usize,
    pub rows_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub seconds: f64,
}

/// The one camera-name rule (SPEC §11), for every entry point: a row's or a filter's
/// camera is 1 to [`MAX_CAMERA_BYTES`] bytes of UTF-8; none given is
/// [`DEFAULT_CAMERA`].
pub fn camera(c: Option<String>) -> Result<String, StoreError> {
    let c = c.unwrap_or_else(|| DEFAULT_CAMERA.into());
    check_camera(&c)?;
    Ok(c)
}

pub(crate) fn check_camera(c: &str) -> Result<(), StoreError> {
    if c.is_empty() || c.len() > MAX_CAMERA_BYTES {
        return Err(StoreError::Input(format!(
            "camera {c:?}: a camera name is 1 to {MAX_CAMERA_BYTES} bytes of UTF-8"
        )));
    }
    Ok(())
}
