//! The training loop (SPEC §4-§5, §10) and evaluation (SPEC §7).
//!
//! A run directory `OUT/` holds `last/` (written every epoch and on Ctrl-C or the
//! time limit, resumable), `best/` (best R@1 on the val split, never test) and
//! `log.jsonl` (one JSON object per logged step and per evaluation).

use crate::checkpoint;
use crate::losses;
use crate::model::layers::{apply_linear, with_bf16_products};
use crate::model::{Sen, pool_eot, tir, trim_to_eot};
use crate::optim::{Adam, Recipe};
use anyhow::{Context, Result};
use sen_core::data::pipeline::{Batch, PipelineConfig, TrainPipeline};
pub use sen_core::data::sampler::SamplerKind;
use sen_core::data::{Dataset, DatasetFormat, EvalSet, Split};
use sen_core::metrics::RetrievalMetrics;
use sen_core::{ClipTokenizer, ModelConfig, PreprocessSpec, Preprocessor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

/// Fixed similarity scale (temperature 0.02).
pub const LOGIT_SCALE: f64 = 50.0;
/// Triplet margin.
pub const TRIPLET_MARGIN: f64 = 0.05;

/// Loss weights; 0 switches a term off (ablations).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    pub sdm: f64,
    pub id: f64,
    pub triplet: f64,
    pub tir: f64,
}

impl Default for LossWeights {
    /// SPEC §4: L_sdm + 1.0 L_id + 10 L_tri + 10 L_tir.
    fn default() -> Self {
        LossWeights {
            sdm: 1.0,
            id: 1.0,
            triplet: 10.0,
            tir: 10.0,
        }
    }
}

/// Everything a run needs; saved in `train.json` so `--resume` restores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub format: Option<String>,
    pub model: ModelConfig,
    pub init: Option<PathBuf>,
    pub recipe: Recipe,
    pub identities_per_batch: usize,
    pub samples_per_identity: usize,
    /// Identities per batch come in groups of this many with alike captions (1: random).
    #[serde(default = "one")]
    pub similar_ids: usize,
    /// The batch sampler (`--sampler`); runs written before it existed used IRRA's
    /// identity sampler.
    #[serde(default = "identity_sampler")]
    pub sampler: SamplerKind,
    pub seed: u64,
    pub losses: LossWeights,
    pub prune_prob: f64,
    pub augment: bool,
    pub eval_every: usize,
    pub log_every: usize,
    pub workers: usize,
    pub cache_images: bool,
    /// Mixed precision: on CUDA fp16 autocast with dynamic loss scaling, on a CPU
    /// bf16 weight products ([`with_bf16_products`]; bf16 needs no loss scaling).
    #[serde(default)]
    pub amp: bool,
    /// Every effective setting with where it came from (recipe, flag, machine, plan),
    /// for `train.json` and the start-up log; empty in files written before it existed.
    #[serde(default)]
    pub settings: BTreeMap<String, Setting>,
    /// The time-fitted schedule, once measured (SPEC §5): `recipe.epochs` and
    /// `recipe.warmup_epochs` then hold the planned values, and `--resume` reuses them.
    #[serde(default)]
    pub plan: Option<SchedulePlan>,
    /// The resize filter of the model's preprocessing (SPEC §3): `bilinear` as SEN's
    /// and IRRA's code, or `bicubic` as OpenAI CLIP; runs written before it existed
    /// were bicubic.
    #[serde(default = "bicubic")]
    pub resize: String,
}

fn one() -> usize {
    1
}

fn identity_sampler() -> SamplerKind {
    SamplerKind::Identity
}

fn bicubic() -> String {
    "bicubic".into()
}

/// Where an effective setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The recipe's value (`--recipe`).
    Recipe,
    /// Given on the command line.
    Flag,
    /// Decided from this machine (CPU features, free memory).
    Machine,
    /// The time-fitted schedule (`--max-minutes`).
    Plan,
    /// sen-train's own default (not a recipe knob).
    Default,
}

/// One effective setting in `train.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub value: serde_json::Value,
    pub source: Source,
    /// Why, when the machine or the plan decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Setting {
    pub fn new(value: impl Serialize, source: Source) -> Self {
        Setting {
            value: serde_json::to_value(value).expect("settings serialise"),
            source,
            why: None,
        }
    }

    pub fn because(mut self, why: impl Into<String>) -> Self {
        self.why = Some(why.into());
        self
    }
}

/// Log the effective settings, one line each, grouped by source.
pub fn log_settings(settings: &BTreeMap<String, Setting>) {
    for (k, s) in settings {
        let source = serde_json::to_value(s.source).expect("serialises");
        tracing::info!(
            "{k:<15} {:<14} ({}{})",
            s.value.to_string(),
            source.as_str().unwrap_or_default(),
            s.why
                .as_deref()
                .map(|w| format!(": {w}"))
                .unwrap_or_default()
        );
    }
}

/// The schedule a time budget allows (SPEC §5): measured on the first steps of a run
/// and recorded in `train.json` so `--resume` lays the rest out the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulePlan {
    pub budget_minutes: f64,
    /// The epochs the recipe (or `--epochs`) asked for: the plan never exceeds them.
    pub epochs_cap: usize,
    pub warmup_cap: usize,
    /// Planned epochs and warm-up epochs.
    pub epochs: usize,
    pub warmup_epochs: usize,
    pub steps_per_epoch: usize,
    /// Mean wall time of the timed steps (data waits included).
    pub step_seconds: f64,
    pub timed_steps: usize,
    /// One val evaluation and one checkpoint save, timed at the plan.
    pub eval_seconds: f64,
    pub save_seconds: f64,
    /// Seconds since start when the plan was made, and the whole run's predicted length.
    pub planned_at_seconds: f64,
    pub predicted_seconds: f64,
    pub planned_at_step: u64,
}

