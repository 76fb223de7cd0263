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
/// Longest track id, in bytes of UTF-8 (SPEC §12).
pub const MAX_TRACK_BYTES: usize = 128;
/// The entry points a row's `source` names (SPEC §12); set by the entry point, never
/// read from input.
pub const SOURCES: &[&str] = &["http", "cli", "frigate", "deepstream", "python", "c"];
/// The sources whose crops are keyed by `(source, camera, track, frame time)`: the
/// same key adds nothing twice (SPEC §12).
pub const KEYED_SOURCES: &[&str] = &["frigate", "deepstream"];

/// What a store is bound to, given at creation.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub image_encoder_sha256: String,
    /// The bundle's `preprocess` block (with the sha256, the encoder identity).
    pub preprocess: PreprocessSpec,
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
    pub preprocess: RecordedPreprocess,
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
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewRow {
    pub camera: String,
    pub time_ms: i64,
    pub path: String,
    pub pid: Option<i64>,
    pub attrs: Option<serde_json::Map<String, serde_json::Value>>,
    pub embedding: Vec<f32>,
    pub crop: Option<Crop>,
    /// The source's tracked-object id (SPEC §12): a track is `(camera, track)`.
    pub track: Option<String>,
    /// `[x1, y1, x2, y2]` in the source frame's pixels.
    pub bbox: Option<[f64; 4]>,
    /// The entry point that adds the row (one of [`SOURCES`]).
    pub source: Option<String>,
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

/// One search: a query embedding (unit length), how many results, filters, ids to
/// leave out ("more like this" of a row or a track), and whether to group by track.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub vector: Vec<f32>,
    pub k: usize,
    /// Only these cameras (None: every camera).
    pub cameras: Option<Vec<String>>,
    pub time: TimeRange,
    pub exclude: Vec<u64>,
    /// One result per track (SPEC §12): `k` counts items.
    pub group: bool,
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
    pub track: Option<String>,
    pub bbox: Option<[f64; 4]>,
    pub source: Option<String>,
    /// In grouped results, the track this row is the best crop of.
    pub group: Option<Group>,
}

/// A track's share of a grouped result (SPEC §12): the crops that passed the filters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Group {
    /// Capture times of the earliest and latest crop (Unix ms).
    pub first_ms: i64,
    pub last_ms: i64,
    pub crops: u64,
}

/// A message a source received, for the durable inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxMessage {
    pub source: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub received_ms: i64,
}

pub use crate::db::InboxEntry;

/// How an inbox entry ends: its rows stored (each keyed crop at most once), or the
/// reason it was skipped counted; either way the entry leaves the inbox in the same
/// transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolve {
    pub inbox: u64,
    pub source: String,
    pub rows: Vec<NewRow>,
    pub skip: Option<Skip>,
    /// The source's item (a Frigate event) ended and is done with: recorded, and the
    /// source's cursor moved to its end.
    pub finished: Option<Finished>,
}

/// A source's item that is done with (SPEC §12: a backfill queues only the ones not).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub item: String,
    /// When it ended (Unix ms).
    pub end_ms: i64,
}

/// Why a source's message added nothing (`/v1/stats` counts them by reason).
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub reason: String,
    pub detail: String,
}

/// What a [`Resolve`] did.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Resolved {
    /// Ids of the rows added.
    pub ids: Vec<u64>,
    /// Rows whose key was already stored (redelivery, backfill).
    pub duplicates: usize,
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
    /// Limits on a new row's free-form fields.
    pub row_limits: RowLimits,
    /// Bytes kept in `DIR/reserve` by the writer and released when the disk is full,
    /// so that deletes (which SQLite needs room in its WAL for) still work (0: none).
    pub disk_reserve: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fs: Arc::new(RealFs),
            flush_rows: FLUSH_ROWS,
            segment_rows: SEGMENT_ROWS,
            row_limits: RowLimits::default(),
            disk_reserve: DISK_RESERVE,
        }
    }
}

