//! Exact top-k search by inner product over a row-major gallery (f32 or f16 rows).
//!
//! One query scans every row once: the gallery is split into contiguous ranges,
//! one per thread; each thread scores its rows with an AVX2/FMA (+F16C) kernel
//! when the CPU has one (a portable loop the compiler vectorises otherwise) and
//! keeps its own top k. The per-thread lists are merged at the end.
//!
//! Order is total and deterministic: higher score first, equal scores by gallery
//! order (lower row first), as SPEC §7 ranks. Scores are compared as f32 with
//! `total_cmp`; the index refuses non-finite embeddings, so no NaN reaches here.

use half::f16;

/// The rows of a gallery, borrowed (from a memory map or a vector).
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Rows<'_> {
    pub fn len_values(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
        }
    }
}

/// One search result: gallery row and its inner product with the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

/// `a` ranks before `b`: higher score, then lower row.
#[inline]
fn before(a: &Hit, b: &Hit) -> bool {
    match a.score.total_cmp(&b.score) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => a.row < b.row,
    }
}

/// The best `k` hits seen so far, kept sorted (k is small: a sorted insert beats a heap).
struct TopK {
    k: usize,
    hits: Vec<Hit>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            hits: Vec::with_capacity(k + 1),
        }
    }

    /// Rows arrive in increasing order within one thread, so a score equal to the
    /// current k-th never displaces it (the earlier row wins the tie).
    #[inline]
    fn threshold(&self) -> f32 {
        if self.hits.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.hits[self.k - 1].score
        }
    }

    #[inline]
    fn push(&mut self, h: Hit) {
        if self.hits.len() == self.k && !before(&h, &self.hits[self.k - 1]) {
            return;
        }
        let pos = self.hits.partition_point(|x| before(x, &h));
        self.hits.insert(pos, h);
        self.hits.truncate(self.k);
    }
}

/// Threads a search of `rows` rows should use: one per 16k rows, at most `max`.
/// (Below that, starting threads costs more than the scan.)
pub fn threads_for(rows: usize, max: usize) -> usize {
    rows.div_ceil(16_384).clamp(1, max.max(1))
}

/// Exact top-`k` rows of `gallery` (`n` rows of `query.len()` values) by inner
/// product with `query`, best first. `k` larger than the gallery returns every row.
pub fn top_k(query: &[f32], gallery: Rows<'_>, k: usize, threads: usize) -> Vec<Hit> {
    let d = query.len();
    assert!(d > 0, "empty query");
    assert_eq!(gallery.len_values() % d, 0, "gallery is not n x {d}");
    let n = gallery.len_values() / d;
    let k = k.min(n);
    if k == 0 {
        return vec![];
    }
    let threads = threads.clamp(1, n);
    if threads == 1 {
        let mut t = TopK::new(k);
        scan(query, gallery, 0, n, &mut t);
        return t.hits;
    }
    let per = n.div_ceil(threads);
    let parts: Vec<Vec<Hit>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (lo, hi) = (i * per, ((i + 1) * per).min(n));
                s.spawn(move || {
                    let mut t = TopK::new(k);
                    if lo < hi {
                        scan(query, gallery, lo, hi, &mut t);
                    }
                    t.hits
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("search thread panicked"))
            .collect()
    });
    let mut all: Vec<Hit> = parts.into_iter().flatten().collect();
    all.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.row.cmp(&b.row)));
    all.truncate(k);
    all
}

/// Score rows `lo..hi` into `top`, in blocks so the kernel runs without branches.
fn scan(query: &[f32], gallery: Rows<'_>, lo: usize, hi: usize, top: &mut TopK) {
    const BLOCK: usize = 256;
    let d = query.len();
    let mut scores = [0f32; BLOCK];
    let mut start = lo;
    while start < hi {
        let end = (start + BLOCK).min(hi);
        let out = &mut scores[..end - start];
        match gallery {
            Rows::F32(g) => dots_f32(query, &g[start * d..end * d], out),
            Rows::F16(g) => dots_f16(query, &g[start * d..end * d], out),
        }
        let mut thr = top.threshold();
        for (i, &s) in out.iter().enumerate() {
            if s > thr {
                top.push(Hit {
                    row: start + i,
                    score: s,
                });
                thr = top.threshold();
            }
        }
        start = end;
    }
}

/// `out[i] = <query, rows[i]>` for f32 rows.
pub fn dots_f32(query: &[f32], rows: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if query.len().is_multiple_of(8)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has AVX2 and FMA (checked above); lengths are checked inside.
        unsafe { x86::dots_f32(query, rows, out) };
        return;
    }
    dots_f32_portable(query, rows, out)
}

