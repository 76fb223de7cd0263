//! `make load`: a bounded load generator against `sen serve` (issue #19), one run.
//!
//! It starts two `sen serve` (batching on: the defaults; batching off: `--max-batch
//! 1`), each on an ephemeral loopback port over a fresh store preloaded with the
//! dataset's test gallery, then runs three workloads
//! (search only, ingest only, 90% search / 10% ingest) at each client count for
//! `--seconds` each (closed loop: every client sends its next request when the last
//! one is answered), each cell on both servers in turn, `--rounds` times, keeping
//! each server's best, and reports QPS, p50 and p99. Last, open-loop runs at fractions
//! of the best search QPS (`--paced`, default 10%, 25%, 50%) with the most clients:
//! requests are sent on a fixed schedule and latency counts from the scheduled moment
//! whenever the client was still waiting on its last answer then, so a stall shows
//! in p99 instead of silently lowering the offered rate.
//!
//! Every run is bounded: `--seconds` per cell and at most `--max-requests` requests.
//!
//! `serve-load --sen target/release/sen --bundle B --dataset SYNTH [--clients 1,8,32]
//!  [--seconds 5] [--rounds 2] [--paced 0.1,0.25,0.5] [--json OUT]`

use anyhow::{Context, Result, bail};
use reqwest::blocking::Client;
use serde_json::{Value, json};

use sen_testing::Serve;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Args {
    sen: PathBuf,
    bundle: PathBuf,
    dataset: PathBuf,
    clients: Vec<usize>,
    seconds: f64,
    max_requests: u64,
    json: Option<PathBuf>,
    work: PathBuf,
    /// Fractions of the best closed-loop search QPS to run open loop at.
    paced: Vec<f64>,
    /// Runs of each cell per server (the best is kept).
    rounds: usize,
    /// `--watches N`: instead of the batching comparison, ingest with no watch
    /// against ingest with N active watches (SPEC §12: the matcher's cost).
    watches: Option<usize>,
}

fn args() -> Result<Args> {
    let a: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        a.iter()
            .position(|x| x == name)
            .and_then(|i| a.get(i + 1).cloned())
    };
    let need = |name: &str| get(name).with_context(|| format!("{name} is required"));
    let clients = get("--clients")
        .unwrap_or_else(|| "1,8,32".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .ok()
                .filter(|&c| c > 0)
                .with_context(|| format!("--clients: {c:?} is not a positive count"))
        })
        .collect::<Result<Vec<_>>>()?;
    let seconds: f64 = get("--seconds")
        .unwrap_or_else(|| "5".into())
        .parse()
        .context("--seconds")?;
    if !(seconds > 0.0 && seconds <= 60.0) {
        bail!("--seconds {seconds}: must be in (0, 60]");
    }
    Ok(Args {
        sen: need("--sen")?.into(),
        bundle: need("--bundle")?.into(),
        dataset: need("--dataset")?.into(),
        clients,
        seconds,
        max_requests: get("--max-requests")
            .unwrap_or_else(|| "200000".into())
            .parse()
            .context("--max-requests")?,
        json: get("--json").map(PathBuf::from),
        rounds: get("--rounds")
            .unwrap_or_else(|| "2".into())
            .parse::<usize>()
            .ok()
            .filter(|&r| (1..=5).contains(&r))
            .context("--rounds: 1 to 5")?,
        paced: get("--paced")
            .unwrap_or_else(|| "0.1,0.25,0.5".into())
            .split(',')
            .map(|f| {
                f.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|&f| f > 0.0 && f <= 1.0)
                    .with_context(|| format!("--paced: {f:?} is not a fraction in (0, 1]"))
            })
            .collect::<Result<Vec<_>>>()?,
        work: get("--work")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("sen-load")),
        watches: get("--watches")
            .map(|n| {
                n.parse::<usize>()
                    .ok()
                    .filter(|&n| (1..=100_000).contains(&n))
                    .with_context(|| format!("--watches {n:?}: 1 to 100000"))
            })
            .transpose()?,
    })
}

/// Captions and image bytes of the dataset's test split.
struct Workload {
    texts: Vec<String>,
    images: Vec<Vec<u8>>,
}

