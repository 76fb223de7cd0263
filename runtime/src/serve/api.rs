//! Every route, in one table ([`ROUTES`]): the router and the OpenAPI document are
//! both made from it, so they cannot disagree.

use super::auth::Scope;
use super::error::ApiError;
use super::{App, Loaded};
use crate::results::{result_json, stats_json};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use sen_store::time::{self, TimeRange};
use sen_store::{Crop, NewRow, Selector};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

type S = Arc<App>;

/// One route: method, path (axum syntax), scope, what it does, its handler.
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub scope: Scope,
    pub summary: &'static str,
    handler: fn() -> MethodRouter<S>,
}

/// Every route the server has.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/",
        scope: Scope::Open,
        summary: "The operator's search page",
        handler: || get(page),
    },
    RouteSpec {
        method: "GET",
        path: "/app.js",
        scope: Scope::Open,
        summary: "The search page's script",
        handler: || get(page_js),
    },
    RouteSpec {
        method: "GET",
        path: "/app.css",
        scope: Scope::Open,
        summary: "The search page's style sheet",
        handler: || get(page_css),
    },
    RouteSpec {
        method: "GET",
        path: "/healthz",
        scope: Scope::Open,
        summary: "The process is alive",
        handler: || get(healthz),
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        scope: Scope::Open,
        summary: "Bundle loaded, engines built, store open and writable (503 otherwise)",
        handler: || get(readyz),
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        scope: Scope::Open,
        summary: "Prometheus metrics",
        handler: || get(metrics),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/images",
        scope: Scope::Write,
        summary: "Add images: one image as the body (camera, time, pid as query parameters) -> 201 {id}, or multipart parts `image` and `meta` -> 201 {ids}, all or nothing; Idempotency-Key makes a retry answer as the first request did",
        handler: || post(add_images),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/images/{id}",
        scope: Scope::Read,
        summary: "A stored crop with its content type; ?size=thumb for a JPEG of at most 256 px",
        handler: || get(get_image),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/images/{box}/{id}",
        scope: Scope::Read,
        summary: "On a central search node: a crop fetched from its box (URL and key from --boxes); ?size=thumb as on the box",
        handler: || get(get_box_image),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/images/{id}",
        scope: Scope::Write,
        summary: "Delete one row -> 204",
        handler: || delete(delete_image),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/delete",
        scope: Scope::Write,
        summary: "Delete by {before} or {camera} or {ids} (all or nothing) -> {deleted}",
        handler: || post(delete_rows),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/search",
        scope: Scope::Read,
        summary: "Search by {text} or {like: id}, with k, cameras, from, to -> the SPEC §11 result object",
        handler: || post(search),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/embed/text",
        scope: Scope::Read,
        summary: "{texts} -> {embeddings}",
        handler: || post(embed_text),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/embed/image",
        scope: Scope::Read,
        summary: "An image body -> {embedding}",
        handler: || post(embed_image),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/stats",
        scope: Scope::Read,
        summary: "Store statistics, bundle, provider, uptime, readiness",
        handler: || get(stats),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/cameras",
        scope: Scope::Read,
        summary: "Cameras with rows, first, last and last ingest",
        handler: || get(cameras),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/openapi.json",
        scope: Scope::Read,
        summary: "This API as OpenAPI 3",
        handler: || get(openapi),
    },
];

fn scope_of(method: &Method, path: &str) -> Scope {
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
        .map_or(Scope::Read, |r| r.scope)
}

/// The router: every route of [`ROUTES`], then auth and metrics per matched route,
/// then request ids, timeouts and readiness for everything.
pub fn router(app: S) -> Router {
    let mut by_path: Vec<(&str, MethodRouter<S>)> = vec![];
    for r in ROUTES {
        match by_path.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, m)) => *m = std::mem::take(m).merge((r.handler)()),
            None => by_path.push((r.path, (r.handler)())),
        }
    }
    let mut router: Router<S> = Router::new();
    for (p, m) in by_path {
        router = router.route(p, m);
    }
    router
        .fallback(|| async {
            ApiError::NotFound("no such route; GET /v1/openapi.json lists them".into())
        })
        .route_layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn_with_state(app.clone(), outer))
        .layer(axum::extract::DefaultBodyLimit::max(app.cfg.max_body))
        .with_state(app)
}

