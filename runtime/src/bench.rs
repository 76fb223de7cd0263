//! `sen bench`: latency percentiles and throughput of a bundle's encoders on this box,
//! with the machine described, so numbers from different boxes can be told apart.
//!
//! Each (encoder, batch) pair is warmed up, then run back to back for a fixed time;
//! every call's wall time is one sample. ONNX Runtime returns outputs in host
//! memory, so a GPU call's time includes the device finishing its work (the timed
//! region ends after the copy back).

use crate::encoders::{Encoders, start_provider};
use crate::error::RuntimeError;
use crate::providers::{Preflight, ProviderKind, ProviderOptions};
use ndarray::Array4;
use sen_core::timing::{Latency, cpu_model, logical_cores, sample};
use serde::Serialize;
use std::time::Duration;

/// One measured (encoder, batch).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub encoder: &'static str,
    pub batch: usize,
    #[serde(flatten)]
    pub latency: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub texts_per_s: Option<f64>,
    /// Text rows: tokens per caption (SOT and EOT included) and the sequence length
    /// the session was given (the context for a format-1 bundle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_fed: Option<usize>,
}

/// What the numbers were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cores: usize,
    pub os: String,
    pub gpu: Option<String>,
    pub provider: String,
    pub onnxruntime: String,
    pub onnxruntime_library: String,
    pub tensorrt: Option<String>,
    pub sen: String,
    /// The search kernel path (`portable`, `avx`, `avx2`, `avx512`; `SEN_SIMD`).
    pub search_kernel: String,
}

pub fn machine(
    kind: ProviderKind,
    pre: &Preflight,
    device_id: i32,
) -> Result<Machine, RuntimeError> {
    let lib = crate::onnxruntime::init()?;
    // The GPU, if the driver is there, even when benchmarking the CPU provider.
    let gpu = pre
        .gpu
        .clone()
        .or_else(|| crate::providers::preflight(ProviderKind::Cuda, &lib.path, device_id).gpu);
    Ok(Machine {
        cpu: cpu_model(),
        logical_cores: logical_cores(),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        gpu: gpu.map(|g| {
            format!(
                "{} (sm{}{}, {} MiB, driver CUDA {}.{})",
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.memory_bytes >> 20,
                g.driver_cuda_version / 1000,
                (g.driver_cuda_version % 1000) / 10
            )
        }),
        provider: kind.to_string(),
        onnxruntime: lib.version.clone(),
        onnxruntime_library: lib.path.display().to_string(),
        tensorrt: pre.tensorrt.map(|(a, b, c)| format!("{a}.{b}.{c}")),
        sen: env!("CARGO_PKG_VERSION").to_string(),
        search_kernel: crate::search::SimdPath::active()
            .map_err(|e| RuntimeError::Input(e.to_string()))?
            .to_string(),
    })
}

/// The whole `sen bench` result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bundle: String,
    pub precision: String,
    pub machine: Machine,
    pub seconds_per_entry: f64,
    pub results: Vec<Entry>,
}

/// Which encoders to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Image,
    Text,
    Both,
}

/// Real caption tokens to cut bench queries from (longer than any context).
const CAPTION: &str = "the woman wears a long crimson coat over a white sweater and brown boots; \
    she carries a black leather handbag on her left shoulder and a small blue umbrella, \
    her hair is dark and tied back, and she walks beside a young boy in a yellow t-shirt, \
    blue shorts and white sneakers who is holding a green backpack and a red kite, while \
    a man in a grey hoodie with a red backpack waits near the crossing";

