//! Keeping the store lean: writing pending rows to segments ([`flush`]), merging
//! segments and rewriting away deleted rows ([`compact`]), and removing segment
//! files no committed state refers to. All of it runs on the writer thread.

use super::snapshot::{DeadBits, Part, Src};
use super::writer::{State, publish};
use super::*;

/// Where files found in `segments/` that no committed state names are moved.
pub const STRAY_DIR: &str = "stray";

/// Files in `segments/` no record refers to (a crash between writing a segment and
/// committing it, or after a compaction committed and before the old files went, or
/// anything else put there): moved aside into `stray/`, never deleted, so a file the
/// database should have named is still there to examine.
pub(super) fn remove_stray_segments(
    dir: &Path,
    c: &Connection,
    fs: &dyn Durable,
) -> Result<(), StoreError> {
    let path = dir.join(db::DB_FILE);
    let known: HashSet<String> = db::segments(c, &path)?.into_iter().map(|s| s.0).collect();
    let sdir = dir.join(SEGMENTS_DIR);
    let aside = dir.join(STRAY_DIR);
    let mut moved = false;
    for e in std::fs::read_dir(&sdir).map_err(|e| StoreError::io(&sdir, e))? {
        let e = e.map_err(|e| StoreError::io(&sdir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if known.contains(&name) {
            continue;
        }
        std::fs::create_dir_all(&aside).map_err(|er| StoreError::io(&aside, er))?;
        let mut to = aside.join(&name);
        let mut n = 0;
        while to.exists() {
            n += 1;
            to = aside.join(format!("{name}.{n}"));
        }
        tracing::warn!(
            "{}: {name} is named by no committed state; moved to {}",
            sdir.display(),
            to.display()
        );
        fs.rename(&e.path(), &to)
            .map_err(|er| StoreError::io(e.path(), er))?;
        moved = true;
    }
    if moved {
        fs.sync_dir(&sdir).map_err(|e| StoreError::io(&sdir, e))?;
        fs.sync_dir(&aside).map_err(|e| StoreError::io(&aside, e))?;
    }
    Ok(())
}

/// The disk reserve's file.
pub const RESERVE_FILE: &str = "reserve";

/// Make sure `DIR/reserve` holds `opts.disk_reserve` bytes of allocated space (made
/// beside and renamed, so a crash leaves no short one); with a reserve of 0, remove it.
pub(super) fn ensure_reserve(shared: &Shared) -> Result<(), StoreError> {
    let want = shared.opts.disk_reserve;
    let path = shared.dir.join(RESERVE_FILE);
    if want == 0 {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= want) {
        return Ok(());
    }
    let tmp = shared.dir.join(format!("{RESERVE_FILE}.tmp"));
    let r = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        crate::io::allocate(&f, want)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&shared.dir)?.sync_all()
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io(&path, e));
    }
    Ok(())
}

/// Give the reserve's space back to the file system (the disk is full and a delete
/// needs room).
pub(super) fn release_reserve(shared: &Shared) {
    let path = shared.dir.join(RESERVE_FILE);
    if std::fs::remove_file(&path).is_ok() {
        tracing::warn!(
            "{}: the disk is full: released the store's reserve so deletes can run",
            shared.dir.display()
        );
    }
}

/// Write every pending row (live ones) to a new segment; then one transaction records
/// it and empties `pending`.
pub(super) fn flush(
    shared: &Shared,
    c: &Connection,
    path: &Path,
    st: &mut State,
) -> Result<(), StoreError> {
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
    db::begin_write(c, path)?;
    let r = (|| -> Result<(), StoreError> {
        record_segments(c, path, &written, &flushed)?;
        db::commit(c, path)
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
pub(super) fn undo_segments(
    shared: &Shared,
    c: &Connection,
    written: &[Written],
    err: StoreError,
) -> StoreError {
    db::rollback(c);
    for w in written {
        let _ = shared.fs.remove(&w.path);
    }
    err
}

pub(super) struct Written {
    pub(super) path: PathBuf,
    pub(super) header: SegmentHeader,
    pub(super) bytes: u64,
    pub(super) crc_a: u32,
    pub(super) crc_b: u32,
}

/// Inside the caller's transaction: record the new segments, and drop the rows they
/// now hold (`moved`, ascending ids) from the pending log.
pub(super) fn record_segments(
    c: &Connection,
    path: &Path,
    written: &[Written],
    moved: &[u64],
) -> Result<(), StoreError> {
    for w in written {
        record_segment(c, path, w)?;
    }
    if let (Some(&lo), Some(&hi)) = (moved.first(), moved.last()) {
        db::drop_pending(c, path, lo, hi)?;
    }
    Ok(())
}

pub(super) fn record_segment(c: &Connection, path: &Path, w: &Written) -> Result<(), StoreError> {
    db::insert_segment(
        c,
        path,
        &(
            w.path
                .file_name()
                .expect("file")
                .to_string_lossy()
                .to_string(),
            w.header.first_id,
            w.header.last_id,
            w.header.count as u64,
            w.bytes,
            w.crc_a,
            w.crc_b,
        ),
    )
}

/// Write the live rows of `parts` (in order) into segments of at most
/// [`SEGMENT_ROWS`] rows. `mem_cameras`: the names chunk camera numbers index.
pub(super) fn write_segments(
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
pub(super) fn compact(
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
    db::begin_write(c, path)?;
    let r = (|| -> Result<(), StoreError> {
        for &i in &old {
            let s = &st.segments[i].0;
            let file = s.path.file_name().expect("file").to_string_lossy();
            db::drop_segment(c, path, &file, s.header.first_id, s.header.last_id)?;
        }
        record_segments(c, path, &written, &pending)?;
        // Tombstones (and add records) every consumer has passed.
        db::drop_passed_changes(c, path)?;
        // Idempotency keys are kept a day.
        db::drop_idempotency_before(c, path, time::now_ms() - 86_400_000)?;
        db::commit(c, path)
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
    db::checkpoint_truncate(c, path)?;
    Ok(CompactReport {
        segments_before: before,
        segments_after: st.segments.len(),
        rows_removed: removed,
        bytes_before,
        bytes_after: st.segments.iter().map(|(s, _)| s.file_bytes()).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
