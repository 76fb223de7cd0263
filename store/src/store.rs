//! The gallery store: a directory holding `store.db` (SQLite: identity, row
//! metadata and checksums, crops, the durable log of rows not yet in a segment,
//! tombstones, the change sequence) and `segments/*.seg` (immutable, checksummed,
//! memory-mapped embeddings with id/time/camera columns), bound to one image encoder.
//!
//! **Durability.** A row or a delete is acknowledged ([`Store::add`] and
//! [`Store::delete`] return) only after the SQLite transaction holding it committed
//! with `synchronous=FULL` (WAL fsynced). New rows' embeddings go into the database
//! first (`pending`); [`FLUSH_ROWS`] of them are later written to a segment, which
//! is fsynced, renamed and its directory fsynced before the transaction that refers
//! to it commits. Concurrent writers share one transaction and one sync (group
//! commit: one writer thread takes every job queued and commits them together).
//!
//! **Concurrency.** One writer process (an `flock` on `DIR/lock`, released by the
//! kernel if the holder dies; the error names the holder's pid), any number of
//! readers. Searches run on an immutable [`Snapshot`] (segments + pending rows +
//! dead-row bitmaps) swapped in after each commit, so a search sees one consistent
//! state while rows are added, deleted or compacted.

use crate::Storage;
use crate::db::{self, Insert, RowMeta};
use crate::error::StoreError;
use crate::io::{Durable, RealFs};
use crate::search::{self, BatchQuery, Gallery, Kernel, RowFilter, Rows};
use crate::segment::{self, Segment, SegmentColumns, SegmentHeader};
use crate::time::{self, TimeRange};
use half::f16;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};

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

// ------------------------------------------------------------------ snapshot

/// The deleted rows of a part (bit i: row i), if any.
type DeadBits = Option<Arc<Vec<u64>>>;

/// Embeddings of rows not yet in a segment, as their storage type.
#[derive(Debug)]
enum Emb {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// Rows committed together and not yet in a segment (immutable once published).
#[derive(Debug)]
struct Chunk {
    ids: Vec<u64>,
    times: Vec<i64>,
    /// Camera numbers into the snapshot's store-wide camera list.
    cameras: Vec<u32>,
    emb: Emb,
}

impl Chunk {
    fn rows(&self) -> Rows<'_> {
        match &self.emb {
            Emb::F32(v) => Rows::F32(v),
            Emb::F16(v) => Rows::F16(v),
        }
    }
}

#[derive(Debug, Clone)]
enum Src {
    Seg(Arc<Segment>),
    Mem(Arc<Chunk>),
}

/// A run of consecutive rows of the snapshot (a segment or a chunk), with its
/// deleted rows.
#[derive(Debug, Clone)]
struct Part {
    src: Src,
    /// Deleted rows of the part (bit i: row i), if any.
    dead: DeadBits,
}

impl Part {
    fn len(&self) -> usize {
        match &self.src {
            Src::Seg(s) => s.len(),
            Src::Mem(c) => c.ids.len(),
        }
    }
    fn ids(&self) -> &[u64] {
        match &self.src {
            Src::Seg(s) => s.ids(),
            Src::Mem(c) => &c.ids,
        }
    }
    fn times(&self) -> &[i64] {
        match &self.src {
            Src::Seg(s) => s.times(),
            Src::Mem(c) => &c.times,
        }
    }
    fn rows(&self) -> Rows<'_> {
        match &self.src {
            Src::Seg(s) => s.rows(),
            Src::Mem(c) => c.rows(),
        }
    }
    fn is_dead(&self, i: usize) -> bool {
        self.dead
            .as_ref()
            .is_some_and(|b| b[i / 64] >> (i % 64) & 1 == 1)
    }
    /// Row `i`'s embedding bytes in storage type.
    fn row_bytes(&self, i: usize, dim: usize) -> Vec<u8> {
        match &self.src {
            Src::Seg(s) => s.row_bytes(i).to_vec(),
            Src::Mem(c) => match &c.emb {
                Emb::F32(v) => v[i * dim..(i + 1) * dim]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
                Emb::F16(v) => v[i * dim..(i + 1) * dim]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            },
        }
    }
}

/// What a search sees: every part in id order, immutable.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    parts: Vec<Part>,
    /// Store-wide camera names (chunks' camera numbers index this).
    cameras: Arc<Vec<String>>,
}

impl Snapshot {
    /// Rows in parts, deleted ones included.
    pub fn rows_in_parts(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    /// Live rows (not deleted).
    pub fn live_rows(&self) -> usize {
        self.parts
            .iter()
            .map(|p| {
                p.len()
                    - p.dead
                        .as_ref()
                        .map_or(0, |b| b.iter().map(|w| w.count_ones() as usize).sum())
            })
            .sum()
    }

    /// (part, row) of `id`, if it is live.
    fn locate(&self, id: u64) -> Option<(usize, usize)> {
        let p = self
            .parts
            .partition_point(|p| p.ids().last().is_some_and(|&l| l < id));
        let part = self.parts.get(p)?;
        let i = part.ids().binary_search(&id).ok()?;
        (!part.is_dead(i)).then_some((p, i))
    }

    /// The allowed rows of a query over the whole snapshot (global row numbers), or
    /// `All` when nothing is filtered and nothing is deleted.
    fn filter(&self, q: &Query) -> RowFilter {
        let any_dead = self.parts.iter().any(|p| p.dead.is_some());
        if q.cameras.is_none() && q.time.is_all() && !any_dead && q.exclude.is_none() {
            return RowFilter::All;
        }
        let total = self.rows_in_parts();
        let mut words = vec![0u64; total.div_ceil(64)];
        let mut base = 0;
        for p in &self.parts {
            let n = p.len();
            // Which of this part's camera numbers are wanted (None: all cameras), as a
            // table indexed by number: a lookup per row, no hashing.
            let wanted: Option<Vec<bool>> = q.cameras.as_ref().map(|names| {
                let table: &[String] = match &p.src {
                    Src::Seg(s) => &s.header.cameras,
                    Src::Mem(_) => &self.cameras,
                };
                table.iter().map(|c| names.iter().any(|n| n == c)).collect()
            });
            if wanted.as_ref().is_some_and(|w| !w.contains(&true)) {
                base += n;
                continue;
            }
            if let Src::Seg(s) = &p.src
                && !q.time.overlaps(s.header.min_time_ms, s.header.max_time_ms)
            {
                base += n;
                continue;
            }
            let cams: &[u32] = match &p.src {
                Src::Seg(s) => s.cameras(),
                Src::Mem(c) => &c.cameras,
            };
            let times = p.times();
            // 64 rows to a word, branch-free, then the word shifted into place.
            let (from, to) = (
                q.time.from.unwrap_or(i64::MIN),
                q.time.to.map_or(i64::MAX, |t| t - 1),
            );
            for (w, (tc, cc)) in times.chunks(64).zip(cams.chunks(64)).enumerate() {
                let mut bits = 0u64;
                match &wanted {
                    None => {
                        for (j, &t) in tc.iter().enumerate() {
                            bits |= u64::from((from..=to).contains(&t)) << j;
                        }
                    }
                    Some(m) => {
                        for (j, (&t, &c)) in tc.iter().zip(cc).enumerate() {
                            let cam = m.get(c as usize).copied().unwrap_or(false);
                            bits |= u64::from(cam & (from..=to).contains(&t)) << j;
                        }
                    }
                }
                let r = base + w * 64;
                words[r / 64] |= bits << (r % 64);
                if r % 64 != 0 && bits >> (64 - r % 64) != 0 {
                    words[r / 64 + 1] |= bits >> (64 - r % 64);
                }
            }
            // Deleted rows off, word by word of the part's dead bitmap.
            if let Some(dead) = &p.dead {
                for (w, &bits) in dead.iter().enumerate() {
                    let mut bits = bits;
                    while bits != 0 {
                        let r = base + w * 64 + bits.trailing_zeros() as usize;
                        words[r / 64] &= !(1 << (r % 64));
                        bits &= bits - 1;
                    }
                }
            }
            base += n;
        }
        if let Some(x) = q.exclude
            && let Some((pi, i)) = self.locate(x)
        {
            let r: usize = self.parts[..pi].iter().map(Part::len).sum::<usize>() + i;
            words[r / 64] &= !(1 << (r % 64));
        }
        RowFilter::Bitmap(words)
    }

    fn gallery(&self, dim: usize) -> Gallery<'_> {
        Gallery::new(dim, self.parts.iter().map(Part::rows).collect())
    }

