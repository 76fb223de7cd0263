//! `sen-calibrate --bundle BUNDLE --dataset ROOT --out BUNDLE_INT8 [...]`.

use clap::Parser;
use sen_calibrate::model::Selection;
use sen_calibrate::stats::Method;
use sen_calibrate::{CalibrateOptions, CalibrationReport, WeightBits};
use sen_core::data::{DatasetFormat, Split};
use sen_runtime::providers::{ProviderKind, ProviderOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sen-calibrate",
    version,
    about = "INT8 post-training quantisation of a SEN bundle (Q/DQ models, TensorRT calibration caches, report)",
    long_about = "INT8 post-training quantisation of a SEN bundle.\n\n\
        Runs the fp32 encoders over calibration images and captions (prepared by the same \
        preprocessing and tokenizer as serving), collects the range of every tensor that \
        feeds a MatMul, Gemm or Conv, and writes an int8 bundle: Q/DQ models (weights per \
        output channel, activations per tensor, LayerNorm/Softmax/GELU/residuals in float), \
        the fp32 models with TensorRT calibration caches under implicit/, and \
        calibration_report.json comparing int8 with fp32 on a held-out split."
)]
struct Cli {
    /// The fp32 bundle to quantise.
    #[arg(long)]
    bundle: PathBuf,
    /// Dataset root (CUHK-PEDES, ICFG-PEDES or RSTPReid layout).
    #[arg(long)]
    dataset: PathBuf,
    /// Dataset format (default: detected from the annotation file).
    #[arg(long)]
    format: Option<DatasetFormat>,
    /// Split the calibration images and captions come from.
    #[arg(long, default_value = "train")]
    split: Split,
    /// Images (and captions) to calibrate on; fewer available: all of them (logged).
    #[arg(long, default_value_t = 512)]
    samples: usize,
    /// How each activation's range is chosen.
    #[arg(long, default_value = "entropy")]
    method: Method,
    /// percentile: the share of |x| kept inside the range, in percent.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// Histogram bins per tensor (percentile, entropy; a power of two >= 256).
    #[arg(long, default_value_t = sen_calibrate::stats::DEFAULT_BINS)]
    bins: usize,
    /// Leave every node of this op type (MatMul, Gemm, Conv) in float; repeatable.
    #[arg(long, value_name = "OP")]
    exclude_op: Vec<String>,
    /// Leave this node in float (a trailing * matches any suffix); repeatable.
    #[arg(long, value_name = "NODE")]
    exclude_node: Vec<String>,
    /// Weight precision of the Q/DQ encoders: 8, 7 (ONNX Runtime's reduce_range) or
    /// auto: 7 where this CPU's int8 kernels saturate 16-bit sums (x86-64 without
    /// VNNI), else 8. Give 7 for a bundle that will run on such a CPU.
    #[arg(long, default_value = "auto", value_name = "auto|8|7")]
    weight_bits: String,
    /// The most R@1 points the int8 bundle may lose against fp32 on the val split (never
    /// test): when the --method misses it, the other methods are tried, then the layers
    /// whose quantisation costs most are kept in float until it is met; when even that
    /// misses, no bundle is written (the search goes to OUT.calibration_report.json).
    /// `none`: no check.
    #[arg(
        long,
        default_value = "1.0",
        value_name = "R1_POINTS|none",
        allow_hyphen_values = true
    )]
    max_drop: String,
    /// With --max-drop: the most layers kept in float before giving up (default: half
    /// of the quantised layers).
    #[arg(long, value_name = "N")]
    max_float_layers: Option<usize>,
    /// Also quantise MatMuls of two activations (attention's Q·Kᵀ and P·V).
    #[arg(long)]
    activation_matmuls: bool,
    /// Where the fp32 encoders run: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    provider: ProviderKind,
    /// CUDA device.
    #[arg(long, default_value_t = 0)]
    device_id: i32,
    /// CPU intra-op threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Batch size of the collection pass (memory grows with it: every quantised tensor
    /// of a batch is held at once).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Held-out split for the int8-vs-fp32 comparison, or `none`.
    #[arg(long, default_value = "test")]
    eval_split: String,
    /// Batch size of the image-encoder timing (fp32 vs int8), or 0 to skip it.
    #[arg(long, default_value_t = 8)]
    time_batch: usize,
    /// Seed of the calibration sample choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// TensorRT version in the calibration caches' header (MAJOR.MINOR.PATCH).
    #[arg(long, default_value = "10.13.3")]
    trt_version: String,
    /// The int8 bundle to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out bundle.
    #[arg(long)]
    force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The libonnxruntime.so to load (a GPU build for --provider cuda).
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
}

