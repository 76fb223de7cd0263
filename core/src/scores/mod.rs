//! Score calibration (SPEC §12): a cosine score becomes `p`, the probability that a
//! crop shows the person a query describes (text) or the same person (like), at a
//! stated prior.
//!
//! Two steps, both fitted by `sen calibrate-scores` and stored in the bundle:
//! 1. **Normalisation against the query's own distribution.** Raw CLIP scores drift
//!    from query to query (a long, specific description scores every crop lower than
//!    a short one). Each score is turned into `z = (s - mean) / std`, where `mean` and
//!    `std` are the query's scores over a fixed background set of crop embeddings
//!    (train crops, disjoint from the splits it is fitted and checked on).
//! 2. **A monotone, class-balanced likelihood ratio.** Over labelled pairs, the
//!    pool-adjacent-violators algorithm fits `q(z) = P(match | z)` with matches and
//!    non-matches weighted to equal total mass, so `q / (1 - q)` is the likelihood
//!    ratio `LR(z) = f(z | match) / f(z | non-match)`, free of the fitting data's
//!    base rate. Then `p = prior * LR / (prior * LR + 1 - prior)`.
//!
//! The report functions ([`reliability`], [`balanced_ece`], [`wilson`]) are how the
//! fit is judged on a split it never saw.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};

pub mod bundle;
pub mod fit;

/// The mean and standard deviation of one query's scores over the background set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub mean: f64,
    pub std: f64,
}

/// The smallest standard deviation a normalisation divides by (a background whose
/// scores are all equal would otherwise divide by zero).
const MIN_STD: f64 = 1e-6;

/// The background set: `n` unit-length crop embeddings of `dim` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Background {
    pub dim: usize,
    pub vectors: Vec<f32>,
}

impl Background {
    pub fn new(dim: usize, vectors: Vec<f32>) -> Result<Self, CoreError> {
        if dim == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
            return Err(CoreError::Invalid(format!(
                "a score background needs whole rows of {dim} values; got {}",
                vectors.len()
            )));
        }
        if vectors.len() / dim < 2 {
            return Err(CoreError::Invalid(
                "a score background needs at least 2 embeddings".into(),
            ));
        }
        if vectors.iter().any(|v| !v.is_finite()) {
            return Err(CoreError::Invalid(
                "a score background holds a value that is not finite".into(),
            ));
        }
        Ok(Background { dim, vectors })
    }

    pub fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The query's score moments over the background (`query`: unit length, `dim`).
    pub fn moments(&self, query: &[f32]) -> Result<Moments, CoreError> {
        if query.len() != self.dim {
            return Err(CoreError::Invalid(format!(
                "a query of {} values against a score background of {}",
                query.len(),
                self.dim
            )));
        }
        let n = self.len() as f64;
        let (mut sum, mut sum2) = (0.0f64, 0.0f64);
        for row in self.vectors.chunks_exact(self.dim) {
            let s: f32 = row.iter().zip(query).map(|(a, b)| a * b).sum();
            let s = s as f64;
            sum += s;
            sum2 += s * s;
        }
        let mean = sum / n;
        // The sample variance; clamped at 0 against rounding.
        let var = ((sum2 - n * mean * mean) / (n - 1.0)).max(0.0);
        Ok(Moments {
            mean,
            std: var.sqrt().max(MIN_STD),
        })
    }
}

impl Moments {
    /// `z = (score - mean) / std`.
    pub fn z(&self, score: f64) -> f64 {
        (score - self.mean) / self.std
    }
}

/// A labelled pair: its normalised score and whether it is a match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub z: f64,
    pub matched: bool,
}

/// A monotone likelihood ratio of match against non-match, as a function of `z`:
/// knots `(z, ln LR)`, linear in `ln LR` between knots and flat beyond the ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrCurve {
    pub z: Vec<f64>,
    pub ln_lr: Vec<f64>,
}

/// What a fit saw: how many matches and non-matches, and so the prior of its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrFit {
    pub curve: LrCurve,
    pub matches: u64,
    pub non_matches: u64,
    /// `matches / (matches + non_matches)`: the share of pairs that match in the
    /// fitting data.
    pub prior: f64,
}

