//! `sen serve`: the flags, turned into `sen_serve::ServeConfig`.

use crate::common::ProviderArgs;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The bundle to serve (verified at start).
    #[arg(long)]
    bundle: PathBuf,
    /// The store directory; created (bound to the bundle) when missing or empty.
    #[arg(long, required_unless_present = "search_backend")]
    store: Option<PathBuf>,
    /// Also follow the store into a Milvus collection, milvus://HOST:PORT/COLLECTION
    /// (store-and-forward: the box keeps working while Milvus is away). Credentials,
    /// TLS and timeouts from SEN_MILVUS_* variables.
    #[arg(long, value_name = "URI", requires = "store")]
    replicate: Option<String>,
    #[command(flatten)]
    replica: super::store::replicate::ReplicaArgs,
    /// Run a central search node instead of a box: search this replicated collection
    /// (milvus://HOST:PORT/COLLECTION); no store, ingest routes answer 404.
    #[arg(long, value_name = "URI", conflicts_with_all = ["store", "retention", "replicate"])]
    search_backend: Option<String>,
    /// On a central node: the boxes to fetch crops from, a JSON object
    /// {"BOX": {"url": "...", "key_file": "...", "ca_cert": "..."}}.
    #[arg(long, value_name = "FILE", requires = "search_backend")]
    boxes: Option<PathBuf>,
    /// On a central node: a search parameter of the collection's index (ef=N for
    /// hnsw, nprobe=N for ivf_flat); repeat.
    #[arg(
        long = "search-param",
        value_name = "KEY=VALUE",
        requires = "search_backend"
    )]
    search_params: Vec<String>,
    /// Address to listen on (loopback unless told otherwise; port 0 picks one and the
    /// address is printed).
    #[arg(long, default_value = "127.0.0.1:8750")]
    listen: std::net::SocketAddr,
    /// API keys: lines `read KEY`, `write KEY` or `SCOPE sha256:HEX` (`#` comments).
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// Require a key on /healthz, /readyz, /metrics and / too.
    #[arg(long)]
    auth_all: bool,
    /// Serve a non-loopback address without --api-keys (logged at every start).
    #[arg(long)]
    insecure_no_auth: bool,
    /// TLS certificate chain (PEM); with --tls-key serves HTTPS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Requests per encoder batch (default: the profile's optimum; 1 turns encoder
    /// batching off; the store's group commit stays on).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Longest a batch waits for more requests after its first, in ms (0: a batch is
    /// what queued while the previous one ran; a lone request never waits).
    #[arg(long, default_value_t = 0.0)]
    max_delay_ms: f64,
    /// Requests waiting per queue before the server answers 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    #[arg(long, default_value_t = 1000)]
    max_k: usize,
    #[arg(long, default_value_t = 1000)]
    max_text_chars: usize,
    /// Largest body, in MiB: a larger `Content-Length` is refused (413) before the
    /// body is read.
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
    /// Images one request may add (multipart parts; 413 at the first past it):
    /// default 64, or --max-queue when that is smaller (a request's images enter the
    /// queue together, so more than it holds could never run).
    #[arg(long)]
    max_images: Option<usize>,
    /// Largest image accepted, in pixels (read from the header before decoding).
    #[arg(long, default_value_t = 40_000_000)]
    max_pixels: u64,
    /// Longest image side accepted, in pixels (read from the header before decoding).
    #[arg(long, default_value_t = 8192)]
    max_image_side: u32,
    /// Longest row `path`, in bytes.
    #[arg(long, default_value_t = 4096)]
    max_path_bytes: usize,
    /// Largest row `attrs`, in KiB of JSON.
    #[arg(long, default_value_t = 16)]
    max_attrs_kib: usize,
    /// Deepest nesting of a row's `attrs`.
    #[arg(long, default_value_t = 16)]
    max_attrs_depth: usize,
    /// Seconds a connection has to send a request's headers (from its accept, or from
    /// the first byte of a later request) before it is closed.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout: f64,
    /// Connections served at once (more wait in the kernel's queue; lowered to fit
    /// the open-file limit).
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// MiB the store keeps in reserve (`STORE/reserve`), released when the disk is
    /// full so deletes can still free room (0: none).
    #[arg(long, default_value_t = 64)]
    disk_reserve_mib: u64,
    /// Seconds before a request is answered 504.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Seconds SIGTERM waits for queued work before closing.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Delete rows captured longer ago than this (`30d`, `12h`), at start and
    /// periodically; compaction follows in the background.
    #[arg(long)]
    retention: Option<String>,
    /// Threads of the search scan (default: one per core).
    #[arg(long)]
    search_threads: Option<usize>,
    /// Let ONNX Runtime's CPU threads spin between calls: a lone client's search gets
    /// faster (0.72 -> 0.44 ms with the tiny bundle on two cores), but under load a
    /// spinning thread takes a core from request handling (a paced half-load search
    /// went from 9 to 321 ms p50 with it); off by default.
    #[arg(long)]
    ort_spin: bool,
    /// A new store stores float16 embeddings.
    #[arg(long)]
    f16: bool,
    /// A new store keeps no crops.
    #[arg(long)]
    no_crops: bool,
    #[command(flatten)]
    provider: ProviderArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    alerts: AlertArgs,
}

