//! `sen serve`: the retrieval service an edge box runs (tokio + axum; HTTP/1.1 and
//! HTTP/2, optional TLS with rustls).
//!
//! One process holds both encoders and the gallery store (its single writer). A
//! request walks one way: the route table ([`routes`]) -> [`middleware`] (request id,
//! timeout, auth, metrics) -> a handler ([`handlers`]: ingest, images, search, status)
//! -> a batching queue ([`batch`]: text, image, search) -> encoder or store ->
//! response. Ingest decodes and preprocesses on a bounded worker pool beside
//! inference; acknowledged rows are durable (the store's group commit). `/metrics` is
//! Prometheus text ([`metrics`]); keys and scopes are [`auth`]'s; every error is
//! [`error::ApiError`]; what a request sees of the process is [`state`]'s.
//!
//! Start-up binds the listener first (so `/healthz` answers), then verifies the
//! bundle, opens or creates the store, builds TensorRT engines or warms the sessions,
//! and only then reports ready (`/readyz` 200, `ready` on stdout). SIGTERM/SIGINT stop
//! accepting, finish or refuse (503) what is queued, close the store and exit 0
//! within `--shutdown-timeout`.

pub mod alerts;
pub mod auth;
pub mod batch;
pub mod central;
pub mod error;
mod extract;
mod handlers;
pub mod listener;
pub mod metrics;
mod middleware;
mod retention;
pub mod routes;
mod sources;
mod start;
pub mod state;

pub use handlers::ingest::{AddLimits, AddRequest, Meta, Upload, parse_meta, read_add, rows_of};
pub use handlers::page::CSP;
pub use state::{App, CentralConfig, ServeConfig};

use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// What `sen serve` prints as its first stdout line once bound, before the URL
/// (`sen_testing::listening_url` reads it).
pub const LISTENING: &str = "listening on ";

fn is_loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

/// Check the settings, bind, load, serve until a signal. Returns once shut down.
pub fn run(cfg: ServeConfig) -> Result<()> {
    let keys = match &cfg.api_keys {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--api-keys {}", p.display()))?;
            auth::check_key_file_mode(p);
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
    if cfg.max_images == 0 || cfg.max_images > cfg.max_queue {
        bail!(
            "--max-images {}: give 1 to --max-queue ({}); a request's images are admitted to \
             the queue together, so one of more images than the queue holds could never run",
            cfg.max_images,
            cfg.max_queue
        );
    }
    if cfg.conn.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    // A forced SEN_SIMD this CPU lacks stops here, not in every search.
    sen_store::search::Kernel::active().map_err(|e| anyhow::anyhow!("{e}"))?;
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
        streams: Arc::new(tokio::sync::Semaphore::new(cfg.max_streams)),
        thumbs: Mutex::new(handlers::images::ThumbCache::new(cfg.thumb_cache_bytes)),
        source: OnceLock::new(),
        cfg,
    });
    rt.block_on(serve(app))
}

async fn serve(app: Arc<App>) -> Result<()> {
    let router = routes::router(app.clone());
    let listener = std::net::TcpListener::bind(app.cfg.listen)
        .with_context(|| format!("--listen {}: cannot bind", app.cfg.listen))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let tls = match &app.cfg.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Launchers read the bound address (with --listen 127.0.0.1:0) from here.
    println!("{LISTENING}{scheme}://{addr}");
    tracing::info!("listening on {scheme}://{addr}; loading the bundle and the store");
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    // Load in the background: /healthz answers meanwhile, /readyz says 503. A store
    // that cannot open stops the process (non-zero exit: a supervisor restarts it);
    // other failures keep it up, /readyz saying why.
    let loader = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::task::spawn_blocking(move || match start::load(&app) {
            Ok(l) => {
                let _ = app.loaded.set(l);
                if let Err(e) = alerts::start(&app) {
                    tracing::error!("cannot start alert delivery: {e:#}");
                    *app.load_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("--alert-webhook: {e:#}"));
                    app.stopping.store(true, Ordering::SeqCst);
                    let _ = stop.send(true);
                    return;
                }
                if let Err(e) = sources::start(&app) {
                    tracing::error!("cannot start the source: {e:#}");
                    *app.load_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("--source: {e:#}"));
                    app.stopping.store(true, Ordering::SeqCst);
                    let _ = stop.send(true);
                    return;
                }
                app.metrics.ready.set(1);
                println!("ready");
                use std::io::Write;
                let _ = std::io::stdout().flush();
                tracing::info!("ready in {:.1} s", app.started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::error!("cannot start: {:#}", e.error);
                *app.load_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{:#}", e.error));
                if e.fatal {
                    app.stopping.store(true, Ordering::SeqCst);
                    let _ = stop.send(true);
                }
            }
        })
    };
    // Signals: stop accepting, drain, close.
    {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing queued work");
            app.stopping.store(true, Ordering::SeqCst);
            app.metrics.ready.set(0);
            let _ = stop.send(true);
        });
    }
    // Retention, at start (once loaded) and periodically.
    if let Some(ms) = app.cfg.retention_ms {
        let app = app.clone();
        tokio::spawn(async move { retention::retention_loop(app, ms).await });
    }
    listener::serve(
        listener,
        tls,
        router,
        app.cfg.conn,
        app.metrics.clone(),
        stopped,
        app.cfg.shutdown_timeout,
    )
    .await;
    // Connections are closed; queued batches were answered by their workers. Stop
    // replicating (after the step in flight), then close the store (its writer thread
    // finishes and joins).
    let _ = loader.await;
    if let Some(s) = app.source.get() {
        s.stop().await;
    }
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

/// The TLS acceptor of `--tls-cert` and `--tls-key` (PEM), offering HTTP/2 and
/// HTTP/1.1 by ALPN.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let what = || format!("--tls-cert {} --tls-key {}", cert.display(), key.display());
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--tls-cert {}: not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        bail!("--tls-cert {}: no certificate in the file", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: not a PEM private key", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .with_context(what)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(what)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
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

#[cfg(test)]
mod tests {
    /// Launchers (`sen_testing::listening_url`) find the URL after this prefix.
    #[test]
    fn launchers_read_the_line_serve_prints() {
        assert_eq!(super::LISTENING, sen_testing::LISTENING);
    }
}