fn parse_version(s: &str) -> anyhow::Result<(u32, u32, u32)> {
    let parts: Vec<u32> = s
        .split('.')
        .map(|p| p.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            anyhow::anyhow!("--trt-version {s}: expected MAJOR.MINOR.PATCH such as 10.13.3")
        })?;
    match parts[..] {
        [a, b, c] => Ok((a, b, c)),
        [a, b] => Ok((a, b, 0)),
        _ => anyhow::bail!("--trt-version {s}: expected MAJOR.MINOR.PATCH such as 10.13.3"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(p) = cli.ort_lib {
        sen_runtime::onnxruntime::set_library_path(p)?;
    }
    if cli.provider == ProviderKind::TensorRt {
        anyhow::bail!(
            "--provider tensorrt: calibration runs the fp32 encoders on cpu or cuda; TensorRT \
             then builds the int8 bundle (`sen build-engines BUNDLE_INT8`)"
        );
    }
    let mut provider = ProviderOptions::new(cli.provider);
    provider.device_id = cli.device_id;
    provider.threads = cli.threads;
    let mut opts = CalibrateOptions::new(&cli.dataset);
    opts.format = cli.format;
    opts.split = cli.split;
    opts.samples = cli.samples;
    opts.method = cli.method;
    opts.percentile = cli.percentile;
    opts.bins = cli.bins;
    opts.selection = Selection {
        exclude_ops: cli.exclude_op,
        exclude_nodes: cli.exclude_node,
        activation_matmuls: cli.activation_matmuls,
    };
    opts.provider = provider;
    opts.batch = cli.batch;
    opts.eval_split = match cli.eval_split.as_str() {
        "none" => None,
        s => Some(s.parse::<Split>()?),
    };
    opts.time_batch = (cli.time_batch > 0).then_some(cli.time_batch);
    opts.seed = cli.seed;
    opts.trt_version = parse_version(&cli.trt_version)?;
    opts.force = cli.force;
    opts.weight_bits = match cli.weight_bits.as_str() {
        "auto" => None,
        "8" => Some(WeightBits::Eight),
        "7" => Some(WeightBits::Seven),
        other => anyhow::bail!(
            "--weight-bits {other}: expected auto, 8 or 7 (7 for x86-64 CPUs without VNNI)"
        ),
    };
    opts.max_drop = match cli.max_drop.as_str() {
        "none" => None,
        s => match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
            _ => anyhow::bail!(
                "--max-drop {s}: expected R@1 points >= 0 on the val split (such as 1.0), or none"
            ),
        },
    };
    opts.max_float = cli.max_float_layers;
    let r = sen_calibrate::calibrate(&cli.bundle, &cli.out, &opts)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_summary(&r);
    }
    Ok(())
}

fn print_summary(r: &CalibrationReport) {
    println!(
        "wrote {} (int8, {}{}) from {} in {:.1} s: {} images + {} captions of the {} split",
        r.bundle.display(),
        r.method,
        r.percentile.map(|p| format!(" {p}%")).unwrap_or_default(),
        r.source_bundle.display(),
        r.seconds,
        r.images,
        r.captions,
        r.split
    );
    println!("  {}-bit weights: {}", r.weight_bits, r.weight_bits_why);
    for e in [&r.image, &r.text] {
        println!(
            "  {:<20} {} nodes quantised ({} weights per channel, {} activations per tensor), {} left in float",
            e.model,
            e.quantized_nodes.len(),
            e.weights,
            e.activations.len(),
            e.float_nodes.len()
        );
    }
    if let Some(c) = &r.evaluation {
        println!("  {} split on {}:", c.split, c.provider);
        println!("    fp32  {}", c.fp32);
        println!("    int8  {}", c.int8);
        println!(
            "    R@1 drop {:.2} points; cosine int8 vs fp32: image mean {:.5} min {:.5}, text mean {:.5} min {:.5}",
            c.r1_drop,
            c.image_cosine.mean,
            c.image_cosine.min,
            c.text_cosine.mean,
            c.text_cosine.min
        );
    }
    if let Some(a) = &r.accuracy {
        let tried: Vec<String> = a
            .methods
            .iter()
            .map(|m| format!("{} {:.2}", m.method, m.r1_drop))
            .collect();
        println!(
            "  --max-drop {:.2} on val (fp32 R@1 {:.2}): methods tried (R@1 drop) {}; {} with {} layer(s) in float loses {:.2}",
            a.budget_r1,
            a.fp32.r1,
            tried.join(", "),
            a.method,
            a.kept_float.len(),
            a.r1_drop
        );
        for l in &a.kept_float {
            println!("    kept in float: {l}");
        }
        if let Some(s) = &a.speed {
            println!(
                "    image encoder, batch {} on {}: all int8 {:.2} ms, with those in float {:.2} ms ({:.2}x)",
                s.batch, s.provider, s.all_int8_ms, s.with_float_ms, s.slowdown
            );
        }
    }
    if let Some(s) = &r.speed {
        println!(
            "  image encoder, batch {} on {}: fp32 {:.2} ms, int8 {:.2} ms ({:.2}x)",
            s.batch, s.provider, s.fp32_ms, s.int8_ms, s.speedup
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!(
        "  report: {}",
        r.bundle.join(sen_calibrate::REPORT_FILE).display()
    );
}

fn main() {
    sen_runtime::init_logging();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
