//! Store migrations (SPEC §11): a format-1 store made by the previous sen (committed
//! under `tests/fixtures/store-v1`, made by `sen-store` at format 1 from
//! `common::row` tags; see its README) is migrated in place when its writer opens it,
//! keeping every row, crop, delete, cursor and idempotency key; readers refuse it
//! until then, and refuse a newer store naming both versions. A crash test kills the
//! migration at random moments: afterwards the store is wholly format 1 or wholly
//! format 2, `verify` passes and nothing is lost.

mod common;

use common::*;
use sen_store::{Idempotency, Mode, Storage, Store, StoreError, db};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v1");

/// What the fixture holds (its README): tags 0..60 added, ids 1..=60 for tags
/// 0..=59; ids 5, 17 and 42 deleted; a segment of the first 40 rows, the rest pending.
const DELETED: [u64; 3] = [5, 17, 42];
const CONSUMER: &str = "replicate milvus://127.0.0.1:1/c";
const IDEM_KEY: &str = "open POST /v1/images fixture-key";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

fn fixture(dir: &Path) -> PathBuf {
    let s = dir.join("store");
    copy_dir(Path::new(FIXTURE), &s);
    s
}

/// The format this code writes: 4 (watches) since issue 29; 3 (tracks, sources'
/// inbox) since issue 28.
const CURRENT: u32 = 5;

fn version(dir: &Path) -> u32 {
    let c = db::open(dir, false).unwrap();
    db::format_version(&c, &dir.join(db::DB_FILE)).unwrap()
}

/// Every live row is the row its tag stands for, with its embedding and crop.
fn check_rows(store: &Store, live: &[u64]) {
    assert_eq!(store.live_ids(0, u64::MAX), live);
    for (f, emb) in store.rows_with_embeddings(live).unwrap() {
        let want = row(tag_of(&f.path));
        assert_eq!(f.camera, want.camera);
        assert_eq!(f.time_ms, want.time_ms);
        assert_eq!(f.pid, want.pid);
        assert_eq!(
            f.attrs,
            want.attrs.map(serde_json::Value::Object),
            "row {}",
            f.id
        );
        assert_eq!(emb, want.embedding);
        let crop = store.crop(f.id).unwrap().unwrap();
        assert_eq!(crop.bytes, want.crop.unwrap().bytes);
    }
}

fn fixture_ids() -> Vec<u64> {
    (1..=60).filter(|i| !DELETED.contains(i)).collect()
}

