//! Search by text or like a stored row (on a box: the store's batched search; on a
//! central node: the replicated collection), and the raw embedding routes.

use super::S;
use super::ingest::{check_type, embed, observe_encoder, prepare};
use crate::error::ApiError;
use crate::extract::{ApiJson, body_bytes};
use crate::state::{App, Central, Loaded, loaded};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use sen_core::scores::Moments;
use sen_core::scores::bundle::{QueryKind, ScoreCalibration};
use sen_store::results::result_json;
use sen_store::time::{self, TimeRange};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

// ---------------------------------------------------------------- search and embed

/// A `prior` is for a calibrated bundle, strictly between 0 and 1.
fn check_prior(l: &Loaded, prior: Option<f64>) -> Result<(), ApiError> {
    let Some(p) = prior else { return Ok(()) };
    if l.scores.is_none() {
        return Err(ApiError::Invalid(format!(
            "prior: {}",
            crate::start::NO_SCORE_CALIBRATION
        )));
    }
    sen_core::scores::check_prior(p).map_err(|e| ApiError::Invalid(format!("prior: {e}")))
}

/// What turns this query's scores into `p`: the calibration, the query's moments
/// over its background and the prior (None for a bundle without calibration).
type Calibrate = Option<(Arc<ScoreCalibration>, QueryKind, Moments, f64)>;

fn p_of(
    l: &Loaded,
    kind: QueryKind,
    query: &[f32],
    prior: Option<f64>,
) -> Result<Calibrate, ApiError> {
    let Some(c) = &l.scores else { return Ok(None) };
    let m = c
        .moments(query)
        .map_err(|e| ApiError::Internal(format!("score calibration: {e}")))?;
    let prior = prior.unwrap_or(c.fit(kind).prior);
    Ok(Some((c.clone(), kind, m, prior)))
}

/// Put `p` beside each result's `score`, and the prior it was computed at beside the
/// results.
fn add_p(v: &mut serde_json::Value, calibrate: Calibrate) {
    let Some((c, kind, m, prior)) = calibrate else {
        return;
    };
    if let Some(rs) = v["results"].as_array_mut() {
        for r in rs {
            if let Some(s) = r["score"].as_f64() {
                r["p"] = c.p(kind, &m, s, Some(prior)).into();
            }
        }
    }
    v["prior"] = prior.into();
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchBody {
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
    /// `"track"`: one item per track (SPEC §12).
    group: Option<String>,
    /// "More like this" of a track: the normalised mean of its crops.
    like_track: Option<LikeTrack>,
    /// The prior `p` is computed at (the share of gallery crops that show the
    /// person); the calibration's own when absent.
    prior: Option<f64>,
}

/// A track, as `like_track` names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LikeTrack {
    camera: Option<String>,
    track: String,
}

/// `group`: absent, or `"track"`.
fn grouping(g: Option<&str>) -> Result<bool, ApiError> {
    match g {
        None => Ok(false),
        Some("track") => Ok(true),
        Some(other) => Err(ApiError::Invalid(format!(
            "group {other:?}: the one grouping is \"track\" (one item per tracked person)"
        ))),
    }
}