/// Where alerts (SPEC §12) are delivered, at least once.
#[derive(clap::Args, Debug)]
pub struct AlertArgs {
    /// POST every alert's JSON here (repeatable), retried until confirmed with a 2xx.
    #[arg(long = "alert-webhook", value_name = "URL")]
    alert_webhooks: Vec<String>,
    /// Sign webhook bodies with the secret in FILE: `X-Sen-Signature: sha256=HEX`
    /// (HMAC-SHA256 of the exact body).
    #[arg(long, value_name = "FILE")]
    alert_webhook_secret: Option<PathBuf>,
    /// How long one alert is retried before it is given up on (seconds; recorded in
    /// /v1/stats).
    #[arg(long, default_value_t = 3600.0, value_name = "S")]
    alert_retry_for: f64,
    /// Publish every alert at QoS 1 on PREFIX/alerts of this broker (mqtt:// or
    /// mqtts:// with --mqtt-ca; credentials from SEN_MQTT_USER and
    /// SEN_MQTT_PASSWORD[_FILE], as for --mqtt).
    #[arg(long, value_name = "URL")]
    alert_mqtt: Option<String>,
    /// The topic prefix alerts are published under (never another product's).
    #[arg(long, default_value = "sen", value_name = "PREFIX")]
    alert_topic_prefix: String,
    /// Live alert streams (GET /v1/alerts/stream) open at once; past it, 503.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_streams: usize,
}

