//! The store's SQLite database (`store.db`, WAL, `synchronous=FULL`,
//! `secure_delete=ON`): identity, row metadata and checksums, crops, the rows not
//! yet in a segment, the segment list, the change sequence and its consumers, the
//! per-camera summary. Every statement of the store is here.

use crate::error::StoreError;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::Path;

pub const DB_FILE: &str = "store.db";
/// Version of the store layout (database schema and segment format) this code
/// writes; older stores are migrated to it when the writer opens them
/// ([`crate::migrate`]).
pub const STORE_FORMAT_VERSION: u32 = crate::migrate::CURRENT;

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rows(
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    path TEXT NOT NULL,
    pid INTEGER,
    attrs TEXT,
    ingest_ms INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    track TEXT,
    bbox TEXT,
    source TEXT
);
CREATE INDEX rows_camera_time ON rows(camera, time_ms);
CREATE INDEX rows_time ON rows(time_ms);
CREATE TABLE crops(id INTEGER PRIMARY KEY, content_type TEXT NOT NULL, bytes BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE pending(id INTEGER PRIMARY KEY, embedding BLOB NOT NULL);
CREATE TABLE dead(id INTEGER PRIMARY KEY);
CREATE TABLE segments(
    file TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    crc_a INTEGER NOT NULL,
    crc_b INTEGER NOT NULL
);
CREATE TABLE changes(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK(kind IN ('add', 'delete')),
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE consumers(name TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE cameras(
    camera TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    first_ms INTEGER,
    last_ms INTEGER,
    last_ingest_ms INTEGER
);
CREATE TABLE idempotency(key TEXT PRIMARY KEY, response TEXT NOT NULL, at_ms INTEGER NOT NULL, request TEXT NOT NULL);
";

/// What format 3 adds (also run by its migration): tracks on rows, the key a crop from
/// an MQTT source is added under (kept as long as its row), the sources' durable
/// inbox, their skip counts and cursors.
pub(crate) const SCHEMA_V3: &str = "
CREATE INDEX rows_track ON rows(camera, track) WHERE track IS NOT NULL;
CREATE UNIQUE INDEX rows_source_key ON rows(source, camera, track, time_ms)
    WHERE source IN ('frigate', 'deepstream');
CREATE TABLE inbox(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE source_skips(
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    last_detail TEXT,
    PRIMARY KEY(source, reason)
);
CREATE TABLE source_state(source TEXT PRIMARY KEY, cursor_ms INTEGER NOT NULL);
CREATE TABLE source_done(
    source TEXT NOT NULL,
    item TEXT NOT NULL,
    end_ms INTEGER NOT NULL,
    PRIMARY KEY(source, item)
);
CREATE INDEX source_done_end ON source_done(source, end_ms);
";

/// Format 4: watches (SPEC §12). Ids are never reused (AUTOINCREMENT).
pub(crate) const SCHEMA_V4: &str = "
CREATE TABLE watches(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    cameras TEXT,
    threshold TEXT NOT NULL,
    prior REAL,
    cooldown_s INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE alerts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    watch INTEGER NOT NULL,
    name TEXT NOT NULL,
    row INTEGER NOT NULL,
    camera TEXT NOT NULL,
    track TEXT,
    time_ms INTEGER NOT NULL,
    score REAL NOT NULL,
    p REAL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX alerts_row ON alerts(row);
CREATE INDEX alerts_created ON alerts(created_ms);
CREATE TABLE alert_sinks(sink TEXT PRIMARY KEY, delivered INTEGER NOT NULL);
CREATE TABLE alert_failures(
    alert INTEGER NOT NULL,
    sink TEXT NOT NULL,
    error TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY(alert, sink)
);
CREATE TABLE watch_cooldowns(
    watch INTEGER NOT NULL,
    camera TEXT NOT NULL,
    track TEXT NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY(watch, camera, track)
);
";

pub(crate) fn err(ctx: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::db(ctx.display(), e)
}

/// Open `dir/store.db` with the store's settings. `write`: read-write (the writer);
/// else read-only (readers; WAL lets them read while the writer commits).
pub fn open(dir: &Path, write: bool) -> Result<Connection, StoreError> {
    let path = dir.join(DB_FILE);
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(&path, flags).map_err(err(&path))?;
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err(&path))?;
    if write {
        // WAL: readers never block the writer; FULL: each commit is fsynced (WAL and,
        // at checkpoints, the database) before it returns; secure_delete: deleted
        // content is overwritten, not left in free pages.
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(err(&path))?;
        c.pragma_update(None, "synchronous", "FULL")
            .map_err(err(&path))?;
        c.pragma_update(None, "secure_delete", "ON")
            .map_err(err(&path))?;
    }
    c.pragma_update(None, "foreign_keys", "OFF")
        .map_err(err(&path))?;
    Ok(c)
}

/// Create the schema and write the identity (a new store).
pub fn init(c: &Connection, path: &Path, meta: &[(&str, String)]) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA).map_err(err(path))?;
    c.execute_batch(SCHEMA_V3).map_err(err(path))?;
    c.execute_batch(SCHEMA_V4).map_err(err(path))?;
    let mut st = c
        .prepare("INSERT INTO meta(key, value) VALUES (?1, ?2)")
        .map_err(err(path))?;
    for (k, v) in meta {
        st.execute(params![k, v]).map_err(err(path))?;
    }
    Ok(())
}

/// Every meta entry.
pub fn meta(c: &Connection, path: &Path) -> Result<Vec<(String, String)>, StoreError> {
    let mut st = c.prepare("SELECT key, value FROM meta").map_err(|e| {
        StoreError::Damaged(format!(
            "{}: not a sen store database ({e}); create one with `sen store create`",
            path.display()
        ))
    })?;
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(err(path))?
        .collect::<Result<Vec<(String, String)>, _>>()
        .map_err(err(path))?;
    Ok(rows)
}

pub fn set_meta(c: &Connection, path: &Path, key: &str, value: &str) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map_err(err(path))?;
    Ok(())
}

/// One row's metadata as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RowMeta {
    pub id: u64,
    pub camera: String,
    pub time_ms: i64,
    pub path: String,
    pub pid: Option<i64>,
    /// A JSON object, as text.
    pub attrs: Option<String>,
    pub ingest_ms: i64,
    pub crc: u32,
    /// The source's tracked-object id (format 3).
    pub track: Option<String>,
    /// `[x1, y1, x2, y2]` as JSON text.
    pub bbox: Option<String>,
    /// The entry point that added the row.
    pub source: Option<String>,
}