fn workload(dataset: &Path) -> Result<Workload> {
    let raw = dataset.join("reid_raw.json");
    let recs: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&raw).with_context(|| format!("{}", raw.display()))?)
            .with_context(|| format!("{}", raw.display()))?;
    let test: Vec<&Value> = recs.iter().filter(|r| r["split"] == "test").collect();
    if test.is_empty() {
        bail!("{}: no test split", raw.display());
    }
    let mut texts = vec![];
    let mut images = vec![];
    for r in &test {
        for c in r["captions"].as_array().into_iter().flatten() {
            texts.extend(c.as_str().map(str::to_string));
        }
        let p = dataset
            .join("imgs")
            .join(r["file_path"].as_str().unwrap_or_default());
        images.push(std::fs::read(&p).with_context(|| format!("{}", p.display()))?);
    }
    Ok(Workload { texts, images })
}

fn start(a: &Args, store: &Path, extra: &[&str]) -> Result<Serve> {
    Serve::launch(&a.sen, &a.bundle)
        .store(store)
        .args(extra)
        .ready_within(Duration::from_secs(120))
        .try_start()
        .map_err(anyhow::Error::msg)
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a reqwest client")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Search,
    Ingest,
    Mixed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Search => "search",
            Kind::Ingest => "ingest",
            Kind::Mixed => "90% search / 10% ingest",
        }
    }
}

/// One request of the workload: Ok on a 2xx.
async fn request(
    c: &reqwest::Client,
    url: &str,
    w: &Workload,
    search: bool,
    n: u64,
) -> Result<(), String> {
    let r = if search {
        let t = &w.texts[n as usize % w.texts.len()];
        c.post(format!("{url}/v1/search"))
            .json(&json!({"text": t, "k": 10}))
            .send()
            .await
    } else {
        let img = &w.images[n as usize % w.images.len()];
        c.post(format!("{url}/v1/images?camera=load-{}", n % 4))
            .header("content-type", "image/jpeg")
            .body(img.clone())
            .send()
            .await
    };
    match r {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
            Ok(())
        }
        Ok(r) => Err(format!("{}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

/// One client: its own connection pool, so `clients` clients hold `clients`
/// connections as that many separate callers would.
fn async_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build()
        .expect("a reqwest client")
}

/// The load generator's own runtime: one thread of async clients, so the generator
/// takes as little of the cores it shares with the server as it can (like `oha`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The server's counters this run reads: (name with labels) -> value.
fn scrape(url: &str) -> std::collections::HashMap<String, f64> {
    let mut m = std::collections::HashMap::new();
    if let Ok(r) = client().get(format!("{url}/metrics")).send()
        && let Ok(t) = r.text()
    {
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = l.rsplit_once(' ')
                && let Ok(v) = v.parse::<f64>()
            {
                m.insert(k.to_string(), v);
            }
        }
    }
    m
}

/// Mean batch size per queue and mean ms per stage between two scrapes.
fn batching(
    a: &std::collections::HashMap<String, f64>,
    b: &std::collections::HashMap<String, f64>,
) -> Value {
    let d = |k: &str| b.get(k).copied().unwrap_or(0.0) - a.get(k).copied().unwrap_or(0.0);
    let mut batch = serde_json::Map::new();
    for q in ["text", "image", "search"] {
        let n = d(&format!("sen_batch_size_count{{queue=\"{q}\"}}"));
        if n > 0.0 {
            batch.insert(
                q.into(),
                json!(d(&format!("sen_batch_size_sum{{queue=\"{q}\"}}")) / n),
            );
        }
    }
    let mut stage = serde_json::Map::new();
    for st in ["queue", "preprocess", "inference", "search"] {
        let n = d(&format!(
            "sen_stage_duration_seconds_count{{stage=\"{st}\"}}"
        ));
        if n > 0.0 {
            stage.insert(
                st.into(),
                json!(1e3 * d(&format!("sen_stage_duration_seconds_sum{{stage=\"{st}\"}}")) / n),
            );
        }
    }
    json!({"mean_batch": batch, "stage_ms": stage})
}

#[derive(Default)]
struct Cell {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    lat_ms: Vec<f64>,
}

impl Cell {
    fn add(&mut self, results: Vec<(Vec<f64>, u64, Option<String>)>) {
        for (lat, errors, first) in results {
            self.requests += lat.len() as u64;
            self.errors += errors;
            if self.first_error.is_none() {
                self.first_error = first;
            }
            self.lat_ms.extend(lat);
        }
    }

    fn qps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.lat_ms.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
    }
}