impl AlertArgs {
    fn config(
        &self,
        store: Option<&Path>,
        mqtt_ca: Option<&Path>,
    ) -> Result<Option<sen_serve::alerts::AlertConfig>> {
        if self.alert_webhook_secret.is_some() && self.alert_webhooks.is_empty() {
            bail!(
                "--alert-webhook-secret signs --alert-webhook deliveries: give --alert-webhook URL too"
            );
        }
        if self.alert_webhooks.is_empty() && self.alert_mqtt.is_none() {
            return Ok(None);
        }
        if store.is_none() {
            bail!(
                "--alert-webhook and --alert-mqtt need --store: alerts are raised by a box's store"
            );
        }
        let prefix = self.alert_topic_prefix.trim_end_matches('/');
        if prefix.is_empty()
            || prefix.contains(['+', '#'])
            || ["frigate", "deepstream"].contains(&prefix)
        {
            bail!(
                "--alert-topic-prefix {:?}: a topic level without + or #, and not another product's prefix",
                self.alert_topic_prefix
            );
        }
        let mqtt = match &self.alert_mqtt {
            Some(url) => {
                let id = match store {
                    Some(dir) => sen_sources::config::default_client_id("alerts", dir),
                    None => "sen-alerts".into(),
                };
                let cfg = sen_sources::config::MqttConfig::parse(url, mqtt_ca, id)
                    .map_err(|e| anyhow::anyhow!("--alert-mqtt: {e:#}"))?;
                Some((cfg, format!("{prefix}/alerts")))
            }
            None => None,
        };
        let mut webhooks = vec![];
        for u in &self.alert_webhooks {
            let url = sen_serve::alerts::Url::parse(u)
                .with_context(|| format!("--alert-webhook {u:?}: not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!("--alert-webhook {u:?}: http:// or https:// only");
            }
            webhooks.push(url);
        }
        let secret = match &self.alert_webhook_secret {
            Some(f) => {
                let s = std::fs::read(f)
                    .with_context(|| format!("--alert-webhook-secret {}", f.display()))?;
                let s = s.trim_ascii_end().to_vec();
                if s.len() < 16 {
                    bail!(
                        "--alert-webhook-secret {}: at least 16 bytes (it has {})",
                        f.display(),
                        s.len()
                    );
                }
                Some(s)
            }
            None => None,
        };
        if !(self.alert_retry_for > 0.0 && self.alert_retry_for.is_finite()) {
            bail!(
                "--alert-retry-for {}: a positive number of seconds",
                self.alert_retry_for
            );
        }
        Ok(Some(sen_serve::alerts::AlertConfig {
            webhooks,
            mqtt,
            secret,
            retry_for: std::time::Duration::from_secs_f64(self.alert_retry_for),
        }))
    }
}

/// Crops from a pipeline over MQTT (SPEC §12; README "Sources"). Credentials come
/// from the environment or files, never from flags: SEN_MQTT_USER,
/// SEN_MQTT_PASSWORD[_FILE], SEN_FRIGATE_TOKEN[_FILE] or SEN_FRIGATE_USER and
/// SEN_FRIGATE_PASSWORD[_FILE].
#[derive(clap::Args, Debug)]
pub struct SourceArgs {
    /// Read crops from Frigate's tracked-object events or DeepStream's nvmsgconv
    /// messages.
    #[arg(long, value_parser = ["frigate", "deepstream"], requires_all = ["mqtt", "store"])]
    source: Option<String>,
    /// The broker: mqtt://HOST:PORT or mqtts://HOST:PORT.
    #[arg(long, value_name = "URL", requires = "source")]
    mqtt: Option<String>,
    /// The CA certificates (PEM) an mqtts:// broker's certificate is checked against
    /// (default: the system's); for --mqtt and --alert-mqtt.
    #[arg(long, value_name = "PEM")]
    mqtt_ca: Option<PathBuf>,
    /// The MQTT client id; the broker keeps this box's session under it (default:
    /// sen-SOURCE- and a hash of the host name and the store directory).
    #[arg(long, requires = "mqtt")]
    mqtt_client_id: Option<String>,
    /// Frigate's API: http://HOST:5000 (unauthenticated) or https://HOST:8971.
    #[arg(long, value_name = "URL")]
    frigate_api: Option<String>,
    /// Frigate labels to ingest (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "person")]
    frigate_labels: Vec<String>,
    /// Frigate cameras to ingest (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    frigate_cameras: Option<Vec<String>>,
    /// Frigate's MQTT topic prefix (its `mqtt: topic_prefix`).
    #[arg(long, default_value = "frigate")]
    frigate_topic_prefix: String,
    /// On each (re)connect, ask Frigate for events that started up to this long before
    /// the last one sen finished (`1h`, `30m`): an event that ended after it may have
    /// started before.
    #[arg(long, default_value = "1h")]
    frigate_backfill: String,
    /// The topic DeepStream's nvmsgbroker publishes to (its `topic=`).
    #[arg(long, value_name = "TOPIC")]
    deepstream_topic: Option<String>,
    /// DeepStream object classes to ingest (comma-separated, any case).
    #[arg(long, value_delimiter = ',', default_value = "person")]
    deepstream_labels: Vec<String>,
    /// Where DeepStream's crop files are (`crop_file` names are read inside it only).
    #[arg(long, value_name = "DIR")]
    crops_dir: Option<PathBuf>,
    /// Delete a crop file from --crops-dir once its row is stored.
    #[arg(long, requires = "crops_dir")]
    crops_dir_delete: bool,
    /// Seconds a failing fetch is retried (with backoff) before the event is skipped
    /// (`fetch_failed`, in /v1/stats).
    #[arg(long, default_value_t = 600.0)]
    source_give_up: f64,
    /// Inbox entries processed at once.
    #[arg(long, default_value_t = 8)]
    source_concurrency: usize,
}

impl SourceArgs {
    fn config(
        &self,
        store: Option<&std::path::Path>,
        max_payload: usize,
    ) -> Result<Option<sen_sources::SourceConfig>> {
        let Some(kind) = self.source.as_deref() else {
            for (set, flag) in [
                (self.frigate_api.is_some(), "--frigate-api"),
                (self.deepstream_topic.is_some(), "--deepstream-topic"),
                (self.crops_dir.is_some(), "--crops-dir"),
            ] {
                if set {
                    bail!(
                        "{flag} belongs to a source: give --source frigate|deepstream and --mqtt URL too"
                    );
                }
            }
            return Ok(None);
        };
        let store = store.context("--source needs --store DIR")?;
        let client_id = self
            .mqtt_client_id
            .clone()
            .unwrap_or_else(|| sen_sources::config::default_client_id(kind, store));
        let mqtt = sen_sources::MqttConfig::parse(
            self.mqtt.as_deref().context("--source needs --mqtt URL")?,
            self.mqtt_ca.as_deref(),
            client_id,
        )?;
        let kind = match kind {
            "frigate" => {
                if self.deepstream_topic.is_some() || self.crops_dir.is_some() {
                    bail!("--deepstream-topic and --crops-dir are for --source deepstream");
                }
                let api = self
                    .frigate_api
                    .clone()
                    .context("--source frigate needs --frigate-api http://HOST:5000 (its crops come from there)")?;
                let labels: Vec<String> = self
                    .frigate_labels
                    .iter()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                if labels.is_empty() {
                    bail!("--frigate-labels: give at least one label (person)");
                }
                let window =
                    sen_store::time::parse_period("--frigate-backfill", &self.frigate_backfill)?;
                sen_sources::Kind::Frigate(sen_sources::FrigateConfig {
                    api,
                    labels,
                    cameras: self.frigate_cameras.clone(),
                    prefix: self.frigate_topic_prefix.trim_end_matches('/').to_string(),
                    backfill_window: std::time::Duration::from_millis(window.max(0) as u64),
                    auth: sen_sources::FrigateAuth::from_env()?,
                })
            }
            _ => {
                if self.frigate_api.is_some() {
                    bail!("--frigate-api is for --source frigate");
                }
                let topic = self.deepstream_topic.clone().context(
                    "--source deepstream needs --deepstream-topic TOPIC (nvmsgbroker's topic=)",
                )?;
                sen_sources::Kind::DeepStream(sen_sources::DeepStreamConfig {
                    topic,
                    labels: self.deepstream_labels.clone(),
                    crops_dir: self.crops_dir.clone(),
                    delete: self.crops_dir_delete,
                })
            }
        };
        if !(self.source_give_up > 0.0 && self.source_give_up.is_finite()) {
            bail!(
                "--source-give-up {}: a positive number of seconds",
                self.source_give_up
            );
        }
        if self.source_concurrency == 0 {
            bail!("--source-concurrency must be at least 1");
        }
        Ok(Some(sen_sources::SourceConfig {
            kind,
            mqtt,
            concurrency: self.source_concurrency,
            fetch_timeout: std::time::Duration::from_secs(10),
            give_up: std::time::Duration::from_secs_f64(self.source_give_up),
            max_payload,
        }))
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let secs = |flag: &str, v: f64| -> Result<std::time::Duration> {
        if !(v > 0.0 && v.is_finite()) {
            bail!("{flag} {v}: must be a positive number of seconds");
        }
        Ok(std::time::Duration::from_secs_f64(v))
    };
    if !(a.max_delay_ms >= 0.0 && a.max_delay_ms.is_finite()) {
        bail!("--max-delay-ms {}: must be 0 or more", a.max_delay_ms);
    }
    let central = match &a.search_backend {
        Some(uri) => Some(sen_serve::CentralConfig {
            target: sen_milvus::Target::parse(uri).context("--search-backend")?,
            settings: sen_milvus::Settings::from_env()?,
            boxes: a.boxes.clone(),
            search_params: a.search_params.clone(),
        }),
        None => None,
    };
    let replicate = match &a.replicate {
        Some(uri) => Some(a.replica.replication(uri).context("--replicate")?),
        None => {
            if a.replica.box_name.is_some()
                || a.replica.index != "flat"
                || !a.replica.index_params.is_empty()
            {
                bail!(
                    "--box-name, --index and --index-param describe a replication: give --replicate milvus://HOST:PORT/COLLECTION too"
                );
            }
            None
        }
    };
    let cfg = sen_serve::ServeConfig {
        bundle: a.bundle.clone(),
        store: a.store.clone(),
        central,
        replicate,
        listen: a.listen,
        api_keys: a.api_keys.clone(),
        auth_all: a.auth_all,
        insecure_no_auth: a.insecure_no_auth,
        tls: a.tls_cert.clone().zip(a.tls_key.clone()),
        provider: {
            let mut o = a.provider.options();
            o.spin = a.ort_spin;
            o
        },
        max_batch: a.max_batch,
        max_delay: std::time::Duration::from_secs_f64(a.max_delay_ms / 1e3),
        max_queue: a.max_queue,
        max_k: a.max_k,
        max_text_chars: a.max_text_chars,
        max_body: a.max_body_mib << 20,
        max_images: a.max_images.unwrap_or(64.min(a.max_queue)),
        image_limits: sen_core::preprocess::ImageLimits {
            max_side: a.max_image_side,
            max_pixels: a.max_pixels,
        },
        row_limits: sen_store::RowLimits {
            max_path_bytes: a.max_path_bytes,
            max_attrs_bytes: a.max_attrs_kib << 10,
            max_attrs_depth: a.max_attrs_depth,
        },
        conn: sen_serve::listener::ConnLimits {
            header_timeout: secs("--header-timeout", a.header_timeout)?,
            idle_timeout: secs("--idle-timeout", a.idle_timeout)?,
            max_connections: a.max_connections,
        },
        disk_reserve: a.disk_reserve_mib << 20,
        request_timeout: secs("--request-timeout", a.request_timeout)?,
        shutdown_timeout: secs("--shutdown-timeout", a.shutdown_timeout)?,
        retention_ms: a
            .retention
            .as_deref()
            .map(|r| sen_store::time::parse_period("--retention", r))
            .transpose()?,
        search_threads: a.search_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        f16: a.f16,
        crops: !a.no_crops,
        thumb_cache_bytes: 64 << 20,
        source: {
            if a.source.mqtt_ca.is_some()
                && a.source.mqtt.is_none()
                && a.alerts.alert_mqtt.is_none()
            {
                bail!(
                    "--mqtt-ca checks an mqtts:// broker: give --mqtt (with --source) or --alert-mqtt too"
                );
            }
            a.source.config(a.store.as_deref(), a.max_body_mib << 20)?
        },
        alerts: a
            .alerts
            .config(a.store.as_deref(), a.source.mqtt_ca.as_deref())?,
        max_streams: a.alerts.max_streams,
    };
    sen_serve::run(cfg)
}
