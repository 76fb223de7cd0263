//! The serving commands of `sen`: info, index, search, eval, build-engines.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sen_core::Manifest;
use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_runtime::encoders::{Encoders, ImageEncoder, SessionReport, TextEncoder};
use sen_runtime::index::{Index, IndexBuilder, Storage};
use sen_runtime::providers::{self, BatchProfile, ProviderKind, ProviderOptions, TensorRtOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where and how the encoders run.
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Execution provider: tensorrt, cuda or cpu (default cpu; build-engines: tensorrt).
    /// Nothing falls back to another provider unless --allow-fallback.
    #[arg(long)]
    provider: Option<ProviderKind>,
    /// GPU ordinal for cuda/tensorrt.
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// Let nodes the provider cannot take run on CUDA or the CPU (logged).
    #[arg(long)]
    allow_fallback: bool,
    /// CPU provider: intra-op threads (default one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Sessions per encoder, for concurrent callers (each holds its own engine on a GPU).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// TensorRT engine and timing caches (default $SEN_CACHE/tensorrt).
    #[arg(long, value_name = "DIR")]
    engine_cache: Option<PathBuf>,
    /// Image batch sizes MIN,OPT,MAX: the TensorRT profile; files are encoded in batches of OPT.
    #[arg(long, default_value = "1,16,64")]
    image_batch: BatchProfile,
    /// Text batch sizes MIN,OPT,MAX.
    #[arg(long, default_value = "1,8,64")]
    text_batch: BatchProfile,
    /// TensorRT, format-2 bundles: the text profile's sequence lengths MIN,OPT,MAX
    /// (MAX must be the context length; default 1,20,CONTEXT). Part of the engine key.
    #[arg(long, value_name = "MIN,OPT,MAX")]
    text_seq: Option<BatchProfile>,
    /// TensorRT: let LayerNorm run in fp16 inside fp16/int8 engines (default keeps it fp32).
    #[arg(long)]
    fp16_layer_norm: bool,
    /// TensorRT builder workspace limit in MiB.
    #[arg(long)]
    workspace_mib: Option<usize>,
    /// TensorRT, int8 bundles: `qdq` builds the Q/DQ models (explicit INT8, TensorRT
    /// 10 and 11); `implicit` builds the fp32 models under implicit/ with their
    /// calibration caches (TensorRT <= 10).
    #[arg(long, default_value = "qdq", value_parser = ["qdq", "implicit"])]
    int8_mode: String,
    /// ONNX Runtime I/O binding with reused (pinned, on GPUs) buffers: on or off
    /// (default: on for cuda and tensorrt, off for cpu).
    #[arg(long, value_parser = ["on", "off"])]
    io_binding: Option<String>,
}

impl ProviderArgs {
    fn kind(&self) -> ProviderKind {
        self.provider.unwrap_or(ProviderKind::Cpu)
    }

    pub(crate) fn options(&self) -> ProviderOptions {
        let mut o = ProviderOptions::new(self.kind());
        o.device_id = self.device;
        o.allow_fallback = self.allow_fallback;
        o.threads = self.threads;
        o.sessions = self.sessions;
        if let Some(b) = &self.io_binding {
            o.io_binding = b == "on";
        }
        o.tensorrt = TensorRtOptions {
            cache_root: self
                .engine_cache
                .clone()
                .unwrap_or_else(|| TensorRtOptions::default().cache_root),
            image_profile: self.image_batch,
            text_profile: self.text_batch,
            fp16_flag: false,
            layer_norm_fp32: !self.fp16_layer_norm,
            workspace_mib: self.workspace_mib,
            int8_implicit: self.int8_mode == "implicit",
            text_seq: self.text_seq,
        };
        o
    }
}

pub(crate) fn log_sessions(reports: &[SessionReport]) {
    for r in reports {
        tracing::info!(
            "{} on {} in {:.2} s{}",
            r.model.display(),
            r.provider,
            r.seconds,
            r.engine_dir
                .as_ref()
                .map(|d| format!(
                    " (engine {} {})",
                    if r.engine_was_cached {
                        "loaded from"
                    } else {
                        "built into"
                    },
                    d.display()
                ))
                .unwrap_or_default()
        );
    }
}

