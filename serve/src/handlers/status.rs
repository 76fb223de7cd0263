//! Liveness, readiness, metrics, statistics and cameras.

use super::S;
use crate::error::ApiError;
use crate::middleware::KeyScope;
use crate::state::loaded;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sen_store::results::stats_json;
use std::sync::atomic::Ordering;

// ---------------------------------------------------------------- health

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn readyz(State(app): State<S>) -> Response {
    match loaded(&app) {
        Ok(l) => {
            // A central node: loaded means the collection answered and is loaded.
            let Some(store) = l.store.clone() else {
                return Json(serde_json::json!({"ready": true})).into_response();
            };
            // Writable: the writer thread answers and takes the database's write lock.
            match tokio::task::spawn_blocking(move || store.ping()).await {
                Ok(Ok(_)) => {
                    let mut v = serde_json::json!({"ready": true});
                    // A source's connection is detail: the box still answers searches
                    // and HTTP ingest while the broker is away.
                    if let Some(s) = source_json(&app).await {
                        v["source"] = s;
                    }
                    Json(v).into_response()
                }
                Ok(Err(e)) => {
                    ApiError::Unavailable(format!("the store is not writable: {e}")).into_response()
                }
                Err(e) => ApiError::Unavailable(e.to_string()).into_response(),
            }
        }
        Err(e) => e.into_response(),
    }
}

/// The running source's state (connection, inbox, skips), read off the async workers.
async fn source_json(app: &S) -> Option<serde_json::Value> {
    app.source.get()?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || app.source.get().map(|s| s.json()))
        .await
        .ok()
        .flatten()
}

pub(crate) async fn metrics(State(app): State<S>) -> Response {
    if app.source.get().is_some() {
        let a = app.clone();
        let _ = tokio::task::spawn_blocking(move || a.source.get().map(|s| s.refresh())).await;
    }
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

// ---------------------------------------------------------------- stats

pub(crate) async fn stats(
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
    if let Some(s) = source_json(&app).await {
        obj.insert("source".into(), s);
    }
    if let Some(store) = l.store.clone() {
        // Watches, and the alerts each sink gave up on (SPEC §12).
        let (watches, failed) = tokio::task::spawn_blocking(move || {
            Ok::<_, sen_store::StoreError>((store.watches()?.len(), store.alert_failures()?))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        let failed: serde_json::Map<String, serde_json::Value> =
            failed.into_iter().map(|(k, n)| (k, n.into())).collect();
        obj.insert(
            "alerts".into(),
            serde_json::json!({"watches": watches, "failed": failed}),
        );
    }
    obj.insert(
        "bundle".into(),
        serde_json::json!({
            "sha256": l.bundle_sha256,
            "precision": l.precision,
            "score_calibration": score_calibration_json(l),
        }),
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

pub(crate) async fn cameras(State(app): State<S>) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let store = l.store()?.clone();
    let s = tokio::task::spawn_blocking(move || store.stats())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(stats_json(&s)["cameras"].clone()).into_response())
}

/// The bundle's score calibration as `/v1/stats` shows it: the stored priors and what
/// it was fitted on, or why `p` is unavailable.
fn score_calibration_json(l: &crate::state::Loaded) -> serde_json::Value {
    match &l.scores {
        Some(c) => serde_json::json!({
            "prior": {"text": c.file.text.prior, "like": c.file.image.prior},
            "fitted": c.file.fitted,
            "background": c.file.background_count,
        }),
        None => serde_json::json!({"unavailable": crate::start::NO_SCORE_CALIBRATION}),
    }
}