/// The row checksum: CRC-32 over the id, metadata and embedding bytes (storage
/// dtype). SQLite has no page checksums: this is what finds a damaged row. The crop
/// has its own ([`crop_crc`]), so a search reads no crop.
pub fn row_crc(m: &RowMeta, embedding: &[u8]) -> u32 {
    row_hasher(m, embedding).finalize()
}

/// The CRC-32 of a crop: its content type, a NUL, its bytes.
pub fn crop_crc(content_type: &str, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(content_type.as_bytes());
    h.update(&[0]);
    h.update(bytes);
    h.finalize()
}

/// Format 1's row checksum, which also covered the crop (read by the migration).
pub fn row_crc_v1(m: &RowMeta, embedding: &[u8], crop: Option<(&str, &[u8])>) -> u32 {
    let mut h = row_hasher(m, embedding);
    if let Some((ct, b)) = crop {
        h.update(ct.as_bytes());
        h.update(&[0]);
        h.update(b);
    }
    h.finalize()
}

fn row_hasher(m: &RowMeta, embedding: &[u8]) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(&m.id.to_le_bytes());
    h.update(m.camera.as_bytes());
    h.update(&[0]);
    h.update(&m.time_ms.to_le_bytes());
    h.update(m.path.as_bytes());
    h.update(&[0]);
    match m.pid {
        Some(p) => {
            h.update(&[1]);
            h.update(&p.to_le_bytes());
        }
        None => h.update(&[0]),
    }
    h.update(m.attrs.as_deref().unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(&m.ingest_ms.to_le_bytes());
    // Format 3's fields, only when the row has one: rows without them keep the
    // checksum they had.
    if m.track.is_some() || m.bbox.is_some() || m.source.is_some() {
        h.update(b"\x01tracks");
        for f in [&m.track, &m.bbox, &m.source] {
            match f {
                Some(v) => {
                    h.update(&[1]);
                    h.update(v.as_bytes());
                }
                None => h.update(&[0]),
            }
            h.update(&[0]);
        }
    }
    h.update(embedding);
    h
}

/// A row's metadata from a query of [`ROW_COLUMNS`] (or of the first eight of them,
/// from a store older than format 3).
fn row_meta(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowMeta> {
    let tracks = r.as_ref().column_count() > 8;
    let opt =
        |i: usize| -> rusqlite::Result<Option<String>> { if tracks { r.get(i) } else { Ok(None) } };
    Ok(RowMeta {
        id: r.get::<_, i64>(0)? as u64,
        camera: r.get(1)?,
        time_ms: r.get(2)?,
        path: r.get(3)?,
        pid: r.get(4)?,
        attrs: r.get(5)?,
        ingest_ms: r.get(6)?,
        crc: r.get::<_, i64>(7)? as u32,
        track: opt(8)?,
        bbox: opt(9)?,
        source: opt(10)?,
    })
}

const ROW_COLUMNS: &str =
    "id, camera, time_ms, path, pid, attrs, ingest_ms, crc, track, bbox, source";
/// The columns formats 1 and 2 have.
const ROW_COLUMNS_V2: &str = "id, camera, time_ms, path, pid, attrs, ingest_ms, crc";

pub fn row(c: &Connection, path: &Path, id: u64) -> Result<Option<RowMeta>, StoreError> {
    c.prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM rows WHERE id = ?1"))
        .map_err(err(path))?
        .query_row([id as i64], row_meta)
        .optional()
        .map_err(err(path))
}

/// A stored crop: content type, bytes and checksum ([`crop_crc`]).
pub type StoredCrop = (String, Vec<u8>, u32);

/// A crop as format 1 stored it (no checksum of its own): content type and bytes.
pub fn crop_v1(
    c: &Connection,
    path: &Path,
    id: u64,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    c.prepare_cached("SELECT content_type, bytes FROM crops WHERE id = ?1")
        .map_err(err(path))?
        .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(err(path))
}

pub fn crop(c: &Connection, path: &Path, id: u64) -> Result<Option<StoredCrop>, StoreError> {
    c.prepare_cached("SELECT content_type, bytes, crc FROM crops WHERE id = ?1")
        .map_err(err(path))?
        .query_row([id as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u32))
        })
        .optional()
        .map_err(err(path))
}

/// Every row's metadata in id order, to `f` (verify, migrations); `version` is the
/// store's format (the columns differ before 3).
pub fn for_each_row(
    c: &Connection,
    path: &Path,
    version: u32,
    mut f: impl FnMut(RowMeta) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let cols = if version >= 3 {
        ROW_COLUMNS
    } else {
        ROW_COLUMNS_V2
    };
    let mut st = c
        .prepare(&format!("SELECT {cols} FROM rows ORDER BY id"))
        .map_err(err(path))?;
    let mut rows = st.query([]).map_err(err(path))?;
    while let Some(r) = rows.next().map_err(err(path))? {
        f(row_meta(r).map_err(err(path))?)?;
    }
    Ok(())
}

/// A row to insert (the embedding already in the storage dtype's bytes).
pub struct Insert<'a> {
    pub meta: &'a RowMeta,
    pub embedding: &'a [u8],
    pub crop: Option<(&'a str, &'a [u8])>,
}

