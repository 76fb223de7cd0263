//! One training step of the tiny preset on the CPU, whole and in parts, so recipe and
//! kernel changes are measured rather than guessed. Random inputs (no data pipeline):
//! `cargo bench -p sen-train --bench step`.

use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array2, Array4};
use sen_core::config::ModelConfig;
use sen_core::data::pipeline::Batch;
use sen_train::model::Sen;
use sen_train::model::layers::with_bf16_products;
use sen_train::model::text::pool_eot;
use sen_train::optim::{Adam, Recipe};
use sen_train::trainer::{LossWeights, batch_losses};
use tch::{Device, Kind, Tensor, nn};

const BATCH: usize = 32;
const CLASSES: i64 = 500;

fn batch(cfg: &ModelConfig) -> Batch {
    let (h, w) = (cfg.vision.image_height, cfg.vision.image_width);
    let ctx = cfg.text.context_length;
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let images = Array4::from_shape_fn((BATCH, 3, h, w), |_| (next() % 2001) as f32 / 1000.0 - 1.0);
    // Captions of 20..40 tokens (the synthetic benchmark's are about 30), zero padded.
    let mut ids = Array2::<i64>::zeros((BATCH, ctx));
    let mut eot = Vec::new();
    for r in 0..BATCH {
        let len = 20 + (next() % 21) as usize;
        ids[[r, 0]] = 49406;
        for c in 1..len - 1 {
            ids[[r, c]] = 256 + (next() % 40000) as i64;
        }
        ids[[r, len - 1]] = 49407;
        eot.push(len as i64 - 1);
    }
    Batch {
        epoch: 0,
        index: 0,
        images,
        input_ids: ids,
        eot_index: eot,
        pids: (0..BATCH as i64).map(|i| i / 2).collect(),
        samples: (0..BATCH).collect(),
        pruned: vec![false; BATCH],
    }
}

fn step(c: &mut Criterion) {
    tch::manual_seed(0);
    let cfg = ModelConfig::tiny();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Sen::new(&vs.root(), &cfg, Some(CLASSES), true);
    let mut opt = Adam::new(&vs, &Recipe::tiny_scratch());
    let b = batch(&cfg);
    let full = LossWeights::default();
    let mut g = c.benchmark_group(format!("train-step-tiny-b{BATCH}"));
    g.sample_size(20);
    g.bench_function("full-step", |bch| {
        bch.iter(|| {
            opt.zero_grad();
            let (loss, _) = batch_losses(&model, &b, &full, Device::Cpu).unwrap();
            loss.backward();
            opt.step(1.0);
        })
    });
    // --amp on a CPU: linear layers and projections in bf16.
    g.bench_function("full-step-bf16-products", |bch| {
        bch.iter(|| {
            opt.zero_grad();
            let (loss, _) = with_bf16_products(true, || {
                batch_losses(&model, &b, &full, Device::Cpu).unwrap()
            });
            loss.backward();
            opt.step(1.0);
        })
    });
    g.bench_function("forward-backward", |bch| {
        bch.iter(|| {
            opt.zero_grad();
            let (loss, _) = batch_losses(&model, &b, &full, Device::Cpu).unwrap();
            loss.backward();
        })
    });
    g.bench_function("adam-update", |bch| bch.iter(|| opt.step(1.0)));
    let no_tir = LossWeights { tir: 0.0, ..full };
    g.bench_function("forward-backward-without-tir", |bch| {
        bch.iter(|| {
            opt.zero_grad();
            let (loss, _) = batch_losses(&model, &b, &no_tir, Device::Cpu).unwrap();
            loss.backward();
        })
    });
    let images = Tensor::from_slice(b.images.as_slice().unwrap()).view([
        BATCH as i64,
        3,
        cfg.vision.image_height as i64,
        cfg.vision.image_width as i64,
    ]);
    let ids = Tensor::from_slice(b.input_ids.as_slice().unwrap())
        .view([BATCH as i64, cfg.text.context_length as i64]);
    let eot = Tensor::from_slice(&b.eot_index);
    g.bench_function("image-encoder-forward-backward", |bch| {
        bch.iter(|| {
            opt.zero_grad();
            model
                .visual
                .forward(&images)
                .select(1, 0)
                .sum(Kind::Float)
                .backward();
        })
    });
    g.bench_function("text-encoder-forward-backward", |bch| {
        bch.iter(|| {
            opt.zero_grad();
            pool_eot(&model.text.forward(&ids), &eot)
                .sum(Kind::Float)
                .backward();
        })
    });
    g.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