/// The time model the plan fits: what a run of `epochs` epochs costs from now on.
#[derive(Debug, Clone, Copy)]
pub struct StepCosts {
    pub steps_per_epoch: usize,
    pub steps_done: usize,
    pub step_seconds: f64,
    pub eval_seconds: f64,
    pub eval_every: usize,
    pub save_seconds: f64,
    pub elapsed_seconds: f64,
}

impl StepCosts {
    /// Predicted seconds from the run's start to its end with `epochs` epochs: the
    /// steps left, a save per epoch, the val evaluations (every `eval_every` epochs and
    /// after the last).
    pub fn total(&self, epochs: usize) -> f64 {
        let steps = (epochs * self.steps_per_epoch).saturating_sub(self.steps_done);
        let evals = (1..=epochs)
            .filter(|e| (self.eval_every > 0 && e % self.eval_every == 0) || *e == epochs)
            .count();
        self.elapsed_seconds
            + steps as f64 * self.step_seconds
            + epochs as f64 * self.save_seconds
            + evals as f64 * self.eval_seconds
    }
}

/// Share of the budget the plan may fill (the rest absorbs timing noise) and a fixed
/// reserve for the final write.
const PLAN_FILL: f64 = 0.97;
const PLAN_RESERVE_SECONDS: f64 = 2.0;

/// The most epochs (at most `cap`, at least 1) whose predicted run fits `budget_seconds`,
/// and the warm-up scaled with them (`warmup_cap` at `cap` epochs; at least 1 when the
/// recipe warms up and there is more than one epoch). Returns (epochs, warm-up, predicted
/// seconds).
pub fn fit_schedule(
    costs: &StepCosts,
    cap: usize,
    warmup_cap: usize,
    budget_seconds: f64,
) -> (usize, usize, f64) {
    let usable = budget_seconds * PLAN_FILL - PLAN_RESERVE_SECONDS;
    let epochs = (1..=cap.max(1))
        .rev()
        .find(|&e| costs.total(e) <= usable)
        .unwrap_or(1);
    let warmup = if warmup_cap == 0 || epochs == 1 {
        0
    } else {
        ((warmup_cap as f64 * epochs as f64 / cap as f64).round() as usize).clamp(1, epochs - 1)
    };
    (epochs, warmup, costs.total(epochs))
}

/// Steps skipped before timing (allocations, kernel selection) and steps timed.
const PLAN_SKIP_STEPS: usize = 3;
const PLAN_TIMED_STEPS: usize = 12;

/// How long a call to [`train`] may run and whether a time budget plans the schedule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop (resumably) after this many minutes.
    pub max_minutes: Option<f64>,
    /// Stop after this many epochs of this call.
    pub max_epochs: Option<usize>,
    /// With `max_minutes`, fit epochs and warm-up to the budget on a run's first steps
    /// (never on `--resume`: a resumed run keeps its recorded plan).
    pub fit_schedule: bool,
}

/// Where a run stands (saved in `train.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Epoch to run next, and the first batch of it still to run.
    pub epoch: usize,
    pub batch: usize,
    pub global_step: u64,
    pub best_r1: Option<f64>,
    /// Val mAP of `best/`, which breaks R@1 ties (val R@1 moves in steps of
    /// 100 / queries, so equal values are common).
    #[serde(default)]
    pub best_map: Option<f64>,
    pub best_epoch: Option<usize>,
    pub finished: bool,
    /// Steps skipped because the forward loss was not finite ([`NonFiniteGuard`]).
    #[serde(default)]
    pub nonfinite_skips: u64,
}

/// Non-finite forward losses in a row after which a run ends: one such batch (a
/// degenerate caption, an overflow) is skipped like the loss scaler's overflow, but
/// twenty in a row mean the weights themselves have gone bad.
pub const MAX_NONFINITE_IN_A_ROW: u32 = 20;

/// Decides, per step, whether a forward loss is used or the step skipped.
#[derive(Debug, Default)]
pub struct NonFiniteGuard {
    in_a_row: u32,
}

impl NonFiniteGuard {
    /// `Ok(true)`: use the step; `Ok(false)`: skip it (counted in `skips`); an error
    /// once [`MAX_NONFINITE_IN_A_ROW`] steps in a row were not finite.
    pub fn check(&mut self, l: &StepLosses, step: u64, skips: &mut u64) -> Result<bool> {
        if l.total.is_finite() {
            self.in_a_row = 0;
            return Ok(true);
        }
        self.in_a_row += 1;
        *skips += 1;
        anyhow::ensure!(
            self.in_a_row < MAX_NONFINITE_IN_A_ROW,
            "step {step}: the loss was not finite {} steps in a row (last: {l:?}); the \
             weights have diverged: lower the learning rate (--lr) or resume from an \
             earlier checkpoint",
            self.in_a_row
        );
        Ok(false)
    }
}