/// Insert rows (their ids assigned by the caller), their pending embeddings and crops,
/// one `add` change for the id range, and the camera summary. Inside the caller's
/// transaction.
pub fn insert_rows(
    c: &Connection,
    path: &Path,
    rows: &[Insert<'_>],
    now: i64,
) -> Result<(), StoreError> {
    let e = err(path);
    {
        let mut ins = c
            .prepare_cached(
                "INSERT INTO rows(id, camera, time_ms, path, pid, attrs, ingest_ms, crc, track, bbox, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .map_err(&e)?;
        let mut pend = c
            .prepare_cached("INSERT INTO pending(id, embedding) VALUES (?1, ?2)")
            .map_err(&e)?;
        let mut crop = c
            .prepare_cached(
                "INSERT INTO crops(id, content_type, bytes, crc) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(&e)?;
        for r in rows {
            let m = r.meta;
            ins.execute(params![
                m.id as i64,
                m.camera,
                m.time_ms,
                m.path,
                m.pid,
                m.attrs,
                m.ingest_ms,
                m.crc as i64,
                m.track,
                m.bbox,
                m.source
            ])
            .map_err(&e)?;
            pend.execute(params![m.id as i64, r.embedding])
                .map_err(&e)?;
            if let Some((ct, b)) = r.crop {
                crop.execute(params![m.id as i64, ct, b, crop_crc(ct, b) as i64])
                    .map_err(&e)?;
            }
        }
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        c.prepare_cached(
            "INSERT INTO changes(kind, first_id, last_id, at_ms) VALUES ('add', ?1, ?2, ?3)",
        )
        .map_err(&e)?
        .execute(params![first.meta.id as i64, last.meta.id as i64, now])
        .map_err(&e)?;
    }
    // Camera summary: count, first and last capture time, last ingest.
    let mut per: std::collections::BTreeMap<&str, (i64, i64, i64)> = Default::default();
    for r in rows {
        let m = r.meta;
        let s = per
            .entry(m.camera.as_str())
            .or_insert((0, i64::MAX, i64::MIN));
        s.0 += 1;
        s.1 = s.1.min(m.time_ms);
        s.2 = s.2.max(m.time_ms);
    }
    let mut up = c
        .prepare_cached(
            "INSERT INTO cameras(camera, rows, first_ms, last_ms, last_ingest_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(camera) DO UPDATE SET rows = rows + excluded.rows,
               first_ms = min(coalesce(first_ms, excluded.first_ms), excluded.first_ms),
               last_ms = max(coalesce(last_ms, excluded.last_ms), excluded.last_ms),
               last_ingest_ms = excluded.last_ingest_ms",
        )
        .map_err(&e)?;
    for (cam, (n, lo, hi)) in per {
        up.execute(params![cam, n, lo, hi, now]).map_err(&e)?;
    }
    Ok(())
}

/// Ids among `ids` that exist.
pub fn existing(c: &Connection, path: &Path, ids: &[u64]) -> Result<Vec<u64>, StoreError> {
    let mut st = c
        .prepare_cached("SELECT 1 FROM rows WHERE id = ?1")
        .map_err(err(path))?;
    let mut out = vec![];
    for &id in ids {
        if st.exists([id as i64]).map_err(err(path))? {
            out.push(id);
        }
    }
    Ok(out)
}

/// Ids of a camera's rows, in id order.
pub fn ids_of_camera(c: &Connection, path: &Path, camera: &str) -> Result<Vec<u64>, StoreError> {
    ids_where(
        c,
        path,
        "SELECT id FROM rows WHERE camera = ?1 ORDER BY id",
        &camera,
    )
}

/// Ids of the rows captured before `t` (Unix ms), in id order.
pub fn ids_before(c: &Connection, path: &Path, t: i64) -> Result<Vec<u64>, StoreError> {
    ids_where(
        c,
        path,
        "SELECT id FROM rows WHERE time_ms < ?1 ORDER BY id",
        &t,
    )
}

fn ids_where(
    c: &Connection,
    path: &Path,
    sql: &str,
    arg: &dyn rusqlite::ToSql,
) -> Result<Vec<u64>, StoreError> {
    let mut st = c.prepare(sql).map_err(err(path))?;
    let ids = st
        .query_map([arg], |r| r.get::<_, i64>(0))
        .map_err(err(path))?
        .map(|r| r.map(|v| v as u64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err(path))?;
    Ok(ids)
}

/// Delete rows (metadata, crops, pending embeddings), record their tombstones (one
/// `delete` change each) and which of them are still in segments (`dead`, until
/// compaction), and recount the cameras they were on. Inside the caller's transaction.
pub fn delete_rows(
    c: &Connection,
    path: &Path,
    ids: &[u64],
    in_segment: &dyn Fn(u64) -> bool,
    now: i64,
) -> Result<(), StoreError> {
    let e = err(path);
    let mut cams: std::collections::BTreeSet<String> = Default::default();
    {
        let mut cam = c
            .prepare_cached("SELECT camera FROM rows WHERE id = ?1")
            .map_err(&e)?;
        let mut del_row = c
            .prepare_cached("DELETE FROM rows WHERE id = ?1")
            .map_err(&e)?;
        let mut del_crop = c
            .prepare_cached("DELETE FROM crops WHERE id = ?1")
            .map_err(&e)?;
        let mut del_pend = c
            .prepare_cached("DELETE FROM pending WHERE id = ?1")
            .map_err(&e)?;
        let mut dead = c
            .prepare_cached("INSERT OR IGNORE INTO dead(id) VALUES (?1)")
            .map_err(&e)?;
        let mut tomb = c
            .prepare_cached(
                "INSERT INTO changes(kind, first_id, last_id, at_ms) VALUES ('delete', ?1, ?1, ?2)",
            )
            .map_err(&e)?;
        for &id in ids {
            let i = id as i64;
            if let Some(name) = cam
                .query_row([i], |r| r.get::<_, String>(0))
                .optional()
                .map_err(&e)?
            {
                cams.insert(name);
            }
            del_row.execute([i]).map_err(&e)?;
            del_crop.execute([i]).map_err(&e)?;
            del_pend.execute([i]).map_err(&e)?;
            if in_segment(id) {
                dead.execute([i]).map_err(&e)?;
            }
            tomb.execute(params![i, now]).map_err(&e)?;
        }
    }
    for cam in cams {
        recount_camera(c, path, &cam)?;
    }
    Ok(())
}

fn recount_camera(c: &Connection, path: &Path, cam: &str) -> Result<(), StoreError> {
    let e = err(path);
    let (n, lo, hi): (i64, Option<i64>, Option<i64>) = c
        .prepare_cached("SELECT count(*), min(time_ms), max(time_ms) FROM rows WHERE camera = ?1")
        .map_err(&e)?
        .query_row([cam], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(&e)?;
    if n == 0 {
        c.prepare_cached("DELETE FROM cameras WHERE camera = ?1")
            .map_err(&e)?
            .execute([cam])
            .map_err(&e)?;
    } else {
        c.prepare_cached(
            "UPDATE cameras SET rows = ?2, first_ms = ?3, last_ms = ?4 WHERE camera = ?1",
        )
        .map_err(&e)?
        .execute(params![cam, n, lo, hi])
        .map_err(&e)?;
    }
    Ok(())
}

/// One camera's summary: (camera, rows, first, last, last ingest).
pub type CameraRow = (String, u64, Option<i64>, Option<i64>, Option<i64>);

/// The per-camera summary, by name.
pub fn cameras(c: &Connection, path: &Path) -> Result<Vec<CameraRow>, StoreError> {
    let mut st = c
        .prepare(
            "SELECT camera, rows, first_ms, last_ms, last_ingest_ms FROM cameras ORDER BY camera",
        )
        .map_err(err(path))?;
    let v = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })
        .map_err(err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err(path))?;
    Ok(v)
}

/// The segment records: (file, first id, last id, count, bytes, crc a, crc b), by first id.
pub type SegmentRecord = (String, u64, u64, u64, u64, u32, u32);

pub fn segments(c: &Connection, path: &Path) -> Result<Vec<SegmentRecord>, StoreError> {
    let mut st = c
        .prepare("SELECT file, first_id, last_id, count, bytes, crc_a, crc_b FROM segments ORDER BY first_id")
        .map_err(err(path))?;
    let v = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, i64>(4)? as u64,
                r.get::<_, i64>(5)? as u32,
                r.get::<_, i64>(6)? as u32,
            ))
        })
        .map_err(err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err(path))?;
    Ok(v)
}

