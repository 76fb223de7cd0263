//! `sen serve` end to end over real HTTP on loopback ephemeral ports (every loop
//! bounded in count and time): the API, concurrency with batching, SIGKILL and
//! restart, overload (429), SIGTERM draining, keys and scopes, every status of the
//! mapping, and the OpenAPI document.

use reqwest::blocking::{Client, multipart};
use serde_json::{Value, json};

use sen_testing::{Serve, client, result_ids, synth_crops, tiny_bundle, tls_provider};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SEN: &str = env!("CARGO_BIN_EXE_sen");

fn sen() -> Command {
    sen_core::process::command(SEN)
}

/// A random-weight tiny bundle.
fn bundle(dir: &Path) -> PathBuf {
    tiny_bundle(dir, 5)
}

/// JPEG crops of a small synthetic benchmark.
fn crops(dir: &Path, n: usize) -> Vec<(String, Vec<u8>)> {
    synth_crops(dir, 2, n)
}

/// `sen serve` on an ephemeral loopback port with `extra` flags, once ready.
fn start(bundle: &Path, store: &Path, extra: &[&str]) -> Server {
    Serve::launch(SEN, bundle).store(store).args(extra).start()
}

type Server = Serve;

fn post_image(c: &Client, s: &Server, img: &[u8], query: &str) -> reqwest::blocking::Response {
    c.post(s.at(&format!("/v1/images{query}")))
        .header("content-type", "image/jpeg")
        .body(img.to_vec())
        .send()
        .unwrap()
}

fn search(c: &Client, s: &Server, body: Value) -> Value {
    let r = c.post(s.at("/v1/search")).json(&body).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    r.json().unwrap()
}

