//! `sen store ...`: the gallery store from the command line (SPEC §11 JSON).

use crate::cli::{ProviderArgs, bar, list_images, log_sessions};
use anyhow::{Context, Result, bail};
use sen_core::Manifest;
use sen_runtime::encoders::{ImageEncoder, TextEncoder};
use sen_runtime::results::{results_object, stats_json};
use sen_store::time::{self, TimeRange};
use sen_store::{Crop, Mode, NewRow, Query, Selector, Storage, Store, StoreConfig};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Subcommand, Debug)]
pub enum StoreCommand {
    /// Create a store bound to a bundle's image encoder.
    Create(CreateArgs),
    /// Embed images and add them (camera, capture time, pid, attributes, crop).
    Add(AddArgs),
    /// Rank the store's rows for a description, or like a stored row.
    Search(StoreSearchArgs),
    /// Delete rows by id (all or nothing), by camera, or captured before a time.
    Delete(DeleteArgs),
    /// Merge small segments and rewrite away deleted rows (and erase them from the files).
    Compact {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Rows, cameras, sizes and identity.
    Stats {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check everything: SQLite's integrity check, every segment's and every row's checksum.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Copy the store consistently (also while a writer runs) into a new folder.
    Snapshot {
        dir: PathBuf,
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
    },
    /// Add the rows of a `sen index` file (embeddings, paths, pids; no re-encoding).
    Import(ImportArgs),
    /// Copy the store's rows and deletes into a Milvus collection, up to now (resumes
    /// where the last replication to it stopped; `sen serve --replicate` follows).
    Replicate(ReplicateArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    dir: PathBuf,
    /// The collection: milvus://HOST:PORT/COLLECTION (milvus+tls:// for TLS;
    /// credentials and timeouts from SEN_MILVUS_* variables).
    #[arg(long, value_name = "URI")]
    to: String,
    #[command(flatten)]
    replica: ReplicaArgs,
    #[arg(long)]
    json: bool,
}

/// How a box replicates (`sen store replicate`, `sen serve --replicate`).
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicaArgs {
    /// This box's name in the collection (default: the host name).
    #[arg(long)]
    pub box_name: Option<String>,
    /// The vector index a new collection gets: flat (exact), hnsw or ivf_flat.
    #[arg(long, default_value = "flat")]
    pub index: String,
    /// An index parameter, KEY=VALUE (hnsw: M, efConstruction; ivf_flat: nlist); repeat.
    #[arg(long = "index-param", value_name = "KEY=VALUE")]
    pub index_params: Vec<String>,
    /// Rows per upsert call.
    #[arg(long, default_value_t = 512)]
    pub replicate_batch: usize,
}

impl ReplicaArgs {
    /// The replication these flags describe, to `uri`.
    pub fn replication(&self, uri: &str) -> Result<sen_milvus::Replication> {
        let target = sen_milvus::Target::parse(uri)?;
        let box_name = self.box_name.clone().unwrap_or_else(sen_milvus::host_name);
        sen_milvus::check_box_name(&box_name)?;
        if self.replicate_batch == 0 || self.replicate_batch > 10_000 {
            bail!(
                "--replicate-batch {}: give 1 to 10000 rows",
                self.replicate_batch
            );
        }
        Ok(sen_milvus::Replication {
            target,
            settings: sen_milvus::Settings::from_env()?,
            box_name,
            index: sen_milvus::IndexSpec::parse(&self.index, &self.index_params)?,
            batch: self.replicate_batch,
        })
    }
}

/// A runtime for the Milvus calls of one command.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    dir: PathBuf,
    /// The bundle whose image encoder the store is bound to.
    #[arg(long)]
    bundle: PathBuf,
    /// Store embeddings as float16 (half the memory and scan traffic).
    #[arg(long)]
    f16: bool,
    /// Keep no crops (image bytes), only embeddings and metadata.
    #[arg(long)]
    no_crops: bool,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["images", "folder", "list"])))]
