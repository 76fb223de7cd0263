//! DeepStream (`nvmsgconv` over `nvmsgbroker`): both payload schemas.
//!
//! - Full (`msg-conv-payload-type=0`): one object per message, `sensor.id` (the
//!   camera), `@timestamp`, `object.id` (the tracker's id), `object.bbox`
//!   (`topleftx`..`bottomrighty`) and the object's class (the sub-object `person`,
//!   `vehicle`, ...).
//! - Minimal (`msg-conv-payload-type=1`): one frame per message, `sensorId`,
//!   `@timestamp`, `objects: ["trackId|left|top|right|bottom|Label|..."]`.
//!
//! DeepStream puts no crops in messages, so sen reads them by this contract (README
//! "DeepStream"): the crop's JPEG (from `nvds_obj_enc`) as base64 in `object.crop`
//! (full) or `crops: {"TRACKID": "..."}` (minimal); or a file name relative to
//! `--crops-dir` in `object.crop_file` or `crop_files: {"TRACKID": "NAME"}`. A file
//! name is confined to that directory: no absolute paths, no `..`, no symbolic link
//! out of it.

use crate::config::DeepStreamConfig;
use crate::process::{Ctx, Handler, Outcome};
use anyhow::{Context, Result};
use base64::Engine;
use futures::future::BoxFuture;
use sen_store::{InboxEntry, NewRow, Skip};
use serde_json::Value;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Where an object's crop is.
#[derive(Debug, Clone, PartialEq)]
pub enum CropRef {
    Base64(String),
    File(String),
    Missing,
}

/// One object of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub camera: String,
    pub time_ms: i64,
    pub track: String,
    pub bbox: [f64; 4],
    pub label: String,
    pub crop: CropRef,
}

fn timestamp(v: &Value) -> Result<i64, String> {
    let s = v
        .as_str()
        .ok_or("@timestamp: missing (an RFC 3339 time such as 2026-12-07T10:00:00.000Z)")?;
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("@timestamp {s:?}: {e}"))
}

fn text(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("{what}: missing or empty")),
    }
}

/// The objects of a payload, either schema.
pub fn parse(payload: &[u8]) -> Result<Vec<Object>, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("objects").is_some() {
        minimal(&v)
    } else if v.get("object").is_some() {
        full(&v).map(|o| vec![o])
    } else {
        Err("neither the full schema (object) nor the minimal one (objects)".into())
    }
}

fn full(v: &Value) -> Result<Object, String> {
    let camera = text(&v["sensor"]["id"], "sensor.id")?;
    let time_ms = timestamp(&v["@timestamp"])?;
    let o = &v["object"];
    let track = text(&o["id"], "object.id")?;
    let b = &o["bbox"];
    let num = |k: &str| {
        b[k].as_f64()
            .ok_or_else(|| format!("object.bbox.{k}: missing or not a number"))
    };
    let bbox = [
        num("topleftx")?,
        num("toplefty")?,
        num("bottomrightx")?,
        num("bottomrighty")?,
    ];
    // The class is the one sub-object that is not a known common field.
    const COMMON: [&str; 13] = [
        "id",
        "speed",
        "direction",
        "orientation",
        "bbox",
        "location",
        "coordinate",
        "maskoutline",
        "signature",
        "pose",
        "embedding",
        "crop",
        "crop_file",
    ];
    let label = o
        .as_object()
        .into_iter()
        .flatten()
        .find(|(k, v)| v.is_object() && !COMMON.contains(&k.as_str()) && *k != "SV3DT")
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| "unknown".into());
    let crop = match (&o["crop"], &o["crop_file"]) {
        (Value::String(s), _) => CropRef::Base64(s.clone()),
        (_, Value::String(f)) => CropRef::File(f.clone()),
        _ => CropRef::Missing,
    };
    Ok(Object {
        camera,
        time_ms,
        track,
        bbox,
        label,
        crop,
    })
}

