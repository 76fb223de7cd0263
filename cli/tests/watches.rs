//! `sen store watch add|list|delete` (SPEC §12) on a small store: a text watch
//! embedded with the bundle's text encoder, a like watch from a stored row, the
//! threshold rules, and deletion.

use sen_testing::{synth_crops, tiny_bundle};
use serde_json::Value;
use std::process::Output;

const SEN: &str = env!("CARGO_BIN_EXE_sen");

fn sen(args: &[&str]) -> Output {
    sen_core::process::command(SEN).args(args).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn err(o: Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn watches_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(d.path(), 5);
    let b = bundle.to_str().unwrap();
    let store = d.path().join("store");
    let s = store.to_str().unwrap();
    ok(sen(&["store", "create", s, "--bundle", b]));
    let crops = synth_crops(d.path(), 3, 2);
    let mut files = vec![];
    for (name, bytes) in &crops {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        files.push(p.to_str().unwrap().to_string());
    }
    let mut add = vec!["store", "add", s, "--bundle", b];
    add.extend(files.iter().map(String::as_str));
    ok(sen(&add));

    let text = "a child in a yellow raincoat";
    let w: Value = serde_json::from_str(&ok(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "raincoat",
        "--text",
        text,
        "--camera",
        "gate",
        "--min-score",
        "0.3",
        "--json",
    ])))
    .unwrap();
    assert_eq!(w["text"], text);
    assert_eq!(w["cameras"][0], "gate");
    assert_eq!(w["min_score"], 0.3);
    assert_eq!(w["cooldown_s"], 300);
    // --min-p needs a score calibration, which this bundle lacks.
    let e = err(sen(&[
        "store", "watch", "add", s, "--bundle", b, "--name", "x", "--text", text, "--min-p", "0.9",
    ]));
    assert!(
        e.contains("sen calibrate-scores") && e.contains("--min-score"),
        "{e}"
    );
    // One threshold, exactly.
    let e = err(sen(&[
        "store", "watch", "add", s, "--bundle", b, "--name", "x", "--text", text,
    ]));
    assert!(e.contains("--min-p") && e.contains("--min-score"), "{e}");
    // Bad fields are named.
    let e = err(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "x",
        "--text",
        text,
        "--min-score",
        "3",
    ]));
    assert!(e.contains("min_score"), "{e}");
    let like: Value = serde_json::from_str(&ok(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "like 1",
        "--like",
        "1",
        "--min-score",
        "0.5",
        "--cooldown-s",
        "60",
        "--json",
    ])))
    .unwrap();
    assert_eq!(like["like"], 1);
    let e = err(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "x",
        "--like",
        "999",
        "--min-score",
        "0.5",
    ]));
    assert!(e.contains("999"), "{e}");

    let list: Value =
        serde_json::from_str(&ok(sen(&["store", "watch", "list", s, "--json"]))).unwrap();
    let ids: Vec<u64> = list["watches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [w["id"].as_u64().unwrap(), like["id"].as_u64().unwrap()]
    );
    let first = ids[0].to_string();
    ok(sen(&["store", "watch", "delete", s, &first]));
    let e = err(sen(&["store", "watch", "delete", s, &first]));
    assert!(e.contains("no watch"), "{e}");
    let list: Value =
        serde_json::from_str(&ok(sen(&["store", "watch", "list", s, "--json"]))).unwrap();
    assert_eq!(list["watches"].as_array().unwrap().len(), 1);
}

