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
use sen_core::preprocess::{PreprocessSpec, RecordedPreprocess};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};

mod maintenance;
pub mod matcher;
mod snapshot;
mod types;
mod writer;

pub use snapshot::Snapshot;
pub use types::*;

use maintenance::remove_stray_segments;
use snapshot::{Part, Src};
use writer::{Job, Reply, State, writer_loop};

// ------------------------------------------------------------------ the store

/// The store's identity entries in `meta`.
fn meta_entries(info: &StoreInfo) -> Vec<(&'static str, String)> {
    vec![
        ("uuid", info.uuid.clone()),
        ("format_version", info.format_version.to_string()),
        ("image_encoder_sha256", info.image_encoder_sha256.clone()),
        ("preprocess", info.preprocess.record()),
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
    crate::migrate::check(format_version, dir, false)?;
    let info = StoreInfo {
        uuid: get("uuid")?,
        format_version,
        image_encoder_sha256: get("image_encoder_sha256")?,
        preprocess: RecordedPreprocess::parse(&get("preprocess")?)
            .map_err(|e| StoreError::Damaged(format!("{}: {e}", path.display())))?,
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
    /// The last write found the disk full (and no delete has freed room since):
    /// readiness says the store takes no new rows.
    disk_full: std::sync::atomic::AtomicBool,
    /// When the writer last tried to rebuild a released reserve.
    reserve_tried: Mutex<Option<std::time::Instant>>,
}

struct WriterHandle {
    tx: SyncSender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
    _lock: std::fs::File,
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
            preprocess: RecordedPreprocess::Block(config.preprocess.clone()),
            dim: config.dim,
            storage: config.dtype,
            crops: config.crops,
            bundle_precision: config.bundle_precision.clone(),
            created_ms: time::now_ms(),
        };
        let c = db::open(dir, true)?;
        let path = dir.join(db::DB_FILE);
        db::begin_write(&c, &path)?;
        db::init(&c, &path, &meta_entries(&info))?;
        db::commit(&c, &path)?;
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
        let version = db::format_version(&c, &path)?;
        if crate::migrate::check(version, dir, mode == Mode::Writer)? {
            crate::migrate::run(&c, dir, version)?;
        }
        let (info, next_id) = read_info(&c, dir)?;
        if mode == Mode::Writer {
            remove_stray_segments(dir, &c, fs.as_ref())?;
        }
        // One read transaction: segments, pending rows and deletions of one commit.
        // A reader racing a compaction may find a segment file already removed; it
        // then reads the newer state.
        let mut attempt = 0;
        let state = loop {
            db::begin_read(&c, &path)?;
            let r = read_info(&c, dir).and_then(|(_, next)| State::load(dir, &c, &info, next));
            let _ = db::commit(&c, &path);
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
            disk_full: std::sync::atomic::AtomicBool::new(false),
            reserve_tried: Mutex::new(None),
        });
        let writer = match (mode, lock_file) {
            (Mode::Writer, Some(lock_file)) => {
                if let Err(e) = maintenance::ensure_reserve(&shared) {
                    if e.is_disk_full() {
                        shared.disk_full.store(true, Ordering::SeqCst);
                    }
                    tracing::warn!(
                        "{}: cannot keep the disk reserve ({e}); deletes on a full disk may fail",
                        dir.display()
                    );
                }
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

    /// Refuse an image encoder other than the store's: another sha256, dimension or
    /// preprocessing (SPEC §10 encoder identity).
    pub fn check_encoder(
        &self,
        sha256: &str,
        dim: usize,
        preprocess: &PreprocessSpec,
        bundle: &str,
    ) -> Result<(), StoreError> {
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
        if !i.preprocess.matches(preprocess) {
            return Err(StoreError::Mismatch(format!(
                "{}: made with preprocessing {} but the bundle {bundle} preprocesses with {}; \
                 the same encoder fed other pixels makes embeddings that are not comparable: \
                 use the store's bundle, or create a new store for this one",
                self.shared.dir.display(),
                i.preprocess.describe(),
                preprocess.canonical_json()
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

    /// [`Store::add`] with an idempotency key: the key and its request digest are
    /// recorded in the same transaction as the rows (`idempotency` table, kept a day);
    /// a later add with the same key and digest adds nothing and returns the first
    /// add's ids, one with another digest is refused.
    pub fn add_idempotent(
        &self,
        rows: Vec<NewRow>,
        key: Option<Idempotency>,
    ) -> Result<Added, StoreError> {
        if rows.is_empty() {
            return Err(StoreError::Input("nothing to add".into()));
        }
        self.check_rows(&rows)?;
        self.job(|tx| Job::Add(rows, key, tx))
    }

    /// Every rule a new row meets, whatever the entry point (SPEC §11, §12).
    fn check_rows(&self, rows: &[NewRow]) -> Result<(), StoreError> {
        let i = &self.shared.info;
        for (n, r) in rows.iter().enumerate() {
            check_camera(&r.camera)
                .map_err(|e| StoreError::Input(format!("row {}: {e}", n + 1)))?;
            self.shared.opts.row_limits.check(n + 1, r)?;
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
            if i.storage == Storage::F16 && r.embedding.iter().any(|v| v.abs() > f16::MAX.to_f32())
            {
                return Err(StoreError::Input(format!(
                    "row {} ({}): the embedding has a value past float16's range ({}), which \
                     this store keeps its rows in",
                    n + 1,
                    r.path,
                    f16::MAX
                )));
            }
            time::capture_time(&format!("row {} time", n + 1), r.time_ms)?;
            if i.crops && r.crop.is_none() {
                return Err(StoreError::Input(format!(
                    "row {} ({}): this store keeps crops and the row has none",
                    n + 1,
                    r.path
                )));
            }
        }
        Ok(())
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
        if self.shared.disk_full.load(Ordering::SeqCst) {
            return Err(StoreError::DiskFull(format!(
                "{}: the disk is full; the store takes no new rows until room is freed \
                 (deletes still work, and free the room they need from the store's reserve)",
                self.shared.dir.display()
            )));
        }
        self.job(Job::Ping)
    }

    /// Whether `id` is a live row now (not deleted), from the current snapshot.
    pub fn is_live(&self, id: u64) -> bool {
        self.snapshot().locate(id).is_some()
    }

    /// Register (or move) a consumer's cursor; returns its sequence number. `None`
    /// reads it (registering at 0 when new).
    pub fn consumer(&self, name: &str, seq: Option<i64>) -> Result<i64, StoreError> {
        self.job(|tx| Job::Consumer(name.to_string(), seq, tx))
    }

    // -------------------------------------------------------------- watches

    /// Store a watch with its unit query vector (of the store's dimension); its id,
    /// never reused. Durable when this returns.
    pub fn watch_add(
        &self,
        spec: crate::watch::WatchSpec,
        vector: Vec<f32>,
    ) -> Result<u64, StoreError> {
        spec.check()?;
        crate::watch::check_vector(&vector, self.info().dim)?;
        self.job(|tx| Job::WatchAdd(Box::new((spec, vector)), tx))
    }

    /// Delete a watch: it raises nothing from now on. Whether it existed.
    pub fn watch_delete(&self, id: u64) -> Result<bool, StoreError> {
        self.job(|tx| Job::WatchDelete(id, tx))
    }

    /// Give the writer the score calibration `min_p` watches are judged with (the
    /// bundle's; None: they raise nothing).
    pub fn set_score_calibration(
        &self,
        cal: Option<Arc<sen_core::scores::bundle::ScoreCalibration>>,
    ) -> Result<(), StoreError> {
        self.job(|tx| Job::Calibration(cal, tx))
    }

    /// Alerts raised, oldest first: those created in `[from_ms, to_ms)` (either end
    /// open when None), of one watch when given, at most `limit`.
    pub fn alerts(
        &self,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        watch: Option<u64>,
        limit: usize,
    ) -> Result<Vec<crate::db::Alert>, StoreError> {
        self.with_reader(|c| db::alerts(c, &self.db_path(), from_ms, to_ms, watch, 0, limit))
    }

    /// Alerts after id `after`, oldest first, at most `limit` (what a sink delivers
    /// next; erased rows' alerts are gone from here).
    pub fn alerts_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::db::Alert>, StoreError> {
        self.with_reader(|c| db::alerts(c, &self.db_path(), None, None, None, after, limit))
    }

    /// The newest alert's id (0: none yet).
    pub fn newest_alert(&self) -> Result<u64, StoreError> {
        self.with_reader(|c| db::newest_alert(c, &self.db_path()))
    }

    /// The last alert a sink confirmed (a new sink starts after the newest alert).
    pub fn alert_cursor(&self, sink: &str) -> Result<u64, StoreError> {
        self.job(|tx| Job::AlertCursor(sink.to_string(), None, tx))
    }

    /// A sink confirmed every alert up to `id` (`failed`: it gave up on `id`, with
    /// this error, recorded in the same transaction).
    pub fn alert_delivered(
        &self,
        sink: &str,
        id: u64,
        failed: Option<String>,
    ) -> Result<u64, StoreError> {
        self.job(|tx| Job::AlertCursor(sink.to_string(), Some((id, failed)), tx))
    }

    /// How many alerts each sink gave up on.
    pub fn alert_failures(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_reader(|c| db::alert_failures(c, &self.db_path()))
    }

    /// Every watch, by id.
    pub fn watches(&self) -> Result<Vec<crate::watch::Watch>, StoreError> {
        self.with_reader(|c| db::watches(c, &self.db_path(), None))
    }

    /// One watch.
    pub fn watch(&self, id: u64) -> Result<Option<crate::watch::Watch>, StoreError> {
        Ok(self
            .with_reader(|c| db::watches(c, &self.db_path(), Some(id)))?
            .pop())
    }

    // -------------------------------------------------------------- sources

    /// Write messages a source received to its durable inbox (one group commit with
    /// whatever else is queued); their entry ids, in order. Once this returns they
    /// survive `kill -9` and a power cut, and the source may acknowledge them.
    pub fn inbox_push(&self, msgs: Vec<InboxMessage>) -> Result<Vec<u64>, StoreError> {
        if msgs.is_empty() {
            return Ok(vec![]);
        }
        self.job(|tx| Job::Inbox(msgs, tx))
    }

    /// Resolve an inbox entry: store its rows (a keyed crop at most once: SPEC §12),
    /// count its skip, record its item done, and remove it, in one transaction.
    pub fn resolve(&self, r: Resolve) -> Result<Resolved, StoreError> {
        self.check_rows(&r.rows)?;
        if r.rows
            .iter()
            .any(|row| row.source.as_deref() != Some(r.source.as_str()))
        {
            return Err(StoreError::Input(format!(
                "inbox entry {}: every row it adds has source {:?}",
                r.inbox, r.source
            )));
        }
        self.job(|tx| Job::Resolve(r, tx))
    }

    /// Put an inbox entry back to be tried again at `next_ms` (its `attempts`-th
    /// failure was `error`).
    pub fn inbox_retry(
        &self,
        id: u64,
        attempts: u32,
        next_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.job(|tx| Job::Retry(id, attempts, next_ms, error.to_string(), tx))
    }

    /// Up to `limit` of a source's inbox entries due by `now_ms`, oldest first.
    pub fn inbox_due(
        &self,
        source: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        self.with_reader(|c| db::inbox_due(c, &self.db_path(), source, now_ms, limit))
    }

    /// How many of a source's messages wait in the inbox.
    pub fn inbox_depth(&self, source: &str) -> Result<u64, StoreError> {
        self.with_reader(|c| db::inbox_depth(c, &self.db_path(), source))
    }

    /// A source's skipped messages: (reason, count, last detail), by reason.
    pub fn source_skips(
        &self,
        source: &str,
    ) -> Result<Vec<(String, u64, Option<String>)>, StoreError> {
        self.with_reader(|c| db::skips(c, &self.db_path(), source))
    }

    /// The end time (Unix ms) of the latest item a source is done with.
    pub fn source_cursor(&self, source: &str) -> Result<Option<i64>, StoreError> {
        self.with_reader(|c| db::source_cursor(c, &self.db_path(), source))
    }

    /// Whether a source's item (a Frigate event) is done with.
    pub fn is_done(&self, source: &str, item: &str) -> Result<bool, StoreError> {
        self.with_reader(|c| db::is_done(c, &self.db_path(), source, item))
    }

    // -------------------------------------------------------------- tracks

    /// A track's live rows, by id.
    pub fn track_rows(&self, camera: &str, track: &str) -> Result<Vec<u64>, StoreError> {
        check_camera(camera)?;
        check_track(track)?;
        let snap = self.snapshot();
        let ids = self.with_reader(|c| db::track_rows(c, &self.db_path(), camera, track))?;
        Ok(ids
            .into_iter()
            .filter(|&id| snap.locate(id).is_some())
            .collect())
    }

    /// "More like this" of a track: the normalised mean of its crops' embeddings, and
    /// the track's row ids (to leave out of the results).
    pub fn track_embedding(
        &self,
        camera: &str,
        track: &str,
    ) -> Result<(Vec<f32>, Vec<u64>), StoreError> {
        let ids = self.track_rows(camera, track)?;
        let mut sum = vec![0f64; self.shared.info.dim];
        let mut used = vec![];
        for &id in &ids {
            match self.embedding(id) {
                Ok(v) => {
                    sum.iter_mut().zip(&v).for_each(|(s, x)| *s += *x as f64);
                    used.push(id);
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
        if used.is_empty() || norm == 0.0 || !norm.is_finite() {
            return Err(StoreError::UnknownTrack {
                camera: camera.into(),
                track: track.into(),
            });
        }
        Ok((sum.iter().map(|v| (v / norm) as f32).collect(), used))
    }

    fn db_path(&self) -> PathBuf {
        self.shared.dir.join(db::DB_FILE)
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
    /// row checksum (a damaged row is an error naming it, never a result). Any query's
    /// failure fails the call; [`Store::search_each`] answers each query on its own.
    pub fn search(&self, queries: &[Query], threads: usize) -> Result<Vec<Vec<Found>>, StoreError> {
        self.search_each(queries, threads)?.into_iter().collect()
    }

    /// [`Store::search`], each query with its own answer: a bad query, or one whose
    /// results meet a damaged row, fails alone (naming the row); the outer error is for
    /// what fails every query (the kernel, the database).
    pub fn search_each(
        &self,
        queries: &[Query],
        threads: usize,
    ) -> Result<Vec<Answer>, StoreError> {
        let kernel = Kernel::active().map_err(|e| StoreError::Input(e.to_string()))?;
        let dim = self.shared.info.dim;
        let mut out: Vec<Option<Answer>> = queries
            .iter()
            .enumerate()
            .map(|(n, q)| check_query(n, q, dim).err().map(Err))
            .collect();
        // Grouped queries search ungrouped ones of their own.
        for (i, q) in queries.iter().enumerate() {
            if q.group && out[i].is_none() {
                out[i] = Some(self.search_grouped(q, threads)?);
            }
        }
        // A row deleted between the snapshot and reading its metadata: search that
        // query again on a newer snapshot (bounded).
        for _ in 0..8 {
            let todo: Vec<usize> = (0..queries.len()).filter(|&i| out[i].is_none()).collect();
            if todo.is_empty() {
                break;
            }
            let snap = self.snapshot();
            let filters: Vec<RowFilter> = todo.iter().map(|&i| snap.filter(&queries[i])).collect();
            let batch: Vec<BatchQuery> = todo
                .iter()
                .zip(&filters)
                .map(|(&i, f)| BatchQuery {
                    vector: &queries[i].vector,
                    k: queries[i].k,
                    filter: f,
                })
                .collect();
            let gallery = snap.gallery(dim);
            let threads = search::threads_for(snap.rows_in_parts(), threads);
            let hits = search::search_gallery(kernel, &batch, &gallery, threads);
            for (i, r) in todo.into_iter().zip(self.hit_rows(&snap, &hits)?) {
                out[i] = r;
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Closed(
                        "the store changed under eight searches in a row; try again".into(),
                    ))
                })
            })
            .collect())
    }

    /// One grouped query (SPEC §12): search ungrouped for `8k` rows, group them by
    /// track in rank order (a track ranks by its best crop; rows without a track are
    /// items of their own), and search four times deeper while fewer than `k` items
    /// come out of a search that filled its `k`. Each track's `first`, `last` and
    /// `crops` count its rows that pass the query's filters.
    fn search_grouped(&self, q: &Query, threads: usize) -> Result<Answer, StoreError> {
        let total = self.snapshot().rows_in_parts();
        let mut depth = q.k.saturating_mul(8).clamp(64, total.max(64));
        loop {
            let sub = Query {
                k: depth,
                group: false,
                ..q.clone()
            };
            let rows = match self.search_each(std::slice::from_ref(&sub), threads)?.pop() {
                Some(Ok(rows)) => rows,
                Some(Err(e)) => return Ok(Err(e)),
                None => return Ok(Ok(vec![])),
            };
            let exhausted = rows.len() < depth || depth >= total;
            let mut items = group_rows(rows);
            if items.len() >= q.k || exhausted {
                items.truncate(q.k);
                return self.with_reader(|c| {
                    let path = self.db_path();
                    for f in &mut items {
                        if let Some(t) = &f.track {
                            let times =
                                db::track_times(c, &path, &f.camera, t, q.time.from, q.time.to)?;
                            let kept = times.iter().filter(|(id, _)| !q.exclude.contains(id));
                            let (mut n, mut first, mut last) = (0u64, i64::MAX, i64::MIN);
                            for &(_, ms) in kept {
                                n += 1;
                                first = first.min(ms);
                                last = last.max(ms);
                            }
                            if n == 0 {
                                (first, last) = (f.time_ms, f.time_ms);
                                n = 1;
                            }
                            f.group = Some(Group {
                                first_ms: first,
                                last_ms: last,
                                crops: n,
                            });
                        }
                    }
                    Ok(Ok(items))
                });
            }
            depth = depth.saturating_mul(4).min(total.max(depth + 1));
        }
    }

    /// Metadata of each query's hits, each row checked against its checksum: `None`
    /// for a query one of whose rows was deleted meanwhile (search it again), an error
    /// for one that met a damaged row.
    fn hit_rows(
        &self,
        snap: &Snapshot,
        hits: &[Vec<search::Hit>],
    ) -> Result<Vec<Option<Answer>>, StoreError> {
        self.with_reader(|c| {
            let path = self.shared.dir.join(db::DB_FILE);
            let mut out = Vec::with_capacity(hits.len());
            'query: for hs in hits {
                let mut v = Vec::with_capacity(hs.len());
                for h in hs {
                    let (pi, i) = snap.part_of(h.row);
                    let part = &snap.parts[pi];
                    if h.score.is_nan() {
                        out.push(Some(Err(not_finite_row(
                            &self.shared.dir,
                            part.ids()[i],
                            part,
                        ))));
                        continue 'query;
                    }
                    match self.checked_row(c, &path, part, i) {
                        Ok(Some((m, _))) => v.push(found(m, h.score)?),
                        Ok(None) => {
                            out.push(None);
                            continue 'query;
                        }
                        Err(e @ StoreError::Damaged(_)) => {
                            out.push(Some(Err(e)));
                            continue 'query;
                        }
                        Err(e) => return Err(e),
                    }
                }
                out.push(Some(Ok(v)));
            }
            Ok(out)
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
    /// checksum (metadata and embedding; the crop has its own); None when the row is no
    /// longer in the database (deleted after the snapshot was taken).
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
        let emb = part.row_bytes(i, self.shared.info.dim);
        if db::row_crc(&m, &emb) != m.crc {
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
            match db::crop(c, &path, id)? {
                Some((content_type, bytes, crc)) => {
                    if db::crop_crc(&content_type, &bytes) != crc {
                        return Err(StoreError::Damaged(format!(
                            "{}: the crop of row {id} does not match its checksum: the store \
                             is damaged; run `sen store verify` and restore from a snapshot",
                            self.shared.dir.display()
                        )));
                    }
                    Ok(Some(Crop {
                        content_type,
                        bytes,
                    }))
                }
                None => Ok(None),
            }
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
            let (rows, deleted_pending, unflushed) = db::counts(c, &path)?;
            Ok(Stats {
                info: self.shared.info.clone(),
                rows,
                deleted_pending,
                unflushed,
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
        self.with_reader(|c| db::changes_since(c, &self.shared.dir.join(db::DB_FILE), seq, limit))
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
    let bbox = match m.bbox {
        Some(b) => Some(serde_json::from_str::<[f64; 4]>(&b).map_err(|e| {
            StoreError::Damaged(format!("row {}: bbox is not four numbers ({e})", m.id))
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
        track: m.track,
        bbox,
        source: m.source,
        group: None,
    })
}

/// Ranked rows grouped by track (`(camera, track)`), in rank order: a track's first
/// (best) row stands for it; rows without a track stay items of their own.
pub fn group_rows(rows: Vec<Found>) -> Vec<Found> {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    rows.into_iter()
        .filter(|f| match &f.track {
            Some(t) => seen.insert((f.camera.clone(), t.clone())),
            None => true,
        })
        .collect()
}

/// One query's answer: its results, or why it failed.
pub type Answer = Result<Vec<Found>, StoreError>;

/// A query fit to search: the store's dimension, finite values, good camera names.
fn check_query(n: usize, q: &Query, dim: usize) -> Result<(), StoreError> {
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
    for c in q.cameras.iter().flatten() {
        check_camera(c)?;
    }
    Ok(())
}

/// Where row `id`'s embedding is, for errors.
fn place(dir: &Path, part: &Part) -> String {
    match &part.src {
        Src::Seg(s) => s.path.display().to_string(),
        Src::Mem(_) => format!("{} (pending rows)", dir.join(db::DB_FILE).display()),
    }
}

/// A stored embedding that scores NaN: it holds a value that is not finite.
fn not_finite_row(dir: &Path, id: u64, part: &Part) -> StoreError {
    StoreError::Damaged(format!(
        "{}: row {id}'s embedding (in {}) holds a value that is not finite: the store is \
         damaged; run `sen store verify` and restore from a snapshot",
        dir.display(),
        place(dir, part)
    ))
}

fn damaged_row(dir: &Path, id: u64, part: &Part) -> StoreError {
    StoreError::Damaged(format!(
        "{}: row {id} does not match its checksum (embedding in {}, metadata in the \
         database): the store is damaged; run `sen store verify` and restore from a snapshot",
        dir.display(),
        place(dir, part)
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
