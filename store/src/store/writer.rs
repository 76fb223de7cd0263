//! The writer thread: every add, delete, flush, compaction and cursor move runs
//! here, one at a time; adds and deletes queued together share one transaction and
//! one sync (group commit). Its [`State`] is what snapshots are made of.

use super::maintenance::{compact, flush};
use super::snapshot::{Chunk, DeadBits, Emb, Part, Snapshot, Src};
use super::*;

pub(super) type Reply<T> = SyncSender<Result<T, StoreError>>;

pub(super) enum Job {
    Add(Vec<NewRow>, Option<String>, Reply<Added>),
    Delete(Selector, Reply<usize>),
    Compact(Reply<CompactReport>),
    Flush(Reply<()>),
    Consumer(String, Option<i64>, Reply<i64>),
    Ping(Reply<()>),
}

// ------------------------------------------------------------------ writer state

/// The writer's view: everything a snapshot is made of, mutable.
pub(super) struct State {
    pub(super) dir: PathBuf,
    pub(super) info: StoreInfo,
    pub(super) next_id: u64,
    pub(super) segments: Vec<(Arc<Segment>, DeadBits)>,
    pub(super) chunks: Vec<(Arc<Chunk>, DeadBits)>,
    pub(super) cameras: Arc<Vec<String>>,
    pub(super) camera_index: HashMap<String, u32>,
}

pub(super) fn set_bit(words: &mut DeadBits, n: usize, i: usize) {
    let mut w = words
        .as_ref()
        .map_or_else(|| vec![0u64; n.div_ceil(64)], |a| a.as_ref().clone());
    w[i / 64] |= 1 << (i % 64);
    *words = Some(Arc::new(w));
}

impl State {
    pub(super) fn load(
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
        for id in db::dead_ids(c, &path)? {
            st.mark_dead(id);
        }
        // Rows not yet in a segment, in id order, as one chunk.
        let (mut ids, mut times, mut cams) = (vec![], vec![], vec![]);
        let mut bytes: Vec<u8> = vec![];
        let width = info.dim * info.storage.bytes();
        db::for_each_pending(c, &path, false, |r| {
            if r.embedding.len() != width {
                return Err(StoreError::Damaged(format!(
                    "{}: pending row {} has a {}-byte embedding, the store's rows take {width}",
                    path.display(),
                    r.id,
                    r.embedding.len()
                )));
            }
            ids.push(r.id);
            times.push(r.time_ms);
            cams.push(st.camera_number(&r.camera));
            bytes.extend_from_slice(&r.embedding);
            Ok(())
        })?;
        if !ids.is_empty() {
            let chunk = st.chunk(ids, times, cams, &bytes);
            st.push_chunk(chunk);
        }
        Ok(st)
    }

    pub(super) fn camera_number(&mut self, name: &str) -> u32 {
        if let Some(&n) = self.camera_index.get(name) {
            return n;
        }
        let n = self.cameras.len() as u32;
        Arc::make_mut(&mut self.cameras).push(name.to_string());
        self.camera_index.insert(name.to_string(), n);
        n
    }

    pub(super) fn chunk(
        &self,
        ids: Vec<u64>,
        times: Vec<i64>,
        cameras: Vec<u32>,
        bytes: &[u8],
    ) -> Chunk {
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
    pub(super) fn push_chunk(&mut self, ch: Chunk) {
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

    pub(super) fn snapshot(&self) -> Snapshot {
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
    pub(super) fn mark_dead(&mut self, id: u64) -> bool {
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

    pub(super) fn in_segment(&self, id: u64) -> bool {
        self.segments.iter().any(|(s, _)| s.find(id).is_some())
    }

    pub(super) fn pending_rows(&self) -> usize {
        self.chunks.iter().map(|(c, _)| c.ids.len()).sum()
    }

    pub(super) fn segment_name(&self, first: u64) -> String {
        format!("seg-{first:020}-{}.seg", uuid::Uuid::new_v4().simple())
    }
}

/// The embedding of a new row in the store's storage bytes.
pub(super) fn storage_bytes(v: &[f32], dtype: Storage) -> Vec<u8> {
    match dtype {
        Storage::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Storage::F16 => v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

// ------------------------------------------------------------------ writer thread

pub(super) fn publish(shared: &Shared, st: &State) {
    *shared.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(st.snapshot());
}

pub(super) fn writer_loop(shared: Arc<Shared>, c: Connection, mut st: State, rx: Receiver<Job>) {
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
                    let _ = reply.send(db::probe_write(&c, &path));
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

pub(super) enum Done {
    Added(Reply<Added>, Result<Added, StoreError>),
    Deleted(Reply<usize>, Result<usize, StoreError>),
}

/// Run adds and deletes in one transaction, each in a savepoint (one job's failure
/// undoes only that job), then commit once and answer every job.
pub(super) fn run_group(
    shared: &Shared,
    c: &Connection,
    path: &Path,
    st: &mut State,
    jobs: Vec<Job>,
) {
    if let Err(err) = db::begin_write(c, path) {
        answer_all(jobs, &err);
        return;
    }
    let now = time::now_ms();
    let next_before = st.next_id;
    let mut done = vec![];
    let mut new_chunks = vec![];
    let mut dead_ids: Vec<u64> = vec![];
    for job in jobs {
        let sp = db::savepoint(c, path);
        match job {
            Job::Add(rows, key, reply) => {
                let r = sp.and_then(|_| add_rows(c, path, st, &rows, key.as_deref(), now));
                match r {
                    Ok((added, chunk)) => {
                        db::release(c);
                        new_chunks.extend(chunk);
                        done.push(Done::Added(reply, Ok(added)));
                    }
                    Err(err) => {
                        db::rollback_job(c);
                        done.push(Done::Added(reply, Err(err)));
                    }
                }
            }
            Job::Delete(sel, reply) => {
                let r = sp.and_then(|_| delete_rows(c, path, st, &sel, now));
                match r {
                    Ok(ids) => {
                        db::release(c);
                        let n = ids.len();
                        dead_ids.extend(ids);
                        done.push(Done::Deleted(reply, Ok(n)));
                    }
                    Err(err) => {
                        db::rollback_job(c);
                        done.push(Done::Deleted(reply, Err(err)));
                    }
                }
            }
            _ => unreachable!("only adds and deletes are grouped"),
        }
    }
    if let Err(err) =
        db::set_meta(c, path, "next_id", &st.next_id.to_string()).and_then(|_| db::commit(c, path))
    {
        // Nothing of this group is durable: undo and report it to every job.
        db::rollback(c);
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
pub(super) fn clone_err(e: &StoreError) -> StoreError {
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

pub(super) fn answer_all(jobs: Vec<Job>, err: &StoreError) {
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
pub(super) fn add_rows(
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
pub(super) fn delete_rows(
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
        Selector::Camera(cam) => db::ids_of_camera(c, path, cam)?,
        Selector::Before(t) => db::ids_before(c, path, *t)?,
    };
    db::delete_rows(c, path, &ids, &|id| st.in_segment(id), now)?;
    Ok(ids)
}

/// Move a consumer's cursor (`Some`), or read it (`None`, registering it at 0).
pub(super) fn consumer(
    c: &Connection,
    path: &Path,
    name: &str,
    seq: Option<i64>,
) -> Result<i64, StoreError> {
    let now = time::now_ms();
    match seq {
        Some(s) => db::set_consumer(c, path, name, s, now).map(|_| s),
        None => db::consumer(c, path, name, now),
    }
}
