//! The writer thread: every add, delete, flush, compaction and cursor move runs
//! here, one at a time; adds and deletes queued together share one transaction and
//! one sync (group commit). Its [`State`] is what snapshots are made of.

use super::maintenance::{compact, ensure_reserve, flush, release_reserve};
use super::snapshot::{Chunk, DeadBits, Emb, Part, Snapshot, Src};
use super::*;

pub(super) type Reply<T> = SyncSender<Result<T, StoreError>>;

pub(super) enum Job {
    Add(Vec<NewRow>, Option<Idempotency>, Reply<Added>),
    Delete(Selector, Reply<usize>),
    /// Messages a source received, into the durable inbox (their ids, in order).
    Inbox(Vec<InboxMessage>, Reply<Vec<u64>>),
    /// An inbox entry resolved: its rows stored or its skip counted, the entry removed.
    Resolve(Resolve, Reply<Resolved>),
    /// An inbox entry put back for a later try: (id, attempts, due at, error).
    Retry(u64, u32, i64, String, Reply<()>),
    /// A new watch with its query vector: its id.
    WatchAdd(Box<(crate::watch::WatchSpec, Vec<f32>)>, Reply<u64>),
    /// A watch deleted: whether it existed.
    WatchDelete(u64, Reply<bool>),

    Compact(Reply<CompactReport>),
    Flush(Reply<()>),
    Consumer(String, Option<i64>, Reply<i64>),
    Ping(Reply<()>),
    /// A sink's delivery cursor: read (None), or moved to an id (with the error it
    /// gave up with, when it did).
    AlertCursor(String, Option<(u64, Option<String>)>, Reply<u64>),
    /// The score calibration `min_p` watches are judged with.
    Calibration(
        Option<Arc<sen_core::scores::bundle::ScoreCalibration>>,
        Reply<()>,
    ),
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
    /// Active watches and the score calibration (SPEC §12).
    pub(super) matcher: super::matcher::Matcher,
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
            matcher: super::matcher::Matcher::load(c, &path)?,
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

/// A maintenance job that found the disk full marks the store full (readiness).
fn note_disk<T>(shared: &Shared, r: &Result<T, StoreError>) {
    if let Err(e) = r
        && e.is_disk_full()
    {
        shared.disk_full.store(true, Ordering::SeqCst);
    }
}

pub(super) fn writer_loop(shared: Arc<Shared>, c: Connection, mut st: State, rx: Receiver<Job>) {
    let path = shared.dir.join(db::DB_FILE);
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        // Group commit: every add and delete queued right behind a grouped job joins
        // its transaction; a job of another kind waits for the next turn, so jobs run
        // in the order they were sent.
        let (run, left) = next_run(first, &rx, grouped, GROUP_MAX);
        next = left;
        if grouped(&run[0]) {
            run_group(&shared, &c, &path, &mut st, run);
        } else {
            for job in run {
                run_alone(&shared, &c, &path, &mut st, job);
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

/// The most jobs one group commit takes.
const GROUP_MAX: usize = 256;

/// The next run of jobs from `first` on: `first` alone when it is not grouped;
/// otherwise `first` and the grouped jobs already queued behind it (at most `max`).
/// The job that ended the run, when one did, comes back to start the next.
fn next_run<T>(
    first: T,
    rx: &Receiver<T>,
    grouped: impl Fn(&T) -> bool,
    max: usize,
) -> (Vec<T>, Option<T>) {
    if !grouped(&first) {
        return (vec![first], None);
    }
    let mut run = vec![first];
    while run.len() < max {
        match rx.try_recv() {
            Ok(j) if grouped(&j) => run.push(j),
            Ok(other) => return (run, Some(other)),
            Err(_) => break,
        }
    }
    (run, None)
}

/// A job that runs on its own (not in a group commit).
fn run_alone(shared: &Shared, c: &Connection, path: &Path, st: &mut State, job: Job) {
    match job {
        Job::Compact(reply) => {
            let r = compact(shared, c, path, st);
            note_disk(shared, &r);
            let _ = reply.send(r);
        }
        Job::Flush(reply) => {
            let r = flush(shared, c, path, st);
            note_disk(shared, &r);
            let _ = reply.send(r);
        }
        Job::Consumer(name, seq, reply) => {
            let _ = reply.send(consumer(c, path, &name, seq));
        }
        Job::Ping(reply) => {
            let _ = reply.send(db::probe_write(c, path));
        }
        Job::AlertCursor(sink, to, reply) => {
            let _ = reply.send(alert_cursor(c, path, &sink, to));
        }
        Job::Calibration(cal, reply) => {
            let _ = reply.send(st.matcher.set_calibration(c, path, cal));
        }
        grouped_job => run_group(shared, c, path, st, vec![grouped_job]),
    }
}

/// Whether a job joins a group commit (it writes rows or source state in the shared
/// transaction).
fn grouped(j: &Job) -> bool {
    matches!(
        j,
        Job::Add(..)
            | Job::Delete(..)
            | Job::Inbox(..)
            | Job::Resolve(..)
            | Job::Retry(..)
            | Job::WatchAdd(..)
            | Job::WatchDelete(..)
    )
}

/// One grouped job's outcome.
enum Outcome {
    Added(Result<Added, StoreError>),
    Deleted(Result<usize, StoreError>),
    Inboxed(Result<Vec<u64>, StoreError>),
    Resolved(Result<Resolved, StoreError>),
    Done(Result<(), StoreError>),
    Id(Result<u64, StoreError>),
    Existed(Result<bool, StoreError>),
}

impl Outcome {
    fn disk_full(&self) -> bool {
        match self {
            Outcome::Added(v) => v.as_ref().is_err_and(StoreError::is_disk_full),
            Outcome::Deleted(v) => v.as_ref().is_err_and(StoreError::is_disk_full),
            Outcome::Inboxed(v) => v.as_ref().is_err_and(StoreError::is_disk_full),
            Outcome::Resolved(v) => v.as_ref().is_err_and(StoreError::is_disk_full),
            Outcome::Done(v) => v.as_ref().is_err_and(StoreError::is_disk_full),
            Outcome::Id(v) => v.as_ref().is_err_and(StoreError::is_disk_full),
            Outcome::Existed(v) => v.as_ref().is_err_and(StoreError::is_disk_full),
        }
    }

    /// The failed outcome of `job` (its kind of reply).
    fn failed(job: &Job, err: StoreError) -> Outcome {
        match job {
            Job::Add(..) => Outcome::Added(Err(err)),
            Job::Delete(..) => Outcome::Deleted(Err(err)),
            Job::Inbox(..) => Outcome::Inboxed(Err(err)),
            Job::Resolve(..) => Outcome::Resolved(Err(err)),
            Job::WatchAdd(..) => Outcome::Id(Err(err)),
            Job::WatchDelete(..) => Outcome::Existed(Err(err)),
            _ => Outcome::Done(Err(err)),
        }
    }
}

/// Answer a grouped job.
fn answer(job: Job, out: Outcome) {
    match (job, out) {
        (Job::Add(_, _, r), Outcome::Added(v)) => {
            let _ = r.send(v);
        }
        (Job::Delete(_, r), Outcome::Deleted(v)) => {
            let _ = r.send(v);
        }
        (Job::Inbox(_, r), Outcome::Inboxed(v)) => {
            let _ = r.send(v);
        }
        (Job::Resolve(_, r), Outcome::Resolved(v)) => {
            let _ = r.send(v);
        }
        (Job::Retry(.., r), Outcome::Done(v)) => {
            let _ = r.send(v);
        }
        (Job::WatchAdd(_, r), Outcome::Id(v)) => {
            let _ = r.send(v);
        }
        (Job::WatchDelete(_, r), Outcome::Existed(v)) => {
            let _ = r.send(v);
        }
        _ => unreachable!("one outcome per job, of its kind"),
    }
}

fn is_delete(j: &Job) -> bool {
    matches!(j, Job::Delete(..))
}

/// Run adds and deletes in one transaction, each in a savepoint (one job's failure
/// undoes only that job), then commit once and answer every job.
///
/// On a full disk (the last write found it full) deletes run first, in their own
/// transaction, with the store's reserve released: they are what frees room, and
/// SQLite needs room in its WAL even to delete. A delete that frees room gives the
/// WAL's space back and rebuilds the reserve; the store takes rows again once it can.
pub(super) fn run_group(
    shared: &Shared,
    c: &Connection,
    path: &Path,
    st: &mut State,
    jobs: Vec<Job>,
) {
    let full = shared.disk_full.load(Ordering::SeqCst);
    let deletes = jobs.iter().filter(|j| is_delete(j)).count();
    if full && deletes > 0 && deletes < jobs.len() {
        let (dels, adds): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(is_delete);
        run_group(shared, c, path, st, dels);
        run_group(shared, c, path, st, adds);
        return;
    }
    let only_deletes = deletes == jobs.len();
    if full && only_deletes {
        make_room(shared, c, path);
    }
    let mut r = commit_group(shared, c, path, st, &jobs);
    if let Err(e) = &r
        && e.is_disk_full()
    {
        shared.disk_full.store(true, Ordering::SeqCst);
        if only_deletes && !full {
            make_room(shared, c, path);
            r = commit_group(shared, c, path, st, &jobs);
        }
        if only_deletes && r.as_ref().is_err_and(StoreError::is_disk_full) {
            r = Ok(jobs
                .iter()
                .map(|j| match j {
                    Job::Delete(sel, _) => {
                        Outcome::Deleted(delete_in_steps(shared, c, path, st, sel))
                    }
                    _ => unreachable!("only deletes"),
                })
                .collect());
        }
    }
    match r {
        Ok(outcomes) => {
            // A write just committed: the store takes writes, unless a job of this
            // group found the disk full. Said before anyone is answered, so what a
            // caller asks next sees it.
            let full_now = outcomes.iter().any(Outcome::disk_full);
            let freed = outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Deleted(Ok(n)) if *n > 0));
            if full && freed {
                // The WAL holds what the delete wrote: give its room back.
                let _ = db::checkpoint_truncate(c, path);
            }
            if full && !full_now {
                tracing::info!("{}: writes succeed again", shared.dir.display());
            }
            shared.disk_full.store(full_now, Ordering::SeqCst);
            if !full_now {
                rebuild_reserve(shared);
            }
            for (job, out) in jobs.into_iter().zip(outcomes) {
                answer(job, out);
            }
        }
        Err(err) => {
            let err = failed_commit(&err);
            for j in jobs {
                let out = Outcome::failed(&j, err.duplicate());
                answer(j, out);
            }
        }
    }
}

/// Room for a delete on a full disk: release the reserve, then checkpoint the WAL
/// into the database and truncate it. The WAL of a disk that filled up holds pages
/// its last checkpoints could not copy (the database file could not grow); until they
/// are copied the WAL cannot shrink, and a delete, which adds the pages it frees to
/// the WAL, would find no room.
fn make_room(shared: &Shared, c: &Connection, path: &Path) {
    release_reserve(shared);
    let _ = db::checkpoint_truncate(c, path);
}

/// Rebuild the disk reserve after it was released, once the file system has room
/// for it twice over (rebuilding it into the last free bytes would fill the disk
/// again), looked at most every 10 s.
fn rebuild_reserve(shared: &Shared) {
    let path = shared.dir.join(super::maintenance::RESERVE_FILE);
    let want = shared.opts.disk_reserve;
    if want == 0 || path.exists() {
        return;
    }
    let mut last = shared
        .reserve_tried
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10)) {
        return;
    }
    *last = Some(std::time::Instant::now());
    if crate::io::free_bytes(&shared.dir).is_some_and(|free| free < want.saturating_mul(2)) {
        return;
    }
    match ensure_reserve(shared) {
        Ok(()) => tracing::info!("{}: the disk reserve is back", shared.dir.display()),
        Err(e) => tracing::warn!(
            "{}: cannot rebuild the disk reserve yet ({e}); deletes on a full disk may fail",
            shared.dir.display()
        ),
    }
}

