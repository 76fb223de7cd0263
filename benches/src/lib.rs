//! Shared set-up of the criterion benches in `benches/`: the bundles they time (made
//! by the real exporter and calibrator from random weights, kept in
//! `target/bench-bundles/`), seeded galleries, and command-line filter checks (so a
//! filtered run does not build what it will not time).

use sen_core::ModelConfig;
use std::path::{Path, PathBuf};

/// Where the benches keep their bundles.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-bundles")
}

/// The fp32 (or fp16) random-weight bundle of `preset`, exported once and again
/// whenever the preset's sizes change (a stale bundle would time another model).
pub fn exported(preset: &str, fp16: bool) -> PathBuf {
    let out = root().join(if fp16 {
        format!("{preset}-fp16")
    } else {
        preset.to_string()
    });
    let cfg = ModelConfig::preset(preset).expect("preset");
    let current = |m: sen_core::Manifest| {
        m.model == cfg && m.format_version == sen_core::manifest::MANIFEST_FORMAT_VERSION
    };
    if !sen_core::Manifest::load(&out).is_ok_and(current) {
        let tmp = tempfile::tempdir().expect("temp dir");
        sen_export::fixtures::random_checkpoint(&cfg, &tmp.path().join("ckpt"), 1)
            .expect("random checkpoint");
        let opts = sen_export::ExportOptions {
            force: true,
            fp16,
            ..Default::default()
        };
        sen_export::export(&tmp.path().join("ckpt"), &out, &opts).expect("export");
    }
    out
}

/// `preset`'s fp32 random weights as a format-1 bundle (fixed text context, fed whole):
/// the before of the dynamic sequence.
pub fn exported_format_1(preset: &str) -> PathBuf {
    let out = root().join(format!("{preset}-format1"));
    let cfg = ModelConfig::preset(preset).expect("preset");
    if !sen_core::Manifest::load(&out).is_ok_and(|m| m.model == cfg && m.format_version == 1) {
        let tmp = tempfile::tempdir().expect("temp dir");
        sen_export::fixtures::random_checkpoint(&cfg, &tmp.path().join("ckpt"), 1)
            .expect("random checkpoint");
        let opts = sen_export::ExportOptions {
            force: true,
            format_version: 1,
            ..Default::default()
        };
        sen_export::export(&tmp.path().join("ckpt"), &out, &opts).expect("export");
    }
    out
}

/// The int8 bundle of `preset`'s fp32 one, calibrated (entropy) on 32 images of a small
/// synthetic set; rebuilt when the fp32 bundle changed.
pub fn calibrated(preset: &str) -> PathBuf {
    let fp32 = exported(preset, false);
    let out = root().join(format!("{preset}-int8"));
    let source = sen_core::Manifest::load(&fp32)
        .expect("fp32 bundle")
        .source_checkpoint_sha256;
    let fresh = sen_core::Manifest::load(&out).is_ok_and(|m| m.source_checkpoint_sha256 == source);
    if !fresh {
        let synth = root().join("synth");
        if sen_core::data::Dataset::load(&synth, None).is_err() {
            let cfg = sen_core::synth::SynthConfig {
                ids: 26,
                images_per_id: 2,
                seed: 3,
            };
            sen_core::synth::generate(&synth, &cfg).expect("synthetic set");
        }
        let mut o = sen_calibrate::CalibrateOptions::new(&synth);
        o.samples = 32;
        o.batch = 8;
        o.eval_split = None;
        o.time_batch = None;
        // Random weights: the bench times the int8 bundle, its accuracy is not the point.
        o.max_drop = None;
        o.force = true;
        sen_calibrate::calibrate(&fp32, &out, &o).expect("calibration");
    }
    out
}

/// `n` unit rows of `d` values and one unit query, from a fixed seed (the faiss script
/// uses the same sizes).
pub fn gallery(n: usize, d: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = sen_core::rng::Rng::new(seed);
    let mut g: Vec<f32> = (0..n * d).map(|_| rng.f32() * 2.0 - 1.0).collect();
    for r in g.chunks_mut(d) {
        let s = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= s);
    }
    let mut q: Vec<f32> = (0..d).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let s = q.iter().map(|v| v * v).sum::<f32>().sqrt();
    q.iter_mut().for_each(|v| *v /= s);
    (g, q)
}

/// Whether a criterion command-line filter can match any of `ids` (full benchmark ids,
/// `group/function`). A filter with regex syntax is not evaluated here (kept: criterion
/// still filters).
pub fn wanted(ids: &[String]) -> bool {
    matches_filters(&filters(std::env::args().skip(1)), ids)
}

/// criterion's options that take a value (`--save-baseline main`): their values are
/// not filters.
const VALUE_OPTIONS: [&str; 16] = [
    "--color",
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
    "--profile-time",
    "--format",
];

/// The positional filter arguments among a bench binary's arguments.
pub fn filters(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = vec![];
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        if VALUE_OPTIONS.contains(&a.as_str()) || a == "-c" {
            args.next();
        } else if !a.starts_with('-') {
            out.push(a);
        }
    }
    out
}

pub fn matches_filters(filters: &[String], ids: &[String]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            f.contains(|c: char| "()|[]*+?^$\\{}".contains(c))
                || ids.iter().any(|id| id.contains(f.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_are_not_filters() {
        let a = |v: &[&str]| filters(v.iter().map(|s| s.to_string()));
        assert!(a(&["--bench", "--save-baseline", "main"]).is_empty());
        assert_eq!(
            a(&["--bench", "tiny", "--baseline-lenient", "main"]),
            ["tiny"]
        );
        assert_eq!(a(&["--test", "--sample-size=10", "cpu-int8"]), ["cpu-int8"]);
    }

    #[test]
    fn filter_matching() {
        let ids = vec!["encoder-image/cpu-int8-tiny/batch-8".to_string()];
        assert!(matches_filters(&[], &ids));
        assert!(matches_filters(&["cpu-int8".into()], &ids));
        assert!(matches_filters(&["batch-8".into()], &ids));
        assert!(!matches_filters(&["vit-b16".into()], &ids));
        assert!(matches_filters(&["vit-(b16|tiny)".into()], &ids));
    }

    #[test]
    fn gallery_rows_are_unit() {
        let (g, q) = gallery(10, 8, 1);
        for r in g.chunks(8).chain([&q[..]]) {
            let n: f32 = r.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
    }
}
