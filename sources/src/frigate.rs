//! Frigate (SPEC §12; 0.16 and later): `<prefix>/events` messages (new, update, end)
//! name a tracked object; its crop comes from Frigate's API.
//!
//! The right image: `snapshot.jpg` renders the event's *current* best snapshot, not
//! the one a message names. When Frigate says which frame it rendered
//! (`X-Frame-Time`, 0.18 and later), every new best snapshot is ingested, keyed by
//! that time. Otherwise only the ended event's snapshot (fixed once it ends) is
//! ingested, at the message's `snapshot.frame_time`; updates add nothing. On every
//! (re)connect a backfill asks `/api/events` for the events that ended after the
//! durable cursor and queues the ones not done.

use crate::config::{FrigateAuth, FrigateConfig};
use crate::mqtt::now_ms;
use crate::process::{Ctx, Handler, Outcome};
use anyhow::{Context, Result};
use futures::future::BoxFuture;
use sen_store::{Finished, InboxEntry, InboxMessage, NewRow};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// A `<prefix>/events` message (unknown fields ignored).
#[derive(Debug, Deserialize)]
pub struct EventMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub before: Option<TrackedObject>,
    pub after: TrackedObject,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrackedObject {
    pub id: String,
    pub camera: String,
    pub label: String,
    #[serde(default)]
    pub sub_label: serde_json::Value,
    #[serde(default)]
    pub false_positive: bool,
    pub start_time: f64,
    #[serde(default)]
    pub end_time: Option<f64>,
    #[serde(default)]
    pub frame_time: Option<f64>,
    #[serde(default)]
    pub snapshot: Option<Snapshot>,
    #[serde(default)]
    pub has_snapshot: bool,
    #[serde(default)]
    pub current_zones: Vec<String>,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub top_score: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    /// Absent only in a backfilled event of Frigate before 0.18 (its API does not
    /// say the snapshot's frame).
    #[serde(default)]
    pub frame_time: Option<f64>,
    /// `[x1, y1, x2, y2]` in the detect resolution's pixels.
    #[serde(rename = "box", default)]
    pub bbox: Option<[f64; 4]>,
}

/// Seconds (Frigate's float epoch) to Unix ms.
fn ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

/// Why a fetch from Frigate failed.
#[derive(Debug)]
pub enum FetchError {
    /// 404: the event or its image is gone.
    NotFound(String),
    /// The image is over the size limit (`--max-body-mib`).
    TooLarge(String),
    /// Anything worth retrying (connection refused, 5xx, timeout, 401 after a new
    /// login).
    Failed(String),
}

/// Frigate's HTTP API, with its sign-in.
pub struct Api {
    base: String,
    http: reqwest::Client,
    auth: FrigateAuth,
    token: tokio::sync::Mutex<Option<String>>,
}

