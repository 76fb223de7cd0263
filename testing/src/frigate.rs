//! A Frigate stand-in for tests, shaped as Frigate's API answers (its repository's
//! `frigate/api/media.py` and `event.py`, 0.16 to 0.18):
//!
//! - `GET /api/events/{id}/snapshot.jpg` renders the event's *current* best
//!   snapshot (not the one a message named), with `X-Frame-Time` only when it plays
//!   0.18 ([`State::header`]);
//! - `GET /api/events/{id}/thumbnail.jpg`, `GET /api/events` (ended events after a
//!   start time, by labels and cameras, sorted by date), `/api/version`,
//!   `/api/config` (detect sizes), `POST /api/login` (a JWT in `Set-Cookie`);
//! - faults per event: 404, a number of 500s, a slow answer; and [`Frigate::stop`] /
//!   [`Frigate::start`] for a Frigate that is down.
//!
//! Every image is a PNG that names its event and frame ([`image`]), so a test can
//! check a stored crop is the snapshot its key names.

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One tracked object.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub camera: String,
    pub label: String,
    pub start: f64,
    pub end: Option<f64>,
    /// The frame time of the current best snapshot.
    pub best: f64,
    pub has_snapshot: bool,
    /// The best snapshot's box, detect pixels `[x1, y1, x2, y2]`.
    pub bbox: [f64; 4],
    pub zones: Vec<String>,
    pub score: f64,
}

#[derive(Debug, Clone)]
pub enum Fault {
    NotFound,
    /// Answer 500 this many more times.
    Errors(u32),
    Slow(Duration),
}

#[derive(Default)]
pub struct State {
    /// Play 0.18 (snapshots carry `X-Frame-Time`) or 0.17 (they do not).
    pub header: bool,
    pub events: BTreeMap<String, Event>,
    pub faults: BTreeMap<String, Fault>,
    /// With a login: (user, password); every request then needs the current token.
    pub login: Option<(String, String)>,
    pub token: Option<String>,
    pub logins: u32,
    /// Paths requested, in order (unless `quiet`).
    pub requests: Vec<String>,
    pub quiet: bool,
    /// Real crops to serve instead of the rendered PNGs (a load run): an event's
    /// image is `crops[hash of its id % len]`.
    pub crops: Arc<Vec<Vec<u8>>>,
}

pub type Shared = Arc<Mutex<State>>;

/// The detect size of every camera (what `/api/config` says).
pub const DETECT: (f64, f64) = (1280.0, 720.0);