/// Request id (echoed as `x-request-id`), a tracing span, the request timeout.
async fn outer(State(app): State<S>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&id).expect("checked ascii"),
    );
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let timeout = app.cfg.request_timeout;
    // An HTTP/1 request whose body an error response may have left unread: hyper
    // closes such a connection after answering, so say so, or a client that pools
    // connections sends its next request into a closing socket.
    let h1_with_body = req.version() < axum::http::Version::HTTP_2
        && (req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"));
    let fut = tracing::Instrument::instrument(next.run(req), span.clone());
    let mut resp = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => {
            let _e = span.enter();
            tracing::warn!("past --request-timeout {:.1} s", timeout.as_secs_f64());
            ApiError::Timeout(format!(
                "the request took longer than --request-timeout ({:.1} s)",
                timeout.as_secs_f64()
            ))
            .into_response()
        }
    };
    resp.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&id).expect("checked ascii"),
    );
    if h1_with_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Per matched route: auth (the route's scope; open routes too with `--auth-all`),
/// readiness, and the request metrics.
async fn guard(State(app): State<S>, matched: MatchedPath, req: Request, next: Next) -> Response {
    let t = Instant::now();
    let (method, route) = (req.method().clone(), matched.as_str().to_string());
    let mut need = scope_of(&method, &route);
    if need == Scope::Open && app.cfg.auth_all {
        need = Scope::Read;
    }
    let mut req = req;
    let resp = match &app.keys {
        Some(keys) => {
            let h = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let scope = keys.scope(h);
            match keys.check(h, need) {
                Ok(()) => {
                    req.extensions_mut().insert(KeyScope(scope));
                    next.run(req).await
                }
                Err(e) => e.into_response(),
            }
        }
        None => {
            // Without keys every request may do everything.
            req.extensions_mut().insert(KeyScope(Some(Scope::Write)));
            next.run(req).await
        }
    };
    let status = resp.status().as_u16().to_string();
    app.metrics
        .requests
        .with_label_values(&[&route, method.as_str(), &status])
        .inc();
    app.metrics
        .duration
        .with_label_values(&[&route])
        .observe(t.elapsed().as_secs_f64());
    resp
}

/// The scope of the request's key (None: no key or an unknown one on an open route).
#[derive(Debug, Clone, Copy)]
struct KeyScope(Option<Scope>);

fn loaded(app: &App) -> Result<&Loaded, ApiError> {
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

/// JSON with this API's errors: syntax 400, unknown or wrong fields 422, missing
/// content type 415, over the body limit 413.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> FromRequest<St> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection as J;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(J::JsonSyntaxError(e)) => Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                e.body_text()
            ))),
            Err(J::JsonDataError(e)) => Err(ApiError::Invalid(e.body_text())),
            Err(J::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "send the body as Content-Type: application/json".into(),
            )),
            Err(J::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge(too_large_msg()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

fn too_large_msg() -> String {
    "the body is larger than --max-body-mib".into()
}

/// The whole body, within the limit (413 past it).
async fn body_bytes(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(too_large_msg()))
}

// ---------------------------------------------------------------- the page

/// The page's Content-Security-Policy: nothing but this origin's script, style,
/// images (and blob: object URLs of fetched crops) and API calls; no inline script
/// or style, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn static_file(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    static_file("text/html; charset=utf-8", include_str!("page/index.html"))
}

async fn page_js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    )
}

async fn page_css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("page/app.css"))
}

