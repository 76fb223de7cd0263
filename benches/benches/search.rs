//! Exact top-10 search over a 100k x 512 gallery, one query (issue #6's speed target),
//! with f32 and f16 rows, one thread and every core, next to this machine's memory
//! read bandwidth measured the same way (a multi-threaded sum over a buffer the size
//! of the f32 gallery: the floor for any exact scan). Throughput is in gallery bytes
//! read per second. Compare with faiss: `scripts/reference/faiss_search.py`. Also the
//! CRC-32 check `sen` runs over an index's rows each time it opens one.
//! `cargo bench -p sen-benches --bench search`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use sen_runtime::search::{Rows, top_k};
use std::time::Duration;

const N: usize = 100_000;
const D: usize = 512;

/// Unit rows from a fixed-seed generator (the faiss script uses the same sizes).
fn gallery() -> (Vec<f32>, Vec<f32>) {
    let mut rng = sen_core::rng::Rng::new(7);
    let mut g: Vec<f32> = (0..N * D).map(|_| rng.f32() * 2.0 - 1.0).collect();
    for r in g.chunks_mut(D) {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v /= n);
    }
    let mut q: Vec<f32> = (0..D).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let n = q.iter().map(|v| v * v).sum::<f32>().sqrt();
    q.iter_mut().for_each(|v| *v /= n);
    (g, q)
}

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
    let (g, q) = gallery();
    let g16: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut grp = c.benchmark_group(format!("search-{N}x{D}-top10"));
    grp.sample_size(30).measurement_time(Duration::from_secs(6));
    for threads in [1, cores] {
        grp.throughput(Throughput::Bytes((N * D * 4) as u64));
        grp.bench_function(format!("memory-read-f32-{threads}t"), |b| {
            b.iter(|| read_all(std::hint::black_box(&g), threads))
        });
        grp.bench_function(format!("f32-{threads}t"), |b| {
            b.iter(|| top_k(&q, Rows::F32(&g), 10, threads))
        });
        grp.throughput(Throughput::Bytes((N * D * 2) as u64));
        grp.bench_function(format!("f16-{threads}t"), |b| {
            b.iter(|| top_k(&q, Rows::F16(&g16), 10, threads))
        });
    }
    // What opening an index costs beyond mapping it: the CRC-32 of its rows.
    let bytes: Vec<u8> = g.iter().flat_map(|v| v.to_le_bytes()).collect();
    grp.throughput(Throughput::Bytes(bytes.len() as u64));
    grp.bench_function("index-open-crc32-f32", |b| {
        b.iter(|| crc32fast::hash(std::hint::black_box(&bytes)))
    });
    grp.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
