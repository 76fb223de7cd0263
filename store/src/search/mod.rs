//! Exact top-k search by inner product over a row-major gallery (f32 or f16 rows).
//!
//! One query scans every row once: the gallery is split into contiguous ranges,
//! one per thread; each thread scores its rows with the [`simd`] kernels of the
//! CPU's class (AVX-512, AVX2, AVX + FMA, or portable; `SEN_SIMD` forces one) and
//! keeps its own top k. The per-thread lists are merged at the end.
//!
//! Order is total and deterministic: higher score first, equal scores by gallery
//! order (lower row first), as SPEC §7 ranks. Scores are compared as f32 with
//! `total_cmp`. Stores and indexes refuse non-finite embeddings at write, but a damaged
//! file can still hold one: a row that scores NaN is never dropped silently, it ranks
//! first with the score NaN (positive, whatever the arithmetic produced), and the
//! caller reports it as damaged.

use half::f16;

pub mod simd;
pub use simd::{Kernel, SimdError, SimdPath};

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

/// The rows a query may return.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RowFilter {
    /// Every row.
    #[default]
    All,
    /// Row `i` is allowed when bit `i % 64` of word `i / 64` is set (rows past the
    /// bitmap are not).
    Bitmap(Vec<u64>),
    /// Allowed rows as sorted, disjoint, half-open ranges ([`RowFilter::ranges`]).
    Ranges(Vec<std::ops::Range<usize>>),
}

impl RowFilter {
    /// A ranges filter from any ranges: sorted, empty ones dropped, overlaps merged.
    pub fn ranges(mut r: Vec<std::ops::Range<usize>>) -> RowFilter {
        r.retain(|x| x.start < x.end);
        r.sort_by_key(|x| x.start);
        let mut out: Vec<std::ops::Range<usize>> = Vec::with_capacity(r.len());
        for x in r {
            match out.last_mut() {
                Some(last) if x.start <= last.end => last.end = last.end.max(x.end),
                _ => out.push(x),
            }
        }
        RowFilter::Ranges(out)
    }

    /// A bitmap filter over `n` rows from the allowed row numbers.
    pub fn from_rows(n: usize, rows: impl IntoIterator<Item = usize>) -> RowFilter {
        let mut words = vec![0u64; n.div_ceil(64)];
        for r in rows {
            if r < n {
                words[r / 64] |= 1 << (r % 64);
            }
        }
        RowFilter::Bitmap(words)
    }

    #[inline]
    pub fn allows(&self, row: usize) -> bool {
        match self {
            RowFilter::All => true,
            RowFilter::Bitmap(w) => w.get(row / 64).is_some_and(|x| x >> (row % 64) & 1 == 1),
            RowFilter::Ranges(r) => {
                let i = r.partition_point(|x| x.end <= row);
                r.get(i).is_some_and(|x| x.start <= row)
            }
        }
    }

    /// Whether any row of `lo..hi` is allowed.
    pub fn any_in(&self, lo: usize, hi: usize) -> bool {
        if lo >= hi {
            return false;
        }
        match self {
            RowFilter::All => true,
            RowFilter::Bitmap(w) => {
                let (a, b) = (lo / 64, (hi - 1) / 64);
                (a..=b.min(w.len().saturating_sub(1))).any(|i| {
                    let mut x = w[i];
                    if i == a {
                        x &= !0u64 << (lo % 64);
                    }
                    if i == b && !hi.is_multiple_of(64) {
                        x &= !0u64 >> (64 - hi % 64);
                    }
                    x != 0
                })
            }
            RowFilter::Ranges(r) => {
                let i = r.partition_point(|x| x.end <= lo);
                r.get(i).is_some_and(|x| x.start < hi)
            }
        }
    }