/// The PNG Frigate renders for an event's frame (a thumbnail is frame `-1`): its
/// pixels are a function of both, so no two are alike.
pub fn image(id: &str, frame: f64) -> Vec<u8> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id
        .bytes()
        .chain(((frame * 1000.0).round() as i64).to_le_bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let img = image::RgbImage::from_fn(24, 48, |x, y| {
        let v = h.rotate_left((x * 7 + y * 3) % 64);
        image::Rgb([
            v as u8,
            (v >> 8) as u8,
            ((v >> 16) as u8) ^ (x * 10 + y) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding a PNG");
    out.into_inner()
}

/// A running stand-in.
pub struct Frigate {
    rt: tokio::runtime::Runtime,
    pub port: u16,
    pub state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Frigate {
    pub fn start_new(header: bool) -> Frigate {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the Frigate stand-in");
        let state: Shared = Arc::new(Mutex::new(State {
            header,
            ..Default::default()
        }));
        let port = crate::mqtt::free_port();
        let mut f = Frigate {
            rt,
            port,
            state,
            stop: None,
        };
        f.start();
        f
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (Re)start serving on its port.
    pub fn start(&mut self) {
        let app = axum::Router::new()
            .route("/api/version", get(version))
            .route("/api/config", get(config))
            .route("/api/login", post(login))
            .route("/api/events", get(events))
            .route("/api/events/{id}/{file}", get(media))
            .with_state(self.state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let port = self.port;
        let listener = self.rt.block_on(async {
            for _ in 0..100 {
                if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the Frigate stand-in cannot bind port {port}")
        });
        self.rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        self.stop = Some(tx);
    }

    /// Stop answering (connections are refused) until [`Frigate::start`].
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Graceful shutdown returns once open connections close; wait for the port.
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && t.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `events` message Frigate publishes for an event now (`kind`: new, update,
    /// end), its snapshot the one the message names.
    pub fn message(&self, id: &str, kind: &str, before_frame: Option<f64>) -> Vec<u8> {
        let s = self.lock();
        let e = &s.events[id];
        let after = object(e, Some(e.best));
        let before = before_frame.map(|f| object(e, Some(f)));
        serde_json::to_vec(&serde_json::json!({"type": kind, "before": before, "after": after}))
            .expect("json")
    }
}

fn object(e: &Event, frame: Option<f64>) -> serde_json::Value {
    serde_json::json!({
        "id": e.id, "camera": e.camera, "frame_time": frame.unwrap_or(e.start) + 0.5,
        "snapshot": frame.map(|f| serde_json::json!({
            "frame_time": f, "box": e.bbox, "area": 100, "region": [0, 0, 320, 320],
            "score": e.score, "attributes": [], "path_data": [],
        })),
        "label": e.label, "sub_label": null, "top_score": e.score, "false_positive": false,
        "start_time": e.start, "end_time": e.end, "score": e.score, "box": e.bbox,
        "area": 100, "ratio": 0.5, "region": [0, 0, 320, 320], "current_zones": e.zones,
        "entered_zones": e.zones, "has_clip": true, "has_snapshot": e.has_snapshot,
        "active": true, "stationary": false, "motionless_count": 0, "position_changes": 1,
        "attributes": {}, "current_attributes": [], "pending_loitering": false,
        "max_severity": "detection", "path_data": [], "recognized_license_plate": null,
    })
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Check the bearer token when a login is configured.
fn authorised(s: &State, h: &HeaderMap) -> bool {
    if s.login.is_none() {
        return true;
    }
    let got = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    got.is_some() && got == s.token.as_deref()
}

fn unauthorised() -> Response {
    (StatusCode::UNAUTHORIZED, "{\"message\":\"unauthorized\"}").into_response()
}

async fn version(AxState(s): AxState<Shared>, h: HeaderMap) -> Response {
    let s = lock(&s);
    if !authorised(&s, &h) {
        return unauthorised();
    }
    (if s.header {
        "0.18.0-test"
    } else {
        "0.17.2-test"
    })
    .into_response()
}

async fn config(AxState(s): AxState<Shared>, h: HeaderMap) -> Response {
    let s = lock(&s);
    if !authorised(&s, &h) {
        return unauthorised();
    }
    let cams: serde_json::Map<String, serde_json::Value> = s
        .events
        .values()
        .map(|e| {
            (
                e.camera.clone(),
                serde_json::json!({"detect": {"width": DETECT.0, "height": DETECT.1}}),
            )
        })
        .collect();
    axum::Json(serde_json::json!({"cameras": cams})).into_response()
}

async fn login(AxState(s): AxState<Shared>, body: axum::Json<serde_json::Value>) -> Response {
    let mut s = lock(&s);
    let ok = s
        .login
        .as_ref()
        .is_some_and(|(u, p)| body["user"] == *u && body["password"] == *p);
    if !ok {
        return (StatusCode::UNAUTHORIZED, "{\"message\":\"Login failed\"}").into_response();
    }
    s.logins += 1;
    let token = format!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZW4ifQ.sig{}", s.logins);
    s.token = Some(token.clone());
    (
        [(
            header::SET_COOKIE,
            format!("frigate_token={token}; HttpOnly; Path=/; SameSite=lax"),
        )],
        "",
    )
        .into_response()
}

async fn events(
    AxState(s): AxState<Shared>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let s = lock(&s);
    if !authorised(&s, &h) {
        return unauthorised();
    }
    let after: f64 = q.get("after").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let list = |k: &str| {
        q.get(k)
            .map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
    };
    let (labels, cameras) = (list("labels"), list("cameras"));
    let limit: usize = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut evs: Vec<&Event> = s
        .events
        .values()
        .filter(|e| e.start > after && e.end.is_some())
        .filter(|e| labels.as_ref().is_none_or(|l| l.contains(&e.label)))
        .filter(|e| cameras.as_ref().is_none_or(|c| c.contains(&e.camera)))
        .collect();
    evs.sort_by(|a, b| a.start.total_cmp(&b.start));
    let out: Vec<serde_json::Value> = evs
        .into_iter()
        .take(limit)
        .map(|e| {
            let b = e.bbox;
            serde_json::json!({
                "id": e.id, "camera": e.camera, "label": e.label, "zones": e.zones,
                "start_time": e.start, "end_time": e.end, "has_clip": true,
                "has_snapshot": e.has_snapshot, "plus_id": null, "retain_indefinitely": false,
                "sub_label": null, "top_score": null, "false_positive": null, "box": null,
                "data": {
                    "box": [b[0] / DETECT.0, b[1] / DETECT.1, (b[2] - b[0]) / DETECT.0, (b[3] - b[1]) / DETECT.1],
                    "score": e.score, "top_score": e.score, "type": "object", "attributes": [],
                },
            })
        })
        .collect();
    axum::Json(out).into_response()
}

async fn media(
    AxState(s): AxState<Shared>,
    h: HeaderMap,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let (fault, ev, header_mode, crops) = {
        let mut st = lock(&s);
        if !authorised(&st, &h) {
            return unauthorised();
        }
        if !st.quiet {
            st.requests.push(format!("{id}/{file}"));
        }
        let fault = match st.faults.get_mut(&id) {
            Some(Fault::Errors(n)) if *n > 0 => {
                *n -= 1;
                Some(Fault::Errors(1))
            }
            Some(Fault::Errors(_)) => None,
            other => other.cloned(),
        };
        (
            fault,
            st.events.get(&id).cloned(),
            st.header,
            st.crops.clone(),
        )
    };
    match fault {
        Some(Fault::NotFound) => {
            return (
                StatusCode::NOT_FOUND,
                "{\"success\":false,\"message\":\"Event not found\"}",
            )
                .into_response();
        }
        Some(Fault::Errors(_)) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let Some(e) = ev else {
        return (
            StatusCode::NOT_FOUND,
            "{\"success\":false,\"message\":\"Event not found\"}",
        )
            .into_response();
    };
    match file.as_str() {
        "snapshot.jpg" => {
            // An ended event without a snapshot has none (Frigate answers 404).
            if e.end.is_some() && !e.has_snapshot {
                return (
                    StatusCode::NOT_FOUND,
                    "{\"success\":false,\"message\":\"Snapshot not available\"}",
                )
                    .into_response();
            }
            let body = if crops.is_empty() {
                image(&e.id, e.best)
            } else {
                let h =
                    e.id.bytes()
                        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                crops[(h % crops.len() as u64) as usize].clone()
            };
            let mut r = ([(header::CONTENT_TYPE, "image/jpeg")], body).into_response();
            if header_mode {
                r.headers_mut()
                    .insert("x-frame-time", e.best.to_string().parse().expect("header"));
            }
            r
        }
        "thumbnail.jpg" => {
            ([(header::CONTENT_TYPE, "image/jpeg")], image(&e.id, -1.0)).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
