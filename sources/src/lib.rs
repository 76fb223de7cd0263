//! Crops from the pipelines people run (SPEC §12): Frigate's tracked-object events
//! and DeepStream's `nvmsgconv` messages over MQTT, into a sen store.
//!
//! The path of a message: the broker delivers it ([`mqtt`]); it is written to the
//! store's durable inbox and only then acknowledged; the processor ([`process`]) takes
//! inbox entries, a bounded number at a time, and hands each to its product's
//! handler ([`frigate`], [`deepstream`]), which fetches or reads the crop and embeds
//! it through [`Embed`] (the service's batching queue); the entry leaves the inbox in
//! the transaction that stores its rows or records why it was skipped. A crop is
//! keyed by `(source, camera, track, frame time)`, so redelivery and backfill add
//! nothing twice.

pub mod config;
pub mod deepstream;
pub mod frigate;
pub mod mqtt;
pub mod process;
pub mod status;

pub use config::{DeepStreamConfig, FrigateAuth, FrigateConfig, Kind, MqttConfig, SourceConfig};

use anyhow::Result;
use futures::future::BoxFuture;
use sen_store::Store;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// Why a crop got no embedding.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedError {
    /// The image itself is bad (undecodable, over the size limits): skip it.
    Image(String),
    /// The encoder's queue is full: try again shortly.
    Busy,
    /// Anything else (the encoder failed, shutting down): retry with backoff.
    Failed(String),
}

/// Turns a crop (encoded image bytes) into its embedding; `what` names it in errors.
/// `sen serve` implements it with its bounded decoding pool and batching queue, so a
/// source's crops batch with HTTP ingest.
pub trait Embed: Send + Sync + 'static {
    fn embed(
        &self,
        image: Vec<u8>,
        what: String,
    ) -> BoxFuture<'static, Result<Vec<f32>, EmbedError>>;
}

/// A running source.
pub struct Source {
    pub name: &'static str,
    pub broker: String,
    pub state: Arc<status::State>,
    pub metrics: Arc<status::Metrics>,
    store: Arc<Store>,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Source {
    /// Start the source on the current Tokio runtime: the MQTT session, the inbox
    /// processor and (Frigate) the backfill.
    pub fn start(
        cfg: SourceConfig,
        store: Arc<Store>,
        embed: Arc<dyn Embed>,
        registry: &prometheus::Registry,
    ) -> Result<Source> {
        mqtt::check(&cfg.mqtt)?;
        let name = cfg.kind.name();
        let metrics = Arc::new(status::Metrics::new(registry, name)?);
        let state = Arc::new(status::State::default());
        let (stop, stopped) = watch::channel(false);
        let inbox = Arc::new(Notify::new());
        let connected = Arc::new(Notify::new());
        let ctx = Arc::new(process::Ctx {
            source: name,
            store: store.clone(),
            embed,
            metrics: metrics.clone(),
            state: state.clone(),
            crops: store.info().crops,
            give_up: cfg.give_up,
            concurrency: cfg.concurrency.max(1),
            max_image: cfg.max_payload,
        });
        let mut tasks = vec![];
        let (topics, available, handler): (Vec<String>, Option<String>, Arc<dyn process::Handler>) =
            match &cfg.kind {
                Kind::Frigate(f) => {
                    let h = Arc::new(frigate::Frigate::new(
                        f.clone(),
                        cfg.fetch_timeout,
                        ctx.clone(),
                    )?);
                    {
                        let (h, c, s) = (h.clone(), connected.clone(), stopped.clone());
                        let inbox = inbox.clone();
                        tasks.push(tokio::spawn(
                            async move { h.backfill_loop(c, inbox, s).await },
                        ));
                    }
                    (
                        vec![format!("{}/events", f.prefix)],
                        Some(format!("{}/available", f.prefix)),
                        h,
                    )
                }
                Kind::DeepStream(d) => (
                    vec![d.topic.clone()],
                    None,
                    Arc::new(deepstream::DeepStream::new(d.clone(), ctx.clone())?),
                ),
            };
        let broker = cfg.mqtt.describe();
        tracing::info!(
            "source {name}: reading {} on {broker} (client id {})",
            topics.join(", "),
            cfg.mqtt.client_id
        );
        let wiring = mqtt::Wiring {
            source: name,
            topics,
            available,
            store: store.clone(),
            state: state.clone(),
            metrics: metrics.clone(),
            inbox: inbox.clone(),
            connected,
            max_payload: cfg.max_payload,
        };
        {
            let (mq, s) = (cfg.mqtt.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = mqtt::run(mq, wiring, s).await {
                    tracing::error!("source {name}: {e:#}");
                }
            }));
        }
        tasks.push(tokio::spawn(process::run(ctx, handler, inbox, stopped)));
        Ok(Source {
            name,
            broker,
            state,
            metrics,
            store,
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Stop reading (messages not yet durable stay unacknowledged at the broker;
    /// entries in the inbox wait for the next start).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }

    /// For `/v1/stats` and `/readyz`: the connection, the inbox and the skips (durable,
    /// by reason, with the last one's detail).
    pub fn json(&self) -> serde_json::Value {
        let mut v = self.state.json();
        let o = v.as_object_mut().expect("object");
        o.insert("source".into(), self.name.into());
        o.insert("broker".into(), self.broker.clone().into());
        let depth = self.store.inbox_depth(self.name).ok();
        if let Some(d) = depth {
            self.metrics.inbox_depth.set(d as i64);
        }
        o.insert("inbox".into(), depth.into());
        o.insert("ingested".into(), self.metrics.ingested.get().into());
        o.insert("duplicates".into(), self.metrics.duplicates.get().into());
        let m = &self.metrics.messages;
        o.insert(
            "messages".into(),
            serde_json::json!({
                "qos1": m.with_label_values(&["qos1"]).get(),
                "qos0": m.with_label_values(&["qos0"]).get(),
                "oversize": m.with_label_values(&["oversize"]).get(),
                "backfill": m.with_label_values(&["backfill"]).get(),
            }),
        );
        let skipped: serde_json::Map<String, serde_json::Value> = self
            .store
            .source_skips(self.name)
            .unwrap_or_default()
            .into_iter()
            .map(|(reason, count, last)| {
                (reason, serde_json::json!({"count": count, "last": last}))
            })
            .collect();
        o.insert("skipped".into(), skipped.into());
        o.insert(
            "cursor_ms".into(),
            self.store.source_cursor(self.name).ok().flatten().into(),
        );
        v
    }

    /// Refresh the inbox-depth gauge (before a scrape).
    pub fn refresh(&self) {
        if let Ok(d) = self.store.inbox_depth(self.name) {
            self.metrics.inbox_depth.set(d as i64);
        }
    }
}