fn minimal(v: &Value) -> Result<Vec<Object>, String> {
    let camera = text(&v["sensorId"], "sensorId")?;
    let time_ms = timestamp(&v["@timestamp"])?;
    let list = v["objects"].as_array().ok_or("objects: not an array")?;
    let mut out = vec![];
    for (i, s) in list.iter().enumerate() {
        let s = s.as_str().ok_or(format!("objects[{i}]: not a string"))?;
        let f: Vec<&str> = s.split('|').collect();
        if f.len() < 6 {
            return Err(format!(
                "objects[{i}] {s:?}: want trackId|left|top|right|bottom|label"
            ));
        }
        let mut bbox = [0f64; 4];
        for (j, b) in bbox.iter_mut().enumerate() {
            *b = f[1 + j]
                .trim()
                .parse()
                .map_err(|_| format!("objects[{i}] {s:?}: field {} is not a number", 2 + j))?;
        }
        let track = f[0].trim().to_string();
        if track.is_empty() {
            return Err(format!("objects[{i}] {s:?}: no tracking id"));
        }
        let crop = match (&v["crops"][&track], &v["crop_files"][&track]) {
            (Value::String(c), _) => CropRef::Base64(c.clone()),
            (_, Value::String(f)) => CropRef::File(f.clone()),
            _ => CropRef::Missing,
        };
        out.push(Object {
            camera: camera.clone(),
            time_ms,
            track,
            bbox,
            label: f[5].trim().to_string(),
            crop,
        });
    }
    Ok(out)
}

/// `name` inside `dir` (a canonical directory): relative, no `..`, and after
/// resolving links still inside it.
pub fn confined(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let p = Path::new(name);
    if name.is_empty() || p.is_absolute() {
        return Err(format!(
            "crop_file {name:?}: give a name relative to --crops-dir"
        ));
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "crop_file {name:?}: \"..\" and root components are not allowed (it must stay in --crops-dir)"
        ));
    }
    let joined = dir.join(p);
    let real = std::fs::canonicalize(&joined).map_err(|e| format!("crop_file {name:?}: {e}"))?;
    if !real.starts_with(dir) {
        return Err(format!(
            "crop_file {name:?}: resolves outside --crops-dir (a symbolic link out of it)"
        ));
    }
    Ok(real)
}

