//! Short training runs on a small synthetic benchmark: the model overfits a tiny
//! training set, and stopping + resuming gives exactly the losses of a straight run.

mod common;

use sen_core::data::{Dataset, Split};
use sen_core::synth::{SynthConfig, generate};
use sen_core::{ClipTokenizer, PreprocessSpec, Preprocessor};
use sen_train::optim::Recipe;
use sen_train::trainer::{self, Limits, LossWeights, Outcome, SamplerKind, TrainOptions};
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
        sampler: SamplerKind::Identity,
        seed: 7,
        losses: LossWeights::default(),
        prune_prob: 0.2,
        augment: true,
        eval_every: 0,
        log_every: 1,
        workers: 2,
        cache_images: true,
        amp: false,
        settings: Default::default(),
        plan: None,
        resize: "bicubic".into(),
    }
}

/// No time limit.
fn unlimited() -> Limits {
    Limits::default()
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
        trainer::train(&opts, run.path(), false, Device::Cpu, &unlimited(), false).unwrap();
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
    trainer::train(&opts, a.path(), false, Device::Cpu, &unlimited(), false).unwrap();
    // Interrupted: stop after the first step (time limit 0), then resume twice
    // (first for one epoch, then to the end).
    let b = tempfile::tempdir().unwrap();
    let stop_at_once = Limits {
        max_minutes: Some(0.0),
        ..unlimited()
    };
    let (o, p) = trainer::train(&opts, b.path(), false, Device::Cpu, &stop_at_once, false).unwrap();
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
    let one_epoch = Limits {
        max_epochs: Some(1),
        ..unlimited()
    };
    let (o, p) = trainer::train(
        &resumed_opts,
        b.path(),
        true,
        Device::Cpu,
        &one_epoch,
        false,
    )
    .unwrap();
    assert_eq!((o, p.epoch, p.batch), (Outcome::Finished, 1, 0));
    trainer::train(
        &resumed_opts,
        b.path(),
        true,
        Device::Cpu,
        &unlimited(),
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
    trainer::train(&opts, fp32.path(), false, Device::Cpu, &unlimited(), false).unwrap();
    opts.amp = true;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for run in [&a, &b] {
        trainer::train(&opts, run.path(), false, Device::Cpu, &unlimited(), false).unwrap();
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

/// A time budget fits the schedule: the run plans fewer epochs than its cap from its
/// first steps, records the plan, and finishes that schedule inside the budget instead
/// of being cut off.
#[test]
fn a_time_budget_fits_the_schedule() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = data();
    let run = tempfile::tempdir().unwrap();
    let mut opts = options(d.path(), 1000);
    opts.recipe.warmup_epochs = 50;
    opts.eval_every = 5;
    let budget = Limits {
        max_minutes: Some(20.0 / 60.0),
        fit_schedule: true,
        ..unlimited()
    };
    let t = std::time::Instant::now();
    let (o, p) = trainer::train(&opts, run.path(), false, Device::Cpu, &budget, false).unwrap();
    let took = t.elapsed().as_secs_f64();
    let saved = trainer::read_options(run.path()).unwrap();
    let plan = saved.plan.expect("the plan is recorded in train.json");
    println!("{plan:?}; took {took:.1} s");
    assert_eq!(
        o,
        Outcome::Finished,
        "the fitted schedule finishes: {plan:?}"
    );
    assert!(p.finished && p.epoch == plan.epochs);
    assert!(plan.epochs < 1000 && plan.epochs >= 2, "{plan:?}");
    assert_eq!(saved.recipe.epochs, plan.epochs);
    // Warm-up scaled with the epochs (50 of 1000 -> 5%).
    let want = ((50.0 * plan.epochs as f64 / 1000.0).round() as usize).clamp(1, plan.epochs - 1);
    assert_eq!(plan.warmup_epochs, want);
    assert!(took < 20.0, "{took:.1} s");
    assert_eq!(saved.settings["epochs"].source, trainer::Source::Plan);
}

/// `--resume` reuses the recorded plan (never re-measures), so a resumed run equals a
/// straight run of the planned schedule.
#[test]
fn resume_keeps_the_recorded_plan() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = data();
    let opts = options(d.path(), 5);
    let b = tempfile::tempdir().unwrap();
    // Two epochs of a budgeted run: with these short epochs the plan is made at the
    // end of the second, and saved.
    let first = Limits {
        max_minutes: Some(10.0),
        max_epochs: Some(2),
        fit_schedule: true,
    };
    trainer::train(&opts, b.path(), false, Device::Cpu, &first, false).unwrap();
    // Pretend the measurement had allowed only 3 epochs: a resume must follow the
    // recorded plan, not measure again.
    let train_json = b.path().join("last/train.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&train_json).unwrap()).unwrap();
    assert!(j["options"]["plan"].is_object(), "plan recorded");
    assert_eq!(
        j["options"]["plan"]["epochs"], 5,
        "10 minutes fit all 5 epochs"
    );
    j["options"]["plan"]["epochs"] = 3.into();
    j["options"]["recipe"]["epochs"] = 3.into();
    std::fs::write(&train_json, j.to_string()).unwrap();
    let resumed = trainer::read_options(b.path()).unwrap();
    let again = Limits {
        max_minutes: Some(10.0),
        ..first
    };
    let again = Limits {
        max_epochs: None,
        ..again
    };
    let (o, p) = trainer::train(&resumed, b.path(), true, Device::Cpu, &again, false).unwrap();
    assert_eq!((o, p.epoch), (Outcome::Finished, 3));
    assert_eq!(
        trainer::read_options(b.path())
            .unwrap()
            .plan
            .unwrap()
            .epochs,
        3
    );
    // A straight run of 3 epochs with the same warm-up gives the same weights.
    let a = tempfile::tempdir().unwrap();
    let mut straight = opts.clone();
    straight.recipe.epochs = 3;
    straight.recipe.warmup_epochs = resumed.recipe.warmup_epochs;
    trainer::train(&straight, a.path(), false, Device::Cpu, &unlimited(), false).unwrap();
    let (la, lb) = (losses(a.path()), losses(b.path()));
    assert_eq!(
        la, lb,
        "resumed with the plan = straight run of the planned schedule"
    );
    let wa = std::fs::read(a.path().join("last/model.safetensors")).unwrap();
    let wb = std::fs::read(b.path().join("last/model.safetensors")).unwrap();
    assert!(wa == wb, "identical final weights");
}

/// `--init` from a checkpoint trained on another dataset: its ID head has that
/// dataset's classes, so it starts from its initialisation while the encoders are
/// taken (before, the shape mismatch refused the run). A head that fits is taken.
/// Also runs the idrannum sampler end to end.
#[test]
fn init_from_a_checkpoint_with_another_id_head_trains() {
    let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let small = data(); // 13 identities: 10 train
    let big = tempfile::tempdir().unwrap();
    generate(
        big.path(),
        &SynthConfig {
            ids: 20,
            images_per_id: 2,
            seed: 12,
        },
    )
    .unwrap();
    let first = tempfile::tempdir().unwrap();
    let mut opts = options(small.path(), 1);
    opts.sampler = SamplerKind::Idrannum;
    trainer::train(&opts, first.path(), false, Device::Cpu, &unlimited(), false).unwrap();
    let init = first.path().join("last");
    let read = |dir: &Path| {
        let t = tch::Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
        t.into_iter()
            .collect::<std::collections::BTreeMap<String, tch::Tensor>>()
    };
    let src = read(&init);
    assert_eq!(src["id_head.weight"].size()[0], 10);

    let second = tempfile::tempdir().unwrap();
    let mut opts = options(big.path(), 1);
    opts.init = Some(init.clone());
    opts.recipe.lr = 0.0; // no update: the saved weights are the starting ones
    opts.recipe.bias_lr = 0.0;
    trainer::train(
        &opts,
        second.path(),
        false,
        Device::Cpu,
        &unlimited(),
        false,
    )
    .expect("an ID head of another size starts fresh instead of refusing");
    let got = read(&second.path().join("last"));
    assert_ne!(got["id_head.weight"].size(), src["id_head.weight"].size());
    for name in ["visual.proj", "text_projection", "tir.head.weight"] {
        assert!(got[name].equal(&src[name]), "{name} is taken from --init");
    }
}