    /// (part, row) of global row `r`.
    fn part_of(&self, mut r: usize) -> (usize, usize) {
        for (pi, p) in self.parts.iter().enumerate() {
            if r < p.len() {
                return (pi, r);
            }
            r -= p.len();
        }
        panic!("row beyond the snapshot")
    }
}

// ------------------------------------------------------------------ the store

/// The store's identity entries in `meta`.
fn meta_entries(info: &StoreInfo) -> Vec<(&'static str, String)> {
    vec![
        ("uuid", info.uuid.clone()),
        ("format_version", info.format_version.to_string()),
        ("image_encoder_sha256", info.image_encoder_sha256.clone()),
        ("dim", info.dim.to_string()),
        (
            "storage",
            match info.storage {
                Storage::F32 => "f32".into(),
                Storage::F16 => "f16".into(),
            },
        ),
        ("crops", info.crops.to_string()),
        ("bundle_precision", info.bundle_precision.clone()),
        ("created_ms", info.created_ms.to_string()),
        ("next_id", "1".into()),
    ]
}

fn read_info(c: &Connection, dir: &Path) -> Result<(StoreInfo, u64), StoreError> {
    let path = dir.join(db::DB_FILE);
    let m: HashMap<String, String> = db::meta(c, &path)?.into_iter().collect();
    let get = |k: &str| {
        m.get(k).cloned().ok_or_else(|| {
            StoreError::Damaged(format!(
                "{}: the store's identity lacks `{k}`; the database is damaged",
                path.display()
            ))
        })
    };
    let num = |k: &str| -> Result<u64, StoreError> {
        get(k)?
            .parse()
            .map_err(|_| StoreError::Damaged(format!("{}: `{k}` is not a number", path.display())))
    };
    let format_version = num("format_version")? as u32;
    if format_version != db::STORE_FORMAT_VERSION {
        return Err(StoreError::Damaged(format!(
            "{}: store format version {format_version}, but this sen reads version {}",
            dir.display(),
            db::STORE_FORMAT_VERSION
        )));
    }
    let info = StoreInfo {
        uuid: get("uuid")?,
        format_version,
        image_encoder_sha256: get("image_encoder_sha256")?,
        dim: num("dim")? as usize,
        storage: match get("storage")?.as_str() {
            "f16" => Storage::F16,
            "f32" => Storage::F32,
            s => {
                return Err(StoreError::Damaged(format!(
                    "{}: storage {s:?} is neither f32 nor f16",
                    path.display()
                )));
            }
        },
        crops: get("crops")? == "true",
        bundle_precision: get("bundle_precision")?,
        created_ms: num("created_ms")? as i64,
    };
    Ok((info, num("next_id")?))
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

/// An open store. Cheap to share (`Arc` inside); every method takes `&self`.
pub struct Store {
    shared: Arc<Shared>,
    writer: Option<WriterHandle>,
}

struct Shared {
    dir: PathBuf,
    info: StoreInfo,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Read connections, reused.
    readers: Mutex<Vec<Connection>>,
    fs: Arc<dyn Durable>,
    opts: Options,
}

struct WriterHandle {
    tx: SyncSender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
    _lock: std::fs::File,
}

type Reply<T> = SyncSender<Result<T, StoreError>>;

enum Job {
    Add(Vec<NewRow>, Option<String>, Reply<Added>),
    Delete(Selector, Reply<usize>),
    Compact(Reply<CompactReport>),
    Flush(Reply<()>),
    Consumer(String, Option<i64>, Reply<i64>),
    Ping(Reply<()>),
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

fn lock(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    // SAFETY: flock on an open descriptor; released when the file is closed or the
    // process dies.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if r != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(StoreError::Locked(format!(
            "{}: another process (pid {}) has this store open for writing; one writer at a time \
             (stop it, or open the store read-only to search)",
            dir.display(),
            holder
                .trim()
                .parse::<u32>()
                .map_or("unknown".into(), |p| p.to_string())
        )));
    }
    f.set_len(0).map_err(|e| StoreError::io(&path, e))?;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| StoreError::io(&path, e))?;
    write!(f, "{}", std::process::id()).map_err(|e| StoreError::io(&path, e))?;
    Ok(f)
}

fn check_camera(c: &str) -> Result<(), StoreError> {
    if c.is_empty() || c.len() > MAX_CAMERA_BYTES {
        return Err(StoreError::Input(format!(
            "camera {c:?}: a camera name is 1 to {MAX_CAMERA_BYTES} bytes of UTF-8"
        )));
    }
    Ok(())
}

impl Store {
    /// Create a store in `dir` (missing or empty) bound to `config`, opened as writer.
    pub fn create(dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        Self::create_with(dir, config, Options::default())
    }

