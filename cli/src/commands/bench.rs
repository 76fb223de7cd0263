//! `sen bench`: latency percentiles and throughput of the encoders or the search.

use crate::common::{ProviderArgs, spinner};
use anyhow::{Context, Result, bail};
use sen_runtime::providers::ProviderKind;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Bundle directory (not needed with --search).
    #[arg(required_unless_present = "search")]
    bundle: Option<PathBuf>,
    /// Time the exact search instead of the encoders: ROWSxDIM random unit rows (e.g.
    /// 1000000x512), no bundle needed; --queries per call through the batched kernel.
    #[arg(long, value_name = "ROWSxDIM", conflicts_with = "bundle")]
    search: Option<String>,
    /// With --search: queries per call, comma-separated counts (each timed).
    #[arg(long, default_value = "1", value_delimiter = ',', requires = "search")]
    queries: Vec<usize>,
    /// With --search: store rows as float16.
    #[arg(long, requires = "search")]
    f16: bool,
    /// With --search: hits per query.
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// With --search: threads (default: one per core).
    #[arg(long, requires = "search")]
    search_threads: Option<usize>,
    /// Batch sizes to time, comma-separated (the TensorRT profile spans them).
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Seconds of measurement per encoder and batch (after a warm-up of a fifth of it, at most 2 s).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Which encoders: image, text or both.
    #[arg(long, default_value = "both", value_parser = ["image", "text", "both"])]
    encoders: String,
    /// Tokens per bench caption, SOT and EOT included (20: a typical query; the
    /// context length, e.g. 77, times the whole context). A format-2 bundle is fed
    /// this many positions, a format-1 bundle always the whole context.
    #[arg(long, default_value_t = 20)]
    text_tokens: usize,
    /// TensorRT 10, fp32 bundle: build with the FP16 flag (other bundles take their
    /// precision from the manifest).
    #[arg(long, value_parser = ["fp16"])]
    precision: Option<String>,
    /// Print JSON (keys p50_ms, p90_ms, p99_ms, images_per_s / texts_per_s per entry).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

/// `ROWSxDIM`, e.g. `1000000x512` (also `1e6x512`, `100kx512`, `1mx512`).
fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let number = |t: &str| -> Option<usize> {
        let t = t.trim().to_ascii_lowercase();
        let (num, mult) = if let Some(x) = t.strip_suffix('k') {
            (x.to_string(), 1_000.0)
        } else if let Some(x) = t.strip_suffix('m') {
            (x.to_string(), 1_000_000.0)
        } else {
            (t, 1.0)
        };
        let v: f64 = num.parse().ok()?;
        let v = v * mult;
        (v >= 1.0 && v.fract() == 0.0 && v < 1e12).then_some(v as usize)
    };
    let (r, d) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--search {s:?}: expected ROWSxDIM, such as 1000000x512"))?;
    match (number(r), number(d)) {
        (Some(r), Some(d)) => Ok((r, d)),
        _ => bail!(
            "--search {s:?}: expected ROWSxDIM with whole numbers of at least 1, such as 1000000x512"
        ),
    }
}

fn bench_search(a: &BenchArgs, shape: &str) -> Result<()> {
    let (rows, dim) = parse_shape(shape)?;
    let threads = a.search_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let sp = spinner(format!("search bench {rows}x{dim}"));
    let r =
        sen_runtime::bench::search(rows, dim, &a.queries, a.f16, a.k, threads, a.seconds, |m| {
            sp.set_message(m.to_string())
        });
    sp.finish_and_clear();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "exact top-{} of {} x {} {} rows, {} kernels, {} threads; {}, {} logical cores; {} s per row",
        r.k,
        r.rows,
        r.dim,
        r.dtype,
        r.kernel,
        r.threads,
        r.cpu,
        r.logical_cores,
        r.seconds_per_entry
    );
    println!(
        "{:>8} {:>14} {:>7} {:>10} {:>10} {:>10} {:>12}",
        "queries", "kernel", "calls", "p50 ms", "p90 ms", "p99 ms", "queries/s"
    );
    for e in &r.results {
        println!(
            "{:>8} {:>14} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>12.1}",
            e.queries,
            if e.batched {
                "batched"
            } else {
                "one at a time"
            },
            e.latency.runs,
            e.latency.p50_ms,
            e.latency.p90_ms,
            e.latency.p99_ms,
            e.queries_per_s
        );
    }
    Ok(())
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(shape) = &a.search {
        return bench_search(&a, shape);
    }
    let bundle = a
        .bundle
        .clone()
        .expect("clap requires BUNDLE without --search");
    let mut opts = a.provider.options();
    if a.precision.is_some() {
        if opts.kind != ProviderKind::TensorRt {
            bail!(
                "--precision fp16 is TensorRT's FP16 builder flag; for --provider {} export an fp16 bundle (sen-export --fp16)",
                opts.kind
            );
        }
        super::build_engines::require_fp32_bundle(&bundle)?;
        opts.tensorrt.fp16_flag = true;
    }
    let which = match a.encoders.as_str() {
        "image" => sen_runtime::bench::Which::Image,
        "text" => sen_runtime::bench::Which::Text,
        _ => sen_runtime::bench::Which::Both,
    };
    let sp = spinner("loading the bundle".into());
    let r = sen_runtime::bench::run(
        &bundle,
        &opts,
        &a.batch,
        a.seconds,
        which,
        a.text_tokens,
        |e, b| sp.set_message(format!("{e} encoder, batch {b}")),
    );
    sp.finish_and_clear();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let m = &r.machine;
    println!(
        "{} ({}) on {}: {}, {} logical cores{}",
        r.bundle,
        r.precision,
        m.provider,
        m.cpu,
        m.logical_cores,
        m.gpu
            .as_ref()
            .map(|g| format!(", GPU {g}"))
            .unwrap_or_default()
    );
    println!(
        "ONNX Runtime {} ({}){}; search kernels {}; {} s per row",
        m.onnxruntime,
        m.onnxruntime_library,
        m.tensorrt
            .as_ref()
            .map(|t| format!(", TensorRT {t}"))
            .unwrap_or_default(),
        m.search_kernel,
        r.seconds_per_entry
    );
    println!(
        "{:<8} {:>6} {:>7} {:>10} {:>10} {:>10} {:>12}",
        "encoder", "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "items/s"
    );
    for e in &r.results {
        let name = match (e.tokens, e.sequence_fed) {
            (Some(t), Some(f)) if t == f => format!("text/{t}"),
            (Some(t), Some(f)) => format!("text/{t}>{f}"),
            _ => e.encoder.to_string(),
        };
        println!(
            "{:<8} {:>6} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>12.1}",
            name,
            e.batch,
            e.latency.runs,
            e.latency.p50_ms,
            e.latency.p90_ms,
            e.latency.p99_ms,
            e.images_per_s.or(e.texts_per_s).unwrap_or_default()
        );
    }
    Ok(())
}
