//! Store format versions and the migrations between them (SPEC §11). A store made by
//! an older sen is migrated in place when its writer opens it: every step from its
//! version to [`CURRENT`], in one SQLite transaction under the writer lock, so a crash
//! leaves it wholly at its old version or wholly at the new one. Readers never migrate:
//! an older store asks to be opened by its writer once, a newer one is refused naming
//! both versions.
//!
//! - 1 -> 2: the crop gets its own checksum (`crops.crc`), so a search checks a row
//!   without reading its crop, and the row checksum no longer covers the crop;
//!   idempotency keys record the digest of their request (`idempotency.request`;
//!   keys recorded by format 1 keep an empty digest and replay as before, for the
//!   day they are kept).
//! - 2 -> 3: tracks (SPEC §12): `track`, `bbox` and `source` on rows (null for the
//!   rows already there, whose checksums stay as they were), the unique key of a crop
//!   from an MQTT source, and the sources' durable inbox, skip counts and cursors.
//! - 3 -> 4: watches (SPEC §12), each with its query vector.
//! - 4 -> 5: the encoder identity's preprocessing (SPEC §10): the store records its
//!   bundle's `preprocess` block beside the image encoder's sha256. Stores made before
//!   are recorded as `legacy-bicubic` (every bundle then was CLIP's bicubic), so a
//!   bilinear bundle of the same weights is refused by them.

use crate::db::{self, RowMeta};
use crate::error::StoreError;
use crate::segment::Segment;
use crate::store::SEGMENTS_DIR;
use rusqlite::Connection;
use std::path::Path;

/// The format this sen writes.
pub const CURRENT: u32 = 5;

/// One step: from the version it names to the next.
type Step = fn(&Connection, &Path, &Path) -> Result<(), StoreError>;

/// Every step, in order, by the version it starts from.
const STEPS: &[(u32, Step)] = &[(1, v1_to_v2), (2, v2_to_v3), (3, v3_to_v4), (4, v4_to_v5)];

/// Refuse a store of another format than [`CURRENT`] for a reader, or one newer than
/// this sen for anyone; `Ok(true)` when the writer should migrate it.
pub fn check(version: u32, dir: &Path, writer: bool) -> Result<bool, StoreError> {
    if version > CURRENT {
        return Err(StoreError::Damaged(format!(
            "{}: store format {version} was written by a newer sen; this sen reads formats \
             up to {CURRENT}: use a newer sen",
            dir.display()
        )));
    }
    if version == 0 {
        return Err(StoreError::Damaged(format!(
            "{}: store format 0 does not exist; the database is damaged",
            dir.display()
        )));
    }
    if version < CURRENT && !writer {
        return Err(StoreError::Input(format!(
            "{}: store format {version}, and this sen reads format {CURRENT}: open the store \
             once as its writer to migrate it (`sen store migrate {}`, or `sen serve` on it)",
            dir.display(),
            dir.display()
        )));
    }
    Ok(version < CURRENT)
}

/// Migrate the store in `dir` from `version` to [`CURRENT`] in one transaction (the
/// caller holds the writer lock).
pub fn run(c: &Connection, dir: &Path, version: u32) -> Result<(), StoreError> {
    let path = dir.join(db::DB_FILE);
    let t0 = std::time::Instant::now();
    tracing::info!(
        "{}: migrating the store from format {version} to {CURRENT}",
        dir.display()
    );
    db::begin_write(c, &path)?;
    let r = (|| {
        for (from, step) in STEPS.iter().filter(|(v, _)| *v >= version) {
            step(c, dir, &path)?;
            db::set_meta(c, &path, "format_version", &(from + 1).to_string())?;
        }
        db::commit(c, &path)
    })();
    if r.is_err() {
        db::rollback(c);
    }
    r?;
    tracing::info!(
        "{}: migrated to format {CURRENT} in {:.1} s",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// 1 -> 2: separate crop checksums. Every row's format-1 checksum is checked first (a
/// damaged row stops the migration, naming it, and nothing changes).
fn v1_to_v2(c: &Connection, dir: &Path, path: &Path) -> Result<(), StoreError> {
    db::add_v2_columns(c, path)?;
    let meta: std::collections::HashMap<String, String> = db::meta(c, path)?.into_iter().collect();
    let crops = meta.get("crops").is_some_and(|v| v == "true");
    let mut segs = vec![];
    for (file, ..) in db::segments(c, path)? {
        segs.push(Segment::open(&dir.join(SEGMENTS_DIR).join(&file))?);
    }
    let mut updates: Vec<(u64, u32, Option<u32>)> = vec![];
    db::for_each_row(c, path, 2, |m: RowMeta| {
        let emb = match segs.iter().find_map(|s| s.find(m.id).map(|i| (s, i))) {
            Some((s, i)) => s.row_bytes(i).to_vec(),
            None => db::pending_embedding(c, path, m.id)?.ok_or_else(|| {
                StoreError::Damaged(format!(
                    "{}: row {} has no embedding (in no segment and not pending); the store \
                     is damaged: restore it from a snapshot before migrating",
                    dir.display(),
                    m.id
                ))
            })?,
        };
        let crop = if crops {
            db::crop(c, path, m.id)?
        } else {
            None
        };
        let old = db::row_crc_v1(
            &m,
            &emb,
            crop.as_ref().map(|(t, b, _)| (t.as_str(), b.as_slice())),
        );
        if old != m.crc {
            return Err(StoreError::Damaged(format!(
                "{}: row {} does not match its checksum; the store is damaged: run `sen store \
                 verify` and restore it from a snapshot before migrating",
                dir.display(),
                m.id
            )));
        }
        updates.push((
            m.id,
            db::row_crc(&m, &emb),
            crop.map(|(t, b, _)| db::crop_crc(&t, &b)),
        ));
        Ok(())
    })?;
    for (id, row, crop) in updates {
        db::set_crcs(c, path, id, row, crop)?;
    }
    Ok(())
}

/// 2 -> 3: tracks, source keys and the sources' inbox (no row changes).
fn v2_to_v3(c: &Connection, _dir: &Path, path: &Path) -> Result<(), StoreError> {
    db::add_v3_schema(c, path)
}

/// 3 -> 4: watches (no row changes).
fn v3_to_v4(c: &Connection, _dir: &Path, path: &Path) -> Result<(), StoreError> {
    db::add_v4_schema(c, path)
}

/// 4 -> 5: the preprocessing of the encoder identity, read as CLIP's bicubic.
fn v4_to_v5(c: &Connection, _dir: &Path, path: &Path) -> Result<(), StoreError> {
    db::set_meta(
        c,
        path,
        "preprocess",
        sen_core::preprocess::RecordedPreprocess::LEGACY,
    )
}