impl Progress {
    /// Whether val metrics (R@1, mAP) beat `best/`: higher R@1, or equal R@1 and
    /// higher mAP.
    pub fn improves(&self, r1: f64, map: f64) -> bool {
        match self.best_r1 {
            None => true,
            Some(b) if r1 != b => r1 > b,
            Some(_) => self.best_map.is_none_or(|m| map > m),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainJson {
    options: TrainOptions,
    progress: Progress,
    /// Original dataset id -> contiguous training pid.
    pid_map: Vec<(i64, usize)>,
    tools: serde_json::Value,
    /// The preprocessing the model is trained with: what export, evaluation and
    /// calibration read back (`PreprocessSpec::for_checkpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preprocess: Option<PreprocessSpec>,
    /// Every parameter group with its learning rate and weight decay (SPEC §5);
    /// empty in files written before it was recorded.
    #[serde(default)]
    param_groups: Vec<crate::optim::GroupReport>,
}

/// Per-step loss values.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepLosses {
    pub total: f64,
    pub sdm: f64,
    pub id: f64,
    pub triplet: f64,
    pub tir: f64,
}

/// Dynamic loss scaling for fp16 autocast (as torch's GradScaler): start at 2^16,
/// halve on overflow (the step is skipped), double after 2000 clean steps.
#[derive(Debug, Clone)]
pub struct LossScaler {
    pub scale: f64,
    good: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            good: 0,
        }
    }
}

impl LossScaler {
    pub fn overflow(&mut self) {
        self.scale = (self.scale / 2.0).max(1.0);
        self.good = 0;
    }
    pub fn good_step(&mut self) {
        self.good += 1;
        if self.good >= 2000 {
            self.scale *= 2.0;
            self.good = 0;
        }
    }
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    Interrupted,
    TimeLimit,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Install a Ctrl-C handler that makes the loop save `last/` and stop.
pub fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: finishing this step and writing a resumable checkpoint (Ctrl-C again to abort)"
        );
    });
}

fn tensor4(a: &ndarray::Array4<f32>, device: Device) -> Tensor {
    let s: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(a.as_slice().expect("standard layout"))
        .view(s.as_slice())
        .to_device(device)
}

/// Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16, from
/// /proc/cpuinfo); false where that cannot be read.
pub fn cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| {
        s.lines().filter(|l| l.starts_with("flags")).any(|l| {
            l.split_whitespace()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16")
        })
    })
}

/// Say how many training captions the model's text context cuts (the tiny preset's
/// is shorter than CLIP's 77), so a dataset with long captions is not silently
/// trained on their first words. Returns that count.
pub fn warn_truncated<'a>(
    tok: &ClipTokenizer,
    captions: impl Iterator<Item = &'a str>,
) -> Result<usize> {
    let captions: Vec<&str> = captions.collect();
    let enc = tok.encode_batch(&captions)?;
    let cut = enc.iter().filter(|e| e.truncated).count();
    if cut > 0 {
        tracing::warn!(
            "{cut} of {} training captions are longer than the model's text context of {} \
             tokens and are cut to their first {} (the last slot becomes EOT); a ModelConfig \
             with a longer text.context_length (--model-config) keeps them whole",
            captions.len(),
            tok.context_length(),
            tok.context_length() - 2
        );
    }
    Ok(cut)
}

/// The model's losses on one batch.
pub fn batch_losses(
    model: &Sen,
    b: &Batch,
    w: &LossWeights,
    device: Device,
) -> Result<(Tensor, StepLosses)> {
    let images = tensor4(&b.images, device);
    let (n, ctx) = (b.input_ids.nrows() as i64, b.input_ids.ncols() as i64);
    let ids = Tensor::from_slice(b.input_ids.as_slice().expect("standard layout"))
        .view([n, ctx])
        .to_device(device);
    let eot = Tensor::from_slice(&b.eot_index).to_device(device);
    let pids = Tensor::from_slice(&b.pids).to_device(device);
    // Only CLS of the image tokens is used, and of the text tokens only those up to
    // the last EOT, except by TIR, whose decoder attends to every text token.
    let i_g = model.visual.forward_global(&images);
    let txt_tokens = if w.tir > 0.0 {
        model.text.forward(&ids)
    } else {
        let max_eot = b.eot_index.iter().copied().max().unwrap_or(0);
        model.text.forward(&trim_to_eot(&ids, max_eot))
    };
    let t_g = pool_eot(&txt_tokens, &eot);
    let mut total = Tensor::zeros([], (Kind::Float, device));
    let mut out = StepLosses::default();
    let val = |t: &Tensor| t.double_value(&[]);
    if w.sdm > 0.0 {
        let l = losses::sdm(&i_g, &t_g, &pids, LOGIT_SCALE);
        out.sdm = val(&l);
        total += l * w.sdm;
    }
    if w.id > 0.0 {
        let head = model
            .id_head
            .as_ref()
            .context("the ID loss needs the ID head")?;
        let l = losses::id_loss(&apply_linear(&i_g, head), &apply_linear(&t_g, head), &pids);
        out.id = val(&l);
        total += l * w.id;
    }
    if w.triplet > 0.0 {
        let l = losses::triplet(&i_g, &t_g, &pids, TRIPLET_MARGIN);
        out.triplet = val(&l);
        total += l * w.triplet;
    }
    if w.tir > 0.0 {
        let dec = model
            .tir
            .as_ref()
            .context("the TIR loss needs the TIR decoder")?;
        let v = &model.cfg.vision;
        let kept = model.cfg.tir.kept_tokens(v.num_tokens()) as i64;
        let (keep, mask) = tir::random_masking(n, v.num_patches() as i64, kept, device);
        let visible = model.visual.forward_masked(&tir::grayscale(&images), &keep);
        let pred = dec.forward(&visible, &keep, &txt_tokens);
        let target = tir::patchify(&images, v.patch_size as i64);
        let l = losses::tir_mse(&pred, &target, &mask);
        out.tir = val(&l);
        total += l * w.tir;
    }
    out.total = val(&total);
    Ok((total, out))
}

