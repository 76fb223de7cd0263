//! `sen calibrate-scores`: fit the bundle's score calibration (SPEC §12) on a labelled
//! split, judge it on another, and write it into the bundle (or a copy).
//!
//! Three disjoint sets of crops: the background (train crops: every query's scores
//! are normalised against them), the fitting split (`--split`, default val) and the
//! report split (`--report-split`, default test), whose numbers are the ones to trust.

use crate::common::{ProviderArgs, bar, log_sessions};
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use ndarray::Array2;
use sen_core::Manifest;
use sen_core::data::{Dataset, DatasetFormat, EvalSet, Split};
use sen_core::scores::bundle::{Fitted, SCORE_CALIBRATION_VERSION, ScoreCalibrationFile};
use sen_core::scores::fit::{Labelled, Normalisation, Report, fit, report};
use sen_core::scores::{Background, LrFit};
use sen_runtime::encoders::Encoders;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct CalibrateScoresArgs {
    /// The bundle to calibrate (written in place unless --out).
    bundle: PathBuf,
    /// A labelled dataset (CUHK-PEDES, ICFG-PEDES or RSTPReid layout).
    #[arg(long, value_name = "ROOT")]
    dataset: PathBuf,
    #[arg(long)]
    format: Option<DatasetFormat>,
    /// The split the calibration is fitted on.
    #[arg(long, default_value = "val")]
    split: Split,
    /// The split it is judged on (never the fitting split).
    #[arg(long, default_value = "test")]
    report_split: Split,
    /// How many train crops make the background set every query is normalised
    /// against (evenly spaced over the train split; fewer when it has fewer).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    background: usize,
    /// How many of each query's best crops the reliability table covers.
    #[arg(long, default_value_t = 20, value_name = "K")]
    top: usize,
    /// Write the calibrated bundle here (a copy of BUNDLE), leaving BUNDLE as it was.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

/// One kind of query's fit and its judgement (with the raw-score baseline).
#[derive(serde::Serialize)]
struct KindReport {
    fit: LrFit,
    report: Report,
    raw_baseline: Report,
}

pub fn run(a: CalibrateScoresArgs) -> Result<()> {
    if a.split == Split::Train || a.report_split == Split::Train {
        bail!(
            "--split and --report-split cannot be train: the background set comes from the train split"
        );
    }
    if a.split == a.report_split {
        bail!(
            "--split and --report-split are both {}: the report must be on a split the fit never saw",
            a.split.name()
        );
    }
    if a.background < 2 {
        bail!("--background {}: at least 2 crops", a.background);
    }
    if a.top == 0 {
        bail!("--top 0: at least 1");
    }
    let manifest = Manifest::load(&a.bundle)?;
    let ds = Dataset::load(&a.dataset, a.format)?;
    let opts = a.provider.options();
    let enc = Encoders::load(&a.bundle, &opts)?;
    log_sessions(&enc.image.reports);
    log_sessions(&enc.text.reports);
    let dim = manifest.model.embed_dim;

    // The background: evenly spaced train crops.
    let train = ds
        .eval_set(Split::Train)
        .context("the background set comes from the train split")?;
    let n = a.background.min(train.images.len());
    let picked: Vec<PathBuf> = (0..n)
        .map(|i| train.images[i * train.images.len() / n].clone())
        .collect();
    let bg = images(&enc, &picked, "background", a.json)?;
    let background = Background::new(dim, flat(&bg))?;

    let fit_set = Embedded::of(&enc, &ds, a.split, a.json)?;
    let report_set = Embedded::of(&enc, &ds, a.report_split, a.json)?;
    let mut kinds = vec![];
    for kind in ["text", "image"] {
        let judge = |how: Normalisation| -> Result<(LrFit, Report)> {
            let f = fit(&background, &fit_set.labelled(kind), how)?;
            let r = report(&f, &background, &report_set.labelled(kind), how, a.top)?;
            Ok((f, r))
        };
        let (f, r) = judge(Normalisation::Background)?;
        let (_, raw) = judge(Normalisation::Raw)?;
        kinds.push(KindReport {
            fit: f,
            report: r,
            raw_baseline: raw,
        });
    }
    let image_fit = kinds.pop().expect("two kinds");
    let text_fit = kinds.pop().expect("two kinds");
    let file = ScoreCalibrationFile {
        version: SCORE_CALIBRATION_VERSION,
        image_encoder_sha256: manifest.encoder_digest(&manifest.io.image)?,
        preprocess: manifest.preprocess.clone(),
        text_encoder_sha256: manifest.encoder_digest(&manifest.io.text)?,
        tokenizer: manifest.tokenizer.clone(),
        background_count: background.len(),
        dim,
        text: text_fit.fit.clone(),
        image: image_fit.fit.clone(),
        fitted: Fitted {
            dataset: a.dataset.display().to_string(),
            split: a.split.name().into(),
            text_queries: fit_set.set.captions.len(),
            image_queries: fit_set.set.images.len(),
            background_split: Split::Train.name().into(),
        },
    };
    let written = match &a.out {
        None => {
            let mut m = manifest.clone();
            sen_core::scores::bundle::write(&a.bundle, &mut m, &file, &background)?;
            a.bundle.clone()
        }
        Some(out) => {
            copy_calibrated(&a.bundle, out, &manifest, &file, &background)?;
            out.clone()
        }
    };
    // Read back as a server would.
    let m = Manifest::load(&written)?;
    sen_core::scores::bundle::ScoreCalibration::load(&written, &m)?
        .context("the written bundle names no score calibration")?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "bundle": written,
                "fitted_on": file.fitted,
                "background": background.len(),
                "report_split": a.report_split.name(),
                "text": text_fit,
                "image": image_fit,
            }))?
        );
    } else {
        println!(
            "score calibration written into {} (fitted on {} {}, {} background crops from train)",
            written.display(),
            a.dataset.display(),
            a.split.name(),
            background.len()
        );
        for (name, k) in [("text -> image", &text_fit), ("image -> image", &image_fit)] {
            print_report(name, a.report_split, k);
        }
    }
    Ok(())
}