/// One integer from `sql` (0 for no row or NULL).
/// The newest change's sequence number (0 for none yet): the highest ever assigned
/// (AUTOINCREMENT remembers it after compaction drops the rows), or the highest row.
pub fn change_seq(c: &Connection, path: &Path) -> Result<i64, StoreError> {
    Ok(scalar(c, path, "SELECT max(seq) FROM changes")?.max(scalar(
        c,
        path,
        "SELECT seq FROM sqlite_sequence WHERE name = 'changes'",
    )?))
}

pub fn scalar(c: &Connection, path: &Path, sql: &str) -> Result<i64, StoreError> {
    c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .optional()
        .map(|v| v.flatten().unwrap_or(0))
        .map_err(err(path))
}

/// What an idempotency key recorded within the last day: the ids its add got and
/// the request digest it was given with (empty for keys recorded by format 1).
pub struct Remembered {
    pub first: u64,
    pub last: u64,
    pub request: String,
}

/// The record of an idempotency key, if it was recorded within the last day.
pub fn idempotency(
    c: &Connection,
    path: &Path,
    key: &str,
    now: i64,
) -> Result<Option<Remembered>, StoreError> {
    let r: Option<(String, i64, String)> = c
        .prepare_cached("SELECT response, at_ms, request FROM idempotency WHERE key = ?1")
        .map_err(err(path))?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .map_err(err(path))?;
    match r {
        Some((resp, at, request)) if at >= now - 86_400_000 => {
            let damaged = || {
                StoreError::Damaged(format!(
                    "{}: idempotency record {key:?} is damaged",
                    path.display()
                ))
            };
            let (a, b) = resp.split_once('-').ok_or_else(damaged)?;
            match (a.parse(), b.parse()) {
                (Ok(first), Ok(last)) => Ok(Some(Remembered {
                    first,
                    last,
                    request,
                })),
                _ => Err(damaged()),
            }
        }
        _ => Ok(None),
    }
}

/// Record an idempotency key's ids and request digest (inside the add's transaction).
pub fn remember(
    c: &Connection,
    path: &Path,
    key: &str,
    request: &str,
    first: u64,
    last: u64,
    now: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO idempotency(key, response, at_ms, request) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET response = excluded.response, at_ms = excluded.at_ms,
           request = excluded.request",
    )
    .map_err(err(path))?
    .execute(params![key, format!("{first}-{last}"), now, request])
    .map_err(err(path))?;
    Ok(())
}

// ------------------------------------------------------------------ transactions

/// `BEGIN IMMEDIATE`: a write transaction (the writer; takes the write lock now).
pub fn begin_write(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch("BEGIN IMMEDIATE").map_err(err(path))
}

/// `BEGIN DEFERRED`: a read transaction (one consistent view for several reads).
pub fn begin_read(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch("BEGIN DEFERRED").map_err(err(path))
}

pub fn commit(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch("COMMIT").map_err(err(path))
}

/// Undo the open transaction (nothing to report if there is none).
pub fn rollback(c: &Connection) {
    let _ = c.execute_batch("ROLLBACK");
}

/// One job of a group commit: its own savepoint, so its failure undoes only it.
pub fn savepoint(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch("SAVEPOINT job").map_err(err(path))
}

/// Keep the job's changes ([`savepoint`]).
pub fn release(c: &Connection) {
    let _ = c.execute_batch("RELEASE job");
}

/// Undo the job's changes ([`savepoint`]), keeping the group's transaction.
pub fn rollback_job(c: &Connection) {
    let _ = c.execute_batch("ROLLBACK TO job; RELEASE job");
}

/// Whether the database takes a write lock now (readiness), without writing.
pub fn probe_write(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
        .map_err(err(path))
}

/// Checkpoint the WAL into the database and truncate it (deleted content leaves the
/// WAL's frames).
pub fn checkpoint_truncate(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(err(path))
}

/// SQLite's own consistency check: `["ok"]` when sound.
pub fn integrity_check(c: &Connection, path: &Path) -> Result<Vec<String>, StoreError> {
    let e = err(path);
    c.prepare("PRAGMA integrity_check")
        .map_err(&e)?
        .query_map([], |r| r.get(0))
        .map_err(&e)?
        .collect::<Result<_, _>>()
        .map_err(&e)
}

// ------------------------------------------------------------------ writer state

