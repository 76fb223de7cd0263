//! `sen store search`: a store or a replicated collection, by description or like a row.

use super::replicate::runtime;
use crate::common::{ProviderArgs, log_sessions};
use anyhow::{Context, Result, bail};
use sen_core::Manifest;
use sen_runtime::encoders::TextEncoder;
use sen_store::results::results_object;
use sen_store::time::{self, TimeRange};
use sen_store::{Mode, Query, Store};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

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
    /// Search with a track's crops (the normalised mean of their embeddings; the
    /// track itself is left out), on the camera --like-camera names.
    #[arg(long, value_name = "TRACK", conflicts_with_all = ["queries", "like", "text"])]
    like_track: Option<String>,
    /// The camera of --like-track (default "default").
    #[arg(long, value_name = "CAMERA", requires = "like_track")]
    like_camera: Option<String>,
    /// `track`: one result per track, ranked by its best crop (SPEC §12).
    #[arg(long, value_name = "track", value_parser = ["track"])]
    group: Option<String>,
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

pub fn run(a: StoreSearchArgs) -> Result<()> {
    if a.k == 0 {
        bail!("-k must be at least 1");
    }
    if a.text.is_none() && a.like.is_none() && a.like_track.is_none() && a.queries.is_none() {
        bail!("give a description, --like ID, --like-track TRACK or --queries FILE");
    }
    let group = a.group.is_some();
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
        if group || a.like_track.is_some() {
            bail!(
                "--group track and --like-track are not supported on a replicated collection yet; search the box's store"
            );
        }
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
    let query = |vector: Vec<f32>, exclude: Vec<u64>| Query {
        vector,
        k: a.k,
        cameras: cameras.clone(),
        time: range,
        exclude,
        group,
    };
    if a.like.is_some() || a.like_track.is_some() {
        // The bundle only has to be the store's: no text encoder runs.
        let m = Manifest::load(&a.bundle)?;
        store.check_encoder(
            &m.encoder_digest(&m.io.image)?,
            m.model.embed_dim,
            &m.preprocess,
            &a.bundle.display().to_string(),
        )?;
    }
    if let Some(track) = &a.like_track {
        let camera = sen_store::camera(a.like_camera.clone())?;
        let t = Instant::now();
        let (v, ids) = store.track_embedding(&camera, track)?;
        let found = store.search(&[query(v, ids)], threads)?.pop().expect("one");
        let took = t.elapsed().as_secs_f64() * 1e3;
        if a.json {
            let mut v = results_object(None, None, took, found.iter().map(|f| (f, None)));
            v["like_track"] = serde_json::json!({"camera": camera, "track": track});
            println!("{v}");
            return Ok(());
        }
        println!("like track {track:?} on {camera:?}: top {}", found.len());
        let mut out = std::io::stdout().lock();
        for (i, f) in found.iter().enumerate() {
            row_line(&mut out, i, f, None)?;
        }
        println!("({took:.2} ms)");
        return Ok(());
    }
    if let Some(id) = a.like {
        let t = Instant::now();
        let v = store.embedding(id)?;
        let found = store
            .search(&[query(v, vec![id])], threads)?
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
        &m.preprocess,
        &a.bundle.display().to_string(),
    )?;
    let answer = |texts: &[String], json: bool| -> Result<()> {
        let t = Instant::now();
        let e = enc.encode(texts)?;
        let qs: Vec<Query> = e
            .rows()
            .into_iter()
            .map(|r| query(r.to_vec(), vec![]))
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
        (None, None) => {
            bail!("give a description, --like ID, --like-track TRACK or --queries FILE")
        }
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
    let track = match (&f.track, &f.group) {
        (Some(t), Some(g)) => format!(
            "  track {t} ({} crops, {} .. {})",
            g.crops,
            time::format(g.first_ms),
            time::format(g.last_ms)
        ),
        (Some(t), None) => format!("  track {t}"),
        _ => String::new(),
    };
    writeln!(
        out,
        "{:>4}. {:.4}  {}id {:<8} {:<16} {}  {}{}{track}",
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
