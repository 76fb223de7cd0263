//! What wraps every request: a request id, a tracing span and the request timeout
//! ([`outer`]); per matched route, auth by the route's scope and the request
//! metrics ([`guard`]).

use crate::auth::Scope;
use crate::error::ApiError;
use crate::routes::scope_of;
use crate::state::App;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

type S = Arc<App>;

/// Request id (echoed as `x-request-id`), a tracing span, the request timeout.
pub(crate) async fn outer(State(app): State<S>, mut req: Request, next: Next) -> Response {
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
pub(crate) struct KeyScope(pub(crate) Option<Scope>);