/// Each PAV block holds at least this many pairs, so no knot rests on a handful of
/// pairs (the tails are where a step fit overreaches).
pub const MIN_BLOCK_PAIRS: usize = 50;

/// A pseudo-count added to each block's matches and non-matches before their ratio
/// is taken, so a block without non-matches gives a large, finite ratio.
const PSEUDO: f64 = 0.5;

impl LrCurve {
    /// Fit the class-balanced likelihood ratio to labelled pairs (both classes
    /// needed; every `z` finite).
    pub fn fit(pairs: &[Pair]) -> Result<LrFit, CoreError> {
        if let Some(p) = pairs.iter().find(|p| !p.z.is_finite()) {
            return Err(CoreError::Invalid(format!(
                "a calibration pair has a score that is not finite ({})",
                p.z
            )));
        }
        let matches = pairs.iter().filter(|p| p.matched).count();
        let non_matches = pairs.len() - matches;
        if matches == 0 || non_matches == 0 {
            return Err(CoreError::Invalid(format!(
                "a score calibration needs matching and non-matching pairs; got {matches} \
                 matches and {non_matches} non-matches"
            )));
        }
        let mut sorted: Vec<Pair> = pairs.to_vec();
        sorted.sort_by(|a, b| a.z.total_cmp(&b.z));
        let (wp, wn) = (1.0 / matches as f64, 1.0 / non_matches as f64);
        // Blocks of equal z first (ties cannot be ordered), then pool adjacent
        // violators: merge while a block's balanced q is not above the previous one's.
        let mut blocks: Vec<Block> = vec![];
        for p in &sorted {
            match blocks.last_mut() {
                Some(b) if b.z_max == p.z => b.add(p, wp, wn),
                _ => {
                    let mut b = Block::default();
                    b.add(p, wp, wn);
                    blocks.push(b);
                }
            }
            while blocks.len() > 1 {
                let n = blocks.len();
                if blocks[n - 2].q() < blocks[n - 1].q() {
                    break;
                }
                let last = blocks.pop().unwrap();
                blocks.last_mut().unwrap().merge(last);
            }
        }
        // Small blocks join the neighbour whose q is closer (a merge of neighbours in a
        // non-decreasing sequence keeps it non-decreasing).
        while blocks.len() > 1 {
            let Some(i) = (0..blocks.len())
                .filter(|&i| blocks[i].n < MIN_BLOCK_PAIRS)
                .min_by_key(|&i| blocks[i].n)
            else {
                break;
            };
            let j = if i == 0 {
                1
            } else if i + 1 == blocks.len()
                || (blocks[i].q() - blocks[i - 1].q()).abs()
                    <= (blocks[i + 1].q() - blocks[i].q()).abs()
            {
                i - 1
            } else {
                i + 1
            };
            let (lo, hi) = (i.min(j), i.max(j));
            let b = blocks.remove(hi);
            blocks[lo].merge(b);
        }
        let mut z = Vec::with_capacity(blocks.len());
        let mut ln_lr = Vec::with_capacity(blocks.len());
        let mut floor = f64::NEG_INFINITY;
        for b in &blocks {
            let lr = ((b.pos + PSEUDO) / matches as f64) / ((b.neg + PSEUDO) / non_matches as f64);
            // The pseudo-counts can undo PAV's order by a hair: keep it monotone.
            floor = floor.max(lr.ln());
            z.push(b.z_sum / b.w);
            ln_lr.push(floor);
        }
        Ok(LrFit {
            curve: LrCurve { z, ln_lr },
            matches: matches as u64,
            non_matches: non_matches as u64,
            prior: matches as f64 / pairs.len() as f64,
        })
    }