/// Rows deleted while still in a segment (until compaction), by id.
pub fn dead_ids(c: &Connection, path: &Path) -> Result<Vec<u64>, StoreError> {
    let e = err(path);
    c.prepare("SELECT id FROM dead ORDER BY id")
        .map_err(&e)?
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(&e)?
        .map(|r| r.map(|v| v as u64))
        .collect::<Result<_, _>>()
        .map_err(&e)
}

/// One row not yet in a segment: its id, embedding bytes, camera and capture time.
pub struct PendingRow {
    pub id: u64,
    pub embedding: Vec<u8>,
    pub camera: String,
    pub time_ms: i64,
}

/// Every pending row, in id order, to `f`. A pending embedding without its row
/// (possible only in a damaged store) is `camera` "" and `time_ms` 0 when
/// `with_orphans`, else left out.
pub fn for_each_pending(
    c: &Connection,
    path: &Path,
    with_orphans: bool,
    mut f: impl FnMut(PendingRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let e = err(path);
    let sql = if with_orphans {
        "SELECT p.id, p.embedding, coalesce(r.camera, ''), coalesce(r.time_ms, 0) FROM pending p LEFT JOIN rows r ON r.id = p.id ORDER BY p.id"
    } else {
        "SELECT p.id, p.embedding, r.camera, r.time_ms FROM pending p JOIN rows r ON r.id = p.id ORDER BY p.id"
    };
    let mut st = c.prepare(sql).map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        f(PendingRow {
            id: r.get::<_, i64>(0).map_err(&e)? as u64,
            embedding: r.get(1).map_err(&e)?,
            camera: r.get(2).map_err(&e)?,
            time_ms: r.get(3).map_err(&e)?,
        })?;
    }
    Ok(())
}

/// Rows, deleted rows still in segments, and rows not yet in a segment.
pub fn counts(c: &Connection, path: &Path) -> Result<(u64, u64, u64), StoreError> {
    Ok((
        scalar(c, path, "SELECT count(*) FROM rows")? as u64,
        scalar(c, path, "SELECT count(*) FROM dead")? as u64,
        scalar(c, path, "SELECT count(*) FROM pending")? as u64,
    ))
}

/// Changes after `seq`, oldest first, at most `limit`.
pub fn changes_since(
    c: &Connection,
    path: &Path,
    seq: i64,
    limit: usize,
) -> Result<Vec<crate::store::Change>, StoreError> {
    let e = err(path);
    c.prepare_cached(
        "SELECT seq, kind, first_id, last_id, at_ms FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .map_err(&e)?
    .query_map(params![seq, limit as i64], |r| {
        Ok(crate::store::Change {
            seq: r.get(0)?,
            delete: r.get::<_, String>(1)? == "delete",
            first_id: r.get::<_, i64>(2)? as u64,
            last_id: r.get::<_, i64>(3)? as u64,
            at_ms: r.get(4)?,
        })
    })
    .map_err(&e)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(&e)
}

// ------------------------------------------------------------------ segments and cleanup

/// Record a new segment file (inside the caller's transaction).
pub fn insert_segment(c: &Connection, path: &Path, s: &SegmentRecord) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO segments(file, first_id, last_id, count, bytes, crc_a, crc_b) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            s.0,
            s.1 as i64,
            s.2 as i64,
            s.3 as i64,
            s.4 as i64,
            s.5 as i64,
            s.6 as i64
        ],
    )
    .map_err(err(path))?;
    Ok(())
}

/// Forget a segment file and the deleted-row marks of its id range (compaction
/// rewrote it; inside the caller's transaction).
pub fn drop_segment(
    c: &Connection,
    path: &Path,
    file: &str,
    first: u64,
    last: u64,
) -> Result<(), StoreError> {
    let e = err(path);
    c.execute("DELETE FROM segments WHERE file = ?1", [file])
        .map_err(&e)?;
    c.execute(
        "DELETE FROM dead WHERE id BETWEEN ?1 AND ?2",
        params![first as i64, last as i64],
    )
    .map_err(&e)?;
    Ok(())
}

/// Drop ids `lo..=hi` from the pending log (they are in a segment now).
pub fn drop_pending(c: &Connection, path: &Path, lo: u64, hi: u64) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM pending WHERE id BETWEEN ?1 AND ?2",
        params![lo as i64, hi as i64],
    )
    .map_err(err(path))?;
    Ok(())
}

/// Drop the change records (tombstones included) every consumer has passed; with
/// no consumer, all of them.
pub fn drop_passed_changes(c: &Connection, path: &Path) -> Result<(), StoreError> {
    let e = err(path);
    let keep_from: Option<i64> = c
        .query_row("SELECT min(seq) FROM consumers", [], |r| r.get(0))
        .map_err(&e)?;
    match keep_from {
        Some(s) => c.execute("DELETE FROM changes WHERE seq <= ?1", [s]),
        None => c.execute("DELETE FROM changes", []),
    }
    .map_err(&e)?;
    Ok(())
}

/// Drop idempotency keys recorded before `before_ms`.
pub fn drop_idempotency_before(
    c: &Connection,
    path: &Path,
    before_ms: i64,
) -> Result<(), StoreError> {
    c.execute("DELETE FROM idempotency WHERE at_ms < ?1", [before_ms])
        .map_err(err(path))?;
    Ok(())
}

// ------------------------------------------------------------------ consumers

/// Set a consumer's cursor (registering it when new).
pub fn set_consumer(
    c: &Connection,
    path: &Path,
    name: &str,
    seq: i64,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO consumers(name, seq, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
        params![name, seq, now],
    )
    .map_err(err(path))?;
    Ok(())
}

/// A consumer's cursor, registering it at 0 when new.
pub fn consumer(c: &Connection, path: &Path, name: &str, now: i64) -> Result<i64, StoreError> {
    let e = err(path);
    c.execute(
        "INSERT OR IGNORE INTO consumers(name, seq, updated_ms) VALUES (?1, 0, ?2)",
        params![name, now],
    )
    .map_err(&e)?;
    c.query_row("SELECT seq FROM consumers WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .map_err(&e)
}

// ------------------------------------------------------------------ migrations

/// The store's format version (`meta`), 0 when absent.
pub fn format_version(c: &Connection, path: &Path) -> Result<u32, StoreError> {
    Ok(meta(c, path)?
        .into_iter()
        .find(|(k, _)| k == "format_version")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0))
}

