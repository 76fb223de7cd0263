//! `sen store import`: the rows of a `sen index` file, without re-encoding.

use super::add::{ADD_BATCH, mtime_ms};
use crate::common::bar;
use anyhow::{Result, bail};
use sen_store::time::{self};
use sen_store::{Mode, NewRow, Store};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    dir: PathBuf,
    /// The `sen index` file to import.
    #[arg(long)]
    index: PathBuf,
    #[arg(long)]
    camera: Option<String>,
    /// Capture time of every row (default: the index file's modification time).
    #[arg(long)]
    time: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: ImportArgs) -> Result<()> {
    let index = sen_store::index::Index::open(&a.index)?;
    let store = Store::open(&a.dir, Mode::Writer)?;
    let i = store.info();
    if index.header.image_encoder_sha256 != i.image_encoder_sha256 || index.header.dim != i.dim {
        bail!(
            "{}: made by image encoder {} ({} dims), but the store {} holds encoder {} ({} dims); \
             import only indexes of the store's bundle",
            a.index.display(),
            index.header.image_encoder_sha256,
            index.header.dim,
            a.dir.display(),
            i.image_encoder_sha256,
            i.dim
        );
    }
    let recorded = index.header.recorded_preprocess();
    if !recorded.compatible(&i.preprocess) {
        bail!(
            "{}: made with preprocessing {}, but the store {} holds embeddings made with {}; \
             import only indexes of the store's bundle",
            a.index.display(),
            recorded.describe(),
            a.dir.display(),
            i.preprocess.describe()
        );
    }
    if i.crops {
        bail!(
            "{}: keeps crops, and an index file has none; create the store with --no-crops to import, \
             or add the images with `sen store add`",
            a.dir.display()
        );
    }
    let t = match &a.time {
        Some(t) => time::parse("--time", t)?,
        None => mtime_ms(&a.index)?,
    };
    let camera = sen_store::camera(a.camera.clone())?;
    let n = index.len();
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        bar(n, "importing")
    };
    let (mut first, mut last) = (None, None);
    for lo in (0..n).step_by(ADD_BATCH) {
        let hi = (lo + ADD_BATCH).min(n);
        let rows: Vec<NewRow> = (lo..hi)
            .map(|r| NewRow {
                camera: camera.clone(),
                time_ms: t,
                path: index.header.paths[r].clone(),
                pid: index.header.pids[r],
                attrs: None,
                embedding: index.row(r),
                crop: None,
                track: None,
                bbox: None,
                source: Some("cli".into()),
            })
            .collect();
        let (f, l) = store.add(rows)?;
        first.get_or_insert(f);
        last = Some(l);
        pb.set_position(hi as u64);
    }
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"added": n, "first_id": first, "last_id": last})
        );
    } else {
        println!(
            "{}: {n} rows imported from {}",
            a.dir.display(),
            a.index.display()
        );
    }
    Ok(())
}
