//! `sen-train`: train, import and evaluate SEN checkpoints.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_core::{ClipTokenizer, ModelConfig, PreprocessSpec, Preprocessor};
use sen_train::optim::Recipe;
use sen_train::trainer::{self, LossWeights, Outcome, TrainOptions};
use std::path::PathBuf;

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
    /// reference (SPEC §5, fine-tuning CLIP) or tiny-scratch (random init). Default:
    /// reference with --init, tiny-scratch without.
    #[arg(long)]
    recipe: Option<String>,
    /// Planned epochs (the schedule is laid out over them); default from the recipe.
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
    /// Batch size: identities per batch x --batch-k samples each (SPEC §5: 128 = 64 x 2).
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Images per identity (K).
    #[arg(long, default_value_t = 2)]
    batch_k: usize,
    /// Build each batch from groups of G identities whose training captions are alike
    /// (TF-IDF nearest neighbours), so in-batch negatives are hard; 1: IRRA's random
    /// identities.
    #[arg(long, default_value_t = 1, value_name = "G")]
    similar_ids: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Loss weights (0 switches a term off, for ablations).
    #[arg(long, default_value_t = 1.0)]
    w_sdm: f64,
    #[arg(long, default_value_t = 1.0)]
    w_id: f64,
    #[arg(long, default_value_t = 10.0)]
    w_triplet: f64,
    #[arg(long, default_value_t = 10.0)]
    w_tir: f64,
    /// Probability of pruning a caption (0 switches pruning augmentation off).
    #[arg(long, default_value_t = 0.2)]
    prune_prob: f64,
    /// Switch image augmentation off.
    #[arg(long)]
    no_augment: bool,
    /// Evaluate on the val split every N epochs (and after the last).
    #[arg(long, default_value_t = 1)]
    eval_every: usize,
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Data worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Keep decoded images in memory (small datasets).
    #[arg(long)]
    cache_images: bool,
    /// Stop after this many minutes (the schedule still follows the planned epochs); resumable.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Mixed precision. CUDA: fp16 autocast with dynamic loss scaling. CPU: every
    /// linear layer and projection in bf16 (fp32 accumulation, fp32 master weights;
    /// fast on CPUs with AVX512-BF16 or AMX, warned about elsewhere).
    #[arg(long)]
    amp: bool,
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
        Command::Train(a) => {
            let device = sen_train::parse_device(&a.device)?;
            trainer::install_ctrlc();
            let (opts, out, resume) = match &a.resume {
                Some(dir) => (trainer::read_options(dir)?, dir.clone(), true),
                None => {
                    let model = match &a.model_config {
                        Some(f) => ModelConfig::from_json_file(f)?,
                        None => ModelConfig::preset(&a.preset)?,
                    };
                    let mut recipe =
                        Recipe::named(a.recipe.as_deref().unwrap_or(if a.init.is_some() {
                            "reference"
                        } else {
                            "tiny-scratch"
                        }))?;
                    if let Some(w) = a.warmup_epochs {
                        recipe.warmup_epochs = w;
                    }
                    if let Some(e) = a.epochs {
                        recipe.epochs = e;
                    }
                    anyhow::ensure!(
                        recipe.epochs > recipe.warmup_epochs,
                        "--epochs {} must exceed the {} warm-up epochs (--warmup-epochs)",
                        recipe.epochs,
                        recipe.warmup_epochs
                    );
                    if let Some(lr) = a.lr {
                        recipe.bias_lr *= lr / recipe.lr;
                        recipe.lr = lr;
                    }
                    let positive = |flag: &str, v: f64| -> Result<f64> {
                        anyhow::ensure!(
                            v.is_finite() && v > 0.0,
                            "{flag} {v}: must be a positive number"
                        );
                        Ok(v)
                    };
                    let fraction = |flag: &str, v: f64| -> Result<f64> {
                        anyhow::ensure!((0.0..1.0).contains(&v), "{flag} {v}: must be in [0, 1)");
                        Ok(v)
                    };
                    positive("--lr", recipe.lr)?;
                    if let Some(v) = a.bias_lr {
                        recipe.bias_lr = positive("--bias-lr", v)?;
                    }
                    if let Some(v) = a.head_lr_mult {
                        recipe.head_lr_mult = positive("--head-lr-mult", v)?;
                    }
                    if let Some(v) = a.weight_decay {
                        anyhow::ensure!(
                            v.is_finite() && v >= 0.0,
                            "--weight-decay {v}: must be >= 0"
                        );
                        recipe.weight_decay = v;
                    }
                    if let Some(v) = a.eps {
                        recipe.eps = positive("--eps", v)?;
                    }
                    if let Some(v) = a.beta1 {
                        recipe.beta1 = fraction("--beta1", v)?;
                    }
                    if let Some(v) = a.beta2 {
                        recipe.beta2 = fraction("--beta2", v)?;
                    }
                    if let Some(v) = a.warmup_factor {
                        anyhow::ensure!(
                            v > 0.0 && v <= 1.0,
                            "--warmup-factor {v}: must be in (0, 1]"
                        );
                        recipe.warmup_factor = v;
                    }
                    anyhow::ensure!(
                        a.batch_k > 0 && a.batch % a.batch_k == 0 && a.batch >= 2 * a.batch_k,
                        "--batch {} must be a multiple of --batch-k {} with at least two identities",
                        a.batch,
                        a.batch_k
                    );
                    anyhow::ensure!(
                        a.similar_ids >= 1 && a.similar_ids <= a.batch / a.batch_k,
                        "--similar-ids {}: must be between 1 and the {} identities per batch",
                        a.similar_ids,
                        a.batch / a.batch_k
                    );
                    anyhow::ensure!(
                        (0.0..=1.0).contains(&a.prune_prob),
                        "--prune-prob {}: must be in [0, 1]",
                        a.prune_prob
                    );
                    let opts = TrainOptions {
                        data: a.data.clone().unwrap(),
                        format: a.format.map(|f| f.name().to_string()),
                        model,
                        init: a.init.clone(),
                        recipe,
                        identities_per_batch: a.batch / a.batch_k,
                        samples_per_identity: a.batch_k,
                        similar_ids: a.similar_ids,
                        seed: a.seed,
                        losses: LossWeights {
                            sdm: a.w_sdm,
                            id: a.w_id,
                            triplet: a.w_triplet,
                            tir: a.w_tir,
                        },
                        prune_prob: a.prune_prob,
                        augment: !a.no_augment,
                        eval_every: a.eval_every,
                        log_every: a.log_every,
                        workers: a.workers,
                        cache_images: a.cache_images,
                        amp: a.amp,
                    };
                    (opts, a.out.clone().unwrap(), false)
                }
            };
            let (outcome, p) =
                trainer::train(&opts, &out, resume, device, a.max_minutes, None, true)?;
            match outcome {
                Outcome::Finished => println!(
                    "finished {} epochs; best val R@1 {} (epoch {}) in {}/best",
                    opts.recipe.epochs,
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
            let pre = Preprocessor::new(PreprocessSpec::for_model(&model.cfg))?;
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
            json,
        } => bench(checkpoint, &preset, &batch, seconds, &device, json)?,
    }
    Ok(())
}

/// `sen-train bench`: the encoders in libtorch eager mode, timed like `sen bench`.
fn bench(
    checkpoint: Option<PathBuf>,
    preset: &str,
    batches: &[usize],
    seconds: f64,
    device: &str,
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
    let (_vs, model, source) = match &checkpoint {
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
            (Kind::Float, device),
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