    /// Boundaries `0 = b[0] <= .. <= b[t] = n` splitting the first `n` rows into `t`
    /// ranges (`threads` clamped to 1..=n) with about as many allowed rows each: a
    /// filter's rows may all sit in one end of the gallery (a time range), and an even
    /// split by rows would leave one thread with all the work. Bitmap boundaries fall
    /// on multiples of 64.
    pub fn balanced_bounds(&self, n: usize, threads: usize) -> Vec<usize> {
        let t = threads.clamp(1, n.max(1));
        let even = |i: usize| (i * n.div_ceil(t)).min(n);
        let mut b: Vec<usize> = match self {
            RowFilter::All => (0..=t).map(even).collect(),
            _ if t == 1 => vec![0, n],
            RowFilter::Bitmap(w) => {
                let total = self.count(n);
                let mut out = vec![0];
                let mut seen = 0;
                for (i, x) in w.iter().enumerate().take(n.div_ceil(64)) {
                    seen += x.count_ones() as usize;
                    while out.len() < t && seen * t >= total * out.len() && total > 0 {
                        out.push(((i + 1) * 64).min(n));
                    }
                }
                out
            }
            RowFilter::Ranges(r) => {
                let total = self.count(n);
                let mut out = vec![0];
                let mut seen = 0;
                for x in r {
                    let (a, e) = (x.start.min(n), x.end.min(n));
                    let mut at = a;
                    while at < e && out.len() < t {
                        // Rows of this range still needed to reach the next boundary.
                        let want = (total * out.len()).div_ceil(t).saturating_sub(seen);
                        if want > e - at {
                            break;
                        }
                        at += want.max(1);
                        seen += want.max(1);
                        out.push(at);
                    }
                    seen += e - at;
                }
                out
            }
        };
        while b.len() < t + 1 {
            b.push(n);
        }
        b[t] = n;
        b
    }

    /// Number of allowed rows among the first `n`.
    pub fn count(&self, n: usize) -> usize {
        match self {
            RowFilter::All => n,
            RowFilter::Bitmap(w) => (0..n.div_ceil(64).min(w.len()))
                .map(|i| {
                    let mut x = w[i];
                    if (i + 1) * 64 > n {
                        x &= !0u64 >> (64 - (n - i * 64));
                    }
                    x.count_ones() as usize
                })
                .sum(),
            RowFilter::Ranges(r) => r
                .iter()
                .map(|x| x.end.min(n).saturating_sub(x.start.min(n)))
                .sum(),
        }
    }
}

/// The rows a search scans: one or more consecutive parts (a store's segments; one
/// part for an index file), numbered together from 0 in order.
#[derive(Clone)]
pub struct Gallery<'a> {
    parts: Vec<Rows<'a>>,
    /// Global number of each part's first row, and the total at the end.
    starts: Vec<usize>,
    dim: usize,
}

impl<'a> Gallery<'a> {
    /// Parts of `dim`-value rows, in order.
    pub fn new(dim: usize, parts: Vec<Rows<'a>>) -> Self {
        assert!(dim > 0, "rows of 0 values");
        let mut starts = Vec::with_capacity(parts.len() + 1);
        let mut n = 0;
        for p in &parts {
            assert_eq!(p.len_values() % dim, 0, "a part is not n x {dim}");
            starts.push(n);
            n += p.len_values() / dim;
        }
        starts.push(n);
        Gallery { parts, starts, dim }
    }

    pub fn single(dim: usize, rows: Rows<'a>) -> Self {
        Self::new(dim, vec![rows])
    }

