//! ONNX Runtime CPU latency and throughput of exported encoders: one image and one
//! caption per call, and batches of 8 and 16 images (16: the runtime's default batch),
//! for the tiny and vit-b16 presets, fp32 and int8. The weights are random (speed does
//! not depend on their values); the bundles are built by the real exporter into
//! `target/bench-bundles/<preset>` (kept, so `scripts/reference/ort_throughput.py`
//! can time Python onnxruntime on the very same files) and calibrated by the real
//! sen-calibrate (entropy, on a small synthetic set) into `<preset>-int8`.
//! `cargo bench -p sen-benches --bench encoders [-- int8]`.

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array1, Array2, Array4};
use sen_core::ModelConfig;
use sen_export::{ExportOptions, export};
use sen_runtime::encoders::Encoders;
use std::time::Duration;

/// The int8 bundle of `fp32`, calibrated on a small synthetic set (kept between runs).
fn int8_bundle(root: &std::path::Path, fp32: &std::path::Path, preset: &str) -> std::path::PathBuf {
    let out = root.join(format!("{preset}-int8"));
    let fresh = sen_core::Manifest::load(&out).is_ok_and(|m| {
        let src = sen_core::Manifest::load(fp32).unwrap();
        m.source_checkpoint_sha256 == src.source_checkpoint_sha256
    });
    if !fresh {
        let synth = root.join("synth");
        if sen_core::data::Dataset::load(&synth, None).is_err() {
            let cfg = sen_core::synth::SynthConfig {
                ids: 26,
                images_per_id: 2,
                seed: 3,
            };
            sen_core::synth::generate(&synth, &cfg).unwrap();
        }
        let mut o = sen_calibrate::CalibrateOptions::new(&synth);
        o.samples = 32;
        o.eval_split = None;
        o.time_batch = None;
        o.force = true;
        sen_calibrate::calibrate(fp32, &out, &o).unwrap();
    }
    out
}

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
        let (h, w) = (cfg.vision.image_height, cfg.vision.image_width);
        let img1 = Array4::<f32>::from_elem((1, 3, h, w), 0.1);
        let img8 = Array4::<f32>::from_elem((8, 3, h, w), 0.1);
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
        for precision in ["fp32", "int8"] {
            let group = format!("ort-cpu-{precision}-{preset}");
            if !criterion_filter_allows(&group) {
                continue;
            }
            let dir = if precision == "int8" {
                int8_bundle(&root, &bundle, preset)
            } else {
                bundle.clone()
            };
            let enc = Encoders::load_cpu(&dir).unwrap();
            let mut g = c.benchmark_group(group);
            g.sample_size(20).measurement_time(Duration::from_secs(8));
            g.throughput(criterion::Throughput::Elements(1));
            g.bench_function("image-batch-1", |b| {
                b.iter(|| enc.image.encode(img1.view()).unwrap())
            });
            g.throughput(criterion::Throughput::Elements(8));
            g.bench_function("image-batch-8", |b| {
                b.iter(|| enc.image.encode(img8.view()).unwrap())
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
}

/// Skip building (and calibrating) bundles for groups a command-line filter excludes:
/// criterion filters benchmarks, not the set-up code around them. A filter with regex
/// syntax is not evaluated here (the group is kept; criterion still filters).
fn criterion_filter_allows(group: &str) -> bool {
    const FUNCTIONS: [&str; 4] = [
        "image-batch-1",
        "image-batch-8",
        "image-batch-16",
        "caption-batch-1",
    ];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters.iter().any(|f| {
            f.contains(|c: char| "()|[]*+?^$\\{}".contains(c))
                || FUNCTIONS
                    .iter()
                    .any(|func| format!("{group}/{func}").contains(f.as_str()))
        })
}

criterion_group!(benches, encoders);
criterion_main!(benches);
