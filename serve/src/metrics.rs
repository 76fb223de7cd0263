//! Prometheus metrics (prefix `sen_`), named after what they measure.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Requests by route (the matched path), method and status.
    pub requests: IntCounterVec,
    /// Whole-request seconds by route.
    pub duration: HistogramVec,
    /// Seconds in each stage: queue, preprocess, inference, search.
    pub stage: HistogramVec,
    /// Requests waiting per queue (text, image, search).
    pub queue_depth: IntGaugeVec,
    /// Requests per batch per queue.
    pub batch_size: HistogramVec,
    pub ingested: IntCounter,
    /// Alerts a sink delivered (confirmed), by sink.
    pub alerts_delivered: IntCounterVec,
    /// Alerts a sink gave up on after --alert-retry-for, by sink.
    pub alerts_failed: IntCounterVec,
    pub store_rows: IntGauge,
    pub store_bytes: IntGauge,
    pub retention_deleted: IntCounter,
    /// Token positions and rows given to the text encoder (their ratio is the
    /// average sequence length after trimming).
    pub text_positions: IntCounter,
    pub text_rows: IntCounter,
    pub ready: IntGauge,
    pub build_info: IntGaugeVec,
    /// Replication (`--replicate`): changes not yet in Milvus, the age of the oldest
    /// of them, rows upserted and deleted there, failed attempts, connected or not.
    pub replication_lag_changes: IntGauge,
    pub replication_lag_seconds: prometheus::Gauge,
    pub replication_rows: IntGaugeVec,
    pub replication_errors: IntGauge,
    pub replication_up: IntGauge,
    /// Connections open now, and those closed by why (done, idle, header, tls,
    /// shutdown, error).
    pub connections: IntGauge,
    pub connections_closed: IntCounterVec,
}

fn buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
    ]
}

impl Metrics {
    pub fn new() -> Metrics {
        let replication_lag_changes = IntGauge::new(
            "sen_replication_lag_changes",
            "Store changes (adds, deletes) not yet acknowledged by Milvus",
        )
        .expect("metric");
        let replication_lag_seconds = prometheus::Gauge::new(
            "sen_replication_lag_seconds",
            "Age of the oldest store change not yet in Milvus (0 when caught up)",
        )
        .expect("metric");
        let replication_rows = IntGaugeVec::new(
            Opts::new(
                "sen_replication_rows",
                "Rows replicated since start, by operation (upsert, delete)",
            ),
            &["op"],
        )
        .expect("metric");
        let replication_errors = IntGauge::new(
            "sen_replication_errors",
            "Failed replication attempts since start (each retried with backoff)",
        )
        .expect("metric");
        let replication_up = IntGauge::new(
            "sen_replication_up",
            "1 while connected to the Milvus collection",
        )
        .expect("metric");
        let connections = IntGauge::new("sen_connections", "Connections open now").expect("metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "sen_connections_closed_total",
                "Connections closed, by why: done (the client closed), idle (past --idle-timeout), header (no complete request header within --header-timeout), tls (a failed handshake), shutdown, error",
            ),
            &["reason"],
        )
        .expect("metric");
        let alerts_delivered = IntCounterVec::new(
            Opts::new(
                "sen_alerts_delivered_total",
                "Alerts a sink delivered and had confirmed (webhook 2xx, MQTT PUBACK), by sink",
            ),
            &["sink"],
        )
        .expect("metric");
        let alerts_failed = IntCounterVec::new(
            Opts::new(
                "sen_alerts_failed_total",
                "Alerts a sink gave up on after --alert-retry-for, by sink",
            ),
            &["sink"],
        )
        .expect("metric");
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sen_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sen_http_request_duration_seconds",
                "Whole request time by route",
            )
            .buckets(buckets()),
            &["route"],
        )
        .expect("metric");
        let stage = HistogramVec::new(
            HistogramOpts::new(
                "sen_stage_duration_seconds",
                "Time per stage of a request: queue (waiting for a batch), preprocess (decode and resize), inference (the encoder's batch), search (the store's batch)",
            )
            .buckets(buckets()),
            &["stage"],
        )
        .expect("metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("sen_queue_depth", "Requests waiting per batching queue"),
            &["queue"],
        )
        .expect("metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("sen_batch_size", "Requests per batch per queue")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            &["queue"],
        )
        .expect("metric");
        let ingested = IntCounter::new("sen_ingested_rows_total", "Rows acknowledged (durable)")
            .expect("metric");
        let store_rows = IntGauge::new("sen_store_rows", "Rows in the store").expect("metric");
        let store_bytes =
            IntGauge::new("sen_store_bytes", "Bytes of the store's files").expect("metric");
        let retention_deleted = IntCounter::new(
            "sen_retention_deleted_rows_total",
            "Rows deleted by --retention",
        )
        .expect("metric");
        let text_positions = IntCounter::new(
            "sen_text_positions_total",
            "Token positions given to the text encoder (after trimming to each batch's captions)",
        )
        .expect("metric");
        let text_rows =
            IntCounter::new("sen_text_rows_total", "Captions given to the text encoder")
                .expect("metric");
        let ready = IntGauge::new(
            "sen_ready",
            "1 when the bundle, engines and store are ready",
        )
        .expect("metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sen_build_info",
                "sen version, bundle image encoder sha256, provider and precision",
            ),
            &["version", "bundle_sha256", "provider", "precision"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(stage.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_size.clone()),
            Box::new(ingested.clone()),
            Box::new(store_rows.clone()),
            Box::new(store_bytes.clone()),
            Box::new(retention_deleted.clone()),
            Box::new(text_positions.clone()),
            Box::new(text_rows.clone()),
            Box::new(ready.clone()),
            Box::new(build_info.clone()),
            Box::new(replication_lag_changes.clone()),
            Box::new(replication_lag_seconds.clone()),
            Box::new(replication_rows.clone()),
            Box::new(replication_errors.clone()),
            Box::new(replication_up.clone()),
            Box::new(connections.clone()),
            Box::new(connections_closed.clone()),
            Box::new(alerts_delivered.clone()),
            Box::new(alerts_failed.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            duration,
            stage,
            queue_depth,
            batch_size,
            ingested,
            alerts_delivered,
            alerts_failed,
            store_rows,
            store_bytes,
            retention_deleted,
            text_positions,
            text_rows,
            ready,
            build_info,
            replication_lag_changes,
            replication_lag_seconds,
            replication_rows,
            replication_errors,
            replication_up,
            connections,
            connections_closed,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = vec![];
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        String::from_utf8(buf).expect("utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
