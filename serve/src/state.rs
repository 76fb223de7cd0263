//! What every request shares: the configuration `sen serve` was given ([`ServeConfig`]),
//! and the process state ([`App`]) that holds, once start-up finished, what was
//! loaded ([`Loaded`]: encoders, store or central collection, the batching queues).

use crate::batch::queues::{ImageQueue, SearchQueue, TextQueue};
use crate::error::ApiError;
use crate::{auth, central, handlers, metrics};
use sen_runtime::encoders::Encoders;
use sen_runtime::providers::ProviderOptions;
use sen_store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Everything `sen serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bundle: PathBuf,
    /// The store (None on a central search node).
    pub store: Option<PathBuf>,
    /// `--search-backend`: search a replicated collection instead of a store.
    pub central: Option<CentralConfig>,
    /// `--replicate`: follow the store into a Milvus collection.
    pub replicate: Option<sen_milvus::Replication>,
    pub listen: SocketAddr,
    pub api_keys: Option<PathBuf>,
    pub auth_all: bool,
    pub insecure_no_auth: bool,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub provider: ProviderOptions,
    /// Requests per encoder batch (None: the profile's optimum).
    pub max_batch: Option<usize>,
    pub max_delay: Duration,
    pub max_queue: usize,
    pub max_k: usize,
    pub max_text_chars: usize,
    /// Bodies over this many bytes are refused from their `Content-Length` (413).
    pub max_body: usize,
    /// Images per request (multipart parts), refused as they arrive past it (413).
    pub max_images: usize,
    /// An image's side and area, read from its header before decoding (413).
    pub image_limits: sen_core::preprocess::ImageLimits,
    /// `path` and `attrs` of a row (SPEC §11).
    pub row_limits: sen_store::RowLimits,
    /// Header read, idle keep-alive, concurrent connections.
    pub conn: crate::listener::ConnLimits,
    /// Bytes the store keeps in reserve so deletes work on a full disk.
    pub disk_reserve: u64,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Delete rows captured longer ago than this many ms.
    pub retention_ms: Option<i64>,
    pub search_threads: usize,
    /// Used when the store is created.
    pub f16: bool,
    pub crops: bool,
    pub thumb_cache_bytes: usize,
    /// `--source`: crops from Frigate or DeepStream over MQTT.
    pub source: Option<sen_sources::SourceConfig>,
    /// Open alert streams (`GET /v1/alerts/stream`) at once.
    pub max_streams: usize,
    /// `--alert-*`: where alerts are delivered (None: kept in the store only).
    pub alerts: Option<crate::alerts::AlertConfig>,
}

/// A central search node's backend (`--search-backend`, `--boxes`).
#[derive(Debug, Clone)]
pub struct CentralConfig {
    pub target: sen_milvus::Target,
    pub settings: sen_milvus::Settings,
    pub boxes: Option<PathBuf>,
    /// `--search-param KEY=VALUE` for the collection's index.
    pub search_params: Vec<String>,
}

/// A central node's open collection and the boxes it fetches crops from.
pub struct Central {
    pub coll: sen_milvus::Collection,
    pub boxes: std::collections::BTreeMap<String, central::BoxEntry>,
    pub search_params: Vec<String>,
}

/// A running `--replicate`.
pub struct Replicating {
    pub spec: sen_milvus::Replication,
    pub status: Arc<sen_milvus::Status>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Replicating {
    /// Stop after the step in flight (its acknowledged part is kept by the cursor).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// What is loaded once the service is ready.
pub struct Loaded {
    /// The store (None on a central node).
    pub store: Option<Arc<Store>>,
    pub central: Option<Central>,
    pub replication: Option<Replicating>,
    pub enc: Arc<Encoders>,
    pub text: TextQueue,
    pub image: ImageQueue,
    /// The local store's search queue (None on a central node: Milvus batches).
    pub search: Option<SearchQueue>,
    pub bundle_sha256: String,
    pub precision: String,
    /// The bundle's score calibration (None: results carry no `p`).
    pub scores: Option<Arc<sen_core::scores::bundle::ScoreCalibration>>,
}

impl Loaded {
    /// The store, or 404 on a central node (its rows live on the boxes).
    pub fn store(&self) -> Result<&Arc<Store>, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::NotFound(
                "this is a central search node (--search-backend): it holds no store; add, delete and read rows on their box (crops: GET /v1/images/BOX/ID)".into(),
            )
        })
    }
}

/// The shared state of every request.
pub struct App {
    pub cfg: ServeConfig,
    pub started: Instant,
    pub loaded: OnceLock<Loaded>,
    /// Why loading failed, if it did (readyz says it).
    pub load_error: Mutex<Option<String>>,
    pub stopping: AtomicBool,
    pub metrics: Arc<metrics::Metrics>,
    pub keys: Option<auth::Keys>,
    /// Decoding and preprocessing run on the blocking pool, this many at a time.
    pub decode_slots: tokio::sync::Semaphore,
    /// Open alert streams, up to `--max-streams`.
    pub streams: Arc<tokio::sync::Semaphore>,
    pub thumbs: Mutex<handlers::images::ThumbCache>,
    /// The running `--source`, once loaded.
    pub source: OnceLock<sen_sources::Source>,
}

impl App {
    pub fn ready(&self) -> Option<&Loaded> {
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        self.loaded.get()
    }
}

/// What a request that needs the loaded service uses: 503 while loading, after a
/// failed start (saying why) and while shutting down.
pub fn loaded(app: &App) -> Result<&Loaded, ApiError> {
    if app.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    app.loaded.get().ok_or_else(|| {
        ApiError::Unavailable(
            match &*app.load_error.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(e) => format!("the server could not start: {e}"),
                None => "the server is still loading (engines, store); retry shortly".into(),
            },
        )
    })
}