    /// Check a curve read from a file: knots strictly increasing in `z`, `ln LR`
    /// non-decreasing, all finite, at least one knot.
    pub fn check(&self) -> Result<(), String> {
        if self.z.is_empty() || self.z.len() != self.ln_lr.len() {
            return Err(format!(
                "a likelihood-ratio curve needs as many ln_lr as z values, at least one; got {} and {}",
                self.z.len(),
                self.ln_lr.len()
            ));
        }
        if self.z.iter().chain(&self.ln_lr).any(|v| !v.is_finite()) {
            return Err("a likelihood-ratio curve holds a value that is not finite".into());
        }
        if self.z.windows(2).any(|w| w[0] >= w[1]) {
            return Err("a likelihood-ratio curve's z values must increase".into());
        }
        if self.ln_lr.windows(2).any(|w| w[0] > w[1]) {
            return Err("a likelihood-ratio curve must not decrease".into());
        }
        Ok(())
    }

    /// `ln LR(z)`.
    pub fn ln_lr(&self, z: f64) -> f64 {
        let k = &self.z;
        let n = k.len();
        if z <= k[0] {
            return self.ln_lr[0];
        }
        if z >= k[n - 1] {
            return self.ln_lr[n - 1];
        }
        // The first knot above z (there is one, and one at or below it).
        let hi = k.partition_point(|&x| x <= z);
        let lo = hi - 1;
        // Knots far apart overflow a difference: `(k[hi] - k[lo])` to infinity (t
        // then 0) and `ln_lr[hi] - ln_lr[lo]` too (0 x inf is NaN); the weighted sum
        // of the two ends never does.
        let t = ((z - k[lo]) / (k[hi] - k[lo])).clamp(0.0, 1.0);
        (1.0 - t) * self.ln_lr[lo] + t * self.ln_lr[hi]
    }

    /// `p` at `prior` (in (0, 1)).
    pub fn p(&self, z: f64, prior: f64) -> f64 {
        posterior(self.ln_lr(z), prior)
    }
}

/// `p = prior * LR / (prior * LR + 1 - prior)`, computed in log odds so a large
/// ratio does not overflow.
pub fn posterior(ln_lr: f64, prior: f64) -> f64 {
    let logit = ln_lr + (prior / (1.0 - prior)).ln();
    1.0 / (1.0 + (-logit).exp())
}

/// Whether a prior is usable: strictly between 0 and 1.
pub fn check_prior(prior: f64) -> Result<(), String> {
    if prior.is_finite() && prior > 0.0 && prior < 1.0 {
        Ok(())
    } else {
        Err(format!(
            "a prior is the share of gallery crops that show the person, strictly between 0 and 1; got {prior}"
        ))
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Block {
    /// Matches and non-matches (counts).
    pos: f64,
    neg: f64,
    /// Balanced weights of each class, summed.
    wpos: f64,
    wneg: f64,
    /// Balanced-weighted sum of z, the total weight, pairs and the largest z.
    z_sum: f64,
    w: f64,
    n: usize,
    z_max: f64,
}

impl Block {
    fn add(&mut self, p: &Pair, wp: f64, wn: f64) {
        let w = if p.matched {
            self.pos += 1.0;
            self.wpos += wp;
            wp
        } else {
            self.neg += 1.0;
            self.wneg += wn;
            wn
        };
        self.z_sum += w * p.z;
        self.w += w;
        self.n += 1;
        self.z_max = p.z;
    }

    fn merge(&mut self, o: Block) {
        self.pos += o.pos;
        self.neg += o.neg;
        self.wpos += o.wpos;
        self.wneg += o.wneg;
        self.z_sum += o.z_sum;
        self.w += o.w;
        self.n += o.n;
        self.z_max = self.z_max.max(o.z_max);
    }

    /// The balanced share of matches.
    fn q(&self) -> f64 {
        self.wpos / (self.wpos + self.wneg)
    }
}

/// One bin of a reliability table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub pairs: u64,
    pub matches: u64,
    /// The mean `p` of the bin's pairs (absent when empty).
    pub mean_p: Option<f64>,
    /// The share of its pairs that match (absent when empty).
    pub precision: Option<f64>,
}

/// `bins` equal-width bins of `p` over `[0, 1]` (the last one closed): for each, the
/// pairs, the mean `p` and the observed precision.
pub fn reliability(items: &[(f64, bool)], bins: usize) -> Vec<Bin> {
    let mut out: Vec<Bin> = (0..bins)
        .map(|i| Bin {
            lo: i as f64 / bins as f64,
            hi: (i + 1) as f64 / bins as f64,
            pairs: 0,
            matches: 0,
            mean_p: None,
            precision: None,
        })
        .collect();
    let mut sum = vec![0.0f64; bins];
    for &(p, m) in items {
        let i = bin_of(p, bins);
        out[i].pairs += 1;
        out[i].matches += m as u64;
        sum[i] += p;
    }
    for (b, s) in out.iter_mut().zip(sum) {
        if b.pairs > 0 {
            b.mean_p = Some(s / b.pairs as f64);
            b.precision = Some(b.matches as f64 / b.pairs as f64);
        }
    }
    out
}

fn bin_of(p: f64, bins: usize) -> usize {
    ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1)
}