pub struct AddArgs {
    dir: PathBuf,
    #[arg(long)]
    bundle: PathBuf,
    /// Image files to add.
    images: Vec<PathBuf>,
    /// Every image (jpg, jpeg, png, bmp, webp) under FOLDER, recursively, in path order.
    #[arg(long = "images", value_name = "FOLDER")]
    folder: Option<PathBuf>,
    /// JSON lines `{"path", "camera", "time", "pid", "attrs"}` (paths relative to the
    /// list file's folder; only `path` is required).
    #[arg(long, value_name = "FILE.jsonl")]
    list: Option<PathBuf>,
    /// Camera of rows that do not name one (default "default").
    #[arg(long)]
    camera: Option<String>,
    /// Capture time of rows that do not give one: RFC 3339 or Unix ms (default: each
    /// file's modification time).
    #[arg(long)]
    time: Option<String>,
    /// One transaction: any unreadable image or bad line adds nothing.
    #[arg(long)]
    strict: bool,
    /// Print `{"added", "skipped": [{"path", "error"}], "first_id", "last_id"}`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

#[derive(clap::Args, Debug)]
pub struct StoreSearchArgs {
    /// A store directory, or a replicated collection: milvus://HOST:PORT/COLLECTION.
    dir: PathBuf,
    #[arg(long)]
    bundle: PathBuf,
    /// The description to search for.
    #[arg(conflicts_with_all = ["like", "queries"])]
    text: Option<String>,
    /// Search with a stored row's embedding ("more like this"; the row itself is left out).
    #[arg(long, value_name = "ID", conflicts_with = "queries")]
    like: Option<u64>,
    /// One description per line from FILE (or - for stdin); JSON lines out.
    #[arg(long, value_name = "FILE|-")]
    queries: Option<String>,
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// Only these cameras (repeat the flag).
    #[arg(long = "camera")]
    cameras: Vec<String>,
    /// Captured at or after this time (RFC 3339 or Unix ms).
    #[arg(long)]
    from: Option<String>,
    /// Captured before this time.
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    json: bool,
    /// Threads for the scan (default: one per core).
    #[arg(long)]
    search_threads: Option<usize>,
    /// Only rows of this box (a milvus:// collection; repeat the flag).
    #[arg(long = "box")]
    boxes: Vec<String>,
    /// With --like on a milvus:// collection: the box the row belongs to.
    #[arg(long, requires = "like")]
    like_box: Option<String>,
    /// A search parameter of the collection's index (ef=N for hnsw, nprobe=N for
    /// ivf_flat); repeat.
    #[arg(long = "search-param", value_name = "KEY=VALUE")]
    search_params: Vec<String>,
    #[command(flatten)]
    provider: ProviderArgs,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "camera", "before"])))]
pub struct DeleteArgs {
    dir: PathBuf,
    /// Row ids (all must exist, or nothing is deleted).
    #[arg(long, num_args = 1..)]
    id: Vec<u64>,
    #[arg(long)]
    camera: Option<String>,
    /// Delete rows captured before this time (RFC 3339 or Unix ms).
    #[arg(long)]
    before: Option<String>,
    /// Print `{"deleted": N}`.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    dir: PathBuf,
    /// The `sen index` file to import.
    #[arg(long)]
    index: PathBuf,
    #[arg(long)]
    camera: Option<String>,
    /// Capture time of every row (default: the index file's modification time).
    #[arg(long)]
    time: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Create(a) => create(a),
        StoreCommand::Add(a) => add(a),
        StoreCommand::Search(a) => search(a),
        StoreCommand::Delete(a) => delete(a),
        StoreCommand::Compact { dir, json } => {
            let store = Store::open(&dir, Mode::Writer)?;
            let sp = crate::cli::spinner(format!("compacting {}", dir.display()));
            let r = store.compact();
            sp.finish_and_clear();
            let r = r?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: {} -> {} segments, {} deleted rows rewritten away, {} -> {} bytes of segments, {:.1} s",
                    dir.display(),
                    r.segments_before,
                    r.segments_after,
                    r.rows_removed,
                    r.bytes_before,
                    r.bytes_after,
                    r.seconds
                );
            }
            Ok(())
        }
        StoreCommand::Stats { dir, json } => stats(&dir, json),
        StoreCommand::Verify { dir, json } => {
            let sp = crate::cli::spinner(format!("verifying {}", dir.display()));
            let r = sen_store::verify::verify(&dir);
            sp.finish_and_clear();
            let r = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} rows ({} in {} segments, {} pending), {} deleted awaiting compaction, {} bytes checked",
                    dir.display(),
                    r.rows,
                    r.segment_rows,
                    r.segments,
                    r.pending_rows,
                    r.deleted_pending,
                    r.bytes_checked
                );
                for s in &r.strays {
                    println!("  stray file (the writer removes it at its next open): {s}");
                }
                for p in &r.problems {
                    println!("  PROBLEM: {p}");
                }
            }
            if !r.problems.is_empty() {
                bail!("{}: {} problems found", dir.display(), r.problems.len());
            }
            Ok(())
        }
        StoreCommand::Snapshot { dir, out } => {
            sen_store::verify::snapshot(&dir, &out)?;
            println!("{} -> {} (consistent copy)", dir.display(), out.display());
            Ok(())
        }
        StoreCommand::Import(a) => import(a),
        StoreCommand::Replicate(a) => replicate(a),
    }
}