#[test]
fn watches_over_http_with_scopes_and_specific_errors() {
    use sen_testing::{Serve, client};
    use serde_json::json;
    let d = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(d.path(), 5);
    let keys = d.path().join("keys");
    std::fs::write(
        &keys,
        "write writer-key-0123456789abcdef\nread reader-key-0123456789abcdef\n",
    )
    .unwrap();
    let s = Serve::launch(SEN, &bundle)
        .store(&d.path().join("store"))
        .args(["--api-keys", keys.to_str().unwrap()])
        .start();
    let c = client();
    let (w, r) = ("writer-key-0123456789abcdef", "reader-key-0123456789abcdef");
    let post = |key: &str, body: Value| {
        let resp = c
            .post(s.at("/v1/watches"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .unwrap();
        let st = resp.status().as_u16();
        (st, resp.json::<Value>().unwrap_or(Value::Null))
    };
    let body = json!({"name": "raincoat", "text": "a child in a yellow raincoat",
        "cameras": ["gate"], "min_score": 0.3});
    // Adding needs the write scope.
    assert_eq!(post(r, body.clone()).0, 403);
    let (st, v) = post(w, body.clone());
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_u64().unwrap();
    // Specific 4xx for each bad request; the server stays healthy.
    for (bad, what) in [
        (
            json!({"name": "x", "text": "t", "min_p": 0.9}),
            "sen calibrate-scores",
        ),
        (json!({"name": "x", "text": "t"}), "min_score"),
        (json!({"name": "x", "min_score": 0.3}), "exactly one of"),
        (
            json!({"name": "x", "text": "t", "like": 1, "min_score": 0.3}),
            "exactly one of",
        ),
        (
            json!({"name": "x", "text": "t", "min_score": 0.3, "prior": 0.01}),
            "prior",
        ),
        (json!({"name": "", "text": "t", "min_score": 0.3}), "name"),
        (
            json!({"name": "x", "text": "t", "min_score": 0.3, "cameras": []}),
            "cameras",
        ),
        (
            json!({"name": "x", "text": "t", "min_score": 0.3, "cooldown_s": 99999999}),
            "cooldown_s",
        ),
        (
            json!({"name": "x", "text": "t", "min_score": 0.3, "colour": "red"}),
            "colour",
        ),
    ] {
        let (st, e) = post(w, bad.clone());
        assert_eq!(st, 422, "{bad}: {e}");
        assert!(e.to_string().contains(what), "{bad}: {e}");
    }
    let (st, e) = post(w, json!({"name": "x", "like": 424242, "min_score": 0.3}));
    assert_eq!(st, 404, "{e}");
    // Read scope lists and reads.
    let list: Value = c
        .get(s.at("/v1/watches"))
        .bearer_auth(r)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["watches"].as_array().unwrap().len(), 1);
    assert_eq!(list["watches"][0]["name"], "raincoat");
    assert_eq!(list["watches"][0]["cooldown_s"], 300);
    let one = c
        .get(s.at(&format!("/v1/watches/{id}")))
        .bearer_auth(r)
        .send()
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(
        one.json::<Value>().unwrap()["text"],
        "a child in a yellow raincoat"
    );
    let del = |key: &str, id: &str| {
        c.delete(s.at(&format!("/v1/watches/{id}")))
            .bearer_auth(key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(del(r, &id.to_string()), 403);
    assert_eq!(del(w, "abc"), 422);
    assert_eq!(del(w, &id.to_string()), 204);
    assert_eq!(del(w, &id.to_string()), 404);
    let gone = c
        .get(s.at(&format!("/v1/watches/{id}")))
        .bearer_auth(r)
        .send()
        .unwrap();
    assert_eq!(gone.status(), 404);
    // A stored crop, a watch like it, and the same crop again: one alert, in the
    // history; erasing the row erases it.
    let crops = synth_crops(d.path(), 3, 1);
    let add = || -> u64 {
        let r = c
            .post(s.at("/v1/images?camera=gate"))
            .bearer_auth(w)
            .header("content-type", "image/jpeg")
            .body(crops[0].1.clone())
            .send()
            .unwrap();
        let st = r.status().as_u16();
        let v: Value = r.json().unwrap();
        assert_eq!(st, 201, "{v}");
        v["id"].as_u64().unwrap()
    };
    let first = add();
    let (st, v) = post(
        w,
        json!({"name": "that one", "like": first, "min_score": 0.99}),
    );
    assert_eq!(st, 201, "{v}");
    let like = v["id"].as_u64().unwrap();
    let again = add();
    let alerts = |q: &str| -> (u16, Value) {
        let r = c
            .get(s.at(&format!("/v1/alerts{q}")))
            .bearer_auth(r)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    };
    let (st, h) = alerts("");
    assert_eq!(st, 200);
    let h = h["alerts"].as_array().unwrap().clone();
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["watch"], like);
    assert_eq!(h[0]["row"], again);
    assert_eq!(h[0]["camera"], "gate");
    assert!(h[0]["score"].as_f64().unwrap() > 0.99);
    assert_eq!(
        alerts(&format!("?watch={}", like + 1)).1["alerts"],
        json!([])
    );
    assert_eq!(
        alerts("?from=2000-01-01T00:00:00Z").1["alerts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for bad in ["?from=yesterday", "?limit=0", "?limit=5000", "?colour=red"] {
        assert_eq!(alerts(bad).0, 422, "{bad}");
    }
    let del = c
        .delete(s.at(&format!("/v1/images/{again}")))
        .bearer_auth(w)
        .send()
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(alerts("").1["alerts"], json!([]));
    let ready = c.get(s.at("/readyz")).send().unwrap();
    assert_eq!(ready.status(), 200);
}

/// What the receiver recorded: `(X-Sen-Alert-Id, X-Sen-Signature, body)` per POST.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A webhook receiver on a loopback port: records `(alert id, signature, body)` of
/// each POST; answers 503 while `down`.
struct Receiver {
    port: u16,
    got: Received,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (g, dn) = (got.clone(), down.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut headers = std::collections::HashMap::new();
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let n: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; n];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = if dn.load(std::sync::atomic::Ordering::SeqCst) {
                    "503 Service Unavailable"
                } else {
                    g.lock().unwrap().push((
                        headers.get("x-sen-alert-id").cloned().unwrap_or_default(),
                        headers.get("x-sen-signature").cloned().unwrap_or_default(),
                        body,
                    ));
                    "200 OK"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, got, down }
    }
}

/// HMAC-SHA256 by Python's `hmac` (an implementation independent of sen's).
fn python_hmac(key: &[u8], body: &[u8], dir: &std::path::Path) -> Option<String> {
    let (k, b) = (dir.join("hmac.key"), dir.join("hmac.body"));
    std::fs::write(&k, key).unwrap();
    std::fs::write(&b, body).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac,hashlib,sys; print(hmac.new(open(sys.argv[1],'rb').read(), open(sys.argv[2],'rb').read(), hashlib.sha256).hexdigest())",
        ])
        .arg(&k)
        .arg(&b)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A box whose alerts go by webhook to a [`Receiver`] (down at first), signed with a
/// secret: one tiny bundle and one store, started as often as a test needs; `add`
/// stores the same crop on a camera and returns its id.
struct Hooked {
    d: tempfile::TempDir,
    bundle: std::path::PathBuf,
    secret: std::path::PathBuf,
    retry_for: &'static str,
    rx: Receiver,
    crop: Vec<u8>,
    c: reqwest::blocking::Client,
}

impl Hooked {
    fn new(secret: &[u8], retry_for: &'static str) -> Hooked {
        let d = tempfile::tempdir().unwrap();
        let bundle = tiny_bundle(d.path(), 5);
        let sf = d.path().join("secret");
        std::fs::write(&sf, [secret, b"\n"].concat()).unwrap();
        let crop = synth_crops(d.path(), 3, 1).remove(0).1;
        Hooked {
            bundle,
            secret: sf,
            retry_for,
            rx: Receiver::start(),
            crop,
            c: sen_testing::client(),
            d,
        }
    }

    fn launch(&self) -> sen_testing::Serve {
        sen_testing::Serve::launch(SEN, &self.bundle)
            .store(&self.d.path().join("store"))
            .args([
                "--alert-webhook",
                &format!("http://127.0.0.1:{}/hook", self.rx.port),
                "--alert-webhook-secret",
                self.secret.to_str().unwrap(),
                "--alert-retry-for",
                self.retry_for,
            ])
            .start()
    }

    fn add(&self, s: &sen_testing::Serve, camera: &str) -> u64 {
        add_crop(&self.c, s, &self.crop, camera)
    }
}

/// `crop` stored on `camera` by `POST /v1/images`: its row id.
fn add_crop(
    c: &reqwest::blocking::Client,
    s: &sen_testing::Serve,
    crop: &[u8],
    camera: &str,
) -> u64 {
    let r = c
        .post(s.at(&format!("/v1/images?camera={camera}")))
        .header("content-type", "image/jpeg")
        .body(crop.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", s.log());
    r.json::<Value>().unwrap()["id"].as_u64().unwrap()
}

/// A watch for crops like row `row` at `min_score` 0.99 (the same crop again
/// alerts; the tiny random model's other crops do not), by `POST /v1/watches`.
fn watch_like(c: &reqwest::blocking::Client, s: &sen_testing::Serve, row: u64) {
    let r = c
        .post(s.at("/v1/watches"))
        .json(&serde_json::json!({"name": "that one", "like": row, "min_score": 0.99}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", s.log());
}

#[test]
fn webhooks_get_every_alert_signed_through_an_outage_and_a_kill() {
    use sen_testing::Serve;
    let secret = b"s3cret-webhook-key-0123456789";
    let h = Hooked::new(secret, "60");
    let (rx, d, c) = (&h.rx, &h.d, &h.c);
    let launch = || h.launch();
    let add = |s: &Serve, camera: &str| h.add(s, camera);
    let s = launch();
    watch_like(c, &s, add(&s, "gate"));
    // Two alerts while the receiver answers 503.
    let rows = [add(&s, "gate"), add(&s, "yard")];
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(rx.got.lock().unwrap().is_empty());
    rx.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let wait_for = |n: usize| {
        let t = std::time::Instant::now();
        loop {
            let ids: std::collections::BTreeSet<String> =
                rx.got.lock().unwrap().iter().map(|g| g.0.clone()).collect();
            if ids.len() >= n {
                return ids;
            }
            assert!(t.elapsed() < std::time::Duration::from_secs(60), "{ids:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let t = std::time::Instant::now();
    while rx.got.lock().unwrap().len() < 2 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "{}",
            s.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A SIGKILL, then a third alert: delivered after the restart.
    s.signal("-KILL");
    drop(s);
    let s = launch();
    let third = add(&s, "door");
    let ids = wait_for(3);
    assert_eq!(ids.len(), 3, "{ids:?}");
    drop(s);
    let got = rx.got.lock().unwrap().clone();
    let mut by_id: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for (id, sig, body) in &got {
        // Every delivery of one id carries the same body; it verifies independently.
        if let Some(b) = by_id.insert(id.clone(), body.clone()) {
            assert_eq!(&b, body, "alert {id} changed between deliveries");
        }
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["id"].as_u64().unwrap().to_string(), *id);
        let want = format!("sha256={}", sen_serve::alerts::signature(secret, body));
        assert_eq!(sig, &want);
        if let Some(py) = python_hmac(secret, body, d.path()) {
            assert_eq!(sig, &format!("sha256={py}"));
        }
    }
    let alerted: Vec<u64> = by_id
        .values()
        .map(|b| {
            serde_json::from_slice::<Value>(b).unwrap()["row"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(alerted, [rows[0], rows[1], third]);
}

/// SIGKILL between rows' acknowledgement and their alerts' delivery, ten rounds: in
/// some the receiver is down (the alerts wait in the outbox), in others it is up and
/// the kill lands at a varying moment after the last acknowledgement (deliveries in
/// flight). After the last restart every alert of every acknowledged row reaches the
/// receiver, each id always with the same body, and the ids are the store's.
#[test]
fn killed_between_acknowledgement_and_delivery_ten_times_no_alert_is_lost() {
    use sen_testing::{Serve, scaled};
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::{Duration, Instant};
    let h = Hooked::new(b"kill-rounds-secret", "600");
    let (rx, c) = (&h.rx, &h.c);
    let launch = || h.launch();
    let add = |s: &Serve, camera: &str| h.add(s, camera);
    let s = launch();
    watch_like(c, &s, add(&s, "gate"));
    drop(s);
    let mut acked = vec![];
    for round in 0..10u64 {
        rx.down.store(round % 3 != 1, SeqCst);
        let s = launch();
        for k in 0..3 {
            acked.push(add(&s, &format!("cam-{round}-{k}")));
        }
        std::thread::sleep(Duration::from_millis(round * 37 % 200));
        s.signal("-KILL");
        drop(s);
    }
    rx.down.store(false, SeqCst);
    let s = launch();
    let t = Instant::now();
    let delivered = || -> std::collections::BTreeMap<u64, Vec<u8>> {
        let mut by_id = std::collections::BTreeMap::new();
        for (id, _, body) in rx.got.lock().unwrap().iter() {
            let id: u64 = id.parse().unwrap();
            if let Some(b) = by_id.insert(id, body.clone()) {
                assert_eq!(&b, body, "alert {id} changed between deliveries");
            }
        }
        by_id
    };
    while delivered().len() < acked.len() {
        assert!(
            t.elapsed() < scaled(Duration::from_secs(60)),
            "{} of {} alerts delivered\n{}",
            delivered().len(),
            acked.len(),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let by_id = delivered();
    let rows: Vec<u64> = by_id
        .values()
        .map(|b| {
            serde_json::from_slice::<Value>(b).unwrap()["row"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(rows, acked, "one alert per acknowledged row, in order");
    let history: Value = c.get(s.at("/v1/alerts")).send().unwrap().json().unwrap();
    let stored: Vec<u64> = history["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, by_id.keys().copied().collect::<Vec<_>>());
}

/// Read SSE `alert` events (id, data) from a streaming response until `n` arrived
/// (bounded by the client's timeout).
fn sse_events(r: reqwest::blocking::Response, n: usize) -> Vec<(u64, Value)> {
    use std::io::{BufRead, BufReader};
    let mut out = vec![];
    let (mut id, mut data) = (None, None);
    for line in BufReader::new(r).lines() {
        let line = line.expect("the stream stays open until n events");
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("data:") {
            data = serde_json::from_str::<Value>(v.trim()).ok();
        } else if line.is_empty()
            && let (Some(i), Some(d)) = (id.take(), data.take())
        {
            out.push((i, d));
            if out.len() == n {
                break;
            }
        }
    }
    out
}

#[test]
fn the_alert_stream_resumes_from_last_event_id_and_is_bounded() {
    use sen_testing::Serve;
    let d = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(d.path(), 5);
    let s = Serve::launch(SEN, &bundle)
        .store(&d.path().join("store"))
        .args(["--max-streams", "1", "--request-timeout", "2"])
        .start();
    let c = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let crops = synth_crops(d.path(), 3, 1);
    let add = |camera: &str| add_crop(&c, &s, &crops[0].1, camera);
    watch_like(&c, &s, add("gate"));
    // A live stream: only what comes after it opened.
    let before = add("gate");
    let live = c.get(s.at("/v1/alerts/stream")).send().unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(
        live.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // One stream is the limit here.
    let second = c.get(s.at("/v1/alerts/stream")).send().unwrap();
    assert_eq!(second.status(), 503);
    let rows: Vec<u64> = ["gate", "yard", "door"].iter().map(|c| add(c)).collect();
    // Past --request-timeout (2 s), the stream still delivers.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let got = sse_events(live, 1);
    assert_eq!(got[0].1["row"], rows[0], "{got:?}");
    let seen = got[0].0;
    // A client that went away frees its stream once the server notices (at the
    // latest at the next heartbeat): reconnect as a client would, bounded.
    let open = |last: &str| {
        let t = std::time::Instant::now();
        loop {
            let r = c
                .get(s.at("/v1/alerts/stream"))
                .header("last-event-id", last)
                .send()
                .unwrap();
            if r.status() != 503 || t.elapsed() > std::time::Duration::from_secs(40) {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    // Reconnect after the first: the rest, each once, in order.
    let r = open(&seen.to_string());
    assert_eq!(r.status(), 200);
    let rest = sse_events(r, 2);
    let got_rows: Vec<u64> = rest.iter().map(|e| e.1["row"].as_u64().unwrap()).collect();
    assert_eq!(got_rows, [rows[1], rows[2]]);
    assert!(rest[0].0 > seen && rest[1].0 > rest[0].0);
    // From the start: the one before the live stream too.
    let all = sse_events(open("0"), 4);
    assert_eq!(all[0].1["row"], before);
    assert_eq!(open("yesterday").status(), 422);
}

#[test]
fn alerts_are_published_on_the_prefix_at_qos_1() {
    use sen_testing::Serve;
    use sen_testing::mqtt::{Broker, Subscriber};
    let d = tempfile::tempdir().unwrap();
    let Some(broker) = Broker::start(d.path()) else {
        return;
    };
    let bundle = tiny_bundle(d.path(), 5);
    let sub = Subscriber::connect(broker.port, "home-assistant", "box1/alerts");
    let s = Serve::launch(SEN, &bundle)
        .store(&d.path().join("store"))
        .args([
            "--alert-mqtt",
            &broker.url(),
            "--alert-topic-prefix",
            "box1",
        ])
        .start();
    let c = sen_testing::client();
    let crops = synth_crops(d.path(), 3, 1);
    let add = |camera: &str| add_crop(&c, &s, &crops[0].1, camera);
    watch_like(&c, &s, add("gate"));
    let rows = [add("gate"), add("yard")];
    let t = std::time::Instant::now();
    while sub.got.lock().unwrap().len() < 2 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{}",
            s.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let got: Vec<Value> = sub
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let alerted: Vec<u64> = got.iter().map(|v| v["row"].as_u64().unwrap()).collect();
    assert_eq!(alerted, rows);
    assert_eq!(got[0]["name"], "that one");
    // Another product's prefix is refused before start.
    let out = sen_core::process::command(SEN)
        .args(["serve", "--bundle"])
        .arg(&bundle)
        .arg("--store")
        .arg(d.path().join("store2"))
        .args([
            "--alert-mqtt",
            &broker.url(),
            "--alert-topic-prefix",
            "frigate",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--alert-topic-prefix"));
}

#[test]
fn a_webhook_that_stays_down_is_given_up_on_and_shown() {
    use sen_testing::Serve;
    use serde_json::json;
    let d = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(d.path(), 5);
    let rx = Receiver::start(); // answers 503 throughout
    let s = Serve::launch(SEN, &bundle)
        .store(&d.path().join("store"))
        .args([
            "--alert-webhook",
            &format!("http://127.0.0.1:{}/hook", rx.port),
            "--alert-retry-for",
            "1",
        ])
        .start();
    let c = sen_testing::client();
    let crops = synth_crops(d.path(), 3, 1);
    let add = || {
        let r = c
            .post(s.at("/v1/images?camera=gate"))
            .header("content-type", "image/jpeg")
            .body(crops[0].1.clone())
            .send()
            .unwrap();
        r.json::<Value>().unwrap()["id"].as_u64().unwrap()
    };
    let first = add();
    let r = c
        .post(s.at("/v1/watches"))
        .json(&json!({"name": "n", "like": first, "min_score": 0.99}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    add();
    let t = std::time::Instant::now();
    let st = loop {
        let st: Value = c.get(s.at("/v1/stats")).send().unwrap().json().unwrap();
        if st["alerts"]["failed"]
            .as_object()
            .is_some_and(|f| !f.is_empty())
        {
            break st;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "{st}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let sink = format!("webhook http://127.0.0.1:{}/hook", rx.port);
    assert_eq!(st["alerts"]["failed"][&sink], 1, "{st}");
    assert_eq!(st["alerts"]["watches"], 1);
    let m = c.get(s.at("/metrics")).send().unwrap().text().unwrap();
    assert!(
        m.contains(&format!("sen_alerts_failed_total{{sink=\"{sink}\"}} 1")),
        "{m}"
    );
    assert!(rx.got.lock().unwrap().is_empty());
}
