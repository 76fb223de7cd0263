//! Every route, in one table ([`ROUTES`]): the router and the OpenAPI document are
//! both made from it, so they cannot disagree.

use crate::auth::Scope;
use crate::error::ApiError;
use crate::handlers::{images, ingest, page, search, status, watches};
use crate::middleware::{guard, outer};
use crate::state::App;
use axum::http::Method;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use std::sync::Arc;

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
        handler: || get(page::page),
    },
    RouteSpec {
        method: "GET",
        path: "/app.js",
        scope: Scope::Open,
        summary: "The search page's script",
        handler: || get(page::page_js),
    },
    RouteSpec {
        method: "GET",
        path: "/app.css",
        scope: Scope::Open,
        summary: "The search page's style sheet",
        handler: || get(page::page_css),
    },
    RouteSpec {
        method: "GET",
        path: "/healthz",
        scope: Scope::Open,
        summary: "The process is alive",
        handler: || get(status::healthz),
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        scope: Scope::Open,
        summary: "Bundle loaded, engines built, store open and writable (503 otherwise)",
        handler: || get(status::readyz),
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        scope: Scope::Open,
        summary: "Prometheus metrics",
        handler: || get(status::metrics),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/images",
        scope: Scope::Write,
        summary: "Add images: one image as the body (camera, time, pid as query parameters) -> 201 {id}, or multipart parts `image` and `meta` -> 201 {ids}, all or nothing; Idempotency-Key makes a retry answer as the first request did",
        handler: || post(ingest::add_images),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/images/{id}",
        scope: Scope::Read,
        summary: "A stored crop with its content type; ?size=thumb for a JPEG of at most 256 px",
        handler: || get(images::get_image),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/images/{box}/{id}",
        scope: Scope::Read,
        summary: "On a central search node: a crop fetched from its box (URL and key from --boxes); ?size=thumb as on the box",
        handler: || get(images::get_box_image),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/images/{id}",
        scope: Scope::Write,
        summary: "Delete one row -> 204",
        handler: || delete(images::delete_image),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/delete",
        scope: Scope::Write,
        summary: "Delete by {before} or {camera} or {ids} (all or nothing) -> {deleted}",
        handler: || post(images::delete_rows),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/watches",
        scope: Scope::Write,
        summary: "Add a watch {name, text | like | like_track, cameras, min_p | min_score, prior, cooldown_s} -> 201 {id}",
        handler: || post(watches::create),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/watches",
        scope: Scope::Read,
        summary: "Every watch -> {watches: [...]}",
        handler: || get(watches::list),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/watches/{id}",
        scope: Scope::Read,
        summary: "One watch",
        handler: || get(watches::get_one),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/watches/{id}",
        scope: Scope::Write,
        summary: "Delete a watch -> 204; it raises nothing from then on",
        handler: || delete(watches::delete_one),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/alerts/stream",
        scope: Scope::Read,
        summary: "Live alerts as Server-Sent Events (event `alert`, id = alert id); resumable with Last-Event-ID; a heartbeat every 15 s; at most --max-streams open",
        handler: || get(watches::stream),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/alerts",
        scope: Scope::Read,
        summary: "Alert history: ?from=&to= (creation time), ?watch=ID, ?limit= (100, at most 1000) -> {alerts: [...]}, oldest first",
        handler: || get(watches::history),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/search",
        scope: Scope::Read,
        summary: "Search by {text} or {like: id}, with k, cameras, from, to -> the SPEC §11 result object",
        handler: || post(search::search),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/embed/text",
        scope: Scope::Read,
        summary: "{texts} -> {embeddings}",
        handler: || post(search::embed_text),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/embed/image",
        scope: Scope::Read,
        summary: "An image body -> {embedding}",
        handler: || post(search::embed_image),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/stats",
        scope: Scope::Read,
        summary: "Store statistics, bundle, provider, uptime, readiness",
        handler: || get(status::stats),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/cameras",
        scope: Scope::Read,
        summary: "Cameras with rows, first, last and last ingest",
        handler: || get(status::cameras),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/openapi.json",
        scope: Scope::Read,
        summary: "This API as OpenAPI 3",
        handler: || get(openapi),
    },
];

pub(crate) fn scope_of(method: &Method, path: &str) -> Scope {
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