impl Api {
    pub fn new(base: &str, auth: FrigateAuth, timeout: Duration) -> Result<Api> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!(
                "--frigate-api {base:?}: give http://HOST:PORT (5000 unauthenticated, 8971 with a login)"
            );
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("the Frigate API client")?;
        let token = match &auth {
            FrigateAuth::Token(t) => Some(t.0.clone()),
            _ => None,
        };
        Ok(Api {
            base,
            http,
            auth,
            token: tokio::sync::Mutex::new(token),
        })
    }

    /// `POST /api/login`: the JWT from the `Set-Cookie` it answers with.
    async fn login(&self) -> Result<String, FetchError> {
        let FrigateAuth::Login { user, password } = &self.auth else {
            return Err(FetchError::Failed(
                "Frigate answered 401: set SEN_FRIGATE_TOKEN, or SEN_FRIGATE_USER and SEN_FRIGATE_PASSWORD".into(),
            ));
        };
        let r = self
            .http
            .post(format!("{}/api/login", self.base))
            .json(&serde_json::json!({"user": user, "password": password.0}))
            .send()
            .await
            .map_err(|e| FetchError::Failed(format!("{}/api/login: {}", self.base, plain(&e))))?;
        if !r.status().is_success() {
            return Err(FetchError::Failed(format!(
                "{}/api/login as {user:?}: {} (check SEN_FRIGATE_USER and SEN_FRIGATE_PASSWORD)",
                self.base,
                r.status()
            )));
        }
        r.headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next()?.split_once('='))
            .map(|(_, v)| v.trim().to_string())
            .find(|v| v.split('.').count() == 3)
            .ok_or_else(|| {
                FetchError::Failed(format!(
                    "{}/api/login: no token cookie in the answer",
                    self.base
                ))
            })
    }

    /// GET a path (with the token; a 401 signs in again once).
    pub async fn get(&self, path: &str) -> Result<reqwest::Response, FetchError> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let token = {
                let mut t = self.token.lock().await;
                if t.is_none() && matches!(self.auth, FrigateAuth::Login { .. }) {
                    *t = Some(self.login().await?);
                }
                t.clone()
            };
            let mut req = self.http.get(&url);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let r = req
                .send()
                .await
                .map_err(|e| FetchError::Failed(format!("{}: {}", path, plain(&e))))?;
            match r.status().as_u16() {
                200..=299 => return Ok(r),
                401 if attempt == 0 && matches!(self.auth, FrigateAuth::Login { .. }) => {
                    tracing::info!("frigate: {path}: 401, signing in again");
                    *self.token.lock().await = None;
                }
                404 => return Err(FetchError::NotFound(format!("{path}: 404"))),
                s => return Err(FetchError::Failed(format!("{path}: HTTP {s}"))),
            }
        }
        Err(FetchError::Failed(format!("{path}: 401 after signing in")))
    }

    /// An event's image and the frame time Frigate says it shows.
    pub async fn image(
        &self,
        path: &str,
        max: usize,
    ) -> Result<(Vec<u8>, Option<f64>), FetchError> {
        let r = self.get(path).await?;
        let frame = r
            .headers()
            .get("x-frame-time")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t > 0.0);
        if r.content_length().is_some_and(|n| n as usize > max) {
            return Err(FetchError::TooLarge(format!("{path}: over {max} bytes")));
        }
        let b = r
            .bytes()
            .await
            .map_err(|e| FetchError::Failed(format!("{path}: {}", plain(&e))))?;
        if b.len() > max {
            return Err(FetchError::TooLarge(format!("{path}: over {max} bytes")));
        }
        Ok((b.to_vec(), frame))
    }

    pub async fn json(&self, path: &str) -> Result<serde_json::Value, FetchError> {
        self.get(path)
            .await?
            .json()
            .await
            .map_err(|e| FetchError::Failed(format!("{path}: {}", plain(&e))))
    }
}

/// A reqwest error's message with its causes, and never a URL's credentials (there
/// are none: Frigate's are headers).
fn plain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `0.18.0-abc` -> (0, 18).
fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v
        .trim()
        .trim_matches('"')
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

pub struct Frigate {
    cfg: FrigateConfig,
    api: Api,
    ctx: Arc<Ctx>,
    /// Cameras' detect sizes (for backfilled events' relative boxes).
    detect: tokio::sync::Mutex<BTreeMap<String, (f64, f64)>>,
    events_topic: String,
}

impl Frigate {
    pub fn new(cfg: FrigateConfig, timeout: Duration, ctx: Arc<Ctx>) -> Result<Frigate> {
        let api = Api::new(&cfg.api, cfg.auth.clone(), timeout)?;
        Ok(Frigate {
            events_topic: format!("{}/events", cfg.prefix),
            cfg,
            api,
            ctx,
            detect: Default::default(),
        })
    }

    fn wanted(&self, o: &TrackedObject) -> Option<(&'static str, String)> {
        if !self.cfg.labels.iter().any(|l| l == &o.label) {
            return Some(("label", format!("event {}: label {:?}", o.id, o.label)));
        }
        if let Some(c) = &self.cfg.cameras
            && !c.iter().any(|c| c == &o.camera)
        {
            return Some(("camera", format!("event {}: camera {:?}", o.id, o.camera)));
        }
        if o.false_positive {
            return Some(("false_positive", format!("event {}", o.id)));
        }
        None
    }

