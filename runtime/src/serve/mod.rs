//! `sen serve`: the retrieval service an edge box runs (tokio + axum; HTTP/1.1 and
//! HTTP/2, optional TLS with rustls).
//!
//! One process holds both encoders and the gallery store (its single writer). A
//! request walks one way: route ([`api`]) -> auth and limits -> a batching queue
//! ([`batch`]: text, image, search) -> encoder or store -> response. Ingest decodes and
//! preprocesses on a bounded worker pool beside inference; acknowledged rows are
//! durable (the store's group commit). `/metrics` is Prometheus text ([`metrics`]);
//! keys and scopes are [`auth`]'s; every error is [`error::ApiError`].
//!
//! Start-up binds the listener first (so `/healthz` answers), then verifies the
//! bundle, opens or creates the store, builds TensorRT engines or warms the sessions,
//! and only then reports ready (`/readyz` 200, `ready` on stdout). SIGTERM/SIGINT stop
//! accepting, finish or refuse (503) what is queued, close the store and exit 0
//! within `--shutdown-timeout`.

pub mod api;
pub mod auth;
pub mod batch;
pub mod central;
pub mod error;
pub mod metrics;

use crate::encoders::Encoders;
use crate::providers::ProviderOptions;
use anyhow::{Context, Result, bail};
use sen_store::{Mode, Store};
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
    pub max_body: usize,
    pub max_pixels: u64,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Delete rows captured longer ago than this many ms.
    pub retention_ms: Option<i64>,
    pub search_threads: usize,
    /// Used when the store is created.
    pub f16: bool,
    pub crops: bool,
    pub thumb_cache_bytes: usize,
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
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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
    pub text: batch::Batcher<String, Vec<f32>>,
    pub image: batch::Batcher<ndarray::Array3<f32>, Vec<f32>>,
    /// The local store's search queue (None on a central node: Milvus batches).
    pub search: Option<batch::Batcher<sen_store::Query, Vec<sen_store::Found>>>,
    pub bundle_sha256: String,
    pub precision: String,
}

