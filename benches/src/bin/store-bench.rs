//! `make store-perf`: the gallery store's speed figures (issue #18), one run.
//!
//! 1. Durable ingest of precomputed 512-dim f16 embeddings, no crops, from 8
//!    concurrent submitters in batches of 64 (rows/s); the same with 10 KB crops.
//! 2. A 1,000,000-row f16 store: opening it (a fresh process: wall time and resident
//!    memory), exact top-10 of one query next to the same rows in one index file,
//!    a time filter selecting 10% of the rows, a camera filter selecting 10%.
//! 3. Half the rows deleted, then compaction: time, disk space before and after.
//!
//! `cargo run --release -p sen-benches --bin store-bench -- [--rows 1000000] [--out DIR] [--json]`

use sen_store::search::{Kernel, Rows, threads_for, top_k};
use sen_store::time::TimeRange;
use sen_store::{Crop, Mode, NewRow, Query, Selector, Storage, Store, StoreConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const D: usize = 512;
const T0: i64 = 1_795_961_002_120;
const CAMERAS: usize = 10;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn config() -> StoreConfig {
    StoreConfig {
        image_encoder_sha256: "ab".repeat(32),
        preprocess: sen_core::PreprocessSpec::for_model(&sen_core::ModelConfig::tiny()),
        dim: D,
        dtype: Storage::F16,
        crops: false,
        bundle_precision: "fp32".into(),
    }
}

/// `n` unit rows from a seed (uniform, scaled).
fn rows(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = sen_core::rng::Rng::new(seed);
    let mut v: Vec<f32> = (0..n * D).map(|_| rng.f32() * 2.0 - 1.0).collect();
    for r in v.chunks_mut(D) {
        let s = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x /= s);
    }
    v
}

fn new_row(i: usize, emb: &[f32], crop: Option<&[u8]>) -> NewRow {
    NewRow {
        camera: format!("cam-{}", i % CAMERAS),
        time_ms: T0 + i as i64 * 1000,
        path: format!("crops/{i:08}.jpg"),
        pid: None,
        attrs: None,
        embedding: emb.to_vec(),
        crop: crop.map(|b| Crop {
            content_type: "image/jpeg".into(),
            bytes: b.to_vec(),
        }),
        ..Default::default()
    }
}

