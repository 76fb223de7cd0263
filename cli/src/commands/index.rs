//! `sen index`: embed a gallery (a folder of images, or a dataset split) into an index file.

use crate::common::{ProviderArgs, bar, list_images, log_sessions};
use anyhow::{Result, bail};
use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_runtime::encoders::ImageEncoder;
use sen_runtime::index::{Index, IndexBuilder, Storage};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "dataset"])))]
pub struct IndexArgs {
    /// Bundle directory.
    bundle: PathBuf,
    /// Index every image (jpg, jpeg, png, bmp, webp) under DIR, recursively, in path order.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Index the images of a dataset split, with their person ids.
    #[arg(long, value_name = "ROOT")]
    dataset: Option<PathBuf>,
    #[arg(long)]
    format: Option<DatasetFormat>,
    #[arg(long, default_value = "test")]
    split: Split,
    /// Index file to write (atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Add to an existing index (same image encoder; images already in it are skipped).
    #[arg(long)]
    append: bool,
    /// Replace an existing index file.
    #[arg(long, conflicts_with = "append")]
    force: bool,
    /// Store embeddings as float16 (half the memory traffic when searching).
    #[arg(long)]
    f16: bool,
    /// Fail on any unreadable image (nothing is written) instead of listing and skipping it.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

pub fn run(a: IndexArgs) -> Result<()> {
    if a.out.exists() && !a.append && !a.force {
        bail!(
            "{} exists: pass --append to add to it or --force to replace it",
            a.out.display()
        );
    }
    let (paths, pids): (Vec<PathBuf>, Vec<Option<i64>>) = match (&a.images, &a.dataset) {
        (Some(dir), _) => {
            let p = list_images(dir)?;
            if p.is_empty() {
                bail!("{}: no jpg/jpeg/png/bmp/webp images found", dir.display());
            }
            let n = p.len();
            (p, vec![None; n])
        }
        (None, Some(root)) => {
            let ds = Dataset::load(root, a.format)?;
            let recs: Vec<_> = ds.split(a.split).collect();
            if recs.is_empty() {
                bail!(
                    "{}: the {} split has no images",
                    root.display(),
                    a.split.name()
                );
            }
            (
                recs.iter().map(|r| ds.image_path(r)).collect(),
                recs.iter().map(|r| Some(r.id)).collect(),
            )
        }
        (None, None) => unreachable!("clap requires --images or --dataset"),
    };
    let t0 = Instant::now();
    let enc = ImageEncoder::load(&a.bundle, &a.provider.options())?;
    log_sessions(&enc.reports);
    let mut builder = if a.append && a.out.exists() {
        let old = Index::open(&a.out)?;
        old.check_bundle(&enc.manifest, &a.bundle)?;
        let want = if a.f16 {
            Storage::F16
        } else {
            old.header.dtype
        };
        if want != old.header.dtype {
            bail!(
                "--f16: {} stores {:?} rows; appending keeps the index's storage (drop --f16, or rebuild with --force)",
                a.out.display(),
                old.header.dtype
            );
        }
        IndexBuilder::from_index(&old)
    } else {
        IndexBuilder::new(
            &enc.manifest,
            if a.f16 { Storage::F16 } else { Storage::F32 },
        )?
    };
    let before = builder.len();
    let keep: Vec<usize> = (0..paths.len())
        .filter(|&i| !builder.contains_path(&paths[i].display().to_string()))
        .collect();
    if keep.len() < paths.len() {
        tracing::warn!(
            "{} of {} images are already in {} and are skipped",
            paths.len() - keep.len(),
            paths.len(),
            a.out.display()
        );
    }
    let todo: Vec<&PathBuf> = keep.iter().map(|&i| &paths[i]).collect();
    let pb = bar(todo.len(), "indexing");
    let files = enc.encode_files(&todo, |n| pb.set_position(n as u64))?;
    if let (true, Some((i, why))) = (a.strict, files.failures.first()) {
        pb.abandon();
        bail!("--strict: {} cannot be read: {why}", todo[*i].display());
    }
    pb.finish_and_clear();
    for (i, why) in &files.failures {
        tracing::warn!("skipped {}: {why}", todo[*i].display());
    }
    for (row, &i) in files.embeds.rows().into_iter().zip(&files.ok) {
        let k = keep[i];
        builder.push(
            paths[k].display().to_string(),
            pids[k],
            row.as_slice().expect("contiguous row"),
        )?;
    }
    builder.write(&a.out)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}: {} images indexed ({} new, {} unreadable and skipped{}), {}-dim {:?}, {:.1} s ({:.1} images/s)",
        a.out.display(),
        builder.len(),
        builder.len() - before,
        files.failures.len(),
        if files.failures.is_empty() {
            ""
        } else {
            ", listed above"
        },
        builder.header.dim,
        builder.header.dtype,
        secs,
        todo.len() as f64 / secs
    );
    Ok(())
}