/// Text-to-image metrics of `model` on an evaluation set (SPEC §7).
pub fn evaluate(
    model: &Sen,
    set: &EvalSet,
    pre: &Preprocessor,
    tok: &ClipTokenizer,
    device: Device,
    batch: usize,
) -> Result<RetrievalMetrics> {
    let (img, txt) = embed_eval_set(model, set, pre, tok, device, batch)?;
    let sim = txt.matmul(&img.tr()).to_device(Device::Cpu).contiguous();
    let sim: Vec<f32> = Vec::<f32>::try_from(sim.flatten(0, -1))?;
    Ok(sen_core::metrics::evaluate(
        &sim,
        &set.caption_pids,
        &set.image_pids,
    )?)
}

/// L2-normalised (image [G, D], text [Q, D]) embeddings of an evaluation set.
pub fn embed_eval_set(
    model: &Sen,
    set: &EvalSet,
    pre: &Preprocessor,
    tok: &ClipTokenizer,
    device: Device,
    batch: usize,
) -> Result<(Tensor, Tensor)> {
    tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        let norm = |x: Tensor| &x / x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12);
        let mut imgs = Vec::new();
        for chunk in set.images.chunks(batch) {
            let x = tensor4(&pre.load_batch(chunk)?, device);
            imgs.push(norm(model.encode_image(&x)));
        }
        let mut txts = Vec::new();
        for chunk in set.captions.chunks(batch) {
            let (ids, eot) = tok.encode_arrays(chunk)?;
            let ids = Tensor::from_slice(ids.as_slice().expect("standard layout"))
                .view([eot.len() as i64, tok.context_length() as i64])
                .to_device(device);
            let eot = Tensor::from_slice(eot.as_slice().expect("contiguous")).to_device(device);
            txts.push(norm(model.encode_text(&ids, &eot)));
        }
        Ok((Tensor::cat(&imgs, 0), Tensor::cat(&txts, 0)))
    })
}

fn tools() -> serde_json::Value {
    serde_json::json!({"sen-train": env!("CARGO_PKG_VERSION"), "libtorch": env!("SEN_LIBTORCH_VERSION")})
}

fn append_log(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{v}")?;
    Ok(())
}

