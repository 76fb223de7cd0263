//! The inbox processor: takes due entries in arrival order, a bounded number at a
//! time (entries about one item, a Frigate event, one after another), hands each to
//! its product's handler, and ends it: rows stored, or its skip recorded, in one
//! transaction with its removal; or put back for a retry with bounded backoff (0.5 s
//! doubling to 30 s) until `give_up` after it arrived, when it is skipped
//! (`fetch_failed`) with the last error.

use crate::mqtt::now_ms;
use crate::status::{Metrics, State};
use crate::{Embed, EmbedError};
use futures::future::BoxFuture;
use sen_store::{Finished, InboxEntry, NewRow, Resolve, Skip, Store, StoreError};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// What a source's handlers share.
pub struct Ctx {
    pub source: &'static str,
    pub store: Arc<Store>,
    pub embed: Arc<dyn Embed>,
    pub metrics: Arc<Metrics>,
    pub state: Arc<State>,
    /// Whether the store keeps crops.
    pub crops: bool,
    pub give_up: Duration,
    pub concurrency: usize,
    /// The largest crop taken, fetched or inline (SPEC §11's body limit).
    pub max_image: usize,
}

impl Ctx {
    /// A bad message: counted, logged once per kind with its topic.
    pub fn bad(&self, kind: &str, topic: &str, detail: &str) -> Outcome {
        if self.state.first_of(&format!("{kind} {topic}")) {
            tracing::warn!(
                "source {}: {topic}: {kind}: {detail} (skipped; this kind is logged once)",
                self.source
            );
        }
        Outcome::skip(kind, format!("{topic}: {detail}"))
    }

    /// Embed a crop; a bad image is a skip, a full queue a quick retry.
    pub async fn embed(&self, bytes: &[u8], what: &str) -> Result<Vec<f32>, Outcome> {
        match self.embed.embed(bytes.to_vec(), what.to_string()).await {
            Ok(v) => Ok(v),
            Err(EmbedError::Image(e)) => Err(Outcome::skip("bad_image", format!("{what}: {e}"))),
            Err(EmbedError::Busy) => Err(Outcome::Retry {
                reason: "busy",
                error: "the image queue is full".into(),
                quick: true,
                max_attempts: None,
            }),
            Err(EmbedError::Failed(e)) => Err(Outcome::Retry {
                reason: "embed_failed",
                error: format!("{what}: {e}"),
                quick: false,
                max_attempts: None,
            }),
        }
    }

    /// The stored crop of a row (when the store keeps crops).
    pub fn crop(&self, bytes: Vec<u8>) -> Option<sen_store::Crop> {
        self.crops.then(|| sen_store::Crop {
            content_type: sen_core::preprocess::image_content_type(&bytes)
                .unwrap_or("application/octet-stream")
                .to_string(),
            bytes,
        })
    }
}

/// How a handler ends an entry.
#[derive(Debug)]
pub enum Outcome {
    Done {
        rows: Vec<NewRow>,
        skip: Option<Skip>,
        finished: Option<Finished>,
        /// Files to remove once the rows are durable (`--crops-dir-delete`).
        cleanup: Vec<PathBuf>,
    },
    Retry {
        /// The skip reason if it never succeeds.
        reason: &'static str,
        error: String,
        /// Not the source's fault (the encoder's queue is full): retried after 200 ms,
        /// not counted as a fetch failure.
        quick: bool,
        max_attempts: Option<u32>,
    },
}

impl Outcome {
    pub fn nothing() -> Outcome {
        Outcome::Done {
            rows: vec![],
            skip: None,
            finished: None,
            cleanup: vec![],
        }
    }

    pub fn skip(reason: &str, detail: String) -> Outcome {
        Outcome::Done {
            rows: vec![],
            skip: Some(Skip {
                reason: reason.to_string(),
                detail,
            }),
            finished: None,
            cleanup: vec![],
        }
    }
}

/// A product's message handler.
pub trait Handler: Send + Sync + 'static {
    /// The item an entry is about (entries of one item run one at a time).
    fn item(&self, e: &InboxEntry) -> Option<String>;
    fn handle(self: Arc<Self>, e: InboxEntry) -> BoxFuture<'static, Outcome>;
}

#[derive(Default)]
struct Busy {
    entries: HashSet<u64>,
    items: HashSet<String>,
    /// Entries whose task ended since the last inbox query began. A query that began
    /// before an entry was resolved may still list it; it must not run twice (its
    /// crop file may be gone by then).
    ended: HashSet<u64>,
}

