//! Replication and search against a real milvus-lite server (`make test-milvus`;
//! ignored by a plain `cargo test`, which has no server). Each test starts its own
//! server on a free loopback port and stops it by pid when done.

use sen_milvus::testing::{MilvusLite, assert_same_ranking};
use sen_milvus::{
    Collection, Encoder, IndexSpec, Replication, SearchFilter, Settings, Status, Target,
};
use sen_store::time::TimeRange;
use sen_store::{NewRow, Query, Selector, Storage, Store, StoreConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DIM: usize = 32;
const T0: i64 = 1_790_000_000_000;
/// Camera names a filter must escape: quotes, backslashes, HTML, a backslash-n that
/// must not become a line feed, a real line feed, non-ASCII.
const CAMERAS: [&str; 7] = [
    "gate",
    "cam\"q",
    "cam\\q",
    "<img src=x onerror=alert(1)>",
    "cam\\nq",
    "cam\nq",
    "hall-ü-日本",
];

fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn unit(r: &mut (impl FnMut() -> f32 + ?Sized)) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| r()).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn store(dir: &std::path::Path, sha: &str) -> Store {
    Store::create(
        dir,
        &StoreConfig {
            image_encoder_sha256: sha.into(),
            preprocess: sen_core::PreprocessSpec::for_model(&sen_core::ModelConfig::tiny()),
            dim: DIM,
            dtype: Storage::F32,
            crops: false,
            bundle_precision: "fp32".into(),
        },
    )
    .unwrap()
}

/// `n` rows in adds of `per_add`, cameras cycling through [`CAMERAS`], every third
/// without a pid, every other with attributes.
fn fill(s: &Store, n: usize, per_add: usize, seed: u64) {
    let mut r = rng(seed);
    let mut i = 0;
    while i < n {
        let rows: Vec<NewRow> = (i..(i + per_add).min(n))
            .map(|j| NewRow {
                camera: CAMERAS[j % CAMERAS.len()].into(),
                time_ms: T0 + j as i64 * 1000,
                path: format!("crops/{j}.jpg"),
                pid: (j % 3 != 0).then_some(j as i64 / 4),
                attrs: (j % 2 == 0).then(|| {
                    serde_json::json!({"coat": "red", "n": j})
                        .as_object()
                        .unwrap()
                        .clone()
                }),
                embedding: unit(&mut r),
                crop: None,
                ..Default::default()
            })
            .collect();
        i += rows.len();
        s.add(rows).unwrap();
    }
}