/// One transaction for the jobs (adds and deletes): each job's outcome, or the error
/// that undid all of them (nothing is durable then). On success the new state is
/// published before returning, so every acknowledgement follows visibility.
fn commit_group(
    shared: &Shared,
    c: &Connection,
    path: &Path,
    st: &mut State,
    jobs: &[Job],
) -> Result<Vec<Outcome>, StoreError> {
    db::begin_write(c, path)?;
    let now = time::now_ms();
    let next_before = st.next_id;
    let mut watches_changed = false;
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut new_chunks = vec![];
    let mut dead_ids: Vec<u64> = vec![];
    for job in jobs {
        let done = db::savepoint(c, path).and_then(|_| match job {
            Job::Add(rows, key, _) => add_rows(c, path, st, rows, key.as_ref(), now)
                .map(|(added, chunk)| (Outcome::Added(Ok(added)), chunk, vec![])),
            Job::Delete(sel, _) => delete_rows(c, path, st, sel, now)
                .map(|ids| (Outcome::Deleted(Ok(ids.len())), None, ids)),
            Job::Inbox(msgs, _) => msgs
                .iter()
                .map(|m| db::inbox_push(c, path, &m.source, &m.topic, &m.payload, m.received_ms))
                .collect::<Result<Vec<u64>, _>>()
                .map(|ids| (Outcome::Inboxed(Ok(ids)), None, vec![])),
            Job::Resolve(r, _) => resolve_entry(c, path, st, r, now)
                .map(|(done, chunk)| (Outcome::Resolved(Ok(done)), chunk, vec![])),
            Job::Retry(id, attempts, next, error, _) => {
                db::inbox_retry(c, path, *id, *attempts, *next, error)
                    .map(|_| (Outcome::Done(Ok(())), None, vec![]))
            }
            Job::WatchAdd(w, _) => db::watch_insert(c, path, &w.0, &w.1, now).map(|id| {
                watches_changed = true;
                st.matcher.add(&crate::watch::Watch {
                    id,
                    spec: w.0.clone(),
                    created_ms: now,
                    vector: w.1.clone(),
                });
                (Outcome::Id(Ok(id)), None, vec![])
            }),
            Job::WatchDelete(id, _) => db::watch_delete(c, path, *id).map(|existed| {
                watches_changed = true;
                st.matcher.remove(*id);
                (Outcome::Existed(Ok(existed)), None, vec![])
            }),
            _ => unreachable!("only grouped jobs"),
        });
        match done {
            Ok((outcome, chunk, ids)) => {
                db::release(c);
                outcomes.push(outcome);
                new_chunks.extend(chunk);
                dead_ids.extend(ids);
            }
            Err(err) if c.is_autocommit() => {
                // SQLite undid the whole transaction (it may on a full disk):
                // nothing of the group stands.
                st.next_id = next_before;
                if watches_changed {
                    reload_watches(c, path, st);
                }
                return Err(err);
            }
            Err(err) => {
                db::rollback_job(c);
                outcomes.push(Outcome::failed(job, err));
            }
        }
    }
    if let Err(err) =
        db::set_meta(c, path, "next_id", &st.next_id.to_string()).and_then(|_| db::commit(c, path))
    {
        // Nothing of this group is durable: undo it.
        db::rollback(c);
        st.next_id = next_before;
        if watches_changed {
            reload_watches(c, path, st);
        }
        return Err(err);
    }
    // Durable: make it visible (the caller then acknowledges).
    for ch in new_chunks {
        st.push_chunk(ch);
    }
    for id in dead_ids {
        st.mark_dead(id);
    }
    publish(shared, st);
    Ok(outcomes)
}