/// Closed loop: `clients` async clients, each sending back to back for `--seconds`
/// after a half-second warm-up.
fn closed(a: &Args, url: &str, w: &Arc<Workload>, kind: Kind, clients: usize) -> Cell {
    let warm = Duration::from_millis(500);
    let run = Duration::from_secs_f64(a.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let max = a.max_requests;
    let results = runtime().block_on(async {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (w, counter, url) = (w.clone(), counter.clone(), url.to_string());
                tokio::spawn(async move {
                    let c = async_client();
                    let (mut lat, mut errors, mut first) = (vec![], 0u64, None);
                    loop {
                        let now = t0.elapsed();
                        if now >= warm + run {
                            break;
                        }
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        if n >= max {
                            break;
                        }
                        let search = match kind {
                            Kind::Search => true,
                            Kind::Ingest => false,
                            Kind::Mixed => n % 10 != 0,
                        };
                        let t = Instant::now();
                        let r = request(&c, &url, &w, search, n).await;
                        // Only requests that started after the warm-up and ended within
                        // the window count.
                        if now >= warm && t0.elapsed() <= warm + run {
                            match r {
                                Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                                Err(e) => {
                                    errors += 1;
                                    first.get_or_insert(e);
                                }
                            }
                        }
                    }
                    (lat, errors, first)
                })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.expect("client task"));
        }
        out
    });
    let mut cell = Cell {
        seconds: a.seconds,
        ..Default::default()
    };
    cell.add(results);
    cell
}

/// Open loop at `rate` search requests per second over `clients` clients; latency
/// counts from each request's scheduled moment.
fn open(a: &Args, url: &str, w: &Arc<Workload>, clients: usize, rate: f64) -> Cell {
    let total = ((rate * a.seconds) as u64).clamp(1, a.max_requests);
    let (results, secs) = runtime().block_on(async {
        // Every client connects and sends one request before the schedule starts.
        let cs: Vec<reqwest::Client> = (0..clients).map(|_| async_client()).collect();
        for (i, c) in cs.iter().enumerate() {
            let _ = request(c, url, w, true, i as u64).await;
        }
        let t0 = Instant::now() + Duration::from_millis(50);
        let tasks: Vec<_> = cs
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let (w, url) = (w.clone(), url.to_string());
                tokio::spawn(async move {
                    let (mut lat, mut errors, mut first) = (vec![], 0u64, None);
                    let mut n = i as u64;
                    while n < total {
                        let at = t0 + Duration::from_secs_f64(n as f64 / rate);
                        // Latency counts from the scheduled moment when this client was
                        // still busy then (a slow answer delays the next request: that
                        // wait is the server's), and from the wake-up otherwise (the
                        // timer's millisecond tick is the generator's, not the server's).
                        let from = if Instant::now() >= at {
                            at
                        } else {
                            tokio::time::sleep_until(at.into()).await;
                            Instant::now()
                        };
                        match request(&c, &url, &w, true, n).await {
                            Ok(()) => lat.push(from.elapsed().as_secs_f64() * 1e3),
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e);
                            }
                        }
                        n += clients as u64;
                    }
                    (lat, errors, first)
                })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.expect("client task"));
        }
        (out, t0.elapsed().as_secs_f64())
    });
    let mut cell = Cell {
        seconds: secs,
        ..Default::default()
    };
    cell.add(results);
    cell
}

