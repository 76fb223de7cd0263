//! Watches (SPEC §12): `POST /v1/watches` (write scope), `GET /v1/watches`,
//! `GET /v1/watches/{id}` (read), `DELETE /v1/watches/{id}` (write). A watch's query
//! is embedded when it is made, so the writer only compares vectors.

use super::S;
use super::images::parse_id;
use super::search::{check_text, encode_text};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::loaded;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sen_store::watch::{DEFAULT_COOLDOWN_S, Threshold, WatchQuery, WatchSpec};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchBody {
    name: String,
    text: Option<String>,
    like: Option<u64>,
    like_track: Option<LikeTrack>,
    cameras: Option<Vec<String>>,
    min_p: Option<f64>,
    min_score: Option<f64>,
    prior: Option<f64>,
    cooldown_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LikeTrack {
    camera: Option<String>,
    track: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, sen_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??)
}

pub(crate) async fn create(
    State(app): State<S>,
    ApiJson(b): ApiJson<WatchBody>,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let store = l.store()?.clone();
    let threshold = match (b.min_p, b.min_score) {
        (Some(p), None) => {
            if l.scores.is_none() {
                return Err(ApiError::Invalid(format!(
                    "min_p: {}",
                    crate::start::NO_SCORE_CALIBRATION
                )));
            }
            Threshold::MinP(p)
        }
        (None, Some(s)) => Threshold::MinScore(s),
        _ => {
            return Err(ApiError::Invalid(
                "give min_p (a calibrated probability) or min_score (a raw cosine), not both"
                    .into(),
            ));
        }
    };
    if b.prior.is_some() && matches!(threshold, Threshold::MinScore(_)) {
        return Err(ApiError::Invalid(
            "prior: it sets the base rate of min_p; a min_score watch has no p".into(),
        ));
    }
    let query = match (b.text, b.like, b.like_track) {
        (Some(t), None, None) => {
            check_text(&app, &t, "text")?;
            WatchQuery::Text(t)
        }
        (None, Some(id), None) => WatchQuery::Like(id),
        (None, None, Some(lt)) => WatchQuery::LikeTrack {
            camera: sen_store::camera(lt.camera)?,
            track: lt.track,
        },
        _ => {
            return Err(ApiError::Invalid(
                "give exactly one of text, like or like_track".into(),
            ));
        }
    };
    let spec = WatchSpec {
        name: b.name,
        query,
        cameras: b.cameras,
        threshold,
        prior: b.prior,
        cooldown_s: b.cooldown_s.unwrap_or(DEFAULT_COOLDOWN_S),
    };
    // Every field is checked before the query is embedded.
    spec.check()?;
    let vector = match &spec.query {
        WatchQuery::Text(t) => encode_text(&app, l, t.clone()).await?,
        WatchQuery::Like(id) => {
            let (s, id) = (store.clone(), *id);
            blocking(move || s.embedding(id)).await?
        }
        WatchQuery::LikeTrack { camera, track } => {
            let (s, c, t) = (store.clone(), camera.clone(), track.clone());
            blocking(move || s.track_embedding(&c, &t)).await?.0
        }
    };
    let s = store.clone();
    let id = blocking(move || s.watch_add(spec, vector)).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response())
}

pub(crate) async fn list(State(app): State<S>) -> Result<Response, ApiError> {
    let store = loaded(&app)?.store()?.clone();
    let ws = blocking(move || store.watches()).await?;
    let v: Vec<serde_json::Value> = ws.iter().map(|w| w.json()).collect();
    Ok(Json(serde_json::json!({ "watches": v })).into_response())
}

pub(crate) async fn get_one(
    State(app): State<S>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let store = loaded(&app)?.store()?.clone();
    match blocking(move || store.watch(id)).await? {
        Some(w) => Ok(Json(w.json()).into_response()),
        None => Err(ApiError::NotFound(format!("no watch {id}"))),
    }
}

pub(crate) async fn delete_one(
    State(app): State<S>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let store = loaded(&app)?.store()?.clone();
    if blocking(move || store.watch_delete(id)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no watch {id}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertParams {
    from: Option<String>,
    to: Option<String>,
    watch: Option<u64>,
    limit: Option<usize>,
}

/// The most alerts one history request returns.
const MAX_ALERTS: usize = 1000;

/// `GET /v1/alerts?from=&to=&watch=&limit=`: alerts created in `[from, to)`, oldest
/// first (RFC 3339 or Unix ms, as search filters take them).
pub(crate) async fn history(
    State(app): State<S>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let p: AlertParams = crate::extract::query(&uri)?;
    let time = |what: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| sen_store::time::parse(what, s))
            .transpose()
            .map_err(|e| ApiError::Invalid(e.to_string()))
    };
    let (from, to) = (time("from", &p.from)?, time("to", &p.to)?);
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_ALERTS {
        return Err(ApiError::Invalid(format!(
            "limit {limit}: 1 to {MAX_ALERTS}"
        )));
    }
    let store = loaded(&app)?.store()?.clone();
    let watch = p.watch;
    let alerts = blocking(move || store.alerts(from, to, watch, limit)).await?;
    let v: Vec<serde_json::Value> = alerts.iter().map(|a| a.json()).collect();
    Ok(Json(serde_json::json!({ "alerts": v })).into_response())
}

/// How often an open stream looks for new alerts.
const STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `GET /v1/alerts/stream`: Server-Sent Events, one `alert` event per alert with its
/// id as the event id, from after `Last-Event-ID` (a reconnecting client misses
/// nothing and sees nothing twice) or, without it, from now; a comment every 15 s
/// keeps proxies from closing it. The response is made at once, so the request
/// timeout does not cut the stream; `--max-streams` bounds how many are open.
pub(crate) async fn stream(
    State(app): State<S>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let store = loaded(&app)?.store()?.clone();
    let last = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::Invalid("Last-Event-ID: an alert id (a whole number)".into())
                })?,
        ),
        None => None,
    };
    let permit = app.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "{} alert streams are open, the most --max-streams allows; retry later",
            app.cfg.max_streams
        ))
    })?;
    let cursor = match last {
        Some(id) => id,
        None => {
            let s = store.clone();
            blocking(move || s.newest_alert()).await?
        }
    };
    struct St {
        store: std::sync::Arc<sen_store::Store>,
        cursor: u64,
        ready: std::collections::VecDeque<sen_store::db::Alert>,
        app: S,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let st = St {
        store,
        cursor,
        ready: Default::default(),
        app: app.clone(),
        _permit: permit,
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(a) = st.ready.pop_front() {
                let ev = Event::default()
                    .id(a.id.to_string())
                    .event("alert")
                    .data(a.json().to_string());
                return Some((Ok::<_, std::convert::Infallible>(ev), st));
            }
            if st.app.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            let (s, c) = (st.store.clone(), st.cursor);
            match tokio::task::spawn_blocking(move || s.alerts_after(c, 64)).await {
                Ok(Ok(next)) if !next.is_empty() => {
                    st.cursor = next.last().map_or(st.cursor, |a| a.id);
                    st.ready.extend(next);
                }
                Ok(Ok(_)) => tokio::time::sleep(STREAM_POLL).await,
                Ok(Err(e)) => {
                    tracing::warn!("alert stream: reading alerts: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(_) => return None,
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(std::time::Duration::from_secs(15))
                .text("heartbeat"),
        )
        .into_response())
}
