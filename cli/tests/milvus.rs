//! A box that replicates into Milvus and a central node that searches there, end to
//! end against milvus-lite (`make test-milvus`; ignored by a plain `cargo test`):
//! `sen serve --replicate` survives SIGKILL with nothing lost or doubled, deletes
//! follow, `sen store search milvus://...` ranks as the local store does, and
//! `sen serve --search-backend --boxes` answers searches with boxes and proxies
//! crops from the owning box. Loopback ephemeral ports only; every wait is bounded.

use reqwest::blocking::Client;
use sen_milvus::testing::{MilvusLite, assert_same_ranking};
use sen_testing::{Serve, synth_crops, tiny_bundle};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SEN: &str = env!("CARGO_BIN_EXE_sen");

fn sen() -> Command {
    sen_core::process::command(SEN)
}

fn crops(dir: &Path) -> Vec<Vec<u8>> {
    synth_crops(dir, 3, 40).into_iter().map(|c| c.1).collect()
}

/// `sen serve` with `args`, once ready.
fn start(bundle: &Path, args: &[&str]) -> Serve {
    Serve::launch(SEN, bundle).args(args).start()
}

/// `sen serve` flags of box "box-a" replicating its `store` to `uri`.
fn box_args<'a>(store: &'a Path, uri: &'a str) -> [&'a str; 6] {
    [
        "--store",
        store.to_str().unwrap(),
        "--replicate",
        uri,
        "--box-name",
        "box-a",
    ]
}

/// Cameras whose names a Milvus filter must escape.
const CAMERAS: [&str; 3] = ["gate", "cam\"q\\x", "<b>hall</b>"];