/// Train (or, with `resume`, continue) a run in `out`.
pub fn train(
    opts: &TrainOptions,
    out: &Path,
    resume: bool,
    device: Device,
    limits: &Limits,
    show_progress: bool,
) -> Result<(Outcome, Progress)> {
    let t_start = Instant::now();
    // The plan may change epochs and warm-up; everything saved uses this copy.
    let mut opts = opts.clone();
    let cfg = &opts.model.clone();
    cfg.validate()?;
    let format = opts
        .format
        .as_deref()
        .map(str::parse::<DatasetFormat>)
        .transpose()?;
    let ds = Dataset::load(&opts.data, format)?;
    let train_set = ds.train_set()?;
    let val_set = match ds.eval_set(Split::Val) {
        Ok(s) => Some(s),
        Err(e) if ds.split(Split::Val).next().is_none() => {
            tracing::warn!(
                "{e}; without a val split, best/ follows last/ (test is never used for selection)"
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    let num_pids = train_set.num_pids() as i64;
    let pid_map: Vec<(i64, usize)> = train_set.pid_map.iter().map(|(&k, &v)| (k, v)).collect();
    let tok =
        ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path()?, cfg.text.context_length)?;
    warn_truncated(&tok, train_set.samples.iter().map(|s| s.caption.as_str()))?;
    let filter: sen_core::preprocess::ResizeFilter = opts
        .resize
        .parse()
        .with_context(|| "--resize".to_string())?;
    let spec = PreprocessSpec::for_model_with(cfg, filter);
    let spec_for_save = spec.clone();
    let pre = Preprocessor::new(spec.clone())?;
    let pipeline = TrainPipeline::new(
        train_set,
        spec,
        tok.clone(),
        PipelineConfig {
            identities_per_batch: opts.identities_per_batch,
            samples_per_identity: opts.samples_per_identity,
            augment: opts.augment,
            prune_prob: opts.prune_prob,
            workers: opts.workers,
            prefetch: 2,
            seed: opts.seed,
            cache_images: opts.cache_images,
            similar_ids: opts.similar_ids,
            sampler: opts.sampler,
        },
    )?;

    // Initialise on the CPU generator, then move: the same seed gives the same start
    // on every device (and CPU/CUDA losses can be compared at step 0).
    tch::manual_seed(opts.seed as i64);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Sen::new(&vs.root(), cfg, Some(num_pids), opts.losses.tir > 0.0);
    vs.set_device(device);
    let mut opt;
    let mut progress;
    let last = out.join("last");
    if resume {
        let json: TrainJson = serde_json::from_str(
            &std::fs::read_to_string(last.join(checkpoint::TRAIN_FILE))
                .with_context(|| format!("{}: no resumable checkpoint", last.display()))?,
        )?;
        checkpoint::load_weights(&mut vs, &last.join(checkpoint::MODEL_FILE))?;
        opt = Adam::new(&vs, &opts.recipe);
        opt.load(&last.join(checkpoint::OPTIMIZER_FILE))?;
        progress = json.progress;
        tracing::info!(
            "resuming {} at epoch {} batch {}{}",
            out.display(),
            progress.epoch,
            progress.batch,
            match &opts.plan {
                Some(p) => format!(
                    " with its recorded plan: {} epochs, warm-up {}",
                    p.epochs, p.warmup_epochs
                ),
                None => format!(" ({} planned epochs)", opts.recipe.epochs),
            }
        );
    } else {
        if let Some(init) = &opts.init {
            let dir = checkpoint::resolve(init)?;
            let init_cfg = checkpoint::read_config(&dir)?;
            anyhow::ensure!(
                &init_cfg == cfg,
                "--init {}: its config.json differs from the model being trained",
                dir.display()
            );
            // A training-only head of another shape (an imported checkpoint's ID head
            // has its own dataset's classes) starts from its initialisation.
            let vars = vs.variables();
            let src: std::collections::BTreeMap<String, Tensor> =
                Tensor::read_safetensors(dir.join(checkpoint::MODEL_FILE))?
                    .into_iter()
                    .filter(|(k, t)| {
                        !(k.starts_with("tir.") || k.starts_with("id_head."))
                            || vars.get(k).is_some_and(|v| v.size() == t.size())
                    })
                    .collect();
            let fresh =
                crate::import::copy_named_partial(&mut vs, &src, &[], &["tir.", "id_head."])
                    .with_context(|| format!("--init {}", dir.display()))?;
            if !fresh.is_empty() {
                tracing::info!(
                    "--init: {} training-only tensors (tir., id_head.) start from their initialisation",
                    fresh.len()
                );
            }
        }
        opt = Adam::new(&vs, &opts.recipe);
        progress = Progress::default();
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    for g in opt.group_report() {
        tracing::info!(
            "parameter group {:<16} lr {:.3e}  weight decay {:.1e}  {:>4} tensors {:>11} elements (e.g. {})",
            g.group,
            g.lr,
            g.weight_decay,
            g.tensors,
            g.elements,
            g.examples.join(", ")
        );
    }
    // The budget plans only a fresh run, and only once (a resumed run keeps its plan).
    let budget_seconds = limits.max_minutes.map(|m| m * 60.0);
    let mut plan_pending = limits.fit_schedule && !resume && budget_seconds.is_some();
    if plan_pending && opts.cache_images {
        // Decode every training image now, so the timed steps run as later epochs do.
        let t = Instant::now();
        pipeline.fill_cache()?;
        tracing::info!(
            "decoded {} training images into the cache in {:.1} s",
            pipeline.train_set().images.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let log_path = out.join("log.jsonl");
    let save_last = |opts: &TrainOptions,
                     vs: &nn::VarStore,
                     opt: &Adam,
                     progress: &Progress,
                     metrics: &serde_json::Value|
     -> Result<()> {
        let json = TrainJson {
            options: opts.clone(),
            progress: progress.clone(),
            pid_map: pid_map.clone(),
            tools: tools(),
            preprocess: Some(spec_for_save.clone()),
            param_groups: opt.group_report(),
        };
        checkpoint::save(
            &last,
            vs,
            cfg,
            &serde_json::to_value(&json)?,
            metrics,
            |dir| opt.save(&dir.join(checkpoint::OPTIMIZER_FILE)),
        )
    };

    // Evaluate on val, save last/, and copy it to best/ when R@1 improved (or when
    // there is no val split to choose on).
    let eval_and_save = |opts: &TrainOptions,
                         model: &Sen,
                         vs: &nn::VarStore,
                         opt: &Adam,
                         progress: &mut Progress|
     -> Result<()> {
        let Some(val) = &val_set else {
            save_last(opts, vs, opt, progress, &serde_json::json!({}))?;
            return copy_dir(&last, &out.join("best"));
        };
        let m = evaluate(model, val, &pre, &tok, device, 64)?;
        let metrics = serde_json::json!({"split": "val", "epoch": progress.epoch, "batch": progress.batch,
            "r1": m.r1, "r5": m.r5, "r10": m.r10, "map": m.map, "minp": m.minp});
        append_log(&log_path, &serde_json::json!({"eval": metrics.clone()}))?;
        if show_progress {
            eprintln!(
                "  val after epoch {} batch {}: {m}",
                progress.epoch, progress.batch
            );
        }
        let improved = progress.improves(m.r1, m.map);
        if improved {
            progress.best_r1 = Some(m.r1);
            progress.best_map = Some(m.map);
            progress.best_epoch = Some(progress.epoch);
        }
        save_last(opts, vs, opt, progress, &metrics)?;
        if improved {
            copy_dir(&last, &out.join("best"))?;
        }
        Ok(())
    };
    let amp = opts.amp && device.is_cuda();
    let cpu_bf16 = opts.amp && !device.is_cuda();
    if cpu_bf16 && !cpu_has_native_bf16() {
        tracing::warn!(
            "--amp on a CPU computes weight products in bf16, but this CPU has neither \
             AVX512-BF16 nor AMX, so they are emulated and likely slower than fp32; \
             drop --amp here"
        );
    }
    let mut scaler = LossScaler::default();
    let mut outcome = Outcome::Finished;
    let mut nonfinite = NonFiniteGuard::default();
    // Epochs this call may run (recomputed when the plan changes the total).
    let stop_epoch = |opts: &TrainOptions, from: usize| {
        limits
            .max_epochs
            .map_or(opts.recipe.epochs, |m| (from + m).min(opts.recipe.epochs))
    };
    let first_epoch = progress.epoch;
    // While planning: each step's end, with the seconds spent so far in end-of-epoch
    // saves and evaluations (timed on their own, so not counted as step time).
    let mut step_ends: Vec<(Instant, f64)> = vec![];
    let mut excluded_seconds = 0.0;
    'epochs: while progress.epoch < stop_epoch(&opts, first_epoch) {
        let epoch = progress.epoch;
        let mut lr_factor = opts.recipe.lr_factor(epoch);
        let batches = pipeline.epoch_from(epoch as u64, progress.batch);
        let n_batches = batches.len();
        let bar = if show_progress {
            indicatif::ProgressBar::new(n_batches as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} {bar:25} {pos}/{len} {msg}",
                )
                .unwrap(),
            )
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_prefix(format!("{}/{}", epoch + 1, opts.recipe.epochs));
        bar.set_position(progress.batch as u64);
        let t_epoch = Instant::now();
        let mut seen = 0usize;
        for b in batches {
            let b = b?;
            tch::manual_seed((opts.seed ^ 0x5EED) as i64 + progress.global_step as i64);
            opt.zero_grad();
            let (loss, l) = tch::autocast(amp, || {
                with_bf16_products(cpu_bf16, || batch_losses(&model, &b, &opts.losses, device))
            })?;
            let used =
                nonfinite.check(&l, progress.global_step + 1, &mut progress.nonfinite_skips)?;
            if !used {
                tracing::warn!(
                    "step {}: the loss is not finite ({l:?}): step skipped ({} so far)",
                    progress.global_step + 1,
                    progress.nonfinite_skips
                );
                append_log(
                    &log_path,
                    &serde_json::json!({"step": progress.global_step + 1, "epoch": epoch,
                        "batch": b.index, "skipped": "non-finite loss",
                        "nonfinite_skips": progress.nonfinite_skips}),
                )?;
            } else if amp {
                (loss * scaler.scale).backward();
                if !opt.step_scaled(lr_factor, 1.0 / scaler.scale) {
                    scaler.overflow();
                    tracing::debug!(
                        "fp16 gradient overflow: step skipped, loss scale now {}",
                        scaler.scale
                    );
                } else {
                    scaler.good_step();
                }
            } else {
                loss.backward();
                opt.step(lr_factor);
            }
            progress.batch = b.index + 1;
            progress.global_step += 1;
            seen += b.pids.len();
            let rate = seen as f64 / t_epoch.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.3} sdm {:.3} id {:.3} tri {:.3} tir {:.3} | {rate:.0} samples/s",
                l.total, l.sdm, l.id, l.triplet, l.tir
            ));
            bar.inc(1);
            if progress.global_step % opts.log_every.max(1) as u64 == 0 || b.index + 1 == n_batches
            {
                append_log(
                    &log_path,
                    &serde_json::json!({"step": progress.global_step, "epoch": epoch, "batch": b.index,
                        "lr_factor": lr_factor, "loss": l, "samples_per_s": rate}),
                )?;
            }
            if plan_pending {
                step_ends.push((Instant::now(), excluded_seconds));
                let timed = step_ends.len().saturating_sub(PLAN_SKIP_STEPS + 1);
                // Enough steps, or the end of the second epoch for short epochs (so
                // the timed steps include an epoch's start-up).
                if timed >= PLAN_TIMED_STEPS || (b.index + 1 == n_batches && epoch >= 1) {
                    plan_pending = false;
                    let plan = make_plan(
                        &mut opts,
                        &step_ends,
                        n_batches,
                        progress.global_step,
                        budget_seconds.expect("planning needs a budget"),
                        t_start,
                        || match &val_set {
                            Some(val) => evaluate(&model, val, &pre, &tok, device, 64).map(|_| ()),
                            None => Ok(()),
                        },
                        |opts: &TrainOptions| {
                            save_last(opts, &vs, &opt, &progress, &serde_json::json!({}))
                        },
                    )?;
                    append_log(&log_path, &serde_json::json!({ "plan": plan }))?;
                    bar.set_prefix(format!("{}/{}", epoch + 1, opts.recipe.epochs));
                    lr_factor = opts.recipe.lr_factor(epoch);
                }
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                outcome = Outcome::Interrupted;
            } else if budget_seconds.is_some_and(|b| t_start.elapsed().as_secs_f64() > b) {
                outcome = Outcome::TimeLimit;
            }
            if outcome != Outcome::Finished {
                bar.abandon();
                if progress.batch >= n_batches {
                    progress.epoch += 1;
                    progress.batch = 0;
                }
                if outcome == Outcome::TimeLimit {
                    // --max-minutes: evaluate what we have, keep the best, save.
                    eval_and_save(&opts, &model, &vs, &opt, &mut progress)?;
                } else {
                    save_last(&opts, &vs, &opt, &progress, &serde_json::json!({}))?;
                }
                break 'epochs;
            }
        }
        bar.finish();
        progress.epoch += 1;
        progress.batch = 0;
        let epochs = opts.recipe.epochs;
        progress.finished = progress.epoch == epochs;
        let eval_now = (opts.eval_every > 0 && progress.epoch % opts.eval_every == 0)
            || progress.epoch == epochs;
        let t_end = Instant::now();
        if eval_now {
            eval_and_save(&opts, &model, &vs, &opt, &mut progress)?;
        } else {
            save_last(&opts, &vs, &opt, &progress, &serde_json::json!({}))?;
        }
        excluded_seconds += t_end.elapsed().as_secs_f64();
    }
    if let Some(p) = &opts.plan
        && outcome == Outcome::Finished
        && progress.finished
    {
        tracing::info!(
            "planned {:.0} s, took {:.0} s ({} epochs)",
            p.predicted_seconds,
            t_start.elapsed().as_secs_f64(),
            p.epochs
        );
    }
    Ok((outcome, progress))
}