    pub fn len(&self) -> usize {
        *self.starts.last().expect("starts has the total")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows `lo..hi` as pieces that do not cross parts: (first global row, rows).
    fn pieces(&self, lo: usize, hi: usize) -> Vec<(usize, Rows<'a>)> {
        let d = self.dim;
        let mut out = vec![];
        for (k, part) in self.parts.iter().enumerate() {
            let (a, b) = (self.starts[k].max(lo), self.starts[k + 1].min(hi));
            if a >= b {
                continue;
            }
            let (x, y) = ((a - self.starts[k]) * d, (b - self.starts[k]) * d);
            out.push((
                a,
                match part {
                    Rows::F32(v) => Rows::F32(&v[x..y]),
                    Rows::F16(v) => Rows::F16(&v[x..y]),
                },
            ));
        }
        out
    }
}

/// Exact top-`k` rows of `gallery` (`n` rows of `query.len()` values) by inner
/// product with `query`, best first. `k` larger than the gallery returns every row.
pub fn top_k(
    kernel: Kernel,
    query: &[f32],
    gallery: Rows<'_>,
    k: usize,
    threads: usize,
) -> Vec<Hit> {
    top_k_filtered(kernel, query, gallery, k, threads, &RowFilter::All)
}

/// [`top_k`] among the rows `filter` allows.
pub fn top_k_filtered(
    kernel: Kernel,
    query: &[f32],
    gallery: Rows<'_>,
    k: usize,
    threads: usize,
    filter: &RowFilter,
) -> Vec<Hit> {
    assert!(!query.is_empty(), "empty query");
    top_k_gallery(
        kernel,
        query,
        &Gallery::single(query.len(), gallery),
        k,
        threads,
        filter,
    )
}

fn top_k_gallery(
    kernel: Kernel,
    query: &[f32],
    gallery: &Gallery<'_>,
    k: usize,
    threads: usize,
    filter: &RowFilter,
) -> Vec<Hit> {
    assert_eq!(query.len(), gallery.dim, "query of the wrong dimension");
    let n = gallery.len();
    let k = k.min(n);
    if k == 0 {
        return vec![];
    }
    let parts = run_split(&filter.balanced_bounds(n, threads), |lo, hi| {
        let mut t = TopK::new(k);
        for (start, rows) in gallery.pieces(lo, hi) {
            scan(kernel, query, rows, start, filter, &mut t);
        }
        vec![t.hits]
    });
    merge(parts, 1, k).pop().expect("one query")
}

/// Run `f(lo, hi)` over contiguous row ranges, one per thread (at most one per row).
fn split_rows<T: Send>(n: usize, threads: usize, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    run_split(&RowFilter::All.balanced_bounds(n, threads), f)
}

/// Run `f(bounds[i], bounds[i + 1])` for each range, one thread each.
fn run_split<T: Send>(bounds: &[usize], f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    if bounds.len() <= 2 {
        return vec![f(bounds[0], *bounds.last().expect("bounds"))];
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = bounds
            .windows(2)
            .map(|w| {
                let (lo, hi) = (w[0], w[1]);
                s.spawn(move || f(lo, hi))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("search thread panicked"))
            .collect()
    })
}

/// Merge per-thread lists (each `queries` lists of hits) into each query's best `k`.
fn merge(parts: Vec<Vec<Vec<Hit>>>, queries: usize, k: usize) -> Vec<Vec<Hit>> {
    let mut out: Vec<Vec<Hit>> = vec![vec![]; queries];
    for part in parts {
        for (o, hits) in out.iter_mut().zip(part) {
            o.extend(hits);
        }
    }
    for o in &mut out {
        o.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.row.cmp(&b.row)));
        o.truncate(k);
    }
    out
}

/// Score the rows of `rows` (global rows `start..`) that `filter` allows into `top`,
/// in blocks so the kernel runs without branches. Blocks with no allowed row are
/// skipped; in a block where few rows are allowed only those are scored (a selective
/// filter reads only its rows).
fn scan(
    kernel: Kernel,
    query: &[f32],
    rows: Rows<'_>,
    start: usize,
    filter: &RowFilter,
    top: &mut TopK,
) {
    const BLOCK: usize = 256;
    let d = query.len();
    let n = rows.len_values() / d;
    let mut scores = [0f32; BLOCK];
    // Scores of local rows a..b into `out`.
    let score_rows = |a: usize, b: usize, out: &mut [f32]| match rows {
        Rows::F32(g) => kernel.dots_f32(query, &g[a * d..b * d], out),
        Rows::F16(g) => kernel.dots_f16(query, &g[a * d..b * d], out),
    };
    let all = matches!(filter, RowFilter::All);
    let mut lo = 0;
    while lo < n {
        let hi = (lo + BLOCK).min(n);
        let (glo, ghi) = (start + lo, start + hi);
        if !all && !filter.any_in(glo, ghi) {
            lo = hi;
            continue;
        }
        let allowed = if all {
            hi - lo
        } else {
            (glo..ghi).filter(|&r| filter.allows(r)).count()
        };
        if allowed * 4 >= hi - lo {
            // Mostly allowed: score the whole block, check the filter on candidates.
            let out = &mut scores[..hi - lo];
            score_rows(lo, hi, out);
            let mut thr = top.threshold();
            for (i, &s) in out.iter().enumerate() {
                // `!(s <= thr)`: above the threshold, or NaN (one unordered compare).
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                let keep = !(s <= thr);
                if keep && (all || filter.allows(glo + i)) {
                    top.push(Hit {
                        row: glo + i,
                        score: nan_first(s),
                    });
                    thr = top.threshold();
                }
            }
        } else {
            // Few allowed: score runs of allowed rows only, fetching the next run's
            // rows from memory while this one is scored (a selective filter's rows are
            // scattered, so the hardware prefetcher does not see them coming).
            let mut runs = [(0usize, 0usize); BLOCK];
            let mut nr = 0;
            let mut r = lo;
            while r < hi {
                if !filter.allows(start + r) {
                    r += 1;
                    continue;
                }
                let mut e = r + 1;
                while e < hi && filter.allows(start + e) {
                    e += 1;
                }
                runs[nr] = (r, e);
                nr += 1;
                r = e;
            }
            for (j, &(r, e)) in runs[..nr].iter().enumerate() {
                if let Some(&(nr0, ne)) = runs[..nr].get(j + 1) {
                    prefetch(rows, nr0 * d, (ne - nr0).min(2) * d);
                }
                let out = &mut scores[..e - r];
                score_rows(r, e, out);
                for (i, &s) in out.iter().enumerate() {
                    // Above the threshold, or NaN (see above).
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    let keep = !(s <= top.threshold());
                    if keep {
                        top.push(Hit {
                            row: start + r + i,
                            score: nan_first(s),
                        });
                    }
                }
            }
        }
        lo = hi;
    }
}

