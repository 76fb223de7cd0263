//! Data-side throughput: synthetic rendering, annotation loading, and the training
//! pipeline (decode + augment + prune + tokenise on worker threads).
//!
//! `cargo bench -p sen-benches --bench data`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sen_core::data::Dataset;
use sen_core::data::pipeline::{PipelineConfig, TrainPipeline};
use sen_core::synth::{SynthConfig, generate};
use sen_core::{ClipTokenizer, ModelConfig, PreprocessSpec};
use std::time::Duration;

fn synth(c: &mut Criterion) {
    let mut g = c.benchmark_group("synth");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let cfg = SynthConfig {
        ids: 26,
        images_per_id: 4,
        seed: 1,
    };
    g.throughput(Throughput::Elements((cfg.ids * cfg.images_per_id) as u64));
    g.bench_function("render-jpeg-104-images", |b| {
        b.iter(|| {
            let d = tempfile::tempdir().unwrap();
            generate(d.path(), &cfg).unwrap()
        })
    });
    g.finish();
}

/// A CUHK-PEDES annotation file of `n` image records (two ~25-word captions each).
fn big_annotation(n: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let recs: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "split": if i % 10 < 8 { "train" } else { "test" }, "id": i / 4 + 1,
                "file_path": format!("CUHK01/{i:07}.png"),
                "captions": [
                    format!("A man {i} is wearing a grey hoodie with a red backpack on his back, dark jeans and white sneakers while walking."),
                    "The pedestrian has short black hair and wears a long black coat over blue trousers, carrying a brown bag."],
                "processed_tokens": [["a", "man"], ["the", "pedestrian"]],
            })
        })
        .collect();
    std::fs::write(
        d.path().join("reid_raw.json"),
        serde_json::to_vec(&recs).unwrap(),
    )
    .unwrap();
    d
}

fn loader(c: &mut Criterion) {
    let d = big_annotation(40_000);
    let mut g = c.benchmark_group("loader");
    g.sample_size(10);
    g.throughput(Throughput::Elements(40_000));
    g.bench_function("cuhk-pedes-parse-40k-images", |b| {
        b.iter(|| Dataset::load(d.path(), None).unwrap())
    });
    let ds = Dataset::load(d.path(), None).unwrap();
    g.bench_function("missing-file-check-40k-images", |b| {
        b.iter(|| ds.missing_files(None).len())
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let d = tempfile::tempdir().unwrap();
    generate(
        d.path(),
        &SynthConfig {
            ids: 52,
            images_per_id: 4,
            seed: 2,
        },
    )
    .unwrap();
    let tok_path = sen_core::deps::clip_vocab_path().unwrap();
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for preset in ["tiny", "vit-b16"] {
        let set = Dataset::load(d.path(), None).unwrap().train_set().unwrap();
        let cfg = PipelineConfig {
            identities_per_batch: 16,
            samples_per_identity: 2,
            workers: 2,
            ..Default::default()
        };
        let p = TrainPipeline::new(
            set,
            PreprocessSpec::for_model(&ModelConfig::preset(preset).unwrap()),
            ClipTokenizer::from_vocab_gz(&tok_path, 77).unwrap(),
            cfg,
        )
        .unwrap();
        let per_epoch: usize = p.plan(0).iter().map(Vec::len).sum();
        g.throughput(Throughput::Elements(per_epoch as u64));
        g.bench_function(
            BenchmarkId::new("epoch-augment-prune-2-workers", preset),
            |b| b.iter(|| p.epoch(0).map(|b| b.unwrap().images.len()).sum::<usize>()),
        );
    }
    g.finish();
}

criterion_group!(benches, synth, loader, pipeline);
criterion_main!(benches);
