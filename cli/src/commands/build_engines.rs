//! `sen build-engines`: build and cache a bundle's TensorRT engines ahead of serving.

use crate::common::{ProviderArgs, spinner};
use anyhow::{Result, bail};
use sen_core::Manifest;
use sen_runtime::encoders::Encoders;
use sen_runtime::providers::ProviderKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BuildEnginesArgs {
    bundle: PathBuf,
    /// Engine precision for an fp32 bundle on TensorRT 10 (`fp16` sets the FP16
    /// builder flag); other bundles take their precision from the manifest.
    #[arg(long, value_parser = ["fp16"])]
    precision: Option<String>,
    #[command(flatten)]
    provider: ProviderArgs,
}

/// `--precision fp16` (TensorRT's FP16 flag) applies to fp32 bundles only; other
/// bundles carry their precision. Reads the manifest only: loading the encoders
/// verifies every file right after.
pub(super) fn require_fp32_bundle(bundle: &Path) -> Result<()> {
    let m = Manifest::read_unverified(bundle)?;
    if m.precision != sen_core::Precision::Fp32 {
        bail!(
            "--precision fp16 is only for an fp32 bundle; this bundle is {}",
            m.precision
        );
    }
    Ok(())
}

pub fn run(a: BuildEnginesArgs) -> Result<()> {
    if let Some(p) = a.provider.provider.filter(|&p| p != ProviderKind::TensorRt) {
        bail!("build-engines builds TensorRT engines; --provider {p} has none to build");
    }
    let mut opts = a.provider.options();
    opts.kind = ProviderKind::TensorRt;
    opts.tensorrt.fp16_flag = a.precision.is_some();
    if opts.tensorrt.fp16_flag {
        require_fp32_bundle(&a.bundle)?;
    }
    let sp = spinner(format!(
        "building TensorRT engines for {} (first build on a GPU can take minutes)",
        a.bundle.display()
    ));
    let t = Instant::now();
    let enc = Encoders::load(&a.bundle, &opts);
    sp.finish_and_clear();
    let enc = enc?;
    for (what, reports, batch) in [
        ("image", &enc.image.reports, enc.image.profile),
        ("text", &enc.text.reports, enc.text.profile),
    ] {
        for r in reports.iter() {
            println!(
                "{what} encoder: {} in {:.1} s ({}), profile batch {}/{}/{}",
                r.engine_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                r.seconds,
                if r.engine_was_cached {
                    "already cached"
                } else {
                    "built"
                },
                batch.min,
                batch.opt,
                batch.max
            );
        }
    }
    // One run at the optimum batch of each, so the first query is not the first run.
    let (h, w) = (
        enc.image.manifest.preprocess.height,
        enc.image.manifest.preprocess.width,
    );
    let x = ndarray::Array4::<f32>::zeros((enc.image.profile.opt, 3, h, w));
    let t1 = Instant::now();
    enc.image.encode(x.view())?;
    let qs = vec!["a person"; enc.text.profile.opt];
    enc.text.encode(&qs)?;
    println!(
        "warm-up runs {:.1} ms; engines ready in {:.1} s total",
        t1.elapsed().as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