/// The class-balanced expected calibration error of balanced posteriors `q` (the
/// probability at a prior of 1/2, `LR / (1 + LR)`): matches and non-matches are
/// weighted to equal total mass, the pairs binned by `q` into `bins` equal bins,
/// and `ECE = sum_b w_b |o_b - qbar_b|`, where `w_b` is the bin's share of the
/// balanced mass, `o_b` its balanced share of matches and `qbar_b` its balanced
/// mean `q`. Unlike the plain ECE, it is not dominated by the many easy non-matches
/// of a retrieval split, and it does not depend on the split's base rate.
pub fn balanced_ece(items: &[(f64, bool)], bins: usize) -> Result<f64, CoreError> {
    let matches = items.iter().filter(|i| i.1).count();
    let non_matches = items.len() - matches;
    if matches == 0 || non_matches == 0 {
        return Err(CoreError::Invalid(format!(
            "a class-balanced ECE needs matches and non-matches; got {matches} and {non_matches}"
        )));
    }
    let (wp, wn) = (0.5 / matches as f64, 0.5 / non_matches as f64);
    let mut wpos = vec![0.0f64; bins];
    let mut wneg = vec![0.0f64; bins];
    let mut wq = vec![0.0f64; bins];
    for &(q, m) in items {
        let i = bin_of(q, bins);
        let w = if m { wp } else { wn };
        if m {
            wpos[i] += w;
        } else {
            wneg[i] += w;
        }
        wq[i] += w * q;
    }
    let mut ece = 0.0;
    for i in 0..bins {
        let w = wpos[i] + wneg[i];
        if w > 0.0 {
            ece += w * (wpos[i] / w - wq[i] / w).abs();
        }
    }
    Ok(ece)
}