/// Why an object has no crop: a skip reason and its detail.
type NoCrop = (&'static str, String);

pub struct DeepStream {
    cfg: DeepStreamConfig,
    /// `--crops-dir`, canonical.
    dir: Option<PathBuf>,
    ctx: Arc<Ctx>,
}

impl DeepStream {
    pub fn new(cfg: DeepStreamConfig, ctx: Arc<Ctx>) -> Result<DeepStream> {
        let dir = match &cfg.crops_dir {
            Some(d) => Some(
                std::fs::canonicalize(d).with_context(|| format!("--crops-dir {}", d.display()))?,
            ),
            None => None,
        };
        if cfg.delete && dir.is_none() {
            anyhow::bail!("--crops-dir-delete needs --crops-dir DIR");
        }
        Ok(DeepStream { cfg, dir, ctx })
    }

    fn wanted(&self, label: &str) -> bool {
        self.cfg
            .labels
            .iter()
            .any(|l| l.eq_ignore_ascii_case(label))
    }

    /// An object's crop bytes and the file to delete after ingest, or why not.
    fn crop(&self, o: &Object) -> Result<(Vec<u8>, Option<PathBuf>), NoCrop> {
        match &o.crop {
            CropRef::Base64(s) => {
                if s.len() / 4 * 3 > self.ctx.max_image {
                    return Err((
                        "too_large",
                        format!("track {}: crop over {} bytes", o.track, self.ctx.max_image),
                    ));
                }
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map(|b| (b, None))
                    .map_err(|e| {
                        (
                            "bad_crop",
                            format!("track {}: crop is not base64: {e}", o.track),
                        )
                    })
            }
            CropRef::File(name) => {
                let Some(dir) = &self.dir else {
                    return Err((
                        "bad_crop",
                        format!("track {}: crop_file {name:?} but no --crops-dir", o.track),
                    ));
                };
                let p = confined(dir, name).map_err(|e| ("bad_crop_path", e))?;
                let meta = std::fs::metadata(&p)
                    .map_err(|e| ("crop_missing", format!("{}: {e}", p.display())))?;
                if !meta.is_file() || meta.len() as usize > self.ctx.max_image {
                    return Err((
                        "bad_crop",
                        format!(
                            "{}: not a file of at most {} bytes",
                            p.display(),
                            self.ctx.max_image
                        ),
                    ));
                }
                let b = std::fs::read(&p)
                    .map_err(|e| ("crop_missing", format!("{}: {e}", p.display())))?;
                Ok((b, self.cfg.delete.then_some(p)))
            }
            CropRef::Missing => Err((
                "no_crop",
                format!(
                    "track {}: no crop (object.crop / crop_file, or crops / crop_files by track id)",
                    o.track
                ),
            )),
        }
    }

    async fn on_message(self: Arc<Self>, e: InboxEntry) -> Outcome {
        let ctx = &self.ctx;
        let objects = match parse(&e.payload) {
            Ok(o) => o,
            Err(d) => return ctx.bad("malformed", &e.topic, &d),
        };
        let mut rows = vec![];
        let mut cleanup = vec![];
        let mut skip: Option<Skip> = None;
        let mut note = |reason: &str, detail: String| {
            if skip.is_none() {
                skip = Some(Skip {
                    reason: reason.to_string(),
                    detail,
                });
            }
        };
        for o in objects.iter().filter(|o| self.wanted(&o.label)) {
            let (bytes, file) = match self.crop(o) {
                Ok(x) => x,
                // A crop file the pipeline has not finished writing: a few quick tries.
                Err(("crop_missing", d)) => {
                    return Outcome::Retry {
                        reason: "crop_missing",
                        error: d,
                        quick: false,
                        max_attempts: Some(5),
                    };
                }
                Err((reason, d)) => {
                    if ctx.state.first_of(&format!("{reason} {}", e.topic)) {
                        tracing::warn!(
                            "deepstream: {}: {reason}: {d} (logged once per kind)",
                            e.topic
                        );
                    }
                    note(reason, d);
                    continue;
                }
            };
            let what = format!("{} track {}", e.topic, o.track);
            let embedding = match ctx.embed(&bytes, &what).await {
                Ok(v) => v,
                Err(Outcome::Done { skip: Some(s), .. }) => {
                    note(&s.reason, s.detail);
                    continue;
                }
                Err(retry) => return retry,
            };
            let mut attrs = serde_json::Map::new();
            attrs.insert("label".into(), o.label.clone().into());
            rows.push(NewRow {
                camera: o.camera.clone(),
                time_ms: o.time_ms,
                path: match &o.crop {
                    CropRef::File(f) => f.clone(),
                    _ => format!("deepstream:{}/{}@{}", o.camera, o.track, o.time_ms),
                },
                attrs: Some(attrs),
                embedding,
                crop: ctx.crop(bytes),
                track: Some(o.track.clone()),
                bbox: Some(o.bbox),
                source: Some("deepstream".into()),
                ..Default::default()
            });
            cleanup.extend(file);
        }
        if rows.is_empty() && skip.is_none() && !objects.is_empty() {
            skip = Some(Skip {
                reason: "label".into(),
                detail: format!("{}: no object of --deepstream-labels", e.topic),
            });
        }
        Outcome::Done {
            rows,
            skip,
            finished: None,
            cleanup,
        }
    }
}

impl Handler for DeepStream {
    fn item(&self, _: &InboxEntry) -> Option<String> {
        None
    }

    fn handle(self: Arc<Self>, e: InboxEntry) -> BoxFuture<'static, Outcome> {
        Box::pin(self.on_message(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_schema() {
        // deepstream-test4's output (DeepStream 5.1), with a crop added by the contract.
        let o = parse(
            br#"{ "messageid" : "ff7cc527-d019-4348-8b25-6df69c5b6dcc", "mdsversion" : "1.0", "@timestamp" : "2021-03-31T20:11:07.742Z",
  "sensor" : { "id" : "CAMERA_ID", "type" : "Camera" },
  "object" : { "id" : "17", "speed" : 0.0, "direction" : 0.0, "orientation" : 0.0,
    "person" : { "age" : 45, "gender" : "male", "hair" : "black", "cap" : "none", "apparel" : "formal", "confidence" : 1.0 },
    "bbox" : { "topleftx" : 597, "toplefty" : 481, "bottomrightx" : 711, "bottomrighty" : 569 },
    "location" : { "lat" : 0.0, "lon" : 0.0, "alt" : 0.0 }, "crop_file": "17.jpg" },
  "event" : { "id" : "3509e9f8-0861-45d3-a8cb-43ed8ac0fc7a", "type" : "moving" }, "videoPath" : "" }"#,
        )
        .unwrap();
        assert_eq!(
            o,
            vec![Object {
                camera: "CAMERA_ID".into(),
                time_ms: 1_617_221_467_742,
                track: "17".into(),
                bbox: [597.0, 481.0, 711.0, 569.0],
                label: "person".into(),
                crop: CropRef::File("17.jpg".into()),
            }]
        );
    }

    #[test]
    fn minimal_schema() {
        let o = parse(
            br#"{"version":"4.0","id":"frame-id","@timestamp":"2018-04-11T04:59:59.828Z","sensorId":"sensor-id",
            "objects":["957|1834|150|1918|215|Vehicle|#|sedan|Bugatti|M|blue|CA 444|California|0.8","958|100.5|10|200|300.25|Person"],
            "crops":{"958":"aGVsbG8="}}"#,
        )
        .unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].label, "Vehicle");
        assert_eq!(o[0].crop, CropRef::Missing);
        assert_eq!(o[1].bbox, [100.5, 10.0, 200.0, 300.25]);
        assert_eq!(o[1].track, "958");
        assert_eq!(o[1].time_ms, 1_523_422_799_828);
        assert_eq!(o[1].crop, CropRef::Base64("aGVsbG8=".into()));
    }

    #[test]
    fn bad_payloads_are_named() {
        for (p, says) in [
            (&b"{"[..], "not JSON"),
            (b"{\"x\":1}", "neither"),
            (b"{\"sensorId\":\"a\",\"@timestamp\":\"yesterday\",\"objects\":[]}", "@timestamp"),
            (b"{\"sensorId\":\"a\",\"@timestamp\":\"2018-04-11T04:59:59.828Z\",\"objects\":[\"1|2|3\"]}", "trackId|left"),
            (b"{\"sensorId\":\"a\",\"@timestamp\":\"2018-04-11T04:59:59.828Z\",\"objects\":[\"1|x|3|4|5|Person\"]}", "not a number"),
            (b"{\"sensor\":{},\"@timestamp\":\"2018-04-11T04:59:59.828Z\",\"object\":{}}", "sensor.id"),
        ] {
            let e = parse(p).unwrap_err();
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn crop_files_stay_in_their_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(d.path()).unwrap().join("crops");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.jpg"), b"x").unwrap();
        std::fs::create_dir(dir.join("cam1")).unwrap();
        std::fs::write(dir.join("cam1/b.jpg"), b"x").unwrap();
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), dir.join("link.jpg")).unwrap();
        std::os::unix::fs::symlink(dir.join("a.jpg"), dir.join("inside.jpg")).unwrap();
        assert_eq!(confined(&dir, "a.jpg").unwrap(), dir.join("a.jpg"));
        assert_eq!(
            confined(&dir, "./cam1/b.jpg").unwrap(),
            dir.join("cam1/b.jpg")
        );
        assert_eq!(confined(&dir, "inside.jpg").unwrap(), dir.join("a.jpg"));
        for (name, says) in [
            ("/etc/passwd", "relative"),
            ("../secret", "\"..\""),
            ("cam1/../../secret", "\"..\""),
            ("link.jpg", "outside"),
            ("", "relative"),
            ("nothere.jpg", "No such file"),
        ] {
            let e = confined(&dir, name).unwrap_err();
            assert!(e.contains(says), "{name}: {e}");
        }
    }
}
