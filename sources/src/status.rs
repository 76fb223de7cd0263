//! What a running source shows: Prometheus metrics (`sen_source_*`) and the state
//! `/readyz` and `/v1/stats` print (connected or not, and why; Frigate's version and
//! availability).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Metrics {
    /// Messages received, by delivery (`qos1`, `qos0`, `oversize`, `backfill`).
    pub messages: IntCounterVec,
    pub ingested: IntCounter,
    /// Crops whose key was already stored (redelivery, backfill).
    pub duplicates: IntCounter,
    /// Messages that added nothing, by reason.
    pub skipped: IntCounterVec,
    pub fetch_failures: IntCounter,
    pub fetch_seconds: Histogram,
    /// From a crop's frame time to its row being durable.
    pub lag_seconds: Histogram,
    pub inbox_depth: IntGauge,
    pub connected: IntGauge,
}

impl Metrics {
    pub fn new(registry: &Registry, source: &str) -> prometheus::Result<Metrics> {
        let label = |o: Opts| o.const_label("source", source);
        let hlabel = |o: HistogramOpts| o.const_label("source", source);
        let m = Metrics {
            messages: IntCounterVec::new(
                label(Opts::new(
                    "sen_source_messages_total",
                    "Messages a source received, by delivery (qos1, qos0, oversize, backfill)",
                )),
                &["delivery"],
            )?,
            ingested: IntCounter::with_opts(label(Opts::new(
                "sen_source_ingested_total",
                "Crops a source stored",
            )))?,
            duplicates: IntCounter::with_opts(label(Opts::new(
                "sen_source_duplicates_total",
                "Crops whose key was already stored (redelivery, backfill): added nothing",
            )))?,
            skipped: IntCounterVec::new(
                label(Opts::new(
                    "sen_source_skipped_total",
                    "Messages or crops a source skipped, by reason",
                )),
                &["reason"],
            )?,
            fetch_failures: IntCounter::with_opts(label(Opts::new(
                "sen_source_fetch_failures_total",
                "Failed fetches from the source's API (each retried with backoff)",
            )))?,
            fetch_seconds: Histogram::with_opts(hlabel(
                HistogramOpts::new(
                    "sen_source_fetch_seconds",
                    "Seconds per image fetched from the source's API",
                )
                .buckets(vec![
                    0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                ]),
            ))?,
            lag_seconds: Histogram::with_opts(hlabel(
                HistogramOpts::new(
                    "sen_source_lag_seconds",
                    "Seconds from a crop's frame time to its row being durable",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
                    300.0, 3600.0,
                ]),
            ))?,
            inbox_depth: IntGauge::with_opts(label(Opts::new(
                "sen_source_inbox_depth",
                "Messages waiting in the durable inbox",
            )))?,
            connected: IntGauge::with_opts(label(Opts::new(
                "sen_source_connected",
                "1 while connected to the MQTT broker",
            )))?,
        };
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.ingested.clone()))?;
        registry.register(Box::new(m.duplicates.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.fetch_failures.clone()))?;
        registry.register(Box::new(m.fetch_seconds.clone()))?;
        registry.register(Box::new(m.lag_seconds.clone()))?;
        registry.register(Box::new(m.inbox_depth.clone()))?;
        registry.register(Box::new(m.connected.clone()))?;
        Ok(m)
    }
}

/// The source's state for `/readyz` and `/v1/stats`.
#[derive(Default)]
pub struct State {
    pub connected: AtomicBool,
    /// The broker acknowledged the subscription on this connection: from here on
    /// whatever is published reaches the inbox (before, only the session or the
    /// backfill would bring it).
    pub subscribed: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last_error: Option<String>,
    connects: u64,
    /// Frigate's `<prefix>/available`: online, offline, stopped.
    available: Option<String>,
    version: Option<String>,
    frame_time_header: bool,
    backfill: Option<String>,
    /// Kinds of bad message already logged (each is logged once).
    logged: BTreeSet<String>,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_connected(&self, up: bool, error: Option<String>) {
        self.connected.store(up, Ordering::SeqCst);
        if !up {
            self.subscribed.store(false, Ordering::SeqCst);
        }
        let mut i = self.lock();
        if up {
            i.connects += 1;
        }
        if error.is_some() {
            i.last_error = error;
        }
    }

    pub fn set_available(&self, v: &str) {
        self.lock().available = Some(v.to_string());
    }

    pub fn set_version(&self, v: &str, header: bool) {
        let mut i = self.lock();
        i.version = Some(v.to_string());
        i.frame_time_header = header;
    }

    pub fn frame_time_header(&self) -> bool {
        self.lock().frame_time_header
    }

    pub fn saw_frame_time_header(&self) {
        self.lock().frame_time_header = true;
    }

    pub fn set_backfill(&self, v: String) {
        self.lock().backfill = Some(v);
    }

    pub fn set_error(&self, e: String) {
        self.lock().last_error = Some(e);
    }

    /// True the first time a kind of bad message is seen (log it then, count always).
    pub fn first_of(&self, kind: &str) -> bool {
        self.lock().logged.insert(kind.to_string())
    }

    pub fn json(&self) -> serde_json::Value {
        let i = self.lock();
        serde_json::json!({
            "connected": self.connected.load(Ordering::SeqCst),
            "subscribed": self.subscribed.load(Ordering::SeqCst),
            "connects": i.connects,
            "last_error": i.last_error,
            "available": i.available,
            "version": i.version,
            "frame_time_header": i.frame_time_header,
            "backfill": i.backfill,
        })
    }
}
