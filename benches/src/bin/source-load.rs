//! `make source-load`: the Frigate source end to end (published -> fetched ->
//! embedded -> durable) next to HTTP multipart ingest of the same crops, on one
//! `sen serve`, in the same run; then the lag from publish to durable at half the
//! source's rate. One reported run, not a test.
//!
//! A real broker (mosquitto on an ephemeral loopback port) and the Frigate stand-in
//! of `sen-testing` (playing 0.17: one fetch per ended event) serving the dataset's
//! test crops. Each event is one `end` message at QoS 1 and one crop; each HTTP
//! request is one crop (multipart), from as many clients as the source fetches at
//! once (`--source-concurrency`, 8). Rounds alternate the two and keep each one's
//! best. Everything is bounded: `--events` per round, a deadline per phase.
//!
//! `source-load --sen target/release/sen --bundle B --dataset SYNTH [--events 600]
//!  [--rounds 2] [--paced-seconds 10] [--json OUT]`

use anyhow::{Context, Result, bail};
use reqwest::blocking::{Client, multipart};
use sen_testing::Serve;
use sen_testing::frigate::{Event, Frigate};
use sen_testing::mqtt::{Broker, Publisher};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn arg(a: &[String], name: &str) -> Option<String> {
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

fn crops(dataset: &Path) -> Result<Vec<Vec<u8>>> {
    let raw = dataset.join("reid_raw.json");
    let recs: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&raw).with_context(|| raw.display().to_string())?)?;
    let mut out = vec![];
    for r in recs.iter().filter(|r| r["split"] == "test") {
        let p = dataset
            .join("imgs")
            .join(r["file_path"].as_str().unwrap_or_default());
        out.push(std::fs::read(&p).with_context(|| p.display().to_string())?);
    }
    if out.is_empty() {
        bail!("{}: no test split", raw.display());
    }
    Ok(out)
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn stats(c: &Client, s: &Serve) -> Result<Value> {
    Ok(c.get(s.at("/v1/stats")).send()?.json()?)
}

fn ingested(c: &Client, s: &Serve) -> Result<u64> {
    Ok(stats(c, s)?["source"]["ingested"].as_u64().unwrap_or(0))
}

