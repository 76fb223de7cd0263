//! ONNX Runtime CPU latency and throughput of exported encoders: one image and one
//! caption per call, and a batch of 16 images (the runtime's default batch), for the
//! tiny and vit-b16 presets. The weights are random (speed does not depend on their
//! values); the bundles are built by the real exporter into
//! `target/bench-bundles/<preset>` (kept, so `scripts/reference/ort_throughput.py`
//! can time Python onnxruntime on the very same files).
//! `cargo bench -p sen-benches --bench encoders`.

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array1, Array2, Array4};
use sen_core::ModelConfig;
use sen_export::{ExportOptions, export};
use sen_runtime::encoders::Encoders;
use std::time::Duration;

fn encoders(c: &mut Criterion) {
    for preset in ["tiny", "vit-b16"] {
        let cfg = ModelConfig::preset(preset).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-bundles");
        let bundle = root.join(preset);
        if sen_core::Manifest::load(&bundle).is_err() {
            let tmp = tempfile::tempdir().unwrap();
            sen_export::fixtures::random_checkpoint(&cfg, &tmp.path().join("ckpt"), 1).unwrap();
            let opts = ExportOptions {
                force: true,
                ..Default::default()
            };
            export(&tmp.path().join("ckpt"), &bundle, &opts).unwrap();
        }
        let enc = Encoders::load_cpu(&bundle).unwrap();
        let (h, w) = (cfg.vision.image_height, cfg.vision.image_width);
        let img1 = Array4::<f32>::from_elem((1, 3, h, w), 0.1);
        let img16 = Array4::<f32>::from_elem((16, 3, h, w), 0.1);
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
        g.throughput(criterion::Throughput::Elements(1));
        g.bench_function("image-batch-1", |b| {
            b.iter(|| enc.image.encode(img1.view()).unwrap())
        });
        g.throughput(criterion::Throughput::Elements(16));
        g.bench_function("image-batch-16", |b| {
            b.iter(|| enc.image.encode(img16.view()).unwrap())
        });
        g.throughput(criterion::Throughput::Elements(1));
        g.bench_function("caption-batch-1", |b| {
            b.iter(|| enc.text.encode_ids(ids.view(), eot.view()).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, encoders);
criterion_main!(benches);
