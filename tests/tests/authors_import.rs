//! Checkpoints written by the IRRA and SEN authors' own code (their model classes,
//! `convert_weights`, `Checkpointer`; train/tests/fixtures/authors, made by
//! scripts/reference/authors_checkpoint.py) imported with `sen-train import`,
//! exported, and run by sen's runtime give the embeddings their code computed with
//! their preprocessing (torchvision's `T.Resize` on PIL images: Pillow's bilinear)
//! and tokenizer: cosine >= 0.9999 from fp16 weights, 1 - 1e-6 from fp32 (SPEC §11).

use sen_core::preprocess::{PreprocessSpec, Preprocessor, ResizeFilter, load_rgb8};
use sen_core::{Manifest, ModelConfig};
use sen_train::import::{Authors, import_authors};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../train/tests/fixtures/authors")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn the_authors_checkpoints_deploy_with_the_embeddings_their_code_computes() {
    let exp = expected();
    let cfg: ModelConfig = serde_json::from_value(exp["config"].clone()).unwrap();
    let images: Vec<PathBuf> = exp["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| fixtures().join("images").join(n.as_str().unwrap()))
        .collect();
    let captions: Vec<String> = exp["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let d = tempfile::tempdir().unwrap();
    // (file, code, fp16 weights, fp16 export: what `sen-export --fp16` puts on a box)
    for (file, from, fp16, fp16_export) in [
        ("irra_fp16.pth", Authors::Irra, true, false),
        ("irra_fp32.pth", Authors::Irra, false, false),
        ("sen_fp16_module.pth", Authors::Sen, true, false),
        ("sen_fp16_module.pth", Authors::Sen, true, true),
    ] {
        let ckpt = d.path().join(format!("{file}.{fp16_export}.ckpt"));
        let report = import_authors(from, &fixtures().join(file), &cfg, &ckpt).unwrap();
        assert_eq!(report.preprocess.resize, "bilinear", "{file}");
        assert_eq!(report.module_prefix, file.contains("module"), "{file}");
        assert_eq!(report.id_classes, Some(5), "{file}");
        let bundle = d.path().join(format!("{file}.{fp16_export}.bundle"));
        let opts = sen_export::ExportOptions {
            fp16: fp16_export,
            ..Default::default()
        };
        sen_export::export(&ckpt, &bundle, &opts).unwrap();
        let m = Manifest::load(&bundle).unwrap();
        assert_eq!(
            m.preprocess.resize, "bilinear",
            "{file}: the bundle names the filter"
        );
        let enc = sen_runtime::encoders::Encoders::load_cpu(&bundle).unwrap();
        let got = enc.image.encode_files(&images, |_| {}).unwrap();
        assert!(got.failures.is_empty(), "{:?}", got.failures);
        let want = &exp["checkpoints"][file];
        // SPEC §11: 0.9999 for fp16 (weights or compute), 1 - 1e-6 for fp32.
        let floor = if fp16 || fp16_export {
            0.9999
        } else {
            1.0 - 1e-6
        };
        for (i, row) in want["image"].as_array().unwrap().iter().enumerate() {
            let c = cosine(got.embeds.row(i).as_slice().unwrap(), &floats(row));
            assert!(c >= floor, "{file} image {i}: cosine {c} < {floor}");
        }
        let texts = enc.text.encode(&captions).unwrap();
        for (i, row) in want["text"].as_array().unwrap().iter().enumerate() {
            let c = cosine(texts.row(i).as_slice().unwrap(), &floats(row));
            assert!(c >= floor, "{file} caption {i}: cosine {c} < {floor}");
        }
    }
}

#[test]
fn sen_tokenizes_the_captions_as_their_code_does() {
    let exp = expected();
    let tok =
        sen_core::ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path().unwrap(), 77)
            .unwrap();
    for (c, want) in exp["captions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(exp["tokens"].as_array().unwrap())
    {
        let (ids, _) = tok.encode_arrays(&[c.as_str().unwrap()]).unwrap();
        let want: Vec<i64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids.row(0).to_vec(), want, "{c}");
    }
}

/// The tensor sen's bilinear preprocessing feeds the encoder equals what their
/// torchvision pipeline made (sampled values and sums); bicubic does not.
#[test]
fn bilinear_preprocessing_equals_their_torchvision_pipeline() {
    let exp = expected();
    let cfg: ModelConfig = serde_json::from_value(exp["config"].clone()).unwrap();
    for (filter, should_match) in [
        (ResizeFilter::Bilinear, true),
        (ResizeFilter::Bicubic, false),
    ] {
        let pre = Preprocessor::new(PreprocessSpec::for_model_with(&cfg, filter)).unwrap();
        let mut all_match = true;
        for (name, want) in exp["images"]
            .as_array()
            .unwrap()
            .iter()
            .zip(exp["preprocessed"].as_array().unwrap())
        {
            let img = load_rgb8(&fixtures().join("images").join(name.as_str().unwrap())).unwrap();
            let t = pre.process(&img);
            let sum: f64 = t.iter().map(|v| *v as f64).sum();
            let abs: f64 = t.iter().map(|v| v.abs() as f64).sum();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0) + 0.05;
            let mut ok = close(sum, want["sum"].as_f64().unwrap())
                && close(abs, want["abs_sum"].as_f64().unwrap());
            for s in want["samples"].as_array().unwrap() {
                let s = s.as_array().unwrap();
                let (c, y, x) = (
                    s[0].as_u64().unwrap() as usize,
                    s[1].as_u64().unwrap() as usize,
                    s[2].as_u64().unwrap() as usize,
                );
                ok &= (t[[c, y, x]] as f64 - s[3].as_f64().unwrap()).abs() < 1e-5;
            }
            if should_match {
                assert!(
                    ok,
                    "{name}: bilinear differs from their pipeline (sum {sum}, |sum| {abs})"
                );
            }
            all_match &= ok;
        }
        if !should_match {
            assert!(
                !all_match,
                "bicubic must not pass for their bilinear pipeline"
            );
        }
    }
}
