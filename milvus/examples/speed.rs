//! `make milvus-perf`: replication throughput into milvus-lite and search latency
//! through it next to the local store, for N rows (default 100,000) of random unit
//! 512-d embeddings; FLAT and HNSW, with recall@10 against the exact local search.
//! One reported run, not a test. milvus-lite is a Python reimplementation for local
//! testing, not Milvus's production engine: its numbers say nothing of a cluster's.

use sen_milvus::testing::MilvusLite;
use sen_milvus::{Collection, IndexSpec, Replication, SearchFilter, Settings, Status, Target};
use sen_store::{NewRow, Query, Storage, Store, StoreConfig};
use std::time::{Duration, Instant};

const DIM: usize = 512;
const QUERIES: usize = 50;

fn main() {
    let n: usize = std::env::var("SEN_MILVUS_PERF_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let m = MilvusLite::start(&dir.path().join("milvus"));
    let store = Store::create(
        &dir.path().join("store"),
        &StoreConfig {
            image_encoder_sha256: "perf".into(),
            preprocess: sen_core::PreprocessSpec::for_model(&sen_core::ModelConfig::tiny()),
            dim: DIM,
            dtype: Storage::F32,
            crops: false,
            bundle_precision: "fp32".into(),
        },
    )
    .unwrap();
    let mut s = 0x5eed_u64;
    let mut unit = move || {
        let v: Vec<f32> = (0..DIM)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    for start in (0..n).step_by(5000) {
        let rows = (start..(start + 5000).min(n))
            .map(|i| NewRow {
                camera: format!("cam-{}", i % 8),
                time_ms: 1_790_000_000_000 + i as i64,
                path: format!("{i}.jpg"),
                pid: None,
                attrs: None,
                embedding: unit(),
                crop: None,
                ..Default::default()
            })
            .collect();
        store.add(rows).unwrap();
    }
    store.flush().unwrap();
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| unit()).collect();
    let local = |q: &[f32]| -> Vec<u64> {
        let query = Query {
            vector: q.to_vec(),
            k: 10,
            cameras: None,
            time: Default::default(),
            ..Default::default()
        };
        store.search(&[query], 1).unwrap()[0]
            .iter()
            .map(|f| f.id)
            .collect()
    };
    let exact: Vec<Vec<u64>> = queries.iter().map(|q| local(q)).collect();
    let local_ms = time_ms(|| {
        for q in &queries {
            local(q);
        }
    }) / QUERIES as f64;
    println!("{n} rows x {DIM}-d; local store exact top-10, 1 thread: {local_ms:.2} ms/query");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, index, params) in [
        ("flat", IndexSpec::Flat, vec![]),
        (
            "hnsw",
            IndexSpec::Hnsw {
                m: 16,
                ef_construction: 200,
            },
            vec![],
        ),
        (
            "hnsw",
            IndexSpec::Hnsw {
                m: 16,
                ef_construction: 200,
            },
            vec!["ef=512".to_string()],
        ),
        ("ivf_flat", IndexSpec::IvfFlat { nlist: 1024 }, vec![]),
        (
            "ivf_flat",
            IndexSpec::IvfFlat { nlist: 1024 },
            vec!["nprobe=128".to_string()],
        ),
    ] {
        let collection = format!("perf_{name}");
        let r = Replication {
            target: Target::parse(&m.uri(&collection)).unwrap(),
            settings: Settings {
                rpc_timeout: Duration::from_secs(120),
                ..Settings::default()
            },
            box_name: "perf".into(),
            index,
            batch: 1000,
        };
        if params.is_empty() {
            let rep = rt.block_on(r.catch_up(&store, &Status::default())).unwrap();
            println!(
                "{name}: replicated {} rows in {:.1} s: {:.0} rows/s",
                rep.rows_upserted,
                rep.seconds,
                rep.rows_upserted as f64 / rep.seconds
            );
        }
        let mut c = rt
            .block_on(Collection::connect(&r.target, &Settings::default()))
            .unwrap();
        rt.block_on(c.open(None)).unwrap();
        let p = sen_milvus::collection::search_params(c.index(), 10, &params).unwrap();
        // milvus-lite builds a sealed segment's index in the background (and says it
        // is built before it is: describe_index cannot be trusted), searching the
        // segment exactly meanwhile. Wait until every data file of the collection has
        // an index file beside it (at most 10 minutes).
        if name != "flat" {
            let root = dir.path().join("milvus/collections").join(&collection);
            let t0 = Instant::now();
            loop {
                let (data, idx) = count_files(&root);
                if data > 0 && idx >= data {
                    println!(
                        "{name}: index built on {data} segments {:.0} s after the flush",
                        t0.elapsed().as_secs_f64()
                    );
                    break;
                }
                if t0.elapsed() > Duration::from_secs(600) {
                    println!(
                        "{name}: index files for {idx} of {data} segments after 10 minutes; measuring anyway"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        let mut hit = 0;
        for (q, e) in queries.iter().zip(&exact) {
            let h = rt
                .block_on(c.search(vec![q.clone()], 10, &SearchFilter::default(), p.clone()))
                .unwrap();
            hit += h[0].iter().filter(|x| e.contains(&x.found.id)).count();
        }
        let recall = hit as f64 / (10 * QUERIES) as f64;
        let ms = time_ms(|| {
            for q in &queries {
                rt.block_on(c.search(vec![q.clone()], 10, &SearchFilter::default(), p.clone()))
                    .unwrap();
            }
        }) / QUERIES as f64;
        println!(
            "{name} {p:?}: search top-10 through milvus-lite {ms:.2} ms/query, recall@10 vs exact {recall:.3}"
        );
    }
}

/// (data files, index files) under a milvus-lite collection folder.
fn count_files(dir: &std::path::Path) -> (usize, usize) {
    let (mut data, mut idx) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with("data_") && name.ends_with(".parquet") {
                data += 1;
            } else if name.ends_with(".idx") {
                idx += 1;
            }
        }
    }
    (data, idx)
}

fn time_ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}