    pub fn create_with(
        dir: &Path,
        config: &StoreConfig,
        opts: Options,
    ) -> Result<Store, StoreError> {
        let fs = opts.fs.clone();
        if config.dim == 0 {
            return Err(StoreError::Input(
                "a store needs a dimension of at least 1".into(),
            ));
        }
        if dir.join(db::DB_FILE).exists() {
            return Err(StoreError::Input(format!(
                "{}: a store already exists here; open it, or choose an empty folder",
                dir.display()
            )));
        }
        if !crate::io::missing_or_empty(dir)? {
            return Err(StoreError::Input(format!(
                "{}: not empty; a new store needs a missing or empty folder",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir.join(SEGMENTS_DIR)).map_err(|e| StoreError::io(dir, e))?;
        let lock_file = lock(dir)?;
        let info = StoreInfo {
            uuid: uuid::Uuid::new_v4().to_string(),
            format_version: db::STORE_FORMAT_VERSION,
            image_encoder_sha256: config.image_encoder_sha256.clone(),
            dim: config.dim,
            storage: config.dtype,
            crops: config.crops,
            bundle_precision: config.bundle_precision.clone(),
            created_ms: time::now_ms(),
        };
        let c = db::open(dir, true)?;
        let path = dir.join(db::DB_FILE);
        c.execute_batch("BEGIN").map_err(db::err(&path))?;
        db::init(&c, &path, &meta_entries(&info))?;
        c.execute_batch("COMMIT").map_err(db::err(&path))?;
        // The folder entries (database, segments/) are durable before we say so.
        fs.sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        drop(c);
        drop(lock_file);
        Self::open_with(dir, Mode::Writer, opts)
    }

    /// Open an existing store.
    pub fn open(dir: &Path, mode: Mode) -> Result<Store, StoreError> {
        Self::open_with(dir, mode, Options::default())
    }

    pub fn open_with(dir: &Path, mode: Mode, opts: Options) -> Result<Store, StoreError> {
        let fs = opts.fs.clone();
        let path = dir.join(db::DB_FILE);
        if !path.is_file() {
            return Err(StoreError::Input(format!(
                "{}: no store here (no {}); create one with `sen store create`",
                dir.display(),
                db::DB_FILE
            )));
        }
        let lock_file = match mode {
            Mode::Writer => Some(lock(dir)?),
            Mode::Reader => None,
        };
        check_db_header(&path)?;
        let c = db::open(dir, mode == Mode::Writer)?;
        let (info, next_id) = read_info(&c, dir)?;
        if mode == Mode::Writer {
            remove_stray_segments(dir, &c, fs.as_ref())?;
        }
        // One read transaction: segments, pending rows and deletions of one commit.
        // A reader racing a compaction may find a segment file already removed; it
        // then reads the newer state.
        let mut attempt = 0;
        let state = loop {
            c.execute_batch("BEGIN DEFERRED").map_err(db::err(&path))?;
            let r = read_info(&c, dir).and_then(|(_, next)| State::load(dir, &c, &info, next));
            let _ = c.execute_batch("COMMIT");
            match r {
                Err(StoreError::Damaged(m))
                    if mode == Mode::Reader && attempt < 5 && m.contains("cannot open") =>
                {
                    attempt += 1;
                }
                other => break other?,
            }
        };
        let _ = next_id;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            info,
            snapshot: RwLock::new(Arc::new(state.snapshot())),
            readers: Mutex::new(vec![]),
            fs,
            opts,
        });
        let writer = match (mode, lock_file) {
            (Mode::Writer, Some(lock_file)) => {
                let (tx, rx) = sync_channel::<Job>(1024);
                let sh = shared.clone();
                let thread = std::thread::Builder::new()
                    .name("sen-store-writer".into())
                    .spawn(move || writer_loop(sh, c, state, rx))
                    .map_err(|e| StoreError::io(dir, e))?;
                Some(WriterHandle {
                    tx,
                    thread: Some(thread),
                    _lock: lock_file,
                })
            }
            _ => None,
        };
        Ok(Store { shared, writer })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn info(&self) -> &StoreInfo {
        &self.shared.info
    }

    /// Refuse an image encoder other than the store's.
    pub fn check_encoder(&self, sha256: &str, dim: usize, bundle: &str) -> Result<(), StoreError> {
        let i = &self.shared.info;
        if dim != i.dim {
            return Err(StoreError::Mismatch(format!(
                "{}: holds {}-dim embeddings but the bundle {bundle} embeds into {dim} dims; \
                 use the bundle the store was created with, or a new store",
                self.shared.dir.display(),
                i.dim
            )));
        }
        if sha256 != i.image_encoder_sha256 {
            return Err(StoreError::Mismatch(format!(
                "{}: made for image encoder {} but the bundle {bundle} has image encoder {sha256}; \
                 embeddings of different encoders are not comparable: use the store's bundle, \
                 or create a new store for this one",
                self.shared.dir.display(),
                i.image_encoder_sha256
            )));
        }
        Ok(())
    }

    /// The current snapshot (what a search sees).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn job<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let w = self.writer.as_ref().ok_or_else(|| {
            StoreError::Input(format!(
                "{}: opened read-only; open it as the writer to change it",
                self.shared.dir.display()
            ))
        })?;
        let (tx, rx) = sync_channel(1);
        w.tx.send(make(tx))
            .map_err(|_| StoreError::Closed("the store's writer thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| StoreError::Closed("the store's writer thread has stopped".into()))?
    }

    /// Add rows atomically (all or none); returns the first and last id assigned
    /// (contiguous). Returns once the rows are durable.
    pub fn add(&self, rows: Vec<NewRow>) -> Result<(u64, u64), StoreError> {
        let a = self.add_idempotent(rows, None)?;
        Ok((a.first_id, a.last_id))
    }

    /// [`Store::add`] with an idempotency key: the key is recorded in the same
    /// transaction as the rows (`idempotency` table, kept a day), and a later add with
    /// the same key adds nothing and returns the first add's ids.
    pub fn add_idempotent(
        &self,
        rows: Vec<NewRow>,
        key: Option<String>,
    ) -> Result<Added, StoreError> {
        if rows.is_empty() {
            return Err(StoreError::Input("nothing to add".into()));
        }
        let i = &self.shared.info;
        for (n, r) in rows.iter().enumerate() {
            check_camera(&r.camera)
                .map_err(|e| StoreError::Input(format!("row {}: {e}", n + 1)))?;
            if r.embedding.len() != i.dim {
                return Err(StoreError::Input(format!(
                    "row {} ({}): embedding has {} values, the store holds {}",
                    n + 1,
                    r.path,
                    r.embedding.len(),
                    i.dim
                )));
            }
            if r.embedding.iter().any(|v| !v.is_finite()) {
                return Err(StoreError::Input(format!(
                    "row {} ({}): the embedding has a value that is not finite",
                    n + 1,
                    r.path
                )));
            }
            time::from_unix_ms(&format!("row {} time", n + 1), r.time_ms)?;
            if i.crops && r.crop.is_none() {
                return Err(StoreError::Input(format!(
                    "row {} ({}): this store keeps crops and the row has none",
                    n + 1,
                    r.path
                )));
            }
        }
        self.job(|tx| Job::Add(rows, key, tx))
    }

    /// Delete rows; returns how many. Once it returns, they never appear in results.
    pub fn delete(&self, sel: Selector) -> Result<usize, StoreError> {
        if let Selector::Camera(c) = &sel {
            check_camera(c)?;
        }
        self.job(|tx| Job::Delete(sel, tx))
    }

    /// Merge small segments and rewrite away deleted rows (their embeddings leave the
    /// segment files; crops and metadata were removed at delete time and the
    /// database's freed pages zeroed: `secure_delete`), then truncate the WAL.
    pub fn compact(&self) -> Result<CompactReport, StoreError> {
        self.job(Job::Compact)
    }

    /// Write every pending row to a segment now.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.job(Job::Flush)
    }