fn replicate(a: ReplicateArgs) -> Result<()> {
    let r = a.replica.replication(&a.to)?;
    let store = Store::open(&a.dir, Mode::Writer).with_context(|| {
        format!(
            "replicating {} (sen serve --replicate replicates a store it serves)",
            a.dir.display()
        )
    })?;
    let status = sen_milvus::Status::default();
    let sp = crate::cli::spinner(format!("replicating {} to {}", a.dir.display(), r.target));
    let report = runtime()?.block_on(r.catch_up(&store, &status));
    sp.finish_and_clear();
    let report = report?;
    let rate = report.rows_upserted as f64 / report.seconds.max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "target": r.target.to_string(),
                "box": r.box_name,
                "rows_upserted": report.rows_upserted,
                "rows_deleted": report.rows_deleted,
                "cursor": report.cursor,
                "seconds": report.seconds,
                "rows_per_second": rate,
            })
        );
    } else {
        println!(
            "{} -> {} (box {:?}): {} rows upserted, {} deleted, cursor at change {}, {:.1} s ({rate:.0} rows/s)",
            a.dir.display(),
            r.target,
            r.box_name,
            report.rows_upserted,
            report.rows_deleted,
            report.cursor,
            report.seconds
        );
    }
    Ok(())
}

fn create(a: CreateArgs) -> Result<()> {
    let m = Manifest::load(&a.bundle)?;
    let store = Store::create(&a.dir, &store_config(&m, a.f16, !a.no_crops)?)?;
    let i = store.info();
    println!(
        "created store {} ({}): {}-dim {} rows{}, image encoder {}",
        a.dir.display(),
        i.uuid,
        i.dim,
        if a.f16 { "f16" } else { "f32" },
        if i.crops { " with crops" } else { ", no crops" },
        i.image_encoder_sha256
    );
    Ok(())
}

/// The store settings for a bundle.
pub fn store_config(m: &Manifest, f16: bool, crops: bool) -> Result<StoreConfig> {
    Ok(StoreConfig {
        image_encoder_sha256: m.encoder_digest(&m.io.image)?,
        dim: m.model.embed_dim,
        dtype: if f16 { Storage::F16 } else { Storage::F32 },
        crops,
        bundle_precision: m.precision.to_string(),
    })
}