// ---------------------------------------------------------------- health

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(app): State<S>) -> Response {
    match loaded(&app) {
        Ok(l) => {
            // A central node: loaded means the collection answered and is loaded.
            let Some(store) = l.store.clone() else {
                return Json(serde_json::json!({"ready": true})).into_response();
            };
            // Writable: the writer thread answers and takes the database's write lock.
            match tokio::task::spawn_blocking(move || store.ping()).await {
                Ok(Ok(_)) => Json(serde_json::json!({"ready": true})).into_response(),
                Ok(Err(e)) => {
                    ApiError::Unavailable(format!("the store is not writable: {e}")).into_response()
                }
                Err(e) => ApiError::Unavailable(e.to_string()).into_response(),
            }
        }
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(app): State<S>) -> Response {
    if let Some(l) = app.loaded.get() {
        app.metrics
            .queue_depth
            .with_label_values(&["text"])
            .set(l.text.depth() as i64);
        app.metrics
            .queue_depth
            .with_label_values(&["image"])
            .set(l.image.depth() as i64);
        if let Some(q) = &l.search {
            app.metrics
                .queue_depth
                .with_label_values(&["search"])
                .set(q.depth() as i64);
        }
        if let Some(r) = &l.replication {
            let (m, st) = (&app.metrics, &r.status);
            m.replication_lag_changes.set(st.lag_changes());
            m.replication_lag_seconds.set(st.lag_seconds());
            m.replication_rows
                .with_label_values(&["upsert"])
                .set(st.rows_upserted.load(Ordering::Relaxed) as i64);
            m.replication_rows
                .with_label_values(&["delete"])
                .set(st.rows_deleted.load(Ordering::Relaxed) as i64);
            m.replication_errors
                .set(st.errors.load(Ordering::Relaxed) as i64);
            m.replication_up
                .set(st.connected.load(Ordering::Relaxed) as i64);
        }
        if let Some(store) = l.store.clone()
            && let Ok(Ok(s)) = tokio::task::spawn_blocking(move || store.stats()).await
        {
            app.metrics.store_rows.set(s.rows as i64);
            app.metrics
                .store_bytes
                .set(s.bytes.get("total").copied().unwrap_or(0) as i64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

// ---------------------------------------------------------------- ingest

/// Query parameters of a single-image add.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddParams {
    camera: Option<String>,
    time: Option<String>,
    pid: Option<i64>,
}

/// One `meta` entry of a multipart add.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    camera: Option<String>,
    time: Option<serde_json::Value>,
    pid: Option<i64>,
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/webp", "image/bmp"];

fn check_type(ct: Option<&str>, what: &str) -> Result<(), ApiError> {
    let ct = ct.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match ct.as_deref() {
        Some(c) if IMAGE_TYPES.contains(&c) => Ok(()),
        Some(c) => Err(ApiError::UnsupportedMediaType(format!(
            "{what}: content type {c:?}; send image/jpeg, image/png, image/webp or image/bmp"
        ))),
        None => Err(ApiError::UnsupportedMediaType(format!(
            "{what}: no content type; send image/jpeg, image/png, image/webp or image/bmp"
        ))),
    }
}

/// Check the size from the header, then decode and preprocess (on the blocking pool,
/// bounded): the encoder's input tensor.
async fn prepare(
    app: &S,
    l: &Loaded,
    bytes: Bytes,
    what: &str,
) -> Result<ndarray::Array3<f32>, ApiError> {
    let _slot = app
        .decode_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
    let pre = l.enc.image.preprocessor.clone();
    let max_pixels = app.cfg.max_pixels;
    let what = what.to_string();
    let t = Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| ApiError::BadImage(format!("{what}: {e}")))?;
        let (w, h) = reader.into_dimensions().map_err(|e| {
            ApiError::BadImage(format!("{what}: cannot read the image's size: {e}"))
        })?;
        if w as u64 * h as u64 > max_pixels {
            return Err(ApiError::ImageTooLarge(format!(
                "{what}: {w}x{h} is {} pixels, over --max-pixels {max_pixels}",
                w as u64 * h as u64
            )));
        }
        let rgb = sen_core::preprocess::decode_rgb8(&bytes, std::path::Path::new(&what))
            .map_err(|e| ApiError::BadImage(e.to_string()))?;
        Ok(pre.process(&rgb))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    app.metrics
        .stage
        .with_label_values(&["preprocess"])
        .observe(t.elapsed().as_secs_f64());
    r
}

async fn embed(app: &S, l: &Loaded, x: ndarray::Array3<f32>) -> Result<Vec<f32>, ApiError> {
    let (v, t) = l.image.submit(x).await?;
    observe_encoder(app, &t);
    Ok(v)
}

/// An encoder request's queue and inference time, into the stage histogram.
fn observe_encoder(app: &S, t: &super::batch::Timing) {
    for (stage, d) in [("queue", t.queued), ("inference", t.ran)] {
        app.metrics
            .stage
            .with_label_values(&[stage])
            .observe(d.as_secs_f64());
    }
}

fn parse_time(what: &str, v: Option<&serde_json::Value>) -> Result<i64, ApiError> {
    match v {
        Some(t) => time::from_json(what, t).map_err(|e| ApiError::Invalid(e.to_string())),
        None => Ok(time::now_ms()),
    }
}

fn camera_of(c: Option<String>) -> Result<String, ApiError> {
    let c = c.unwrap_or_else(|| sen_store::store::DEFAULT_CAMERA.into());
    if c.is_empty() || c.len() > sen_store::store::MAX_CAMERA_BYTES {
        return Err(ApiError::Invalid(format!(
            "camera {c:?}: a camera name is 1 to {} bytes of UTF-8",
            sen_store::store::MAX_CAMERA_BYTES
        )));
    }
    Ok(c)
}

/// Query parameters as `T` (unknown ones and bad values 422, naming them).
fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::Invalid(format!("query parameters: {}", e.body_text())))
}

async fn add_images(
    State(app): State<S>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 256)
                .map(|k| format!("POST /v1/images {k}"))
                .ok_or_else(|| {
                    ApiError::Invalid("Idempotency-Key: 1 to 256 visible ASCII characters".into())
                })
        })
        .transpose()?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let multipart = ct
        .as_deref()
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let mut rows: Vec<NewRow> = vec![];
    let has_query = req.uri().query().is_some_and(|q| !q.is_empty());
    if multipart {
        if has_query {
            return Err(ApiError::Invalid(
                "a multipart add takes camera, time, pid and attrs in its `meta` part, not as query parameters".into(),
            ));
        }
        let mut mp = axum::extract::Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut images: Vec<(String, Option<String>, Bytes)> = vec![];
        let mut meta: Option<Vec<Meta>> = None;
        while let Some(field) = mp.next_field().await.map_err(multipart_err)? {
            let name = field.name().unwrap_or("").to_string();
            match name.as_str() {
                "image" => {
                    let fname = field.file_name().unwrap_or("").to_string();
                    let fct = field.content_type().map(str::to_string);
                    let b = field.bytes().await.map_err(multipart_err)?;
                    images.push((fname, fct, b));
                }
                "meta" => {
                    let b = field.bytes().await.map_err(multipart_err)?;
                    meta = Some(serde_json::from_slice(&b).map_err(|e| {
                        ApiError::Invalid(format!(
                            "`meta`: a JSON array of {{camera, time, pid, attrs}}: {e}"
                        ))
                    })?);
                }
                other => {
                    return Err(ApiError::Invalid(format!(
                        "multipart part {other:?}: expected parts named `image` and `meta`"
                    )));
                }
            }
        }
        if images.is_empty() {
            return Err(ApiError::Invalid("no `image` parts".into()));
        }
        let meta = meta.unwrap_or_default();
        if !meta.is_empty() && meta.len() != images.len() {
            return Err(ApiError::Invalid(format!(
                "`meta` has {} entries for {} images; give one per image, in order",
                meta.len(),
                images.len()
            )));
        }
        let mut meta = meta.into_iter();
        // Decode every image first: any bad one fails the request, nothing is added.
        let mut tensors = vec![];
        for (i, (fname, fct, b)) in images.iter().enumerate() {
            let what = format!(
                "image {} ({})",
                i + 1,
                if fname.is_empty() { "unnamed" } else { fname }
            );
            check_type(fct.as_deref(), &what)?;
            tensors.push(prepare(&app, l, b.clone(), &what).await?);
        }
        let embs = futures_join(&app, l, tensors).await?;
        for (i, ((fname, fct, b), e)) in images.into_iter().zip(embs).enumerate() {
            let m = meta.next();
            rows.push(NewRow {
                camera: camera_of(m.as_ref().and_then(|m| m.camera.clone()))?,
                time_ms: parse_time(
                    &format!("meta[{i}].time"),
                    m.as_ref().and_then(|m| m.time.as_ref()),
                )?,
                path: if fname.is_empty() {
                    format!("upload-{}", i + 1)
                } else {
                    fname
                },
                pid: m.as_ref().and_then(|m| m.pid),
                attrs: m.and_then(|m| m.attrs),
                embedding: e,
                crop: Some(Crop {
                    content_type: sniffed(&b, fct.as_deref()),
                    bytes: b.to_vec(),
                }),
            });
        }
    } else {
        check_type(ct.as_deref(), "the body")?;
        let p: AddParams = query(req.uri())?;
        let b = body_bytes(req.into_body(), app.cfg.max_body).await?;
        let x = prepare(&app, l, b.clone(), "the body").await?;
        let e = embed(&app, l, x).await?;
        let time_ms = match &p.time {
            Some(t) => time::parse("time", t).map_err(|e| ApiError::Invalid(e.to_string()))?,
            None => time::now_ms(),
        };
        rows.push(NewRow {
            camera: camera_of(p.camera)?,
            time_ms,
            path: format!("upload-{}", uuid::Uuid::new_v4().simple()),
            pid: p.pid,
            attrs: None,
            embedding: e,
            crop: Some(Crop {
                content_type: sniffed(&b, ct.as_deref()),
                bytes: b.to_vec(),
            }),
        });
    }
    let n = rows.len();
    let store = l.store()?.clone();
    if !store.info().crops {
        rows.iter_mut().for_each(|r| r.crop = None);
    }
    let added = tokio::task::spawn_blocking(move || store.add_idempotent(rows, key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    if !added.replayed {
        app.metrics.ingested.inc_by(n as u64);
    }
    let ids: Vec<u64> = (added.first_id..=added.last_id).collect();
    let body = if multipart {
        serde_json::json!({"ids": ids})
    } else {
        serde_json::json!({"id": ids[0]})
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The stored content type: what the bytes are, else what the client said.
fn sniffed(b: &[u8], declared: Option<&str>) -> String {
    sen_core::preprocess::image_content_type(b)
        .map(str::to_string)
        .or_else(|| declared.map(str::to_string))
        .unwrap_or_else(|| "application/octet-stream".into())
}

fn multipart_err(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(too_large_msg())
    } else {
        ApiError::BadRequest(format!("multipart body: {}", e.body_text()))
    }
}

/// Embed several images concurrently (they batch together in the image queue).
async fn futures_join(
    app: &S,
    l: &Loaded,
    xs: Vec<ndarray::Array3<f32>>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let mut set = tokio::task::JoinSet::new();
    for (i, x) in xs.into_iter().enumerate() {
        let app = app.clone();
        set.spawn(async move {
            let l = loaded(&app)?;
            embed(&app, l, x).await.map(|e| (i, e))
        });
    }
    let _ = l;
    let mut out: Vec<Option<Vec<f32>>> = vec![];
    while let Some(r) = set.join_next().await {
        let (i, e) = r.map_err(|e| ApiError::Internal(e.to_string()))??;
        if out.len() <= i {
            out.resize(i + 1, None);
        }
        out[i] = Some(e);
    }
    Ok(out
        .into_iter()
        .map(|e| e.expect("every image embedded"))
        .collect())
}

// ---------------------------------------------------------------- images

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageParams {
    size: Option<String>,
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::Invalid(format!("id {s:?}: ids are whole numbers")))
}

async fn get_image(
    State(app): State<S>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let id = parse_id(&id)?;
    let thumb = wants_thumb(&uri)?;
    if thumb && let Some(b) = app.thumbs.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
        return Ok(image_response("image/jpeg", b));
    }
    let store = l.store()?.clone();
    let crop = tokio::task::spawn_blocking(move || store.crop(id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "row {id} has no crop: this store keeps none (--no-crops)"
            ))
        })?;
    if !thumb {
        return Ok(image_response(&crop.content_type, Bytes::from(crop.bytes)));
    }
    let b = tokio::task::spawn_blocking(move || thumbnail(&crop.bytes))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    app.thumbs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(id, b.clone());
    Ok(image_response("image/jpeg", b))
}

