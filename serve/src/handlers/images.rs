//! Stored crops and their thumbnails (on a central node: fetched from their box),
//! and deletes.

use super::S;
use crate::error::ApiError;
use crate::extract::{ApiJson, query};
use crate::state::loaded;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sen_store::Selector;
use sen_store::time;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};

// ---------------------------------------------------------------- images

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageParams {
    size: Option<String>,
}

pub(crate) fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::Invalid(format!("id {s:?}: ids are whole numbers")))
}

pub(crate) async fn get_image(
    State(app): State<S>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let id = parse_id(&id)?;
    let thumb = wants_thumb(&uri)?;
    let store = l.store()?.clone();
    // The cache answers only for a live row: a row deleted by any means (by id, by
    // camera or time, by retention) is gone from the snapshot at once.
    if thumb
        && let Some(b) = app.thumbs.lock().unwrap_or_else(|e| e.into_inner()).get(id)
        && store.is_live(id)
    {
        return Ok(image_response("image/jpeg", b));
    }
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
    let b = super::ingest::decoded(
        &app,
        Bytes::from(crop.bytes),
        format!("the crop of row {id}"),
        thumbnail,
    )
    .await?;
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

pub(crate) async fn get_box_image(
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
    crate::central::proxy_image(&c.boxes, &bx, id, thumb).await
}

pub(crate) fn image_response(ct: &str, b: Bytes) -> Response {
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
fn thumbnail(rgb: sen_core::preprocess::Rgb8) -> Result<Bytes, ApiError> {
    let img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data)
        .map(image::DynamicImage::ImageRgb8)
        .ok_or_else(|| ApiError::Internal("a decoded crop of the wrong size".into()))?;
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

pub(crate) async fn delete_image(
    State(app): State<S>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
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
pub(crate) struct DeleteBody {
    before: Option<serde_json::Value>,
    camera: Option<String>,
    ids: Option<Vec<u64>>,
}

pub(crate) async fn delete_rows(
    State(app): State<S>,
    ApiJson(b): ApiJson<DeleteBody>,
) -> Result<Response, ApiError> {
    let l = loaded(&app)?;
    let sel = match (b.before, b.camera, b.ids) {
        (Some(t), None, None) => Selector::Before(
            time::from_json("before", &t).map_err(|e| ApiError::Invalid(e.to_string()))?,
        ),
        (None, Some(c), None) => Selector::Camera(sen_store::camera(Some(c))?),
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
