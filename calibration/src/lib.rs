//! `sen-calibrate`: INT8 post-training quantisation of a bundle's encoders (SPEC §9).
//!
//! From an fp32 bundle and a dataset split it writes an int8 bundle holding
//! - explicit-quantisation models: symmetric int8 QuantizeLinear/DequantizeLinear on
//!   the inputs of every MatMul/Gemm/Conv (weights per output channel, activations
//!   per tensor; LayerNorm, Softmax, GELU and residual Adds left in float), which
//!   ONNX Runtime's CPU provider runs with integer kernels and TensorRT 10/11 builds
//!   as INT8 ([`model`]);
//! - under `implicit/`, the fp32 models with a TensorRT calibration cache each, for
//!   TensorRT builds that calibrate implicitly ([`trtcache`]);
//! - `calibration_report.json`: every quantised tensor's range and scale, and the
//!   int8 bundle against the fp32 one on a held-out split (metrics, embedding
//!   cosines, batch-8 image-encoder latency).
//!
//! Ranges come from one batched pass of the fp32 encoders over calibration images
//! and captions prepared by `sen-core` ([`collect`]); [`stats`] holds the three
//! methods (minmax, percentile, entropy).
//!
//! Like `export` and `runtime`, this crate never links libtorch.

pub mod budget;
pub mod collect;
pub mod model;
pub mod stats;
pub mod trtcache;