    /// Whether the writer answers and the database takes a write lock (readiness).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.job(Job::Ping)
    }

    /// Register (or move) a consumer's cursor; returns its sequence number. `None`
    /// reads it (registering at 0 when new).
    pub fn consumer(&self, name: &str, seq: Option<i64>) -> Result<i64, StoreError> {
        self.job(|tx| Job::Consumer(name.to_string(), seq, tx))
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let c = {
            let mut pool = self
                .shared
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pool.pop()
        };
        let c = match c {
            Some(c) => c,
            None => db::open(&self.shared.dir, false)?,
        };
        let r = f(&c);
        self.shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
        r
    }

    /// Search: exact top-k per query (SPEC §7 ties: higher score, then lower id), with
    /// filters, through the batched kernel. Every returned row is checked against its
    /// row checksum (a damaged row is an error naming it, never a result).
    pub fn search(&self, queries: &[Query], threads: usize) -> Result<Vec<Vec<Found>>, StoreError> {
        let kernel = Kernel::active().map_err(|e| StoreError::Input(e.to_string()))?;
        let dim = self.shared.info.dim;
        for (n, q) in queries.iter().enumerate() {
            if q.vector.len() != dim {
                return Err(StoreError::Input(format!(
                    "query {}: {} values, the store holds {dim}-dim rows",
                    n + 1,
                    q.vector.len()
                )));
            }
            if q.vector.iter().any(|v| !v.is_finite()) {
                return Err(StoreError::Input(format!(
                    "query {}: a value is not finite",
                    n + 1
                )));
            }
            if let Some(cams) = &q.cameras {
                for c in cams {
                    check_camera(c)?;
                }
            }
        }
        // A row deleted between the snapshot and reading its metadata: search again
        // on a newer snapshot (bounded).
        for _ in 0..8 {
            let snap = self.snapshot();
            let filters: Vec<RowFilter> = queries.iter().map(|q| snap.filter(q)).collect();
            let batch: Vec<BatchQuery> = queries
                .iter()
                .zip(&filters)
                .map(|(q, f)| BatchQuery {
                    vector: &q.vector,
                    k: q.k,
                    filter: f,
                })
                .collect();
            let gallery = snap.gallery(dim);
            let threads = search::threads_for(snap.rows_in_parts(), threads);
            let hits = search::search_gallery(kernel, &batch, &gallery, threads);
            match self.resolve(&snap, &hits)? {
                Some(found) => return Ok(found),
                None => continue,
            }
        }
        Err(StoreError::Closed(
            "the store changed under eight searches in a row; try again".into(),
        ))
    }

    /// Metadata of the hits, each checked against its checksum; None if a row was
    /// deleted meanwhile.
    fn resolve(
        &self,
        snap: &Snapshot,
        hits: &[Vec<search::Hit>],
    ) -> Result<Option<Vec<Vec<Found>>>, StoreError> {
        self.with_reader(|c| {
            let path = self.shared.dir.join(db::DB_FILE);
            let mut out = Vec::with_capacity(hits.len());
            for hs in hits {
                let mut v = Vec::with_capacity(hs.len());
                for h in hs {
                    let (pi, i) = snap.part_of(h.row);
                    let part = &snap.parts[pi];
                    let Some((m, _)) = self.checked_row(c, &path, part, i)? else {
                        return Ok(None);
                    };
                    v.push(found(m, h.score)?);
                }
                out.push(v);
            }
            Ok(Some(out))
        })
    }

    /// A stored row's embedding (as f32), for "more like this".
    pub fn embedding(&self, id: u64) -> Result<Vec<f32>, StoreError> {
        let snap = self.snapshot();
        let (pi, i) = snap.locate(id).ok_or(StoreError::NotFound(id))?;
        Ok(self.decode(&snap.parts[pi].row_bytes(i, self.shared.info.dim)))
    }

    /// Stored embedding bytes as f32.
    fn decode(&self, bytes: &[u8]) -> Vec<f32> {
        match self.shared.info.storage {
            Storage::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                .collect(),
            Storage::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes(b.try_into().expect("2")).to_f32())
                .collect(),
        }
    }

    /// Row `i` of `part`: its metadata and embedding bytes, checked against the row
    /// checksum (metadata, embedding, crop); None when the row is no longer in the
    /// database (deleted after the snapshot was taken).
    fn checked_row(
        &self,
        c: &Connection,
        path: &Path,
        part: &Part,
        i: usize,
    ) -> Result<Option<(RowMeta, Vec<u8>)>, StoreError> {
        let id = part.ids()[i];
        let Some(m) = db::row(c, path, id)? else {
            return Ok(None);
        };
        let crop = if self.shared.info.crops {
            db::crop(c, path, id)?
        } else {
            None
        };
        let emb = part.row_bytes(i, self.shared.info.dim);
        let crc = db::row_crc(
            &m,
            &emb,
            crop.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
        );
        if crc != m.crc {
            return Err(damaged_row(&self.shared.dir, id, part));
        }
        Ok(Some((m, emb)))
    }

    /// A row's metadata (checked against its checksum).
    pub fn row(&self, id: u64) -> Result<Found, StoreError> {
        let snap = self.snapshot();
        let (pi, i) = snap.locate(id).ok_or(StoreError::NotFound(id))?;
        self.with_reader(|c| {
            let path = self.shared.dir.join(db::DB_FILE);
            let (m, _) = self
                .checked_row(c, &path, &snap.parts[pi], i)?
                .ok_or(StoreError::NotFound(id))?;
            found(m, 1.0)
        })
    }

    /// A row's crop (checked with the row), or None for a store without crops.
    pub fn crop(&self, id: u64) -> Result<Option<Crop>, StoreError> {
        self.row(id)?;
        if !self.shared.info.crops {
            return Ok(None);
        }
        self.with_reader(|c| {
            let path = self.shared.dir.join(db::DB_FILE);
            Ok(db::crop(c, &path, id)?.map(|(content_type, bytes)| Crop {
                content_type,
                bytes,
            }))
        })
    }

    /// Counts, cameras and sizes.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let snap = self.snapshot();
        let dir = &self.shared.dir;
        self.with_reader(|c| {
            let path = dir.join(db::DB_FILE);
            let cameras = db::cameras(c, &path)?
                .into_iter()
                .map(
                    |(camera, rows, first_ms, last_ms, last_ingest_ms)| CameraSummary {
                        camera,
                        rows,
                        first_ms,
                        last_ms,
                        last_ingest_ms,
                    },
                )
                .collect();
            let mut bytes = BTreeMap::new();
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            bytes.insert("database".to_string(), size(&path));
            bytes.insert(
                "wal".to_string(),
                size(&dir.join(format!("{}-wal", db::DB_FILE))),
            );
            let segs: u64 = snap
                .parts
                .iter()
                .filter_map(|p| match &p.src {
                    Src::Seg(s) => Some(s.file_bytes()),
                    Src::Mem(_) => None,
                })
                .sum();
            bytes.insert("segments".to_string(), segs);
            bytes.insert("total".to_string(), bytes.values().sum());
            Ok(Stats {
                info: self.shared.info.clone(),
                rows: db::scalar(c, &path, "SELECT count(*) FROM rows")? as u64,
                deleted_pending: db::scalar(c, &path, "SELECT count(*) FROM dead")? as u64,
                unflushed: db::scalar(c, &path, "SELECT count(*) FROM pending")? as u64,
                segments: snap
                    .parts
                    .iter()
                    .filter(|p| matches!(p.src, Src::Seg(_)))
                    .count(),
                cameras,
                bytes,
                change_seq: db::change_seq(c, &path)?,
            })
        })
    }

    /// The newest change's sequence number (0 for none yet).
    pub fn change_seq(&self) -> Result<i64, StoreError> {
        self.with_reader(|c| db::change_seq(c, &self.shared.dir.join(db::DB_FILE)))
    }

    /// Changes after `seq`, oldest first, at most `limit` (a replication cursor reads
    /// these; SPEC §11).
    pub fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.with_reader(|c| {
            let path = self.shared.dir.join(db::DB_FILE);
            let mut st = c
                .prepare_cached(
                    "SELECT seq, kind, first_id, last_id, at_ms FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(db::err(&path))?;
            let v = st
                .query_map(rusqlite::params![seq, limit as i64], |r| {
                    Ok(Change {
                        seq: r.get(0)?,
                        delete: r.get::<_, String>(1)? == "delete",
                        first_id: r.get::<_, i64>(2)? as u64,
                        last_id: r.get::<_, i64>(3)? as u64,
                        at_ms: r.get(4)?,
                    })
                })
                .map_err(db::err(&path))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db::err(&path))?;
            Ok(v)
        })
    }

    /// The rows of these ids with their embeddings (as f32), each checked against its
    /// checksum; ids no longer live are left out (replication reads an add change's
    /// rows with this; a later delete change covers those left out).
    pub fn rows_with_embeddings(&self, ids: &[u64]) -> Result<Vec<(Found, Vec<f32>)>, StoreError> {
        // One snapshot and one reader for the batch; each row's embedding is read
        // once, for its checksum and for the result.
        let snap = self.snapshot();
        self.with_reader(|c| {
            let path = self.shared.dir.join(db::DB_FILE);
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let Some((pi, i)) = snap.locate(id) else {
                    continue;
                };
                let Some((m, emb)) = self.checked_row(c, &path, &snap.parts[pi], i)? else {
                    continue;
                };
                out.push((found(m, 1.0)?, self.decode(&emb)));
            }
            Ok(out)
        })
    }

    /// Live ids in `[first, last]` (replication reads rows by the add changes).
    pub fn live_ids(&self, first: u64, last: u64) -> Vec<u64> {
        let snap = self.snapshot();
        let mut out = vec![];
        // Parts are in id order, and so are the ids within each part.
        for p in &snap.parts {
            let ids = p.ids();
            let (a, b) = (
                ids.partition_point(|&id| id < first),
                ids.partition_point(|&id| id <= last),
            );
            for (i, &id) in ids.iter().enumerate().take(b).skip(a) {
                if !p.is_dead(i) {
                    out.push(id);
                }
            }
        }
        out
    }
}

fn found(m: RowMeta, score: f32) -> Result<Found, StoreError> {
    let attrs =
        match m.attrs {
            Some(a) => Some(serde_json::from_str(&a).map_err(|e| {
                StoreError::Damaged(format!("row {}: attrs are not JSON ({e})", m.id))
            })?),
            None => None,
        };
    Ok(Found {
        id: m.id,
        score,
        camera: m.camera,
        time_ms: m.time_ms,
        path: m.path,
        pid: m.pid,
        attrs,
    })
}

fn damaged_row(dir: &Path, id: u64, part: &Part) -> StoreError {
    let place = match &part.src {
        Src::Seg(s) => s.path.display().to_string(),
        Src::Mem(_) => format!("{} (pending rows)", dir.join(db::DB_FILE).display()),
    };
    StoreError::Damaged(format!(
        "{}: row {id} does not match its checksum (embedding in {place}, metadata or crop in the \
         database): the store is damaged; run `sen store verify` and restore from a snapshot",
        dir.display()
    ))
}

