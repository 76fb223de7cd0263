//! `sen eval`: SPEC §7 metrics of a bundle on a dataset split.

use crate::common::{ProviderArgs, bar, log_sessions};
use anyhow::Result;
use indicatif::ProgressBar;
use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_runtime::encoders::Encoders;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    bundle: PathBuf,
    #[arg(long, value_name = "ROOT")]
    dataset: PathBuf,
    #[arg(long)]
    format: Option<DatasetFormat>,
    #[arg(long, default_value = "test")]
    split: Split,
    /// Print {"r1", "r5", "r10", "map", "minp"} (percent) plus timing keys as JSON.
    #[arg(long)]
    json: bool,
    /// Also write image_embeds.npy, text_embeds.npy, image_pids.npy, text_pids.npy here.
    #[arg(long, value_name = "DIR")]
    dump_embeddings: Option<PathBuf>,
    #[command(flatten)]
    provider: ProviderArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let ds = Dataset::load(&a.dataset, a.format)?;
    let opts = a.provider.options();
    let enc = Encoders::load(&a.bundle, &opts)?;
    log_sessions(&enc.image.reports);
    log_sessions(&enc.text.reports);
    let n = ds.split(a.split).count();
    let pb = if a.json {
        ProgressBar::hidden()
    } else {
        bar(n, "gallery")
    };
    let out = sen_runtime::eval::evaluate(&enc, &ds, a.split, |k| pb.set_position(k as u64))?;
    pb.finish_and_clear();
    if let Some(dir) = &a.dump_embeddings {
        sen_runtime::eval::dump(&out, dir)?;
    }
    // Batch-1 latency of the image encoder: median of 20 runs after 3 warm-ups.
    let first = ds.image_path(
        ds.split(a.split)
            .next()
            .expect("evaluate checked the split"),
    );
    let x = enc
        .image
        .preprocessor
        .load(&first)?
        .insert_axis(ndarray::Axis(0));
    let mut times = vec![];
    for i in 0..23 {
        let t = Instant::now();
        enc.image.encode(x.view())?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let latency = times[times.len() / 2];
    let m = out.metrics;
    let images = out.image_pids.len();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "r1": m.r1, "r5": m.r5, "r10": m.r10, "map": m.map, "minp": m.minp,
                "split": a.split.name(),
                "precision": enc.image.manifest.precision.to_string(),
                "provider": opts.kind.name(),
                "images": images,
                "captions": out.text_pids.len(),
                "gallery_seconds": out.image_seconds,
                "images_per_s": images as f64 / out.image_seconds,
                "image_batch": enc.image.profile.opt,
                "image_latency_ms_batch1": latency,
                "text_seconds": out.text_seconds,
            })
        );
    } else {
        println!(
            "{} on {} {} ({} images, {} captions), {} {}:",
            a.bundle.display(),
            a.dataset.display(),
            a.split.name(),
            images,
            out.text_pids.len(),
            enc.image.manifest.precision,
            opts.kind
        );
        println!("  {m}");
        println!(
            "  gallery {:.1} images/s (batch {}, decode + preprocess overlapped), image encoder batch-1 latency {:.2} ms, captions {:.1}/s",
            images as f64 / out.image_seconds,
            enc.image.profile.opt,
            latency,
            out.text_pids.len() as f64 / out.text_seconds
        );
    }
    Ok(())
}
