//! ONNX Runtime CPU latency of exported encoders (issue #5): one image and one caption
//! per call, and a batch of 8 images, for the tiny and vit-b16 presets. The weights
//! are random (latency does not depend on their values); the bundle is built by the
//! real exporter. `cargo bench -p sen-benches --bench encoders`.

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array1, Array2, Array4};
use sen_core::ModelConfig;
use sen_export::{ExportOptions, encoders::encoder_tensors, export};
use sen_runtime::encoders::{BundleEncoders, SessionOptions};
use std::path::Path;
use std::time::Duration;

/// A checkpoint directory with random encoder weights for `cfg`.
fn random_checkpoint(cfg: &ModelConfig, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = 0x2545F4914F6CDD1Du64;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = encoder_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: i64 = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (((x % 2001) as f32 / 1000.0 - 1.0) * 0.02).to_le_bytes()
                })
                .collect();
            (name, shape.iter().map(|&d| d as usize).collect(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    cfg.save(&dir.join("config.json")).unwrap();
}

fn encoders(c: &mut Criterion) {
    for preset in ["tiny", "vit-b16"] {
        let cfg = ModelConfig::preset(preset).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        random_checkpoint(&cfg, &tmp.path().join("ckpt"));
        let bundle = tmp.path().join("bundle");
        export(&tmp.path().join("ckpt"), &bundle, &ExportOptions::default()).unwrap();
        let mut enc = BundleEncoders::load_cpu(&bundle, &SessionOptions::default()).unwrap();
        let (h, w) = (cfg.vision.image_height, cfg.vision.image_width);
        let img1 = Array4::<f32>::from_elem((1, 3, h, w), 0.1);
        let img8 = Array4::<f32>::from_elem((8, 3, h, w), 0.1);
        let tok = sen_core::ClipTokenizer::from_vocab_gz(
            &sen_core::deps::clip_vocab_path().unwrap(),
            cfg.text.context_length,
        )
        .unwrap();
        let e = tok
            .encode("a man in a grey hoodie with a red backpack")
            .unwrap();
        let ids = Array2::from_shape_vec((1, cfg.text.context_length), e.ids).unwrap();
        let eot = Array1::from(vec![e.eot_index as i64]);
        let mut g = c.benchmark_group(format!("ort-cpu-fp32-{preset}"));
        g.sample_size(20).measurement_time(Duration::from_secs(8));
        g.bench_function("image-batch-1", |b| {
            b.iter(|| enc.encode_images(img1.view()).unwrap())
        });
        g.bench_function("image-batch-8", |b| {
            b.iter(|| enc.encode_images(img8.view()).unwrap())
        });
        g.bench_function("caption-batch-1", |b| {
            b.iter(|| enc.encode_texts(ids.view(), eot.view()).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, encoders);
criterion_main!(benches);