/// Process the inbox until `stop`.
pub async fn run(
    ctx: Arc<Ctx>,
    handler: Arc<dyn Handler>,
    inbox: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let busy = Arc::new(Mutex::new(Busy::default()));
    let done = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let room = ctx.concurrency.saturating_sub(tasks.len());
        if room > 0 {
            let store = ctx.store.clone();
            let source = ctx.source;
            let limit = ctx.concurrency * 8;
            busy.lock().unwrap_or_else(|e| e.into_inner()).ended.clear();
            let due =
                tokio::task::spawn_blocking(move || store.inbox_due(source, now_ms(), limit)).await;
            match due {
                Ok(Ok(due)) => {
                    let mut started = 0;
                    for e in due {
                        if started == room {
                            break;
                        }
                        let item = handler.item(&e);
                        {
                            let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
                            if b.entries.contains(&e.id)
                                || b.ended.contains(&e.id)
                                || item.as_ref().is_some_and(|i| b.items.contains(i))
                            {
                                continue;
                            }
                            b.entries.insert(e.id);
                            if let Some(i) = &item {
                                b.items.insert(i.clone());
                            }
                        }
                        started += 1;
                        let (ctx, handler, busy, done) =
                            (ctx.clone(), handler.clone(), busy.clone(), done.clone());
                        tasks.spawn(async move {
                            let id = e.id;
                            let out = handler.handle(e.clone()).await;
                            finish(&ctx, &e, out).await;
                            let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
                            b.entries.remove(&id);
                            b.ended.insert(id);
                            if let Some(i) = item {
                                b.items.remove(&i);
                            }
                            drop(b);
                            done.notify_one();
                        });
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!("source {}: reading the inbox: {e}", ctx.source);
                    ctx.state.set_error(format!("inbox: {e}"));
                }
                Err(e) => tracing::error!("source {}: {e}", ctx.source),
            }
        }
        tokio::select! {
            _ = inbox.notified() => {}
            _ = done.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => break,
        }
    }
    tasks.abort_all();
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Closed(e.to_string())))
}

/// End an entry by its outcome.
async fn finish(ctx: &Ctx, e: &InboxEntry, out: Outcome) {
    let store = ctx.store.clone();
    match out {
        Outcome::Done {
            rows,
            skip,
            finished,
            cleanup,
        } => {
            let times: Vec<i64> = rows.iter().map(|r| r.time_ms).collect();
            let reason = skip.as_ref().map(|s| s.reason.clone());
            let r = Resolve {
                inbox: e.id,
                source: ctx.source.to_string(),
                rows,
                skip,
                finished: finished.clone(),
            };
            let s = store.clone();
            match blocking(move || s.resolve(r)).await {
                Ok(done) => {
                    let now = now_ms();
                    ctx.metrics.ingested.inc_by(done.ids.len() as u64);
                    ctx.metrics.duplicates.inc_by(done.duplicates as u64);
                    if let Some(r) = reason {
                        ctx.metrics.skipped.with_label_values(&[&r]).inc();
                    }
                    if !done.ids.is_empty() {
                        for t in times {
                            ctx.metrics
                                .lag_seconds
                                .observe(((now - t).max(0)) as f64 / 1000.0);
                        }
                    }
                    for p in cleanup {
                        if let Err(err) = std::fs::remove_file(&p) {
                            tracing::warn!(
                                "source {}: removing {}: {err}",
                                ctx.source,
                                p.display()
                            );
                        }
                    }
                }
                // A row the store refuses (a camera name over its limit, a bad box):
                // the message is bad, not the store.
                Err(StoreError::Input(msg)) => {
                    let out = ctx.bad("invalid", &e.topic, &msg);
                    let Outcome::Done { skip, .. } = out else {
                        unreachable!()
                    };
                    let r = Resolve {
                        inbox: e.id,
                        source: ctx.source.to_string(),
                        rows: vec![],
                        skip,
                        finished,
                    };
                    match blocking(move || store.resolve(r)).await {
                        Ok(_) => ctx.metrics.skipped.with_label_values(&["invalid"]).inc(),
                        Err(err) => later(ctx, e, &format!("recording a skip: {err}"), 2000).await,
                    }
                }
                Err(err) => {
                    tracing::warn!("source {}: storing inbox entry {}: {err}", ctx.source, e.id);
                    later(ctx, e, &err.to_string(), 2000).await;
                }
            }
        }
        Outcome::Retry {
            reason,
            error,
            quick,
            max_attempts,
        } => {
            let attempts = e.attempts + if quick { 0 } else { 1 };
            if !quick {
                ctx.metrics.fetch_failures.inc();
            }
            let age = now_ms() - e.received_ms;
            let out_of_time = age > ctx.give_up.as_millis() as i64;
            if out_of_time || max_attempts.is_some_and(|m| attempts >= m) {
                tracing::warn!(
                    "source {}: {}: giving up after {attempts} tries and {:.1} s: {error}",
                    ctx.source,
                    e.topic,
                    age as f64 / 1000.0
                );
                let r = Resolve {
                    inbox: e.id,
                    source: ctx.source.to_string(),
                    rows: vec![],
                    skip: Some(Skip {
                        reason: reason.to_string(),
                        detail: error,
                    }),
                    finished: None,
                };
                match blocking(move || store.resolve(r)).await {
                    Ok(_) => ctx.metrics.skipped.with_label_values(&[reason]).inc(),
                    Err(err) => later(ctx, e, &err.to_string(), 2000).await,
                }
                return;
            }
            let delay = if quick {
                200
            } else {
                (500i64 << (attempts.saturating_sub(1)).min(6)).min(30_000)
            };
            tracing::debug!(
                "source {}: {}: try {attempts} failed ({error}); again in {delay} ms",
                ctx.source,
                e.topic
            );
            let (id, err) = (e.id, error.clone());
            if let Err(x) =
                blocking(move || store.inbox_retry(id, attempts, now_ms() + delay, &err)).await
            {
                tracing::warn!("source {}: scheduling a retry: {x}", ctx.source);
            }
        }
    }
}

/// Put an entry back after a store failure.
async fn later(ctx: &Ctx, e: &InboxEntry, error: &str, delay_ms: i64) {
    let (store, id, attempts, err) = (ctx.store.clone(), e.id, e.attempts, error.to_string());
    let _ = blocking(move || store.inbox_retry(id, attempts, now_ms() + delay_ms, &err)).await;
}