pub(crate) fn check_text(app: &App, t: &str, what: &str) -> Result<(), ApiError> {
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

pub(crate) async fn encode_text(app: &S, l: &Loaded, t: String) -> Result<Vec<f32>, ApiError> {
    let (v, tm) = l.text.submit(t).await?;
    observe_encoder(app, &tm);
    Ok(v)
}

pub(crate) async fn search(
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
            sen_store::camera(Some(c.clone()))?;
        }
    }
    let group = grouping(b.group.as_deref())?;
    check_prior(l, b.prior)?;
    if let Some(c) = &l.central {
        if group || b.like_track.is_some() {
            return Err(ApiError::Invalid(
                "grouping by track and like_track are not supported on a central search node yet; search a box for them".into(),
            ));
        }
        return search_central(&app, l, c, b, k, range, t0).await;
    }
    if b.like_box.is_some() || b.boxes.is_some() {
        return Err(ApiError::Invalid(
            "like_box and boxes are for a central search node (--search-backend); this box searches its own store".into(),
        ));
    }
    let (vector, exclude) = match (&b.text, b.like, &b.like_track) {
        (Some(t), None, None) => {
            check_text(&app, t, "text")?;
            (encode_text(&app, l, t.clone()).await?, vec![])
        }
        (None, Some(id), None) => {
            let store = l.store()?.clone();
            let v = tokio::task::spawn_blocking(move || store.embedding(id))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            (v, vec![id])
        }
        (None, None, Some(lt)) => {
            let camera = sen_store::camera(lt.camera.clone())?;
            sen_store::check_track(&lt.track)
                .map_err(|e| ApiError::Invalid(format!("like_track: {e}")))?;
            let store = l.store()?.clone();
            let track = lt.track.clone();
            tokio::task::spawn_blocking(move || store.track_embedding(&camera, &track))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??
        }
        _ => {
            return Err(ApiError::Invalid(
                "give exactly one of text, like or like_track".into(),
            ));
        }
    };
    let kind = if b.text.is_some() {
        QueryKind::Text
    } else {
        QueryKind::Image
    };
    let calibrate = p_of(l, kind, &vector, b.prior)?;
    let q = sen_store::Query {
        vector,
        k,
        cameras: b.cameras.clone(),
        time: range,
        exclude,
        group,
    };
    let queue = l
        .search
        .as_ref()
        .ok_or_else(|| ApiError::Internal("no search queue".into()))?;
    let (found, tm) = queue.submit(q).await?;
    let found = found?;
    app.metrics
        .stage
        .with_label_values(&["queue"])
        .observe(tm.queued.as_secs_f64());
    app.metrics
        .stage
        .with_label_values(&["search"])
        .observe(tm.ran.as_secs_f64());
    let took = t0.elapsed().as_secs_f64() * 1e3;
    let mut v = result_json(b.text.as_deref(), b.like, took, &found);
    add_p(&mut v, calibrate);
    if let Some(lt) = &b.like_track {
        v["like_track"] = serde_json::json!({
            "camera": lt.camera.as_deref().unwrap_or(sen_store::store::DEFAULT_CAMERA),
            "track": lt.track,
        });
    }
    if group {
        v["group"] = "track".into();
    }
    Ok(Json(v).into_response())
}

/// A search on a central node: through the replicated collection, results with `box`.
async fn search_central(
    app: &S,
    l: &Loaded,
    c: &Central,
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
    let kind = if b.text.is_some() {
        QueryKind::Text
    } else {
        QueryKind::Image
    };
    let calibrate = p_of(l, kind, &vector, b.prior)?;
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
    let mut v = sen_milvus::boxed_result_json(b.text.as_deref(), b.like, took, &hits);
    add_p(&mut v, calibrate);
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedTextBody {
    texts: Vec<String>,
}

pub(crate) async fn embed_text(
    State(app): State<S>,
    ApiJson(b): ApiJson<EmbedTextBody>,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    // A request's texts are admitted to the queue together, so at most as many as
    // the queue holds.
    let cap = l.text.capacity().min(256);
    if b.texts.is_empty() || b.texts.len() > cap {
        return Err(ApiError::Invalid(format!(
            "texts: give 1 to {cap} texts (got {}; at most 256, and at most --max-queue)",
            b.texts.len()
        )));
    }
    for (i, t) in b.texts.iter().enumerate() {
        check_text(&app, t, &format!("texts[{i}]"))?;
    }
    let room = l.text.reserve(b.texts.len())?;
    let embeddings = super::encode_reserved(&app, &room, b.texts).await?;
    Ok(Json(serde_json::json!({ "embeddings": embeddings })).into_response())
}

pub(crate) async fn embed_image(
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
    let x = prepare(&app, l, b, "the body".into()).await?;
    let e = embed(&app, l, x).await?;
    Ok(Json(serde_json::json!({"embedding": e})).into_response())
}
