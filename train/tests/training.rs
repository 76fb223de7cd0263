//! Short training runs on a small synthetic benchmark: the model overfits a tiny
//! training set, and stopping + resuming gives exactly the losses of a straight run.

mod common;

use sen_core::data::{Dataset, Split};
use sen_core::synth::{SynthConfig, generate};
use sen_core::{ClipTokenizer, PreprocessSpec, Preprocessor};
use sen_train::optim::Recipe;
use sen_train::trainer::{self, LossWeights, Outcome, TrainOptions};
use std::path::Path;
use tch::Device;

fn options(data: &Path, epochs: usize) -> TrainOptions {
    TrainOptions {
        data: data.to_path_buf(),
        format: None,
        model: common::micro(),
        init: None,
        recipe: Recipe {
            epochs,
            warmup_epochs: 1,
            lr: 1e-3,
            bias_lr: 1e-3,
            ..Recipe::tiny_scratch()
        },
        identities_per_batch: 4,
        samples_per_identity: 2,
        similar_ids: 1,
        seed: 7,
        losses: LossWeights::default(),
        prune_prob: 0.2,
        augment: true,
        eval_every: 0,
        log_every: 1,
        workers: 2,
        cache_images: true,
        amp: false,
    }
}

fn losses(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("step").is_some())
        .map(|v| serde_json::json!([v["step"], v["loss"]]))
        .collect()
}

/// libtorch's random generator is process-global and the test harness runs tests on
/// parallel threads: runs that must be reproducible take this lock.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn data() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    generate(
        d.path(),
        &SynthConfig {
            ids: 13,
            images_per_id: 2,
            seed: 11,
        },
    )
    .unwrap();
    d
}

#[test]
fn overfits_a_small_training_set() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = data();
    let run = tempfile::tempdir().unwrap();
    let mut opts = options(d.path(), 40);
    opts.augment = false;
    opts.prune_prob = 0.0;
    opts.losses = LossWeights {
        tir: 1.0,
        ..LossWeights::default()
    };
    let (outcome, progress) =
        trainer::train(&opts, run.path(), false, Device::Cpu, None, None, false).unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert!(progress.finished);
    let l = losses(run.path());
    let first = l[0][1]["total"].as_f64().unwrap();
    let last = l.last().unwrap()[1]["total"].as_f64().unwrap();
    assert!(last < first * 0.5, "loss {first} -> {last}");
    // Retrieval on the training split itself is near perfect.
    let (_vs, model) = trainer::load_for_eval(&run.path().join("last"), Device::Cpu).unwrap();
    let set = Dataset::load(d.path(), None)
        .unwrap()
        .eval_set(Split::Train)
        .unwrap();
    let pre = Preprocessor::new(PreprocessSpec::for_model(&model.cfg)).unwrap();
    let tok =
        ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path().unwrap(), 77).unwrap();
    let m = trainer::evaluate(&model, &set, &pre, &tok, Device::Cpu, 16).unwrap();
    println!("overfit: loss {first:.3} -> {last:.3}; train-split {m}");
    assert!(m.r1 >= 80.0, "train R@1 {}", m.r1);
    // best/ follows last/ when there is a val split only if evaluated; eval_every 0 -> final eval.
    assert!(run.path().join("best/model.safetensors").is_file());
}

#[test]
fn resume_continues_exactly() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = data();
    // Straight: 3 epochs.
    let a = tempfile::tempdir().unwrap();
    let opts = options(d.path(), 3);
    trainer::train(&opts, a.path(), false, Device::Cpu, None, None, false).unwrap();
    // Interrupted: stop after the first step (time limit 0), then resume twice
    // (first for one epoch, then to the end).
    let b = tempfile::tempdir().unwrap();
    let (o, p) =
        trainer::train(&opts, b.path(), false, Device::Cpu, Some(0.0), None, false).unwrap();
    assert_eq!(o, Outcome::TimeLimit);
    assert_eq!((p.epoch, p.batch, p.global_step), (0, 1, 1));
    for f in [
        "model.safetensors",
        "config.json",
        "train.json",
        "metrics.json",
        "optimizer.safetensors",
    ] {
        assert!(b.path().join("last").join(f).is_file(), "{f}");
    }
    let resumed_opts = trainer::read_options(b.path()).unwrap();
    let (o, p) = trainer::train(
        &resumed_opts,
        b.path(),
        true,
        Device::Cpu,
        None,
        Some(1),
        false,
    )
    .unwrap();
    assert_eq!((o, p.epoch, p.batch), (Outcome::Finished, 1, 0));
    trainer::train(
        &resumed_opts,
        b.path(),
        true,
        Device::Cpu,
        None,
        None,
        false,
    )
    .unwrap();
    let (la, lb) = (losses(a.path()), losses(b.path()));
    assert_eq!(la.len(), lb.len());
    assert_eq!(
        la, lb,
        "same seed, same losses, whether or not the run was resumed"
    );
    let wa = std::fs::read(a.path().join("last/model.safetensors")).unwrap();
    let wb = std::fs::read(b.path().join("last/model.safetensors")).unwrap();
    assert!(wa == wb, "identical final weights");
}

/// `--amp` on a CPU (bf16 weight products): the same seed gives the same losses, and
/// they differ from fp32's (the products really ran in bf16) by bf16-sized amounts.
#[test]
fn cpu_bf16_products_train_deterministically() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = data();
    let mut opts = options(d.path(), 1);
    let fp32 = tempfile::tempdir().unwrap();
    trainer::train(&opts, fp32.path(), false, Device::Cpu, None, None, false).unwrap();
    opts.amp = true;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for run in [&a, &b] {
        trainer::train(&opts, run.path(), false, Device::Cpu, None, None, false).unwrap();
    }
    let (la, lb, lf) = (losses(a.path()), losses(b.path()), losses(fp32.path()));
    assert_eq!(la, lb);
    let total = |l: &[serde_json::Value], i: usize| l[i][1]["total"].as_f64().unwrap();
    let (h, f) = (total(&la, 0), total(&lf, 0));
    assert!(h.is_finite() && h != f, "step 0: bf16 {h}, fp32 {f}");
    assert!((h - f).abs() / f.abs() < 0.02, "step 0: bf16 {h}, fp32 {f}");
    assert!(
        trainer::read_options(a.path()).unwrap().amp,
        "--amp is saved for resume"
    );
}