pub(crate) fn spinner(msg: String) -> ProgressBar {
    let b = ProgressBar::new_spinner().with_message(msg);
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
}

pub(crate) fn bar(n: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    b
}

// ---------------------------------------------------------------- info

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Bundle directory (from sen-export or sen-calibrate).
    bundle: PathBuf,
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let m = Manifest::read_unverified(&a.bundle)?;
    let verified = m.verify_files(&a.bundle);
    let lib = sen_runtime::onnxruntime::init();
    let mut providers = serde_json::Map::new();
    for kind in ProviderKind::ALL {
        let v = match &lib {
            Err(e) => {
                serde_json::json!({"compiled_in": true, "can_start": false, "missing": [e.to_string()]})
            }
            Ok(lib) => {
                let p = providers::preflight(kind, &lib.path, a.device);
                serde_json::json!({
                    "compiled_in": true,
                    "can_start": p.ok(),
                    "missing": p.missing,
                    "gpu": p.gpu.as_ref().map(|g| serde_json::json!({
                        "name": g.name,
                        "compute_capability": format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                        "memory_mib": g.memory_bytes >> 20,
                        "driver_cuda": format!("{}.{}", g.driver_cuda_version / 1000, (g.driver_cuda_version % 1000) / 10),
                    })),
                    "tensorrt": p.tensorrt.map(|(x, y, z)| format!("{x}.{y}.{z}")),
                })
            }
        };
        providers.insert(kind.name().into(), v);
    }
    let simd = sen_runtime::search::SimdPath::active();
    let available: Vec<&str> = sen_runtime::search::SimdPath::available()
        .iter()
        .map(|p| p.name())
        .collect();
    let image_digest = m.encoder_digest(&m.io.image).ok();
    let text_digest = m.encoder_digest(&m.io.text).ok();
    if a.json {
        let v = serde_json::json!({
            "bundle": a.bundle,
            "verified": verified.is_ok(),
            "verify_error": verified.as_ref().err().map(|e| e.to_string()),
            "precision": m.precision.to_string(),
            "model": m.model,
            "preprocess": m.preprocess,
            "image_encoder_sha256": image_digest,
            "text_encoder_sha256": text_digest,
            "files": m.files,
            "tools": m.tools,
            "source_checkpoint_sha256": m.source_checkpoint_sha256,
            "calibration": m.calibration,
            "onnxruntime": lib.as_ref().ok().map(|l| serde_json::json!({"path": l.path, "version": l.version})),
            "providers": providers,
            "search_kernel": {
                "path": simd.as_ref().ok().map(|p| p.name()),
                "error": simd.as_ref().err().map(|e| e.to_string()),
                "available": available,
                "forced": std::env::var("SEN_SIMD").ok().filter(|v| !v.trim().is_empty()),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("bundle     {}", a.bundle.display());
    match &verified {
        Ok(()) => println!(
            "files      {} files match the manifest (sha256)",
            m.files.len()
        ),
        Err(e) => println!("files      DO NOT MATCH: {e}"),
    }
    println!("precision  {}", m.precision);
    let v = &m.model.vision;
    let t = &m.model.text;
    println!(
        "image      {}x{} (HxW), ViT width {} x {} layers, patch {} -> {}-dim",
        v.image_height, v.image_width, v.width, v.layers, v.patch_size, m.model.embed_dim
    );
    println!(
        "text       {} tokens, width {} x {} layers, vocabulary {}",
        t.context_length, t.width, t.layers, t.vocab_size
    );
    println!(
        "preprocess resize {} to {}x{}, mean {:?}, std {:?}",
        m.preprocess.resize,
        m.preprocess.height,
        m.preprocess.width,
        m.preprocess.mean,
        m.preprocess.std
    );
    for (name, f) in &m.files {
        println!(
            "  {name:<24} {:>12} bytes  sha256 {}",
            f.bytes,
            &f.sha256[..16]
        );
    }
    if let Some(d) = image_digest {
        println!("image encoder digest {d} (indexes and engine caches are keyed by it)");
    }
    println!(
        "tools      {}",
        m.tools
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(c) = &m.calibration {
        println!(
            "calibration {} on {} samples (data sha256 {})",
            c.method,
            c.samples,
            &c.data_sha256[..16]
        );
    }
    match &simd {
        Ok(p) => println!(
            "search     {p} kernels ({}; this CPU runs {})",
            if std::env::var("SEN_SIMD").is_ok_and(|v| !v.trim().is_empty()) {
                "forced by SEN_SIMD"
            } else {
                "the fastest here; SEN_SIMD forces another"
            },
            available.join(", ")
        ),
        Err(e) => println!("search     {e}"),
    }
    match &lib {
        Ok(l) => println!("\nONNX Runtime {} from {}", l.version, l.path.display()),
        Err(e) => println!("\nONNX Runtime: {e}"),
    }
    println!("execution providers (all compiled in):");
    for kind in ProviderKind::ALL {
        let p = &providers[kind.name()];
        if p["can_start"].as_bool() == Some(true) {
            let gpu = p["gpu"]["name"]
                .as_str()
                .map(|g| format!(" on {g}"))
                .unwrap_or_default();
            let trt = p["tensorrt"]
                .as_str()
                .map(|t| format!(", TensorRT {t}"))
                .unwrap_or_default();
            println!("  {:<9} can start{gpu}{trt}", kind.name());
        } else {
            println!("  {:<9} cannot start here:", kind.name());
            for m in p["missing"].as_array().into_iter().flatten() {
                println!("              - {}", m.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- index

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "dataset"])))]
pub struct IndexArgs {
    /// Bundle directory.
    bundle: PathBuf,
    /// Index every image (jpg, jpeg, png, bmp, webp) under DIR, recursively, in path order.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// Index the images of a dataset split, with their person ids.
    #[arg(long, value_name = "ROOT")]
    dataset: Option<PathBuf>,
    #[arg(long)]
    format: Option<DatasetFormat>,
    #[arg(long, default_value = "test")]
    split: Split,
    /// Index file to write (atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Add to an existing index (same image encoder; images already in it are skipped).
    #[arg(long)]
    append: bool,
    /// Replace an existing index file.
    #[arg(long, conflicts_with = "append")]
    force: bool,
    /// Store embeddings as float16 (half the memory traffic when searching).
    #[arg(long)]
    f16: bool,
    /// Fail on any unreadable image (nothing is written) instead of listing and skipping it.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

pub(crate) fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for e in rd {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let p = e.path();
            let ft = e
                .file_type()
                .with_context(|| format!("reading {}", p.display()))?;
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                matches!(
                    x.to_ascii_lowercase().as_str(),
                    "jpg" | "jpeg" | "png" | "bmp" | "webp"
                )
            }) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn index(a: IndexArgs) -> Result<()> {
    if a.out.exists() && !a.append && !a.force {
        bail!(
            "{} exists: pass --append to add to it or --force to replace it",
            a.out.display()
        );
    }
    let (paths, pids): (Vec<PathBuf>, Vec<Option<i64>>) = match (&a.images, &a.dataset) {
        (Some(dir), _) => {
            let p = list_images(dir)?;
            if p.is_empty() {
                bail!("{}: no jpg/jpeg/png/bmp/webp images found", dir.display());
            }
            let n = p.len();
            (p, vec![None; n])
        }
        (None, Some(root)) => {
            let ds = Dataset::load(root, a.format)?;
            let recs: Vec<_> = ds.split(a.split).collect();
            if recs.is_empty() {
                bail!(
                    "{}: the {} split has no images",
                    root.display(),
                    a.split.name()
                );
            }
            (
                recs.iter().map(|r| ds.image_path(r)).collect(),
                recs.iter().map(|r| Some(r.id)).collect(),
            )
        }
        (None, None) => unreachable!("clap requires --images or --dataset"),
    };
    let t0 = Instant::now();
    let enc = ImageEncoder::load(&a.bundle, &a.provider.options())?;
    log_sessions(&enc.reports);
    let mut builder = if a.append && a.out.exists() {
        let old = Index::open(&a.out)?;
        old.check_bundle(&enc.manifest, &a.bundle)?;
        let want = if a.f16 {
            Storage::F16
        } else {
            old.header.dtype
        };
        if want != old.header.dtype {
            bail!(
                "--f16: {} stores {:?} rows; appending keeps the index's storage (drop --f16, or rebuild with --force)",
                a.out.display(),
                old.header.dtype
            );
        }
        IndexBuilder::from_index(&old)
    } else {
        IndexBuilder::new(
            &enc.manifest,
            if a.f16 { Storage::F16 } else { Storage::F32 },
        )?
    };
    let before = builder.len();
    let keep: Vec<usize> = (0..paths.len())
        .filter(|&i| !builder.contains_path(&paths[i].display().to_string()))
        .collect();
    if keep.len() < paths.len() {
        tracing::warn!(
            "{} of {} images are already in {} and are skipped",
            paths.len() - keep.len(),
            paths.len(),
            a.out.display()
        );
    }
    let todo: Vec<&PathBuf> = keep.iter().map(|&i| &paths[i]).collect();
    let pb = bar(todo.len(), "indexing");
    let files = enc.encode_files(&todo, |n| pb.set_position(n as u64))?;
    if let (true, Some((i, why))) = (a.strict, files.failures.first()) {
        pb.abandon();
        bail!("--strict: {} cannot be read: {why}", todo[*i].display());
    }
    pb.finish_and_clear();
    for (i, why) in &files.failures {
        tracing::warn!("skipped {}: {why}", todo[*i].display());
    }
    for (row, &i) in files.embeds.rows().into_iter().zip(&files.ok) {
        let k = keep[i];
        builder.push(
            paths[k].display().to_string(),
            pids[k],
            row.as_slice().expect("contiguous row"),
        )?;
    }
    builder.write(&a.out)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}: {} images indexed ({} new, {} unreadable and skipped{}), {}-dim {:?}, {:.1} s ({:.1} images/s)",
        a.out.display(),
        builder.len(),
        builder.len() - before,
        files.failures.len(),
        if files.failures.is_empty() {
            ""
        } else {
            ", listed above"
        },
        builder.header.dim,
        builder.header.dtype,
        secs,
        todo.len() as f64 / secs
    );
    Ok(())
}

// ---------------------------------------------------------------- search

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// Bundle directory (its image encoder must be the one that built the index).
    bundle: PathBuf,
    /// Index file from `sen index`.
    index: PathBuf,
    /// The description to search for (or use --queries).
    #[arg(required_unless_present = "queries", conflicts_with = "queries")]
    text: Option<String>,
    /// Read one query per line from FILE (or - for stdin); answers are JSON lines.
    #[arg(long, value_name = "FILE|-")]
    queries: Option<String>,
    /// How many images to return.
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// Print JSON (always on with --queries).
    #[arg(long)]
    json: bool,
    /// Threads for the index scan (default: one per core).
    #[arg(long)]
    search_threads: Option<usize>,
    #[command(flatten)]
    provider: ProviderArgs,
}

#[derive(serde::Serialize)]
struct ResultJson<'a> {
    rank: usize,
    path: &'a str,
    score: f32,
    pid: Option<i64>,
}