/// `?size=thumb` (a JPEG of at most 256 px) or nothing.
fn wants_thumb(uri: &axum::http::Uri) -> Result<bool, ApiError> {
    let p: ImageParams = query(uri)?;
    match p.size.as_deref() {
        None => Ok(false),
        Some("thumb") => Ok(true),
        Some(s) => Err(ApiError::Invalid(format!(
            "size {s:?}: only `thumb` (a JPEG of at most 256 px)"
        ))),
    }
}

async fn get_box_image(
    State(app): State<S>,
    Path((bx, id)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let c = l.central.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "this box serves its own crops at /v1/images/{id}; /v1/images/{box}/{id} is a central node's (--search-backend)".into(),
        )
    })?;
    let id = parse_id(&id)?;
    let thumb = wants_thumb(&uri)?;
    super::central::proxy_image(&c.boxes, &bx, id, thumb).await
}

pub(super) fn image_response(ct: &str, b: Bytes) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(ct)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        b,
    )
        .into_response()
}

/// A JPEG whose longest side is at most 256 px.
fn thumbnail(bytes: &[u8]) -> Result<Bytes, ApiError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| ApiError::Internal(format!("stored crop: {e}")))?;
    let t = if img.width().max(img.height()) > 256 {
        img.thumbnail(256, 256)
    } else {
        img
    };
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(t.to_rgb8())
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .map_err(|e| ApiError::Internal(format!("thumbnail: {e}")))?;
    Ok(Bytes::from(out.into_inner()))
}