fn add(c: &Client, s: &Serve, img: &[u8], n: usize) -> u64 {
    let mut q = vec![
        ("camera", CAMERAS[n % 3].to_string()),
        ("time", (1_790_000_000_000i64 + n as i64 * 1000).to_string()),
        ("pid", (n / 4).to_string()),
    ];
    // Half the rows belong to tracks (SPEC §12): replication carries the fields.
    if n.is_multiple_of(2) {
        q.push(("track", format!("walk-{}", n % 4)));
        q.push(("bbox", format!("{n},1,{},50.5", n + 20)));
    }
    let r = c
        .post(s.at("/v1/images"))
        .query(&q)
        .header("content-type", "image/jpeg")
        .body(img.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().unwrap()["id"].as_u64().unwrap()
}

fn caught_up(c: &Client, s: &Serve) -> Value {
    let t = Instant::now();
    loop {
        let st: Value = c.get(s.at("/v1/stats")).send().unwrap().json().unwrap();
        let r = &st["replication"];
        if r["state"] == "replicating" && r["lag_changes"] == 0 && r["cursor"] == st["change_seq"] {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "replication did not catch up: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ranking(v: &Value) -> Vec<(u64, f64)> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["score"].as_f64().unwrap()))
        .collect()
}

#[test]
#[ignore = "needs milvus-lite: make test-milvus"]
fn a_box_replicates_through_sigkill_and_a_central_node_searches_and_proxies_crops() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let m = MilvusLite::start(&dir.path().join("milvus"));
    let b = tiny_bundle(dir.path(), 5);
    let imgs = crops(dir.path());
    let store = dir.path().join("store");
    let uri = m.uri("site");
    let c = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let box_args = box_args(&store, &uri);

    // Ingest, SIGKILL the box mid-way, restart it, ingest more, delete some.
    let mut s = start(&b, &box_args);
    let mut acked = vec![];
    for (n, img) in imgs.iter().enumerate().take(20) {
        acked.push(add(&c, &s, img, n));
    }
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(s);
    let s = start(&b, &box_args);
    for (n, img) in imgs.iter().enumerate().skip(20) {
        acked.push(add(&c, &s, img, n));
    }
    for id in [acked[1], acked[7], acked[30]] {
        assert_eq!(
            c.delete(s.at(&format!("/v1/images/{id}")))
                .send()
                .unwrap()
                .status(),
            204
        );
    }
    let stats = caught_up(&c, &s);
    assert_eq!(stats["rows"], 37);
    assert_eq!(stats["replication"]["box"], "box-a");
    let metrics = c.get(s.at("/metrics")).send().unwrap().text().unwrap();
    assert!(
        metrics.contains("sen_replication_lag_changes 0"),
        "{metrics}"
    );
    assert!(metrics.contains("sen_replication_up 1"), "{metrics}");

    // Milvus holds exactly the box's live rows: nothing lost, nothing doubled.
    let live: Vec<(String, u64)> = acked
        .iter()
        .filter(|id| ![acked[1], acked[7], acked[30]].contains(id))
        .map(|&id| ("box-a".to_string(), id))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = rt.block_on(async {
        let t = sen_milvus::Target::parse(&uri).unwrap();
        let mut coll = sen_milvus::Collection::connect(&t, &Default::default())
            .await
            .unwrap();
        coll.open(None).await.unwrap();
        (coll.keys("").await.unwrap(), coll.count("").await.unwrap())
    });
    assert_eq!(keys.0, live);
    assert_eq!(keys.1, 37);

    // `sen store search milvus://...` ranks as the local store does, with and without
    // a filter on a camera whose name needs escaping.
    let cli = |target: &str, extra: &[&str]| -> Value {
        let o = sen()
            .args(["store", "search", target, "--bundle"])
            .arg(&b)
            .args(["a woman in a red coat", "-k", "8", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for extra in [
        vec![],
        vec!["--camera", CAMERAS[1]],
        vec!["--camera", CAMERAS[2], "--camera", "gate"],
    ] {
        let local = cli(store.to_str().unwrap(), &extra);
        let remote = cli(&uri, &extra);
        assert_same_ranking(
            &ranking(&local),
            &ranking(&remote),
            &format!("cli {extra:?}"),
        );
        assert!(local["results"][0].get("box").is_none());
        for r in remote["results"].as_array().unwrap() {
            assert_eq!(r["box"], "box-a");
            if extra.len() == 2 {
                assert_eq!(r["camera"], CAMERAS[1]);
            }
        }
    }

    // A central node: search with boxes, crops from the box, no ingest.
    let boxes = dir.path().join("boxes.json");
    std::fs::write(&boxes, json!({"box-a": {"url": s.url}}).to_string()).unwrap();
    let central = start(
        &b,
        &["--search-backend", &uri, "--boxes", boxes.to_str().unwrap()],
    );
    let q = json!({"text": "a man in a grey hoodie", "k": 6, "cameras": [CAMERAS[1], "gate"]});
    let on_box: Value = c
        .post(s.at("/v1/search"))
        .json(&q)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let r = c.post(central.at("/v1/search")).json(&q).send().unwrap();
    assert_eq!(r.status(), 200);
    let on_central: Value = r.json().unwrap();
    assert_same_ranking(&ranking(&on_box), &ranking(&on_central), "central vs box");
    // The track fields came through replication as the box has them.
    let fields = |v: &Value| -> Vec<(u64, Value, Value, Value)> {
        let mut f: Vec<_> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_u64().unwrap(),
                    r["track"].clone(),
                    r["bbox"].clone(),
                    r["source"].clone(),
                )
            })
            .collect();
        f.sort_by_key(|x| x.0);
        f
    };
    assert_eq!(fields(&on_box), fields(&on_central));
    assert!(
        fields(&on_central)
            .iter()
            .any(|f| f.1.is_string() && f.2.is_array()),
        "{on_central}"
    );
    assert!(
        fields(&on_central).iter().all(|f| f.3 == "http"),
        "{on_central}"
    );
    // Grouping by track is for a box for now: the node says so.
    for body in [
        json!({"text": "a man", "group": "track"}),
        json!({"like_track": {"camera": "gate", "track": "walk-0"}}),
    ] {
        let r = c.post(central.at("/v1/search")).json(&body).send().unwrap();
        assert_eq!(r.status(), 422, "{body}");
        assert!(
            r.text()
                .unwrap()
                .contains("not supported on a central search node")
        );
    }
    let first = &on_central["results"][0];
    assert_eq!(first["box"], "box-a");
    let id = first["id"].as_u64().unwrap();
    let via = c
        .get(central.at(&format!("/v1/images/box-a/{id}")))
        .send()
        .unwrap();
    assert_eq!(via.status(), 200);
    assert_eq!(via.headers()["content-type"], "image/jpeg");
    let direct = c
        .get(s.at(&format!("/v1/images/{id}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(via.bytes().unwrap(), direct);
    let thumb = c
        .get(central.at(&format!("/v1/images/box-a/{id}?size=thumb")))
        .send()
        .unwrap();
    assert_eq!(thumb.status(), 200);
    // "More like this" through the central node leaves the row itself out.
    let like: Value = c
        .post(central.at("/v1/search"))
        .json(&json!({"like": id, "like_box": "box-a", "k": 5}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        like["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != id),
        "{like}"
    );
    assert_eq!(like["results"].as_array().unwrap().len(), 5);
    // What a central node does not do, it says.
    for (method, path, status) in [
        ("POST", "/v1/images", 404),
        ("DELETE", "/v1/images/1", 404),
        ("GET", "/v1/images/1", 404),
        ("GET", "/v1/images/box-z/1", 404),
        ("GET", "/v1/cameras", 404),
    ] {
        let r = c
            .request(method.parse().unwrap(), central.at(path))
            .header("content-type", "image/jpeg")
            .body(imgs[0].clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}: {}", r.text().unwrap());
    }
    let st: Value = c
        .get(central.at("/v1/stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(st["rows"], 37);
    assert_eq!(st["boxes"], json!(["box-a"]));
    // The box refuses the central node's fields, and the node is still healthy.
    let r = c
        .post(s.at("/v1/search"))
        .json(&json!({"text": "x", "boxes": ["a"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(c.get(central.at("/readyz")).send().unwrap().status(), 200);
}

/// Milvus away (nothing listens on its port): the box serves and ingests as usual,
/// says it is retrying and how far behind it is, never logs the token, and stops
/// cleanly on SIGTERM. Runs in `make test` (no server needed).
#[test]
fn a_box_keeps_working_while_milvus_is_away() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let b = tiny_bundle(dir.path(), 5);
    let imgs = crops(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("milvus://127.0.0.1:{port}/site");
    let store = dir.path().join("store");
    let c = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut s = Serve::launch(SEN, &b)
        .args(box_args(&store, &uri))
        .env("SEN_MILVUS_TOKEN", "s3cret-token")
        .env("SEN_MILVUS_CONNECT_TIMEOUT", "1")
        .env("RUST_LOG", "debug")
        .start();
    for (n, img) in imgs.iter().enumerate().take(3) {
        add(&c, &s, img, n);
    }
    let t = Instant::now();
    let st = loop {
        let st: Value = c.get(s.at("/v1/stats")).send().unwrap().json().unwrap();
        if st["replication"]["state"] == "retrying" && st["replication"]["lag_changes"] == 3 {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let r = &st["replication"];
    assert_eq!(r["target"], uri.as_str());
    assert!(r["last_error"].as_str().unwrap().contains(&uri), "{r}");
    assert!(r["lag_seconds"].as_f64().unwrap() >= 0.0);
    let metrics = c.get(s.at("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("sen_replication_up 0"), "{metrics}");
    assert!(
        metrics.contains("sen_replication_lag_changes 3"),
        "{metrics}"
    );
    // Search still answers from the local store.
    let r = c
        .post(s.at("/v1/search"))
        .json(&json!({"text": "a person", "k": 3}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // SIGTERM: exit 0, within the shutdown timeout and a connect attempt.
    s.signal("-TERM");
    let status = s.wait_exit(Duration::from_secs(45));
    assert!(status.success(), "{status}");
    let text = s.final_log();
    assert!(text.contains("replication"), "{text}");
    assert!(!text.contains("s3cret-token"), "the token reached the log");
}