#[derive(serde::Serialize)]
struct AnswerJson<'a> {
    query: &'a str,
    results: Vec<ResultJson<'a>>,
}

pub fn search(a: SearchArgs) -> Result<()> {
    if a.k == 0 {
        bail!("-k must be at least 1");
    }
    let index = Index::open(&a.index)?;
    let enc = TextEncoder::load(&a.bundle, &a.provider.options())?;
    log_sessions(&enc.reports);
    index.check_bundle(&enc.manifest, &a.bundle)?;
    if index.is_empty() {
        bail!("{} holds no images", a.index.display());
    }
    if a.k > index.len() {
        tracing::warn!(
            "-k {} is larger than the gallery ({} images): returning all {}",
            a.k,
            index.len(),
            index.len()
        );
    }
    let threads = a.search_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let answer = |q: &str| -> Result<(Vec<sen_runtime::search::Hit>, f64, f64)> {
        let t = Instant::now();
        let e = enc.encode(&[q])?;
        let te = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let hits = index.search(e.row(0).as_slice().expect("row"), a.k, threads)?;
        Ok((hits, te, t.elapsed().as_secs_f64()))
    };
    let to_json = |q: &'_ str, hits: &[sen_runtime::search::Hit]| -> String {
        let a = AnswerJson {
            query: q,
            results: hits
                .iter()
                .enumerate()
                .map(|(i, h)| ResultJson {
                    rank: i + 1,
                    path: &index.header.paths[h.row],
                    score: h.score,
                    pid: index.header.pids[h.row],
                })
                .collect(),
        };
        serde_json::to_string(&a).expect("serialises")
    };
    if let Some(src) = &a.queries {
        let reader: Box<dyn BufRead + Send> = if src == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(src).with_context(|| format!("--queries {src}"))?,
            ))
        };
        // Lines arrive on a channel; each round takes every line already waiting (up
        // to QUERY_BATCH), so a file is answered in batches through the batched kernel
        // while a person typing on stdin gets each answer at once.
        const QUERY_BATCH: usize = 64;
        let (tx, rx) = std::sync::mpsc::channel::<(usize, std::io::Result<String>)>();
        std::thread::spawn(move || {
            for (n, line) in reader.lines().enumerate() {
                let stop = line.is_err();
                if tx.send((n, line)).is_err() || stop {
                    break;
                }
            }
        });
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Ok(first) = rx.recv() {
            let mut lines = vec![first];
            while lines.len() < QUERY_BATCH {
                match rx.try_recv() {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            let mut texts = vec![];
            for (n, line) in lines {
                let line = line.with_context(|| format!("--queries {src}: line {}", n + 1))?;
                if line.trim().is_empty() {
                    tracing::warn!("--queries {src}: line {} is empty and is skipped", n + 1);
                } else {
                    texts.push(line);
                }
            }
            if texts.is_empty() {
                continue;
            }
            let t = Instant::now();
            let e = enc.encode(&texts)?;
            let te = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let rows: Vec<&[f32]> = e
                .as_slice()
                .expect("standard layout")
                .chunks(e.ncols())
                .collect();
            let hits = index.search_many(&rows, a.k, threads)?;
            tracing::debug!(
                "{} queries: encode {:.2} ms, search {:.2} ms",
                texts.len(),
                te * 1e3,
                t.elapsed().as_secs_f64() * 1e3
            );
            for (q, h) in texts.iter().zip(&hits) {
                writeln!(out, "{}", to_json(q, h))?;
            }
            out.flush()?;
        }
        return Ok(());
    }
    let q = a.text.as_deref().expect("clap requires TEXT or --queries");
    let (hits, te, ts) = answer(q)?;
    if a.json {
        println!("{}", to_json(q, &hits));
    } else {
        println!("{q:?}: top {} of {} images", hits.len(), index.len());
        for (i, h) in hits.iter().enumerate() {
            let pid = index.header.pids[h.row]
                .map(|p| format!("pid {p:<6}"))
                .unwrap_or_default();
            println!(
                "{:>4}. {:.4}  {pid} {}",
                i + 1,
                h.score,
                index.header.paths[h.row]
            );
        }
        eprintln!(
            "(text encoder {:.1} ms, search {:.2} ms)",
            te * 1e3,
            ts * 1e3
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- eval

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    bundle: PathBuf,
    #[arg(long, value_name = "ROOT")]
    dataset: PathBuf,
    #[arg(long)]
    format: Option<DatasetFormat>,
    #[arg(long, default_value = "test")]
    split: Split,
    /// Print {"r1", "r5", "r10", "map", "minp"} (percent) plus timing keys as JSON.
    #[arg(long)]
    json: bool,
    /// Also write image_embeds.npy, text_embeds.npy, image_pids.npy, text_pids.npy here.
    #[arg(long, value_name = "DIR")]
    dump_embeddings: Option<PathBuf>,
    #[command(flatten)]
    provider: ProviderArgs,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let ds = Dataset::load(&a.dataset, a.format)?;
    let opts = a.provider.options();
    let enc = Encoders::load(&a.bundle, &opts)?;
    log_sessions(&enc.image.reports);
    log_sessions(&enc.text.reports);
    let n = ds.split(a.split).count();
    let pb = if a.json {
        ProgressBar::hidden()
    } else {
        bar(n, "gallery")
    };
    let out = sen_runtime::eval::evaluate(&enc, &ds, a.split, |k| pb.set_position(k as u64))?;
    pb.finish_and_clear();
    if let Some(dir) = &a.dump_embeddings {
        sen_runtime::eval::dump(&out, dir)?;
    }
    // Batch-1 latency of the image encoder: median of 20 runs after 3 warm-ups.
    let first = ds.image_path(
        ds.split(a.split)
            .next()
            .expect("evaluate checked the split"),
    );
    let x = enc
        .image
        .preprocessor
        .load(&first)?
        .insert_axis(ndarray::Axis(0));
    let mut times = vec![];
    for i in 0..23 {
        let t = Instant::now();
        enc.image.encode(x.view())?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let latency = times[times.len() / 2];
    let m = out.metrics;
    let images = out.image_pids.len();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "r1": m.r1, "r5": m.r5, "r10": m.r10, "map": m.map, "minp": m.minp,
                "split": a.split.name(),
                "precision": enc.image.manifest.precision.to_string(),
                "provider": opts.kind.name(),
                "images": images,
                "captions": out.text_pids.len(),
                "gallery_seconds": out.image_seconds,
                "images_per_s": images as f64 / out.image_seconds,
                "image_batch": enc.image.profile.opt,
                "image_latency_ms_batch1": latency,
                "text_seconds": out.text_seconds,
            })
        );
    } else {
        println!(
            "{} on {} {} ({} images, {} captions), {} {}:",
            a.bundle.display(),
            a.dataset.display(),
            a.split.name(),
            images,
            out.text_pids.len(),
            enc.image.manifest.precision,
            opts.kind
        );
        println!("  {m}");
        println!(
            "  gallery {:.1} images/s (batch {}, decode + preprocess overlapped), image encoder batch-1 latency {:.2} ms, captions {:.1}/s",
            images as f64 / out.image_seconds,
            enc.image.profile.opt,
            latency,
            out.text_pids.len() as f64 / out.text_seconds
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- build-engines

#[derive(clap::Args, Debug)]
pub struct BuildEnginesArgs {
    bundle: PathBuf,
    /// Engine precision for an fp32 bundle on TensorRT 10 (`fp16` sets the FP16
    /// builder flag); other bundles take their precision from the manifest.
    #[arg(long, value_parser = ["fp16"])]
    precision: Option<String>,
    #[command(flatten)]
    provider: ProviderArgs,
}

/// `--precision fp16` (TensorRT's FP16 flag) applies to fp32 bundles only; other
/// bundles carry their precision. Reads the manifest only: loading the encoders
/// verifies every file right after.
fn require_fp32_bundle(bundle: &Path) -> Result<()> {
    let m = Manifest::read_unverified(bundle)?;
    if m.precision != sen_core::Precision::Fp32 {
        bail!(
            "--precision fp16 is only for an fp32 bundle; this bundle is {}",
            m.precision
        );
    }
    Ok(())
}

pub fn build_engines(a: BuildEnginesArgs) -> Result<()> {
    if let Some(p) = a.provider.provider.filter(|&p| p != ProviderKind::TensorRt) {
        bail!("build-engines builds TensorRT engines; --provider {p} has none to build");
    }
    let mut opts = a.provider.options();
    opts.kind = ProviderKind::TensorRt;
    opts.tensorrt.fp16_flag = a.precision.is_some();
    if opts.tensorrt.fp16_flag {
        require_fp32_bundle(&a.bundle)?;
    }
    let sp = spinner(format!(
        "building TensorRT engines for {} (first build on a GPU can take minutes)",
        a.bundle.display()
    ));
    let t = Instant::now();
    let enc = Encoders::load(&a.bundle, &opts);
    sp.finish_and_clear();
    let enc = enc?;
    for (what, reports, batch) in [
        ("image", &enc.image.reports, enc.image.profile),
        ("text", &enc.text.reports, enc.text.profile),
    ] {
        for r in reports.iter() {
            println!(
                "{what} encoder: {} in {:.1} s ({}), profile batch {}/{}/{}",
                r.engine_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                r.seconds,
                if r.engine_was_cached {
                    "already cached"
                } else {
                    "built"
                },
                batch.min,
                batch.opt,
                batch.max
            );
        }
    }
    // One run at the optimum batch of each, so the first query is not the first run.
    let (h, w) = (
        enc.image.manifest.preprocess.height,
        enc.image.manifest.preprocess.width,
    );
    let x = ndarray::Array4::<f32>::zeros((enc.image.profile.opt, 3, h, w));
    let t1 = Instant::now();
    enc.image.encode(x.view())?;
    let qs = vec!["a person"; enc.text.profile.opt];
    enc.text.encode(&qs)?;
    println!(
        "warm-up runs {:.1} ms; engines ready in {:.1} s total",
        t1.elapsed().as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------- bench

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

pub fn bench(a: BenchArgs) -> Result<()> {
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
        require_fp32_bundle(&bundle)?;
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

// ---------------------------------------------------------------- serve

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The bundle to serve (verified at start).
    #[arg(long)]
    bundle: PathBuf,
    /// The store directory; created (bound to the bundle) when missing or empty.
    #[arg(long, required_unless_present = "search_backend")]
    store: Option<PathBuf>,
    /// Also follow the store into a Milvus collection, milvus://HOST:PORT/COLLECTION
    /// (store-and-forward: the box keeps working while Milvus is away). Credentials,
    /// TLS and timeouts from SEN_MILVUS_* variables.
    #[arg(long, value_name = "URI", requires = "store")]
    replicate: Option<String>,
    #[command(flatten)]
    replica: crate::store_cli::ReplicaArgs,
    /// Run a central search node instead of a box: search this replicated collection
    /// (milvus://HOST:PORT/COLLECTION); no store, ingest routes answer 404.
    #[arg(long, value_name = "URI", conflicts_with_all = ["store", "retention", "replicate"])]
    search_backend: Option<String>,
    /// On a central node: the boxes to fetch crops from, a JSON object
    /// {"BOX": {"url": "...", "key_file": "...", "ca_cert": "..."}}.
    #[arg(long, value_name = "FILE", requires = "search_backend")]
    boxes: Option<PathBuf>,
    /// On a central node: a search parameter of the collection's index (ef=N for
    /// hnsw, nprobe=N for ivf_flat); repeat.
    #[arg(
        long = "search-param",
        value_name = "KEY=VALUE",
        requires = "search_backend"
    )]
    search_params: Vec<String>,
    /// Address to listen on (loopback unless told otherwise; port 0 picks one and the
    /// address is printed).
    #[arg(long, default_value = "127.0.0.1:8750")]
    listen: std::net::SocketAddr,
    /// API keys: lines `read KEY`, `write KEY` or `SCOPE sha256:HEX` (`#` comments).
    #[arg(long, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    /// Require a key on /healthz, /readyz, /metrics and / too.
    #[arg(long)]
    auth_all: bool,
    /// Serve a non-loopback address without --api-keys (logged at every start).
    #[arg(long)]
    insecure_no_auth: bool,
    /// TLS certificate chain (PEM); with --tls-key serves HTTPS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Requests per encoder batch (default: the profile's optimum; 1 turns encoder
    /// batching off; the store's group commit stays on).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Longest a batch waits for more requests after its first, in ms (0: a batch is
    /// what queued while the previous one ran; a lone request never waits).
    #[arg(long, default_value_t = 0.0)]
    max_delay_ms: f64,
    /// Requests waiting per queue before the server answers 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    #[arg(long, default_value_t = 1000)]
    max_k: usize,
    #[arg(long, default_value_t = 1000)]
    max_text_chars: usize,
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
    /// Largest image accepted, in pixels (read from the header before decoding).
    #[arg(long, default_value_t = 40_000_000)]
    max_pixels: u64,
    /// Seconds before a request is answered 504.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Seconds SIGTERM waits for queued work before closing.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Delete rows captured longer ago than this (`30d`, `12h`), at start and
    /// periodically; compaction follows in the background.
    #[arg(long)]
    retention: Option<String>,
    /// Threads of the search scan (default: one per core).
    #[arg(long)]
    search_threads: Option<usize>,
    /// Let ONNX Runtime's CPU threads spin between calls: a lone client's search gets
    /// faster (0.72 -> 0.44 ms with the tiny bundle on two cores), but under load a
    /// spinning thread takes a core from request handling (a paced half-load search
    /// went from 9 to 321 ms p50 with it); off by default.
    #[arg(long)]
    ort_spin: bool,
    /// A new store stores float16 embeddings.
    #[arg(long)]
    f16: bool,
    /// A new store keeps no crops.
    #[arg(long)]
    no_crops: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let secs = |flag: &str, v: f64| -> Result<std::time::Duration> {
        if !(v > 0.0 && v.is_finite()) {
            bail!("{flag} {v}: must be a positive number of seconds");
        }
        Ok(std::time::Duration::from_secs_f64(v))
    };
    if !(a.max_delay_ms >= 0.0 && a.max_delay_ms.is_finite()) {
        bail!("--max-delay-ms {}: must be 0 or more", a.max_delay_ms);
    }
    let central = match &a.search_backend {
        Some(uri) => Some(sen_runtime::serve::CentralConfig {
            target: sen_milvus::Target::parse(uri).context("--search-backend")?,
            settings: sen_milvus::Settings::from_env()?,
            boxes: a.boxes.clone(),
            search_params: a.search_params.clone(),
        }),
        None => None,
    };
    let replicate = match &a.replicate {
        Some(uri) => Some(a.replica.replication(uri).context("--replicate")?),
        None => {
            if a.replica.box_name.is_some()
                || a.replica.index != "flat"
                || !a.replica.index_params.is_empty()
            {
                bail!(
                    "--box-name, --index and --index-param describe a replication: give --replicate milvus://HOST:PORT/COLLECTION too"
                );
            }
            None
        }
    };
    let cfg = sen_runtime::serve::ServeConfig {
        bundle: a.bundle.clone(),
        store: a.store.clone(),
        central,
        replicate,
        listen: a.listen,
        api_keys: a.api_keys.clone(),
        auth_all: a.auth_all,
        insecure_no_auth: a.insecure_no_auth,
        tls: a.tls_cert.clone().zip(a.tls_key.clone()),
        provider: {
            let mut o = a.provider.options();
            o.spin = a.ort_spin;
            o
        },
        max_batch: a.max_batch,
        max_delay: std::time::Duration::from_secs_f64(a.max_delay_ms / 1e3),
        max_queue: a.max_queue,
        max_k: a.max_k,
        max_text_chars: a.max_text_chars,
        max_body: a.max_body_mib << 20,
        max_pixels: a.max_pixels,
        request_timeout: secs("--request-timeout", a.request_timeout)?,
        shutdown_timeout: secs("--shutdown-timeout", a.shutdown_timeout)?,
        retention_ms: a
            .retention
            .as_deref()
            .map(|r| sen_store::time::parse_period("--retention", r))
            .transpose()?,
        search_threads: a.search_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        f16: a.f16,
        crops: !a.no_crops,
        thumb_cache_bytes: 64 << 20,
    };
    sen_runtime::serve::run(cfg)
}
