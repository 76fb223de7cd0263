//! Adding crops: one image as the body, or multipart `image` parts with their `meta`.
//!
//! A request walks: read its parts, each image's content type and size (from its
//! header: SPEC §11's side and area limits) checked as it arrives and at most
//! `--max-images` of them (413 at the first past it); take room in the image queue
//! for all of them at once (429 when the queue cannot take the whole request now,
//! which a retry can pass: a request never needs more room than the queue has,
//! checked at start-up); decode them on the bounded pool; embed them as one admitted
//! group; add them to the store in one transaction.

use super::S;
use crate::batch::Timing;
use crate::error::ApiError;
use crate::extract::{body_bytes, query, too_large_msg};
use crate::middleware::Caller;
use crate::state::{Loaded, loaded};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sen_core::CoreError;
use sen_core::preprocess::Rgb8;
use sen_store::time;
use sen_store::{Crop, Idempotency, NewRow};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Instant;

/// Query parameters of a single-image add.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddParams {
    camera: Option<String>,
    time: Option<String>,
    pid: Option<i64>,
    track: Option<String>,
    /// `x1,y1,x2,y2`.
    bbox: Option<String>,
}

/// One `meta` entry of a multipart add.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub camera: Option<String>,
    pub time: Option<serde_json::Value>,
    pub pid: Option<i64>,
    pub attrs: Option<serde_json::Map<String, serde_json::Value>>,
    /// The tracked object this crop is of (SPEC §12).
    pub track: Option<String>,
    /// `[x1, y1, x2, y2]` in the source frame's pixels.
    pub bbox: Option<[f64; 4]>,
}

/// A `bbox` query parameter: `x1,y1,x2,y2`.
fn parse_bbox(s: &str) -> Result<[f64; 4], ApiError> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::Invalid(format!("bbox {s:?}: four numbers x1,y1,x2,y2")))?;
    <[f64; 4]>::try_from(v)
        .map_err(|_| ApiError::Invalid(format!("bbox {s:?}: four numbers x1,y1,x2,y2")))
}