/// The watches as the database has them, after a commit that changed them failed.
fn reload_watches(c: &Connection, path: &Path, st: &mut State) {
    if let Err(e) = st.matcher.reload(c, path) {
        tracing::error!("{}: reading the watches again: {e}", path.display());
    }
}

/// The error every job of a group whose transaction failed gets: its kind kept (a
/// full disk stays a full disk), saying nothing was stored.
fn failed_commit(e: &StoreError) -> StoreError {
    let m = format!("{e} (the commit failed; nothing of this request was stored)");
    match e.duplicate() {
        StoreError::DiskFull(_) => StoreError::DiskFull(m),
        StoreError::Input(_) => StoreError::Input(m),
        StoreError::Damaged(_) => StoreError::Damaged(m),
        _ => StoreError::Closed(m),
    }
}

/// Insert one add job's rows (ids assigned here); returns the id range and the chunk
/// to publish after commit (none when the idempotency key was seen).
pub(super) fn add_rows(
    c: &Connection,
    path: &Path,
    st: &mut State,
    rows: &[NewRow],
    key: Option<&Idempotency>,
    now: i64,
) -> Result<(Added, Option<Chunk>), StoreError> {
    if let Some(k) = key
        && let Some(seen) = db::idempotency(c, path, &k.key, now)?
    {
        // Format-1 keys recorded no digest: they replay as they did.
        if !seen.request.is_empty() && seen.request != k.request {
            return Err(StoreError::Input(format!(
                "Idempotency-Key {:?} was used within the last day for another request \
                 (another body, or another API key); a new request needs a new key",
                k.key.rsplit(' ').next().unwrap_or(&k.key)
            )));
        }
        return Ok((
            Added {
                first_id: seen.first,
                last_id: seen.last,
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
            track: r.track.clone(),
            bbox: r.bbox.map(|b| bbox_text(&b)),
            source: r.source.clone(),
        })
        .collect();
    let embs: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| storage_bytes(&r.embedding, dtype))
        .collect();
    let metas: Vec<RowMeta> = metas
        .into_iter()
        .zip(rows.iter().zip(&embs))
        .map(|(mut m, (_, e))| {
            m.crc = db::row_crc(&m, e);
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
    // The alerts these rows raise, in their transaction (SPEC §12).
    st.matcher.raise(c, path, first, rows, now)?;
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
        db::remember(c, path, &k.key, &k.request, first, last, now)?;
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

/// A box as the JSON text a row keeps (and its checksum covers).
pub(super) fn bbox_text(b: &[f64; 4]) -> String {
    serde_json::Value::from(b.to_vec()).to_string()
}

/// A row's key when its source keys crops (SPEC §12): (source, camera, track, time).
fn source_key(r: &NewRow) -> Option<(&str, &str, &str, i64)> {
    let s = r.source.as_deref()?;
    let t = r.track.as_deref()?;
    KEYED_SOURCES
        .contains(&s)
        .then_some((s, r.camera.as_str(), t, r.time_ms))
}

/// Resolve an inbox entry (inside the group's transaction): add its rows whose key is
/// not stored yet, count its skip (and each duplicate, as `duplicate`), remove it.
fn resolve_entry(
    c: &Connection,
    path: &Path,
    st: &mut State,
    r: &Resolve,
    now: i64,
) -> Result<(Resolved, Option<Chunk>), StoreError> {
    let mut keep: Vec<NewRow> = Vec::with_capacity(r.rows.len());
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for row in &r.rows {
        if let Some((s, cam, t, ms)) = source_key(row)
            && (!seen.insert((s, cam, t, ms)) || db::source_key(c, path, s, cam, t, ms)?.is_some())
        {
            duplicates += 1;
            continue;
        }
        keep.push(row.clone());
    }
    let (ids, chunk) = if keep.is_empty() {
        (vec![], None)
    } else {
        let (a, chunk) = add_rows(c, path, st, &keep, None, now)?;
        ((a.first_id..=a.last_id).collect(), chunk)
    };
    if let Some(s) = &r.skip {
        db::count_skip(c, path, &r.source, &s.reason, &s.detail, now)?;
    }
    for _ in 0..duplicates {
        db::count_skip(
            c,
            path,
            &r.source,
            "duplicate",
            "the crop's key is stored",
            now,
        )?;
    }
    if let Some(f) = &r.finished {
        db::set_done(c, path, &r.source, &f.item, f.end_ms)?;
    }
    db::inbox_remove(c, path, r.inbox)?;
    Ok((Resolved { ids, duplicates }, chunk))
}

/// Resolve a delete to ids and delete them (inside the group's transaction).
pub(super) fn delete_rows(
    c: &Connection,
    path: &Path,
    st: &State,
    sel: &Selector,
    now: i64,
) -> Result<Vec<u64>, StoreError> {
    let ids = selected(c, path, sel)?;
    db::delete_rows(c, path, &ids, &|id| st.in_segment(id), now)?;
    // Erasure wins: a deleted row's alerts go with it, delivered or not.
    db::alerts_delete_rows(c, path, &ids)?;
    Ok(ids)
}

/// The ids a delete selects (ids must all exist: none is deleted otherwise).
fn selected(c: &Connection, path: &Path, sel: &Selector) -> Result<Vec<u64>, StoreError> {
    Ok(match sel {
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
    })
}

/// A delete on a full disk that the released reserve did not hold in one
/// transaction (SQLite rewrites every page it frees, `secure_delete`, so a delete
/// needs WAL room in proportion to what it frees): in steps, each its own
/// transaction, each step's WAL given back (checkpoint, truncate) before the next,
/// halving a step that still does not fit. Every step is acknowledged only as part
/// of the whole; a crash between steps leaves the earlier steps deleted (a delete
/// repeated deletes the rest).
fn delete_in_steps(
    shared: &Shared,
    c: &Connection,
    path: &Path,
    st: &mut State,
    sel: &Selector,
) -> Result<usize, StoreError> {
    let ids = selected(c, path, sel)?;
    let mut step = 256.min(ids.len()).max(1);
    let mut done = 0;
    while done < ids.len() {
        let chunk = &ids[done..(done + step).min(ids.len())];
        let r = db::begin_write(c, path).and_then(|_| {
            db::delete_rows(c, path, chunk, &|id| st.in_segment(id), time::now_ms())
                .and_then(|_| db::commit(c, path))
        });
        match r {
            Ok(()) => {
                for &id in chunk {
                    st.mark_dead(id);
                }
                publish(shared, st);
                done += chunk.len();
                // Give the WAL's room back when the file system lets the checkpoint
                // run; when it does not, the next step may still fit.
                let _ = db::checkpoint_truncate(c, path);
            }
            Err(e) => {
                db::rollback(c);
                if !e.is_disk_full() || step == 1 {
                    return Err(e);
                }
                step /= 2;
            }
        }
    }
    Ok(ids.len())
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

/// Read a sink's cursor, or move it (recording a give-up) in one transaction.
fn alert_cursor(
    c: &Connection,
    path: &Path,
    sink: &str,
    to: Option<(u64, Option<String>)>,
) -> Result<u64, StoreError> {
    db::begin_write(c, path)?;
    let r = (|| match &to {
        None => db::alert_cursor(c, path, sink),
        Some((id, failed)) => {
            if let Some(e) = failed {
                db::alert_failed(c, path, sink, *id, e, time::now_ms())?;
            }
            db::set_alert_cursor(c, path, sink, *id)?;
            Ok(*id)
        }
    })()
    .and_then(|v| db::commit(c, path).map(|_| v));
    if r.is_err() {
        db::rollback(c);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::next_run;
    use std::sync::mpsc::sync_channel;

    /// Jobs are numbers here: even ones group, odd ones run alone.
    fn runs(queued: &[u32], max: usize) -> Vec<Vec<u32>> {
        let (tx, rx) = sync_channel(queued.len());
        for j in queued {
            tx.send(*j).unwrap();
        }
        drop(tx);
        let even = |j: &u32| j.is_multiple_of(2);
        let mut out = vec![];
        let mut next = None;
        while let Some(first) = next.take().or_else(|| rx.recv().ok()) {
            let (run, left) = next_run(first, &rx, even, max);
            next = left;
            out.push(run);
        }
        out
    }

    #[test]
    fn a_job_that_runs_alone_is_never_put_in_a_group() {
        // Two lone jobs back to back ahead of grouped ones: the writer once put the
        // first lone job into a group commit, which cannot run it (CI's panic
        // "only grouped jobs" when two alert-cursor moves met).
        assert_eq!(
            runs(&[1, 3, 2, 4, 5, 6, 7, 9], 256),
            vec![
                vec![1],
                vec![3],
                vec![2, 4],
                vec![5],
                vec![6],
                vec![7],
                vec![9]
            ]
        );
    }

    #[test]
    fn runs_keep_the_order_jobs_were_sent_in_and_stop_at_the_cap() {
        assert_eq!(
            runs(&[2, 4, 6, 8, 10, 1, 12], 3),
            vec![vec![2, 4, 6], vec![8, 10], vec![1], vec![12]]
        );
        assert_eq!(runs(&[], 3), Vec::<Vec<u32>>::new());
    }
}
