//! Preprocessing against Pillow (`scripts/reference/preprocess_cases.py`): the
//! resized uint8 images Pillow 13.0.0 produced with each filter (bicubic and
//! bilinear), normalised identically on both sides.
//! Target (issue #2): mean absolute difference at most 0.01 in normalised units
//! on photo-like images. Lossless inputs must match Pillow's uint8 resize byte for
//! byte, since only decoders may differ (JPEG and WebP decoders are not Pillow's
//! libjpeg-turbo/libwebp).
//!
//! `cargo test -p sen-core --test preprocess_parity -- --nocapture` prints the tables.

use sen_core::preprocess::{PreprocessSpec, Preprocessor, ResizeFilter, Rgb8, load_rgb8, resize};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

/// One row of cases.json.
struct Case {
    input: String,
    reference: String,
    width: usize,
    height: usize,
    filter: ResizeFilter,
}

fn cases() -> (String, Vec<Case>) {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases.json")).unwrap())
            .unwrap();
    let cases = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            input: c["input"].as_str().unwrap().into(),
            reference: c["reference"].as_str().unwrap().into(),
            width: c["width"].as_u64().unwrap() as usize,
            height: c["height"].as_u64().unwrap() as usize,
            filter: c["filter"]
                .as_str()
                .expect("every case names its filter")
                .parse()
                .unwrap(),
        })
        .collect();
    (meta["reference"].to_string(), cases)
}

fn is_lossless(input: &str) -> bool {
    input.ends_with(".png") || input.ends_with(".bmp")
}

/// Every case of `filter`: byte-exact uint8 on lossless inputs, MAD <= 0.01 after
/// normalisation on all. Returns the number of cases checked.
fn check(filter: ResizeFilter) -> usize {
    let dir = fixtures();
    let (reference_note, cases) = cases();
    let mut rows = Vec::new();
    let mut worst = 0f64;
    for case in cases.iter().filter(|c| c.filter == filter) {
        let (input, w, h) = (case.input.as_str(), case.width, case.height);
        let spec = PreprocessSpec {
            height: h,
            width: w,
            resize: filter.name().into(),
            ..PreprocessSpec::for_model(&sen_core::ModelConfig::tiny())
        };
        let p = Preprocessor::new(spec).unwrap();
        let resized = p.resize(&load_rgb8(&dir.join(input)).unwrap());
        let reference = load_rgb8(&dir.join(&case.reference)).unwrap();
        assert_eq!((reference.width, reference.height), (w, h));
        assert_eq!((resized.width, resized.height), (w, h));
        let lossless = is_lossless(input);
        if lossless {
            assert!(
                resized.data == reference.data,
                "{input} at {w}x{h} ({filter}): a lossless input must match Pillow's uint8 \
                 resize exactly; {} of {} values differ",
                resized
                    .data
                    .iter()
                    .zip(&reference.data)
                    .filter(|(a, b)| a != b)
                    .count(),
                resized.data.len()
            );
        }
        let mut ours = ndarray::Array3::<f32>::zeros((3, h, w));
        let mut theirs = ndarray::Array3::<f32>::zeros((3, h, w));
        p.normalize_into(&resized, ours.view_mut());
        p.normalize_into(&reference, theirs.view_mut());
        let diff: Vec<f64> = ours
            .iter()
            .zip(theirs.iter())
            .map(|(a, b)| (a - b).abs() as f64)
            .collect();
        let mad = diff.iter().sum::<f64>() / diff.len() as f64;
        let max = diff.iter().cloned().fold(0.0, f64::max);
        rows.push(format!(
            "{input:<24} {w:>3}x{h:<3}  MAD {mad:.5}  max {max:.4}{}",
            if lossless { "  (lossless)" } else { "" }
        ));
        assert!(
            mad <= 0.01,
            "{input} at {w}x{h} ({filter}): mean abs diff {mad} > 0.01"
        );
        worst = worst.max(mad);
    }
    println!(
        "{filter} preprocessing vs {reference_note}\n{}\nworst MAD {worst:.5}",
        rows.join("\n")
    );
    rows.len()
}

#[test]
fn matches_pillow_bicubic() {
    assert!(check(ResizeFilter::Bicubic) >= 30);
}

#[test]
fn matches_pillow_bilinear() {
    assert!(check(ResizeFilter::Bilinear) >= 30);
}

/// The bilinear references are not bicubic ones under another name, and the
/// filter matters: on every lossless bilinear case, resizing with bicubic instead
/// misses the reference.
#[test]
fn bilinear_references_are_not_bicubic() {
    let dir = fixtures();
    let (_, cases) = cases();
    let mut n = 0;
    for case in cases
        .iter()
        .filter(|c| c.filter == ResizeFilter::Bilinear && is_lossless(&c.input))
    {
        let src: Rgb8 = load_rgb8(&dir.join(&case.input)).unwrap();
        let reference = load_rgb8(&dir.join(&case.reference)).unwrap();
        let bicubic = resize(&src, case.width, case.height, ResizeFilter::Bicubic);
        assert_ne!(
            bicubic.data, reference.data,
            "{} at {}x{}",
            case.input, case.width, case.height
        );
        n += 1;
    }
    assert!(n >= 24, "{n} lossless bilinear cases");
}
