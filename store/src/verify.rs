//! `sen store verify` (everything checked) and `sen store snapshot` (a consistent
//! copy while a writer runs).
//!
//! What [`crate::Store::open`] checks is cheap: the SQLite header, the store's
//! identity, every segment's preamble, header, sizes and metadata-column CRC, and that
//! each segment matches its database record. [`verify`] reads everything: SQLite's
//! `integrity_check`, every segment's embedding CRC, every row's checksum (metadata,
//! embedding and crop), and that segments, pending rows, deletions and metadata agree.

use crate::db;
use crate::error::StoreError;
use crate::segment::Segment;
use crate::store::SEGMENTS_DIR;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What verify found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct VerifyReport {
    pub rows: u64,
    pub segments: usize,
    pub segment_rows: u64,
    pub pending_rows: u64,
    pub deleted_pending: u64,
    pub bytes_checked: u64,
    /// Every problem, each naming the file or row; empty when the store is sound.
    pub problems: Vec<String>,
    /// Files no committed state refers to (left by a crash; the writer removes them).
    pub strays: Vec<String>,
}

/// Check everything in the store at `dir` (read-only; safe while a writer runs: one
/// read transaction).
pub fn verify(dir: &Path) -> Result<VerifyReport, StoreError> {
    let path = dir.join(db::DB_FILE);
    if !path.is_file() {
        return Err(StoreError::Input(format!(
            "{}: no store here (no {})",
            dir.display(),
            db::DB_FILE
        )));
    }
    let c = db::open(dir, false)?;
    db::begin_read(&c, &path)?;
    let mut rep = VerifyReport::default();
    let integrity = db::integrity_check(&c, &path)?;
    if integrity != ["ok"] {
        rep.problems.extend(
            integrity
                .into_iter()
                .map(|m| format!("{}: SQLite integrity_check: {m}", path.display())),
        );
    }
    let meta: HashMap<String, String> = db::meta(&c, &path)?.into_iter().collect();
    let crops = meta.get("crops").is_some_and(|v| v == "true");
    // Format 1 checked the crop with the row; later formats give it its own checksum.
    let version: u32 = meta
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let v1 = version == 1;
    let f16 = meta.get("storage").is_some_and(|v| v == "f16");
    let uuid = meta.get("uuid").cloned().unwrap_or_default();
    // Segments: each file opens, its embeddings match their CRC, it matches its record.
    let mut where_is: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut segs: Vec<Segment> = vec![];
    let known: HashSet<String> = db::segments(&c, &path)?
        .iter()
        .map(|s| s.0.clone())
        .collect();
    for (file, first, last, count, _bytes, _a, crc_b) in db::segments(&c, &path)? {
        let p = dir.join(SEGMENTS_DIR).join(&file);
        match Segment::open(&p).and_then(|s| s.verify().map(|_| s)) {
            Ok(s) => {
                if s.header.first_id != first
                    || s.header.last_id != last
                    || s.len() as u64 != count
                    || s.crc_b != crc_b
                    || s.header.store_uuid != uuid
                {
                    rep.problems.push(format!(
                        "{}: does not match the database's record of it",
                        p.display()
                    ));
                }
                rep.bytes_checked += s.file_bytes();
                rep.segment_rows += s.len() as u64;
                let k = segs.len();
                for (i, &id) in s.ids().iter().enumerate() {
                    where_is.insert(id, (k, i));
                }
                segs.push(s);
            }
            Err(err) => rep.problems.push(err.to_string()),
        }
    }
    rep.segments = segs.len();
    if let Ok(rd) = std::fs::read_dir(dir.join(SEGMENTS_DIR)) {
        for f in rd.flatten() {
            let n = f.file_name().to_string_lossy().to_string();
            if !known.contains(&n) {
                rep.strays.push(f.path().display().to_string());
            }
        }
    }
    let dead: HashSet<u64> = db::dead_ids(&c, &path)?.into_iter().collect();
    rep.deleted_pending = dead.len() as u64;
    let mut pending: HashMap<u64, Vec<u8>> = HashMap::new();
    db::for_each_pending(&c, &path, true, |r| {
        pending.insert(r.id, r.embedding);
        Ok(())
    })?;
    rep.pending_rows = pending.len() as u64;
    // Rows: each has its embedding in exactly one place and matches its checksum.
    let mut seen: HashSet<u64> = HashSet::new();
    db::for_each_row(&c, &path, version, |m| {
        rep.rows += 1;
        seen.insert(m.id);
        let emb: Option<Vec<u8>> = match (where_is.get(&m.id), pending.get(&m.id)) {
            (Some(&(k, i)), None) => Some(segs[k].row_bytes(i).to_vec()),
            (None, Some(b)) => Some(b.clone()),
            (Some(_), Some(_)) => {
                rep.problems
                    .push(format!("row {}: in a segment and in the pending log", m.id));
                None
            }
            (None, None) => {
                rep.problems.push(format!(
                    "row {}: its embedding is in no segment and not pending",
                    m.id
                ));
                None
            }
        };
        if dead.contains(&m.id) {
            rep.problems.push(format!(
                "row {}: deleted, yet its metadata is still there",
                m.id
            ));
        }
        let crop = match (crops, v1) {
            (false, _) => None,
            // Format 1 has no crop checksum: 0, never compared.
            (true, true) => db::crop_v1(&c, &path, m.id)?.map(|(t, b)| (t, b, 0)),
            (true, false) => db::crop(&c, &path, m.id)?,
        };
        if crops && crop.is_none() {
            rep.problems
                .push(format!("row {}: its crop is missing", m.id));
        }
        if let Some(emb) = emb {
            rep.bytes_checked += emb.len() as u64 + crop.as_ref().map_or(0, |c| c.1.len() as u64);
            let crc = if v1 {
                db::row_crc_v1(
                    &m,
                    &emb,
                    crop.as_ref().map(|(t, b, _)| (t.as_str(), b.as_slice())),
                )
            } else {
                db::row_crc(&m, &emb)
            };
            if crc != m.crc {
                rep.problems.push(format!(
                    "row {}: does not match its checksum (metadata or embedding damaged)",
                    m.id
                ));
            } else if !finite(&emb, f16) {
                // Written only past the store's checks (a damaged or forged file): it
                // would score NaN in every search.
                rep.problems.push(format!(
                    "row {}: its embedding holds a value that is not finite (NaN or infinity)",
                    m.id
                ));
            }
            if !v1
                && let Some((t, b, k)) = &crop
                && db::crop_crc(t, b) != *k
            {
                rep.problems.push(format!(
                    "row {}: its crop does not match its checksum (crop damaged)",
                    m.id
                ));
            }
        }
        Ok(())
    })?;
    // Segment rows are either live (a metadata row) or deleted (in `dead`).
    for s in &segs {
        for &id in s.ids() {
            if !seen.contains(&id) && !dead.contains(&id) {
                rep.problems.push(format!(
                    "{}: row {id} has no metadata and is not recorded as deleted",
                    s.path.display()
                ));
            }
        }
    }
    for id in pending.keys() {
        if !seen.contains(id) {
            rep.problems
                .push(format!("pending row {id} has no metadata"));
        }
    }
    let _ = db::commit(&c, &path);
    Ok(rep)
}