/// `[batch, context]` ids of captions of exactly `tokens` tokens (SOT, `tokens - 2`
/// word tokens, EOT; zero padding after) and their EOT positions.
pub fn bench_ids(
    tok: &sen_core::ClipTokenizer,
    batch: usize,
    tokens: usize,
) -> Result<(ndarray::Array2<i64>, ndarray::Array1<i64>), RuntimeError> {
    let ctx = tok.context_length();
    if !(2..=ctx).contains(&tokens) {
        return Err(RuntimeError::Input(format!(
            "--text-tokens {tokens}: must be between 2 (SOT and EOT) and the context length {ctx}"
        )));
    }
    let long = tok.encode_batch(&[CAPTION])?;
    let words = &long[0].ids[1..ctx - 1];
    let mut row = vec![0i64; ctx];
    row[0] = sen_core::tokenizer::SOT_ID as i64;
    row[1..tokens - 1].copy_from_slice(&words[..tokens - 2]);
    row[tokens - 1] = sen_core::tokenizer::EOT_ID as i64;
    let ids = ndarray::Array2::from_shape_fn((batch, ctx), |(_, j)| row[j]);
    Ok((ids, ndarray::Array1::from_elem(batch, tokens as i64 - 1)))
}

/// Time `which` encoders of `bundle` at each of `batches` for `seconds` each.
/// The TensorRT profile spans the requested batches (its optimum the largest).
pub fn run(
    bundle: &std::path::Path,
    opts: &ProviderOptions,
    batches: &[usize],
    seconds: f64,
    which: Which,
    text_tokens: usize,
    mut progress: impl FnMut(&str, usize),
) -> Result<Report, RuntimeError> {
    if batches.is_empty() || batches.contains(&0) {
        return Err(RuntimeError::Input(
            "--batch: give batch sizes of at least 1, such as 1,8,32".into(),
        ));
    }
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(RuntimeError::Input(format!(
            "--seconds {seconds}: must be a positive number"
        )));
    }
    let (lo, hi) = (
        *batches.iter().min().expect("non-empty"),
        *batches.iter().max().expect("non-empty"),
    );
    let mut opts = opts.clone();
    let profile = crate::providers::BatchProfile {
        min: lo,
        opt: hi,
        max: hi,
    };
    opts.tensorrt.image_profile = profile;
    opts.tensorrt.text_profile = profile;
    let pre = start_provider(&opts)?;
    let machine = machine(opts.kind, &pre, opts.device_id)?;
    let enc = Encoders::load(bundle, &opts)?;
    let measure = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs_f64((seconds * 0.2).min(2.0));
    let mut results = vec![];
    let p = &enc.image.manifest.preprocess;
    let mut rng = sen_core::rng::Rng::new(11);
    if which != Which::Text {
        for &b in batches {
            progress("image", b);
            // Normalised-pixel-like values (speed does not depend on them).
            let x = Array4::from_shape_fn((b, 3, p.height, p.width), |_| rng.normal() as f32);
            let s = sample(
                || enc.image.encode(x.view()).map(|_| ()),
                warmup,
                measure,
                5,
            )?;
            let latency = Latency::from_seconds(&s);
            results.push(Entry {
                encoder: "image",
                batch: b,
                images_per_s: Some(latency.per_second(b)),
                texts_per_s: None,
                tokens: None,
                sequence_fed: None,
                latency,
            });
        }
    }
    if which != Which::Image {
        for &b in batches {
            progress("text", b);
            let (ids, eot) = bench_ids(&enc.text.tokenizer, b, text_tokens)?;
            let s = sample(
                || enc.text.encode_ids(ids.view(), eot.view()).map(|_| ()),
                warmup,
                measure,
                5,
            )?;
            let latency = Latency::from_seconds(&s);
            results.push(Entry {
                encoder: "text",
                batch: b,
                images_per_s: None,
                texts_per_s: Some(latency.per_second(b)),
                tokens: Some(text_tokens),
                sequence_fed: Some(enc.text.fed().last_length as usize),
                latency,
            });
        }
    }
    Ok(Report {
        bundle: bundle.display().to_string(),
        precision: enc.image.manifest.precision.to_string(),
        machine,
        seconds_per_entry: seconds,
        results,
    })
}