/// Ingest `n` rows from 8 submitters in batches of 64; rows/s.
fn ingest(dir: &Path, n: usize, crop: Option<&[u8]>) -> f64 {
    let mut cfg = config();
    cfg.crops = crop.is_some();
    let store = Arc::new(Store::create(dir, &cfg).expect("create"));
    let emb = Arc::new(rows(4096, 3));
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..8 {
            let (store, emb) = (store.clone(), emb.clone());
            s.spawn(move || {
                let mut i = w * 64;
                while i < n {
                    let batch: Vec<NewRow> = (i..(i + 64).min(n))
                        .map(|k| new_row(k, &emb[(k % 4096) * D..(k % 4096 + 1) * D], crop))
                        .collect();
                    store.add(batch).expect("add");
                    i += 8 * 64;
                }
            });
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}

fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    f();
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn main() {
    // A child that only opens the store: wall time and resident memory.
    if let Some(dir) = arg("--open-only") {
        let before = rss_mib();
        let t = Instant::now();
        let s = Store::open(Path::new(&dir), Mode::Reader).expect("open");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"open_s": secs, "rss_mib": rss_mib(), "rss_before_mib": before,
                "rows": s.snapshot().live_rows()})
        );
        return;
    }
    let n: usize = arg("--rows").map_or(1_000_000, |v| v.parse().expect("--rows"));
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "target/store-bench".into()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |v| v.get());
    let mut report = serde_json::Map::new();
    report.insert("cpu".into(), sen_core::timing::cpu_model().into());
    report.insert("threads".into(), threads.into());
    report.insert(
        "kernel".into(),
        Kernel::active().unwrap().path().to_string().into(),
    );

    eprintln!("ingest: 200000 rows, 8 submitters x 64, no crops");
    let r = ingest(&out.join("ingest"), 200_000, None);
    report.insert("ingest_rows_per_s".into(), r.into());
    eprintln!("  {r:.0} rows/s");
    let crop = vec![0xA5u8; 10 * 1024];
    eprintln!("ingest: 30000 rows with 10 KB crops");
    let r = ingest(&out.join("ingest-crops"), 30_000, Some(&crop));
    report.insert("ingest_crops_rows_per_s".into(), r.into());
    eprintln!("  {r:.0} rows/s");
    // What a search costs over rows that keep crops: each returned row is checked
    // against its checksum (format 2 leaves the crop out of it; format 1 read it).
    let with_crops = Store::open(&out.join("ingest-crops"), Mode::Reader).unwrap();
    let q = rows(1, 98);
    let r = median_ms(
        || {
            let hits = with_crops
                .search(
                    &[Query {
                        vector: q.clone(),
                        k: 100,
                        cameras: None,
                        time: TimeRange::default(),
                        exclude: vec![],
                        group: false,
                    }],
                    threads,
                )
                .unwrap();
            assert_eq!(hits[0].len(), 100);
        },
        50,
    );
    report.insert("search_crops_k100_ms".into(), r.into());
    eprintln!("  top-100 over 30000 rows with crops: {r:.2} ms");
    drop(with_crops);
    let _ = std::fs::remove_dir_all(out.join("ingest"));
    let _ = std::fs::remove_dir_all(out.join("ingest-crops"));

    eprintln!("building a {n}-row f16 store");
    let dir = out.join("big");
    let store = Store::create(&dir, &config()).unwrap();
    let emb = rows(n, 7);
    let t = Instant::now();
    for lo in (0..n).step_by(8192) {
        let batch: Vec<NewRow> = (lo..(lo + 8192).min(n))
            .map(|k| new_row(k, &emb[k * D..(k + 1) * D], None))
            .collect();
        store.add(batch).unwrap();
    }
    store.compact().unwrap();
    report.insert("build_s".into(), t.elapsed().as_secs_f64().into());
    drop(store);
    let child = sen_core::process::command(std::env::current_exe().unwrap())
        .args(["--open-only", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let open: serde_json::Value = serde_json::from_slice(&child.stdout).expect("open child");
    eprintln!("  open: {open}");
    report.insert("open".into(), open);
    let store = Store::open(&dir, Mode::Reader).unwrap();
    let q = rows(1, 99);
    let query = |time: TimeRange, cameras: Option<Vec<String>>| Query {
        vector: q.clone(),
        k: 10,
        cameras,
        time,
        exclude: vec![],
        group: false,
    };
    let runs = 20;
    let all = median_ms(
        || {
            drop(
                store
                    .search(&[query(TimeRange::default(), None)], threads)
                    .unwrap(),
            )
        },
        runs,
    );
    // The same rows in one index file's layout (contiguous f16), searched directly.
    let g16: Vec<half::f16> = emb.iter().map(|&v| half::f16::from_f32(v)).collect();
    let kernel = Kernel::active().unwrap();
    let file = median_ms(
        || {
            drop(top_k(
                kernel,
                &q,
                Rows::F16(&g16),
                10,
                threads_for(n, threads),
            ))
        },
        runs,
    );
    drop(g16);
    let tenth = TimeRange::new(
        Some(T0 + (n as i64 / 2) * 1000),
        Some(T0 + (n as i64 / 2 + n as i64 / 10) * 1000),
    )
    .unwrap();
    let timef = median_ms(
        || drop(store.search(&[query(tenth, None)], threads).unwrap()),
        runs,
    );
    let camf = median_ms(
        || {
            drop(
                store
                    .search(
                        &[query(TimeRange::default(), Some(vec!["cam-3".into()]))],
                        threads,
                    )
                    .unwrap(),
            )
        },
        runs,
    );
    eprintln!(
        "  top-10: store {all:.2} ms, index file {file:.2} ms, time filter 10% {timef:.2} ms, camera filter 10% {camf:.2} ms"
    );
    report.insert(
        "search_ms".into(),
        serde_json::json!({"store_unfiltered": all, "index_file": file, "time_filter_10pct": timef,
            "camera_filter_10pct": camf, "store_vs_file": all / file,
            "time_vs_unfiltered": timef / all, "camera_vs_unfiltered": camf / all}),
    );
    drop(store);

    eprintln!("deleting half the rows, then compacting");
    let store = Store::open(&dir, Mode::Writer).unwrap();
    let t = Instant::now();
    let n_del = store
        .delete(Selector::Before(T0 + (n as i64 / 2) * 1000))
        .unwrap();
    let del_s = t.elapsed().as_secs_f64();
    let before = dir_bytes(&dir);
    let c = store.compact().unwrap();
    let after = dir_bytes(&dir);
    eprintln!(
        "  deleted {n_del} in {del_s:.1} s; compaction {:.1} s, {before} -> {after} bytes",
        c.seconds
    );
    report.insert(
        "compaction".into(),
        serde_json::json!({"deleted": n_del, "delete_s": del_s, "compact_s": c.seconds,
            "bytes_before": before, "bytes_after": after, "segment_bytes_before": c.bytes_before,
            "segment_bytes_after": c.bytes_after}),
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&out);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(report)).unwrap()
    );
}
