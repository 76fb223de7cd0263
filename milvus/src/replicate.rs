//! Store-and-forward replication of a store into a Milvus collection.
//!
//! The store's change sequence (SPEC §11) is the log: every add and every delete has
//! a sequence number, and this target's cursor (a store consumer named by the
//! target URI) is the last one Milvus has acknowledged. A step reads the changes
//! after the cursor, upserts the added rows that are still live (keyed
//! `STORE_UUID:ID`, so a step repeated after a crash replaces rather than doubles),
//! deletes the deleted ids, and only then moves the cursor, durably, in the store.
//! The store keeps tombstones until the cursor passes them, so deletes and retention
//! reach Milvus however long it was away. A cursor at 0 (a new target) starts with
//! a full copy of the live rows (the log may have been compacted away before the
//! target was registered), then the deletes the log holds (rows an interrupted
//! earlier copy wrote may have been deleted since), then follows the changes after
//! the sequence number read before the copy.

use crate::collection::{Collection, Encoder, IndexSpec, Replica};
use crate::{MilvusError, Settings, Target};
use sen_store::Store;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where and how to replicate.
#[derive(Debug, Clone)]
pub struct Replication {
    pub target: Target,
    pub settings: Settings,
    pub box_name: String,
    /// The index a new collection gets.
    pub index: IndexSpec,
    /// Rows per upsert call.
    pub batch: usize,
}

/// What a replication is doing, for `/v1/stats` and the metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// The last change sequence number Milvus has acknowledged.
    pub cursor: AtomicI64,
    /// The store's newest change sequence number when last looked.
    pub head: AtomicI64,
    /// How old the oldest change not yet replicated is (ms; 0 when caught up).
    pub lag_ms: AtomicI64,
    pub rows_upserted: AtomicU64,
    pub rows_deleted: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicBool,
    state: Mutex<State>,
    last_error: Mutex<Option<String>>,
}

/// Where a replication is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Starting,
    Connecting,
    /// Connected, copying changes.
    Replicating,
    /// A one-off catch-up finished (`sen store replicate`).
    CaughtUp,
    /// Milvus failed or is away: retrying with backoff.
    Retrying,
    /// Stopped for good: the collection is another encoder's, or a setting is wrong.
    Refused,
    Stopped,
}

impl State {
    /// The name `/v1/stats` shows.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Connecting => "connecting",
            State::Replicating => "replicating",
            State::CaughtUp => "caught up",
            State::Retrying => "retrying",
            State::Refused => "refused",
            State::Stopped => "stopped",
        }
    }
}

impl Status {
    fn set_state(&self, s: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    pub fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// Changes the store has that Milvus has not acknowledged.
    pub fn lag_changes(&self) -> i64 {
        (self.head.load(Ordering::Relaxed) - self.cursor.load(Ordering::Relaxed)).max(0)
    }

    pub fn lag_seconds(&self) -> f64 {
        self.lag_ms.load(Ordering::Relaxed) as f64 / 1e3
    }

    /// The `replication` object of `/v1/stats`.
    pub fn json(&self, r: &Replication) -> serde_json::Value {
        serde_json::json!({
            "target": r.target.to_string(),
            "box": r.box_name,
            "state": self.state().name(),
            "connected": self.connected.load(Ordering::Relaxed),
            "cursor": self.cursor.load(Ordering::Relaxed),
            "head": self.head.load(Ordering::Relaxed),
            "lag_changes": self.lag_changes(),
            "lag_seconds": self.lag_seconds(),
            "rows_upserted": self.rows_upserted.load(Ordering::Relaxed),
            "rows_deleted": self.rows_deleted.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "last_error": self.last_error(),
        })
    }
}

/// What a catch-up did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub rows_upserted: u64,
    pub rows_deleted: u64,
    /// The cursor afterwards.
    pub cursor: i64,
    pub seconds: f64,
}

/// The store consumer a target's cursor is kept under.
pub fn consumer_name(t: &Target) -> String {
    format!("replicate {t}")
}

/// A follower flushes the collection once caught up, at most this often.
const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// Changes read per step.
const CHANGES_PER_STEP: usize = 512;

impl Replication {
    fn encoder(store: &Store) -> Encoder {
        Encoder {
            sha256: store.info().image_encoder_sha256.clone(),
            dim: store.info().dim,
        }
    }

    async fn open(&self, store: &Store, status: &Status) -> Result<Collection, MilvusError> {
        let mut c = Collection::connect(&self.target, &self.settings).await?;
        c.open_for_writing(&Self::encoder(store), &self.index)
            .await?;
        status.connected.store(true, Ordering::Relaxed);
        Ok(c)
    }

