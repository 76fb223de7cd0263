//! Latency and throughput of the exported encoders on every execution provider that is
//! compiled in and can start here: image and text encoders at batch 1, 8 and 32, for
//! the tiny and vit-b16 presets. CPU runs fp32 and int8 bundles; CUDA and TensorRT run
//! fp16 and int8 where they can start (otherwise the group is skipped and the reason
//! printed). Names read `encoder-{image,text}/{provider}-{precision}-{preset}/batch-{n}`,
//! throughput in images or texts per second.
//!
//! The weights are random (speed does not depend on their values). The bundles are
//! made by the real exporter and calibrator into `target/bench-bundles/` on first use
//! and kept (`scripts/reference/ort_throughput.py` times Python onnxruntime on the
//! very same files): `<preset>` (fp32), `<preset>-fp16`, `<preset>-int8` (entropy,
//! 32 images of a small synthetic set). ONNX Runtime copies outputs back to the host
//! inside `run`, so GPU timings include the device finishing its work.
//!
//! `cargo bench -p sen-benches --bench encoders [-- FILTER]`, e.g. `-- cpu-int8` or
//! `-- encoder-image/cpu-fp32-vit-b16/batch-8`; bundles of filtered-out groups are
//! not built.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array4;
use sen_core::ModelConfig;
use sen_runtime::encoders::Encoders;
use sen_runtime::providers::{ProviderKind, ProviderOptions};
use std::time::Duration;

use sen_benches::{calibrated, exported, wanted};

const BATCHES: [usize; 3] = [1, 8, 32];

fn ids(groups: &[String]) -> Vec<String> {
    groups
        .iter()
        .flat_map(|g| BATCHES.map(|b| format!("{g}/batch-{b}")))
        .collect()
}

fn encoders(c: &mut Criterion) {
    for kind in ProviderKind::ALL {
        let precisions: &[&str] = match kind {
            ProviderKind::Cpu => &["fp32", "int8"],
            _ => &["fp16", "int8"],
        };
        let names = |precision: &str, preset: &str| {
            ["image", "text"].map(|e| format!("encoder-{e}/{kind}-{precision}-{preset}"))
        };
        let any: Vec<String> = precisions
            .iter()
            .flat_map(|p| ["tiny", "vit-b16"].map(|s| names(p, s)))
            .flatten()
            .collect();
        if !wanted(&ids(&any)) {
            continue;
        }
        if let Err(e) = sen_runtime::encoders::start_provider(&ProviderOptions::new(kind)) {
            let first = e.to_string();
            let first = first.lines().take(2).collect::<Vec<_>>().join(" ");
            println!("skipping the {kind} encoder benches: {first}");
            continue;
        }
        for preset in ["tiny", "vit-b16"] {
            let cfg = ModelConfig::preset(preset).unwrap();
            for &precision in precisions {
                let [gi, gt] = names(precision, preset);
                if !wanted(&ids(&[gi.clone(), gt.clone()])) {
                    continue;
                }
                let dir = match precision {
                    "int8" => calibrated(preset),
                    p => exported(preset, p == "fp16"),
                };
                let mut opts = ProviderOptions::new(kind);
                let profile = sen_runtime::providers::BatchProfile {
                    min: 1,
                    opt: 8,
                    max: 32,
                };
                opts.tensorrt.image_profile = profile;
                opts.tensorrt.text_profile = profile;
                let enc = match Encoders::load(&dir, &opts) {
                    Ok(e) => e,
                    Err(e) => {
                        println!("skipping {gi} and {gt}: {e}");
                        continue;
                    }
                };
                bench_encoders(c, &enc, &cfg, &gi, &gt, preset);
            }
        }
    }
}

fn bench_encoders(
    c: &mut Criterion,
    enc: &Encoders,
    cfg: &ModelConfig,
    gi: &str,
    gt: &str,
    preset: &str,
) {
    let (h, w) = (cfg.vision.image_height, cfg.vision.image_width);
    // vit-b16 runs take up to seconds on two cores: criterion's minimum of 10 samples.
    let (samples, secs) = if preset == "vit-b16" {
        (10, 4)
    } else {
        (20, 3)
    };
    let mut g = c.benchmark_group(gi);
    g.sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(secs));
    let mut rng = sen_core::rng::Rng::new(5);
    for b in BATCHES {
        let x = Array4::<f32>::from_shape_fn((b, 3, h, w), |_| rng.normal() as f32);
        g.throughput(Throughput::Elements(b as u64));
        g.bench_function(format!("batch-{b}"), |bch| {
            bch.iter(|| enc.image.encode(x.view()).unwrap())
        });
    }
    g.finish();
    let tok = &enc.text.tokenizer;
    let captions = [
        "a man in a grey hoodie with a red backpack",
        "the woman wears a long crimson coat over a white sweater and brown boots",
    ];
    let mut g = c.benchmark_group(gt);
    g.sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(secs));
    for b in BATCHES {
        let texts: Vec<&str> = captions.iter().cycle().take(b).copied().collect();
        let (ids, eot) = tok.encode_arrays(&texts).unwrap();
        g.throughput(Throughput::Elements(b as u64));
        g.bench_function(format!("batch-{b}"), |bch| {
            bch.iter(|| enc.text.encode_ids(ids.view(), eot.view()).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, encoders);
criterion_main!(benches);
