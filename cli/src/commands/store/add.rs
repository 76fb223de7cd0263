//! `sen store add`: embed images (a folder, files, or a JSON-lines list) and add them.

use crate::common::{ProviderArgs, bar, list_images, log_sessions};
use anyhow::{Context, Result, bail};
use sen_runtime::encoders::ImageEncoder;
use sen_store::time::{self};
use sen_store::{Crop, Mode, NewRow, Store};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "folder", "list"])))]
pub struct AddArgs {
    dir: PathBuf,
    #[arg(long)]
    bundle: PathBuf,
    /// Image files to add.
    images: Vec<PathBuf>,
    /// Every image (jpg, jpeg, png, bmp, webp) under FOLDER, recursively, in path order.
    #[arg(long = "images", value_name = "FOLDER")]
    folder: Option<PathBuf>,
    /// JSON lines `{"path", "camera", "time", "pid", "attrs", "track", "bbox"}` (paths
    /// relative to the list file's folder; only `path` is required).
    #[arg(long, value_name = "FILE.jsonl")]
    list: Option<PathBuf>,
    /// Camera of rows that do not name one (default "default").
    #[arg(long)]
    camera: Option<String>,
    /// Capture time of rows that do not give one: RFC 3339 or Unix ms (default: each
    /// file's modification time).
    #[arg(long)]
    time: Option<String>,
    /// One transaction: any unreadable image or bad line adds nothing.
    #[arg(long)]
    strict: bool,
    /// Print `{"added", "skipped": [{"path", "error"}], "first_id", "last_id"}`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

/// One image to add, before encoding.
#[derive(Debug, Clone)]
struct Item {
    /// As given (list paths: relative to the list's folder, as written there).
    path: String,
    file: PathBuf,
    camera: Option<String>,
    time_ms: Option<i64>,
    pid: Option<i64>,
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
    track: Option<String>,
    bbox: Option<[f64; 4]>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListLine {
    path: String,
    camera: Option<String>,
    time: Option<serde_json::Value>,
    pid: Option<i64>,
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
    /// The tracked object the crop is of (SPEC §12).
    track: Option<String>,
    /// `[x1, y1, x2, y2]` in the source frame's pixels.
    bbox: Option<[f64; 4]>,
}

fn read_list(list: &Path) -> Result<Vec<Item>> {
    let base = list.parent().unwrap_or(Path::new("."));
    let f = std::fs::File::open(list).with_context(|| format!("--list {}", list.display()))?;
    let mut out = vec![];
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = || format!("{} line {}", list.display(), n + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let l: ListLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: expected {{\"path\", \"camera\", \"time\", \"pid\", \"attrs\", \"track\", \"bbox\"}}",
                at()
            )
        })?;
        let time_ms = l
            .time
            .as_ref()
            .map(|t| time::from_json(&format!("{} `time`", at()), t))
            .transpose()?;
        out.push(Item {
            file: base.join(&l.path),
            path: l.path,
            camera: l.camera,
            time_ms,
            pid: l.pid,
            attrs: l.attrs,
            track: l.track,
            bbox: l.bbox,
        });
    }
    if out.is_empty() {
        bail!("--list {}: no lines", list.display());
    }
    Ok(out)
}

pub(super) fn mtime_ms(p: &Path) -> Result<i64> {
    let m = std::fs::metadata(p)
        .and_then(|m| m.modified())
        .with_context(|| format!("{}: no modification time", p.display()))?;
    Ok(m.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// The rows the CLI adds per transaction (without --strict).
pub(super) const ADD_BATCH: usize = 1024;

pub fn run(a: AddArgs) -> Result<()> {
    let items: Vec<Item> = if let Some(list) = &a.list {
        read_list(list)?
    } else {
        let files = match &a.folder {
            Some(dir) => {
                let f = list_images(dir)?;
                if f.is_empty() {
                    bail!("{}: no jpg/jpeg/png/bmp/webp images found", dir.display());
                }
                f
            }
            None => a.images.clone(),
        };
        files
            .into_iter()
            .map(|f| Item {
                path: f.display().to_string(),
                file: f,
                camera: None,
                time_ms: None,
                pid: None,
                attrs: None,
                track: None,
                bbox: None,
            })
            .collect()
    };
    let flag_time = a
        .time
        .as_deref()
        .map(|t| time::parse("--time", t))
        .transpose()?;
    let flag_camera = a.camera.clone();
    let store = Store::open(&a.dir, Mode::Writer)?;
    let enc = ImageEncoder::load(&a.bundle, &a.provider.options())?;
    log_sessions(&enc.reports);
    store.check_encoder(
        &enc.digest()?,
        enc.manifest.model.embed_dim,
        &enc.manifest.preprocess,
        &a.bundle.display().to_string(),
    )?;
    let crops = store.info().crops;
    let t0 = Instant::now();
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        bar(items.len(), "adding")
    };
    let mut skipped: Vec<serde_json::Value> = vec![];
    let mut all_rows: Vec<NewRow> = vec![];
    let (mut first_id, mut last_id, mut added) = (None::<u64>, None::<u64>, 0usize);
    for (c, chunk) in items.chunks(ADD_BATCH).enumerate() {
        let files: Vec<&PathBuf> = chunk.iter().map(|i| &i.file).collect();
        let e = enc.encode_files(&files, |n| pb.set_position((c * ADD_BATCH + n) as u64))?;
        if let (true, Some((i, why))) = (a.strict, e.failures.first()) {
            pb.abandon();
            bail!(
                "--strict: {} cannot be read: {why}; nothing was added",
                chunk[*i].path
            );
        }
        for (i, why) in &e.failures {
            skipped.push(serde_json::json!({"path": chunk[*i].path, "error": why}));
        }
        let mut rows = Vec::with_capacity(e.ok.len());
        for (row, &i) in e.embeds.rows().into_iter().zip(&e.ok) {
            let it = &chunk[i];
            let made = (|| -> Result<NewRow> {
                let crop = if crops {
                    let bytes = std::fs::read(&it.file).with_context(|| it.path.clone())?;
                    let ct =
                        sen_core::preprocess::image_content_type(&bytes).with_context(|| {
                            format!("{}: not a JPEG, PNG, WebP or BMP file", it.path)
                        })?;
                    Some(Crop {
                        content_type: ct.into(),
                        bytes,
                    })
                } else {
                    None
                };
                Ok(NewRow {
                    camera: it
                        .camera
                        .clone()
                        .or_else(|| flag_camera.clone())
                        .unwrap_or_else(|| sen_store::store::DEFAULT_CAMERA.into()),
                    time_ms: match it.time_ms.or(flag_time) {
                        Some(t) => t,
                        None => mtime_ms(&it.file)?,
                    },
                    path: it.path.clone(),
                    pid: it.pid,
                    attrs: it.attrs.clone(),
                    embedding: row.to_vec(),
                    crop,
                    track: it.track.clone(),
                    bbox: it.bbox,
                    source: Some("cli".into()),
                })
            })();
            match made {
                Ok(r) => rows.push(r),
                Err(err) if a.strict => {
                    pb.abandon();
                    bail!("--strict: {err:#}; nothing was added");
                }
                Err(err) => {
                    skipped.push(serde_json::json!({"path": it.path, "error": format!("{err:#}")}))
                }
            }
        }
        if a.strict {
            all_rows.extend(rows);
        } else if !rows.is_empty() {
            let n = rows.len();
            let (f, l) = store.add(rows)?;
            first_id.get_or_insert(f);
            last_id = Some(l);
            added += n;
        }
    }
    if a.strict && !all_rows.is_empty() {
        let n = all_rows.len();
        let (f, l) = store.add(all_rows)?;
        (first_id, last_id, added) = (Some(f), Some(l), n);
    }
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"added": added, "skipped": skipped, "first_id": first_id, "last_id": last_id})
        );
    } else {
        for s in &skipped {
            eprintln!(
                "skipped {}: {}",
                s["path"].as_str().unwrap_or(""),
                s["error"].as_str().unwrap_or("")
            );
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{}: {added} rows added{}, {} skipped, {:.1} s ({:.1} images/s)",
            a.dir.display(),
            match (first_id, last_id) {
                (Some(f), Some(l)) => format!(" (ids {f}..={l})"),
                _ => String::new(),
            },
            skipped.len(),
            secs,
            items.len() as f64 / secs
        );
    }
    Ok(())
}