    async fn on_message(self: Arc<Self>, e: InboxEntry) -> Outcome {
        let ctx = &self.ctx;
        let m: EventMessage = match serde_json::from_slice(&e.payload) {
            Ok(m) => m,
            Err(err) => return ctx.bad("malformed", &e.topic, &err.to_string()),
        };
        let o = &m.after;
        if o.id.is_empty() || o.id.len() > sen_store::MAX_TRACK_BYTES {
            return ctx.bad("malformed", &e.topic, &format!("event id {:?}", o.id));
        }
        if !matches!(m.kind.as_str(), "new" | "update" | "end") {
            return ctx.bad("unknown_type", &e.topic, &format!("type {:?}", m.kind));
        }
        if let Some((reason, detail)) = self.wanted(o) {
            // Updates of other labels are many and expected: counted, never logged.
            return Outcome::skip(reason, detail);
        }
        let end = m.kind == "end";
        if end {
            let (store, id) = (ctx.store.clone(), o.id.clone());
            let done = tokio::task::spawn_blocking(move || store.is_done("frigate", &id))
                .await
                .map(|r| r.unwrap_or(false))
                .unwrap_or(false);
            if done {
                return Outcome::nothing();
            }
        } else {
            // Before the end, an image is keyed only by the frame Frigate says it is.
            if !ctx.state.frame_time_header() {
                return Outcome::nothing();
            }
            let Some(snap) = &o.snapshot else {
                return Outcome::nothing();
            };
            let before = m.before.as_ref().and_then(|b| b.snapshot.as_ref());
            if m.kind == "update" && before.is_some_and(|b| b.frame_time == snap.frame_time) {
                return Outcome::nothing();
            }
        }
        let path = if !end || o.has_snapshot {
            format!("/api/events/{}/snapshot.jpg?crop=1&quality=95", o.id)
        } else {
            format!("/api/events/{}/thumbnail.jpg", o.id)
        };
        let t = Instant::now();
        let fetched = self.api.image(&path, self.ctx.max_image).await;
        ctx.metrics.fetch_seconds.observe(t.elapsed().as_secs_f64());
        let (bytes, header) = match fetched {
            Ok(x) => x,
            Err(FetchError::NotFound(d)) if end => return Outcome::skip("not_found", d),
            Err(FetchError::TooLarge(d)) => return Outcome::skip("too_large", d),
            // A live frame no longer cached: the next update or the end brings one.
            Err(FetchError::NotFound(_)) => return Outcome::nothing(),
            Err(FetchError::Failed(d)) => {
                return Outcome::Retry {
                    reason: "fetch_failed",
                    error: d,
                    quick: false,
                    max_attempts: None,
                };
            }
        };
        if header.is_some() && !ctx.state.frame_time_header() {
            ctx.state.saw_frame_time_header();
        }
        let snap = o.snapshot.as_ref();
        let frame = match (header, end) {
            (Some(h), _) => h,
            (None, true) => snap
                .and_then(|s| s.frame_time)
                .or(o.frame_time)
                .unwrap_or(o.start_time),
            (None, false) => {
                if ctx.state.first_of("no X-Frame-Time") {
                    tracing::warn!(
                        "frigate: {path} came without X-Frame-Time: only ended events are ingested"
                    );
                }
                return Outcome::nothing();
            }
        };
        // The box is the snapshot's only if the image is that snapshot (a backfilled
        // event's box is its ended snapshot's, the one fetched).
        let bbox = snap
            .filter(|s| s.frame_time.is_none_or(|f| ms(f) == ms(frame)))
            .and_then(|s| s.bbox);
        let embedding = match ctx.embed(&bytes, &path).await {
            Ok(v) => v,
            Err(out) => return out,
        };
        let mut attrs = serde_json::Map::new();
        attrs.insert("label".into(), o.label.clone().into());
        let sub = match &o.sub_label {
            serde_json::Value::Array(a) => a.first().cloned().unwrap_or_default(),
            v => v.clone(),
        };
        if !sub.is_null() {
            attrs.insert("sub_label".into(), sub);
        }
        attrs.insert("zones".into(), o.current_zones.clone().into());
        if let Some(s) = snap.filter(|_| bbox.is_some()).and(o.score).or(o.top_score) {
            attrs.insert("score".into(), s.into());
        }
        let time_ms = ms(frame);
        let row = NewRow {
            camera: o.camera.clone(),
            time_ms,
            path: format!("frigate:{}/{}@{time_ms}", o.camera, o.id),
            attrs: Some(attrs),
            embedding,
            crop: ctx.crop(bytes),
            track: Some(o.id.clone()),
            bbox,
            source: Some("frigate".into()),
            ..Default::default()
        };
        Outcome::Done {
            rows: vec![row],
            skip: None,
            finished: end.then(|| Finished {
                item: o.id.clone(),
                end_ms: ms(o.end_time.unwrap_or(o.start_time)),
            }),
            cleanup: vec![],
        }
    }