use model::{Plan, Selection};
use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_core::manifest::{CalibrationInfo, EncoderIo, Manifest, Precision};
use sen_core::metrics::RetrievalMetrics;
use sen_core::{ClipTokenizer, CoreError, PreprocessSpec, Preprocessor};
use sen_export::proto::ModelProto;
use sen_runtime::encoders::Encoders;
use sen_runtime::providers::ProviderOptions;
use serde::Serialize;
use stats::Method;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The report written into the int8 bundle.
pub const REPORT_FILE: &str = "calibration_report.json";
/// The folder of the implicit-calibration models and caches inside an int8 bundle and
/// a cache's name: the runtime's, which reads them.
pub use sen_runtime::providers::{IMPLICIT_DIR, calibration_cache_name};

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Runtime(#[from] sen_runtime::RuntimeError),
    #[error(transparent)]
    Export(#[from] sen_export::ExportError),
}

impl CalibrateError {
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        CalibrateError::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    pub dataset: PathBuf,
    pub format: Option<DatasetFormat>,
    /// Split the calibration data comes from.
    pub split: Split,
    /// Images (and captions) to calibrate on.
    pub samples: usize,
    pub method: Method,
    /// For `percentile`: the share of |x| kept inside the range, in percent.
    pub percentile: f64,
    /// Histogram bins per tensor (power of two >= 256).
    pub bins: usize,
    pub selection: Selection,
    /// Where the fp32 encoders run (CPU or CUDA) for collection, evaluation and timing.
    pub provider: ProviderOptions,
    /// Batch size of the collection pass.
    pub batch: usize,
    /// Held-out split for the int8-vs-fp32 comparison (None: skip it).
    pub eval_split: Option<Split>,
    /// Time the image encoders at this batch size (None: skip).
    pub time_batch: Option<usize>,
    /// Seed of the sample choice.
    pub seed: u64,
    /// TensorRT version written into the calibration caches' header.
    pub trt_version: (u32, u32, u32),
    /// Replace an existing output bundle.
    pub force: bool,
    /// Weight precision of the Q/DQ encoders; None: from the CPU calibrated on
    /// ([`choose_weight_bits`]).
    pub weight_bits: Option<WeightBits>,
    /// The accuracy budget: the most R@1 points the int8 bundle may lose against fp32
    /// on the val split ([`budget`]); None: no check.
    pub max_drop: Option<f64>,
    /// With `max_drop`: the most layers kept in float (None: half of the quantised).
    pub max_float: Option<usize>,
}

pub use sen_runtime::int8cpu::{CpuInt8, WeightBits};

/// The weight precision and why: a flag wins; otherwise 7 bits where ONNX Runtime's
/// CPU kernels on this machine saturate 16-bit sums (x86-64 without VNNI), 8 elsewhere.
/// Calibrating on the CPU provider is calibrating for the CPU class the bundle is
/// evaluated on here; a bundle for another class takes `--weight-bits`.
pub fn choose_weight_bits(flag: Option<WeightBits>, cpu: CpuInt8) -> (WeightBits, String) {
    match flag {
        Some(b) => (b, format!("--weight-bits {}", b.bits())),
        None => {
            let b = cpu.weight_bits();
            let why = match b {
                WeightBits::Seven => format!(
                    "calibrated on {}: 7-bit weights (ONNX Runtime's reduce_range) keep every pair sum in range",
                    cpu.describe()
                ),
                WeightBits::Eight => format!("calibrated on {}", cpu.describe()),
            };
            (b, why)
        }
    }
}

impl CalibrateOptions {
    pub fn new(dataset: &Path) -> Self {
        CalibrateOptions {
            dataset: dataset.to_path_buf(),
            format: None,
            split: Split::Train,
            samples: 512,
            method: Method::Entropy,
            percentile: 99.99,
            bins: stats::DEFAULT_BINS,
            selection: Selection::default(),
            provider: ProviderOptions::cpu(),
            batch: 16,
            eval_split: Some(Split::Test),
            time_batch: Some(8),
            seed: 0,
            trt_version: DEFAULT_TRT_VERSION,
            force: false,
            weight_bits: None,
            max_drop: Some(1.0),
            max_float: None,
        }
    }
}

/// The TensorRT release ONNX Runtime 1.31's TensorRT provider is built against.
pub const DEFAULT_TRT_VERSION: (u32, u32, u32) = (10, 13, 3);

#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub name: String,
    /// Nodes whose input this tensor is.
    pub consumers: Vec<String>,
    pub min: f32,
    pub max: f32,
    /// The chosen symmetric threshold and its scale (amax / 127).
    pub amax: f32,
    pub scale: f32,
    /// Share of the calibration values beyond amax (clipped), from the histogram.
    pub clipped: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EncoderReport {
    pub model: String,
    pub quantized_nodes: Vec<String>,
    /// Nodes of a quantised op type left in float, and why.
    pub float_nodes: Vec<(String, String)>,
    pub weights: usize,
    pub activations: Vec<TensorReport>,
    pub ops_before: BTreeMap<String, usize>,
    pub ops_after: BTreeMap<String, usize>,
    pub collect_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cosine {
    pub mean: f64,
    pub min: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub split: String,
    pub provider: String,
    pub fp32: RetrievalMetrics,
    pub int8: RetrievalMetrics,
    /// fp32 R@1 minus int8 R@1, in points.
    pub r1_drop: f64,
    pub image_cosine: Cosine,
    pub text_cosine: Cosine,
}

#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub provider: String,
    pub batch: usize,
    /// Median over alternating rounds of the image encoder's run time.
    pub fp32_ms: f64,
    pub int8_ms: f64,
    /// fp32 / int8: above 1 means int8 is faster.
    pub speedup: f64,
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    pub source_bundle: PathBuf,
    pub bundle: PathBuf,
    pub method: Method,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    pub bins: usize,
    pub split: String,
    pub samples_requested: usize,
    pub images: usize,
    pub captions: usize,
    pub data_sha256: String,
    pub activation_matmuls: bool,
    pub exclude_ops: Vec<String>,
    pub exclude_nodes: Vec<String>,
    /// 8 or 7 (see [`choose_weight_bits`]) and why.
    pub weight_bits: u8,
    pub weight_bits_why: String,
    pub image: EncoderReport,
    pub text: EncoderReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Comparison>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<Speed>,
    /// The `--max-drop` search on val: methods tried, layers kept in float.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<budget::AccuracyReport>,
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// Refuse what cannot be calibrated, with what to do instead.
fn check_source(dir: &Path, m: &Manifest) -> Result<(), CalibrateError> {
    match m.precision {
        Precision::Fp32 => {}
        Precision::Int8 => {
            let how = m
                .calibration
                .as_ref()
                .map(|c| format!(" (calibrated with {} on {} samples)", c.method, c.samples))
                .unwrap_or_default();
            return Err(CalibrateError::Input(format!(
                "{}: the bundle is already int8{how}; calibrate the fp32 bundle it was made from",
                dir.display()
            )));
        }
        Precision::Fp16 => {
            return Err(CalibrateError::Input(format!(
                "{}: an fp16 bundle; calibrate the fp32 export of the same checkpoint (sen-export without --fp16)",
                dir.display()
            )));
        }
    }
    // The bundle's preprocessing is its model's (SPEC §3): its filter may be bicubic
    // or bilinear (`Manifest::load` validated the block), but its size must be the
    // model's input.
    let expected = (m.model.vision.image_height, m.model.vision.image_width);
    if (m.preprocess.height, m.preprocess.width) != expected {
        return Err(CalibrateError::Input(format!(
            "{}: the manifest's preprocess {} is not the {}x{} its model takes; calibration \
             data prepared this way would not match serving or training: re-export the bundle",
            dir.join(sen_core::manifest::MANIFEST_FILE).display(),
            serde_json::to_string(&m.preprocess).unwrap_or_default(),
            expected.0,
            expected.1
        )));
    }
    Ok(())
}

/// Check the graph's image input has the manifest's preprocessing size.
fn check_image_input(
    model: &ModelProto,
    io: &EncoderIo,
    pre: &PreprocessSpec,
) -> Result<(), CalibrateError> {
    use sen_export::proto::DimValue;
    let g = model.graph.as_ref().expect("checked at load");
    let input = g
        .input
        .iter()
        .find(|v| v.name == io.inputs[0].name)
        .ok_or_else(|| {
            CalibrateError::Input(format!(
                "{}: the graph has no input {} (the manifest's io section names it)",
                io.file, io.inputs[0].name
            ))
        })?;
    let dims: Vec<Option<i64>> = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(DimValue::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // [batch (any), 3, H, W]
    let want = [Some(3), Some(pre.height as i64), Some(pre.width as i64)];
    if dims.len() != 4 || dims[1..] != want {
        return Err(CalibrateError::Input(format!(
            "{}: input {} has shape {dims:?}, but the manifest's preprocess makes [batch, 3, {}, {}]: \
             the manifest does not describe this model; re-export the bundle",
            io.file, io.inputs[0].name, pre.height, pre.width
        )));
    }
    Ok(())
}

/// Runs the range-collection pass of one encoder on its augmented session.
type CollectFn<'a> = dyn Fn(
        &mut ort::session::Session,
        &Plan,
        &mut dyn FnMut(usize),
    ) -> Result<collect::Collected, CalibrateError>
    + 'a;

/// One encoder's fp32 model, its plan and the ranges collected for it.
struct Ranged {
    io: EncoderIo,
    model: ModelProto,
    plan: Plan,
    collected: collect::Collected,
    seconds: f64,
    /// Each tensor's threshold per method, computed once (the entropy search is the
    /// expensive part of quantising, and `--max-drop` quantises many times).
    amax: std::sync::Mutex<BTreeMap<(&'static str, String), f32>>,
}

impl Ranged {
    fn amax(&self, name: &str, method: Method, percentile: f64) -> f32 {
        let key = (method.name(), name.to_string());
        let mut cache = self.amax.lock().unwrap_or_else(|e| e.into_inner());
        *cache
            .entry(key)
            .or_insert_with(|| self.collected[name].amax(method, percentile))
    }
}

pub(crate) struct Quantized {
    pub(crate) model: ModelProto,
    report: EncoderReport,
    /// (tensor, scale) in graph order, for the TensorRT cache.
    scales: Vec<(String, f32)>,
}

/// Quantise one encoder with `method`'s ranges, leaving the nodes in `float` (by
/// name) in float.
fn finish_encoder(
    r: &Ranged,
    method: Method,
    opts: &CalibrateOptions,
    float: &BTreeSet<String>,
    metadata: &[(String, String)],
    weight_bits: WeightBits,
) -> Result<Quantized, CalibrateError> {
    let (model, io, collected, seconds) = (&r.model, &r.io, &r.collected, r.seconds);
    let g = model.graph.as_ref().expect("checked at load");
    let plan = &r.plan.keep_float(g, float, "kept in float for --max-drop");
    // The method of this quantisation (`--max-drop` may pick another than --method).
    let metadata: Vec<(String, String)> =
        [("sen.calibration.method".to_string(), method.to_string())]
            .into_iter()
            .chain(metadata.iter().cloned())
            .collect();
    let consumers = plan.consumers(g);
    let mut ordered = vec![];
    let mut tensors = vec![];
    for name in plan.activations() {
        let s = &collected[&name];
        let amax = r.amax(&name, method, opts.percentile);
        let scale = stats::scale_for(amax);
        let h = &s.hist;
        let beyond: u64 = h
            .counts
            .iter()
            .enumerate()
            .filter(|&(i, _)| i as f64 * h.width >= amax as f64 && amax > 0.0)
            .map(|(_, c)| c)
            .sum();
        tensors.push(TensorReport {
            name: name.clone(),
            consumers: consumers.get(&name).cloned().unwrap_or_default(),
            min: s.min,
            max: s.max,
            amax,
            scale,
            clipped: if s.count > 0 {
                beyond as f64 / s.count as f64
            } else {
                0.0
            },
        });
        ordered.push((name, scale));
    }
    let scales: BTreeMap<String, f32> = ordered.iter().cloned().collect();
    let q = model::quantize_model(model, plan, &scales, &metadata, weight_bits.qmax())?;
    let weights = plan
        .nodes
        .values()
        .flatten()
        .filter(|(_, t)| matches!(t, model::Target::Weight { .. }))
        .count();
    let report = EncoderReport {
        model: io.file.clone(),
        quantized_nodes: plan.nodes.keys().map(|&i| g.node[i].name.clone()).collect(),
        float_nodes: plan.skipped.clone(),
        weights,
        activations: tensors,
        ops_before: model::op_counts(g),
        ops_after: model::op_counts(q.graph.as_ref().expect("graph")),
        collect_seconds: seconds,
    };
    Ok(Quantized {
        model: q,
        report,
        scales: ordered,
    })
}

/// Write an int8 bundle into `dir` from the quantised encoders: the Q/DQ models, with
/// `implicit` the fp32 models and their TensorRT calibration caches under
/// `implicit/`, the tokenizer, and the manifest (the caller adds the report).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_bundle(
    bundle: &Path,
    manifest: &Manifest,
    dir: &Path,
    encoders: [&Quantized; 2],
    implicit: bool,
    info: &CalibrationInfo,
    data: Option<&collect::CalibrationData>,
    opts: &CalibrateOptions,
) -> Result<Manifest, CalibrateError> {
    let implicit_dir = dir.join(IMPLICIT_DIR);
    if implicit {
        std::fs::create_dir_all(&implicit_dir).map_err(|e| CalibrateError::io(&implicit_dir, e))?;
    }
    let mut files: Vec<String> = vec![];
    for (q, io) in encoders
        .into_iter()
        .zip([&manifest.io.image, &manifest.io.text])
    {
        files.extend(sen_export::write_model(
            q.model.clone(),
            dir,
            &io.file,
            sen_export::PROTOBUF_LIMIT,
        )?);
        if !implicit {
            continue;
        }
        // The fp32 model (and its external data) with its TensorRT calibration cache.
        for name in [io.file.clone(), format!("{}.data", io.file)] {
            if manifest.files.contains_key(&name) {
                let to = format!("{IMPLICIT_DIR}/{name}");
                std::fs::copy(bundle.join(&name), dir.join(&to))
                    .map_err(|e| CalibrateError::io(bundle.join(&name), e))?;
                files.push(to);
            }
        }
        let cache = format!("{IMPLICIT_DIR}/{}", calibration_cache_name(&io.file));
        let text = trtcache::write(opts.trt_version, &q.scales)?;
        sen_core::fsutil::write_atomic(&dir.join(&cache), text.as_bytes())?;
        files.push(cache);
    }
    let tok_file = &manifest.tokenizer.file;
    std::fs::copy(bundle.join(tok_file), dir.join(tok_file))
        .map_err(|e| CalibrateError::io(bundle.join(tok_file), e))?;
    files.push(tok_file.clone());

    let mut m = manifest.clone();
    m.precision = Precision::Int8;
    m.calibration = Some(info.clone());
    m.tools
        .insert("sen-calibrate".into(), env!("CARGO_PKG_VERSION").into());
    if let Some(data) = data {
        m.tools.insert(
            "sen-calibrate-options".into(),
            format!(
                "split={},images={},captions={},percentile={},bins={},activation_matmuls={},trt_cache_version={}",
                data.split.name(),
                data.images.len(),
                data.captions.len(),
                opts.percentile,
                opts.bins,
                opts.selection.activation_matmuls,
                trtcache::tensorrt_version_number(opts.trt_version)
            ),
        );
    }
    m.files.clear();
    // A score calibration is bound to the fp32 encoders: the int8 ones need their own.
    m.score_calibration = None;
    for f in &files {
        m.add_file(dir, f)?;
    }
    m.save(dir)?;
    Manifest::load(dir)?;
    Ok(m)
}

fn progress_bar(total: usize, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>18} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Calibrate the fp32 bundle `bundle` into the int8 bundle `out` (written into a
/// temporary sibling and renamed: a failure leaves nothing half-written, and with
/// `force` the old bundle stays until the new one is complete).
pub fn calibrate(
    bundle: &Path,
    out: &Path,
    opts: &CalibrateOptions,
) -> Result<CalibrationReport, CalibrateError> {
    let t0 = Instant::now();
    if out.exists() && !opts.force {
        return Err(CalibrateError::Input(format!(
            "{}: already exists; choose another --out or pass --force to replace it",
            out.display()
        )));
    }
    if !(opts.percentile > 0.0 && opts.percentile <= 100.0) {
        return Err(CalibrateError::Input(format!(
            "--percentile {}: must be in (0, 100]",
            opts.percentile
        )));
    }
    if opts.bins < 256 || !opts.bins.is_power_of_two() {
        return Err(CalibrateError::Input(format!(
            "--bins {}: must be a power of two of at least 256",
            opts.bins
        )));
    }
    if opts.batch == 0 {
        return Err(CalibrateError::Input("--batch must be at least 1".into()));
    }
    let manifest = Manifest::load(bundle)?;
    check_source(bundle, &manifest)?;
    let ds = Dataset::load(&opts.dataset, opts.format)?;
    if let Some(max_drop) = opts.max_drop {
        // Before the range collection, which is the long part.
        budget::check(max_drop, opts, &ds)?;
    }
    let data = collect::select(&ds, opts.split, opts.samples, opts.seed)?;
    let mut notes = data.notes.clone();
    tracing::info!(
        "calibrating on {} images and {} captions of the {} split ({}), method {}",
        data.images.len(),
        data.captions.len(),
        data.split.name(),
        ds.root.display(),
        opts.method
    );
    sen_runtime::encoders::start_provider(&opts.provider)?;
    let (weight_bits, weight_bits_why) = choose_weight_bits(opts.weight_bits, CpuInt8::detect());
    tracing::info!("{}-bit weights: {weight_bits_why}", weight_bits.bits());

    let metadata = vec![
        (
            "sen.calibration.weight_bits".to_string(),
            weight_bits.bits().to_string(),
        ),
        (
            "sen.calibration.samples".to_string(),
            data.images.len().to_string(),
        ),
        (
            "sen.calibration.data_sha256".to_string(),
            data.sha256.clone(),
        ),
    ];
    let pre = Preprocessor::new(manifest.preprocess.clone())?;
    let tok = ClipTokenizer::from_file(
        &bundle.join(&manifest.tokenizer.file),
        manifest.tokenizer.context_length,
    )?;

    // One encoder: load, plan, collect ranges on an augmented copy.
    let encoder = |io: &EncoderIo,
                   what: &str,
                   count: usize,
                   collect: &CollectFn<'_>|
     -> Result<Ranged, CalibrateError> {
        let model = model::load_model(&bundle.join(&io.file))?;
        if what == "image" {
            check_image_input(&model, io, &manifest.preprocess)?;
        }
        let plan = model::plan(model.graph.as_ref().expect("graph"), &opts.selection)?;
        let t = Instant::now();
        let mut session = sen_runtime::encoders::session_from_memory(
            &model::augmented(&model, &plan),
            &format!("{} (range collection)", io.file),
            &opts.provider,
        )?;
        let pb = progress_bar(count, &format!("{what} encoder"));
        let collected = collect(&mut session, &plan, &mut |n| pb.inc(n as u64))?;
        pb.finish_and_clear();
        drop(session);
        Ok(Ranged {
            io: io.clone(),
            model,
            plan,
            collected,
            seconds: t.elapsed().as_secs_f64(),
            amax: Default::default(),
        })
    };
    let image = encoder(
        &manifest.io.image,
        "image",
        data.images.len(),
        &|session, plan, progress| {
            collect::collect_image(
                session,
                &manifest.io.image,
                plan,
                &pre,
                &data.images,
                opts.batch,
                opts.bins,
                progress,
            )
        },
    )?;
    let text = encoder(
        &manifest.io.text,
        "text",
        data.captions.len(),
        &|session, plan, progress| {
            collect::collect_text(
                session,
                &manifest.io.text,
                plan,
                &tok,
                &data.captions,
                opts.batch,
                opts.bins,
                progress,
            )
        },
    )?;
    let ranged = [image, text];
    let quantize =
        |i: usize, method: Method, float: &BTreeSet<String>| -> Result<Quantized, CalibrateError> {
            finish_encoder(&ranged[i], method, opts, float, &metadata, weight_bits)
        };
    let info = CalibrationInfo {
        method: opts.method.to_string(),
        samples: data.images.len(),
        data_sha256: data.sha256.clone(),
        weight_bits: weight_bits.bits(),
        weight_bits_why: Some(weight_bits_why.clone()),
    };

    // The accuracy budget on val: which method, which layers kept in float.
    let (method, float, accuracy) = match opts.max_drop {
        None => (opts.method, budget::FloatSet::default(), None),
        Some(budget) => {
            let search = budget::Search {
                bundle,
                manifest: &manifest,
                ds: &ds,
                data: &data,
                pre: &pre,
                tok: &tok,
                opts,
                budget,
                quantize: &quantize,
                info: &info,
                quantized_nodes: ranged.iter().map(|r| r.plan.nodes.len()).sum(),
            };
            let (method, float, report) = search.run(out)?;
            (method, float, Some(report))
        }
    };
    let image = quantize(0, method, &float[0])?;
    let text = quantize(1, method, &float[1])?;
    let info = CalibrationInfo {
        method: method.to_string(),
        ..info
    };

    // Write the bundle into a temporary sibling.
    let staged = sen_core::fsutil::StagedDir::new(out, "sen-calibrate")?;
    let dir = staged.path();
    let mut m = write_bundle(
        bundle,
        &manifest,
        dir,
        [&image, &text],
        true,
        &info,
        Some(&data),
        opts,
    )?;

    // int8 against fp32.
    let evaluation = match opts.eval_split {
        Some(split) => Some(compare(bundle, dir, &ds, split, &opts.provider)?),
        None => None,
    };
    let speed = match opts.time_batch {
        Some(b) => Some(time_image_encoders(bundle, dir, &ds, b, &opts.provider)?),
        None => None,
    };
    if let Some(c) = &evaluation
        && c.r1_drop > 1.0
    {
        let msg = format!(
            "R@1 drops {:.2} points on the {} split (fp32 {:.2}, int8 {:.2}): try another --method, \
             more --samples, or --exclude-node for the layers with the most clipping (see the report)",
            c.r1_drop, c.split, c.fp32.r1, c.int8.r1
        );
        tracing::warn!("{msg}");
        notes.push(msg);
    }

    let report = CalibrationReport {
        source_bundle: bundle.to_path_buf(),
        bundle: out.to_path_buf(),
        method,
        percentile: (method == Method::Percentile).then_some(opts.percentile),
        bins: opts.bins,
        split: data.split.name().into(),
        samples_requested: opts.samples,
        images: data.images.len(),
        captions: data.captions.len(),
        data_sha256: data.sha256.clone(),
        activation_matmuls: opts.selection.activation_matmuls,
        exclude_ops: opts.selection.exclude_ops.clone(),
        exclude_nodes: opts.selection.exclude_nodes.clone(),
        weight_bits: weight_bits.bits(),
        weight_bits_why,
        image: image.report,
        text: text.report,
        evaluation,
        speed,
        accuracy,
        notes,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).expect("report serialises");
    sen_core::fsutil::write_atomic(&dir.join(REPORT_FILE), json.as_bytes())?;
    m.add_file(dir, REPORT_FILE)?;
    m.save(dir)?;
    Manifest::load(dir)?;

    staged.commit()?;
    Ok(report)
}

fn cosine(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> Cosine {
    // Rows are unit vectors: the cosine is the dot product.
    let c: Vec<f64> = a
        .rows()
        .into_iter()
        .zip(b.rows())
        .map(|(x, y)| x.dot(&y) as f64)
        .collect();
    Cosine {
        mean: c.iter().sum::<f64>() / c.len().max(1) as f64,
        min: c.iter().copied().fold(f64::INFINITY, f64::min),
    }
}

/// Metrics of both bundles on `split` and the cosines between their embeddings.
pub fn compare(
    fp32: &Path,
    int8: &Path,
    ds: &Dataset,
    split: Split,
    provider: &ProviderOptions,
) -> Result<Comparison, CalibrateError> {
    // Gallery images encoded: the fp32 pass, then the int8 pass.
    let images = ds.split(split).count();
    let pb = progress_bar(2 * images, "fp32 vs int8");
    let a = Encoders::load(fp32, provider)?;
    let ea = sen_runtime::eval::evaluate(&a, ds, split, |n| pb.set_position(n as u64))?;
    drop(a);
    let b = Encoders::load(int8, provider)?;
    let eb = sen_runtime::eval::evaluate(&b, ds, split, |n| pb.set_position((images + n) as u64))?;
    pb.finish_and_clear();
    Ok(Comparison {
        split: split.name().into(),
        provider: provider.kind.to_string(),
        fp32: ea.metrics,
        int8: eb.metrics,
        r1_drop: ea.metrics.r1 - eb.metrics.r1,
        image_cosine: cosine(&ea.image_embeds, &eb.image_embeds),
        text_cosine: cosine(&ea.text_embeds, &eb.text_embeds),
    })
}

/// Image-encoder latency of both bundles at `batch`, in alternating rounds (so a
/// change in the machine's speed hits both alike); the inputs are real images of the
/// dataset's test split (or train when test is empty).
pub fn time_image_encoders(
    fp32: &Path,
    int8: &Path,
    ds: &Dataset,
    batch: usize,
    provider: &ProviderOptions,
) -> Result<Speed, CalibrateError> {
    use sen_runtime::encoders::ImageEncoder;
    if batch == 0 {
        return Err(CalibrateError::Input(
            "--time-batch must be at least 1".into(),
        ));
    }
    let split = if ds.split(Split::Test).next().is_some() {
        Split::Test
    } else {
        Split::Train
    };
    let set = ds.eval_set(split)?;
    let paths: Vec<&PathBuf> = set.images.iter().cycle().take(batch).collect();
    let a = ImageEncoder::load(fp32, provider)?;
    let b = ImageEncoder::load(int8, provider)?;
    let px = a.preprocessor.load_batch(&paths)?;
    let run = |e: &ImageEncoder| -> Result<f64, CalibrateError> {
        let t = Instant::now();
        e.encode(px.view())?;
        Ok(t.elapsed().as_secs_f64())
    };
    // Warm up; size rounds to about 0.25 s each.
    let mut first = 0.0;
    for _ in 0..3 {
        first = run(&a)?.max(run(&b)?);
    }
    let per_round = ((0.25 / first.max(1e-6)) as usize).clamp(1, 200);
    let rounds = 9;
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..rounds {
        for (e, out) in [(&a, &mut ta), (&b, &mut tb)] {
            let mut s = 0.0;
            for _ in 0..per_round {
                s += run(e)?;
            }
            out.push(s / per_round as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let (fa, fb) = (median(&mut ta), median(&mut tb));
    Ok(Speed {
        provider: provider.kind.to_string(),
        batch,
        fp32_ms: fa,
        int8_ms: fb,
        speedup: fa / fb,
        rounds,
    })
}