#[test]
fn the_api_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let store = d.path().join("store");
    let s = start(&b, &store, &[]);
    let c = client();
    let imgs = crops(d.path(), 12);
    // Single ingests with camera, time (RFC 3339 and Unix ms) and pid.
    let t0 = 1_795_961_002_120i64;
    let mut single = vec![];
    for (i, (_, img)) in imgs.iter().take(6).enumerate() {
        let q = if i % 2 == 0 {
            format!("?camera=cam-a&time={}&pid={i}", t0 + i as i64 * 1000)
        } else {
            format!("?camera=cam-b&time=2026-11-29T14:03:2{i}.120Z")
        };
        let r = post_image(&c, &s, img, &q);
        let st = r.status();
        let body: Value = r.json().unwrap();
        assert_eq!(st, 201, "{q}: {body}");
        single.push(body["id"].as_u64().unwrap());
    }
    // Multipart: six images and their meta, all or nothing; ids in order.
    let meta: Vec<Value> = (6..12)
        .map(|i| json!({"camera": "lobby \"north\"", "time": t0 + i * 1000, "pid": i, "attrs": {"n": i}}))
        .collect();
    let mut form = multipart::Form::new().text("meta", serde_json::to_string(&meta).unwrap());
    for (name, img) in &imgs[6..12] {
        form = form.part(
            "image",
            multipart::Part::bytes(img.clone())
                .file_name(name.clone())
                .mime_str("image/jpeg")
                .unwrap(),
        );
    }
    let r = c.post(s.at("/v1/images")).multipart(form).send().unwrap();
    assert_eq!(r.status(), 201);
    let multi: Vec<u64> = r.json::<Value>().unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(multi.len(), 6);
    assert!(multi.windows(2).all(|w| w[1] == w[0] + 1) && multi[0] > *single.last().unwrap());
    // Idempotent retry: the same key answers the first ids and adds nothing.
    let retry = |c: &Client| {
        c.post(s.at("/v1/images?camera=cam-a"))
            .header("content-type", "image/jpeg")
            .header("idempotency-key", "upload-42")
            .body(imgs[0].1.clone())
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    };
    let first = retry(&c);
    assert_eq!(retry(&c), first);
    let stats: Value = c.get(s.at("/v1/stats")).send().unwrap().json().unwrap();
    assert_eq!(stats["rows"], 13);
    assert_eq!(stats["ready"], true);
    assert_eq!(stats["provider"], "cpu");
    assert_eq!(stats["bundle"]["precision"], "fp32");
    let cams: Value = c.get(s.at("/v1/cameras")).send().unwrap().json().unwrap();
    let names: Vec<&str> = cams
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["camera"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cam-a", "cam-b", "lobby \"north\""]);
    // Search: unfiltered, by camera, by time; the result schema; same ranking as
    // `sen store search` on the same store (a reader beside the serving writer).
    let text = "a man in a grey hoodie with a red backpack";
    let all = search(&c, &s, json!({"text": text, "k": 13}));
    assert_eq!(all["query"], text);
    assert_eq!(all["like"], Value::Null);
    assert!(all["took_ms"].as_f64().unwrap() > 0.0);
    let r0 = &all["results"][0];
    for key in [
        "rank", "id", "score", "camera", "time", "path", "pid", "attrs",
    ] {
        assert!(r0.get(key).is_some(), "result lacks {key}: {r0}");
    }
    assert_eq!(result_ids(&all).len(), 13);
    let cli = sen()
        .args(["store", "search"])
        .arg(&store)
        .arg("--bundle")
        .arg(&b)
        .args([text, "-k", "13", "--json"])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    same_ranking(&all, &cli);
    let cam = search(&c, &s, json!({"text": text, "k": 13, "cameras": ["cam-b"]}));
    assert_eq!(result_ids(&cam).len(), 3);
    assert!(
        cam["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["camera"] == "cam-b")
    );
    let tf = search(
        &c,
        &s,
        json!({"text": text, "k": 13, "from": t0 + 6000, "to": "2026-11-29T14:03:32.120Z"}),
    );
    let times: Vec<&str> = tf["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert_eq!(times.len(), 4, "{times:?}");
    assert!(times.iter().all(|t| t.ends_with('Z')
        && *t >= "2026-11-29T14:03:28.120Z"
        && *t < "2026-11-29T14:03:32.120Z"));
    // More like this: the row itself is left out.
    let like = search(&c, &s, json!({"like": multi[0], "k": 5}));
    assert_eq!(like["like"], multi[0]);
    assert!(!result_ids(&like).contains(&multi[0]));
    // Images and thumbnails come back.
    let r = c
        .get(s.at(&format!("/v1/images/{}", multi[1])))
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.bytes().unwrap().to_vec(), imgs[7].1);
    let r = c
        .get(s.at(&format!("/v1/images/{}?size=thumb", multi[1])))
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let thumb = image::load_from_memory(&r.bytes().unwrap()).unwrap();
    assert!(thumb.width().max(thumb.height()) <= 256);
    // Embeddings.
    let e: Value = c
        .post(s.at("/v1/embed/text"))
        .json(&json!({"texts": [text, "a woman"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(e["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(e["embeddings"][0].as_array().unwrap().len(), 128);
    let e: Value = c
        .post(s.at("/v1/embed/image"))
        .header("content-type", "image/jpeg")
        .body(imgs[0].1.clone())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(e["embedding"].as_array().unwrap().len(), 128);
    // Deletes: one id, a camera, before a time.
    assert_eq!(
        c.delete(s.at(&format!("/v1/images/{}", single[0])))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.get(s.at(&format!("/v1/images/{}", single[0])))
            .send()
            .unwrap()
            .status(),
        404
    );
    let n: Value = c
        .post(s.at("/v1/delete"))
        .json(&json!({"camera": "cam-b"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(n["deleted"], 3);
    let n: Value = c
        .post(s.at("/v1/delete"))
        .json(&json!({"before": t0 + 7000}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(n["deleted"], 3, "cam-a rows 2 and 4 and lobby row 6");
    let after = search(&c, &s, json!({"text": text, "k": 13}));
    assert_eq!(result_ids(&after).len(), 6);
    // Metrics name what they measure; request ids are echoed.
    let r = c
        .get(s.at("/metrics"))
        .header("x-request-id", "trace-123")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-123");
    let m = r.text().unwrap();
    for name in [
        "sen_http_requests_total",
        "sen_stage_duration_seconds",
        "sen_batch_size",
        "sen_ingested_rows_total 13",
        "sen_store_rows 6",
        "sen_build_info",
        "sen_queue_depth",
        "sen_text_positions_total",
    ] {
        assert!(m.contains(name), "metrics lack {name}");
    }
    assert!(
        c.get(s.at("/healthz"))
            .send()
            .unwrap()
            .headers()
            .contains_key("x-request-id")
    );
}

/// SPEC §11: ids agree position by position, except scores within 1e-5 may swap.
fn same_ranking(a: &Value, b: &Value) {
    let (a, b) = (
        a["results"].as_array().unwrap(),
        b["results"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        if x["id"] != y["id"] {
            let sx = x["score"].as_f64().unwrap();
            let sy = y["score"].as_f64().unwrap();
            assert!((sx - sy).abs() <= 1e-5, "{x} vs {y}");
        }
    }
}

#[test]
fn sixteen_clients_mixing_ingest_and_search() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let s = start(&b, &d.path().join("store"), &["--max-delay-ms", "5"]);
    let imgs = std::sync::Arc::new(crops(d.path(), 16));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let deadline = Instant::now() + Duration::from_secs(4);
    std::thread::scope(|sc| {
        for t in 0..16 {
            let (imgs, acked, s) = (imgs.clone(), acked.clone(), &s);
            sc.spawn(move || {
                let c = client();
                // Bounded: at most 200 requests per client, at most 4 s.
                for i in 0..200 {
                    if Instant::now() > deadline {
                        break;
                    }
                    if (t + i) % 3 == 0 {
                        let r = post_image(&c, s, &imgs[(t + i) % 16].1, &format!("?camera=c{t}"));
                        assert_eq!(r.status(), 201);
                        acked
                            .lock()
                            .unwrap()
                            .push(r.json::<Value>().unwrap()["id"].as_u64().unwrap());
                    } else {
                        let r = c
                            .post(s.at("/v1/search"))
                            .json(&json!({"text": format!("person number {i}"), "k": 3}))
                            .send()
                            .unwrap();
                        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
                    }
                }
            });
        }
    });
    let c = client();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 16);
    let stats: Value = c.get(s.at("/v1/stats")).send().unwrap().json().unwrap();
    assert_eq!(stats["rows"], acked.len());
    for id in &acked {
        assert_eq!(
            c.get(s.at(&format!("/v1/images/{id}")))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    // Batches larger than one formed under concurrency.
    let m = c.get(s.at("/metrics")).send().unwrap().text().unwrap();
    let le1 = |q: &str| {
        count(
            &m,
            &format!("sen_batch_size_bucket{{queue=\"{q}\",le=\"1\"}}"),
        )
    };
    let total = |q: &str| count(&m, &format!("sen_batch_size_count{{queue=\"{q}\"}}"));
    let bigger = ["text", "image", "search"]
        .iter()
        .any(|q| total(q) > le1(q));
    assert!(
        bigger,
        "no batch above 1:\n{}",
        m.lines()
            .filter(|l| l.starts_with("sen_batch_size"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn count(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn rounds() -> usize {
    std::env::var("SEN_SERVE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// SIGKILL while clients ingest, restart on the same store: every acknowledged id is
/// there. `make crash-test` runs more rounds (SEN_SERVE_CRASH_ROUNDS).
#[test]
fn killed_while_ingesting_keeps_every_acknowledged_id() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let store = d.path().join("store");
    let imgs = std::sync::Arc::new(crops(d.path(), 8));
    let mut acked: Vec<u64> = vec![];
    for round in 0..rounds() {
        let s = start(&b, &store, &[]);
        let got = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        // The kill comes 300-900 ms after the round's first acknowledgement (counted
        // from then, not from the start, so a slow machine or emulator still kills
        // mid-ingest rather than before anything was acknowledged).
        let window = Duration::from_millis(300 + 150 * (round as u64 % 5));
        std::thread::scope(|sc| {
            for t in 0..4 {
                let (imgs, got, url) = (imgs.clone(), got.clone(), s.url.clone());
                sc.spawn(move || {
                    tls_provider();
                    let c = Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    for i in 0..500 {
                        let r = c
                            .post(format!("{url}/v1/images?camera=k{t}"))
                            .header("content-type", "image/jpeg")
                            .body(imgs[(t + i) % 8].1.clone())
                            .send();
                        match r {
                            Ok(r) if r.status() == 201 => got
                                .lock()
                                .unwrap()
                                .push(r.json::<Value>().unwrap()["id"].as_u64().unwrap()),
                            _ => break, // the kill
                        }
                    }
                });
            }
            let t = Instant::now();
            while got.lock().unwrap().is_empty() {
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "round {round}: no ingest acknowledged within 2 minutes"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(window);
            s.signal("-KILL");
        });
        let new = got.lock().unwrap().clone();
        drop(s);
        let s = start(&b, &store, &[]);
        let c = client();
        // This round's ids, and a spread of the earlier rounds' (all of them at the end).
        let step = (acked.len() / 200).max(1);
        for id in new.iter().chain(acked.iter().step_by(step)) {
            let st = c
                .get(s.at(&format!("/v1/images/{id}")))
                .send()
                .unwrap()
                .status();
            assert_eq!(st, 200, "round {round}: acknowledged id {id} lost");
        }
        acked.extend(new);
    }
    assert!(!acked.is_empty());
    let s = start(&b, &store, &[]);
    let c = client();
    for id in &acked {
        let st = c
            .get(s.at(&format!("/v1/images/{id}")))
            .send()
            .unwrap()
            .status();
        assert_eq!(st, 200, "acknowledged id {id} lost");
    }
    drop(s);
    eprintln!(
        "{} server kills while 4 clients ingested: all {} acknowledged ids present",
        rounds(),
        acked.len()
    );
    let v = sen()
        .args(["store", "verify"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn overload_is_429_and_sigterm_drains_and_exits_0() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let s = start(
        &b,
        &d.path().join("store"),
        &[
            "--max-queue",
            "1",
            "--max-delay-ms",
            "50",
            "--max-batch",
            "1",
        ],
    );
    let codes = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    std::thread::scope(|sc| {
        for i in 0..24 {
            let (codes, s) = (codes.clone(), &s);
            sc.spawn(move || {
                let r = client()
                    .post(s.at("/v1/search"))
                    .json(&json!({"text": format!("query {i}")}))
                    .send()
                    .unwrap();
                let retry = r.headers().get("retry-after").is_some();
                codes.lock().unwrap().push((r.status().as_u16(), retry));
            });
        }
    });
    let codes = codes.lock().unwrap().clone();
    assert!(codes.iter().any(|c| c.0 == 200), "{codes:?}");
    assert!(
        codes.contains(&(429, true)),
        "no 429 with Retry-After: {codes:?}"
    );
    assert!(codes.iter().all(|c| c.0 == 200 || c.0 == 429), "{codes:?}");
    drop(s);
    // SIGTERM: in-flight requests finish, the process exits 0. A server whose text
    // batches wait 3 s for company holds the request in its queue; SIGTERM goes only
    // once /metrics shows it waiting (a fixed sleep was too short under emulation).
    let mut s = start(
        &b,
        &d.path().join("store2"),
        &["--max-batch", "64", "--max-delay-ms", "3000"],
    );
    let inflight = {
        let url = s.url.clone();
        std::thread::spawn(move || {
            client()
                .post(format!("{url}/v1/search"))
                .json(&json!({"text": "last one"}))
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    let t = Instant::now();
    let waiting = |body: &str| {
        body.lines()
            .any(|l| l.starts_with("sen_queue_depth{queue=\"text\"}") && !l.ends_with(" 0"))
    };
    while !waiting(
        &client()
            .get(s.at("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    ) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the search never reached the text queue"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    s.signal("-TERM");
    let status = s.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let r = inflight.join().unwrap();
    assert!(matches!(r, Ok(200) | Ok(503)), "{r:?}");
}

#[test]
fn keys_and_scopes() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let keys = d.path().join("keys");
    std::fs::write(
        &keys,
        "# test keys\nread reader-key-0123456789\nwrite writer-key-0123456789\n",
    )
    .unwrap();
    let s = start(
        &b,
        &d.path().join("store"),
        &["--api-keys", keys.to_str().unwrap()],
    );
    let c = client();
    let img = &crops(d.path(), 1)[0].1;
    let call = |method: &str, path: &str, key: Option<&str>| {
        let mut r = match method {
            "GET" => c.get(s.at(path)),
            "DELETE" => c.delete(s.at(path)),
            _ => c.post(s.at(path)),
        };
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if path == "/v1/images" {
            r = r.header("content-type", "image/jpeg").body(img.clone());
        } else if path == "/v1/search" {
            r = r.json(&json!({"text": "a man"}));
        }
        r.send().unwrap().status().as_u16()
    };
    let (rk, wk) = (Some("reader-key-0123456789"), Some("writer-key-0123456789"));
    // Open routes need no key.
    for p in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call("GET", p, None), 200, "{p}");
    }
    // Read routes: no key 401, wrong key 401, read 200, write 200.
    for (m, p) in [
        ("POST", "/v1/search"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/cameras"),
        ("GET", "/v1/openapi.json"),
    ] {
        assert_eq!(call(m, p, None), 401, "{p}");
        assert_eq!(call(m, p, Some("wrong-key-0123456789")), 401, "{p}");
        assert_eq!(call(m, p, rk), 200, "{p}");
        assert_eq!(call(m, p, wk), 200, "{p}");
    }
    // Write routes: read key 403, write key succeeds.
    assert_eq!(call("POST", "/v1/images", rk), 403);
    assert_eq!(call("POST", "/v1/images", wk), 201);
    assert_eq!(call("DELETE", "/v1/images/1", rk), 403);
    assert_eq!(call("DELETE", "/v1/images/1", wk), 204);
    // A non-loopback address without keys is refused unless --insecure-no-auth.
    let out = sen()
        // TEST-NET-1 (RFC 5737): not loopback, and not an address this machine has, so
        // even a server that failed to refuse could not bind it.
        .args(["serve", "--listen", "192.0.2.1:0", "--bundle"])
        .arg(&b)
        .arg("--store")
        .arg(d.path().join("s2"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("--api-keys") && e.contains("--insecure-no-auth"),
        "{e}"
    );
}

#[test]
fn every_status_of_the_mapping() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let img = crops(d.path(), 1)[0].1.clone();
    let px = {
        let i = image::load_from_memory(&img).unwrap();
        i.width() as u64 * i.height() as u64
    };
    let max_px = (px + 1).to_string();
    let s = start(
        &b,
        &d.path().join("store"),
        &[
            "--max-k",
            "50",
            "--max-text-chars",
            "40",
            "--max-body-mib",
            "1",
            "--max-pixels",
            &max_px,
        ],
    );
    let c = client();
    let code = |r: reqwest::blocking::Response| {
        let st = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        (st, v["error"]["code"].as_str().unwrap_or("").to_string())
    };
    let post_image = |path: &str, content_type: &str, body: Vec<u8>| {
        c.post(s.at(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap()
    };
    let js = |body: &str| {
        c.post(s.at("/v1/search"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    assert_eq!(code(js("{\"text\": ")), (400, "bad_request".into()));
    assert_eq!(
        code(js("{\"text\": \"a\", \"colour\": 1}")),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(js("{\"text\": \"a\", \"k\": 0}")),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(js("{\"text\": \"a\", \"k\": 51}")),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(js("{\"text\": \"   \"}")),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(js(&format!("{{\"text\": \"{}\"}}", "a".repeat(41)))),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(js("{\"text\": \"a\", \"from\": 1795961002}")),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(js(
            "{\"text\": \"a\", \"from\": \"2026-11-29T15:00:00Z\", \"to\": \"2026-11-29T14:00:00Z\"}"
        )),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(js("{\"text\": \"a\", \"from\": \"noon\"}")),
        (422, "invalid_argument".into())
    );
    assert_eq!(code(js("{\"like\": 99999}")), (404, "not_found".into()));
    assert_eq!(
        code(c.get(s.at("/v1/images/123456")).send().unwrap()),
        (404, "not_found".into())
    );
    assert_eq!(
        code(
            c.post(s.at("/v1/delete"))
                .json(&json!({"ids": [1, 2]}))
                .send()
                .unwrap()
        ),
        (404, "not_found".into())
    );
    // Eight times the limit, more than loopback's socket buffers hold: answered
    // without reading it, the client would be reset mid-body (a broken pipe), not
    // shown the 413.
    let big = vec![0u8; 8 << 20];
    assert_eq!(
        code(post_image("/v1/images", "image/jpeg", big)),
        (413, "too_large".into())
    );
    // One pixel more than --max-pixels allows, checked from the header.
    let mut png = std::io::Cursor::new(vec![]);
    image::DynamicImage::new_rgb8(px as u32 + 2, 1)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    assert_eq!(
        code(post_image("/v1/images", "image/png", png.into_inner())),
        (413, "image_too_large".into())
    );
    let truncated = img[..img.len() / 3].to_vec();
    assert_eq!(
        code(post_image("/v1/images", "image/jpeg", truncated)),
        (422, "bad_image".into())
    );
    assert_eq!(
        code(post_image(
            "/v1/images",
            "image/jpeg",
            b"not an image".to_vec()
        )),
        (422, "bad_image".into())
    );
    assert_eq!(
        code(post_image("/v1/images", "image/gif", img.clone())),
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        code(post_image(
            "/v1/images?time=1795961002",
            "image/jpeg",
            img.clone()
        )),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(post_image("/v1/images?camera=", "image/jpeg", img.clone())),
        (422, "invalid_argument".into())
    );
    assert_eq!(
        code(c.get(s.at("/v1/nope")).send().unwrap()),
        (404, "not_found".into())
    );
    // The server is still healthy after all of that.
    assert_eq!(c.get(s.at("/readyz")).send().unwrap().status(), 200);
    assert_eq!(
        c.post(s.at("/v1/images"))
            .header("content-type", "image/jpeg")
            .body(img)
            .send()
            .unwrap()
            .status(),
        201
    );
}

/// 504 past --request-timeout, and 503 while not ready: a server whose bundle cannot
/// load stays up, says why on /readyz, and refuses requests with 503.
#[test]
fn timeout_and_unavailable() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    // 256 captions (32 text batches of a few ms each) cannot finish in 20 ms.
    let s = start(&b, &d.path().join("store"), &["--request-timeout", "0.02"]);
    let long = "a woman in a long red coat carrying a black handbag and a blue umbrella";
    let r = client()
        .post(s.at("/v1/embed/text"))
        .json(&json!({"texts": vec![long; 256]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 504);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "timeout");
    drop(s);
    // A damaged bundle: /healthz 200, /readyz 503 naming the problem, routes 503.
    let bad = d.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in std::fs::read_dir(&b).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), bad.join(f.file_name())).unwrap();
    }
    let mut t = std::fs::read(bad.join("text_encoder.onnx")).unwrap();
    t[100] ^= 1;
    std::fs::write(bad.join("text_encoder.onnx"), t).unwrap();
    let (s, _) = Serve::launch(SEN, &bad)
        .store(&d.path().join("s3"))
        .spawn()
        .unwrap();
    let url = s.url.clone();
    let c = client();
    assert_eq!(
        c.get(format!("{url}/healthz")).send().unwrap().status(),
        200
    );
    let t = Instant::now();
    loop {
        let r = c.get(format!("{url}/readyz")).send().unwrap();
        assert_eq!(r.status(), 503);
        let v: Value = r.json().unwrap();
        if v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text_encoder.onnx")
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = c
        .post(format!("{url}/v1/search"))
        .json(&json!({"text": "a man"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    drop(s);
}

#[test]
fn openapi_lists_every_route_the_router_has() {
    let doc = sen_serve::routes::openapi_doc();
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = 0;
    for r in sen_serve::routes::ROUTES {
        let op = &paths[r.path][r.method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from the OpenAPI document",
            r.method,
            r.path
        );
        listed += 1;
    }
    let ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(ops, listed, "the document lists routes the table does not");
    // And the running router serves each table route (no 404 from the fallback).
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let s = start(&b, &d.path().join("store"), &[]);
    let c = client();
    for r in sen_serve::routes::ROUTES {
        let path = r.path.replace("{id}", "1");
        let req = match r.method {
            "GET" => c.get(s.at(&path)),
            "DELETE" => c.delete(s.at(&path)),
            _ => c
                .post(s.at(&path))
                .header("content-type", "application/json")
                .body("{}"),
        };
        let resp = req.send().unwrap();
        let st = resp.status().as_u16();
        let body: Value = resp.json().unwrap_or(Value::Null);
        assert!(
            !(st == 404
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("no such route"))),
            "{} {path} is not routed",
            r.method
        );
    }
}

/// HTTP/2 (prior knowledge on plain HTTP) and TLS with rustls (HTTP/2 by ALPN).
#[test]
fn http2_and_tls() {
    tls_provider();
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path());
    let s = start(&b, &d.path().join("store"), &[]);
    let h2 = Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(s.at("/healthz")).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    drop(s);
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cp, kp) = (d.path().join("cert.pem"), d.path().join("key.pem"));
    std::fs::write(&cp, cert.cert.pem()).unwrap();
    std::fs::write(&kp, cert.signing_key.serialize_pem()).unwrap();
    let c = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let s = Serve::launch(SEN, &b)
        .store(&d.path().join("store2"))
        .args([
            "--tls-cert",
            cp.to_str().unwrap(),
            "--tls-key",
            kp.to_str().unwrap(),
        ])
        .probe(c.clone())
        .start();
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let r = c.get(s.at("/healthz")).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    // Plain HTTP to the TLS port is not served.
    let plain = s.url.replace("https://", "http://");
    let plain_ok = client()
        .get(format!("{plain}/healthz"))
        .send()
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    assert!(!plain_ok, "plain HTTP must not be served on the TLS port");
}