impl Loaded {
    /// The store, or 404 on a central node (its rows live on the boxes).
    pub fn store(&self) -> Result<&Arc<Store>, error::ApiError> {
        self.store.as_ref().ok_or_else(|| {
            error::ApiError::NotFound(
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
    pub thumbs: Mutex<api::ThumbCache>,
}

impl App {
    pub fn ready(&self) -> Option<&Loaded> {
        if self.stopping.load(Ordering::SeqCst) {
            return None;
        }
        self.loaded.get()
    }
}

/// What `sen serve` prints as its first stdout line once bound, before the URL.
const LISTENING: &str = "listening on ";

/// For whatever starts `sen serve` with stdout piped (tests, `make load`): read the
/// child's first stdout line and return the URL it serves, then drain the rest of
/// stdout on a thread so the child never blocks on a full pipe.
pub fn listening_url(child: &mut std::process::Child) -> Result<String, String> {
    use std::io::BufRead;
    let out = child
        .stdout
        .take()
        .ok_or("sen serve was started without a piped stdout")?;
    let mut out = std::io::BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line)
        .map_err(|e| format!("reading sen serve's stdout: {e}"))?;
    let url = line
        .trim()
        .strip_prefix(LISTENING)
        .ok_or_else(|| format!("sen serve printed {line:?}, not \"{LISTENING}URL\""))?
        .to_string();
    std::thread::spawn(move || for _ in out.lines() {});
    Ok(url)
}

fn is_loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

/// Check the settings, bind, load, serve until a signal. Returns once shut down.
pub fn run(cfg: ServeConfig) -> Result<()> {
    let keys = match &cfg.api_keys {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--api-keys {}", p.display()))?;
            Some(auth::Keys::parse(&text, &p.display().to_string()).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    if keys.is_none() && !is_loopback(&cfg.listen) {
        if !cfg.insecure_no_auth {
            bail!(
                "--listen {}: not a loopback address, and no --api-keys: anyone who can reach it \
                 could read and delete the gallery. Give --api-keys FILE, or --insecure-no-auth \
                 to serve without keys anyway",
                cfg.listen
            );
        }
        tracing::warn!(
            "--insecure-no-auth: serving {} without API keys; anyone who can reach it can read, \
             add and delete",
            cfg.listen
        );
    }
    if cfg.auth_all && keys.is_none() {
        bail!("--auth-all needs --api-keys FILE");
    }
    if cfg.max_queue == 0 || cfg.max_k == 0 || cfg.max_text_chars == 0 || cfg.max_body == 0 {
        bail!("--max-queue, --max-k, --max-text-chars and --max-body-mib must be at least 1");
    }
    if cfg.max_batch == Some(0) {
        bail!("--max-batch must be at least 1 (1 turns batching off)");
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(2))
        .enable_all()
        .thread_name("sen-serve")
        .build()
        .context("starting the async runtime")?;
    let app = Arc::new(App {
        started: Instant::now(),
        loaded: OnceLock::new(),
        load_error: Mutex::new(None),
        stopping: AtomicBool::new(false),
        metrics: Arc::new(metrics::Metrics::new()),
        keys,
        decode_slots: tokio::sync::Semaphore::new(workers),
        thumbs: Mutex::new(api::ThumbCache::new(cfg.thumb_cache_bytes)),
        cfg,
    });
    rt.block_on(serve(app))
}

async fn serve(app: Arc<App>) -> Result<()> {
    let handle = axum_server::Handle::new();
    let router = api::router(app.clone());
    let listener = std::net::TcpListener::bind(app.cfg.listen)
        .with_context(|| format!("--listen {}: cannot bind", app.cfg.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let scheme = if app.cfg.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Launchers read the bound address (with --listen 127.0.0.1:0) from here:
    // `listening_url`.
    println!("{LISTENING}{scheme}://{addr}");
    tracing::info!("listening on {scheme}://{addr}; loading the bundle and the store");
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    // Load in the background: /healthz answers meanwhile, /readyz says 503.
    let loader = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || match load(&app) {
            Ok(l) => {
                let _ = app.loaded.set(l);
                app.metrics.ready.set(1);
                println!("ready");
                use std::io::Write;
                let _ = std::io::stdout().flush();
                tracing::info!("ready in {:.1} s", app.started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::error!("cannot start: {e:#}");
                *app.load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
            }
        })
    };
    // Signals: stop accepting, drain, close.
    {
        let (app, handle) = (app.clone(), handle.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing queued work");
            app.stopping.store(true, Ordering::SeqCst);
            app.metrics.ready.set(0);
            handle.graceful_shutdown(Some(app.cfg.shutdown_timeout));
        });
    }
    // Retention, at start (once loaded) and periodically.
    if let Some(ms) = app.cfg.retention_ms {
        let app = app.clone();
        tokio::spawn(async move { retention_loop(app, ms).await });
    }
    let make = router.into_make_service_with_connect_info::<SocketAddr>();
    match &app.cfg.tls {
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "--tls-cert {} --tls-key {}: cannot load",
                        cert.display(),
                        key.display()
                    )
                })?;
            axum_server::from_tcp_rustls(listener, tls)?
                .handle(handle)
                .serve(make)
                .await?;
        }
        None => {
            axum_server::from_tcp(listener)?
                .handle(handle)
                .serve(make)
                .await?;
        }
    }
    // Connections are closed; queued batches were answered by their workers. Stop
    // replicating (after the step in flight), then close the store (its writer thread
    // finishes and joins).
    let _ = loader.await;
    if let Some(r) = app.loaded.get().and_then(|l| l.replication.as_ref()) {
        tokio::task::block_in_place(|| r.stop());
    }
    if let Some(e) = app
        .load_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        bail!("{e}");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Verify the bundle, open (or create) the store, load the encoders (TensorRT engines
/// built or loaded), warm them up, start the batching queues.
fn load(app: &Arc<App>) -> Result<Loaded> {
    let cfg = &app.cfg;
    let manifest = sen_core::Manifest::load(&cfg.bundle)
        .with_context(|| format!("--bundle {}", cfg.bundle.display()))?;
    let digest = manifest.encoder_digest(&manifest.io.image)?;
    let (store, central) = match (&cfg.store, &cfg.central) {
        (Some(dir), None) => (Some(open_store(cfg, dir, &manifest, &digest)?), None),
        (None, Some(c)) => (None, Some(open_central(cfg, c, &manifest, &digest)?)),
        _ => bail!("give --store DIR (a box) or --search-backend milvus://... (a central node)"),
    };
    let enc = Encoders::load(&cfg.bundle, &cfg.provider)?;
    // One warm-up run per encoder at its optimum, so the first request is not the first run.
    let p = &enc.image.manifest.preprocess;
    enc.image.encode(
        ndarray::Array4::<f32>::zeros((enc.image.profile.opt, 3, p.height, p.width)).view(),
    )?;
    enc.text.encode(&vec!["a person"; enc.text.profile.opt])?;
    let store = store.map(Arc::new);
    let enc = Arc::new(enc);
    let m = app.metrics.clone();
    let qcfg = |opt: usize| batch::BatchConfig {
        max_batch: cfg.max_batch.unwrap_or(opt),
        max_delay: cfg.max_delay,
        max_queue: cfg.max_queue,
    };
    let text = {
        let (enc, m) = (enc.clone(), m.clone());
        batch::Batcher::start(
            "text",
            qcfg(enc.text.profile.opt),
            app.metrics.clone(),
            move |texts: Vec<String>| {
                let before = enc.text.fed();
                let e = enc.text.encode(&texts)?;
                let after = enc.text.fed();
                m.text_positions.inc_by(after.positions - before.positions);
                m.text_rows.inc_by(after.rows - before.rows);
                Ok(e.rows().into_iter().map(|r| r.to_vec()).collect())
            },
        )
    };
    let image = {
        let enc = enc.clone();
        batch::Batcher::start(
            "image",
            qcfg(enc.image.profile.opt),
            app.metrics.clone(),
            move |imgs: Vec<ndarray::Array3<f32>>| {
                let views: Vec<_> = imgs.iter().map(|a| a.view()).collect();
                let x = ndarray::stack(ndarray::Axis(0), &views)
                    .map_err(|e| error::ApiError::Internal(format!("stacking images: {e}")))?;
                let e = enc.image.encode(x.view())?;
                Ok(e.rows().into_iter().map(|r| r.to_vec()).collect())
            },
        )
    };
    let search = store.clone().map(|store| {
        let threads = cfg.search_threads;
        batch::Batcher::start(
            "search",
            batch::BatchConfig {
                max_batch: cfg.max_batch.map_or(64, |b| b.max(1)),
                max_delay: cfg.max_delay,
                max_queue: cfg.max_queue,
            },
            app.metrics.clone(),
            move |qs: Vec<sen_store::Query>| Ok(store.search(&qs, threads)?),
        )
    });
    let replication = match (&cfg.replicate, &store) {
        (Some(r), Some(store)) => Some(start_replication(r, store.clone())?),
        _ => None,
    };
    app.metrics
        .build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            &digest,
            cfg.provider.kind.name(),
            &manifest.precision.to_string(),
        ])
        .set(1);
    Ok(Loaded {
        store,
        central,
        replication,
        enc,
        text,
        image,
        search,
        bundle_sha256: digest,
        precision: manifest.precision.to_string(),
    })
}

/// Open (or create, bound to the bundle) the box's store.
fn open_store(
    cfg: &ServeConfig,
    dir: &std::path::Path,
    manifest: &sen_core::Manifest,
    digest: &str,
) -> Result<Store> {
    let empty = sen_store::io::missing_or_empty(dir)
        .with_context(|| format!("--store {}", dir.display()))?;
    let store = if empty {
        tracing::info!(
            "{}: creating a store bound to {}",
            dir.display(),
            cfg.bundle.display()
        );
        Store::create(
            dir,
            &sen_store::StoreConfig {
                image_encoder_sha256: digest.to_string(),
                dim: manifest.model.embed_dim,
                dtype: if cfg.f16 {
                    sen_store::Storage::F16
                } else {
                    sen_store::Storage::F32
                },
                crops: cfg.crops,
                bundle_precision: manifest.precision.to_string(),
            },
        )?
    } else {
        Store::open(dir, Mode::Writer)?
    };
    store.check_encoder(
        digest,
        manifest.model.embed_dim,
        &cfg.bundle.display().to_string(),
    )?;
    Ok(store)
}

/// Connect to the replicated collection (refusing one of another encoder) and read
/// `--boxes`.
fn open_central(
    cfg: &ServeConfig,
    c: &CentralConfig,
    manifest: &sen_core::Manifest,
    digest: &str,
) -> Result<Central> {
    let rt = tokio::runtime::Handle::current();
    let mut coll = rt.block_on(sen_milvus::Collection::connect(&c.target, &c.settings))?;
    rt.block_on(coll.open(Some(&sen_milvus::Encoder {
        sha256: digest.to_string(),
        dim: manifest.model.embed_dim,
    })))?;
    sen_milvus::collection::search_params(coll.index(), 1, &c.search_params)?;
    let boxes = match &c.boxes {
        Some(p) => central::read_boxes(p, cfg.request_timeout)?,
        None => Default::default(),
    };
    tracing::info!(
        "central search node on {} (index {}); crops from {} boxes",
        c.target,
        coll.index(),
        boxes.len()
    );
    Ok(Central {
        coll,
        boxes,
        search_params: c.search_params.clone(),
    })
}

/// Start following the store into Milvus on its own thread.
fn start_replication(r: &sen_milvus::Replication, store: Arc<Store>) -> Result<Replicating> {
    let status = Arc::new(sen_milvus::Status::default());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (r, status, stop) = (r.clone(), status.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sen-replicate".into())
            .spawn(move || r.follow(store, status, stop))
            .context("starting the replication thread")?
    };
    tracing::info!(
        "replicating to {} as box {:?} (new collections get index {})",
        r.target,
        r.box_name,
        r.index.describe()
    );
    Ok(Replicating {
        spec: r.clone(),
        status,
        stop,
        thread: Mutex::new(Some(thread)),
    })
}

/// Delete rows older than the retention period, at start and then every tenth of the
/// period (at most every 10 minutes, at least every minute); compact in the
/// background once a tenth of the rows (or 100,000) are deleted awaiting compaction.
async fn retention_loop(app: Arc<App>, ms: i64) {
    let every = Duration::from_millis((ms / 10).clamp(60_000, 600_000) as u64);
    loop {
        if app.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Some(l) = app.loaded.get() {
            let Some(store) = l.store.clone() else {
                return;
            };
            let app2 = app.clone();
            let r = tokio::task::spawn_blocking(move || -> Result<(), sen_store::StoreError> {
                let cutoff = sen_store::time::now_ms() - ms;
                let n = store.delete(sen_store::Selector::Before(cutoff))?;
                if n > 0 {
                    app2.metrics.retention_deleted.inc_by(n as u64);
                    tracing::info!(
                        "retention: deleted {n} rows captured before {}",
                        sen_store::time::format(cutoff)
                    );
                }
                let s = store.stats()?;
                if s.deleted_pending > 0
                    && (s.deleted_pending >= 100_000 || s.deleted_pending * 10 >= s.rows.max(1))
                {
                    let c = store.compact()?;
                    tracing::info!(
                        "compaction: {} deleted rows rewritten away in {:.1} s",
                        c.rows_removed,
                        c.seconds
                    );
                }
                Ok(())
            })
            .await;
            match r {
                Ok(Err(e)) => tracing::warn!("retention: {e}"),
                Err(e) => tracing::warn!("retention: {e}"),
                Ok(Ok(())) => {}
            }
            tokio::time::sleep(every).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