fn preload(a: &Args, store: &Path) -> Result<()> {
    if store.exists() {
        std::fs::remove_dir_all(store)?;
    }
    let st = Command::new(&a.sen)
        .args(["store", "create"])
        .arg(store)
        .arg("--bundle")
        .arg(&a.bundle)
        .status()?;
    if !st.success() {
        bail!("sen store create failed");
    }
    let list = a.work.join("gallery.jsonl");
    let raw: Vec<Value> = serde_json::from_slice(&std::fs::read(a.dataset.join("reid_raw.json"))?)?;
    let mut lines = String::new();
    for (i, r) in raw.iter().filter(|r| r["split"] == "test").enumerate() {
        let path = a
            .dataset
            .join("imgs")
            .join(r["file_path"].as_str().unwrap_or_default());
        lines.push_str(
            &json!({"path": path, "camera": format!("cam-{}", i % 4), "pid": r["id"]}).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&list, lines)?;
    let st = Command::new(&a.sen)
        .args(["store", "add"])
        .arg(store)
        .arg("--bundle")
        .arg(&a.bundle)
        .arg("--list")
        .arg(&list)
        .arg("--json")
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("sen store add (preload) failed");
    }
    Ok(())
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    std::fs::create_dir_all(&a.work)?;
    let w = Arc::new(workload(&a.dataset)?);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "sen serve under load: {} ({} cores; the load generator shares them), {} s per cell",
        cpu, cores, a.seconds
    );
    let extra: Vec<String> = std::env::var("SEN_LOAD_SERVE_ARGS")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    if let Some(n) = a.watches {
        return watch_cost(&a, &w, n, &extra);
    }
    let nobatch: Vec<&str> = ["--max-batch", "1"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let modes: [(&str, &[&str]); 2] = [("batching", &extra), ("--max-batch 1", &nobatch)];
    let kinds = [Kind::Search, Kind::Ingest, Kind::Mixed];
    let mut report = vec![];
    let mut best = std::collections::BTreeMap::<(&str, &str), f64>::new();
    let most = *a.clients.iter().max().expect("clients");
    // Both servers run side by side (an idle one takes no CPU) and every cell runs on
    // each in turn, `--rounds` times, keeping each server's best: this machine's speed
    // drifts by tens of percent over minutes, and interleaving puts both
    // configurations under the same drift.
    let mut servers = vec![];
    for (i, (mode, extra)) in modes.iter().enumerate() {
        let store = a.work.join(format!("store-{i}"));
        preload(&a, &store)?;
        servers.push((*mode, start(&a, &store, extra)?, store));
    }
    println!(
        "\n{:<14} {:<24} {:>7} {:>9} {:>9} {:>9} {:>7}   mean batch text/image/search",
        "server", "workload", "clients", "QPS", "p50 ms", "p99 ms", "errors",
    );
    for kind in kinds {
        for &clients in &a.clients {
            for (mode, s, _) in &servers {
                let mut kept: Option<(Cell, Value)> = None;
                for _ in 0..a.rounds {
                    let before = scrape(&s.url);
                    let cell = closed(&a, &s.url, &w, kind, clients);
                    let inside = batching(&before, &scrape(&s.url));
                    if kept.as_ref().is_none_or(|(k, _)| cell.qps() > k.qps()) {
                        kept = Some((cell, inside));
                    }
                }
                let (cell, inside) = kept.expect("at least one round");
                let mb = |q: &str| {
                    inside["mean_batch"][q]
                        .as_f64()
                        .map_or("-".to_string(), |v| format!("{v:.1}"))
                };
                println!(
                    "{:<14} {:<24} {:>7} {:>9.1} {:>9.2} {:>9.2} {:>7}   {}/{}/{}",
                    mode,
                    kind.name(),
                    clients,
                    cell.qps(),
                    cell.pct(50.0),
                    cell.pct(99.0),
                    cell.errors,
                    mb("text"),
                    mb("image"),
                    mb("search")
                );
                if let Some(e) = &cell.first_error {
                    println!("   first error: {e}");
                }
                if clients == most {
                    best.insert((mode, kind.name()), cell.qps());
                }
                report.push(
                    json!({"server": mode, "workload": kind.name(), "clients": clients,
                    "qps": cell.qps(), "p50_ms": cell.pct(50.0), "p99_ms": cell.pct(99.0),
                    "requests": cell.requests, "errors": cell.errors, "metrics": inside}),
                );
            }
        }
    }
    let max_qps = report
        .iter()
        .filter(|r| r["server"] == "batching" && r["workload"] == "search")
        .filter_map(|r| r["qps"].as_f64())
        .fold(0.0, f64::max);
    let mut paced = vec![];
    for &f in &a.paced {
        let rate = max_qps * f;
        let cell = open(&a, &servers[0].1.url, &w, most, rate);
        println!(
            "{:<14} {:<24} {:>7} {:>9.1} {:>9.2} {:>9.2} {:>7}   (open loop at {:.0}% of the best search QPS)",
            "batching",
            "search, paced",
            most,
            cell.qps(),
            cell.pct(50.0),
            cell.pct(99.0),
            cell.errors,
            f * 100.0
        );
        paced.push(
            json!({"fraction": f, "rate": rate, "clients": most, "qps": cell.qps(),
            "p50_ms": cell.pct(50.0), "p99_ms": cell.pct(99.0), "errors": cell.errors,
            "p99_over_p50": cell.pct(99.0) / cell.pct(50.0)}),
        );
    }
    for (_, s, store) in servers {
        drop(s);
        std::fs::remove_dir_all(&store)?;
    }
    println!();
    for k in ["search", "ingest"] {
        let (on, off) = (best[&("batching", k)], best[&("--max-batch 1", k)]);
        println!(
            "{k} at {most} clients: batching {on:.1} QPS vs --max-batch 1 {off:.1} QPS: {:.2}x (target 1.4x)",
            on / off
        );
    }
    for p in &paced {
        println!(
            "search at {:.0}% of the best QPS ({:.1}/s, {} clients, open loop): p50 {:.2} ms, p99 {:.2} ms, p99/p50 {:.2} (target at 50%: <= 3)",
            p["fraction"].as_f64().unwrap_or_default() * 100.0,
            p["rate"].as_f64().unwrap_or_default(),
            most,
            p["p50_ms"].as_f64().unwrap_or_default(),
            p["p99_ms"].as_f64().unwrap_or_default(),
            p["p99_over_p50"].as_f64().unwrap_or_default()
        );
    }
    if let Some(out) = &a.json {
        std::fs::write(
            out,
            serde_json::to_string_pretty(
                &json!({"cpu": cpu, "cores": cores, "seconds": a.seconds, "cells": report, "paced": paced}),
            )?,
        )?;
    }
    Ok(())
}

