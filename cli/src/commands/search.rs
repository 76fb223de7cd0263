//! `sen search`: rank an index file's images for descriptions (v1 output).

use crate::common::{ProviderArgs, log_sessions};
use anyhow::{Context, Result, bail};
use sen_runtime::encoders::TextEncoder;
use sen_runtime::index::Index;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

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

pub fn run(a: SearchArgs) -> Result<()> {
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