/// The default disk reserve: 64 MiB, room for SQLite's WAL while deleting on a full
/// disk (a delete rewrites the pages it frees: `secure_delete`).
pub const DISK_RESERVE: u64 = 64 << 20;

/// Limits on a row's free-form fields (SPEC §11; `sen serve` flags), checked on every
/// add, whatever the entry point. `camera` (and later `track`) are fixed at
/// [`MAX_CAMERA_BYTES`], capture times at 2000-01-01 to 2100-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLimits {
    pub max_path_bytes: usize,
    /// `attrs` as compact JSON.
    pub max_attrs_bytes: usize,
    /// Nesting of `attrs` (the object itself is depth 1).
    pub max_attrs_depth: usize,
}

impl Default for RowLimits {
    fn default() -> Self {
        RowLimits {
            max_path_bytes: 4096,
            max_attrs_bytes: 16 << 10,
            max_attrs_depth: 16,
        }
    }
}

impl RowLimits {
    /// Check row `n` (1-based, for the message) against the limits.
    pub fn check(&self, n: usize, r: &NewRow) -> Result<(), StoreError> {
        let at = |m: String| StoreError::Input(format!("row {n}: {m}"));
        if let Some(t) = &r.track {
            check_track(t).map_err(|e| at(e.to_string()))?;
        }
        if let Some(b) = &r.bbox {
            check_bbox(b).map_err(|e| at(e.to_string()))?;
        }
        if let Some(s) = &r.source
            && !SOURCES.contains(&s.as_str())
        {
            return Err(at(format!(
                "source {s:?} is not one of {}",
                SOURCES.join(", ")
            )));
        }
        if r.path.len() > self.max_path_bytes {
            return Err(at(format!(
                "path is {} bytes, over the limit of {}",
                r.path.len(),
                self.max_path_bytes
            )));
        }
        if let Some(a) = &r.attrs {
            let depth = json_depth(&serde_json::Value::Object(a.clone()));
            if depth > self.max_attrs_depth {
                return Err(at(format!(
                    "attrs nest {depth} deep, over the limit of {}",
                    self.max_attrs_depth
                )));
            }
            let bytes = serde_json::Value::Object(a.clone()).to_string().len();
            if bytes > self.max_attrs_bytes {
                return Err(at(format!(
                    "attrs are {bytes} bytes of JSON, over the limit of {}",
                    self.max_attrs_bytes
                )));
            }
        }
        Ok(())
    }
}

/// How deep a JSON value nests (a scalar is 0, `{}` and `[]` are 1), without
/// recursion (a value parsed elsewhere may nest deeper than the stack allows).
pub fn json_depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            serde_json::Value::Object(m) => {
                max = max.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            serde_json::Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            _ => max = max.max(d),
        }
    }
    max
}

/// An add's idempotency key, bound to the request it was given with: a later add
/// with the same key and the same `request` digest replays the first add's ids; with
/// another digest it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key, qualified by whoever scopes it (the server: the route and the API key).
    pub key: String,
    /// A digest of the request (sha256 hex of what the add was asked to do).
    pub request: String,
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

/// The track-id rule (SPEC §12): 1 to [`MAX_TRACK_BYTES`] bytes of UTF-8.
pub fn check_track(t: &str) -> Result<(), StoreError> {
    if t.is_empty() || t.len() > MAX_TRACK_BYTES {
        return Err(StoreError::Input(format!(
            "track {t:?}: a track id is 1 to {MAX_TRACK_BYTES} bytes of UTF-8"
        )));
    }
    Ok(())
}

/// A box is four finite numbers `[x1, y1, x2, y2]` with `x1 <= x2` and `y1 <= y2`.
pub fn check_bbox(b: &[f64; 4]) -> Result<(), StoreError> {
    if b.iter().any(|v| !v.is_finite()) {
        return Err(StoreError::Input(format!(
            "bbox {b:?}: every value must be a finite number"
        )));
    }
    if b[0] > b[2] || b[1] > b[3] {
        return Err(StoreError::Input(format!(
            "bbox {b:?}: is [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2"
        )));
    }
    Ok(())
}