/// Format 2's columns: the crop checksum and the idempotency request digest.
pub fn add_v2_columns(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch(
        "ALTER TABLE crops ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE idempotency ADD COLUMN request TEXT NOT NULL DEFAULT '';",
    )
    .map_err(err(path))
}

/// A pending row's embedding bytes.
pub fn pending_embedding(
    c: &Connection,
    path: &Path,
    id: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    c.prepare_cached("SELECT embedding FROM pending WHERE id = ?1")
        .map_err(err(path))?
        .query_row([id as i64], |r| r.get(0))
        .optional()
        .map_err(err(path))
}

/// Set a row's checksum and (when it has a crop) its crop's.
pub fn set_crcs(
    c: &Connection,
    path: &Path,
    id: u64,
    row: u32,
    crop: Option<u32>,
) -> Result<(), StoreError> {
    let e = err(path);
    c.prepare_cached("UPDATE rows SET crc = ?2 WHERE id = ?1")
        .map_err(&e)?
        .execute(params![id as i64, row as i64])
        .map_err(&e)?;
    if let Some(k) = crop {
        c.prepare_cached("UPDATE crops SET crc = ?2 WHERE id = ?1")
            .map_err(&e)?
            .execute(params![id as i64, k as i64])
            .map_err(&e)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ tracks

/// The row a crop from an MQTT source was added under (source, camera, track, frame
/// time), if any.
pub fn source_key(
    c: &Connection,
    path: &Path,
    source: &str,
    camera: &str,
    track: &str,
    time_ms: i64,
) -> Result<Option<u64>, StoreError> {
    c.prepare_cached(
        "SELECT id FROM rows WHERE source = ?1 AND camera = ?2 AND track = ?3 AND time_ms = ?4",
    )
    .map_err(err(path))?
    .query_row(params![source, camera, track, time_ms], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|v| v.map(|v| v as u64))
    .map_err(err(path))
}

/// The live rows of a track, by id.
pub fn track_rows(
    c: &Connection,
    path: &Path,
    camera: &str,
    track: &str,
) -> Result<Vec<u64>, StoreError> {
    let e = err(path);
    c.prepare_cached("SELECT id FROM rows WHERE camera = ?1 AND track = ?2 ORDER BY id")
        .map_err(&e)?
        .query_map(params![camera, track], |r| r.get::<_, i64>(0))
        .map_err(&e)?
        .map(|r| r.map(|v| v as u64))
        .collect::<Result<_, _>>()
        .map_err(&e)
}

/// A track's rows captured in `[from, to)` (either end open): (id, capture time).
pub fn track_times(
    c: &Connection,
    path: &Path,
    camera: &str,
    track: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Vec<(u64, i64)>, StoreError> {
    let e = err(path);
    c.prepare_cached(
        "SELECT id, time_ms FROM rows WHERE camera = ?1 AND track = ?2
           AND time_ms >= ?3 AND time_ms < ?4",
    )
    .map_err(&e)?
    .query_map(
        params![
            camera,
            track,
            from.unwrap_or(i64::MIN),
            to.unwrap_or(i64::MAX)
        ],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?)),
    )
    .map_err(&e)?
    .collect::<Result<_, _>>()
    .map_err(&e)
}

// ------------------------------------------------------------------ sources' inbox

/// One message a source received, durable until it is resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    pub id: u64,
    pub source: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub received_ms: i64,
    pub attempts: u32,
    pub next_ms: i64,
}

/// Append a message to the inbox (inside the caller's transaction); its id.
pub fn inbox_push(
    c: &Connection,
    path: &Path,
    source: &str,
    topic: &str,
    payload: &[u8],
    received_ms: i64,
) -> Result<u64, StoreError> {
    c.prepare_cached(
        "INSERT INTO inbox(source, topic, payload, received_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(err(path))?
    .execute(params![source, topic, payload, received_ms])
    .map_err(err(path))?;
    Ok(c.last_insert_rowid() as u64)
}

/// Up to `limit` of a source's entries due by `now_ms` (not waiting for a retry), in
/// arrival order.
pub fn inbox_due(
    c: &Connection,
    path: &Path,
    source: &str,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<InboxEntry>, StoreError> {
    let e = err(path);
    c.prepare_cached(
        "SELECT id, source, topic, payload, received_ms, attempts, next_ms FROM inbox
          WHERE source = ?1 AND next_ms <= ?2 ORDER BY id LIMIT ?3",
    )
    .map_err(&e)?
    .query_map(params![source, now_ms, limit as i64], |r| {
        Ok(InboxEntry {
            id: r.get::<_, i64>(0)? as u64,
            source: r.get(1)?,
            topic: r.get(2)?,
            payload: r.get(3)?,
            received_ms: r.get(4)?,
            attempts: r.get::<_, i64>(5)? as u32,
            next_ms: r.get(6)?,
        })
    })
    .map_err(&e)?
    .collect::<Result<_, _>>()
    .map_err(&e)
}

/// Entries of a source waiting, and when the earliest retry is due (for the status).
pub fn inbox_depth(c: &Connection, path: &Path, source: &str) -> Result<u64, StoreError> {
    c.prepare_cached("SELECT count(*) FROM inbox WHERE source = ?1")
        .map_err(err(path))?
        .query_row([source], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(err(path))
}

/// Remove a resolved entry (inside the transaction that stored its crop or its skip).
pub fn inbox_remove(c: &Connection, path: &Path, id: u64) -> Result<(), StoreError> {
    c.prepare_cached("DELETE FROM inbox WHERE id = ?1")
        .map_err(err(path))?
        .execute([id as i64])
        .map_err(err(path))?;
    Ok(())
}

/// Put an entry back for a later try.
pub fn inbox_retry(
    c: &Connection,
    path: &Path,
    id: u64,
    attempts: u32,
    next_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE inbox SET attempts = ?2, next_ms = ?3, last_error = ?4 WHERE id = ?1")
        .map_err(err(path))?
        .execute(params![id as i64, attempts as i64, next_ms, error])
        .map_err(err(path))?;
    Ok(())
}

/// Count a skip of a source's message by its reason.
pub fn count_skip(
    c: &Connection,
    path: &Path,
    source: &str,
    reason: &str,
    detail: &str,
    now: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO source_skips(source, reason, count, last_ms, last_detail) VALUES (?1, ?2, 1, ?3, ?4)
         ON CONFLICT(source, reason) DO UPDATE SET count = count + 1, last_ms = excluded.last_ms,
           last_detail = excluded.last_detail",
    )
    .map_err(err(path))?
    .execute(params![source, reason, now, detail])
    .map_err(err(path))?;
    Ok(())
}

/// A source's skips: (reason, count, last detail), by reason.
pub fn skips(
    c: &Connection,
    path: &Path,
    source: &str,
) -> Result<Vec<(String, u64, Option<String>)>, StoreError> {
    let e = err(path);
    c.prepare_cached(
        "SELECT reason, count, last_detail FROM source_skips WHERE source = ?1 ORDER BY reason",
    )
    .map_err(&e)?
    .query_map([source], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
    })
    .map_err(&e)?
    .collect::<Result<_, _>>()
    .map_err(&e)
}

/// A source's durable cursor (e.g. the end time up to which a backfill has looked).
pub fn source_cursor(c: &Connection, path: &Path, source: &str) -> Result<Option<i64>, StoreError> {
    c.prepare_cached("SELECT cursor_ms FROM source_state WHERE source = ?1")
        .map_err(err(path))?
        .query_row([source], |r| r.get(0))
        .optional()
        .map_err(err(path))
}

pub fn set_source_cursor(
    c: &Connection,
    path: &Path,
    source: &str,
    cursor_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO source_state(source, cursor_ms) VALUES (?1, ?2)
         ON CONFLICT(source) DO UPDATE SET cursor_ms = max(cursor_ms, excluded.cursor_ms)",
    )
    .map_err(err(path))?
    .execute(params![source, cursor_ms])
    .map_err(err(path))?;
    Ok(())
}

