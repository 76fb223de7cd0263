//! Preprocessing against Pillow (`scripts/reference/preprocess_cases.py`): the
//! resized uint8 images Pillow produced, normalised identically on both sides.
//! Target (issue #2): mean absolute difference at most 0.01 in normalised units
//! on photo-like images. Lossless inputs must match Pillow exactly, since only
//! decoders may differ (JPEG and WebP decoders are not Pillow's libjpeg-turbo/libwebp).
//!
//! `cargo test -p sen-core --test preprocess_parity -- --nocapture` prints the table.

use sen_core::preprocess::{PreprocessSpec, Preprocessor, load_rgb8};
use std::path::Path;

#[test]
fn matches_pillow_bicubic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut rows = Vec::new();
    let mut worst = 0f64;
    for case in meta["cases"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let spec = PreprocessSpec {
            height: h,
            width: w,
            ..PreprocessSpec::for_model(&sen_core::ModelConfig::tiny())
        };
        let p = Preprocessor::new(spec).unwrap();
        let ours = p.load(&dir.join(input)).unwrap();
        let reference = load_rgb8(&dir.join(case["reference"].as_str().unwrap())).unwrap();
        assert_eq!((reference.width, reference.height), (w, h));
        let mut theirs = ndarray::Array3::<f32>::zeros((3, h, w));
        p.normalize_into(&reference, theirs.view_mut());
        let diff: Vec<f64> = ours
            .iter()
            .zip(theirs.iter())
            .map(|(a, b)| (a - b).abs() as f64)
            .collect();
        let mad = diff.iter().sum::<f64>() / diff.len() as f64;
        let max = diff.iter().cloned().fold(0.0, f64::max);
        let lossless = input.ends_with(".png") || input.ends_with(".bmp");
        rows.push(format!(
            "{input:<24} {w:>3}x{h:<3}  MAD {mad:.5}  max {max:.4}{}",
            if lossless { "  (lossless)" } else { "" }
        ));
        assert!(
            mad <= 0.01,
            "{input} at {w}x{h}: mean abs diff {mad} > 0.01"
        );
        if lossless {
            assert_eq!(
                max, 0.0,
                "{input}: a lossless input must match Pillow exactly"
            );
        }
        worst = worst.max(mad);
    }
    println!(
        "preprocessing vs {}\n{}\nworst MAD {worst:.5}",
        meta["reference"],
        rows.join("\n")
    );
    assert!(rows.len() >= 10);
}
