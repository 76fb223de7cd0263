//! Fitting a score calibration on labelled embeddings, and judging it on a split the
//! fit never saw.
//!
//! Pairs are every (query, gallery crop) of a split: text queries are its captions
//! against its images; image queries are its images against its other images (a
//! crop is never its own match). A pair matches when both show the same identity.

use super::{Background, Bin, LrCurve, LrFit, Pair, balanced_ece, posterior, reliability, wilson};
use crate::error::CoreError;
use serde::{Deserialize, Serialize};

/// A split's embeddings with their identities (rows of `dim` unit-length values).
pub struct Labelled<'a> {
    pub dim: usize,
    pub queries: &'a [f32],
    pub query_pids: &'a [i64],
    pub gallery: &'a [f32],
    pub gallery_pids: &'a [i64],
    /// The queries are the gallery's own crops (image -> image): a crop is not
    /// paired with itself.
    pub same_set: bool,
}

impl Labelled<'_> {
    fn check(&self) -> Result<(), CoreError> {
        let rows = |v: &[f32], n: usize, what: &str| {
            if self.dim == 0 || v.len() != n * self.dim {
                Err(CoreError::Invalid(format!(
                    "{what}: {} values for {n} rows of {}",
                    v.len(),
                    self.dim
                )))
            } else {
                Ok(())
            }
        };
        rows(self.queries, self.query_pids.len(), "queries")?;
        rows(self.gallery, self.gallery_pids.len(), "gallery")?;
        if self.same_set && self.query_pids.len() != self.gallery_pids.len() {
            return Err(CoreError::Invalid(
                "image queries must be the gallery's own crops".into(),
            ));
        }
        Ok(())
    }

    /// Each query's scores: `f(query index, moments-free scores in gallery order)`;
    /// the pair of a crop with itself is left out (`None`).
    fn each_query(&self, mut f: impl FnMut(usize, &[f32], Vec<Option<f32>>)) {
        let d = self.dim;
        for (i, q) in self.queries.chunks_exact(d).enumerate() {
            let scores = self
                .gallery
                .chunks_exact(d)
                .enumerate()
                .map(|(j, g)| {
                    (!(self.same_set && i == j))
                        .then(|| g.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
                })
                .collect();
            f(i, q, scores)
        }
    }
}

/// How a score is normalised before the likelihood ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalisation {
    /// `z = (s - mean) / std` over the query's scores on the background set.
    Background,
    /// The raw cosine (the baseline the background normalisation is measured against).
    Raw,
}