/// Wait until the source has ingested `n` in all; false past `deadline`.
fn wait_ingested(c: &Client, s: &Serve, n: u64, deadline: Instant) -> Result<bool> {
    while Instant::now() < deadline {
        if ingested(c, s)? >= n {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}

/// The lag histogram's cumulative buckets (le, count).
fn lag_buckets(c: &Client, s: &Serve) -> Result<Vec<(f64, f64)>> {
    let m = c.get(s.at("/metrics")).send()?.text()?;
    let mut out = vec![];
    for line in m
        .lines()
        .filter(|l| l.starts_with("sen_source_lag_seconds_bucket{"))
    {
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse()?
        };
        let n: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        out.push((le, n));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// A quantile of the observations between two scrapes (Prometheus'
/// histogram_quantile: linear within the bucket).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let d: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            (
                le,
                n - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let total = d.last().map_or(0.0, |x| x.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in &d {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / (n - prev.1).max(1e-9);
        }
        prev = (le, n);
    }
    prev.0
}

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let sen = PathBuf::from(arg(&a, "--sen").context("--sen PATH")?);
    let bundle = PathBuf::from(arg(&a, "--bundle").context("--bundle DIR")?);
    let dataset = PathBuf::from(arg(&a, "--dataset").context("--dataset DIR")?);
    let events: usize = arg(&a, "--events").map_or(Ok(600), |v| v.parse())?;
    let rounds: usize = arg(&a, "--rounds").map_or(Ok(2), |v| v.parse())?;
    let paced_s: f64 = arg(&a, "--paced-seconds").map_or(Ok(10.0), |v| v.parse())?;
    let concurrency = 8usize;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir()?;
    let crops = Arc::new(crops(&dataset)?);
    let broker =
        Broker::start(work.path()).context("mosquitto is needed (apt-get install mosquitto)")?;
    let mut frigate = Frigate::start_new(false);
    {
        let mut st = frigate.lock();
        st.crops = crops.clone();
        st.quiet = true;
    }
    let s = Serve::launch(&sen, &bundle)
        .store(&work.path().join("store"))
        .args([
            "--source",
            "frigate",
            "--mqtt",
            &broker.url(),
            "--frigate-api",
            &frigate.url(),
        ])
        .args(["--source-concurrency", &concurrency.to_string()])
        .start();
    let c = Client::builder().timeout(Duration::from_secs(30)).build()?;
    // Published only once the broker acknowledged the subscription: earlier
    // messages would reach sen through the backfill, not the path measured here.
    let t = Instant::now();
    while stats(&c, &s)?["source"]["subscribed"] != true {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the source did not subscribe within 30 s:\n{}", s.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let publisher = Publisher::connect(broker.port, "source-load");
    let mut seq = 0usize;
    let mut add_event = |frigate: &Frigate, best: f64| -> String {
        seq += 1;
        let id = format!("{:.6}-load{seq:06}", best);
        frigate.lock().events.insert(
            id.clone(),
            Event {
                id: id.clone(),
                camera: format!("cam{}", seq % 4),
                label: "person".into(),
                start: best - 0.5,
                end: Some(best + 1.0),
                best,
                has_snapshot: true,
                bbox: [10.0, 20.0, 110.0, 320.0],
                zones: vec![],
                score: 0.8,
            },
        );
        id
    };
    // Warm-up: a few events through the whole path.
    let base = ingested(&c, &s)?;
    for _ in 0..16 {
        let id = add_event(&frigate, now_s());
        publisher.publish("frigate/events", &frigate.message(&id, "end", None), false);
    }
    if !wait_ingested(&c, &s, base + 16, Instant::now() + Duration::from_secs(60))? {
        bail!(
            "warm-up events did not arrive: {}\n{}",
            stats(&c, &s)?["source"],
            s.log()
        );
    }
    let mut best_src = 0f64;
    let mut best_http = 0f64;
    let mut runs = vec![];
    for round in 0..rounds {
        // The source: all events' end messages at once, timed to the last durable row.
        let base = ingested(&c, &s)?;
        let ids: Vec<String> = (0..events).map(|_| add_event(&frigate, now_s())).collect();
        let msgs: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| frigate.message(id, "end", None))
            .collect();
        let t = Instant::now();
        for m in &msgs {
            publisher.publish("frigate/events", m, false);
        }
        if !wait_ingested(
            &c,
            &s,
            base + events as u64,
            Instant::now() + Duration::from_secs(300),
        )? {
            bail!(
                "round {round}: the source did not finish: {}",
                stats(&c, &s)?["source"]
            );
        }
        let src = events as f64 / t.elapsed().as_secs_f64();
        // HTTP multipart ingest of the same crops, one per request, as many clients.
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let failures = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (next, crops, s, c) = (next.clone(), crops.clone(), &s, &c);
                    sc.spawn(move || {
                        let mut bad = 0;
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= events {
                                return bad;
                            }
                            let img = crops[i % crops.len()].clone();
                            let form = multipart::Form::new()
                                .text(
                                    "meta",
                                    json!([{"camera": "http", "track": format!("h{round}-{i}")}])
                                        .to_string(),
                                )
                                .part(
                                    "image",
                                    multipart::Part::bytes(img)
                                        .file_name("c.jpg")
                                        .mime_str("image/jpeg")
                                        .unwrap(),
                                );
                            match c.post(s.at("/v1/images")).multipart(form).send() {
                                Ok(r) if r.status() == 201 => {}
                                _ => bad += 1,
                            }
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(events))
                .sum::<usize>()
        });
        let http = events as f64 / t.elapsed().as_secs_f64();
        if failures > 0 {
            bail!("round {round}: {failures} HTTP ingests failed");
        }
        println!(
            "round {round}: Frigate source {src:.1} events/s, HTTP multipart ingest {http:.1} crops/s"
        );
        runs.push(json!({"round": round, "source_events_per_s": src, "http_crops_per_s": http}));
        best_src = best_src.max(src);
        best_http = best_http.max(http);
    }
    // Half the source's best rate, paced; lag from publish (the frame time) to durable.
    let rate = best_src / 2.0;
    let n = (rate * paced_s).round().max(1.0) as usize;
    let before = lag_buckets(&c, &s)?;
    let base = ingested(&c, &s)?;
    let t0 = Instant::now();
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let id = add_event(&frigate, now_s());
        publisher.publish("frigate/events", &frigate.message(&id, "end", None), false);
    }
    if !wait_ingested(
        &c,
        &s,
        base + n as u64,
        Instant::now() + Duration::from_secs(120),
    )? {
        bail!("the paced run did not finish: {}", stats(&c, &s)?["source"]);
    }
    let after = lag_buckets(&c, &s)?;
    let (p50, p99) = (
        quantile(&before, &after, 0.5),
        quantile(&before, &after, 0.99),
    );
    println!(
        "best of {rounds}: Frigate source {best_src:.1} events/s = {:.0}% of HTTP multipart ingest {best_http:.1} crops/s",
        100.0 * best_src / best_http
    );
    println!(
        "paced at {rate:.1} events/s ({n} events): lag from publish to durable p50 {:.3} s, p99 {:.3} s",
        p50, p99
    );
    let out = json!({
        "events_per_round": events, "concurrency": concurrency, "runs": runs,
        "source_events_per_s": best_src, "http_crops_per_s": best_http,
        "ratio": best_src / best_http, "paced_rate": rate, "paced_events": n,
        "lag_p50_s": p50, "lag_p99_s": p99,
    });
    if let Some(p) = arg(&a, "--json") {
        std::fs::write(&p, serde_json::to_vec_pretty(&out)?)?;
    }
    frigate.stop();
    drop(broker);
    Ok(())
}