/// Fit the schedule to the budget: time the steps so far, one val evaluation and one
/// checkpoint save (which also records the plan, so an interrupted run resumes with
/// it), then set `opts.recipe.epochs`/`warmup_epochs` and `opts.plan`.
#[allow(clippy::too_many_arguments)]
fn make_plan(
    opts: &mut TrainOptions,
    step_ends: &[(Instant, f64)],
    steps_per_epoch: usize,
    global_step: u64,
    budget_seconds: f64,
    t_start: Instant,
    eval: impl FnOnce() -> Result<()>,
    mut save: impl FnMut(&TrainOptions) -> Result<()>,
) -> Result<SchedulePlan> {
    // Mean step time from the step ends, skipping the first steps (warm-up) when
    // there are enough of them, less the end-of-epoch saves and evaluations in between.
    let skip = if step_ends.len() > PLAN_SKIP_STEPS + 1 {
        PLAN_SKIP_STEPS
    } else {
        0
    };
    let ends = &step_ends[skip..];
    let step_seconds = match (ends.first(), ends.last()) {
        (Some(a), Some(b)) if ends.len() >= 2 => {
            ((b.0 - a.0).as_secs_f64() - (b.1 - a.1)) / (ends.len() - 1) as f64
        }
        // A single step: its time since the start is all we know.
        _ => (step_ends[0].0 - t_start).as_secs_f64(),
    };
    let t = Instant::now();
    eval()?;
    let eval_seconds = t.elapsed().as_secs_f64();
    let (cap, warmup_cap, eval_every) = (
        opts.recipe.epochs,
        opts.recipe.warmup_epochs,
        opts.eval_every,
    );
    // Record the plan before timing the save: the save writes it.
    let costs = |save_seconds: f64| StepCosts {
        steps_per_epoch,
        steps_done: global_step as usize,
        step_seconds,
        eval_seconds,
        eval_every,
        save_seconds,
        elapsed_seconds: t_start.elapsed().as_secs_f64(),
    };
    // A first fit without the save's cost, written with the checkpoint; then the save
    // is timed and the fit redone with it (the save is small next to an epoch).
    let (e0, w0, p0) = fit_schedule(&costs(0.0), cap, warmup_cap, budget_seconds);
    let plan_for = |epochs, warmup, predicted, save_seconds| SchedulePlan {
        budget_minutes: budget_seconds / 60.0,
        epochs_cap: cap,
        warmup_cap,
        epochs,
        warmup_epochs: warmup,
        steps_per_epoch,
        step_seconds,
        timed_steps: ends.len().saturating_sub(1).max(1),
        eval_seconds,
        save_seconds,
        planned_at_seconds: t_start.elapsed().as_secs_f64(),
        predicted_seconds: predicted,
        planned_at_step: global_step,
    };
    let apply = |opts: &mut TrainOptions, plan: SchedulePlan| {
        opts.recipe.epochs = plan.epochs;
        opts.recipe.warmup_epochs = plan.warmup_epochs;
        let why = format!(
            "{:.1} min budget: {} steps/epoch x {:.3} s, val {:.2} s, save {:.2} s",
            plan.budget_minutes,
            plan.steps_per_epoch,
            plan.step_seconds,
            plan.eval_seconds,
            plan.save_seconds
        );
        opts.settings.insert(
            "epochs".into(),
            Setting::new(plan.epochs, Source::Plan).because(why.clone()),
        );
        opts.settings.insert(
            "warmup_epochs".into(),
            Setting::new(plan.warmup_epochs, Source::Plan).because(why),
        );
        opts.plan = Some(plan);
    };
    apply(opts, plan_for(e0, w0, p0, 0.0));
    let t = Instant::now();
    save(opts)?;
    let save_seconds = t.elapsed().as_secs_f64();
    let (epochs, warmup, predicted) =
        fit_schedule(&costs(save_seconds), cap, warmup_cap, budget_seconds);
    let plan = plan_for(epochs, warmup, predicted, save_seconds);
    apply(opts, plan.clone());
    if (epochs, warmup) != (e0, w0) {
        save(opts)?;
    }
    let fits = predicted <= budget_seconds;
    tracing::info!(
        "schedule fitted to {:.1} min: {epochs} of {cap} epochs, warm-up {warmup} \
         ({steps_per_epoch} steps/epoch at {step_seconds:.3} s, val {eval_seconds:.2} s, \
         save {save_seconds:.2} s; predicted {predicted:.0} s)",
        plan.budget_minutes
    );
    if !fits {
        tracing::warn!(
            "even one epoch is predicted to take longer than --max-minutes {:.1}: the run will \
             stop at the limit mid-schedule",
            plan.budget_minutes
        );
    }
    Ok(plan)
}