    /// Replicate until Milvus holds every change the store had when this started
    /// (`sen store replicate`). An error returns at once; the cursor keeps what was
    /// acknowledged, so running it again resumes.
    pub async fn catch_up(&self, store: &Store, status: &Status) -> Result<Report, MilvusError> {
        let t0 = Instant::now();
        let coll = self.open(store, status).await?;
        let head = store.change_seq()?;
        let mut cursor = self.start(&coll, store, status).await?;
        while cursor < head {
            let (n, c) = self.step(&coll, store, status, cursor).await?;
            cursor = c;
            if n == 0 {
                break;
            }
        }
        coll.flush().await?;
        status.set_state(State::CaughtUp);
        Ok(Report {
            rows_upserted: status.rows_upserted.load(Ordering::Relaxed),
            rows_deleted: status.rows_deleted.load(Ordering::Relaxed),
            cursor,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Follow the store until `stop` (`sen serve --replicate`), on this thread with
    /// its own runtime. Errors are logged, counted and retried with backoff (1 s
    /// doubling to 30 s); a mismatched collection stops replication (state
    /// `refused`), as nothing written there would be right.
    pub fn follow(&self, store: Arc<Store>, status: Arc<Status>, stop: Arc<AtomicBool>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                status.set_state(State::Refused);
                status.set_error(Some(format!("starting the replication runtime: {e}")));
                tracing::error!("replication to {}: cannot start: {e}", self.target);
                return;
            }
        };
        // Registered (and its tombstones kept) from now, even while Milvus is away.
        match store.consumer(&consumer_name(&self.target), None) {
            Ok(c) => status.cursor.store(c, Ordering::Relaxed),
            Err(e) => tracing::warn!("replication: reading the cursor: {e}"),
        }
        rt.block_on(async {
            let mut backoff = Duration::from_secs(1);
            let mut last_logged: Option<String> = None;
            while !stop.load(Ordering::SeqCst) {
                match self.session(&store, &status, &stop, &mut backoff).await {
                    Ok(()) => break,
                    Err(e @ (MilvusError::Mismatch(_) | MilvusError::Input(_))) => {
                        status.set_state(State::Refused);
                        status.set_error(Some(e.to_string()));
                        status.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("replication refused: {e}");
                        return;
                    }
                    Err(e) => {
                        status.connected.store(false, Ordering::Relaxed);
                        status.errors.fetch_add(1, Ordering::Relaxed);
                        status.set_state(State::Retrying);
                        let msg = e.to_string();
                        if last_logged.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(
                                "replication: {msg}; the box keeps working and its changes wait in the store; retrying in {} s",
                                backoff.as_secs()
                            );
                            last_logged = Some(msg.clone());
                        }
                        status.set_error(Some(msg));
                        let until = Instant::now() + backoff;
                        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                            // The lag keeps growing while Milvus is away: say so.
                            refresh_lag(&store, &status);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            status.set_state(State::Stopped);
        });
    }

    async fn session(
        &self,
        store: &Store,
        status: &Status,
        stop: &AtomicBool,
        backoff: &mut Duration,
    ) -> Result<(), MilvusError> {
        status.set_state(State::Connecting);
        let coll = self.open(store, status).await?;
        *backoff = Duration::from_secs(1);
        tracing::info!(
            "replication: connected to {} as box {:?}",
            self.target,
            self.box_name
        );
        status.set_state(State::Replicating);
        let mut cursor = self.start(&coll, store, status).await?;
        status.set_error(None);
        // Written since the last flush; flushed once caught up, at most every minute.
        let mut dirty = true;
        let mut flushed = Instant::now() - FLUSH_EVERY;
        while !stop.load(Ordering::SeqCst) {
            let (n, c) = self.step(&coll, store, status, cursor).await?;
            cursor = c;
            dirty |= n > 0;
            if n == 0 {
                if dirty && flushed.elapsed() >= FLUSH_EVERY {
                    coll.flush().await?;
                    (dirty, flushed) = (false, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Read (registering) the cursor; at 0, copy every live row first.
    async fn start(
        &self,
        coll: &Collection,
        store: &Store,
        status: &Status,
    ) -> Result<i64, MilvusError> {
        let name = consumer_name(&self.target);
        let cursor = store.consumer(&name, None)?;
        status.cursor.store(cursor, Ordering::Relaxed);
        if cursor > 0 {
            return Ok(cursor);
        }
        // The consumer is registered (at 0) before the head is read, so no change
        // after `head` can be dropped by compaction before a step reads it.
        let head = store.change_seq()?;
        status.head.store(head, Ordering::Relaxed);
        let uuid = store.info().uuid.clone();
        let ids = store.live_ids(0, u64::MAX);
        tracing::info!(
            "replication: copying {} rows to {} (a new target), then following changes after {head}",
            ids.len(),
            self.target
        );
        for chunk in ids.chunks(self.batch.max(1)) {
            self.upsert(coll, store, status, &uuid, chunk).await?;
        }
        // A copy interrupted earlier (a restart, an outage) may have written rows
        // deleted since: their delete changes are all in the log (the consumer has
        // held them since it was registered), so apply every delete up to `head`.
        let mut seen = 0;
        let mut deleted = vec![];
        loop {
            let chunk = store.changes_since(seen, 4096)?;
            let Some(last) = chunk.last().map(|c| c.seq) else {
                break;
            };
            deleted.extend(
                chunk
                    .iter()
                    .filter(|c| c.delete && c.seq <= head)
                    .map(|c| c.first_id),
            );
            if last >= head {
                break;
            }
            seen = last;
        }
        self.delete(coll, status, &uuid, &deleted).await?;
        if head > 0 {
            store.consumer(&name, Some(head))?;
        }
        status.cursor.store(head, Ordering::Relaxed);
        Ok(head)
    }

    /// Replicate the changes after `cursor` (at most [`CHANGES_PER_STEP`]), then move
    /// the cursor. Returns how many changes, and the new cursor.
    async fn step(
        &self,
        coll: &Collection,
        store: &Store,
        status: &Status,
        cursor: i64,
    ) -> Result<(usize, i64), MilvusError> {
        let head = store.change_seq()?;
        status.head.store(head, Ordering::Relaxed);
        let changes = store.changes_since(cursor, CHANGES_PER_STEP)?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            status.lag_ms.store(0, Ordering::Relaxed);
            return Ok((0, cursor));
        };
        status.lag_ms.store(
            (sen_store::time::now_ms() - changes[0].at_ms).max(0),
            Ordering::Relaxed,
        );
        let uuid = store.info().uuid.clone();
        let batch = self.batch.max(1);
        let mut ids: Vec<u64> = vec![];
        let mut deleted: Vec<u64> = vec![];
        for ch in &changes {
            if ch.delete {
                deleted.push(ch.first_id);
                continue;
            }
            // An added row deleted since is left out; its delete change follows.
            ids.extend(store.live_ids(ch.first_id, ch.last_id));
            while ids.len() >= batch {
                let rest = ids.split_off(batch);
                self.upsert(coll, store, status, &uuid, &ids).await?;
                ids = rest;
            }
        }
        self.upsert(coll, store, status, &uuid, &ids).await?;
        self.delete(coll, status, &uuid, &deleted).await?;
        // Acknowledged by Milvus: now (and only now) the cursor moves, durably.
        store.consumer(&consumer_name(&self.target), Some(last))?;
        status.cursor.store(last, Ordering::Relaxed);
        if last >= head {
            status.lag_ms.store(0, Ordering::Relaxed);
        }
        Ok((changes.len(), last))
    }

    async fn upsert(
        &self,
        coll: &Collection,
        store: &Store,
        status: &Status,
        uuid: &str,
        ids: &[u64],
    ) -> Result<(), MilvusError> {
        if ids.is_empty() {
            return Ok(());
        }
        let rows: Vec<Replica> = store
            .rows_with_embeddings(ids)?
            .into_iter()
            .map(|(found, embedding)| Replica { found, embedding })
            .collect();
        coll.upsert(uuid, &self.box_name, &rows).await?;
        status
            .rows_upserted
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn delete(
        &self,
        coll: &Collection,
        status: &Status,
        uuid: &str,
        ids: &[u64],
    ) -> Result<(), MilvusError> {
        if ids.is_empty() {
            return Ok(());
        }
        coll.delete(uuid, ids).await?;
        status
            .rows_deleted
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Head and lag from the store alone (while no step runs).
fn refresh_lag(store: &Store, status: &Status) {
    if let Ok(head) = store.change_seq() {
        status.head.store(head, Ordering::Relaxed);
    }
    let cursor = status.cursor.load(Ordering::Relaxed);
    if let Ok(first) = store.changes_since(cursor, 1) {
        let lag = first
            .first()
            .map_or(0, |c| (sen_store::time::now_ms() - c.at_ms).max(0));
        status.lag_ms.store(lag, Ordering::Relaxed);
    }
}