/// One image to add, before encoding.
#[derive(Debug, Clone)]
struct Item {
    /// As given (list paths: relative to the list's folder, as written there).
    path: String,
    file: PathBuf,
    camera: Option<String>,
    time_ms: Option<i64>,
    pid: Option<i64>,
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListLine {
    path: String,
    camera: Option<String>,
    time: Option<serde_json::Value>,
    pid: Option<i64>,
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

fn read_list(list: &Path) -> Result<Vec<Item>> {
    let base = list.parent().unwrap_or(Path::new("."));
    let f = std::fs::File::open(list).with_context(|| format!("--list {}", list.display()))?;
    let mut out = vec![];
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let at = || format!("{} line {}", list.display(), n + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let l: ListLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: expected {{\"path\", \"camera\", \"time\", \"pid\", \"attrs\"}}",
                at()
            )
        })?;
        let time_ms = l
            .time
            .as_ref()
            .map(|t| time::from_json(&format!("{} `time`", at()), t))
            .transpose()?;
        out.push(Item {
            file: base.join(&l.path),
            path: l.path,
            camera: l.camera,
            time_ms,
            pid: l.pid,
            attrs: l.attrs,
        });
    }
    if out.is_empty() {
        bail!("--list {}: no lines", list.display());
    }
    Ok(out)
}

fn mtime_ms(p: &Path) -> Result<i64> {
    let m = std::fs::metadata(p)
        .and_then(|m| m.modified())
        .with_context(|| format!("{}: no modification time", p.display()))?;
    Ok(m.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// The rows the CLI adds per transaction (without --strict).
const ADD_BATCH: usize = 1024;

fn add(a: AddArgs) -> Result<()> {
    let items: Vec<Item> = if let Some(list) = &a.list {
        read_list(list)?
    } else {
        let files = match &a.folder {
            Some(dir) => {
                let f = list_images(dir)?;
                if f.is_empty() {
                    bail!("{}: no jpg/jpeg/png/bmp/webp images found", dir.display());
                }
                f
            }
            None => a.images.clone(),
        };
        files
            .into_iter()
            .map(|f| Item {
                path: f.display().to_string(),
                file: f,
                camera: None,
                time_ms: None,
                pid: None,
                attrs: None,
            })
            .collect()
    };
    let flag_time = a
        .time
        .as_deref()
        .map(|t| time::parse("--time", t))
        .transpose()?;
    let flag_camera = a.camera.clone();
    let store = Store::open(&a.dir, Mode::Writer)?;
    let enc = ImageEncoder::load(&a.bundle, &a.provider.options())?;
    log_sessions(&enc.reports);
    store.check_encoder(
        &enc.digest()?,
        enc.manifest.model.embed_dim,
        &a.bundle.display().to_string(),
    )?;
    let crops = store.info().crops;
    let t0 = Instant::now();
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        bar(items.len(), "adding")
    };
    let mut skipped: Vec<serde_json::Value> = vec![];
    let mut all_rows: Vec<NewRow> = vec![];
    let (mut first_id, mut last_id, mut added) = (None::<u64>, None::<u64>, 0usize);
    for (c, chunk) in items.chunks(ADD_BATCH).enumerate() {
        let files: Vec<&PathBuf> = chunk.iter().map(|i| &i.file).collect();
        let e = enc.encode_files(&files, |n| pb.set_position((c * ADD_BATCH + n) as u64))?;
        if let (true, Some((i, why))) = (a.strict, e.failures.first()) {
            pb.abandon();
            bail!(
                "--strict: {} cannot be read: {why}; nothing was added",
                chunk[*i].path
            );
        }
        for (i, why) in &e.failures {
            skipped.push(serde_json::json!({"path": chunk[*i].path, "error": why}));
        }
        let mut rows = Vec::with_capacity(e.ok.len());
        for (row, &i) in e.embeds.rows().into_iter().zip(&e.ok) {
            let it = &chunk[i];
            let made = (|| -> Result<NewRow> {
                let crop = if crops {
                    let bytes = std::fs::read(&it.file).with_context(|| it.path.clone())?;
                    let ct =
                        sen_core::preprocess::image_content_type(&bytes).with_context(|| {
                            format!("{}: not a JPEG, PNG, WebP or BMP file", it.path)
                        })?;
                    Some(Crop {
                        content_type: ct.into(),
                        bytes,
                    })
                } else {
                    None
                };
                Ok(NewRow {
                    camera: it
                        .camera
                        .clone()
                        .or_else(|| flag_camera.clone())
                        .unwrap_or_else(|| sen_store::store::DEFAULT_CAMERA.into()),
                    time_ms: match it.time_ms.or(flag_time) {
                        Some(t) => t,
                        None => mtime_ms(&it.file)?,
                    },
                    path: it.path.clone(),
                    pid: it.pid,
                    attrs: it.attrs.clone(),
                    embedding: row.to_vec(),
                    crop,
                })
            })();
            match made {
                Ok(r) => rows.push(r),
                Err(err) if a.strict => {
                    pb.abandon();
                    bail!("--strict: {err:#}; nothing was added");
                }
                Err(err) => {
                    skipped.push(serde_json::json!({"path": it.path, "error": format!("{err:#}")}))
                }
            }
        }
        if a.strict {
            all_rows.extend(rows);
        } else if !rows.is_empty() {
            let n = rows.len();
            let (f, l) = store.add(rows)?;
            first_id.get_or_insert(f);
            last_id = Some(l);
            added += n;
        }
    }
    if a.strict && !all_rows.is_empty() {
        let n = all_rows.len();
        let (f, l) = store.add(all_rows)?;
        (first_id, last_id, added) = (Some(f), Some(l), n);
    }
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"added": added, "skipped": skipped, "first_id": first_id, "last_id": last_id})
        );
    } else {
        for s in &skipped {
            eprintln!(
                "skipped {}: {}",
                s["path"].as_str().unwrap_or(""),
                s["error"].as_str().unwrap_or("")
            );
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{}: {added} rows added{}, {} skipped, {:.1} s ({:.1} images/s)",
            a.dir.display(),
            match (first_id, last_id) {
                (Some(f), Some(l)) => format!(" (ids {f}..={l})"),
                _ => String::new(),
            },
            skipped.len(),
            secs,
            items.len() as f64 / secs
        );
    }
    Ok(())
}