    /// On every (re)connect: learn Frigate's version, then queue the ended events
    /// not done since the cursor. Retried every 5 s until it succeeds once per connect.
    pub async fn backfill_loop(
        self: Arc<Self>,
        connected: Arc<Notify>,
        inbox: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = connected.notified() => {}
                _ = stop.changed() => return,
            }
            loop {
                match self.backfill().await {
                    Ok(n) => {
                        if n > 0 {
                            inbox.notify_one();
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("frigate: backfill: {e}; again in 5 s");
                        self.ctx.state.set_backfill(format!("failed: {e}"));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    fn fetch_err(e: FetchError) -> String {
        match e {
            FetchError::NotFound(d) | FetchError::TooLarge(d) | FetchError::Failed(d) => d,
        }
    }

    /// One backfill: how many events it queued.
    pub async fn backfill(&self) -> Result<usize, String> {
        let ctx = &self.ctx;
        let v = self
            .api
            .get("/api/version")
            .await
            .map_err(Self::fetch_err)?
            .text()
            .await
            .map_err(|e| plain(&e))?;
        let header = version_at_least(&v, 0, 18);
        ctx.state.set_version(v.trim(), header);
        if let Ok(c) = self.api.json("/api/config").await
            && let Some(cams) = c.get("cameras").and_then(|c| c.as_object())
        {
            let mut d = self.detect.lock().await;
            for (name, cam) in cams {
                let det = &cam["detect"];
                if let (Some(w), Some(h)) = (det["width"].as_f64(), det["height"].as_f64()) {
                    d.insert(name.clone(), (w, h));
                }
            }
        }
        let store = ctx.store.clone();
        let cursor = tokio::task::spawn_blocking(move || store.source_cursor("frigate"))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let window = self.cfg.backfill_window.as_secs_f64();
        let mut after = match cursor {
            Some(c) => c as f64 / 1000.0 - window,
            None => now_ms() as f64 / 1000.0 - window,
        };
        let mut queued = 0;
        let mut seen = 0;
        loop {
            let mut q = format!(
                "/api/events?after={after:.6}&in_progress=0&sort=date_asc&limit=100&include_thumbnails=0&labels={}",
                query_list(&self.cfg.labels)
            );
            if let Some(c) = &self.cfg.cameras {
                q.push_str(&format!("&cameras={}", query_list(c)));
            }
            let page = self.api.json(&q).await.map_err(Self::fetch_err)?;
            let page = page
                .as_array()
                .ok_or_else(|| format!("{q}: not a JSON array"))?
                .clone();
            let n = page.len();
            let mut msgs = vec![];
            for ev in &page {
                seen += 1;
                let Some(start) = ev["start_time"].as_f64() else {
                    continue;
                };
                after = after.max(start);
                let Some(m) = self.backfill_message(ev).await else {
                    continue;
                };
                let (store, id) = (ctx.store.clone(), m.0.clone());
                let done = tokio::task::spawn_blocking(move || store.is_done("frigate", &id))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                if !done {
                    msgs.push(InboxMessage {
                        source: "frigate".into(),
                        topic: self.events_topic.clone(),
                        payload: m.1,
                        received_ms: now_ms(),
                    });
                }
            }
            queued += msgs.len();
            ctx.metrics
                .messages
                .with_label_values(&["backfill"])
                .inc_by(msgs.len() as u64);
            let store = ctx.store.clone();
            tokio::task::spawn_blocking(move || store.inbox_push(msgs))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if n < 100 {
                break;
            }
        }
        let s = format!("queued {queued} of {seen} ended events since {after:.0}");
        if queued > 0 {
            tracing::info!("frigate: backfill {s}");
        }
        ctx.state.set_backfill(s);
        Ok(queued)
    }

    /// An `/api/events` item as the `end` message it stands for (its relative box in
    /// the camera's detect pixels when the config says them): (id, payload).
    async fn backfill_message(&self, ev: &serde_json::Value) -> Option<(String, Vec<u8>)> {
        let id = ev["id"].as_str()?.to_string();
        let camera = ev["camera"].as_str()?.to_string();
        let data = &ev["data"];
        let frame = data["snapshot_frame_time"]
            .as_f64()
            .or(data["frame_time"].as_f64());
        let bbox = match (
            data["box"].as_array(),
            self.detect.lock().await.get(&camera),
        ) {
            (Some(b), Some(&(w, h))) if b.len() == 4 => {
                let r: Vec<f64> = b.iter().filter_map(|v| v.as_f64()).collect();
                (r.len() == 4).then(|| {
                    serde_json::json!([r[0] * w, r[1] * h, (r[0] + r[2]) * w, (r[1] + r[3]) * h])
                })
            }
            _ => None,
        };
        let sub = match (&ev["sub_label"], data["sub_label_score"].as_f64()) {
            (serde_json::Value::String(s), Some(sc)) => serde_json::json!([s, sc]),
            (v, _) => v.clone(),
        };
        let after = serde_json::json!({
            "id": id,
            "camera": camera,
            "label": ev["label"],
            "sub_label": sub,
            "false_positive": ev["false_positive"].as_bool().unwrap_or(false),
            "start_time": ev["start_time"],
            "end_time": ev["end_time"],
            "has_snapshot": ev["has_snapshot"].as_bool().unwrap_or(false),
            "current_zones": ev["zones"].as_array().cloned().unwrap_or_default(),
            "score": data["score"],
            "top_score": data["top_score"],
            "snapshot": {"frame_time": frame, "box": bbox},
            "sen_backfill": true,
        });
        let msg = serde_json::json!({"type": "end", "before": null, "after": after});
        Some((id, serde_json::to_vec(&msg).ok()?))
    }
}

/// A comma list for a query string (labels and camera names are percent-encoded).
fn query_list(v: &[String]) -> String {
    v.iter()
        .map(|s| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Handler for Frigate {
    fn item(&self, e: &InboxEntry) -> Option<String> {
        #[derive(Deserialize)]
        struct Id {
            after: IdOnly,
        }
        #[derive(Deserialize)]
        struct IdOnly {
            id: String,
        }
        serde_json::from_slice::<Id>(&e.payload)
            .ok()
            .map(|i| i.after.id)
    }

    fn handle(self: Arc<Self>, e: InboxEntry) -> BoxFuture<'static, Outcome> {
        Box::pin(self.on_message(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("0.18.0-5f6043a", 0, 18));
        assert!(version_at_least("1.0.0", 0, 18));
        assert!(!version_at_least("0.17.2-3d4dd3a", 0, 18));
        assert!(!version_at_least("0.16.4", 0, 18));
        assert!(!version_at_least("dev", 0, 18));
    }

    #[test]
    fn documented_message_parses() {
        // The example of docs/docs/integrations/mqtt.md (0.16), comments removed.
        let m: EventMessage = serde_json::from_str(
            r#"{"type":"update","before":{"id":"1607123955.475377-mxklsc","camera":"front_door","label":"person","start_time":1607123955.475377,"snapshot":null,"false_positive":true},
            "after":{"id":"1607123955.475377-mxklsc","camera":"front_door","frame_time":1607123962.082975,
            "snapshot":{"frame_time":1607123965.975463,"box":[415,489,528,700],"area":12728,"region":[260,446,660,846],"score":0.77546,"attributes":[]},
            "label":"person","sub_label":["John Smith",0.79],"top_score":0.958984375,"false_positive":false,
            "start_time":1607123955.475377,"end_time":null,"score":0.87890625,"box":[432,496,544,854],
            "current_zones":["yard","driveway"],"entered_zones":["yard","driveway"],"thumbnail":null,
            "has_snapshot":false,"has_clip":false,"attributes":{"face":0.86},"recognized_license_plate":["ABC12345",0.93]}}"#,
        )
        .unwrap();
        assert_eq!(m.kind, "update");
        let s = m.after.snapshot.unwrap();
        assert_eq!(s.frame_time.map(ms), Some(1_607_123_965_975));
        assert_eq!(s.bbox, Some([415.0, 489.0, 528.0, 700.0]));
        assert!(m.before.unwrap().snapshot.is_none());
    }

    #[test]
    fn query_lists_are_encoded() {
        assert_eq!(
            query_list(&["person".into(), "a b&c".into()]),
            "person,a%20b%26c"
        );
    }
}
