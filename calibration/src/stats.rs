//! Range statistics of one tensor over the calibration data, and the three ways of
//! turning them into a symmetric int8 range (`amax`; scale = amax / 127).
//!
//! - **minmax**: the largest |x| seen.
//! - **percentile**: the smallest threshold below which the given percentage of all
//!   |x| fall (read off the histogram, rounded up to a bin edge).
//! - **entropy**: TensorRT's entropy calibration (Migacz, "8-bit Inference with
//!   TensorRT", GTC 2017): the threshold whose 128-level quantisation of the |x|
//!   histogram loses the least information (KL divergence), searched from 128 bins up.
//!
//! The histogram has a fixed number of equal bins starting at 0. Its range grows by
//! doubling: when a batch holds a larger |x| than the range covers, adjacent bins are
//! merged pairwise (exact: counts only add) and the bin width doubles. Memory per
//! tensor is therefore fixed whatever the number of samples, and one pass over the
//! data is enough (no first pass for the range).

use serde::{Deserialize, Serialize};

/// Bins of each tensor's |x| histogram (TensorRT's entropy calibrator also uses 2048).
pub const DEFAULT_BINS: usize = 2048;
/// Quantised levels on one side of zero for symmetric int8: 0..=127.
pub const INT8_LEVELS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    MinMax,
    Percentile,
    Entropy,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::MinMax, Method::Percentile, Method::Entropy];

    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown method {s:?}; expected minmax, percentile or entropy"))
    }
}