fn search(a: StoreSearchArgs) -> Result<()> {
    if a.k == 0 {
        bail!("-k must be at least 1");
    }
    if a.text.is_none() && a.like.is_none() && a.queries.is_none() {
        bail!("give a description, --like ID or --queries FILE");
    }
    let from = a
        .from
        .as_deref()
        .map(|t| time::parse("--from", t))
        .transpose()?;
    let to =
        a.to.as_deref()
            .map(|t| time::parse("--to", t))
            .transpose()?;
    let range = TimeRange::new(from, to).map_err(|e| anyhow::anyhow!("--from/--to: {e}"))?;
    if let Some(uri) = a.dir.to_str().filter(|s| sen_milvus::Target::is_uri(s)) {
        return search_milvus(&a, uri, range);
    }
    if !a.boxes.is_empty() || a.like_box.is_some() || !a.search_params.is_empty() {
        bail!(
            "--box, --like-box and --search-param are for a replicated collection (milvus://HOST:PORT/COLLECTION); {} is a store directory",
            a.dir.display()
        );
    }
    let store = Store::open(&a.dir, Mode::Reader)?;
    let threads = a
        .search_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cameras = (!a.cameras.is_empty()).then(|| a.cameras.clone());
    let query = |vector: Vec<f32>, exclude: Option<u64>| Query {
        vector,
        k: a.k,
        cameras: cameras.clone(),
        time: range,
        exclude,
    };
    if let Some(id) = a.like {
        // The bundle only has to be the store's: no text encoder runs.
        let m = Manifest::load(&a.bundle)?;
        store.check_encoder(
            &m.encoder_digest(&m.io.image)?,
            m.model.embed_dim,
            &a.bundle.display().to_string(),
        )?;
        let t = Instant::now();
        let v = store.embedding(id)?;
        let found = store
            .search(&[query(v, Some(id))], threads)?
            .pop()
            .expect("one");
        return print_found(
            None,
            Some(id),
            t.elapsed().as_secs_f64() * 1e3,
            &found,
            a.json,
        );
    }
    let enc = TextEncoder::load(&a.bundle, &a.provider.options())?;
    log_sessions(&enc.reports);
    let m = &enc.manifest;
    store.check_encoder(
        &m.encoder_digest(&m.io.image)?,
        m.model.embed_dim,
        &a.bundle.display().to_string(),
    )?;
    let answer = |texts: &[String], json: bool| -> Result<()> {
        let t = Instant::now();
        let e = enc.encode(texts)?;
        let qs: Vec<Query> = e
            .rows()
            .into_iter()
            .map(|r| query(r.to_vec(), None))
            .collect();
        let found = store.search(&qs, threads)?;
        let took = t.elapsed().as_secs_f64() * 1e3 / texts.len() as f64;
        for (q, f) in texts.iter().zip(&found) {
            print_found(Some(q), None, took, f, json)?;
        }
        Ok(())
    };
    answer_queries(&a, answer)
}

/// Answer the description, or every line of `--queries FILE|-` (JSON lines, 64 per
/// batch; empty lines are skipped with a warning).
fn answer_queries(
    a: &StoreSearchArgs,
    answer: impl Fn(&[String], bool) -> Result<()>,
) -> Result<()> {
    match (&a.text, &a.queries) {
        (Some(t), _) => answer(std::slice::from_ref(t), a.json),
        (None, Some(src)) => {
            let reader: Box<dyn BufRead> = if src == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(src).with_context(|| format!("--queries {src}"))?,
                ))
            };
            let mut batch = vec![];
            for (n, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("--queries {src}: line {}", n + 1))?;
                if line.trim().is_empty() {
                    tracing::warn!("--queries {src}: line {} is empty and is skipped", n + 1);
                    continue;
                }
                batch.push(line);
                if batch.len() == 64 {
                    answer(&batch, true)?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                answer(&batch, true)?;
            }
            Ok(())
        }
        (None, None) => bail!("give a description, --like ID or --queries FILE"),
    }
}