/// Every pair of `set` with its normalised score.
pub fn pairs(bg: &Background, set: &Labelled, how: Normalisation) -> Result<Vec<Pair>, CoreError> {
    set.check()?;
    let mut out = Vec::with_capacity(set.query_pids.len() * set.gallery_pids.len());
    let mut err = None;
    set.each_query(|i, q, scores| {
        let m = match how {
            Normalisation::Raw => super::Moments {
                mean: 0.0,
                std: 1.0,
            },
            Normalisation::Background => match bg.moments(q) {
                Ok(m) => m,
                Err(e) => {
                    err.get_or_insert(e);
                    return;
                }
            },
        };
        for (j, s) in scores.into_iter().enumerate() {
            if let Some(s) = s {
                out.push(Pair {
                    z: m.z(s as f64),
                    matched: set.query_pids[i] == set.gallery_pids[j],
                });
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Fit on `set` (the fitting split).
pub fn fit(bg: &Background, set: &Labelled, how: Normalisation) -> Result<LrFit, CoreError> {
    LrCurve::fit(&pairs(bg, set, how)?)
}

/// How many of the pairs with `p` at or above a threshold match, with the Wilson
/// interval of that precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtLeast {
    pub p: f64,
    pub pairs: u64,
    pub matches: u64,
    pub precision: Option<f64>,
    pub wilson_95: (f64, f64),
}

/// A calibration judged on a split: at the split's true prior, over each query's
/// top `top` crops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub normalisation: Normalisation,
    pub queries: usize,
    pub pairs: u64,
    pub matches: u64,
    /// The split's true prior: the share of all its pairs that match.
    pub prior: f64,
    pub top: usize,
    /// 10 bins of `p` (at `prior`) over the top pairs, against their precision.
    pub reliability: Vec<Bin>,
    /// The plain ECE of the top pairs at `prior` (bins weighted by their pairs).
    pub ece_top: f64,
    /// The class-balanced ECE over all pairs ([`balanced_ece`] of `LR / (1 + LR)`).
    pub balanced_ece: f64,
    /// Top pairs with `p >= 0.9`.
    pub p90: AtLeast,
}

/// Judge `fit` (made with `how`) on `set`, a split it never saw.
pub fn report(
    fit: &LrFit,
    bg: &Background,
    set: &Labelled,
    how: Normalisation,
    top: usize,
) -> Result<Report, CoreError> {
    set.check()?;
    let all = pairs(bg, set, how)?;
    let matches = all.iter().filter(|p| p.matched).count() as u64;
    let n = all.len() as u64;
    if matches == 0 || matches == n {
        return Err(CoreError::Invalid(format!(
            "judging a calibration needs matching and non-matching pairs; the split has {matches} of {n}"
        )));
    }
    let prior = matches as f64 / n as f64;
    let balanced: Vec<(f64, bool)> = all
        .iter()
        .map(|p| (posterior(fit.curve.ln_lr(p.z), 0.5), p.matched))
        .collect();
    let balanced_ece = balanced_ece(&balanced, 10)?;
    // Each query's top pairs, by score (z is monotone in the score within a query).
    let per_query = if set.same_set {
        set.gallery_pids.len() - 1
    } else {
        set.gallery_pids.len()
    };
    let mut tops: Vec<(f64, bool)> = vec![];
    for q in all.chunks(per_query) {
        let mut q: Vec<&Pair> = q.iter().collect();
        q.sort_by(|a, b| b.z.total_cmp(&a.z));
        tops.extend(
            q.iter()
                .take(top)
                .map(|p| (fit.curve.p(p.z, prior), p.matched)),
        );
    }
    let bins = reliability(&tops, 10);
    let ece_top = bins
        .iter()
        .filter_map(|b| Some(b.pairs as f64 * (b.mean_p? - b.precision?).abs()))
        .sum::<f64>()
        / tops.len() as f64;
    let high: Vec<&(f64, bool)> = tops.iter().filter(|t| t.0 >= 0.9).collect();
    let k = high.iter().filter(|t| t.1).count() as u64;
    let h = high.len() as u64;
    Ok(Report {
        normalisation: how,
        queries: set.query_pids.len(),
        pairs: n,
        matches,
        prior,
        top,
        reliability: bins,
        ece_top,
        balanced_ece,
        p90: AtLeast {
            p: 0.9,
            pairs: h,
            matches: k,
            precision: (h > 0).then(|| k as f64 / h as f64),
            wilson_95: wilson(k, h),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A synthetic embedding world: `ids` identities, each a random unit direction;
    /// a crop or caption is its identity's direction plus noise, normalised. Queries
    /// of some identities are "harder" (more noise), so raw scores drift by query.
    fn world(
        seed: u64,
        ids: usize,
        per: usize,
        dim: usize,
    ) -> (Vec<f32>, Vec<i64>, Vec<f32>, Vec<i64>) {
        let mut rng = Rng::new(seed);
        let unit = |v: &mut Vec<f32>| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
        };
        let centres: Vec<Vec<f32>> = (0..ids)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
                unit(&mut v);
                v
            })
            .collect();
        let sample = |rng: &mut Rng, c: &[f32], noise: f32| {
            let mut v: Vec<f32> = c
                .iter()
                .map(|x| x + noise * rng.normal() as f32 / (dim as f32).sqrt())
                .collect();
            unit(&mut v);
            v
        };
        let (mut g, mut gp, mut q, mut qp) = (vec![], vec![], vec![], vec![]);
        for (i, c) in centres.iter().enumerate() {
            for _ in 0..per {
                g.extend(sample(&mut rng, c, 1.0));
                gp.push(i as i64);
            }
            let noise = if i % 2 == 0 { 0.8 } else { 2.0 };
            q.extend(sample(&mut rng, c, noise));
            qp.push(i as i64);
        }
        (q, qp, g, gp)
    }

    #[test]
    fn a_fit_on_one_split_is_calibrated_on_another() {
        let dim = 32;
        let (_, _, bgv, _) = world(1, 200, 2, dim);
        let bg = Background::new(dim, bgv).unwrap();
        let (q, qp, g, gp) = world(2, 60, 4, dim);
        let fit_set = Labelled {
            dim,
            queries: &q,
            query_pids: &qp,
            gallery: &g,
            gallery_pids: &gp,
            same_set: false,
        };
        let f = fit(&bg, &fit_set, Normalisation::Background).unwrap();
        assert!((f.prior - 1.0 / 60.0).abs() < 1e-12, "{}", f.prior);
        let (q, qp, g, gp) = world(3, 80, 4, dim);
        let test = Labelled {
            dim,
            queries: &q,
            query_pids: &qp,
            gallery: &g,
            gallery_pids: &gp,
            same_set: false,
        };
        let r = report(&f, &bg, &test, Normalisation::Background, 20).unwrap();
        assert_eq!(r.pairs, 80 * 320);
        assert_eq!(r.matches, 320);
        assert!((r.prior - 1.0 / 80.0).abs() < 1e-12);
        assert_eq!(r.reliability.iter().map(|b| b.pairs).sum::<u64>(), 80 * 20);
        // Calibrated where it was not fitted (a loose bound: 80 queries).
        assert!(r.balanced_ece < 0.1, "{r:#?}");
        // Same set: a crop is not its own pair.
        let same = Labelled {
            dim,
            queries: &g,
            query_pids: &gp,
            gallery: &g,
            gallery_pids: &gp,
            same_set: true,
        };
        let p = pairs(&bg, &same, Normalisation::Raw).unwrap();
        assert_eq!(p.len(), 320 * 319);
        assert_eq!(p.iter().filter(|p| p.matched).count(), 320 * 3);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let bg = Background::new(2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let set = Labelled {
            dim: 2,
            queries: &[1.0, 0.0, 1.0],
            query_pids: &[1],
            gallery: &[1.0, 0.0],
            gallery_pids: &[1],
            same_set: false,
        };
        assert!(pairs(&bg, &set, Normalisation::Raw).is_err());
        let set = Labelled {
            dim: 2,
            queries: &[1.0, 0.0],
            query_pids: &[1],
            gallery: &[1.0, 0.0],
            gallery_pids: &[1],
            same_set: false,
        };
        assert!(
            report(
                &LrFit {
                    curve: LrCurve {
                        z: vec![0.0],
                        ln_lr: vec![0.0]
                    },
                    matches: 1,
                    non_matches: 1,
                    prior: 0.5
                },
                &bg,
                &set,
                Normalisation::Raw,
                20
            )
            .is_err()
        );
    }
}