/// `out[i] = <query, rows[i]>` for f16 rows (accumulated in f32).
pub fn dots_f16(query: &[f32], rows: &[f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if query.len().is_multiple_of(8)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        unsafe { x86::dots_f16(query, rows, out) };
        return;
    }
    dots_f16_portable(query, rows, out)
}

/// Eight independent partial sums so the compiler can vectorise (NEON on aarch64).
pub fn dots_f32_portable(query: &[f32], rows: &[f32], out: &mut [f32]) {
    let d = query.len();
    assert_eq!(rows.len(), out.len() * d);
    for (row, o) in rows.chunks_exact(d).zip(out.iter_mut()) {
        let mut acc = [0f32; 8];
        let (qc, qr) = query.split_at(d - d % 8);
        let (rc, rr) = row.split_at(d - d % 8);
        for (q8, r8) in qc.chunks_exact(8).zip(rc.chunks_exact(8)) {
            for j in 0..8 {
                acc[j] = q8[j].mul_add(r8[j], acc[j]);
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for (q, r) in qr.iter().zip(rr) {
            s += q * r;
        }
        *o = s;
    }
}

pub fn dots_f16_portable(query: &[f32], rows: &[f16], out: &mut [f32]) {
    let d = query.len();
    assert_eq!(rows.len(), out.len() * d);
    for (row, o) in rows.chunks_exact(d).zip(out.iter_mut()) {
        let mut acc = [0f32; 8];
        let (qc, qr) = query.split_at(d - d % 8);
        let (rc, rr) = row.split_at(d - d % 8);
        for (q8, r8) in qc.chunks_exact(8).zip(rc.chunks_exact(8)) {
            for j in 0..8 {
                acc[j] = q8[j].mul_add(r8[j].to_f32(), acc[j]);
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for (q, r) in qr.iter().zip(rr) {
            s += q * r.to_f32();
        }
        *o = s;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Four accumulators per row (latency of FMA x 4 lanes in flight), two rows at a time.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots_f32(query: &[f32], rows: &[f32], out: &mut [f32]) {
        let d = query.len();
        assert!(d.is_multiple_of(8) && rows.len() == out.len() * d);
        let q = query.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i + 2 <= n {
            // SAFETY: row i and i+1 are within `rows` (len == n * d), offsets < d.
            unsafe {
                let r0 = rows.as_ptr().add(i * d);
                let r1 = r0.add(d);
                let (mut a0, mut a1, mut b0, mut b1) = (
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                );
                let mut j = 0;
                while j + 16 <= d {
                    let q0 = _mm256_loadu_ps(q.add(j));
                    let q1 = _mm256_loadu_ps(q.add(j + 8));
                    a0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r0.add(j)), a0);
                    a1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r0.add(j + 8)), a1);
                    b0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r1.add(j)), b0);
                    b1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r1.add(j + 8)), b1);
                    j += 16;
                }
                if j < d {
                    let q0 = _mm256_loadu_ps(q.add(j));
                    a0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r0.add(j)), a0);
                    b0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r1.add(j)), b0);
                }
                out[i] = hsum(_mm256_add_ps(a0, a1));
                out[i + 1] = hsum(_mm256_add_ps(b0, b1));
            }
            i += 2;
        }
        if i < n {
            // SAFETY: as above, for the last row.
            unsafe {
                let r0 = rows.as_ptr().add(i * d);
                let mut a0 = _mm256_setzero_ps();
                let mut j = 0;
                while j < d {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), _mm256_loadu_ps(r0.add(j)), a0);
                    j += 8;
                }
                out[i] = hsum(a0);
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots_f16(query: &[f32], rows: &[f16], out: &mut [f32]) {
        let d = query.len();
        assert!(d.is_multiple_of(8) && rows.len() == out.len() * d);
        let q = query.as_ptr();
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: row i is within `rows`; each load reads 8 halves (16 bytes) below d.
            unsafe {
                let r = rows.as_ptr().add(i * d) as *const __m128i;
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut j = 0;
                while j + 16 <= d {
                    let h0 = _mm256_cvtph_ps(_mm_loadu_si128(r.add(j / 8)));
                    let h1 = _mm256_cvtph_ps(_mm_loadu_si128(r.add(j / 8 + 1)));
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), h0, a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j + 8)), h1, a1);
                    j += 16;
                }
                if j < d {
                    let h0 = _mm256_cvtph_ps(_mm_loadu_si128(r.add(j / 8)));
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), h0, a0);
                }
                *o = hsum(_mm256_add_ps(a0, a1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Reference: score every row in f64, sort by (score desc, row asc).
    fn brute(query: &[f32], g: &[f32], k: usize) -> Vec<usize> {
        let d = query.len();
        let mut s: Vec<(f64, usize)> = g
            .chunks(d)
            .enumerate()
            .map(|(i, r)| {
                (
                    r.iter()
                        .zip(query)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum(),
                    i,
                )
            })
            .collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        s.into_iter().take(k).map(|x| x.1).collect()
    }

    #[test]
    fn kernels_agree_with_f64_dot_products() {
        let mut seed = 3;
        for d in [8, 24, 512, 13] {
            let q: Vec<f32> = (0..d).map(|_| lcg(&mut seed)).collect();
            let g: Vec<f32> = (0..5 * d).map(|_| lcg(&mut seed)).collect();
            let mut fast = [0f32; 5];
            let mut port = [0f32; 5];
            dots_f32(&q, &g, &mut fast);
            dots_f32_portable(&q, &g, &mut port);
            let gh: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
            let mut fh = [0f32; 5];
            let mut ph = [0f32; 5];
            dots_f16(&q, &gh, &mut fh);
            dots_f16_portable(&q, &gh, &mut ph);
            for (i, r) in g.chunks(d).enumerate() {
                let exact: f64 = r.iter().zip(&q).map(|(a, b)| *a as f64 * *b as f64).sum();
                let exact_h: f64 = gh[i * d..(i + 1) * d]
                    .iter()
                    .zip(&q)
                    .map(|(a, b)| a.to_f64() * *b as f64)
                    .sum();
                let tol = 1e-5 * d as f64;
                for (got, want) in [
                    (fast[i], exact),
                    (port[i], exact),
                    (fh[i], exact_h),
                    (ph[i], exact_h),
                ] {
                    assert!(
                        (got as f64 - want).abs() < tol,
                        "d {d} row {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn top_k_equals_brute_force_for_any_thread_count() {
        let mut seed = 11;
        let d = 16;
        let n = 1000;
        let q: Vec<f32> = (0..d).map(|_| lcg(&mut seed)).collect();
        let g: Vec<f32> = (0..n * d).map(|_| lcg(&mut seed)).collect();
        let want = brute(&q, &g, 10);
        for threads in [1, 2, 3, 7] {
            let got: Vec<usize> = top_k(&q, Rows::F32(&g), 10, threads)
                .iter()
                .map(|h| h.row)
                .collect();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn ties_go_to_the_earlier_row_across_threads() {
        // Rows 0..100 all identical except row 60 is best and rows 10 and 90 tie second.
        let d = 8;
        let mut g = vec![0.1f32; 100 * d];
        for j in 0..d {
            g[60 * d + j] = 1.0;
            g[10 * d + j] = 0.5;
            g[90 * d + j] = 0.5;
        }
        let q = vec![1.0f32; d];
        for threads in [1, 2, 4] {
            let rows: Vec<usize> = top_k(&q, Rows::F32(&g), 5, threads)
                .iter()
                .map(|h| h.row)
                .collect();
            assert_eq!(rows, vec![60, 10, 90, 0, 1], "{threads} threads");
        }
    }

    #[test]
    fn k_larger_than_gallery_returns_all_rows() {
        let g = vec![0.5f32, 0.0, 0.0, 1.0, 1.0, 0.0];
        let hits = top_k(&[1.0, 0.0], Rows::F32(&g), 10, 2);
        assert_eq!(
            hits.iter().map(|h| h.row).collect::<Vec<_>>(),
            vec![2, 0, 1]
        );
        assert_eq!(hits[0].score, 1.0);
    }

    #[test]
    fn f16_rows_rank_like_f32_rows() {
        let mut seed = 5;
        let d = 32;
        let q: Vec<f32> = (0..d).map(|_| lcg(&mut seed)).collect();
        let g: Vec<f32> = (0..300 * d).map(|_| lcg(&mut seed)).collect();
        let gh: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
        let a = top_k(&q, Rows::F32(&g), 3, 2);
        let b = top_k(&q, Rows::F16(&gh), 3, 2);
        // Random rows are far apart at the top: f16 rounding does not reorder them.
        assert_eq!(
            a.iter().map(|h| h.row).collect::<Vec<_>>(),
            b.iter().map(|h| h.row).collect::<Vec<_>>()
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x.score - y.score).abs() < 1e-2);
        }
    }
}