/// Ingest (and the 90/10 mix) on a server with no watch against one with `n` active
/// watches that never fire (`min_score` 0.99), interleaved round by round.
fn watch_cost(a: &Args, w: &Arc<Workload>, n: usize, extra: &[&str]) -> Result<()> {
    let mut servers = vec![];
    for (i, label) in ["no watches".to_string(), format!("{n} watches")]
        .into_iter()
        .enumerate()
    {
        let store = a.work.join(format!("store-w{i}"));
        preload(a, &store)?;
        servers.push((label, start(a, &store, extra)?, store));
    }
    let c = client();
    let t = Instant::now();
    for i in 0..n {
        let r = c
            .post(format!("{}/v1/watches", servers[1].1.url))
            .json(&json!({"name": format!("w{i}"), "text": w.texts[i % w.texts.len()], "min_score": 0.99}))
            .send()?;
        if r.status() != 201 {
            bail!(
                "adding watch {i}: {} {}",
                r.status(),
                r.text().unwrap_or_default()
            );
        }
    }
    println!("{n} watches added in {:.1} s", t.elapsed().as_secs_f64());
    println!(
        "\n{:<14} {:<24} {:>7} {:>9} {:>9} {:>9} {:>7}",
        "server", "workload", "clients", "QPS", "p50 ms", "p99 ms", "errors",
    );
    let mut best = std::collections::BTreeMap::<(String, &str, usize), f64>::new();
    for kind in [Kind::Ingest, Kind::Mixed] {
        for &clients in &a.clients {
            for (label, s, _) in &servers {
                let mut kept: Option<Cell> = None;
                for _ in 0..a.rounds {
                    let cell = closed(a, &s.url, w, kind, clients);
                    if kept.as_ref().is_none_or(|k| cell.qps() > k.qps()) {
                        kept = Some(cell);
                    }
                }
                let cell = kept.expect("at least one round");
                println!(
                    "{:<14} {:<24} {:>7} {:>9.1} {:>9.2} {:>9.2} {:>7}",
                    label,
                    kind.name(),
                    clients,
                    cell.qps(),
                    cell.pct(50.0),
                    cell.pct(99.0),
                    cell.errors
                );
                best.insert((label.clone(), kind.name(), clients), cell.qps());
            }
        }
    }
    println!();
    let mut summary = vec![];
    for kind in [Kind::Ingest, Kind::Mixed] {
        for &clients in &a.clients {
            let off = best[&(servers[0].0.clone(), kind.name(), clients)];
            let on = best[&(servers[1].0.clone(), kind.name(), clients)];
            summary.push(json!({"workload": kind.name(), "clients": clients, "qps_no_watch": off, "qps_watches": on, "change": on / off - 1.0}));
            println!(
                "{} at {clients} clients: {off:.1} QPS with no watch, {on:.1} with {n}: {:+.1}% (target: no more than -10%)",
                kind.name(),
                (on / off - 1.0) * 100.0
            );
        }
    }
    if let Some(p) = &a.json {
        std::fs::write(
            p,
            serde_json::to_vec_pretty(
                &json!({"seconds": a.seconds, "watches": n, "cells": summary}),
            )?,
        )?;
    }
    for (_, s, store) in servers {
        drop(s);
        std::fs::remove_dir_all(&store)?;
    }
    Ok(())
}