/// `sen store search milvus://...`: the same search through a replicated collection.
fn search_milvus(a: &StoreSearchArgs, uri: &str, range: TimeRange) -> Result<()> {
    use sen_milvus::collection::search_params;
    let target = sen_milvus::Target::parse(uri)?;
    let settings = sen_milvus::Settings::from_env()?;
    for b in &a.boxes {
        sen_milvus::check_box_name(b)?;
    }
    let m = Manifest::load(&a.bundle)?;
    let encoder = sen_milvus::Encoder {
        sha256: m.encoder_digest(&m.io.image)?,
        dim: m.model.embed_dim,
    };
    let rt = runtime()?;
    let mut coll = rt.block_on(sen_milvus::Collection::connect(&target, &settings))?;
    rt.block_on(coll.open(Some(&encoder)))?;
    let params = search_params(coll.index(), a.k, &a.search_params)?;
    let mut filter = sen_milvus::SearchFilter {
        cameras: (!a.cameras.is_empty()).then(|| a.cameras.clone()),
        time: range,
        boxes: (!a.boxes.is_empty()).then(|| a.boxes.clone()),
        exclude: None,
    };
    if let Some(id) = a.like {
        let b = a.like_box.clone().ok_or_else(|| {
            anyhow::anyhow!("--like {id} on {target}: give --like-box NAME (ids are per box)")
        })?;
        let t = Instant::now();
        let v = rt.block_on(coll.embedding(&b, id))?;
        filter.exclude = Some((b, id));
        let hits = rt
            .block_on(coll.search(vec![v], a.k, &filter, params))?
            .pop()
            .unwrap_or_default();
        return print_hits(
            None,
            Some(id),
            t.elapsed().as_secs_f64() * 1e3,
            &hits,
            a.json,
        );
    }
    let enc = TextEncoder::load(&a.bundle, &a.provider.options())?;
    log_sessions(&enc.reports);
    let answer = |texts: &[String], json: bool| -> Result<()> {
        let t = Instant::now();
        let e = enc.encode(texts)?;
        let vs: Vec<Vec<f32>> = e.rows().into_iter().map(|r| r.to_vec()).collect();
        let hits = rt.block_on(coll.search(vs, a.k, &filter, params.clone()))?;
        let took = t.elapsed().as_secs_f64() * 1e3 / texts.len() as f64;
        for (q, h) in texts.iter().zip(&hits) {
            print_hits(Some(q), None, took, h, json)?;
        }
        Ok(())
    };
    answer_queries(a, answer)
}

fn heading(out: &mut impl Write, query: Option<&str>, like: Option<u64>, n: usize) -> Result<()> {
    match (query, like) {
        (Some(q), _) => writeln!(out, "{q:?}: top {n}")?,
        (None, Some(id)) => writeln!(out, "like row {id}: top {n}")?,
        _ => {}
    }
    Ok(())
}

fn row_line(out: &mut impl Write, i: usize, f: &sen_store::Found, b: Option<&str>) -> Result<()> {
    writeln!(
        out,
        "{:>4}. {:.4}  {}id {:<8} {:<16} {}  {}{}",
        i + 1,
        f.score,
        b.map(|b| format!("box {b}  ")).unwrap_or_default(),
        f.id,
        f.camera,
        time::format(f.time_ms),
        f.path,
        f.pid.map(|p| format!("  pid {p}")).unwrap_or_default()
    )?;
    Ok(())
}

/// One query's results: the SPEC §11 JSON line, or a readable list; `box` is named
/// for results from a replicated collection.
fn print_results(
    query: Option<&str>,
    like: Option<u64>,
    took_ms: f64,
    rows: &[(&sen_store::Found, Option<&str>)],
    json: bool,
) -> Result<()> {
    let out = std::io::stdout();
    let mut out = out.lock();
    if json {
        let v = results_object(query, like, took_ms, rows.iter().copied());
        writeln!(out, "{v}")?;
    } else {
        heading(&mut out, query, like, rows.len())?;
        for (i, (f, b)) in rows.iter().enumerate() {
            row_line(&mut out, i, f, *b)?;
        }
        writeln!(out, "({took_ms:.2} ms)")?;
    }
    Ok(())
}

fn print_found(
    query: Option<&str>,
    like: Option<u64>,
    took_ms: f64,
    found: &[sen_store::Found],
    json: bool,
) -> Result<()> {
    let rows: Vec<_> = found.iter().map(|f| (f, None)).collect();
    print_results(query, like, took_ms, &rows, json)
}