fn print_report(name: &str, split: Split, k: &KindReport) {
    let r = &k.report;
    println!(
        "\n{name}: judged on {} ({} queries, {} pairs, {} match: prior {:.5}); fitted at prior {:.5}",
        split.name(),
        r.queries,
        r.pairs,
        r.matches,
        r.prior,
        k.fit.prior
    );
    println!(
        "  reliability over each query's top {} (p at the split's prior):",
        r.top
    );
    println!(
        "    {:<11} {:>6} {:>8} {:>10}",
        "p", "pairs", "mean p", "precision"
    );
    for b in &r.reliability {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        println!(
            "    {:.1} - {:.1}  {:>6} {:>8} {:>10}",
            b.lo,
            b.hi,
            b.pairs,
            f(b.mean_p),
            f(b.precision)
        );
    }
    let h = &r.p90;
    println!(
        "  class-balanced ECE {:.4} (raw-score baseline {:.4}); ECE of the top pairs {:.4}",
        r.balanced_ece, k.raw_baseline.balanced_ece, r.ece_top
    );
    println!(
        "  p >= 0.9: {} pairs, {} match: precision {} (95% Wilson {:.3} - {:.3}); raw-score baseline {} pairs",
        h.pairs,
        h.matches,
        h.precision.map_or("-".into(), |p| format!("{p:.3}")),
        h.wilson_95.0,
        h.wilson_95.1,
        k.raw_baseline.p90.pairs
    );
}

/// A split's embeddings.
struct Embedded {
    set: EvalSet,
    images: Array2<f32>,
    texts: Array2<f32>,
}

impl Embedded {
    fn of(enc: &Encoders, ds: &Dataset, split: Split, quiet: bool) -> Result<Embedded> {
        let set = ds.eval_set(split)?;
        let images = images(enc, &set.images, split.name(), quiet)?;
        let texts = enc.text.encode(&set.captions)?;
        Ok(Embedded { set, images, texts })
    }

    fn labelled(&self, kind: &str) -> Labelled<'_> {
        let gallery = self.images.as_slice().expect("standard layout");
        let dim = self.images.ncols();
        match kind {
            "text" => Labelled {
                dim,
                queries: self.texts.as_slice().expect("standard layout"),
                query_pids: &self.set.caption_pids,
                gallery,
                gallery_pids: &self.set.image_pids,
                same_set: false,
            },
            _ => Labelled {
                dim,
                queries: gallery,
                query_pids: &self.set.image_pids,
                gallery,
                gallery_pids: &self.set.image_pids,
                same_set: true,
            },
        }
    }
}

/// Embed image files; every one must decode (dropping one would bias the fit).
fn images(enc: &Encoders, files: &[PathBuf], what: &str, quiet: bool) -> Result<Array2<f32>> {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        bar(files.len(), what)
    };
    let out = enc
        .image
        .encode_files(files, |k| pb.set_position(k as u64))?;
    pb.finish_and_clear();
    if let Some((i, why)) = out.failures.first() {
        bail!(
            "{} of {} {what} images could not be read, first {}: {why}",
            out.failures.len(),
            files.len(),
            files[*i].display()
        );
    }
    Ok(out.embeds.as_standard_layout().to_owned())
}

fn flat(a: &Array2<f32>) -> Vec<f32> {
    a.as_standard_layout().iter().copied().collect()
}

/// Copy the bundle's files into a staged `out`, write the calibration there, and move
/// it into place only when whole.
fn copy_calibrated(
    bundle: &Path,
    out: &Path,
    manifest: &Manifest,
    file: &ScoreCalibrationFile,
    background: &Background,
) -> Result<()> {
    if out.exists() && std::fs::canonicalize(out)? == std::fs::canonicalize(bundle)? {
        bail!(
            "--out {} is the bundle itself: leave --out off to calibrate in place",
            out.display()
        );
    }
    let staged = sen_core::fsutil::StagedDir::new(out, "sen-calibrate-scores")?;
    let dir = staged.path();
    for name in manifest.files.keys() {
        let to = dir.join(name);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).with_context(|| p.display().to_string())?;
        }
        std::fs::copy(bundle.join(name), &to)
            .with_context(|| format!("copying {}", bundle.join(name).display()))?;
    }
    let mut m = manifest.clone();
    sen_core::scores::bundle::write(dir, &mut m, file, background)?;
    Manifest::load(dir)?;
    staged.commit()?;
    Ok(())
}