/// SQLite's 100-byte header: the magic string and a sane page size.
fn check_db_header(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let mut h = [0u8; 100];
    let mut f = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let n = f.read(&mut h).map_err(|e| StoreError::io(path, e))?;
    if n < 100 || &h[..16] != b"SQLite format 3\0" {
        return Err(StoreError::Damaged(format!(
            "{}: not an SQLite database (bad header); the store is damaged: restore it from a snapshot",
            path.display()
        )));
    }
    let page = u16::from_be_bytes([h[16], h[17]]) as u32;
    let page = if page == 1 { 65536 } else { page };
    if !(512..=65536).contains(&page) || !page.is_power_of_two() {
        return Err(StoreError::Damaged(format!(
            "{}: page size {page} in the database header is invalid; the store is damaged",
            path.display()
        )));
    }
    Ok(())
}

/// Segment files no record refers to (a crash between writing one and committing it,
/// or after a compaction committed and before the old files went): removed.
fn remove_stray_segments(dir: &Path, c: &Connection, fs: &dyn Durable) -> Result<(), StoreError> {
    let path = dir.join(db::DB_FILE);
    let known: HashSet<String> = db::segments(c, &path)?.into_iter().map(|s| s.0).collect();
    let sdir = dir.join(SEGMENTS_DIR);
    let mut removed = false;
    for e in std::fs::read_dir(&sdir).map_err(|e| StoreError::io(&sdir, e))? {
        let e = e.map_err(|e| StoreError::io(&sdir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if !known.contains(&name) {
            tracing::info!(
                "{}: removing {name}, which no committed state refers to",
                sdir.display()
            );
            fs.remove(&e.path())
                .map_err(|er| StoreError::io(e.path(), er))?;
            removed = true;
        }
    }
    if removed {
        fs.sync_dir(&sdir).map_err(|e| StoreError::io(&sdir, e))?;
    }
    Ok(())
}

// ------------------------------------------------------------------ writer state

/// The writer's view: everything a snapshot is made of, mutable.
struct State {
    dir: PathBuf,
    info: StoreInfo,
    next_id: u64,
    segments: Vec<(Arc<Segment>, DeadBits)>,
    chunks: Vec<(Arc<Chunk>, DeadBits)>,
    cameras: Arc<Vec<String>>,
    camera_index: HashMap<String, u32>,
}

fn set_bit(words: &mut DeadBits, n: usize, i: usize) {
    let mut w = words
        .as_ref()
        .map_or_else(|| vec![0u64; n.div_ceil(64)], |a| a.as_ref().clone());
    w[i / 64] |= 1 << (i % 64);
    *words = Some(Arc::new(w));
}

impl State {
    fn load(
        dir: &Path,
        c: &Connection,
        info: &StoreInfo,
        next_id: u64,
    ) -> Result<State, StoreError> {
        let path = dir.join(db::DB_FILE);
        let mut segments = vec![];
        for (file, first, last, count, _bytes, crc_a, crc_b) in db::segments(c, &path)? {
            let p = dir.join(SEGMENTS_DIR).join(&file);
            let s = Segment::open(&p)?;
            if s.header.count as u64 != count
                || s.header.first_id != first
                || s.header.last_id != last
                || s.crc_b != crc_b
                || s.header.store_uuid != info.uuid
            {
                return Err(StoreError::Damaged(format!(
                    "{}: does not match the database's record of it (rows {first}..{last}, crc {crc_a:08x}/{crc_b:08x}); \
                     the store is damaged: restore it from a snapshot",
                    p.display()
                )));
            }
            if s.header.dim != info.dim || s.header.dtype != info.storage {
                return Err(StoreError::Damaged(format!(
                    "{}: {}-dim {:?} rows in a {}-dim {:?} store",
                    p.display(),
                    s.header.dim,
                    s.header.dtype,
                    info.dim,
                    info.storage
                )));
            }
            segments.push((Arc::new(s), None));
        }
        let mut st = State {
            dir: dir.to_path_buf(),
            info: info.clone(),
            next_id,
            segments,
            chunks: vec![],
            cameras: Arc::new(vec![]),
            camera_index: HashMap::new(),
        };
        // Deleted rows still in segments.
        let mut dead_stmt = c
            .prepare("SELECT id FROM dead ORDER BY id")
            .map_err(db::err(&path))?;
        let dead: Vec<u64> = dead_stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(db::err(&path))?
            .map(|r| r.map(|v| v as u64))
            .collect::<Result<_, _>>()
            .map_err(db::err(&path))?;
        for id in dead {
            st.mark_dead(id);
        }
        // Rows not yet in a segment, in id order, as one chunk.
        let mut q = c
            .prepare("SELECT p.id, p.embedding, r.camera, r.time_ms FROM pending p JOIN rows r ON r.id = p.id ORDER BY p.id")
            .map_err(db::err(&path))?;
        let mut rows = q.query([]).map_err(db::err(&path))?;
        let (mut ids, mut times, mut cams) = (vec![], vec![], vec![]);
        let mut bytes: Vec<u8> = vec![];
        let width = info.dim * info.storage.bytes();
        while let Some(r) = rows.next().map_err(db::err(&path))? {
            let id = r.get::<_, i64>(0).map_err(db::err(&path))? as u64;
            let b: Vec<u8> = r.get(1).map_err(db::err(&path))?;
            if b.len() != width {
                return Err(StoreError::Damaged(format!(
                    "{}: pending row {id} has a {}-byte embedding, the store's rows take {width}",
                    path.display(),
                    b.len()
                )));
            }
            let cam: String = r.get(2).map_err(db::err(&path))?;
            ids.push(id);
            times.push(r.get(3).map_err(db::err(&path))?);
            cams.push(st.camera_number(&cam));
            bytes.extend_from_slice(&b);
        }
        if !ids.is_empty() {
            let chunk = st.chunk(ids, times, cams, &bytes);
            st.push_chunk(chunk);
        }
        Ok(st)
    }

    fn camera_number(&mut self, name: &str) -> u32 {
        if let Some(&n) = self.camera_index.get(name) {
            return n;
        }
        let n = self.cameras.len() as u32;
        Arc::make_mut(&mut self.cameras).push(name.to_string());
        self.camera_index.insert(name.to_string(), n);
        n
    }

    fn chunk(&self, ids: Vec<u64>, times: Vec<i64>, cameras: Vec<u32>, bytes: &[u8]) -> Chunk {
        let emb = match self.info.storage {
            Storage::F32 => Emb::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
                    .collect(),
            ),
            Storage::F16 => Emb::F16(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes(b.try_into().expect("2")))
                    .collect(),
            ),
        };
        Chunk {
            ids,
            times,
            cameras,
            emb,
        }
    }

    /// Add a committed chunk, keeping the list short: while the newest chunk is at
    /// least half the size of the one before, the two are merged (a binary counter:
    /// O(log n) chunks, each row copied O(log n) times). One chunk per commit made
    /// every search and every published snapshot walk thousands of chunks once a
    /// busy server had committed for a while (a 90/10 load fell from 1,500 to 830
    /// QPS after its ingest runs).
    fn push_chunk(&mut self, ch: Chunk) {
        self.chunks.push((Arc::new(ch), None));
        while let [.., (a, _), (b, _)] = self.chunks.as_slice()
            && a.ids.len() <= 2 * b.ids.len()
        {
            let (b, db) = self.chunks.pop().expect("two chunks");
            let (a, da) = self.chunks.pop().expect("two chunks");
            let (na, nb) = (a.ids.len(), b.ids.len());
            let dead = if da.is_none() && db.is_none() {
                None
            } else {
                let mut w = vec![0u64; (na + nb).div_ceil(64)];
                for (off, bits, n) in [(0, &da, na), (na, &db, nb)] {
                    if let Some(bits) = bits {
                        for i in (0..n).filter(|&i| bits[i / 64] >> (i % 64) & 1 == 1) {
                            w[(off + i) / 64] |= 1 << ((off + i) % 64);
                        }
                    }
                }
                Some(Arc::new(w))
            };
            let emb = match (&a.emb, &b.emb) {
                (Emb::F32(x), Emb::F32(y)) => Emb::F32([x.as_slice(), y].concat()),
                (Emb::F16(x), Emb::F16(y)) => Emb::F16([x.as_slice(), y].concat()),
                _ => unreachable!("one storage type per store"),
            };
            let merged = Chunk {
                ids: [a.ids.as_slice(), &b.ids].concat(),
                times: [a.times.as_slice(), &b.times].concat(),
                cameras: [a.cameras.as_slice(), &b.cameras].concat(),
                emb,
            };
            self.chunks.push((Arc::new(merged), dead));
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut parts: Vec<Part> = self
            .segments
            .iter()
            .map(|(s, d)| Part {
                src: Src::Seg(s.clone()),
                dead: d.clone(),
            })
            .collect();
        parts.extend(self.chunks.iter().map(|(c, d)| Part {
            src: Src::Mem(c.clone()),
            dead: d.clone(),
        }));
        Snapshot {
            parts,
            cameras: self.cameras.clone(),
        }
    }

    /// Mark `id` deleted in whichever part holds it; returns whether it is in a segment.
    fn mark_dead(&mut self, id: u64) -> bool {
        for (s, d) in &mut self.segments {
            if let Some(i) = s.find(id) {
                set_bit(d, s.len(), i);
                return true;
            }
        }
        for (c, d) in &mut self.chunks {
            if let Ok(i) = c.ids.binary_search(&id) {
                set_bit(d, c.ids.len(), i);
                return false;
            }
        }
        false
    }

    fn in_segment(&self, id: u64) -> bool {
        self.segments.iter().any(|(s, _)| s.find(id).is_some())
    }

    fn pending_rows(&self) -> usize {
        self.chunks.iter().map(|(c, _)| c.ids.len()).sum()
    }

    fn segment_name(&self, first: u64) -> String {
        format!("seg-{first:020}-{}.seg", uuid::Uuid::new_v4().simple())
    }
}

/// The embedding of a new row in the store's storage bytes.
fn storage_bytes(v: &[f32], dtype: Storage) -> Vec<u8> {
    match dtype {
        Storage::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Storage::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

// ------------------------------------------------------------------ writer thread

fn publish(shared: &Shared, st: &State) {
    *shared.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(st.snapshot());
}

fn writer_loop(shared: Arc<Shared>, c: Connection, mut st: State, rx: Receiver<Job>) {
    let path = shared.dir.join(db::DB_FILE);
    while let Ok(first) = rx.recv() {
        // Group commit: every add and delete already queued joins this transaction.
        let mut group = vec![first];
        while group.len() < 256 {
            match rx.try_recv() {
                Ok(j @ (Job::Add(..) | Job::Delete(..))) => group.push(j),
                Ok(other) => {
                    run_group(&shared, &c, &path, &mut st, std::mem::take(&mut group));
                    group.push(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let (batched, rest): (Vec<Job>, Vec<Job>) = group
            .into_iter()
            .partition(|j| matches!(j, Job::Add(..) | Job::Delete(..)));
        if !batched.is_empty() {
            run_group(&shared, &c, &path, &mut st, batched);
        }
        for job in rest {
            match job {
                Job::Compact(reply) => {
                    let _ = reply.send(compact(&shared, &c, &path, &mut st));
                }
                Job::Flush(reply) => {
                    let _ = reply.send(flush(&shared, &c, &path, &mut st));
                }
                Job::Consumer(name, seq, reply) => {
                    let _ = reply.send(consumer(&c, &path, &name, seq));
                }
                Job::Ping(reply) => {
                    let r = c
                        .execute_batch("BEGIN IMMEDIATE; ROLLBACK")
                        .map_err(db::err(&path));
                    let _ = reply.send(r);
                }
                Job::Add(..) | Job::Delete(..) => unreachable!("partitioned"),
            }
        }
        if st.pending_rows() >= shared.opts.flush_rows
            && let Err(e) = flush(&shared, &c, &path, &mut st)
        {
            // The rows stay durable in `pending`; the next flush tries again.
            tracing::warn!("writing pending rows to a segment failed: {e}");
        }
    }
}

enum Done {
    Added(Reply<Added>, Result<Added, StoreError>),
    Deleted(Reply<usize>, Result<usize, StoreError>),
}

/// Run adds and deletes in one transaction, each in a savepoint (one job's failure
/// undoes only that job), then commit once and answer every job.
fn run_group(shared: &Shared, c: &Connection, path: &Path, st: &mut State, jobs: Vec<Job>) {
    let e = db::err(path);
    if let Err(err) = c.execute_batch("BEGIN IMMEDIATE").map_err(&e) {
        answer_all(jobs, &err);
        return;
    }
    let now = time::now_ms();
    let next_before = st.next_id;
    let mut done = vec![];
    let mut new_chunks = vec![];
    let mut dead_ids: Vec<u64> = vec![];
    for job in jobs {
        let sp = c.execute_batch("SAVEPOINT job").map_err(&e);
        match job {
            Job::Add(rows, key, reply) => {
                let r = sp.and_then(|_| add_rows(c, path, st, &rows, key.as_deref(), now));
                match r {
                    Ok((added, chunk)) => {
                        let _ = c.execute_batch("RELEASE job");
                        new_chunks.extend(chunk);
                        done.push(Done::Added(reply, Ok(added)));
                    }
                    Err(err) => {
                        let _ = c.execute_batch("ROLLBACK TO job; RELEASE job");
                        done.push(Done::Added(reply, Err(err)));
                    }
                }
            }
            Job::Delete(sel, reply) => {
                let r = sp.and_then(|_| delete_rows(c, path, st, &sel, now));
                match r {
                    Ok(ids) => {
                        let _ = c.execute_batch("RELEASE job");
                        let n = ids.len();
                        dead_ids.extend(ids);
                        done.push(Done::Deleted(reply, Ok(n)));
                    }
                    Err(err) => {
                        let _ = c.execute_batch("ROLLBACK TO job; RELEASE job");
                        done.push(Done::Deleted(reply, Err(err)));
                    }
                }
            }
            _ => unreachable!("only adds and deletes are grouped"),
        }
    }
    if let Err(err) = db::set_meta(c, path, "next_id", &st.next_id.to_string())
        .and_then(|_| c.execute_batch("COMMIT").map_err(&e))
    {
        // Nothing of this group is durable: undo and report it to every job.
        let _ = c.execute_batch("ROLLBACK");
        st.next_id = next_before;
        for d in done {
            match d {
                Done::Added(r, _) => {
                    let _ = r.send(Err(clone_err(&err)));
                }
                Done::Deleted(r, _) => {
                    let _ = r.send(Err(clone_err(&err)));
                }
            }
        }
        return;
    }
    // Durable: make it visible, then acknowledge.
    for ch in new_chunks {
        st.push_chunk(ch);
    }
    for id in dead_ids {
        st.mark_dead(id);
    }
    publish(shared, st);
    for d in done {
        match d {
            Done::Added(r, v) => {
                let _ = r.send(v);
            }
            Done::Deleted(r, v) => {
                let _ = r.send(v);
            }
        }
    }
}

/// The same failure for every job of a group whose commit failed (a disk-full failure
/// stays recognisable as one).
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Db {
            context,
            error: rusqlite::Error::SqliteFailure(f, m),
        } => StoreError::Db {
            context: format!("{context} (the commit failed; nothing of this request was stored)"),
            error: rusqlite::Error::SqliteFailure(*f, m.clone()),
        },
        other => StoreError::Closed(format!(
            "{other} (the commit failed; nothing of this request was stored)"
        )),
    }
}

fn answer_all(jobs: Vec<Job>, err: &StoreError) {
    for j in jobs {
        let e = || StoreError::Closed(err.to_string());
        match j {
            Job::Add(_, _, r) => {
                let _ = r.send(Err(e()));
            }
            Job::Delete(_, r) => {
                let _ = r.send(Err(e()));
            }
            Job::Compact(r) => {
                let _ = r.send(Err(e()));
            }
            Job::Flush(r) => {
                let _ = r.send(Err(e()));
            }
            Job::Consumer(_, _, r) => {
                let _ = r.send(Err(e()));
            }
            Job::Ping(r) => {
                let _ = r.send(Err(e()));
            }
        }
    }
}

/// Insert one add job's rows (ids assigned here); returns the id range and the chunk
/// to publish after commit (none when the idempotency key was seen).
fn add_rows(
    c: &Connection,
    path: &Path,
    st: &mut State,
    rows: &[NewRow],
    key: Option<&str>,
    now: i64,
) -> Result<(Added, Option<Chunk>), StoreError> {
    if let Some(k) = key
        && let Some((first_id, last_id)) = db::idempotency(c, path, k, now)?
    {
        return Ok((
            Added {
                first_id,
                last_id,
                replayed: true,
            },
            None,
        ));
    }
    let first = st.next_id;
    let dtype = st.info.storage;
    let metas: Vec<RowMeta> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| RowMeta {
            id: first + i as u64,
            camera: r.camera.clone(),
            time_ms: r.time_ms,
            path: r.path.clone(),
            pid: r.pid,
            attrs: r
                .attrs
                .as_ref()
                .map(|a| serde_json::Value::Object(a.clone()).to_string()),
            ingest_ms: now,
            crc: 0,
        })
        .collect();
    let embs: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| storage_bytes(&r.embedding, dtype))
        .collect();
    let metas: Vec<RowMeta> = metas
        .into_iter()
        .zip(rows.iter().zip(&embs))
        .map(|(mut m, (r, e))| {
            let crop = if st.info.crops {
                r.crop
                    .as_ref()
                    .map(|c| (c.content_type.as_str(), c.bytes.as_slice()))
            } else {
                None
            };
            m.crc = db::row_crc(&m, e, crop);
            m
        })
        .collect();
    let inserts: Vec<Insert> = metas
        .iter()
        .zip(rows.iter().zip(&embs))
        .map(|(m, (r, e))| Insert {
            meta: m,
            embedding: e,
            crop: if st.info.crops {
                r.crop
                    .as_ref()
                    .map(|c| (c.content_type.as_str(), c.bytes.as_slice()))
            } else {
                None
            },
        })
        .collect();
    db::insert_rows(c, path, &inserts, now)?;
    let last = first + rows.len() as u64 - 1;
    st.next_id = last + 1;
    let cams: Vec<u32> = rows.iter().map(|r| st.camera_number(&r.camera)).collect();
    let chunk = st.chunk(
        metas.iter().map(|m| m.id).collect(),
        rows.iter().map(|r| r.time_ms).collect(),
        cams,
        &embs.concat(),
    );
    if let Some(k) = key {
        db::remember(c, path, k, first, last, now)?;
    }
    Ok((
        Added {
            first_id: first,
            last_id: last,
            replayed: false,
        },
        Some(chunk),
    ))
}

/// Resolve a delete to ids and delete them (inside the group's transaction).
fn delete_rows(
    c: &Connection,
    path: &Path,
    st: &State,
    sel: &Selector,
    now: i64,
) -> Result<Vec<u64>, StoreError> {
    let ids = match sel {
        Selector::Ids(ids) => {
            let mut want: Vec<u64> = ids.clone();
            want.sort_unstable();
            want.dedup();
            let have = db::existing(c, path, &want)?;
            if have.len() != want.len() {
                let have: HashSet<u64> = have.into_iter().collect();
                return Err(StoreError::UnknownIds(
                    want.into_iter().filter(|i| !have.contains(i)).collect(),
                ));
            }
            want
        }
        Selector::Camera(cam) => db::ids_where(c, path, "camera = ?1", cam)?,
        Selector::Before(t) => db::ids_where(c, path, "time_ms < ?1", t)?,
    };
    db::delete_rows(c, path, &ids, &|id| st.in_segment(id), now)?;
    Ok(ids)
}

/// Write every pending row (live ones) to a new segment; then one transaction records
/// it and empties `pending`.
fn flush(shared: &Shared, c: &Connection, path: &Path, st: &mut State) -> Result<(), StoreError> {
    if st.chunks.is_empty() {
        return Ok(());
    }
    let parts: Vec<Part> = st
        .chunks
        .iter()
        .map(|(ch, d)| Part {
            src: Src::Mem(ch.clone()),
            dead: d.clone(),
        })
        .collect();
    let flushed: Vec<u64> = parts.iter().flat_map(|p| p.ids().to_vec()).collect();
    let written = write_segments(shared, st, &parts, &st.cameras.clone())?;
    let e = db::err(path);
    c.execute_batch("BEGIN IMMEDIATE").map_err(&e)?;
    let r = (|| -> Result<(), StoreError> {
        record_segments(c, path, &written, &flushed)?;
        c.execute_batch("COMMIT").map_err(&e)
    })();
    if let Err(err) = r {
        return Err(undo_segments(shared, c, &written, err));
    }
    st.chunks.clear();
    for w in written {
        let s = Segment::open(&w.path)?;
        st.segments.push((Arc::new(s), None));
    }
    publish(shared, st);
    Ok(())
}

/// A transaction that would have referred to `written` failed: roll it back and remove
/// the new segment files (nothing refers to them), then hand back `err`.
fn undo_segments(
    shared: &Shared,
    c: &Connection,
    written: &[Written],
    err: StoreError,
) -> StoreError {
    let _ = c.execute_batch("ROLLBACK");
    for w in written {
        let _ = shared.fs.remove(&w.path);
    }
    err
}

struct Written {
    path: PathBuf,
    header: SegmentHeader,
    bytes: u64,
    crc_a: u32,
    crc_b: u32,
}

/// Inside the caller's transaction: record the new segments, and drop the rows they
/// now hold (`moved`, ascending ids) from the pending log.
fn record_segments(
    c: &Connection,
    path: &Path,
    written: &[Written],
    moved: &[u64],
) -> Result<(), StoreError> {
    for w in written {
        record_segment(c, path, w)?;
    }
    if let (Some(lo), Some(hi)) = (moved.first(), moved.last()) {
        c.execute(
            "DELETE FROM pending WHERE id BETWEEN ?1 AND ?2",
            rusqlite::params![*lo as i64, *hi as i64],
        )
        .map_err(db::err(path))?;
    }
    Ok(())
}

fn record_segment(c: &Connection, path: &Path, w: &Written) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO segments(file, first_id, last_id, count, bytes, crc_a, crc_b) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            w.path.file_name().expect("file").to_string_lossy(),
            w.header.first_id as i64,
            w.header.last_id as i64,
            w.header.count as i64,
            w.bytes as i64,
            w.crc_a as i64,
            w.crc_b as i64
        ],
    )
    .map_err(db::err(path))?;
    Ok(())
}

