//! Exact top-10 search, one query at a time, over 10k, 100k and 1M x 512 galleries in
//! f32 and f16 (queries per second), on every core and, for 100k, on one thread; this
//! machine's memory read bandwidth over the 100k f32 gallery measured the same way (a
//! multi-threaded sum: the floor for any exact scan); the CRC-32 check `sen` runs
//! over an index's rows when it opens one; and the end-to-end query (text to top-10
//! ids: tokenise, text encoder on the CPU, search 100k rows) with the vit-b16 bundle.
//!
//! Names: `search/{10k,100k,1m}-x512-{f32,f16}-{N}t`, `search/memory-read-100k-x512-f32-{N}t`,
//! `search/simd-{path}-100k-x512-{f32,f16}-1t` (every kernel path this CPU runs),
//! `index-open/crc32-100k-x512-f32`, `query-e2e/cpu-{fp32,int8,fp32-ctx77}-vit-b16/100k-top10`
//! (`fp32-ctx77`: a format-1 bundle, always fed the whole context).
//! Compare with faiss: `scripts/reference/faiss_search.py`.
//! `cargo bench -p sen-benches --bench search [-- FILTER]`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use sen_benches::{gallery, wanted};
use sen_store::search::{Kernel, Rows, SimdPath, threads_for, top_k};
use std::time::Duration;

const D: usize = 512;
const SIZES: [(usize, &str); 3] = [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1m")];

/// Sum every value of `buf` on `threads` threads: reads the buffer once, like a scan.
fn read_all(buf: &[f32], threads: usize) -> f32 {
    let per = buf.len().div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = buf
            .chunks(per)
            .map(|c| {
                s.spawn(move || {
                    let mut acc = [0f32; 16];
                    for x in c.chunks_exact(16) {
                        for j in 0..16 {
                            acc[j] += x[j];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

fn search(c: &mut Criterion) {
    let kernel = Kernel::active().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut grp = c.benchmark_group("search");
    grp.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    grp.throughput(Throughput::Elements(1));
    for (n, name) in SIZES {
        let mut threads = vec![threads_for(n, cores)];
        if n == 100_000 {
            threads.insert(0, 1);
        }
        let ids: Vec<String> = threads
            .iter()
            .flat_map(|t| ["f32", "f16"].map(|p| format!("search/{name}-x{D}-{p}-{t}t")))
            .collect();
        if !wanted(&ids) {
            continue;
        }
        let (g, q) = gallery(n, D, 7);
        let g16: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
        for &t in &threads {
            grp.bench_function(format!("{name}-x{D}-f32-{t}t"), |b| {
                b.iter(|| top_k(kernel, &q, Rows::F32(&g), 10, t))
            });
            grp.bench_function(format!("{name}-x{D}-f16-{t}t"), |b| {
                b.iter(|| top_k(kernel, &q, Rows::F16(&g16), 10, t))
            });
        }
        if n == 100_000 {
            // The floor: reading the same bytes (throughput in bytes here).
            grp.throughput(Throughput::Bytes((n * D * 4) as u64));
            for t in [1, cores] {
                grp.bench_function(format!("memory-read-{name}-x{D}-f32-{t}t"), |b| {
                    b.iter(|| read_all(std::hint::black_box(&g), t))
                });
            }
            grp.throughput(Throughput::Elements(1));
        }
    }
    // Every kernel path this CPU runs, one thread, 100k rows (`SEN_SIMD` picks the
    // path of the benches above; these name theirs).
    let paths = SimdPath::available();
    let ids: Vec<String> = paths
        .iter()
        .flat_map(|p| ["f32", "f16"].map(|t| format!("search/simd-{p}-100k-x{D}-{t}-1t")))
        .collect();
    if wanted(&ids) {
        let (g, q) = gallery(100_000, D, 7);
        let g16: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
        for p in paths {
            let k = Kernel::new(p).unwrap();
            grp.bench_function(format!("simd-{p}-100k-x{D}-f32-1t"), |b| {
                b.iter(|| top_k(k, &q, Rows::F32(&g), 10, 1))
            });
            grp.bench_function(format!("simd-{p}-100k-x{D}-f16-1t"), |b| {
                b.iter(|| top_k(k, &q, Rows::F16(&g16), 10, 1))
            });
        }
    }
    grp.finish();

    if wanted(&["index-open/crc32-100k-x512-f32".to_string()]) {
        let (g, _) = gallery(100_000, D, 7);
        let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut grp = c.benchmark_group("index-open");
        grp.sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        grp.throughput(Throughput::Bytes(bytes.len() as u64));
        grp.bench_function("crc32-100k-x512-f32", |b| {
            b.iter(|| crc32fast::hash(std::hint::black_box(&bytes)))
        });
        grp.finish();
    }
}

/// Text in, top-10 gallery rows out, as `sen search` does per query.
fn query_e2e(c: &mut Criterion) {
    let kernel = Kernel::active().unwrap();
    let mut grp = c.benchmark_group("query-e2e");
    grp.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    grp.throughput(Throughput::Elements(1));
    let mut rows: Option<Vec<f32>> = None;
    // "fp32-ctx77": the same weights as a format-1 bundle, which is always fed the
    // whole 77-token context (the before of the dynamic sequence).
    for precision in ["fp32", "int8", "fp32-ctx77"] {
        let id = format!("query-e2e/cpu-{precision}-vit-b16/100k-top10");
        if !wanted(std::slice::from_ref(&id)) {
            continue;
        }
        let dir = match precision {
            "int8" => sen_benches::calibrated("vit-b16"),
            "fp32-ctx77" => sen_benches::exported_format_1("vit-b16"),
            _ => sen_benches::exported("vit-b16", false),
        };
        let enc = sen_runtime::encoders::TextEncoder::load(
            &dir,
            &sen_runtime::providers::ProviderOptions::cpu(),
        )
        .unwrap();
        let d = enc.manifest.model.embed_dim;
        let g = rows.get_or_insert_with(|| gallery(100_000, d, 9).0);
        let threads = threads_for(
            100_000,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        grp.bench_function(format!("cpu-{precision}-vit-b16/100k-top10"), |b| {
            b.iter(|| {
                let q = enc
                    .encode(&["a man in a grey hoodie with a red backpack"])
                    .unwrap();
                top_k(
                    kernel,
                    q.row(0).as_slice().unwrap(),
                    Rows::F32(g),
                    10,
                    threads,
                )
            })
        });
    }
    grp.finish();
}

criterion_group!(benches, search, query_e2e);
criterion_main!(benches);