fn replication(m: &MilvusLite, collection: &str, box_name: &str) -> Replication {
    Replication {
        target: Target::parse(&m.uri(collection)).unwrap(),
        settings: Settings {
            rpc_timeout: Duration::from_secs(10),
            ..Settings::default()
        },
        box_name: box_name.into(),
        index: IndexSpec::Flat,
        batch: 100,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn open(m: &MilvusLite, collection: &str) -> Collection {
    let t = Target::parse(&m.uri(collection)).unwrap();
    let mut c = Collection::connect(&t, &Settings::default()).await.unwrap();
    c.open(None).await.unwrap();
    c
}

fn live_keys(s: &Store, box_name: &str) -> Vec<(String, u64)> {
    s.live_ids(0, u64::MAX)
        .into_iter()
        .map(|id| (box_name.to_string(), id))
        .collect()
}

#[test]
#[ignore = "needs milvus-lite: make test-milvus"]
fn replicated_rows_rank_as_the_local_store_and_deletes_follow() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MilvusLite::start(&dir.path().join("milvus"));
    let s = store(&dir.path().join("store"), "enc-a");
    fill(&s, 350, 50, 1);
    let r = replication(&m, "gallery", "box-a");
    let rt = rt();
    let status = Status::default();
    let rep = rt.block_on(r.catch_up(&s, &status)).unwrap();
    assert_eq!(rep.rows_upserted, 350);
    let coll = rt.block_on(open(&m, "gallery"));
    assert_eq!(rt.block_on(coll.count("")).unwrap(), 350);
    assert_eq!(rt.block_on(coll.keys("")).unwrap(), live_keys(&s, "box-a"));
    assert_eq!(
        coll.encoder(),
        Encoder {
            sha256: "enc-a".into(),
            dim: DIM
        }
    );

    // The same ranking as the local store, without and with filters (every camera
    // name escaped, time ranges, a box filter, "more like this").
    let mut q = rng(99);
    let check = |coll: &Collection, s: &Store, q: &mut dyn FnMut() -> f32| {
        for n in 0..4 {
            let v = unit(&mut *q);
            let mut cases: Vec<(Option<Vec<String>>, TimeRange)> =
                vec![(None, TimeRange::default())];
            for c in CAMERAS {
                cases.push((Some(vec![c.to_string()]), TimeRange::default()));
            }
            cases.push((
                Some(vec![CAMERAS[1].into(), CAMERAS[3].into()]),
                TimeRange {
                    from: Some(T0 + 50_000),
                    to: Some(T0 + 250_000),
                },
            ));
            for (cameras, time) in cases {
                let k = 15;
                let local = s
                    .search(
                        &[Query {
                            vector: v.clone(),
                            k,
                            cameras: cameras.clone(),
                            time,
                            ..Default::default()
                        }],
                        1,
                    )
                    .unwrap()
                    .pop()
                    .unwrap();
                let f = SearchFilter {
                    cameras: cameras.clone(),
                    time,
                    boxes: Some(vec!["box-a".into()]),
                    exclude: None,
                };
                let remote = rt
                    .block_on(coll.search(vec![v.clone()], k, &f, Default::default()))
                    .unwrap()
                    .pop()
                    .unwrap();
                assert!(!local.is_empty());
                for h in &remote {
                    assert_eq!(h.box_name, "box-a");
                    assert_eq!(h.store, s.info().uuid);
                    let row = s.row(h.found.id).unwrap();
                    assert_eq!(
                        (&row.camera, row.time_ms, &row.path, row.pid, &row.attrs),
                        (
                            &h.found.camera,
                            h.found.time_ms,
                            &h.found.path,
                            h.found.pid,
                            &h.found.attrs
                        )
                    );
                }
                let l: Vec<(u64, f64)> = local.iter().map(|f| (f.id, f.score as f64)).collect();
                let r: Vec<(u64, f64)> = remote
                    .iter()
                    .map(|h| (h.found.id, h.found.score as f64))
                    .collect();
                assert_same_ranking(&l, &r, &format!("query {n}, cameras {cameras:?}, {time:?}"));
            }
        }
    };
    check(&coll, &s, &mut q);
    // Another box's filter matches nothing of this one.
    let none = rt
        .block_on(coll.search(
            vec![unit(&mut q)],
            5,
            &SearchFilter {
                boxes: Some(vec!["box-b".into()]),
                ..Default::default()
            },
            Default::default(),
        ))
        .unwrap();
    assert!(none[0].is_empty());

    // Deletes by id and by camera, and retention, reach Milvus on the next catch-up;
    // a server restart in between (it comes back with the collection released).
    s.delete(Selector::Ids(vec![3, 4, 200])).unwrap();
    s.delete(Selector::Camera(CAMERAS[3].into())).unwrap();
    s.delete(Selector::Before(T0 + 60_000)).unwrap();
    fill(&s, 20, 7, 5);
    s.compact().unwrap();
    m.restart();
    let rep = rt.block_on(r.catch_up(&s, &Status::default())).unwrap();
    assert!(rep.rows_deleted > 50, "{rep:?}");
    let coll = rt.block_on(open(&m, "gallery"));
    assert_eq!(rt.block_on(coll.keys("")).unwrap(), live_keys(&s, "box-a"));
    check(&coll, &s, &mut q);
}

#[test]
#[ignore = "needs milvus-lite: make test-milvus"]
fn replication_resumes_after_the_server_stops_mid_way_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = MilvusLite::start(&dir.path().join("milvus"));
    let s = Arc::new(store(&dir.path().join("store"), "enc-a"));
    fill(&s, 3000, 20, 2);
    let r = replication(&m, "resume", "box-a");
    let status = Arc::new(Status::default());
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (r, s, st, sp) = (r.clone(), s.clone(), status.clone(), stop.clone());
        std::thread::spawn(move || r.follow(s, st, sp))
    };
    // SIGTERM the server once some rows are across, restart it 1 s later.
    let t0 = Instant::now();
    while status.rows_upserted.load(Ordering::Relaxed) < 300 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no progress: {:?}",
            status.last_error()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    m.stop();
    let at_stop = status.rows_upserted.load(Ordering::Relaxed);
    assert!(
        at_stop < 3000,
        "finished before the stop: make the gallery larger"
    );
    // Deletes while Milvus is away wait in the store.
    s.delete(Selector::Ids((100..140).collect())).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    m.restart();
    let t0 = Instant::now();
    loop {
        let head = s.change_seq().unwrap();
        if status.cursor.load(Ordering::Relaxed) == head && status.lag_changes() == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "not caught up: {:?}",
            status.last_error()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert!(
        status.errors.load(Ordering::Relaxed) >= 1,
        "the outage was not noticed"
    );
    let rt = rt();
    let coll = rt.block_on(open(&m, "resume"));
    let keys = rt.block_on(coll.keys("")).unwrap();
    assert_eq!(keys.len() as u64, rt.block_on(coll.count("")).unwrap());
    assert_eq!(keys, live_keys(&s, "box-a"));
    assert_eq!(keys.len(), 2960);
    let unique: BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    // The cursor is durable in the store: a new replication starts where it was.
    drop(coll);
    let cursor = s
        .consumer(&sen_milvus::replicate::consumer_name(&r.target), None)
        .unwrap();
    assert_eq!(cursor, s.change_seq().unwrap());
}