/// A `meta` part: a JSON array of [`Meta`], one per image in order.
pub fn parse_meta(b: &[u8]) -> Result<Vec<Meta>, ApiError> {
    serde_json::from_slice(b).map_err(|e| {
        ApiError::Invalid(format!(
            "`meta`: a JSON array of {{camera, time, pid, attrs, track, bbox}}: {e}"
        ))
    })
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

/// An image's decoding failure: over a size limit 413, anything else 422.
pub(crate) fn image_err(e: CoreError) -> ApiError {
    match e {
        CoreError::ImageTooLarge { .. } => {
            ApiError::ImageTooLarge(format!("{e} (--max-image-side, --max-pixels)"))
        }
        other => ApiError::BadImage(other.to_string()),
    }
}

/// Check an image's size from its header (nothing decoded): 413 past the limits.
pub(crate) fn check_size(
    limits: &sen_core::preprocess::ImageLimits,
    bytes: &[u8],
    what: &str,
) -> Result<(), ApiError> {
    sen_core::preprocess::image_size(bytes, Path::new(what), limits)
        .map(|_| ())
        .map_err(image_err)
}

/// Decode `bytes` (within the size limits) on the bounded decoding pool and hand the
/// pixels to `then` there: every decode of the server (ingest, embedding, thumbnails)
/// goes through here, so at most one per core runs at once.
pub(crate) async fn decoded<T: Send + 'static>(
    app: &S,
    bytes: Bytes,
    what: String,
    then: impl FnOnce(Rgb8) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = app
        .decode_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
    let limits = app.cfg.image_limits;
    tokio::task::spawn_blocking(move || {
        let rgb = sen_core::preprocess::decode_rgb8_limited(&bytes, Path::new(&what), &limits)
            .map_err(image_err)?;
        then(rgb)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Decode and preprocess: the encoder's input tensor.
pub(crate) async fn prepare(
    app: &S,
    l: &Loaded,
    bytes: Bytes,
    what: String,
) -> Result<ndarray::Array3<f32>, ApiError> {
    let pre = l.enc.image.preprocessor.clone();
    let t = Instant::now();
    let r = decoded(app, bytes, what, move |rgb| Ok(pre.process(&rgb))).await;
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

/// One image of a request, as it arrived.
pub struct Upload {
    pub name: String,
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

impl Upload {
    /// How errors name it.
    pub fn what(&self, i: usize) -> String {
        format!(
            "image {} ({})",
            i + 1,
            if self.name.is_empty() {
                "unnamed"
            } else {
                &self.name
            }
        )
    }
}

/// The digest an Idempotency-Key is bound to: what the request asks to add (each
/// part's name, file name, content type and bytes, or the single image with its
/// query), not the raw body, so a retry with a new multipart boundary still matches.
#[derive(Default)]
struct RequestDigest(Sha256);

impl RequestDigest {
    fn field(&mut self, v: &[u8]) {
        self.0.update((v.len() as u64).to_le_bytes());
        self.0.update(v);
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// The limits reading an add checks as parts arrive.
#[derive(Debug, Clone, Copy)]
pub struct AddLimits {
    pub max_images: usize,
    pub max_body: usize,
    pub image: sen_core::preprocess::ImageLimits,
}

/// An add request as read: its images, each one's `meta` (camera, time, pid, attrs),
/// and the digest an Idempotency-Key is bound to.
pub struct AddRequest {
    pub multipart: bool,
    pub uploads: Vec<Upload>,
    pub metas: Vec<Option<Meta>>,
    pub digest: String,
}

/// Read an add: one image as the body (with `camera`, `time`, `pid` query
/// parameters), or multipart `image` parts and one `meta` part. Each image's content
/// type and size (from its header) are checked as it arrives, and the
/// `max_images + 1`-th is refused (413) before it is read; nothing is decoded.
pub async fn read_add(req: Request, limits: &AddLimits) -> Result<AddRequest, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let multipart = ct
        .as_deref()
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let mut digest = RequestDigest::default();
    if !multipart {
        check_type(ct.as_deref(), "the body")?;
        let p: AddParams = query(req.uri())?;
        digest.field(b"single");
        digest.field(req.uri().query().unwrap_or("").as_bytes());
        digest.field(ct.as_deref().unwrap_or("").as_bytes());
        let bytes = body_bytes(req.into_body(), limits.max_body).await?;
        check_size(&limits.image, &bytes, "the body")?;
        digest.field(&bytes);
        let upload = Upload {
            name: String::new(),
            content_type: ct,
            bytes,
        };
        let meta = Meta {
            camera: p.camera,
            time: p.time.map(serde_json::Value::String),
            pid: p.pid,
            attrs: None,
            track: p.track,
            bbox: p.bbox.as_deref().map(parse_bbox).transpose()?,
        };
        return Ok(AddRequest {
            multipart,
            uploads: vec![upload],
            metas: vec![Some(meta)],
            digest: digest.finish(),
        });
    }
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::Invalid(
            "a multipart add takes camera, time, pid and attrs in its `meta` part, not as query parameters".into(),
        ));
    }
    let mut mp = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    digest.field(b"multipart");
    match read_parts(&mut mp, limits, &mut digest).await {
        Ok((uploads, metas)) => Ok(AddRequest {
            multipart,
            uploads,
            metas,
            digest: digest.finish(),
        }),
        Err(e) => {
            drain(&mut mp).await;
            Err(e)
        }
    }
}

/// What is left of a refused request's body is read and dropped, up to 1 MiB, so a
/// client still sending it can read the answer (closing on unread bytes makes the
/// kernel reset the connection under the client's feet); past that the connection is
/// closed.
async fn drain(mp: &mut axum::extract::Multipart) {
    let mut left: usize = 1 << 20;
    while let Ok(Some(mut f)) = mp.next_field().await {
        while let Ok(Some(chunk)) = f.chunk().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                return;
            }
        }
    }
}

/// The multipart parts of an add, checked as they arrive.
async fn read_parts(
    mp: &mut axum::extract::Multipart,
    limits: &AddLimits,
    digest: &mut RequestDigest,
) -> Result<(Vec<Upload>, Vec<Option<Meta>>), ApiError> {
    let mut uploads: Vec<Upload> = vec![];
    let mut meta: Option<Vec<Meta>> = None;
    while let Some(field) = mp.next_field().await.map_err(multipart_err)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" => {
                if uploads.len() == limits.max_images {
                    return Err(ApiError::TooLarge(format!(
                        "more than --max-images {} images in one request; send at most {} a request",
                        limits.max_images, limits.max_images
                    )));
                }
                let u = Upload {
                    name: field.file_name().unwrap_or("").to_string(),
                    content_type: field.content_type().map(str::to_string),
                    bytes: Bytes::new(),
                };
                let what = u.what(uploads.len());
                check_type(u.content_type.as_deref(), &what)?;
                let bytes = field.bytes().await.map_err(multipart_err)?;
                check_size(&limits.image, &bytes, &what)?;
                for v in [
                    b"image".as_slice(),
                    u.name.as_bytes(),
                    u.content_type.as_deref().unwrap_or("").as_bytes(),
                    &bytes,
                ] {
                    digest.field(v);
                }
                uploads.push(Upload { bytes, ..u });
            }
            "meta" => {
                if meta.is_some() {
                    return Err(ApiError::Invalid(
                        "a second `meta` part; give one, a JSON array with an entry per image"
                            .into(),
                    ));
                }
                let b = field.bytes().await.map_err(multipart_err)?;
                digest.field(b"meta");
                digest.field(&b);
                meta = Some(parse_meta(&b)?);
            }
            other => {
                return Err(ApiError::Invalid(format!(
                    "multipart part {other:?}: expected parts named `image` and `meta`"
                )));
            }
        }
    }
    if uploads.is_empty() {
        return Err(ApiError::Invalid("no `image` parts".into()));
    }
    let metas: Vec<Option<Meta>> = match meta {
        None => uploads.iter().map(|_| None).collect(),
        Some(m) if m.is_empty() => uploads.iter().map(|_| None).collect(),
        Some(m) if m.len() == uploads.len() => m.into_iter().map(Some).collect(),
        Some(m) => {
            return Err(ApiError::Invalid(format!(
                "`meta` has {} entries for {} images; give one per image, in order",
                m.len(),
                uploads.len()
            )));
        }
    };
    Ok((uploads, metas))
}