/// Histogram of |x| on `[0, width * counts.len())`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Bin width; 0 until a non-zero value has been seen (zeros go to bin 0 meanwhile).
    pub width: f64,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(bins: usize) -> Self {
        assert!(
            bins >= 2 * INT8_LEVELS && bins.is_power_of_two(),
            "bins must be a power of two >= 256"
        );
        Histogram {
            width: 0.0,
            counts: vec![0; bins],
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper edge of the range.
    pub fn range(&self) -> f64 {
        self.width * self.counts.len() as f64
    }

    /// Add values whose largest magnitude is `amax` (the caller has it already).
    pub fn add(&mut self, values: &[f32], amax: f32) {
        let n = self.counts.len();
        let amax = amax as f64;
        if amax > 0.0 {
            if self.width == 0.0 {
                self.width = amax / n as f64;
            }
            while amax > self.range() {
                for i in 0..n / 2 {
                    self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
                }
                self.counts[n / 2..].fill(0);
                self.width *= 2.0;
            }
        }
        if self.width == 0.0 {
            self.counts[0] += values.len() as u64;
            return;
        }
        let inv = (1.0 / self.width) as f32;
        let last = n - 1;
        for &v in values {
            let b = (v.abs() * inv) as usize; // saturating cast; NaN was refused upstream
            self.counts[b.min(last)] += 1;
        }
    }
}

/// What is collected for one tensor.
#[derive(Debug, Clone)]
pub struct TensorStats {
    pub min: f32,
    pub max: f32,
    pub count: u64,
    pub hist: Histogram,
}

impl TensorStats {
    pub fn new(bins: usize) -> Self {
        TensorStats {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            hist: Histogram::new(bins),
        }
    }

    /// Fold in one batch of the tensor. Non-finite values are an error (the fp32
    /// model overflowed on this data: its ranges would be meaningless).
    pub fn add(&mut self, values: &[f32]) -> Result<(), String> {
        // One pass for the range and the finiteness check (min/max skip NaN).
        let (mut lo, mut hi, mut finite) = (f32::INFINITY, f32::NEG_INFINITY, true);
        for &v in values {
            lo = lo.min(v);
            hi = hi.max(v);
            finite &= v.is_finite();
        }
        if !finite {
            return Err("holds NaN or infinite values".into());
        }
        if values.is_empty() {
            return Ok(());
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.count += values.len() as u64;
        self.hist.add(values, lo.abs().max(hi.abs()));
        Ok(())
    }

    /// Largest |x| seen.
    pub fn abs_max(&self) -> f32 {
        if self.count == 0 {
            0.0
        } else {
            self.min.abs().max(self.max.abs())
        }
    }

    /// The symmetric clipping threshold for `method` (never above the largest |x|).
    pub fn amax(&self, method: Method, percentile: f64) -> f32 {
        let m = self.abs_max();
        if m == 0.0 {
            return 0.0;
        }
        let t = match method {
            Method::MinMax => return m,
            Method::Percentile => percentile_threshold(&self.hist, percentile),
            Method::Entropy => entropy_threshold(&self.hist),
        };
        (t as f32).min(m)
    }
}

/// Symmetric int8 scale for a threshold: amax / 127 (1.0 for an all-zero tensor, so
/// the scale stays valid and zeros stay exactly zero).
pub fn scale_for(amax: f32) -> f32 {
    if amax > 0.0 { amax / 127.0 } else { 1.0 }
}

/// Smallest bin upper edge below which `percentile` % of the counts lie.
pub fn percentile_threshold(h: &Histogram, percentile: f64) -> f64 {
    let total = h.total();
    if total == 0 {
        return 0.0;
    }
    let target = (total as f64 * percentile / 100.0).ceil().max(1.0) as u64;
    let mut acc = 0u64;
    for (i, &c) in h.counts.iter().enumerate() {
        acc += c;
        if acc >= target {
            return (i + 1) as f64 * h.width;
        }
    }
    h.range()
}

/// TensorRT's entropy threshold on a |x| histogram: for each candidate count of bins
/// `i` (128..=bins), P = the first `i` bins with everything beyond folded into the
/// last, Q = those bins merged into 128 levels and spread back evenly over the bins
/// that were non-zero; the threshold is the upper edge of the `i` minimising KL(P||Q).
pub fn entropy_threshold(h: &Histogram) -> f64 {
    let n = h.counts.len();
    // Only the bins up to the last non-zero one matter: beyond it P and Q repeat.
    let last_nonzero = match h.counts.iter().rposition(|&c| c > 0) {
        Some(i) => i,
        None => return 0.0,
    };
    let end = (last_nonzero + 1).max(INT8_LEVELS).min(n);
    let counts: Vec<f64> = h.counts.iter().map(|&c| c as f64).collect();
    let total: f64 = counts.iter().sum();
    let mut best = (f64::INFINITY, end);
    let mut p = vec![0f64; end];
    let mut q = vec![0f64; end];
    let mut beyond: f64 = counts[INT8_LEVELS..].iter().sum();
    for i in INT8_LEVELS..=end {
        // P: bins [0, i) with the outliers folded into bin i-1.
        p[..i].copy_from_slice(&counts[..i]);
        p[i - 1] += beyond;
        if i < n {
            beyond -= counts[i];
        }
        // Q: merge [0, i) into 128 levels, expand over the non-zero bins of each level.
        let per = i as f64 / INT8_LEVELS as f64;
        for j in 0..INT8_LEVELS {
            let start = (j as f64 * per).floor() as usize;
            let stop = if j + 1 == INT8_LEVELS {
                i
            } else {
                ((j + 1) as f64 * per).floor() as usize
            };
            let bins = &counts[start..stop];
            let sum: f64 = bins.iter().sum();
            let nonzero = bins.iter().filter(|&&c| c > 0.0).count();
            for (k, &c) in bins.iter().enumerate() {
                q[start + k] = if c > 0.0 { sum / nonzero as f64 } else { 0.0 };
            }
        }
        let kl = kl_divergence(&p[..i], &q[..i], total);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f64 * h.width
}

/// KL(P||Q) of two count vectors (P sums to `p_total`), Q smoothed where P has mass
/// and Q none (as the reference implementations do).
fn kl_divergence(p: &[f64], q: &[f64], p_total: f64) -> f64 {
    const EPS: f64 = 1e-4;
    let q_total: f64 = q.iter().sum();
    if q_total == 0.0 {
        return f64::INFINITY;
    }
    let zeros = q.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = q.len() - zeros;
    let eps1 = EPS * zeros as f64 / nonzeros.max(1) as f64;
    let mut kl = 0.0;
    for (&pc, &qc) in p.iter().zip(q) {
        if pc == 0.0 {
            continue;
        }
        let pp = pc / p_total;
        let qq = if qc == 0.0 {
            EPS / q_total
        } else {
            (qc - eps1).max(EPS) / q_total
        };
        kl += pp * (pp / qq).ln();
    }
    kl
}

#[cfg(test)]
mod tests {
    use super::*;
    use sen_core::rng::Rng;

    fn stats(values: &[f32], bins: usize, batch: usize) -> TensorStats {
        let mut s = TensorStats::new(bins);
        for c in values.chunks(batch) {
            s.add(c).unwrap();
        }
        s
    }

    #[test]
    fn growing_range_keeps_every_count_and_covers_the_max() {
        // Batches with growing magnitude force several doublings.
        let mut rng = Rng::new(1);
        let values: Vec<f32> = (0..40_000)
            .map(|i| (rng.f32() * 2.0 - 1.0) * (1.0 + i as f32 / 1000.0))
            .collect();
        let s = stats(&values, 256, 1000);
        assert_eq!(s.hist.total(), 40_000);
        assert_eq!(s.count, 40_000);
        let m = values.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(s.abs_max(), m);
        assert!(s.hist.range() >= m as f64 && s.hist.range() < 2.0 * m as f64 + 1e-6);
        // Every value is in the bin its magnitude says (counted independently).
        let w = s.hist.width;
        let mut expect = vec![0u64; 256];
        for v in &values {
            expect[((v.abs() as f64 / w) as usize).min(255)] += 1;
        }
        let diff: u64 = expect
            .iter()
            .zip(&s.hist.counts)
            .map(|(a, b)| a.abs_diff(*b))
            .sum();
        // Rounding at bin edges (f32 vs f64 division) may move a handful of values.
        assert!(diff <= 10, "{diff}");
    }

    #[test]
    fn minmax_is_the_largest_magnitude() {
        let s = stats(&[0.5, -3.25, 2.0, 1.0], 256, 2);
        assert_eq!(s.amax(Method::MinMax, 99.99), 3.25);
        assert_eq!(scale_for(3.25), 3.25 / 127.0);
        assert_eq!((s.min, s.max), (-3.25, 2.0));
    }

    #[test]
    fn percentile_matches_the_sorted_sample() {
        let mut rng = Rng::new(2);
        let values: Vec<f32> = (0..200_000).map(|_| rng.normal() as f32).collect();
        let s = stats(&values, 2048, 4096);
        // The definition, checked on the raw sample: at least p % of |x| lie at or
        // below the threshold, and less than p % one bin lower.
        let share = |t: f32| values.iter().filter(|v| v.abs() <= t).count() as f64 / 200_000.0;
        for p in [99.0, 99.9, 99.99] {
            let got = s.amax(Method::Percentile, p);
            let w = s.hist.width as f32;
            assert!(
                share(got) >= p / 100.0 - 1e-9,
                "p{p}: {got} keeps {}",
                share(got)
            );
            assert!(
                share(got - 1.001 * w) < p / 100.0 + 1e-9,
                "p{p}: {got} is not the smallest bin edge (bin {w})"
            );
        }
        // 100% is the maximum.
        assert_eq!(s.amax(Method::Percentile, 100.0), s.abs_max());
    }

    #[test]
    fn entropy_keeps_a_dense_range_and_clips_rare_outliers() {
        // Uniform magnitudes: every level is used evenly, nothing worth clipping.
        let mut rng = Rng::new(3);
        let uniform: Vec<f32> = (0..100_000).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let s = stats(&uniform, 2048, 10_000);
        let t = s.amax(Method::Entropy, 0.0);
        assert!(t > 0.95 && t <= 1.0, "uniform: {t}");

        // Gaussian plus 0.01 % outliers at 60 sigma: the threshold stays near the bulk
        // (a minmax scale would put the whole Gaussian in 1-2 levels).
        let mut g: Vec<f32> = (0..200_000).map(|_| rng.normal() as f32).collect();
        for i in 0..20 {
            g[i * 9973] = if i % 2 == 0 { 60.0 } else { -60.0 };
        }
        let s = stats(&g, 2048, 8192);
        let t = s.amax(Method::Entropy, 0.0);
        assert!(t > 2.5 && t < 12.0, "gaussian + outliers: {t}");
        assert_eq!(s.amax(Method::MinMax, 0.0), 60.0);
    }

    #[test]
    fn zeros_and_non_finite_values() {
        let mut s = TensorStats::new(256);
        s.add(&[0.0; 10]).unwrap();
        for m in Method::ALL {
            assert_eq!(s.amax(m, 99.9), 0.0);
        }
        assert_eq!(scale_for(0.0), 1.0);
        // Zeros seen before the first non-zero value stay in bin 0.
        s.add(&[1.0]).unwrap();
        assert_eq!(s.hist.counts[0], 10);
        assert_eq!(s.hist.total(), 11);
        let e = s.add(&[1.0, f32::NAN]).unwrap_err();
        assert!(e.contains("NaN"), "{e}");
    }
}
