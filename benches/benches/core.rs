//! Throughput of the `sen-core` stages every request goes through.
//!
//! `cargo bench -p sen-benches --bench core` (filters work: `-- tokenizer`).
//! Names read stage / what / size, and report items per second.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sen_core::preprocess::{Preprocessor, decode_rgb8};
use sen_core::{ClipTokenizer, ModelConfig};
use std::hint::black_box;
use std::path::Path;

const CAPTIONS: &[&str] = &[
    "A man in a grey hoodie with a red backpack walks along the street, wearing dark jeans and white sneakers.",
    "The woman has long black hair and wears a crimson coat over a white sweater, navy trousers and brown boots.",
    "A young boy dressed in a yellow t-shirt and blue shorts carries a small green bag on his left shoulder.",
    "This pedestrian is wearing a black jacket, light grey pants and a pair of black shoes, holding a phone.",
];

fn preprocessing(c: &mut Criterion) {
    // A typical pedestrian crop: 200x500 JPEG.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/images/astronaut.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(1));
    for preset in ["vit-b16", "tiny"] {
        let p = Preprocessor::for_model(&ModelConfig::preset(preset).unwrap());
        g.bench_function(
            BenchmarkId::new("jpeg-200x500-decode-resize-normalize", preset),
            |b| b.iter(|| p.process(&decode_rgb8(black_box(&bytes), &path).unwrap())),
        );
    }
    let img = decode_rgb8(&bytes, &path).unwrap();
    g.bench_function("jpeg-200x500-decode-only", |b| {
        b.iter(|| decode_rgb8(black_box(&bytes), &path).unwrap())
    });
    let p = Preprocessor::for_model(&ModelConfig::vit_b16());
    g.bench_function(
        BenchmarkId::new("resize-normalize-200x500", "vit-b16"),
        |b| b.iter(|| p.process(black_box(&img))),
    );
    g.finish();
}

fn tokenizer(c: &mut Criterion) {
    let tok =
        ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path().unwrap(), 77).unwrap();
    let mut g = c.benchmark_group("tokenizer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode-caption-1", |b| {
        b.iter(|| tok.encode(black_box(CAPTIONS[0])).unwrap())
    });
    let batch: Vec<&str> = CAPTIONS.iter().cycle().take(256).copied().collect();
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("encode-captions-batch-256", |b| {
        b.iter(|| tok.encode_batch(black_box(&batch)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, preprocessing, tokenizer);
criterion_main!(benches);