/// Write the live rows of `parts` (in order) into segments of at most
/// [`SEGMENT_ROWS`] rows. `mem_cameras`: the names chunk camera numbers index.
fn write_segments(
    shared: &Shared,
    st: &State,
    parts: &[Part],
    mem_cameras: &[String],
) -> Result<Vec<Written>, StoreError> {
    let dim = st.info.dim;
    let width = dim * st.info.storage.bytes();
    let mut out = vec![];
    let mut ids: Vec<u64> = vec![];
    let mut times: Vec<i64> = vec![];
    let mut cams: Vec<u32> = vec![];
    let mut names: Vec<String> = vec![];
    let mut name_no: HashMap<String, u32> = HashMap::new();
    let mut emb: Vec<u8> = vec![];
    let mut write = |ids: &mut Vec<u64>,
                     times: &mut Vec<i64>,
                     cams: &mut Vec<u32>,
                     names: &mut Vec<String>,
                     name_no: &mut HashMap<String, u32>,
                     emb: &mut Vec<u8>|
     -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let header = SegmentHeader {
            dim,
            count: ids.len(),
            dtype: st.info.storage,
            image_encoder_sha256: st.info.image_encoder_sha256.clone(),
            store_uuid: st.info.uuid.clone(),
            written_by: format!("sen-store {}", env!("CARGO_PKG_VERSION")),
            first_id: ids[0],
            last_id: *ids.last().expect("non-empty"),
            min_time_ms: *times.iter().min().expect("non-empty"),
            max_time_ms: *times.iter().max().expect("non-empty"),
            time_sorted: times.windows(2).all(|w| w[0] <= w[1]),
            cameras: std::mem::take(names),
        };
        let p = st
            .dir
            .join(SEGMENTS_DIR)
            .join(st.segment_name(header.first_id));
        let (bytes, crc_a, crc_b) = segment::write(
            shared.fs.as_ref(),
            &p,
            &header,
            &SegmentColumns {
                ids,
                times,
                cameras: cams,
                embeddings: emb,
            },
        )?;
        out.push(Written {
            path: p,
            header,
            bytes,
            crc_a,
            crc_b,
        });
        ids.clear();
        times.clear();
        cams.clear();
        name_no.clear();
        emb.clear();
        Ok(())
    };
    for p in parts {
        let table: &[String] = match &p.src {
            Src::Seg(s) => &s.header.cameras,
            Src::Mem(_) => mem_cameras,
        };
        let pc: &[u32] = match &p.src {
            Src::Seg(s) => s.cameras(),
            Src::Mem(c) => &c.cameras,
        };
        let (pids, ptimes) = (p.ids(), p.times());
        for i in 0..p.len() {
            if p.is_dead(i) {
                continue;
            }
            let name = &table[pc[i] as usize];
            let no = match name_no.get(name) {
                Some(&n) => n,
                None => {
                    let n = names.len() as u32;
                    names.push(name.clone());
                    name_no.insert(name.clone(), n);
                    n
                }
            };
            ids.push(pids[i]);
            times.push(ptimes[i]);
            cams.push(no);
            match &p.src {
                Src::Seg(s) => emb.extend_from_slice(s.row_bytes(i)),
                Src::Mem(_) => emb.extend_from_slice(&p.row_bytes(i, dim)),
            }
            debug_assert_eq!(emb.len(), ids.len() * width);
            if ids.len() == shared.opts.segment_rows {
                write(
                    &mut ids,
                    &mut times,
                    &mut cams,
                    &mut names,
                    &mut name_no,
                    &mut emb,
                )?;
            }
        }
    }
    write(
        &mut ids,
        &mut times,
        &mut cams,
        &mut names,
        &mut name_no,
        &mut emb,
    )?;
    Ok(out)
}