/// Thumbnails by id, evicted oldest first past a byte budget.
pub struct ThumbCache {
    budget: usize,
    bytes: usize,
    map: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

impl ThumbCache {
    pub fn new(budget: usize) -> Self {
        ThumbCache {
            budget,
            bytes: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: u64) -> Option<Bytes> {
        self.map.get(&id).cloned()
    }

    fn put(&mut self, id: u64, b: Bytes) {
        if b.len() > self.budget || self.map.contains_key(&id) {
            return;
        }
        self.bytes += b.len();
        self.map.insert(id, b);
        self.order.push_back(id);
        while self.bytes > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(x) = self.map.remove(&old) {
                self.bytes -= x.len();
            }
        }
    }

    fn remove(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(x) = self.map.remove(id) {
                self.bytes -= x.len();
            }
        }
        self.order.retain(|i| self.map.contains_key(i));
    }
}

async fn delete_image(State(app): State<S>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let id = parse_id(&id)?;
    let store = l.store()?.clone();
    tokio::task::spawn_blocking(move || store.delete(Selector::Ids(vec![id])))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    app.thumbs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&[id]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    before: Option<serde_json::Value>,
    camera: Option<String>,
    ids: Option<Vec<u64>>,
}

async fn delete_rows(
    State(app): State<S>,
    ApiJson(b): ApiJson<DeleteBody>,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let sel = match (b.before, b.camera, b.ids) {
        (Some(t), None, None) => Selector::Before(
            time::from_json("before", &t).map_err(|e| ApiError::Invalid(e.to_string()))?,
        ),
        (None, Some(c), None) => Selector::Camera(camera_of(Some(c))?),
        (None, None, Some(ids)) if !ids.is_empty() => Selector::Ids(ids),
        (None, None, Some(_)) => return Err(ApiError::Invalid("ids: give at least one".into())),
        _ => {
            return Err(ApiError::Invalid(
                "give exactly one of before, camera or ids".into(),
            ));
        }
    };
    let ids = match &sel {
        Selector::Ids(v) => v.clone(),
        _ => vec![],
    };
    let store = l.store()?.clone();
    let n = tokio::task::spawn_blocking(move || store.delete(sel))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let mut thumbs = app.thumbs.lock().unwrap_or_else(|e| e.into_inner());
    if ids.is_empty() {
        *thumbs = ThumbCache::new(app.cfg.thumb_cache_bytes);
    } else {
        thumbs.remove(&ids);
    }
    Ok(Json(serde_json::json!({"deleted": n})).into_response())
}