/// The Wilson score interval of `k` successes in `n` at 95% (z = 1.96).
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let ph = k as f64 / n;
    let d = 1.0 + z * z / n;
    let c = (ph + z * z / (2.0 * n)) / d;
    let h = z * ((ph * (1.0 - ph) / n + z * z / (4.0 * n * n)).sqrt()) / d;
    ((c - h).max(0.0), (c + h).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(z: f64, matched: bool) -> Pair {
        Pair { z, matched }
    }

    #[test]
    fn moments_are_the_sample_mean_and_std_of_the_scores() {
        // Three unit vectors in 2-D and a query: scores 1, 0, -1 by hand.
        let bg = Background::new(2, vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0]).unwrap();
        let m = bg.moments(&[1.0, 0.0]).unwrap();
        assert!((m.mean - 0.0).abs() < 1e-12);
        // Sample variance of {1, 0, -1} is 2 / 2 = 1.
        assert!((m.std - 1.0).abs() < 1e-12);
        assert!((m.z(0.5) - 0.5).abs() < 1e-12);
        assert!(bg.moments(&[1.0]).is_err());
        assert!(Background::new(2, vec![1.0, 0.0, 0.0]).is_err());
        assert!(Background::new(2, vec![1.0, f32::NAN, 0.0, 1.0]).is_err());
    }

    #[test]
    fn posterior_is_bayes_rule_at_the_prior() {
        // LR 9 at prior 1/2: 9/10. LR 9 at prior 0.1: 0.9/(0.9+0.9) = 1/2.
        assert!((posterior(9f64.ln(), 0.5) - 0.9).abs() < 1e-12);
        assert!((posterior(9f64.ln(), 0.1) - 0.5).abs() < 1e-12);
        // A huge ratio neither overflows nor exceeds 1.
        let p = posterior(1000.0, 0.01);
        assert!(p <= 1.0 && p > 0.999);
        assert!(
            check_prior(0.0).is_err()
                && check_prior(1.0).is_err()
                && check_prior(f64::NAN).is_err()
        );
        assert!(check_prior(0.01).is_ok());
    }

    #[test]
    fn the_fit_is_monotone_and_balanced() {
        // 100 blocks of z = 0..9 (10 pairs per z per class mix): at z = k, k of 10
        // pairs match (a non-decreasing truth), repeated 10 times so each z holds 100
        // pairs (over MIN_BLOCK_PAIRS). Matches: 10 * (0+1+...+9) = 450 of 1000.
        let mut pairs = vec![];
        for _ in 0..10 {
            for k in 0..10 {
                for j in 0..10 {
                    pairs.push(pair(k as f64, j < k));
                }
            }
        }
        let fit = LrCurve::fit(&pairs).unwrap();
        assert_eq!((fit.matches, fit.non_matches), (450, 550));
        assert!((fit.prior - 0.45).abs() < 1e-12);
        fit.curve.check().unwrap();
        // z = 0 has no matches: one block, pooled with nothing (z = 1 is above it).
        // At z = 5: 50 matches of 450 and 50 non-matches of 550, so with the
        // pseudo-counts LR = (50.5/450) / (50.5/550) = 550/450.
        let want = (550.0f64 / 450.0).ln();
        assert!(
            (fit.curve.ln_lr(5.0) - want).abs() < 1e-9,
            "{:?}",
            fit.curve
        );
        // Flat beyond the ends; interpolated halfway between knots.
        assert_eq!(fit.curve.ln_lr(-5.0), fit.curve.ln_lr[0]);
        assert_eq!(fit.curve.ln_lr(50.0), *fit.curve.ln_lr.last().unwrap());
        assert!((fit.curve.ln_lr(9.0) - fit.curve.ln_lr(50.0)).abs() < 1e-9);
        let mid = (fit.curve.ln_lr(5.0) + fit.curve.ln_lr(6.0)) / 2.0;
        assert!((fit.curve.ln_lr(5.5) - mid).abs() < 1e-9);
        // The prior of the fitting data gives p = the observed share at z = 5 (1/2).
        assert!((fit.curve.p(5.0, fit.prior) - 0.5).abs() < 0.01);
    }

    #[test]
    fn violators_are_pooled() {
        // z = 1: 30 of 60 match; z = 2: 15 of 60 (a violation); z = 3: 60 of 60.
        // PAV pools z = 1 and 2: 45 of 120 match.
        let mut pairs = vec![];
        for (z, m, n) in [(1.0, 30, 60), (2.0, 15, 60), (3.0, 60, 60)] {
            for j in 0..n {
                pairs.push(pair(z, j < m));
            }
        }
        let fit = LrCurve::fit(&pairs).unwrap();
        let c = &fit.curve;
        assert_eq!(c.z.len(), 2, "{c:?}");
        // Matches 105, non-matches 75. The pooled block: 45 and 75.
        let want = ((45.5f64 / 105.0) / (75.5 / 75.0)).ln();
        assert!((c.ln_lr[0] - want).abs() < 1e-9);
        // The top block: 60 matches and no non-match (pseudo-count only).
        let want = ((60.5f64 / 105.0) / (0.5 / 75.0)).ln();
        assert!((c.ln_lr[1] - want).abs() < 1e-9);
        // The pooled knot sits at the balanced mean z of its pairs.
        let (wp, wn) = (1.0 / 105.0, 1.0 / 75.0);
        let zc = (wp * (30.0 * 1.0 + 15.0 * 2.0) + wn * (30.0 * 1.0 + 45.0 * 2.0))
            / (45.0 * wp + 75.0 * wn);
        assert!((c.z[0] - zc).abs() < 1e-9, "{} vs {zc}", c.z[0]);
    }

    #[test]
    fn a_curve_of_extreme_knots_gives_a_number() {
        // Checked (finite, increasing), but every difference overflows.
        let c = LrCurve {
            z: vec![-1e308, 1e308],
            ln_lr: vec![-1e308, 1e308],
        };
        c.check().unwrap();
        for z in [-1e308, -1.0, 0.0, 1.0, 1e308] {
            let l = c.ln_lr(z);
            assert!(l.is_finite(), "ln LR {l} at {z}");
            let p = c.p(z, 0.01);
            assert!((0.0..=1.0).contains(&p), "p {p} at {z}");
        }
        assert_eq!(c.ln_lr(-1e308), -1e308);
    }

    #[test]
    fn bad_fits_and_curves_are_refused() {
        assert!(LrCurve::fit(&[pair(1.0, true)]).is_err());
        assert!(LrCurve::fit(&[pair(1.0, true), pair(f64::NAN, false)]).is_err());
        let bad = LrCurve {
            z: vec![1.0, 0.5],
            ln_lr: vec![0.0, 1.0],
        };
        assert!(bad.check().is_err());
        let bad = LrCurve {
            z: vec![0.0, 1.0],
            ln_lr: vec![1.0, 0.0],
        };
        assert!(bad.check().is_err());
        assert!(
            LrCurve {
                z: vec![],
                ln_lr: vec![]
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn reliability_bins_by_p() {
        let items = [
            (0.05, false),
            (0.95, true),
            (0.95, false),
            (1.0, true),
            (0.5, true),
        ];
        let r = reliability(&items, 10);
        assert_eq!(r.len(), 10);
        assert_eq!((r[0].pairs, r[0].matches), (1, 0));
        assert_eq!((r[5].pairs, r[5].matches), (1, 1));
        // 0.95, 0.95 and 1.0 all fall in the last bin.
        assert_eq!((r[9].pairs, r[9].matches), (3, 2));
        assert!((r[9].mean_p.unwrap() - (0.95 + 0.95 + 1.0) / 3.0).abs() < 1e-12);
        assert!((r[9].precision.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r[3].mean_p, None);
    }

    #[test]
    fn balanced_ece_by_hand() {
        // Two matches at q = 0.9, one non-match at 0.9 and three at 0.1.
        // Balanced weights: matches 0.5/2 = 0.25 each; non-matches 0.5/4 = 0.125.
        // Bin 9 (q = 0.9): matches 0.5, non-matches 0.125: w = 0.625, o = 0.8,
        // qbar = 0.9: |0.8 - 0.9| * 0.625 = 0.0625.
        // Bin 1 (q = 0.1): non-matches 0.375, o = 0, qbar = 0.1: 0.0375.
        let items = [
            (0.9, true),
            (0.9, true),
            (0.9, false),
            (0.1, false),
            (0.1, false),
            (0.1, false),
        ];
        let e = balanced_ece(&items, 10).unwrap();
        assert!((e - 0.1).abs() < 1e-12, "{e}");
        assert!(balanced_ece(&[(0.5, true)], 10).is_err());
    }

    #[test]
    fn wilson_matches_the_textbook_interval() {
        // 81 of 100 at 95%: (0.7222, 0.8749) (Wilson 1927; e.g. statsmodels
        // proportion_confint(81, 100, method="wilson") -> 0.72226, 0.87494).
        let (lo, hi) = wilson(81, 100);
        assert!(
            (lo - 0.72226).abs() < 1e-4 && (hi - 0.87494).abs() < 1e-4,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(10, 10);
        assert!(
            (hi - 1.0).abs() < 1e-12 && (lo - 0.72246).abs() < 1e-4,
            "{lo} {hi}"
        );
    }
}