/// A score as ranked: NaN as the positive NaN, which `total_cmp` puts above every
/// number (x86's default NaN has its sign bit set and would sort last).
#[inline]
fn nan_first(s: f32) -> f32 {
    if s.is_nan() { f32::NAN } else { s }
}

/// Ask the CPU to bring `len` values of `rows` from `at` into cache (x86-64; a
/// no-op elsewhere, where the prefetch hint is not a stable intrinsic).
#[inline]
fn prefetch(rows: Rows<'_>, at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let (p, bytes) = match rows {
            Rows::F32(g) => (g[at..at + len].as_ptr().cast::<i8>(), len * 4),
            Rows::F16(g) => (g[at..at + len].as_ptr().cast::<i8>(), len * 2),
        };
        for off in (0..bytes).step_by(64) {
            // SAFETY: `off < bytes`, so the address lies inside the slice; a prefetch
            // never faults and changes nothing but the cache.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off))
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, at, len);
}

/// One query of a batch: its vector, how many hits, and which rows it may return.
#[derive(Debug, Clone, Copy)]
pub struct BatchQuery<'a> {
    pub vector: &'a [f32],
    pub k: usize,
    pub filter: &'a RowFilter,
}

/// Below this many queries a batch is searched one query at a time (the scan is
/// memory-bound and the batched kernel's padding would cost more than it saves).
pub const BATCH_MIN_QUERIES: usize = 4;

