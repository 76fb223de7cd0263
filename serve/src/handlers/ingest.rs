//! Adding crops: one image as the body, or multipart `image` parts with their `meta`.

use super::S;
use crate::batch::Timing;
use crate::error::ApiError;
use crate::extract::{body_bytes, query, too_large_msg};
use crate::state::{Loaded, loaded};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sen_store::time;
use sen_store::{Crop, NewRow};
use serde::Deserialize;
use std::time::Instant;

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

pub(crate) fn check_type(ct: Option<&str>, what: &str) -> Result<(), ApiError> {
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
pub(crate) async fn prepare(
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

pub(crate) async fn embed(
    app: &S,
    l: &Loaded,
    x: ndarray::Array3<f32>,
) -> Result<Vec<f32>, ApiError> {
    let (v, t) = l.image.submit(x).await?;
    observe_encoder(app, &t);
    Ok(v)
}

/// An encoder request's queue and inference time, into the stage histogram.
pub(crate) fn observe_encoder(app: &S, t: &Timing) {
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

pub(crate) async fn add_images(
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
                camera: sen_store::camera(m.as_ref().and_then(|m| m.camera.clone()))?,
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
            camera: sen_store::camera(p.camera)?,
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