/// Record a source's item as done (it ended at `end_ms`), move the source's cursor to
/// its end, and forget items that ended a week before the cursor.
pub fn set_done(
    c: &Connection,
    path: &Path,
    source: &str,
    item: &str,
    end_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO source_done(source, item, end_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(source, item) DO UPDATE SET end_ms = excluded.end_ms",
    )
    .map_err(err(path))?
    .execute(params![source, item, end_ms])
    .map_err(err(path))?;
    set_source_cursor(c, path, source, end_ms)?;
    c.prepare_cached("DELETE FROM source_done WHERE source = ?1 AND end_ms < ?2 - 7 * 86400000")
        .map_err(err(path))?
        .execute(params![source, end_ms])
        .map_err(err(path))?;
    Ok(())
}

/// Whether a source's item is done with.
pub fn is_done(c: &Connection, path: &Path, source: &str, item: &str) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT 1 FROM source_done WHERE source = ?1 AND item = ?2")
        .map_err(err(path))?
        .query_row(params![source, item], |_| Ok(()))
        .optional()
        .map(|v| v.is_some())
        .map_err(err(path))
}

/// Format 3's schema, added by its migration.
pub fn add_v3_schema(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch(
        "ALTER TABLE rows ADD COLUMN track TEXT;
         ALTER TABLE rows ADD COLUMN bbox TEXT;
         ALTER TABLE rows ADD COLUMN source TEXT;",
    )
    .map_err(err(path))?;
    c.execute_batch(SCHEMA_V3).map_err(err(path))
}

/// 3 -> 4: the watches table.
pub fn add_v4_schema(c: &Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA_V4).map_err(err(path))
}

// ------------------------------------------------------------------ watches

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("watch fields serialise")
}

/// Store a watch; its new id.
pub fn watch_insert(
    c: &Connection,
    path: &Path,
    spec: &crate::watch::WatchSpec,
    vector: &[f32],
    now_ms: i64,
) -> Result<u64, StoreError> {
    let blob: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    c.prepare_cached(
        "INSERT INTO watches(name, query, cameras, threshold, prior, cooldown_s, created_ms, vector)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .map_err(err(path))?
    .execute(params![
        spec.name,
        json_text(&spec.query),
        spec.cameras.as_ref().map(json_text),
        json_text(&spec.threshold),
        spec.prior,
        spec.cooldown_s as i64,
        now_ms,
        blob
    ])
    .map_err(err(path))?;
    Ok(c.last_insert_rowid() as u64)
}

/// Remove a watch; whether it existed.
pub fn watch_delete(c: &Connection, path: &Path, id: u64) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached("DELETE FROM watches WHERE id = ?1")
        .map_err(err(path))?
        .execute([id as i64])
        .map_err(err(path))?;
    Ok(n > 0)
}

/// Every watch, by id (or the one with `id`).
pub fn watches(
    c: &Connection,
    path: &Path,
    id: Option<u64>,
) -> Result<Vec<crate::watch::Watch>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT id, name, query, cameras, threshold, prior, cooldown_s, created_ms, vector
             FROM watches WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
        )
        .map_err(err(path))?;
    let rows = st
        .query_map([id.map(|i| i as i64)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<f64>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Vec<u8>>(8)?,
            ))
        })
        .map_err(err(path))?;
    let mut out = vec![];
    for row in rows {
        let (id, name, query, cameras, threshold, prior, cooldown, created, blob) =
            row.map_err(err(path))?;
        let damaged = |what: &str, e: String| {
            StoreError::Damaged(format!("{}: watch {id}: {what}: {e}", path.display()))
        };
        let query = serde_json::from_str(&query).map_err(|e| damaged("query", e.to_string()))?;
        let cameras = cameras
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| damaged("cameras", e.to_string()))?;
        let threshold =
            serde_json::from_str(&threshold).map_err(|e| damaged("threshold", e.to_string()))?;
        if blob.len() % 4 != 0 {
            return Err(damaged("vector", format!("{} bytes", blob.len())));
        }
        out.push(crate::watch::Watch {
            id: id as u64,
            spec: crate::watch::WatchSpec {
                name,
                query,
                cameras,
                threshold,
                prior,
                cooldown_s: cooldown as u64,
            },
            created_ms: created,
            vector: blob
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------ alerts

/// A stored alert (SPEC §12).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: u64,
    pub watch: u64,
    pub name: String,
    pub row: u64,
    pub camera: String,
    pub track: Option<String>,
    pub time_ms: i64,
    pub score: f64,
    pub p: Option<f64>,
    pub created_ms: i64,
}

impl Alert {
    /// `{id, watch, name, row, camera, track, time, score, p, created}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "watch": self.watch, "name": self.name, "row": self.row,
            "camera": self.camera, "track": self.track,
            "time": crate::time::format(self.time_ms), "score": self.score, "p": self.p,
            "created": crate::time::format(self.created_ms),
        })
    }
}