/// See [`Store::compact`]: rewrite segments with deleted rows, merge runs of small
/// ones (and the pending rows) into segments of up to [`SEGMENT_ROWS`], commit the
/// swap, remove the old files, drop tombstones every consumer has passed, truncate
/// the WAL.
fn compact(
    shared: &Shared,
    c: &Connection,
    path: &Path,
    st: &mut State,
) -> Result<CompactReport, StoreError> {
    let t0 = std::time::Instant::now();
    let before = st.segments.len();
    let bytes_before: u64 = st.segments.iter().map(|(s, _)| s.file_bytes()).sum();
    // Which segments to rewrite: those with deleted rows, and small ones. Runs of
    // consecutive ones are merged (a kept segment between two ends a run, so the
    // segments stay in id order without overlapping ranges); the pending rows join
    // the last run when it ends the list, else form their own.
    let rewrite: Vec<bool> = st
        .segments
        .iter()
        .map(|(s, d)| d.is_some() || s.len() < shared.opts.segment_rows / 4)
        .collect();
    let mut runs: Vec<Vec<Part>> = vec![];
    let mut old: Vec<usize> = vec![];
    let mut in_run = false;
    for (i, (s, d)) in st.segments.iter().enumerate() {
        if rewrite[i] {
            if !in_run {
                runs.push(vec![]);
            }
            runs.last_mut().expect("a run").push(Part {
                src: Src::Seg(s.clone()),
                dead: d.clone(),
            });
            old.push(i);
        }
        in_run = rewrite[i];
    }
    let pending: Vec<u64> = st
        .chunks
        .iter()
        .flat_map(|(ch, _)| ch.ids.clone())
        .collect();
    if !st.chunks.is_empty() {
        if !in_run {
            runs.push(vec![]);
        }
        let last = runs.last_mut().expect("a run");
        for (ch, d) in &st.chunks {
            last.push(Part {
                src: Src::Mem(ch.clone()),
                dead: d.clone(),
            });
        }
    }
    let removed: u64 = runs
        .iter()
        .flatten()
        .map(|p| {
            p.dead
                .as_ref()
                .map_or(0, |b| b.iter().map(|w| w.count_ones() as u64).sum())
        })
        .sum();
    let mut written = vec![];
    for run in &runs {
        match write_segments(shared, st, run, &st.cameras.clone()) {
            Ok(w) => written.extend(w),
            Err(err) => {
                for w in &written {
                    let _ = shared.fs.remove(&w.path);
                }
                return Err(err);
            }
        }
    }
    let e = db::err(path);
    c.execute_batch("BEGIN IMMEDIATE").map_err(&e)?;
    let r = (|| -> Result<(), StoreError> {
        for &i in &old {
            let s = &st.segments[i].0;
            c.execute(
                "DELETE FROM segments WHERE file = ?1",
                [s.path.file_name().expect("file").to_string_lossy()],
            )
            .map_err(&e)?;
            c.execute(
                "DELETE FROM dead WHERE id BETWEEN ?1 AND ?2",
                rusqlite::params![s.header.first_id as i64, s.header.last_id as i64],
            )
            .map_err(&e)?;
        }
        record_segments(c, path, &written, &pending)?;
        // Tombstones (and add records) every consumer has passed: with no consumer,
        // all of them.
        let keep_from: Option<i64> = c
            .query_row("SELECT min(seq) FROM consumers", [], |r| r.get(0))
            .map_err(&e)?;
        match keep_from {
            Some(s) => c.execute("DELETE FROM changes WHERE seq <= ?1", [s]),
            None => c.execute("DELETE FROM changes", []),
        }
        .map_err(&e)?;
        // Idempotency keys are kept a day.
        c.execute(
            "DELETE FROM idempotency WHERE at_ms < ?1",
            [time::now_ms() - 86_400_000],
        )
        .map_err(&e)?;
        c.execute_batch("COMMIT").map_err(&e)
    })();
    if let Err(err) = r {
        return Err(undo_segments(shared, c, &written, err));
    }
    // Committed: swap, then remove the old files (a crash before this leaves strays
    // that the next open removes).
    let old_files: Vec<PathBuf> = old.iter().map(|&i| st.segments[i].0.path.clone()).collect();
    let mut keep: Vec<(Arc<Segment>, DeadBits)> = st
        .segments
        .iter()
        .enumerate()
        .filter(|(i, _)| !rewrite[*i])
        .map(|(_, s)| s.clone())
        .collect();
    for w in &written {
        keep.push((Arc::new(Segment::open(&w.path)?), None));
    }
    keep.sort_by_key(|(s, _)| s.header.first_id);
    st.segments = keep;
    st.chunks.clear();
    publish(shared, st);
    let sdir = st.dir.join(SEGMENTS_DIR);
    for f in &old_files {
        shared.fs.remove(f).map_err(|er| StoreError::io(f, er))?;
    }
    shared
        .fs
        .sync_dir(&sdir)
        .map_err(|er| StoreError::io(&sdir, er))?;
    // Deleted crops and metadata may still sit in WAL frames: checkpoint and truncate.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(&e)?;
    Ok(CompactReport {
        segments_before: before,
        segments_after: st.segments.len(),
        rows_removed: removed,
        bytes_before,
        bytes_after: st.segments.iter().map(|(s, _)| s.file_bytes()).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn consumer(c: &Connection, path: &Path, name: &str, seq: Option<i64>) -> Result<i64, StoreError> {
    let e = db::err(path);
    let now = time::now_ms();
    match seq {
        Some(s) => {
            c.execute(
                "INSERT INTO consumers(name, seq, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
                rusqlite::params![name, s, now],
            )
            .map_err(&e)?;
            Ok(s)
        }
        None => {
            c.execute(
                "INSERT OR IGNORE INTO consumers(name, seq, updated_ms) VALUES (?1, 0, ?2)",
                rusqlite::params![name, now],
            )
            .map_err(&e)?;
            c.query_row("SELECT seq FROM consumers WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .map_err(&e)
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(mut w) = self.writer.take() {
            // Closing the channel stops the writer loop after the queued jobs.
            drop(w.tx);
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