/// Exact top-k of many queries against one set of rows; see [`search_gallery`].
pub fn search_batch(
    kernel: Kernel,
    queries: &[BatchQuery<'_>],
    gallery: Rows<'_>,
    threads: usize,
) -> Vec<Vec<Hit>> {
    let Some(first) = queries.first() else {
        return vec![];
    };
    assert!(!first.vector.is_empty(), "empty query");
    search_gallery(
        kernel,
        queries,
        &Gallery::single(first.vector.len(), gallery),
        threads,
    )
}

/// Exact top-k of many queries against a gallery, each with its own `k` and filter:
/// a blocked matrix product (the [`Kernel::tile_f32`] micro-kernel over tiles of rows
/// and the transposed queries) feeding per-query top-k lists. The same ranking as
/// [`top_k_filtered`] one query at a time (SPEC §11: scores may differ in the last
/// bits, so rows within 1e-5 may swap). Returns one list per query, in order; hit
/// rows are the gallery's global row numbers.
pub fn search_gallery(
    kernel: Kernel,
    queries: &[BatchQuery<'_>],
    gallery: &Gallery<'_>,
    threads: usize,
) -> Vec<Vec<Hit>> {
    if queries.is_empty() {
        return vec![];
    }
    let d = gallery.dim;
    assert!(
        queries.iter().all(|q| q.vector.len() == d),
        "queries of another dimension than the gallery's"
    );
    let n = gallery.len();
    if queries.len() < BATCH_MIN_QUERIES {
        return queries
            .iter()
            .map(|q| top_k_gallery(kernel, q.vector, gallery, q.k, threads, q.filter))
            .collect();
    }
    let nq = queries.len();
    let ks: Vec<usize> = queries.iter().map(|q| q.k.min(n)).collect();
    let kmax = ks.iter().copied().max().unwrap_or(0);
    if kmax == 0 {
        return vec![vec![]; nq];
    }
    let qb = kernel.query_block();
    let qpad = nq.div_ceil(qb) * qb;
    // Queries transposed: qt[j * qpad + q] = query q's value j (padding columns 0).
    let mut qt = vec![0f32; d * qpad];
    for (q, query) in queries.iter().enumerate() {
        for (j, &v) in query.vector.iter().enumerate() {
            qt[j * qpad + q] = v;
        }
    }
    let all_unfiltered = queries.iter().all(|q| matches!(q.filter, RowFilter::All));
    let parts = split_rows(n, threads, |lo, hi| {
        let tr = kernel.tile_rows();
        let mut tops: Vec<TopK> = ks.iter().map(|&k| TopK::new(k.max(1))).collect();
        // A query with k = 0 never takes a row; padding columns never do either.
        let mut thr = vec![f32::INFINITY; qpad];
        for (q, t) in tops.iter().enumerate() {
            if ks[q] > 0 {
                thr[q] = t.threshold();
            }
        }
        let mut tile_rows = vec![0f32; tr * d];
        let mut scores = vec![0f32; tr * qpad];
        let mut active = vec![true; nq];
        const BLOCK: usize = 256;
        for (start, rows) in gallery.pieces(lo, hi) {
            let m = rows.len_values() / d;
            let mut b0 = 0;
            while b0 < m {
                let b1 = (b0 + BLOCK).min(m);
                if !all_unfiltered {
                    for (a, q) in active.iter_mut().zip(queries) {
                        *a = q.filter.any_in(start + b0, start + b1);
                    }
                    if !active.iter().any(|&a| a) {
                        b0 = b1;
                        continue;
                    }
                }
                let mut t0 = b0;
                while t0 < b1 {
                    let t1 = (t0 + tr).min(b1);
                    let here = t1 - t0;
                    let tile: &[f32] = match rows {
                        Rows::F32(g) if here == tr => &g[t0 * d..t1 * d],
                        Rows::F32(g) => {
                            tile_rows[..here * d].copy_from_slice(&g[t0 * d..t1 * d]);
                            tile_rows[here * d..].fill(0.0);
                            &tile_rows
                        }
                        Rows::F16(g) => {
                            kernel.halves_to_f32(&g[t0 * d..t1 * d], &mut tile_rows[..here * d]);
                            tile_rows[here * d..].fill(0.0);
                            &tile_rows
                        }
                    };
                    kernel.tile_f32(tile, &qt, qpad, &mut scores);
                    for r in 0..here {
                        let row = start + t0 + r;
                        let s = &scores[r * qpad..(r + 1) * qpad];
                        for c in (0..qpad).step_by(16) {
                            let w = 16.min(qpad - c);
                            let (sc, tc) = (&s[c..c + w], &thr[c..c + w]);
                            if !sc.iter().zip(tc).any(|(a, b)| a > b) {
                                continue;
                            }
                            for (j, &v) in sc.iter().enumerate() {
                                let q = c + j;
                                if v > thr[q] && active[q] && queries[q].filter.allows(row) {
                                    tops[q].push(Hit { row, score: v });
                                    thr[q] = tops[q].threshold();
                                }
                            }
                        }
                    }
                    t0 = t1;
                }
                b0 = b1;
            }
        }
        tops.into_iter()
            .zip(&ks)
            .map(|(t, &k)| if k == 0 { vec![] } else { t.hits })
            .collect::<Vec<_>>()
    });
    let mut out = merge(parts, nq, kmax);
    for (o, &k) in out.iter_mut().zip(&ks) {
        o.truncate(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> Kernel {
        Kernel::new(SimdPath::best()).unwrap()
    }

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
    fn top_k_equals_brute_force_on_every_path_and_thread_count() {
        let mut seed = 11;
        let n = 1000;
        for d in [16, 20] {
            let q: Vec<f32> = (0..d).map(|_| lcg(&mut seed)).collect();
            let g: Vec<f32> = (0..n * d).map(|_| lcg(&mut seed)).collect();
            let gh: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
            let want = brute(&q, &g, 10);
            let want_h = brute(&q, &gh.iter().map(|h| h.to_f32()).collect::<Vec<_>>(), 10);
            for path in SimdPath::available() {
                let kern = Kernel::new(path).unwrap();
                for threads in [1, 2, 3, 7] {
                    let rows = |hits: Vec<Hit>| hits.iter().map(|h| h.row).collect::<Vec<_>>();
                    let got = rows(top_k(kern, &q, Rows::F32(&g), 10, threads));
                    assert_eq!(got, want, "{path} f32 d {d}, {threads} threads");
                    let got = rows(top_k(kern, &q, Rows::F16(&gh), 10, threads));
                    assert_eq!(got, want_h, "{path} f16 d {d}, {threads} threads");
                }
            }
        }
    }

    /// Brute force over the allowed rows, f64, (score desc, row asc).
    fn brute_filtered(query: &[f32], g: &[f32], k: usize, f: &RowFilter) -> Vec<(f64, usize)> {
        let d = query.len();
        let mut s: Vec<(f64, usize)> = g
            .chunks(d)
            .enumerate()
            .filter(|(i, _)| f.allows(*i))
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
        s.truncate(k);
        s
    }

    /// SPEC §11's "same ranking": ids agree position by position, except that items
    /// whose scores differ by at most 1e-5 may appear in either order.
    fn assert_same_ranking(got: &[Hit], want: &[(f64, usize)], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (h, w)) in got.iter().zip(want).enumerate() {
            if h.row != w.1 {
                // Allowed only if the two items tie within 1e-5 of each other.
                let other = want.iter().find(|x| x.1 == h.row);
                assert!(
                    other.is_some_and(|o| (o.0 - w.0).abs() <= 1e-5),
                    "{what}: position {i}: row {} vs {}",
                    h.row,
                    w.1
                );
            }
            assert!(
                (h.score as f64 - w.0).abs() < 1e-4,
                "{what}: score {} vs {}",
                h.score,
                w.0
            );
        }
    }

    #[test]
    fn balanced_bounds_share_the_allowed_rows() {
        let n = 10_000;
        // A time-like filter: every allowed row in the last tenth.
        let tail = RowFilter::ranges(std::iter::once(9_000..10_000).collect());
        let bits = RowFilter::from_rows(n, 9_000..10_000);
        let sparse = RowFilter::from_rows(n, (0..n).filter(|r| r % 10 == 3));
        for f in [&tail, &bits, &sparse, &RowFilter::All] {
            for t in [1, 2, 3, 8] {
                let b = f.balanced_bounds(n, t);
                assert_eq!((b.len(), b[0], b[t]), (t + 1, 0, n), "{f:?} {t}");
                assert!(b.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
                // Each range holds its share of the allowed rows, to within a word.
                let total = f.count(n);
                for w in b.windows(2) {
                    let got = f.count(w[1]) - f.count(w[0]);
                    assert!(
                        got.abs_diff(total / t) <= 64 + t,
                        "{t} threads, {w:?}: {got} of {total}"
                    );
                }
            }
        }
        assert_eq!(RowFilter::from_rows(n, []).balanced_bounds(n, 2)[2], n);
        assert_eq!(RowFilter::All.balanced_bounds(3, 8), vec![0, 1, 2, 3]);
    }

    #[test]
    fn row_filters_answer_membership_and_ranges() {
        let b = RowFilter::from_rows(200, [0, 63, 64, 130, 199, 500]);
        assert!(b.allows(63) && b.allows(64) && !b.allows(65) && !b.allows(500));
        assert_eq!(b.count(200), 5);
        assert_eq!(b.count(64), 2);
        assert!(b.any_in(60, 64) && !b.any_in(65, 130) && b.any_in(65, 131) && !b.any_in(131, 199));
        assert!(!b.any_in(5, 5) && b.any_in(199, 400) && !b.any_in(200, 400));
        let r = RowFilter::ranges(vec![10..20, 0..0, 15..30, 40..41]);
        assert_eq!(r, RowFilter::Ranges(vec![10..30, 40..41]));
        assert!(r.allows(10) && r.allows(29) && !r.allows(30) && r.allows(40) && !r.allows(41));
        assert!(r.any_in(0, 11) && !r.any_in(30, 40) && r.any_in(35, 45));
        assert_eq!(r.count(100), 21);
        assert_eq!(r.count(15), 5);
        assert!(RowFilter::All.any_in(0, 1) && RowFilter::All.count(7) == 7);
    }

    #[test]
    fn filtered_and_batched_search_equal_brute_force_on_every_path() {
        let mut seed = 21;
        let n = 1500;
        for d in [16, 37] {
            let g: Vec<f32> = (0..n * d).map(|_| lcg(&mut seed)).collect();
            let gh: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
            let ghf: Vec<f32> = gh.iter().map(|h| h.to_f32()).collect();
            let filters = [
                RowFilter::All,
                // Sparse (the few-allowed path) and dense bitmaps, and ranges.
                RowFilter::from_rows(n, (0..n).filter(|i| i % 37 == 5)),
                RowFilter::from_rows(n, (0..n).filter(|i| i % 3 != 0)),
                RowFilter::ranges(vec![100..300, 900..905, 1400..2000]),
                RowFilter::ranges(vec![]),
            ];
            let qs: Vec<Vec<f32>> = (0..11)
                .map(|_| (0..d).map(|_| lcg(&mut seed)).collect())
                .collect();
            let ks = [10, 1, 3, 0, 10, 2000, 7, 10, 5, 10, 1];
            let batch: Vec<BatchQuery> = qs
                .iter()
                .enumerate()
                .map(|(i, q)| BatchQuery {
                    vector: q,
                    k: ks[i],
                    filter: &filters[i % filters.len()],
                })
                .collect();
            for path in SimdPath::available() {
                let kern = Kernel::new(path).unwrap();
                for threads in [1, 2, 3] {
                    for (rows, flat) in [(Rows::F32(&g), &g), (Rows::F16(&gh), &ghf)] {
                        let got = search_batch(kern, &batch, rows, threads);
                        assert_eq!(got.len(), batch.len());
                        for (i, q) in batch.iter().enumerate() {
                            let want = brute_filtered(q.vector, flat, q.k, q.filter);
                            let what = format!(
                                "{path} d {d} t {threads} query {i} filter {}",
                                i % filters.len()
                            );
                            assert_same_ranking(&got[i], &want, &format!("batched {what}"));
                            let one = top_k_filtered(kern, q.vector, rows, q.k, threads, q.filter);
                            assert_same_ranking(&one, &want, &format!("single {what}"));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_gallery_of_parts_searches_like_one_part() {
        let mut seed = 31;
        let d = 24;
        let g: Vec<f32> = (0..900 * d).map(|_| lcg(&mut seed)).collect();
        // Parts of 0, 1, 300, 299 and 300 rows (an empty part and a one-row part).
        let cuts = [0, 0, 1, 301, 600, 900];
        let parts: Vec<Rows> = cuts
            .windows(2)
            .map(|w| Rows::F32(&g[w[0] * d..w[1] * d]))
            .collect();
        let gallery = Gallery::new(d, parts);
        assert_eq!(gallery.len(), 900);
        let qs: Vec<Vec<f32>> = (0..6)
            .map(|_| (0..d).map(|_| lcg(&mut seed)).collect())
            .collect();
        let f = RowFilter::ranges(vec![250..350, 590..610]);
        let filters = [RowFilter::All, f];
        for path in SimdPath::available() {
            let kern = Kernel::new(path).unwrap();
            for nq in [1, 6] {
                let batch: Vec<BatchQuery> = qs[..nq]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| BatchQuery {
                        vector: v,
                        k: 7,
                        filter: &filters[i % 2],
                    })
                    .collect();
                for threads in [1, 2, 4] {
                    let got = search_gallery(kern, &batch, &gallery, threads);
                    let one = search_batch(kern, &batch, Rows::F32(&g), threads);
                    for (i, q) in batch.iter().enumerate() {
                        let want = brute_filtered(q.vector, &g, q.k, q.filter);
                        assert_same_ranking(
                            &got[i],
                            &want,
                            &format!("{path} parts q{i} t{threads}"),
                        );
                        assert_same_ranking(
                            &one[i],
                            &want,
                            &format!("{path} one part q{i} t{threads}"),
                        );
                    }
                }
            }
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
            let rows: Vec<usize> = top_k(k(), &q, Rows::F32(&g), 5, threads)
                .iter()
                .map(|h| h.row)
                .collect();
            assert_eq!(rows, vec![60, 10, 90, 0, 1], "{threads} threads");
        }
    }

    #[test]
    fn k_larger_than_gallery_returns_all_rows() {
        let g = vec![0.5f32, 0.0, 0.0, 1.0, 1.0, 0.0];
        let hits = top_k(k(), &[1.0, 0.0], Rows::F32(&g), 10, 2);
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
        let a = top_k(k(), &q, Rows::F32(&g), 3, 2);
        let b = top_k(k(), &q, Rows::F16(&gh), 3, 2);
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