fn print_hits(
    query: Option<&str>,
    like: Option<u64>,
    took_ms: f64,
    hits: &[sen_milvus::BoxHit],
    json: bool,
) -> Result<()> {
    let rows: Vec<_> = hits
        .iter()
        .map(|h| (&h.found, Some(h.box_name.as_str())))
        .collect();
    print_results(query, like, took_ms, &rows, json)
}

fn delete(a: DeleteArgs) -> Result<()> {
    let sel = if !a.id.is_empty() {
        Selector::Ids(a.id.clone())
    } else if let Some(c) = &a.camera {
        Selector::Camera(c.clone())
    } else {
        let t = a.before.as_deref().expect("clap requires one");
        Selector::Before(time::parse("--before", t)?)
    };
    let store = Store::open(&a.dir, Mode::Writer)?;
    let n = store.delete(sel)?;
    if a.json {
        println!("{}", serde_json::json!({"deleted": n}));
    } else {
        println!(
            "{}: {n} rows deleted (their embeddings leave the files at the next `sen store compact`)",
            a.dir.display()
        );
    }
    Ok(())
}

fn stats(dir: &Path, json: bool) -> Result<()> {
    let store = Store::open(dir, Mode::Reader)?;
    let s = store.stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats_json(&s))?);
        return Ok(());
    }
    let i = &s.info;
    println!("store      {} ({})", dir.display(), i.uuid);
    println!(
        "rows       {} ({} not yet in a segment, {} deleted awaiting compaction) in {} segments",
        s.rows, s.unflushed, s.deleted_pending, s.segments
    );
    println!(
        "embeddings {}-dim {:?}{}; image encoder {} ({})",
        i.dim,
        i.storage,
        if i.crops {
            ", crops kept"
        } else {
            ", no crops"
        },
        i.image_encoder_sha256,
        i.bundle_precision
    );
    println!(
        "bytes      {}",
        s.bytes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("cameras    {}", s.cameras.len());
    for c in &s.cameras {
        let t = |v: Option<i64>| v.map(time::format).unwrap_or_else(|| "-".into());
        println!(
            "  {:<24} {:>8} rows  {} .. {}  last ingest {}",
            c.camera,
            c.rows,
            t(c.first_ms),
            t(c.last_ms),
            t(c.last_ingest_ms)
        );
    }
    Ok(())
}

fn import(a: ImportArgs) -> Result<()> {
    let index = sen_store::index::Index::open(&a.index)?;
    let store = Store::open(&a.dir, Mode::Writer)?;
    let i = store.info();
    if index.header.image_encoder_sha256 != i.image_encoder_sha256 || index.header.dim != i.dim {
        bail!(
            "{}: made by image encoder {} ({} dims), but the store {} holds encoder {} ({} dims); \
             import only indexes of the store's bundle",
            a.index.display(),
            index.header.image_encoder_sha256,
            index.header.dim,
            a.dir.display(),
            i.image_encoder_sha256,
            i.dim
        );
    }
    if i.crops {
        bail!(
            "{}: keeps crops, and an index file has none; create the store with --no-crops to import, \
             or add the images with `sen store add`",
            a.dir.display()
        );
    }
    let t = match &a.time {
        Some(t) => time::parse("--time", t)?,
        None => mtime_ms(&a.index)?,
    };
    let camera = a
        .camera
        .clone()
        .unwrap_or_else(|| sen_store::store::DEFAULT_CAMERA.into());
    let n = index.len();
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        bar(n, "importing")
    };
    let (mut first, mut last) = (None, None);
    for lo in (0..n).step_by(ADD_BATCH) {
        let hi = (lo + ADD_BATCH).min(n);
        let rows: Vec<NewRow> = (lo..hi)
            .map(|r| NewRow {
                camera: camera.clone(),
                time_ms: t,
                path: index.header.paths[r].clone(),
                pid: index.header.pids[r],
                attrs: None,
                embedding: index.row(r),
                crop: None,
            })
            .collect();
        let (f, l) = store.add(rows)?;
        first.get_or_insert(f);
        last = Some(l);
        pb.set_position(hi as u64);
    }
    pb.finish_and_clear();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"added": n, "first_id": first, "last_id": last})
        );
    } else {
        println!(
            "{}: {n} rows imported from {}",
            a.dir.display(),
            a.index.display()
        );
    }
    Ok(())
}