/// Whether stored embedding bytes (f32 or f16, little-endian) are all finite.
fn finite(emb: &[u8], f16: bool) -> bool {
    if f16 {
        emb.chunks_exact(2)
            .all(|b| half::f16::from_le_bytes([b[0], b[1]]).is_finite())
    } else {
        emb.chunks_exact(4)
            .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
    }
}

/// Copy the store at `dir` into `out` (missing or empty) consistently while a writer
/// may be working: the database through SQLite's backup API (one read transaction),
/// then the segment files that copy refers to (hard links where possible). If a
/// compaction removed one of them meanwhile, the copy starts again.
pub fn snapshot(dir: &Path, out: &Path) -> Result<(), StoreError> {
    if !crate::io::missing_or_empty(out)? {
        return Err(StoreError::Input(format!(
            "{}: not empty; a snapshot needs a missing or empty folder",
            out.display()
        )));
    }
    let src = db::open(dir, false)?;
    for _attempt in 0..5 {
        let _ = std::fs::remove_dir_all(out);
        std::fs::create_dir_all(out.join(SEGMENTS_DIR)).map_err(|e| StoreError::io(out, e))?;
        let dst_path = out.join(db::DB_FILE);
        {
            let mut dst = rusqlite::Connection::open(&dst_path).map_err(db::err(&dst_path))?;
            let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(db::err(&dst_path))?;
            b.step(-1).map_err(db::err(&dst_path))?;
        }
        let dst = db::open(out, true)?;
        let files: Vec<String> = db::segments(&dst, &dst_path)?
            .into_iter()
            .map(|s| s.0)
            .collect();
        drop(dst);
        let mut missing = false;
        for f in &files {
            let from = dir.join(SEGMENTS_DIR).join(f);
            let to = out.join(SEGMENTS_DIR).join(f);
            if std::fs::hard_link(&from, &to).is_err() {
                match std::fs::copy(&from, &to) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        missing = true;
                        break;
                    }
                    Err(e) => return Err(StoreError::io(&from, e)),
                }
            }
        }
        if missing {
            continue;
        }
        for d in [out.join(SEGMENTS_DIR), out.to_path_buf()] {
            std::fs::File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(&d, e))?;
        }
        return Ok(());
    }
    Err(StoreError::Closed(format!(
        "{}: the store kept compacting during five snapshot attempts; try again",
        dir.display()
    )))
}