/// Copy a checkpoint directory atomically (temporary sibling, then rename).
fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    let parent = dst.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".best.")
        .tempdir_in(parent)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        std::fs::copy(e.path(), tmp.path().join(e.file_name()))?;
    }
    let tmp = tmp.keep();
    let old = parent.join(".best.old");
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(dst, &old)?;
    }
    std::fs::rename(&tmp, dst)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Read the options of an existing run (for `--resume`).
pub fn read_options(out: &Path) -> Result<TrainOptions> {
    let p = out.join("last").join(checkpoint::TRAIN_FILE);
    let json: TrainJson = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
    )
    .with_context(|| format!("{}: not a sen-train train.json", p.display()))?;
    Ok(json.options)
}

/// Load a checkpoint's encoders for evaluation.
pub fn load_for_eval(ckpt: &Path, device: Device) -> Result<(nn::VarStore, Sen)> {
    let dir = checkpoint::resolve(ckpt)?;
    let cfg = checkpoint::read_config(&dir)?;
    let mut vs = nn::VarStore::new(device);
    let model = Sen::new(&vs.root(), &cfg, None, false);
    let src: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.join(checkpoint::MODEL_FILE))
            .with_context(|| format!("reading {}", dir.join(checkpoint::MODEL_FILE).display()))?
            .into_iter()
            .filter(|(k, _)| !k.starts_with("tir.") && !k.starts_with("id_head."))
            .collect();
    crate::import::copy_named(&mut vs, &src, &[]).with_context(|| format!("{}", dir.display()))?;
    Ok((vs, model))
}

