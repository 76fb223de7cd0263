//! What wraps every request: a request id, a tracing span and the request timeout
//! ([`outer`]); per matched route, auth by the route's scope and the request
//! metrics ([`guard`]).

use crate::auth::Scope;
use crate::error::ApiError;
use crate::routes::scope_of;
use crate::state::App;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

type S = Arc<App>;

/// The longest request target (path and query) served: past it, 414.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// The most header bytes (names and values) a request may carry: past it, 431.
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// Request id (echoed as `x-request-id`), a tracing span, the request timeout; the
/// size limits a request is refused on before anything reads its body (target 414,
/// headers 431, a declared body over the limit 413); and the JSON error envelope on
/// every error response, whoever made it (axum's 405 and path rejections included).
pub(crate) async fn outer(State(app): State<S>, mut req: Request, next: Next) -> Response {
    if let Some(e) = oversized(&req, app.cfg.max_body) {
        linger(req.into_body()).await;
        let mut r = e.into_response();
        // The body may be left unread: the connection cannot be reused.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
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
    let failed = resp.status().is_client_error() || resp.status().is_server_error();
    if failed && !is_json(&resp) {
        resp = enveloped(resp).await;
    }
    if h1_with_body && failed {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// How much of a refused body is read and discarded before the refusal is sent.
pub const LINGER_BYTES: usize = 64 << 20;
/// How long a refused body is read and discarded before the refusal is sent.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and discards a refused request's body, up to [`LINGER_BYTES`] and for at
/// most [`LINGER`] (nginx's lingering close). Answering while the client is still
/// sending and then closing makes the kernel reset the connection, and the client
/// sees a broken pipe instead of the 413 that says what to change.
async fn linger(body: axum::body::Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// A request over a size limit, judged from its target and headers alone.
fn oversized(req: &Request, max_body: usize) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong(format!(
            "the request target is {target} bytes; at most {MAX_URI_BYTES}"
        )));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge(format!(
            "the request's headers are {headers} bytes; at most {MAX_HEADER_BYTES}"
        )));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared
        && n > max_body as u64
    {
        return Some(ApiError::TooLarge(format!(
            "the body is {n} bytes (Content-Length), over --max-body-mib ({max_body} bytes)"
        )));
    }
    None
}

fn is_json(r: &Response) -> bool {
    r.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"))
}

/// An error response made outside this API's error type (axum's own rejections, a
/// 405), rewritten into the JSON envelope with its status kept.
async fn enveloped(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty());
    let message = match (parts.status, text) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => format!(
            "method not allowed here; this route takes {}",
            parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("other methods")
        ),
        (_, Some(t)) => t.trim().to_string(),
        (s, None) => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let code = match parts.status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_argument",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let mut out = (
        parts.status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

/// Per matched route: auth (the route's scope; open routes too with `--auth-all`),
/// readiness, and the request metrics.
pub(crate) async fn guard(
    State(app): State<S>,
    matched: MatchedPath,
    req: Request,
    next: Next,
) -> Response {
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
            let caller = scope.map(|_| Caller(crate::auth::caller_id(h)));
            match keys.check(h, need) {
                Ok(()) => {
                    if let Some(c) = caller {
                        req.extensions_mut().insert(c);
                    }
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
pub(crate) struct KeyScope(pub(crate) Option<Scope>);

/// Who is calling, for what is scoped per caller (idempotency keys): a digest of the
/// presented API key, never the key; absent without keys.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) String);