#[test]
#[ignore = "needs milvus-lite: make test-milvus"]
fn a_collection_of_another_encoder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = MilvusLite::start(&dir.path().join("milvus"));
    let a = store(&dir.path().join("a"), "enc-a");
    fill(&a, 10, 10, 3);
    let b = store(&dir.path().join("b"), "enc-b");
    fill(&b, 10, 10, 4);
    let rt = rt();
    rt.block_on(replication(&m, "shared", "a").catch_up(&a, &Status::default()))
        .unwrap();
    let e = rt
        .block_on(replication(&m, "shared", "b").catch_up(&b, &Status::default()))
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, sen_milvus::MilvusError::Mismatch(_)), "{msg}");
    assert!(
        msg.contains("enc-a") && msg.contains("enc-b") && msg.contains(&m.uri("shared")),
        "{msg}"
    );
    // Nothing of b was written.
    let coll = rt.block_on(open(&m, "shared"));
    assert_eq!(rt.block_on(coll.count("")).unwrap(), 10);
    // A follower refuses too, and stops (state "refused") rather than retrying.
    let status = Arc::new(Status::default());
    replication(&m, "shared", "b").follow(
        Arc::new(b),
        status.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(status.state(), sen_milvus::replicate::State::Refused);
    // A rejected expression names the endpoint and the expression.
    let e = rt
        .block_on(coll.count("camera === 1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&m.uri("shared")) && e.contains("camera === 1"),
        "{e}"
    );
}

#[test]
fn an_unreachable_server_is_named_in_the_error() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Target::parse(&format!("milvus://127.0.0.1:{port}/c")).unwrap();
    let s = Settings {
        connect_timeout: Duration::from_secs(2),
        attempts: 1,
        ..Settings::default()
    };
    let t0 = Instant::now();
    let e = rt()
        .block_on(Collection::connect(&t, &s))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(&t.to_string()) && e.contains("connecting"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}