#[cfg(test)]
mod tests {
    use super::{
        LossScaler, MAX_NONFINITE_IN_A_ROW, NonFiniteGuard, StepCosts, StepLosses, fit_schedule,
        warn_truncated,
    };

    #[test]
    fn a_non_finite_loss_skips_the_step_until_too_many_in_a_row() {
        let mut g = NonFiniteGuard::default();
        let mut skips = 0u64;
        let finite = StepLosses {
            total: 1.5,
            ..Default::default()
        };
        let nan = StepLosses {
            total: f64::NAN,
            ..Default::default()
        };
        let inf = StepLosses {
            total: f64::INFINITY,
            ..Default::default()
        };
        assert!(g.check(&finite, 1, &mut skips).unwrap());
        assert!(!g.check(&nan, 2, &mut skips).unwrap());
        assert!(!g.check(&inf, 3, &mut skips).unwrap());
        assert_eq!(skips, 2);
        // A finite loss resets the run of bad ones but not the count.
        assert!(g.check(&finite, 4, &mut skips).unwrap());
        assert_eq!(skips, 2);
        for step in 0..MAX_NONFINITE_IN_A_ROW - 1 {
            assert!(!g.check(&nan, 5 + step as u64, &mut skips).unwrap());
        }
        let err = g.check(&nan, 99, &mut skips).unwrap_err().to_string();
        assert!(
            err.contains("step 99")
                && err.contains(&format!("{MAX_NONFINITE_IN_A_ROW} steps in a row")),
            "{err}"
        );
        assert_eq!(skips, 2 + MAX_NONFINITE_IN_A_ROW as u64);
    }

    #[test]
    fn the_plan_fits_the_budget_by_hand() {
        // 100 steps/epoch at 0.1 s, 13 steps done, 10 s elapsed, save 0.5 s per epoch,
        // val 2 s every 5 epochs and after the last. Cost of E epochs:
        // 10 + (100 E - 13) 0.1 + 0.5 E + 2 ceil(E / 5) = 8.7 + 10.5 E + 2 ceil(E / 5).
        // Budget 600 s: usable 600 x 0.97 - 2 = 580. E = 52: 8.7 + 546 + 22 = 576.7 fits;
        // E = 53: 8.7 + 556.5 + 22 = 587.2 does not.
        let c = StepCosts {
            steps_per_epoch: 100,
            steps_done: 13,
            step_seconds: 0.1,
            eval_seconds: 2.0,
            eval_every: 5,
            save_seconds: 0.5,
            elapsed_seconds: 10.0,
        };
        assert!((c.total(52) - 576.7).abs() < 1e-9);
        assert!((c.total(53) - 587.2).abs() < 1e-9);
        let (e, w, predicted) = fit_schedule(&c, 60, 5, 600.0);
        // Warm-up 5 of 60 epochs scales to round(5 x 52 / 60) = round(4.33) = 4.
        assert_eq!((e, w), (52, 4));
        assert!((predicted - 576.7).abs() < 1e-9);
        // A budget that holds the whole recipe keeps it (never more than asked for).
        assert_eq!(fit_schedule(&c, 60, 5, 3600.0).0, 60);
        // A budget too small for one epoch still plans one (and the run warns).
        assert_eq!(fit_schedule(&c, 60, 5, 5.0), (1, 0, c.total(1)));
        // Two epochs: warm-up at least 1 but below the epochs.
        assert_eq!(fit_schedule(&c, 60, 5, 40.0).0, 2);
        assert_eq!(fit_schedule(&c, 60, 5, 40.0).1, 1);
    }

    #[test]
    fn best_is_chosen_on_val_r1_then_map() {
        let mut p = super::Progress::default();
        assert!(p.improves(10.0, 5.0));
        (p.best_r1, p.best_map) = (Some(40.25), Some(45.0));
        assert!(p.improves(40.5, 1.0));
        assert!(!p.improves(40.0, 99.0));
        assert!(p.improves(40.25, 46.4));
        assert!(!p.improves(40.25, 45.0));
        // A checkpoint from before mAP was recorded: an equal R@1 wins.
        p.best_map = None;
        assert!(p.improves(40.25, 0.0));
    }

    #[test]
    fn truncated_captions_are_counted() {
        // "a man" is SOT + 2 + EOT = 4 ids; the other needs more than a context of 6.
        let tok =
            sen_core::ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path().unwrap(), 6)
                .unwrap();
        let caps = [
            "a man",
            "a woman in a red coat with a black bag",
            "a red coat",
        ];
        assert_eq!(warn_truncated(&tok, caps.into_iter()).unwrap(), 1);
        assert_eq!(warn_truncated(&tok, caps[..1].iter().copied()).unwrap(), 0);
    }

    #[test]
    fn loss_scaler_halves_on_overflow_and_grows_after_2000_clean_steps() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        s.overflow();
        assert_eq!(s.scale, 32768.0);
        for _ in 0..1999 {
            s.good_step();
        }
        assert_eq!(s.scale, 32768.0);
        s.good_step();
        assert_eq!(s.scale, 65536.0);
        for _ in 0..40 {
            s.overflow();
        }
        assert_eq!(s.scale, 1.0, "never below 1");
    }
}