#[test]
fn a_format_1_store_is_migrated_when_its_writer_opens_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = fixture(d.path());
    assert_eq!(version(&dir), 1);
    // A reader asks for the writer; nothing changes.
    let e = Store::open(&dir, Mode::Reader).err().unwrap().to_string();
    assert!(
        e.contains("format 1") && e.contains("sen store migrate"),
        "{e}"
    );
    assert_eq!(version(&dir), 1);
    // format 1 still verifies (its row checksums cover the crop).
    assert!(sen_store::verify::verify(&dir).unwrap().problems.is_empty());
    let store = Store::open(&dir, Mode::Writer).unwrap();
    assert_eq!(store.info().format_version, CURRENT);
    check_rows(&store, &fixture_ids());
    // Format 5 records the encoder identity's preprocessing; a store made before it
    // was bicubic (CLIP's) and refuses a bilinear bundle of the same encoder, naming
    // both.
    let i = store.info().clone();
    assert_eq!(
        i.preprocess,
        sen_core::preprocess::RecordedPreprocess::LegacyBicubic
    );
    let cfg = sen_core::ModelConfig::vit_b16();
    let bicubic = sen_core::PreprocessSpec::for_model(&cfg);
    store
        .check_encoder(&i.image_encoder_sha256, i.dim, &bicubic, "old")
        .unwrap();
    let bilinear = sen_core::PreprocessSpec::for_model_with(
        &cfg,
        sen_core::preprocess::ResizeFilter::Bilinear,
    );
    let e = store
        .check_encoder(&i.image_encoder_sha256, i.dim, &bilinear, "new")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bicubic with CLIP's mean and std") && e.contains(&bilinear.canonical_json()),
        "{e}"
    );
    // The replication cursor and the deletes' tombstones survived.
    assert_eq!(store.consumer(CONSUMER, None).unwrap(), 3);
    let deletes: Vec<u64> = store
        .changes_since(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|c| c.delete)
        .map(|c| c.first_id)
        .collect();
    assert_eq!(deletes, DELETED);
    // A format-1 idempotency key (no request digest) replays as it did.
    let again = store
        .add_idempotent(
            vec![row(1000)],
            Some(Idempotency {
                key: IDEM_KEY.into(),
                request: "any".into(),
            }),
        )
        .unwrap();
    assert!(again.replayed);
    // New rows, flushes and compaction work on the migrated store, and so do the
    // format-3 fields (a track) and tables (a source's inbox).
    store.add((60..69).map(row).collect()).unwrap();
    let (tracked, _) = store
        .add(vec![sen_store::NewRow {
            track: Some("1607123955.475377-mxklsc".into()),
            bbox: Some([415.0, 489.0, 528.0, 700.0]),
            source: Some("cli".into()),
            ..row(69)
        }])
        .unwrap();
    let camera = store.row(tracked).unwrap().camera;
    assert_eq!(
        store
            .track_rows(&camera, "1607123955.475377-mxklsc")
            .unwrap(),
        vec![tracked]
    );
    let found = store.row(tracked).unwrap();
    assert_eq!(found.bbox, Some([415.0, 489.0, 528.0, 700.0]));
    assert_eq!(found.source.as_deref(), Some("cli"));
    store
        .inbox_push(vec![sen_store::InboxMessage {
            source: "frigate".into(),
            topic: "frigate/events".into(),
            payload: b"{}".to_vec(),
            received_ms: 1,
        }])
        .unwrap();
    assert_eq!(store.inbox_depth("frigate").unwrap(), 1);
    // And format 4's watches.
    let dim = store.info().dim;
    let mut v = vec![0.0f32; dim];
    v[0] = 1.0;
    let w = store
        .watch_add(
            sen_store::watch::WatchSpec {
                name: "red backpack".into(),
                query: sen_store::watch::WatchQuery::Text("a man with a red backpack".into()),
                cameras: None,
                threshold: sen_store::watch::Threshold::MinScore(0.3),
                prior: None,
                cooldown_s: 300,
            },
            v,
        )
        .unwrap();
    assert_eq!(store.watches().unwrap().len(), 1);
    assert_eq!(store.watch(w).unwrap().unwrap().spec.name, "red backpack");
    store.flush().unwrap();
    store.compact().unwrap();
    drop(store);
    assert_eq!(version(&dir), CURRENT);
    let v = sen_store::verify::verify(&dir).unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let store = Store::open(&dir, Mode::Reader).unwrap();
    let mut live = fixture_ids();
    live.extend(61..=70);
    check_rows(&store, &live);
}

#[test]
fn a_newer_store_is_refused_naming_both_versions() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("s");
    drop(Store::create(&dir, &config(Storage::F32, true)).unwrap());
    let c = db::open(&dir, true).unwrap();
    db::set_meta(&c, &dir.join(db::DB_FILE), "format_version", "99").unwrap();
    drop(c);
    for mode in [Mode::Reader, Mode::Writer] {
        match Store::open(&dir, mode) {
            Err(StoreError::Damaged(m)) => {
                assert!(
                    m.contains("format 99") && m.contains(&format!("up to {CURRENT}")),
                    "{m}"
                )
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a newer store was opened"),
        }
    }
}