/// When `(watch, camera, track)` last alerted (capture time).
pub fn cooldown(
    c: &Connection,
    path: &Path,
    watch: u64,
    camera: &str,
    track: &str,
) -> Result<Option<i64>, StoreError> {
    c.prepare_cached(
        "SELECT last_ms FROM watch_cooldowns WHERE watch = ?1 AND camera = ?2 AND track = ?3",
    )
    .map_err(err(path))?
    .query_row(params![watch as i64, camera, track], |r| r.get(0))
    .optional()
    .map_err(err(path))
}

pub fn set_cooldown(
    c: &Connection,
    path: &Path,
    watch: u64,
    camera: &str,
    track: &str,
    last_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO watch_cooldowns(watch, camera, track, last_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(watch, camera, track) DO UPDATE SET last_ms = excluded.last_ms",
    )
    .map_err(err(path))?
    .execute(params![watch as i64, camera, track, last_ms])
    .map_err(err(path))?;
    Ok(())
}

pub fn alert_insert(
    c: &Connection,
    path: &Path,
    a: &crate::store::matcher::NewAlert,
    now_ms: i64,
) -> Result<u64, StoreError> {
    c.prepare_cached(
        "INSERT INTO alerts(watch, name, row, camera, track, time_ms, score, p, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .map_err(err(path))?
    .execute(params![
        a.watch as i64,
        a.name,
        a.row as i64,
        a.camera,
        a.track,
        a.time_ms,
        a.score as f64,
        a.p,
        now_ms
    ])
    .map_err(err(path))?;
    Ok(c.last_insert_rowid() as u64)
}

#[allow(clippy::too_many_arguments)]
pub fn alerts(
    c: &Connection,
    path: &Path,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    watch: Option<u64>,
    after: u64,
    limit: usize,
) -> Result<Vec<Alert>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT id, watch, name, row, camera, track, time_ms, score, p, created_ms FROM alerts
             WHERE (?1 IS NULL OR created_ms >= ?1) AND (?2 IS NULL OR created_ms < ?2)
               AND (?3 IS NULL OR watch = ?3) AND id > ?5
             ORDER BY id LIMIT ?4",
        )
        .map_err(err(path))?;
    let rows = st
        .query_map(
            params![
                from_ms,
                to_ms,
                watch.map(|w| w as i64),
                limit as i64,
                after as i64
            ],
            |r| {
                Ok(Alert {
                    id: r.get::<_, i64>(0)? as u64,
                    watch: r.get::<_, i64>(1)? as u64,
                    name: r.get(2)?,
                    row: r.get::<_, i64>(3)? as u64,
                    camera: r.get(4)?,
                    track: r.get(5)?,
                    time_ms: r.get(6)?,
                    score: r.get(7)?,
                    p: r.get(8)?,
                    created_ms: r.get(9)?,
                })
            },
        )
        .map_err(err(path))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err(path))
}

/// Remove the alerts of deleted rows (in the deleting transaction).
pub fn alerts_delete_rows(c: &Connection, path: &Path, ids: &[u64]) -> Result<(), StoreError> {
    let mut st = c
        .prepare_cached("DELETE FROM alerts WHERE row = ?1")
        .map_err(err(path))?;
    for id in ids {
        st.execute([*id as i64]).map_err(err(path))?;
    }
    Ok(())
}

/// The last alert id a sink confirmed (0: none yet). A sink seen for the first time
/// starts after the newest alert: it is not sent the history.
pub fn alert_cursor(c: &Connection, path: &Path, sink: &str) -> Result<u64, StoreError> {
    let have: Option<i64> = c
        .prepare_cached("SELECT delivered FROM alert_sinks WHERE sink = ?1")
        .map_err(err(path))?
        .query_row([sink], |r| r.get(0))
        .optional()
        .map_err(err(path))?;
    if let Some(d) = have {
        return Ok(d as u64);
    }
    let newest: i64 = c
        .prepare_cached("SELECT coalesce(max(id), 0) FROM alerts")
        .map_err(err(path))?
        .query_row([], |r| r.get(0))
        .map_err(err(path))?;
    set_alert_cursor(c, path, sink, newest as u64)?;
    Ok(newest as u64)
}

pub fn set_alert_cursor(
    c: &Connection,
    path: &Path,
    sink: &str,
    id: u64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO alert_sinks(sink, delivered) VALUES (?1, ?2)
         ON CONFLICT(sink) DO UPDATE SET delivered = max(delivered, excluded.delivered)",
    )
    .map_err(err(path))?
    .execute(params![sink, id as i64])
    .map_err(err(path))?;
    Ok(())
}

/// An alert a sink gave up on (after its retries), with why.
pub fn alert_failed(
    c: &Connection,
    path: &Path,
    sink: &str,
    alert: u64,
    error: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO alert_failures(alert, sink, error, at_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(err(path))?
    .execute(params![alert as i64, sink, error, now_ms])
    .map_err(err(path))?;
    Ok(())
}

/// How many alerts each sink gave up on.
pub fn alert_failures(c: &Connection, path: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    let mut st = c
        .prepare_cached("SELECT sink, count(*) FROM alert_failures GROUP BY sink ORDER BY sink")
        .map_err(err(path))?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map_err(err(path))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err(path))
}

/// The newest alert's id (0: none).
pub fn newest_alert(c: &Connection, path: &Path) -> Result<u64, StoreError> {
    c.prepare_cached("SELECT coalesce(max(id), 0) FROM alerts")
        .map_err(err(path))?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
        .map_err(err(path))
}