// ---------------------------------------------------------------- search and embed

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    text: Option<String>,
    like: Option<u64>,
    /// On a central node: the box of the `like` row.
    like_box: Option<String>,
    /// On a central node: only rows of these boxes.
    boxes: Option<Vec<String>>,
    k: Option<usize>,
    cameras: Option<Vec<String>>,
    from: Option<serde_json::Value>,
    to: Option<serde_json::Value>,
}

fn check_text(app: &App, t: &str, what: &str) -> Result<(), ApiError> {
    if t.trim().is_empty() {
        return Err(ApiError::Invalid(format!(
            "{what} is empty: describe a person, e.g. \"a man in a grey hoodie\""
        )));
    }
    let n = t.chars().count();
    if n > app.cfg.max_text_chars {
        return Err(ApiError::Invalid(format!(
            "{what} has {n} characters, over --max-text-chars {}",
            app.cfg.max_text_chars
        )));
    }
    Ok(())
}

async fn encode_text(app: &S, l: &Loaded, t: String) -> Result<Vec<f32>, ApiError> {
    let (v, tm) = l.text.submit(t).await?;
    observe_encoder(app, &tm);
    Ok(v)
}

async fn search(
    State(app): State<S>,
    ApiJson(b): ApiJson<SearchBody>,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let t0 = Instant::now();
    let k = b.k.unwrap_or(10);
    if k == 0 || k > app.cfg.max_k {
        return Err(ApiError::Invalid(format!(
            "k {k}: must be 1 to --max-k {}",
            app.cfg.max_k
        )));
    }
    let from = b
        .from
        .as_ref()
        .map(|v| time::from_json("from", v))
        .transpose()
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let to =
        b.to.as_ref()
            .map(|v| time::from_json("to", v))
            .transpose()
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let range = TimeRange::new(from, to).map_err(|e| ApiError::Invalid(e.to_string()))?;
    if let Some(cams) = &b.cameras {
        for c in cams {
            camera_of(Some(c.clone()))?;
        }
    }
    if let Some(c) = &l.central {
        return search_central(&app, l, c, b, k, range, t0).await;
    }
    if b.like_box.is_some() || b.boxes.is_some() {
        return Err(ApiError::Invalid(
            "like_box and boxes are for a central search node (--search-backend); this box searches its own store".into(),
        ));
    }
    let (vector, exclude) = match (&b.text, b.like) {
        (Some(t), None) => {
            check_text(&app, t, "text")?;
            (encode_text(&app, l, t.clone()).await?, None)
        }
        (None, Some(id)) => {
            let store = l.store()?.clone();
            let v = tokio::task::spawn_blocking(move || store.embedding(id))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            (v, Some(id))
        }
        _ => return Err(ApiError::Invalid("give exactly one of text or like".into())),
    };
    let q = sen_store::Query {
        vector,
        k,
        cameras: b.cameras.clone(),
        time: range,
        exclude,
    };
    let queue = l
        .search
        .as_ref()
        .ok_or_else(|| ApiError::Internal("no search queue".into()))?;
    let (found, tm) = queue.submit(q).await?;
    app.metrics
        .stage
        .with_label_values(&["queue"])
        .observe(tm.queued.as_secs_f64());
    app.metrics
        .stage
        .with_label_values(&["search"])
        .observe(tm.ran.as_secs_f64());
    let took = t0.elapsed().as_secs_f64() * 1e3;
    Ok(Json(result_json(b.text.as_deref(), b.like, took, &found)).into_response())
}

