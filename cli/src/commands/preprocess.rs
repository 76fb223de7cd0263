//! `sen preprocess`: the exact tensor the image encoder gets for an image.

use anyhow::{Context, Result};
use sen_core::preprocess::{Preprocessor, load_rgb8};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PreprocessArgs {
    /// JPEG, PNG, BMP or WebP file.
    image: PathBuf,
    /// Output .npy file (written atomically).
    #[arg(long, value_name = "FILE.npy")]
    out: PathBuf,
    /// Model preset whose input size to use.
    #[arg(long, default_value = "vit-b16", value_parser = ["vit-b16", "tiny"], conflicts_with = "bundle")]
    preset: String,
    /// The resize filter with --preset: bicubic (OpenAI CLIP) or bilinear (SEN's and
    /// IRRA's code); a bundle names its own.
    #[arg(long, default_value = "bicubic", value_parser = ["bicubic", "bilinear"], conflicts_with = "bundle")]
    resize: String,
    /// Take size, normalisation and filter from this bundle's manifest instead.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
}

pub fn run(a: PreprocessArgs) -> Result<()> {
    let PreprocessArgs {
        image,
        out,
        preset,
        resize,
        bundle,
    } = a;
    let spec = sen_runtime::preprocess_spec(bundle.as_deref(), &preset, resize.parse()?)?;
    let p = Preprocessor::new(spec)?;
    let img = load_rgb8(&image)?;
    let t = p.process(&img);
    let (h, w) = (t.shape()[1], t.shape()[2]);
    let data = t.as_standard_layout().iter().copied().collect::<Vec<f32>>();
    sen_core::npy::write_npy(&out, &[1, 3, h, w], &data)
        .with_context(|| format!("writing {}", out.display()))?;
    let (min, max) = data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    println!(
        "{}: {}x{} -> {} [1, 3, {h}, {w}] float32 (min {min:.4}, max {max:.4}, mean {:.4})",
        image.display(),
        img.width,
        img.height,
        out.display(),
        data.iter().map(|&v| v as f64).sum::<f64>() / data.len() as f64
    );
    Ok(())
}
