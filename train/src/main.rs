//! `sen-train`: train, import and evaluate SEN checkpoints.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_core::{ClipTokenizer, ModelConfig, PreprocessSpec, Preprocessor};
use sen_train::optim::Recipe;
use sen_train::trainer::{self, LossWeights, Outcome, SamplerKind, TrainOptions};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "sen-train",
    version,
    about = "Train SEN (CLIP ViT-B/16 + TIR) with libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the libtorch build and the devices it can use here.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Import OpenAI CLIP weights (ViT-B-16.pt TorchScript archive, or safetensors with
    /// OpenAI key names) into a checkpoint directory.
    ImportClip {
        /// The weights file.
        #[arg(long)]
        weights: PathBuf,
        /// Model preset whose sizes the file must match (the position grid is resized to it).
        #[arg(long, default_value = "vit-b16", value_parser = ["vit-b16", "tiny"])]
        preset: String,
        /// Output checkpoint directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a checkpoint trained with the SEN or IRRA authors' PyTorch code (their
    /// `best.pth`: a zip-format torch.save with the state dict under `model`; or
    /// safetensors with the same names) into a checkpoint directory that records their
    /// bilinear preprocessing. What sen has no place for is listed in the directory's
    /// import_report.json.
    Import {
        /// Whose code wrote the file.
        #[arg(long, value_parser = ["sen", "irra"])]
        from: String,
        /// The checkpoint file (e.g. best.pth).
        #[arg(value_name = "CKPT")]
        ckpt: PathBuf,
        /// Model preset whose sizes the file must match.
        #[arg(long, default_value = "vit-b16", value_parser = ["vit-b16", "tiny"])]
        preset: String,
        /// Model sizes from this ModelConfig JSON instead of a preset.
        #[arg(long, value_name = "FILE", conflicts_with = "preset")]
        model_config: Option<PathBuf>,
        /// Output checkpoint directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train a run into OUT (OUT/last, OUT/best, OUT/log.jsonl).
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint (or a run's best/) on a dataset split (SPEC §7 metrics).
    Eval {
        /// Checkpoint directory or run directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset root.
        #[arg(long = "dataset", alias = "data", value_name = "ROOT")]
        data: PathBuf,
        /// cuhk-pedes, icfg-pedes or rstpreid (detected if omitted).
        #[arg(long)]
        format: Option<DatasetFormat>,
        #[arg(long, default_value = "test")]
        split: Split,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print {"r1", "r5", "r10", "map", "minp"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Latency percentiles and throughput of the two encoders in libtorch eager mode
    /// (the PyTorch baseline `sen bench` is compared with), no_grad, fp32.
    Bench {
        /// A checkpoint or run directory; without it, random weights of --preset
        /// (speed does not depend on the weights).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long, default_value = "tiny", value_parser = ["tiny", "vit-b16"])]
        preset: String,
        /// Batch sizes, comma-separated.
        #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
        batch: Vec<usize>,
        /// Seconds of measurement per encoder and batch.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// cpu, cuda or cuda:N (outputs are copied to the host inside the timed call,
        /// as ONNX Runtime does).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Weights and inputs in float16 (PyTorch's `model.half()`; the eager baseline
        /// for fp16 bundles on a GPU).
        #[arg(long)]
        half: bool,
        /// Print JSON (p50_ms, p90_ms, p99_ms, images_per_s / texts_per_s per entry).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Dataset root (annotation file + imgs/). Not needed with --resume.
    #[arg(
        long = "dataset",
        alias = "data",
        value_name = "ROOT",
        required_unless_present = "resume"
    )]
    data: Option<PathBuf>,
    /// cuhk-pedes, icfg-pedes or rstpreid (detected if omitted).
    #[arg(long)]
    format: Option<DatasetFormat>,
    /// Model preset.
    #[arg(long, default_value = "tiny", value_parser = ["vit-b16", "tiny"])]
    preset: String,
    /// Model sizes from this ModelConfig JSON (SPEC §10, as in a checkpoint's
    /// config.json) instead of a preset, for architecture experiments.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    model_config: Option<PathBuf>,
    /// Start the encoders from this checkpoint (e.g. from import-clip); TIR and ID
    /// heads start from their initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Run directory.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory with its saved options, weights and optimiser state.
    #[arg(long, conflicts_with_all = ["data", "out", "init"])]
    resume: Option<PathBuf>,
    /// The resize filter of the model's preprocessing (SPEC §3). Default: what the
    /// --init checkpoint records, else the recipe's (reference: bilinear, as SEN's
    /// code; tiny-scratch: bicubic).
    #[arg(long, value_parser = ["bilinear", "bicubic"])]
    resize: Option<String>,
    /// reference (SPEC §5, fine-tuning CLIP) or tiny-scratch (random init). Default:
    /// reference with --init, tiny-scratch without.
    #[arg(long)]
    recipe: Option<String>,
    /// Planned epochs (the schedule is laid out over them); default: the recipe's
    /// (tiny-scratch 36, reference 60). With --max-minutes, the most epochs the budget
    /// fits, at most this many.
    #[arg(long)]
    epochs: Option<usize>,
    /// Base learning rate override (the bias rate keeps its ratio to it unless --bias-lr).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate of every bias (no weight decay on biases).
    #[arg(long)]
    bias_lr: Option<f64>,
    /// Rate multiplier for the TIR cross-attention and the ID classifier (SPEC §5: 5).
    #[arg(long)]
    head_lr_mult: Option<f64>,
    /// L2 weight decay (added to the gradient).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Adam epsilon.
    #[arg(long)]
    eps: Option<f64>,
    /// Adam beta1.
    #[arg(long)]
    beta1: Option<f64>,
    /// Adam beta2.
    #[arg(long)]
    beta2: Option<f64>,
    /// Linear warm-up epochs (from --warmup-factor x the rate), then cosine to 0.
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Starting fraction of the rate during warm-up.
    #[arg(long)]
    warmup_factor: Option<f64>,
    /// Batch size: identities per batch x --batch-k samples each. Default: the
    /// recipe's (tiny-scratch 32, reference 128 as SPEC §5).
    #[arg(long)]
    batch: Option<usize>,
    /// Images per identity (K). Default: the recipe's (2).
    #[arg(long)]
    batch_k: Option<usize>,
    /// Build each batch from groups of G identities whose training captions are alike
    /// (TF-IDF nearest neighbours), so in-batch negatives are hard; 1: IRRA's random
    /// identities.
    #[arg(long, value_name = "G")]
    similar_ids: Option<usize>,
    /// Batch sampler: identity (IRRA: P identities x K samples) or idrannum (SEN: each
    /// identity's K drawn from 1..=K per epoch, batches cut from the shuffled result).
    /// Default: the recipe's (reference idrannum, as SEN's code; tiny-scratch identity).
    #[arg(long, value_name = "KIND")]
    sampler: Option<String>,
    /// Seed of the data order, augmentation and initialisation [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Loss weights (0 switches a term off, for ablations) [defaults: SPEC §4's 1, 1, 10, 10].
    #[arg(long)]
    w_sdm: Option<f64>,
    #[arg(long)]
    w_id: Option<f64>,
    #[arg(long)]
    w_triplet: Option<f64>,
    #[arg(long)]
    w_tir: Option<f64>,
    /// Probability of pruning a caption (0 switches pruning augmentation off) [default: 0.2].
    #[arg(long)]
    prune_prob: Option<f64>,
    /// Switch image augmentation off.
    #[arg(long)]
    no_augment: bool,
    /// Evaluate on the val split every N epochs (and after the last). Default: the
    /// recipe's (tiny-scratch 5, reference 1).
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Data worker threads [default: 2].
    #[arg(long)]
    workers: Option<usize>,
    /// Keep the decoded, resized training images in memory. Default: on when they take
    /// at most a quarter of the memory available now (logged either way).
    #[arg(long, conflicts_with = "no_cache_images")]
    cache_images: bool,
    /// Decode training images every epoch even when they would fit in memory.
    #[arg(long)]
    no_cache_images: bool,
    /// Stop after this many minutes, resumably. A fresh run times its first steps and
    /// fits epochs, warm-up and cosine into the budget (recorded in train.json;
    /// --resume keeps that plan), unless --fixed-schedule.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// With --max-minutes: keep the planned epochs and stop at the limit mid-schedule
    /// instead of fitting the schedule to the budget.
    #[arg(long, requires = "max_minutes")]
    fixed_schedule: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Mixed precision. CUDA: fp16 autocast with dynamic loss scaling (off unless
    /// given). CPU: every linear layer and projection in bf16 (fp32 accumulation, fp32
    /// master weights); on by default where the CPU multiplies bf16 natively
    /// (AVX512-BF16 or AMX), off elsewhere.
    #[arg(long, conflicts_with = "no_amp")]
    amp: bool,
    /// Keep every product in fp32 even where the CPU multiplies bf16 natively.
    #[arg(long)]
    no_amp: bool,
}

fn main() {
    // Before any libtorch call, so its worker threads inherit it.
    sen_train::flush_denormals();
    tracing_subscriber_init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn tracing_subscriber_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { json } => {
            let info = sen_train::torch_info()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("libtorch {}", info.libtorch);
                println!("threads  {}", info.threads);
                println!(
                    "cuda     {}",
                    if info.cuda_available {
                        format!(
                            "{} device(s), cuDNN {}",
                            info.cuda_devices, info.cudnn_available
                        )
                    } else {
                        "not available (CPU only; build with --features cuda on a GPU machine)"
                            .into()
                    }
                );
            }
        }
        Command::ImportClip {
            weights,
            preset,
            out,
        } => {
            let cfg = ModelConfig::preset(&preset)?;
            sen_train::import::import_clip(&weights, &cfg, &out)?;
            println!(
                "imported {} as {preset} into {}",
                weights.display(),
                out.display()
            );
        }
        Command::Import {
            from,
            ckpt,
            preset,
            model_config,
            out,
        } => {
            let cfg = match &model_config {
                Some(f) => ModelConfig::from_json_file(f)?,
                None => ModelConfig::preset(&preset)?,
            };
            let from = sen_train::import::Authors::parse(&from)?;
            let r = sen_train::import::import_authors(from, &ckpt, &cfg, &out)?;
            println!(
                "imported {} ({} code, {} format, state dict {}) into {}: {} tensors imported, \
                 {} left out, preprocessing {} {}x{}; see {}",
                ckpt.display(),
                r.from,
                r.format,
                if r.state_dict.is_empty() {
                    "at the top level"
                } else {
                    &r.state_dict
                },
                out.display(),
                r.imported.len(),
                r.dropped.len(),
                r.preprocess.resize,
                r.preprocess.height,
                r.preprocess.width,
                out.join(sen_train::import::IMPORT_REPORT_FILE).display()
            );
        }
        Command::Train(a) => {
            let device = sen_train::parse_device(&a.device)?;
            trainer::install_ctrlc();
            let (opts, out, resume) = match &a.resume {
                Some(dir) => {
                    refuse_changes_on_resume(&a)?;
                    (trainer::read_options(dir)?, dir.clone(), true)
                }
                None => (resolve_options(&a, device)?, a.out.clone().unwrap(), false),
            };
            trainer::log_settings(&opts.settings);
            let limits = trainer::Limits {
                max_minutes: a.max_minutes,
                max_epochs: None,
                fit_schedule: !a.fixed_schedule,
            };
            let (outcome, p) = trainer::train(&opts, &out, resume, device, &limits, true)?;
            match outcome {
                Outcome::Finished => println!(
                    "finished {} epochs; best val R@1 {} (epoch {}) in {}/best",
                    p.epoch,
                    p.best_r1.map_or("-".into(), |r| format!("{r:.2}")),
                    p.best_epoch.map_or("-".into(), |e| e.to_string()),
                    out.display()
                ),
                Outcome::Interrupted | Outcome::TimeLimit => println!(
                    "stopped at epoch {} batch {} ({}); continue with: sen-train train --resume {}",
                    p.epoch,
                    p.batch,
                    if outcome == Outcome::Interrupted {
                        "Ctrl-C"
                    } else {
                        "--max-minutes"
                    },
                    out.display()
                ),
            }
        }
        Command::Eval {
            checkpoint,
            data,
            format,
            split,
            device,
            json,
        } => {
            let device = sen_train::parse_device(&device)?;
            let (_vs, model) = trainer::load_for_eval(&checkpoint, device)?;
            let set = Dataset::load(&data, format)?.eval_set(split)?;
            let dir = sen_train::checkpoint::resolve(&checkpoint)?;
            let pre = Preprocessor::new(PreprocessSpec::for_checkpoint(&dir, &model.cfg)?)?;
            let tok = ClipTokenizer::from_vocab_gz(
                &sen_core::deps::clip_vocab_path()?,
                model.cfg.text.context_length,
            )
            .context("loading the tokenizer")?;
            let m = trainer::evaluate(&model, &set, &pre, &tok, device, 64)?;
            if json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                println!(
                    "{} on {} {}: {m}",
                    checkpoint.display(),
                    data.display(),
                    split.name()
                );
            }
        }
        Command::Bench {
            checkpoint,
            preset,
            batch,
            seconds,
            device,
            half,
            json,
        } => bench(checkpoint, &preset, &batch, seconds, &device, half, json)?,
    }
    Ok(())
}

/// Training flags given with `--resume` would be silently ignored (a resumed run keeps
/// its recorded settings): refuse them by name.
fn refuse_changes_on_resume(a: &TrainArgs) -> Result<()> {
    let given: Vec<&str> = [
        ("--epochs", a.epochs.is_some()),
        ("--lr", a.lr.is_some()),
        ("--bias-lr", a.bias_lr.is_some()),
        ("--head-lr-mult", a.head_lr_mult.is_some()),
        ("--weight-decay", a.weight_decay.is_some()),
        ("--eps", a.eps.is_some()),
        ("--beta1", a.beta1.is_some()),
        ("--beta2", a.beta2.is_some()),
        ("--warmup-epochs", a.warmup_epochs.is_some()),
        ("--warmup-factor", a.warmup_factor.is_some()),
        ("--batch", a.batch.is_some()),
        ("--batch-k", a.batch_k.is_some()),
        ("--similar-ids", a.similar_ids.is_some()),
        ("--seed", a.seed.is_some()),
        ("--w-sdm", a.w_sdm.is_some()),
        ("--w-id", a.w_id.is_some()),
        ("--w-triplet", a.w_triplet.is_some()),
        ("--w-tir", a.w_tir.is_some()),
        ("--prune-prob", a.prune_prob.is_some()),
        ("--no-augment", a.no_augment),
        ("--eval-every", a.eval_every.is_some()),
        ("--workers", a.workers.is_some()),
        ("--cache-images", a.cache_images),
        ("--no-cache-images", a.no_cache_images),
        ("--amp", a.amp),
        ("--no-amp", a.no_amp),
        ("--recipe", a.recipe.is_some()),
        ("--resize", a.resize.is_some()),
        ("--model-config", a.model_config.is_some()),
        ("--format", a.format.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, on)| on.then_some(f))
    .collect();
    anyhow::ensure!(
        given.is_empty(),
        "--resume continues a run with the settings recorded in its train.json; {} cannot \
         change them (start a new run with --out to train with other settings)",
        given.join(", ")
    );
    Ok(())
}

/// Bytes of memory available now (`MemAvailable` in /proc/meminfo), if readable.
fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Share of available memory the image cache may take when it turns on by itself.
const CACHE_MEMORY_SHARE: f64 = 0.25;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The options of a new run: every knob from its flag, else the recipe, else the
/// machine or sen-train's default, each recorded with its source.
fn resolve_options(a: &TrainArgs, device: tch::Device) -> Result<TrainOptions> {
    use std::collections::BTreeMap;
    use trainer::{Setting, Source};
    let mut settings: BTreeMap<String, Setting> = BTreeMap::new();
    let model = match &a.model_config {
        Some(f) => ModelConfig::from_json_file(f)?,
        None => ModelConfig::preset(&a.preset)?,
    };
    let recipe_name = a.recipe.as_deref().unwrap_or(if a.init.is_some() {
        "reference"
    } else {
        "tiny-scratch"
    });
    let mut recipe = Recipe::named(recipe_name)?;
    settings.insert(
        "recipe".into(),
        match &a.recipe {
            Some(_) => Setting::new(recipe_name, Source::Flag),
            None => Setting::new(recipe_name, Source::Default).because(if a.init.is_some() {
                "--init: fine-tuning"
            } else {
                "no --init: random weights"
            }),
        },
    );
    // A recipe knob: the flag if given (validated), else the recipe's value.
    fn knob<T: serde::Serialize + Copy>(
        settings: &mut BTreeMap<String, Setting>,
        name: &str,
        flag: Option<T>,
        slot: &mut T,
    ) {
        let source = match flag {
            Some(v) => {
                *slot = v;
                Source::Flag
            }
            None => Source::Recipe,
        };
        settings.insert(name.into(), Setting::new(*slot, source));
    }
    let positive = |flag: &str, v: Option<f64>| -> Result<Option<f64>> {
        if let Some(v) = v {
            anyhow::ensure!(
                v.is_finite() && v > 0.0,
                "{flag} {v}: must be a positive number"
            );
        }
        Ok(v)
    };
    let fraction = |flag: &str, v: Option<f64>| -> Result<Option<f64>> {
        if let Some(v) = v {
            anyhow::ensure!((0.0..1.0).contains(&v), "{flag} {v}: must be in [0, 1)");
        }
        Ok(v)
    };
    knob(&mut settings, "epochs", a.epochs, &mut recipe.epochs);
    knob(
        &mut settings,
        "warmup_epochs",
        a.warmup_epochs,
        &mut recipe.warmup_epochs,
    );
    anyhow::ensure!(
        recipe.epochs > recipe.warmup_epochs,
        "--epochs {} must exceed the {} warm-up epochs (--warmup-epochs)",
        recipe.epochs,
        recipe.warmup_epochs
    );
    if let Some(lr) = positive("--lr", a.lr)? {
        // The bias rate keeps its ratio to the base rate unless given itself.
        recipe.bias_lr *= lr / recipe.lr;
    }
    knob(&mut settings, "lr", a.lr, &mut recipe.lr);
    let bias_source = if a.lr.is_some() && a.bias_lr.is_none() {
        Some(Setting::new(recipe.bias_lr, Source::Flag).because("scaled with --lr"))
    } else {
        None
    };
    knob(
        &mut settings,
        "bias_lr",
        positive("--bias-lr", a.bias_lr)?,
        &mut recipe.bias_lr,
    );
    if let Some(s) = bias_source {
        settings.insert("bias_lr".into(), s);
    }
    knob(
        &mut settings,
        "head_lr_mult",
        positive("--head-lr-mult", a.head_lr_mult)?,
        &mut recipe.head_lr_mult,
    );
    if let Some(v) = a.weight_decay {
        anyhow::ensure!(
            v.is_finite() && v >= 0.0,
            "--weight-decay {v}: must be >= 0"
        );
    }
    knob(
        &mut settings,
        "weight_decay",
        a.weight_decay,
        &mut recipe.weight_decay,
    );
    knob(
        &mut settings,
        "eps",
        positive("--eps", a.eps)?,
        &mut recipe.eps,
    );
    knob(
        &mut settings,
        "beta1",
        fraction("--beta1", a.beta1)?,
        &mut recipe.beta1,
    );
    knob(
        &mut settings,
        "beta2",
        fraction("--beta2", a.beta2)?,
        &mut recipe.beta2,
    );
    if let Some(v) = a.warmup_factor {
        anyhow::ensure!(
            v > 0.0 && v <= 1.0,
            "--warmup-factor {v}: must be in (0, 1]"
        );
    }
    knob(
        &mut settings,
        "warmup_factor",
        a.warmup_factor,
        &mut recipe.warmup_factor,
    );
    knob(&mut settings, "batch", a.batch, &mut recipe.batch);
    knob(&mut settings, "batch_k", a.batch_k, &mut recipe.batch_k);
    knob(
        &mut settings,
        "eval_every",
        a.eval_every,
        &mut recipe.eval_every,
    );
    let (batch, batch_k) = (recipe.batch, recipe.batch_k);
    anyhow::ensure!(
        batch_k > 0 && batch % batch_k == 0 && batch >= 2 * batch_k,
        "--batch {batch} must be a multiple of --batch-k {batch_k} with at least two identities"
    );
    // sen-train's own defaults (not recipe knobs).
    fn plain<T: serde::Serialize + Copy>(
        settings: &mut BTreeMap<String, Setting>,
        name: &str,
        flag: Option<T>,
        default: T,
    ) -> T {
        let (v, source) = flag.map_or((default, Source::Default), |v| (v, Source::Flag));
        settings.insert(name.into(), Setting::new(v, source));
        v
    }
    let similar_ids = plain(&mut settings, "similar_ids", a.similar_ids, 1);
    anyhow::ensure!(
        similar_ids >= 1 && similar_ids <= batch / batch_k,
        "--similar-ids {similar_ids}: must be between 1 and the {} identities per batch",
        batch / batch_k
    );
    let sampler = match &a.sampler {
        Some(name) => {
            let kind = SamplerKind::parse(name)?;
            settings.insert("sampler".into(), Setting::new(kind.name(), Source::Flag));
            kind
        }
        None if recipe_name == "reference" => {
            settings.insert(
                "sampler".into(),
                Setting::new("idrannum", Source::Recipe)
                    .because("SEN's code trains with --sampler idrannum (its default)"),
            );
            SamplerKind::Idrannum
        }
        None => {
            settings.insert(
                "sampler".into(),
                Setting::new("identity", Source::Recipe)
                    .because("the tiny preset's measured results used the identity sampler"),
            );
            SamplerKind::Identity
        }
    };
    anyhow::ensure!(
        similar_ids == 1 || sampler == SamplerKind::Identity,
        "--similar-ids {similar_ids} needs --sampler identity: idrannum cuts batches across \
         its rounds, which would split the groups of alike identities"
    );
    let seed = plain(&mut settings, "seed", a.seed, 42);
    let defaults = LossWeights::default();
    let losses = LossWeights {
        sdm: plain(&mut settings, "w_sdm", a.w_sdm, defaults.sdm),
        id: plain(&mut settings, "w_id", a.w_id, defaults.id),
        triplet: plain(&mut settings, "w_triplet", a.w_triplet, defaults.triplet),
        tir: plain(&mut settings, "w_tir", a.w_tir, defaults.tir),
    };
    let prune_prob = plain(&mut settings, "prune_prob", a.prune_prob, 0.2);
    anyhow::ensure!(
        (0.0..=1.0).contains(&prune_prob),
        "--prune-prob {prune_prob}: must be in [0, 1]"
    );
    let augment = plain(
        &mut settings,
        "augment",
        a.no_augment.then_some(false),
        true,
    );
    let workers = plain(&mut settings, "workers", a.workers, 2);
    anyhow::ensure!(workers >= 1, "--workers {workers}: must be at least 1");

    // Machine-dependent: caching by memory, bf16 products by CPU.
    let data = a
        .data
        .clone()
        .expect("clap requires --dataset without --resume");
    let train_set = Dataset::load(&data, a.format)?.train_set()?;
    let spec = PreprocessSpec::for_model(&model);
    let need = sen_core::data::pipeline::TrainPipeline::cache_bytes(&train_set, &spec);
    let cache = if a.cache_images || a.no_cache_images {
        Setting::new(a.cache_images, Source::Flag)
    } else {
        match available_memory() {
            Some(avail) => {
                let budget = (avail as f64 * CACHE_MEMORY_SHARE) as u64;
                let on = need <= budget;
                Setting::new(on, Source::Machine).because(format!(
                    "{} training images at {}x{} take {}; the budget is a quarter of the {} \
                     available, {}",
                    train_set.images.len(),
                    spec.width,
                    spec.height,
                    mib(need),
                    mib(avail),
                    mib(budget)
                ))
            }
            None => Setting::new(false, Source::Machine)
                .because("/proc/meminfo cannot be read, so free memory is unknown"),
        }
    };
    let cache_images = cache.value.as_bool().expect("bool");
    settings.insert("cache_images".into(), cache);
    let amp = if a.amp || a.no_amp {
        Setting::new(a.amp, Source::Flag)
    } else if device.is_cuda() {
        Setting::new(false, Source::Default).because("on CUDA, --amp turns fp16 autocast on")
    } else if trainer::cpu_has_native_bf16() {
        Setting::new(true, Source::Machine)
            .because("this CPU multiplies bf16 natively (AVX512-BF16 or AMX): bf16 products")
    } else {
        Setting::new(false, Source::Machine)
            .because("this CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated): fp32")
    };
    let recorded = match (&a.resize, &a.init) {
        (None, Some(init)) => recorded_preprocess(init, &model)?,
        _ => None,
    };
    let resize = match (&a.resize, recorded) {
        (Some(r), _) => Setting::new(r.as_str(), Source::Flag),
        (None, Some(spec)) => Setting::new(spec.resize.as_str(), Source::Default)
            .because("the --init checkpoint's train.json records it"),
        (None, _) if recipe_name == "reference" => Setting::new("bilinear", Source::Recipe)
            .because("SEN's and IRRA's code resize with torchvision's T.Resize on PIL images"),
        (None, _) => Setting::new("bicubic", Source::Recipe),
    };
    let resize_name = resize.value.as_str().expect("a string").to_string();
    settings.insert("resize".into(), resize);
    let amp_on = amp.value.as_bool().expect("bool");
    settings.insert("amp".into(), amp);
    Ok(TrainOptions {
        data,
        format: a.format.map(|f| f.name().to_string()),
        model,
        init: a.init.clone(),
        identities_per_batch: batch / batch_k,
        samples_per_identity: batch_k,
        eval_every: recipe.eval_every,
        recipe,
        similar_ids,
        sampler,
        seed,
        losses,
        prune_prob,
        augment,
        log_every: a.log_every,
        workers,
        cache_images,
        amp: amp_on,
        settings,
        plan: None,
        resize: resize_name,
    })
}

/// The preprocessing an --init checkpoint records (imports and training runs do).
fn recorded_preprocess(init: &Path, model: &ModelConfig) -> Result<Option<PreprocessSpec>> {
    let dir = sen_train::checkpoint::resolve(init)?;
    Ok(PreprocessSpec::recorded_in_checkpoint(&dir, model)?)
}

/// `sen-train bench`: the encoders in libtorch eager mode, timed like `sen bench`.
fn bench(
    checkpoint: Option<PathBuf>,
    preset: &str,
    batches: &[usize],
    seconds: f64,
    device: &str,
    half: bool,
    json: bool,
) -> Result<()> {
    use sen_core::timing::{Latency, sample};
    use std::time::Duration;
    use tch::{Device, Kind, Tensor};
    anyhow::ensure!(
        !batches.is_empty() && !batches.contains(&0),
        "--batch: give batch sizes of at least 1, such as 1,8,32"
    );
    anyhow::ensure!(
        seconds > 0.0 && seconds.is_finite(),
        "--seconds {seconds}: must be a positive number"
    );
    let device = sen_train::parse_device(device)?;
    let (mut vs, model, source) = match &checkpoint {
        Some(c) => {
            let (vs, m) = trainer::load_for_eval(c, device)?;
            (vs, m, c.display().to_string())
        }
        None => {
            tch::manual_seed(1);
            let cfg = ModelConfig::preset(preset)?;
            let vs = tch::nn::VarStore::new(device);
            let m = sen_train::model::Sen::new(&vs.root(), &cfg, None, false);
            (vs, m, format!("random {preset} weights"))
        }
    };
    let kind = if half {
        if !device.is_cuda() {
            tracing::warn!(
                "--half on the CPU: libtorch computes float16 there far slower than float32; \
                 the fp16 baseline is meant for --device cuda"
            );
        }
        vs.half();
        Kind::Half
    } else {
        Kind::Float
    };
    let cfg = model.cfg.clone();
    let tok =
        ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path()?, cfg.text.context_length)?;
    let measure = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs_f64((seconds * 0.2).min(2.0));
    let sync = |t: Tensor| {
        // Copying to the host waits for the device, as ONNX Runtime's run does.
        let _ = t.to_device(Device::Cpu);
    };
    // One result row, keyed like `sen bench --json`.
    let row = |encoder: &str, b: usize, seconds: &[f64]| {
        let l = Latency::from_seconds(seconds);
        let mut v = serde_json::to_value(&l).expect("serialises");
        v["encoder"] = encoder.into();
        v["batch"] = b.into();
        let key = if encoder == "image" {
            "images_per_s"
        } else {
            "texts_per_s"
        };
        v[key] = l.per_second(b).into();
        v
    };
    let mut rows = vec![];
    let _guard = tch::no_grad_guard();
    for &b in batches {
        let x = Tensor::randn(
            [
                b as i64,
                3,
                cfg.vision.image_height as i64,
                cfg.vision.image_width as i64,
            ],
            (kind, device),
        );
        let s = sample::<anyhow::Error>(
            || {
                // The whole encoder, as the ONNX graphs run it (no CLS-only shortcut).
                sync(model.visual.forward(&x).select(1, 0));
                Ok(())
            },
            warmup,
            measure,
            5,
        )?;
        rows.push(row("image", b, &s));
    }
    let captions = [
        "a man in a grey hoodie with a red backpack",
        "the woman wears a long crimson coat over a white sweater and brown boots",
    ];
    for &b in batches {
        let texts: Vec<&str> = captions.iter().cycle().take(b).copied().collect();
        let (ids, eot) = tok.encode_arrays(&texts)?;
        let ids = Tensor::from_slice(ids.as_slice().expect("standard layout"))
            .reshape([b as i64, cfg.text.context_length as i64])
            .to_device(device);
        let eot = Tensor::from_slice(eot.as_slice().expect("contiguous")).to_device(device);
        let s = sample::<anyhow::Error>(
            || {
                // Every context position, as the ONNX graphs (no trimming to the EOT).
                sync(sen_train::model::pool_eot(&model.text.forward(&ids), &eot));
                Ok(())
            },
            warmup,
            measure,
            5,
        )?;
        rows.push(row("text", b, &s));
    }
    let report = serde_json::json!({
        "engine": "libtorch eager (tch)",
        "precision": if half { "fp16" } else { "fp32" },
        "libtorch": sen_train::torch_info()?.libtorch,
        "model": source,
        "device": format!("{device:?}"),
        "threads": tch::get_num_threads(),
        "cpu": sen_core::timing::cpu_model(),
        "logical_cores": sen_core::timing::logical_cores(),
        "seconds_per_entry": seconds,
        "results": rows,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{source} on libtorch {} {device:?} ({} threads)",
            report["libtorch"].as_str().unwrap_or("?"),
            report["threads"]
        );
        println!(
            "{:<8} {:>6} {:>7} {:>10} {:>10} {:>10} {:>12}",
            "encoder", "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "items/s"
        );
        for r in report["results"].as_array().expect("rows") {
            println!(
                "{:<8} {:>6} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>12.1}",
                r["encoder"].as_str().unwrap_or(""),
                r["batch"].as_u64().unwrap_or(0),
                r["runs"].as_u64().unwrap_or(0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p90_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["images_per_s"]
                    .as_f64()
                    .or(r["texts_per_s"].as_f64())
                    .unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