/// A search on a central node: through the replicated collection, results with `box`.
async fn search_central(
    app: &S,
    l: &Loaded,
    c: &super::Central,
    b: SearchBody,
    k: usize,
    range: TimeRange,
    t0: Instant,
) -> Result<Response, ApiError> {
    for name in b.boxes.iter().flatten().chain(b.like_box.iter()) {
        sen_milvus::check_box_name(name).map_err(|e| ApiError::Invalid(e.to_string()))?;
    }
    let (vector, exclude) = match (&b.text, b.like, &b.like_box) {
        (Some(t), None, None) => {
            check_text(app, t, "text")?;
            (encode_text(app, l, t.clone()).await?, None)
        }
        (None, Some(id), Some(bx)) => (c.coll.embedding(bx, id).await?, Some((bx.clone(), id))),
        (None, Some(_), None) => {
            return Err(ApiError::Invalid(
                "like on a central node needs like_box: row ids are per box".into(),
            ));
        }
        _ => {
            return Err(ApiError::Invalid(
                "give exactly one of text or like (with like_box)".into(),
            ));
        }
    };
    let filter = sen_milvus::SearchFilter {
        cameras: b.cameras.clone(),
        time: range,
        boxes: b.boxes.clone(),
        exclude,
    };
    let params = sen_milvus::collection::search_params(c.coll.index(), k, &c.search_params)?;
    let t = Instant::now();
    let hits = c
        .coll
        .search(vec![vector], k, &filter, params)
        .await?
        .pop()
        .unwrap_or_default();
    app.metrics
        .stage
        .with_label_values(&["search"])
        .observe(t.elapsed().as_secs_f64());
    let took = t0.elapsed().as_secs_f64() * 1e3;
    Ok(Json(crate::results::boxed_result_json(
        b.text.as_deref(),
        b.like,
        took,
        &hits,
    ))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedTextBody {
    texts: Vec<String>,
}

async fn embed_text(
    State(app): State<S>,
    ApiJson(b): ApiJson<EmbedTextBody>,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    if b.texts.is_empty() || b.texts.len() > 256 {
        return Err(ApiError::Invalid(format!(
            "texts: give 1 to 256 texts (got {})",
            b.texts.len()
        )));
    }
    for (i, t) in b.texts.iter().enumerate() {
        check_text(&app, t, &format!("texts[{i}]"))?;
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in b.texts.into_iter().enumerate() {
        let app = app.clone();
        set.spawn(async move {
            let l = loaded(&app)?;
            encode_text(&app, l, t).await.map(|v| (i, v))
        });
    }
    let _ = l;
    let mut out: Vec<(usize, Vec<f32>)> = vec![];
    while let Some(r) = set.join_next().await {
        out.push(r.map_err(|e| ApiError::Internal(e.to_string()))??);
    }
    out.sort_by_key(|x| x.0);
    Ok(
        Json(serde_json::json!({"embeddings": out.into_iter().map(|x| x.1).collect::<Vec<_>>()}))
            .into_response(),
    )
}

async fn embed_image(
    State(app): State<S>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    check_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        "the body",
    )?;
    let b = body_bytes(body, app.cfg.max_body).await?;
    let x = prepare(&app, l, b, "the body").await?;
    let e = embed(&app, l, x).await?;
    Ok(Json(serde_json::json!({"embedding": e})).into_response())
}

// ---------------------------------------------------------------- stats

async fn stats(
    State(app): State<S>,
    scope: Option<axum::Extension<KeyScope>>,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let mut v = match &l.central {
        // A central node: the collection's rows and identity, the boxes it knows.
        Some(c) => {
            let enc = c.coll.encoder();
            serde_json::json!({
                "backend": c.coll.target.to_string(),
                "rows": c.coll.count("").await?,
                "index": c.coll.index(),
                "encoder_sha256": enc.sha256,
                "dim": enc.dim,
                "boxes": c.boxes.keys().collect::<Vec<_>>(),
            })
        }
        None => {
            let store = l.store()?.clone();
            let s = tokio::task::spawn_blocking(move || store.stats())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            stats_json(&s)
        }
    };
    let obj = v.as_object_mut().expect("object");
    if let Some(r) = &l.replication {
        obj.insert("replication".into(), r.status.json(&r.spec));
    }
    obj.insert(
        "bundle".into(),
        serde_json::json!({"sha256": l.bundle_sha256, "precision": l.precision}),
    );
    obj.insert("provider".into(), app.cfg.provider.kind.name().into());
    obj.insert(
        "uptime_s".into(),
        app.started.elapsed().as_secs_f64().into(),
    );
    obj.insert("ready".into(), app.ready().is_some().into());
    // What the presented key may do (the page shows "delete" for a write key).
    obj.insert(
        "key_scope".into(),
        scope.and_then(|s| s.0.0).map(|s| s.name()).into(),
    );
    Ok(Json(v).into_response())
}

async fn cameras(State(app): State<S>) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let store = l.store()?.clone();
    let s = tokio::task::spawn_blocking(move || store.stats())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(stats_json(&s)["cameras"].clone()).into_response())
}

// ---------------------------------------------------------------- openapi

async fn openapi() -> Response {
    Json(openapi_doc()).into_response()
}

/// OpenAPI 3 from [`ROUTES`].
pub fn openapi_doc() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let p = paths
            .entry(r.path.to_string())
            .or_insert_with(|| serde_json::json!({}));
        let mut op = serde_json::json!({
            "summary": r.summary,
            "responses": {"default": {"description": "JSON; errors are {\"error\": {\"code\", \"message\"}}"}},
        });
        if r.path.contains("{id}") {
            op["parameters"] = serde_json::json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
        }
        if r.scope != Scope::Open {
            op["security"] = serde_json::json!([{"bearer": [r.scope.name()]}]);
        }
        p[r.method.to_ascii_lowercase()] = op;
    }
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "sen serve", "version": env!("CARGO_PKG_VERSION"),
                 "description": "SEN text-to-image person retrieval on an edge box: ingest crops, search by description, manage the gallery."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
}