/// `sen bench --search`: the batched exact search on random unit rows, no bundle.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub rows: usize,
    pub dim: usize,
    pub dtype: &'static str,
    pub k: usize,
    pub threads: usize,
    /// The kernel path (`SEN_SIMD`).
    pub kernel: String,
    pub cpu: String,
    pub logical_cores: usize,
    pub seconds_per_entry: f64,
    pub results: Vec<SearchEntry>,
}

/// One query count of [`SearchReport`].
#[derive(Debug, Clone, Serialize)]
pub struct SearchEntry {
    pub queries: usize,
    /// Whether the batched kernel ran (it does from
    /// [`crate::search::BATCH_MIN_QUERIES`] queries on; fewer go one at a time).
    pub batched: bool,
    /// Per call (one call searches every query).
    #[serde(flatten)]
    pub latency: Latency,
    pub queries_per_s: f64,
}

/// Time [`crate::search::search_batch`] of each count in `queries` of random unit
/// queries against `rows` random unit rows of `dim` values (f32, or f16 with `f16`),
/// `seconds` per count.
#[allow(clippy::too_many_arguments)]
pub fn search(
    rows: usize,
    dim: usize,
    queries: &[usize],
    f16: bool,
    k: usize,
    threads: usize,
    seconds: f64,
    mut progress: impl FnMut(&str),
) -> Result<SearchReport, RuntimeError> {
    use crate::search::{BATCH_MIN_QUERIES, BatchQuery, Kernel, RowFilter, Rows, search_batch};
    if rows == 0 || dim == 0 || k == 0 || threads == 0 || queries.is_empty() || queries.contains(&0)
    {
        return Err(RuntimeError::Input(format!(
            "--search {rows}x{dim} --queries {queries:?} -k {k} --threads {threads}: every number must be at least 1"
        )));
    }
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(RuntimeError::Input(format!(
            "--seconds {seconds}: must be a positive number"
        )));
    }
    let kernel = Kernel::active().map_err(|e| RuntimeError::Input(e.to_string()))?;
    progress("making random rows");
    // Uniform values, rows scaled to unit length (speed does not depend on them).
    let unit = |n: usize, seed: u64| -> Vec<f32> {
        let mut rng = sen_core::rng::Rng::new(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
        for r in v.chunks_mut(dim) {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= norm);
        }
        v
    };
    let g = unit(rows, 7);
    let g16: Vec<half::f16> = if f16 {
        g.iter().map(|&v| half::f16::from_f32(v)).collect()
    } else {
        vec![]
    };
    let gallery = if f16 { Rows::F16(&g16) } else { Rows::F32(&g) };
    let most = queries.iter().copied().max().expect("non-empty");
    let q = unit(most, 8);
    let all = RowFilter::All;
    let mut results = vec![];
    for &nq in queries {
        progress(&format!("{nq} queries"));
        let batch: Vec<BatchQuery> = q
            .chunks(dim)
            .take(nq)
            .map(|v| BatchQuery {
                vector: v,
                k,
                filter: &all,
            })
            .collect();
        let s = sample(
            || {
                std::hint::black_box(search_batch(kernel, &batch, gallery, threads));
                Ok::<(), RuntimeError>(())
            },
            Duration::from_secs_f64((seconds * 0.2).min(2.0)),
            Duration::from_secs_f64(seconds),
            5,
        )?;
        let latency = Latency::from_seconds(&s);
        results.push(SearchEntry {
            queries: nq,
            batched: nq >= BATCH_MIN_QUERIES,
            queries_per_s: latency.per_second(nq),
            latency,
        });
    }
    Ok(SearchReport {
        rows,
        dim,
        dtype: if f16 { "f16" } else { "f32" },
        k,
        threads,
        kernel: kernel.path().to_string(),
        cpu: cpu_model(),
        logical_cores: logical_cores(),
        seconds_per_entry: seconds,
        results,
    })
}