/// The rows an add asks for, before embedding: camera names and times checked (before
/// any decoding), crops kept as they arrived.
pub fn rows_of(r: &AddRequest) -> Result<Vec<NewRow>, ApiError> {
    let mut rows: Vec<NewRow> = Vec::with_capacity(r.uploads.len());
    for (i, (u, m)) in r.uploads.iter().zip(&r.metas).enumerate() {
        let m = m.as_ref();
        let when = if r.multipart {
            format!("meta[{i}].time")
        } else {
            "time".into()
        };
        rows.push(NewRow {
            camera: sen_store::camera(m.and_then(|m| m.camera.clone()))?,
            time_ms: parse_time(&when, m.and_then(|m| m.time.as_ref()))?,
            path: match (r.multipart, u.name.is_empty()) {
                (true, false) => u.name.clone(),
                (true, true) => format!("upload-{}", i + 1),
                (false, _) => format!("upload-{}", uuid::Uuid::new_v4().simple()),
            },
            pid: m.and_then(|m| m.pid),
            attrs: m.and_then(|m| m.attrs.clone()),
            embedding: vec![],
            crop: Some(Crop {
                content_type: sniffed(&u.bytes, u.content_type.as_deref()),
                bytes: u.bytes.to_vec(),
            }),
            track: m.and_then(|m| m.track.clone()),
            bbox: m.and_then(|m| m.bbox),
            source: Some("http".into()),
        });
    }
    Ok(rows)
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
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::Invalid("Idempotency-Key: 1 to 256 visible ASCII characters".into())
                })
        })
        .transpose()?;
    let caller = req
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "open".to_string(), |c| c.0.clone());
    let add = read_add(
        req,
        &AddLimits {
            max_images: app.cfg.max_images,
            max_body: app.cfg.max_body,
            image: app.cfg.image_limits,
        },
    )
    .await?;
    let mut rows = rows_of(&add)?;
    // The whole request is admitted to the image queue, or none of it (429).
    let room = l.image.reserve(add.uploads.len())?;
    let tensors = futures::future::try_join_all(
        add.uploads
            .iter()
            .enumerate()
            .map(|(i, u)| prepare(&app, l, u.bytes.clone(), u.what(i))),
    )
    .await?;
    let embeddings = super::encode_reserved(&app, &room, tensors).await?;
    drop(room);
    for (row, v) in rows.iter_mut().zip(embeddings) {
        row.embedding = v;
    }
    let n = rows.len();
    let store = l.store()?.clone();
    if !store.info().crops {
        rows.iter_mut().for_each(|r| r.crop = None);
    }
    let key = key.map(|k| Idempotency {
        key: format!("{caller} POST /v1/images {k}"),
        request: add.digest.clone(),
    });
    let added = tokio::task::spawn_blocking(move || store.add_idempotent(rows, key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    if !added.replayed {
        app.metrics.ingested.inc_by(n as u64);
    }
    let ids: Vec<u64> = (added.first_id..=added.last_id).collect();
    let body = if add.multipart {
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