/// Grow a format-1 store by `n` rows written the way format 1 wrote them (row
/// checksums over metadata, embedding and crop; rows pending), so a migration takes
/// long enough to be killed part-way. Returns the ids added.
fn grow_v1(dir: &Path, n: u64) -> Vec<u64> {
    let c = db::open(dir, true).unwrap();
    let path = dir.join(db::DB_FILE);
    let next: u64 = db::meta(&c, &path)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == "next_id")
        .unwrap()
        .1
        .parse()
        .unwrap();
    c.execute_batch("BEGIN").unwrap();
    let mut ids = vec![];
    for i in 0..n {
        let id = next + i;
        let r = row(10_000 + i);
        let m = db::RowMeta {
            id,
            camera: r.camera.clone(),
            time_ms: r.time_ms,
            path: r.path.clone(),
            pid: r.pid,
            attrs: r.attrs.map(|a| serde_json::Value::Object(a).to_string()),
            ingest_ms: T0,
            crc: 0,
            track: None,
            bbox: None,
            source: None,
        };
        let emb: Vec<u8> = r.embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
        let crop = r.crop.unwrap();
        let crc = db::row_crc_v1(&m, &emb, Some(("image/jpeg", &crop.bytes)));
        c.execute(
            "INSERT INTO rows(id, camera, time_ms, path, pid, attrs, ingest_ms, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![id as i64, m.camera, m.time_ms, m.path, m.pid, m.attrs, m.ingest_ms, crc as i64],
        )
        .unwrap();
        c.execute(
            "INSERT INTO pending(id, embedding) VALUES (?1, ?2)",
            rusqlite::params![id as i64, emb],
        )
        .unwrap();
        c.execute(
            "INSERT INTO crops(id, content_type, bytes) VALUES (?1, 'image/jpeg', ?2)",
            rusqlite::params![id as i64, crop.bytes],
        )
        .unwrap();
        ids.push(id);
    }
    c.execute(
        "INSERT INTO changes(kind, first_id, last_id, at_ms) VALUES ('add', ?1, ?2, ?3)",
        rusqlite::params![next as i64, (next + n - 1) as i64, T0],
    )
    .unwrap();
    db::set_meta(&c, &path, "next_id", &(next + n).to_string()).unwrap();
    c.execute_batch("COMMIT").unwrap();
    ids
}

/// The child: open the store as its writer (which migrates it), then report.
#[test]
fn migrate_child() {
    let Ok(dir) = std::env::var("SEN_MIGRATE_CHILD") else {
        return;
    };
    let _ = Store::open(Path::new(&dir), Mode::Writer).unwrap();
    println!("migrated");
}

fn rounds() -> usize {
    std::env::var("SEN_MIGRATE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

#[test]
fn killed_while_migrating_the_store_is_format_1_or_current_and_whole() {
    let d = tempfile::tempdir().unwrap();
    let base = fixture(d.path());
    let mut live = fixture_ids();
    live.extend(grow_v1(&base, 20_000));
    let child = |dir: &Path| {
        sen_core::process::command(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "migrate_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SEN_MIGRATE_CHILD", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long an uninterrupted migration takes here (the kills land within it).
    let probe = d.path().join("probe");
    copy_dir(&base, &probe);
    let t = Instant::now();
    assert!(child(&probe).wait().unwrap().success());
    let full = t.elapsed();
    assert_eq!(version(&probe), CURRENT);
    let (mut old, mut new) = (0, 0);
    let started = Instant::now();
    for round in 0..rounds() {
        // Bounded: a round is a copy, a child killed within its migration, checks.
        assert!(started.elapsed() < Duration::from_secs(300));
        let dir = d.path().join(format!("r{round}"));
        copy_dir(&base, &dir);
        let mut c = child(&dir);
        let at = full.mul_f64(mix(round as u64) as f64 / u64::MAX as f64);
        std::thread::sleep(at);
        let _ = c.kill();
        let _ = c.wait();
        match version(&dir) {
            1 => old += 1,
            CURRENT => new += 1,
            v => panic!("round {round}: format {v}"),
        }
        let v = sen_store::verify::verify(&dir).unwrap();
        assert!(v.problems.is_empty(), "round {round}: {:?}", v.problems);
        let store = Store::open(&dir, Mode::Writer).unwrap();
        assert_eq!(store.info().format_version, CURRENT);
        assert_eq!(store.live_ids(0, u64::MAX), live, "round {round}");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "{} kills during a {:.0} ms migration of {} rows: {old} left format 1, {new} format {CURRENT}",
        rounds(),
        full.as_secs_f64() * 1e3,
        live.len()
    );
}
