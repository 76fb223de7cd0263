//! Watches (SPEC §12): standing descriptions kept in the store's database, each with
//! the query vector it matches new rows against. A watch's id is never reused; a
//! deleted watch stops at once.

use crate::error::StoreError;
use crate::store::check_track;
use serde::{Deserialize, Serialize};

/// What a watch looks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchQuery {
    /// A description (text -> image).
    Text(String),
    /// Like a stored row (image -> image).
    Like(u64),
    /// Like a track: the normalised mean of its crops.
    LikeTrack { camera: String, track: String },
}

impl WatchQuery {
    /// Whether its scores are text -> image (else image -> image).
    pub fn is_text(&self) -> bool {
        matches!(self, WatchQuery::Text(_))
    }
}

/// When a watch raises an alert: at a calibrated probability, or (for a bundle
/// without score calibration) at a raw score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    MinP(f64),
    MinScore(f64),
}

/// The longest cooldown a watch takes: 30 days.
pub const MAX_COOLDOWN_S: u64 = 30 * 24 * 3600;
/// The cooldown when a watch names none (SPEC §12's default).
pub const DEFAULT_COOLDOWN_S: u64 = 300;
/// The longest watch name, in bytes.
pub const MAX_WATCH_NAME: usize = 128;

/// A watch as it is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    pub name: String,
    pub query: WatchQuery,
    /// Only rows of these cameras (None: every camera).
    pub cameras: Option<Vec<String>>,
    pub threshold: Threshold,
    /// The prior `p` is computed at (None: the calibration's).
    pub prior: Option<f64>,
    pub cooldown_s: u64,
}

/// A stored watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    pub id: u64,
    pub spec: WatchSpec,
    pub created_ms: i64,
    /// The unit query vector rows are scored against.
    pub vector: Vec<f32>,
}

impl WatchSpec {
    /// Check every field (the names say which is wrong and what is allowed).
    pub fn check(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::Input(m));
        if self.name.trim().is_empty() || self.name.len() > MAX_WATCH_NAME {
            return bad(format!(
                "name: 1 to {MAX_WATCH_NAME} bytes, not blank; got {} bytes",
                self.name.len()
            ));
        }
        if self.name.chars().any(char::is_control) {
            return bad("name: no control characters".into());
        }
        match &self.query {
            WatchQuery::Text(t) if t.trim().is_empty() => {
                return bad(
                    "text is empty: describe a person, e.g. \"a man in a grey hoodie\"".into(),
                );
            }
            WatchQuery::LikeTrack { camera, track } => {
                crate::camera(Some(camera.clone()))?;
                check_track(track).map_err(|e| StoreError::Input(format!("like_track: {e}")))?;
            }
            _ => {}
        }
        if let Some(cams) = &self.cameras {
            if cams.is_empty() {
                return bad(
                    "cameras: an empty list matches nothing; leave it out for every camera".into(),
                );
            }
            for c in cams {
                crate::camera(Some(c.clone()))?;
            }
        }
        match self.threshold {
            Threshold::MinP(p) if !(p > 0.0 && p <= 1.0) => {
                return bad(format!("min_p: a probability in (0, 1]; got {p}"));
            }
            Threshold::MinScore(s) if !(-1.0..=1.0).contains(&s) => {
                return bad(format!("min_score: a cosine in [-1, 1]; got {s}"));
            }
            _ => {}
        }
        if let Some(p) = self.prior {
            sen_core::scores::check_prior(p)
                .map_err(|e| StoreError::Input(format!("prior: {e}")))?;
        }
        if self.cooldown_s > MAX_COOLDOWN_S {
            return bad(format!(
                "cooldown_s: at most {MAX_COOLDOWN_S} (30 days); got {}",
                self.cooldown_s
            ));
        }
        Ok(())
    }
}

impl Watch {
    /// SPEC §12's JSON: `{id, name, text | like | like_track, cameras, min_p |
    /// min_score, prior, cooldown_s, created}`.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.spec;
        let mut v = serde_json::json!({
            "id": self.id,
            "name": s.name,
            "cameras": s.cameras,
            "prior": s.prior,
            "cooldown_s": s.cooldown_s,
            "created": crate::time::format(self.created_ms),
        });
        match &s.query {
            WatchQuery::Text(t) => v["text"] = t.clone().into(),
            WatchQuery::Like(id) => v["like"] = (*id).into(),
            WatchQuery::LikeTrack { camera, track } => {
                v["like_track"] = serde_json::json!({"camera": camera, "track": track})
            }
        }
        match s.threshold {
            Threshold::MinP(p) => v["min_p"] = p.into(),
            Threshold::MinScore(x) => v["min_score"] = x.into(),
        }
        v
    }
}

/// Check a watch's vector: `dim` finite values of unit length (within rounding).
pub fn check_vector(v: &[f32], dim: usize) -> Result<(), StoreError> {
    if v.len() != dim {
        return Err(StoreError::Input(format!(
            "a watch vector of {} values, but the store's embeddings have {dim}",
            v.len()
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(StoreError::Input(
            "a watch vector holds a value that is not finite".into(),
        ));
    }
    let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if (n - 1.0).abs() > 1e-3 {
        return Err(StoreError::Input(format!(
            "a watch vector must have unit length; it has {n}"
        )));
    }
    Ok(())
}
