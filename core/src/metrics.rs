//! Text-to-image retrieval metrics (SPEC §7, the IRRA protocol), in percent.
//!
//! For each query (caption) the gallery is ranked by similarity, descending, with
//! ties broken by gallery order (lower index first), so two implementations given
//! the same embeddings report the same numbers.
//!
//! - R@K: share of queries with at least one correct image in the top K.
//! - AP = sum_k precision@k * match_k / relevant; mAP is its mean.
//! - INP = relevant / rank of the last correct image; mINP is its mean.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub map: f64,
    pub minp: f64,
}

impl std::fmt::Display for RetrievalMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "R@1 {:.2}  R@5 {:.2}  R@10 {:.2}  mAP {:.2}  mINP {:.2}",
            self.r1, self.r5, self.r10, self.map, self.minp
        )
    }
}

/// Per-query outcome: rank (1-based) of every correct gallery item, ascending.
fn correct_ranks(row: &[f32], gallery_ids: &[i64], qid: i64, order: &mut Vec<u32>) -> Vec<usize> {
    order.clear();
    order.extend(0..row.len() as u32);
    // Stable sort by descending score: equal scores keep gallery order.
    // total_cmp puts NaN above +inf; NaN scores are refused before this point.
    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    order
        .iter()
        .enumerate()
        .filter(|&(_, &g)| gallery_ids[g as usize] == qid)
        .map(|(r, _)| r + 1)
        .collect()
}

/// Metrics from a `[queries x gallery]` row-major similarity matrix.
///
/// Every query must have at least one relevant gallery item (otherwise AP is
/// undefined); such a query is an error naming its index and id.
pub fn evaluate(
    similarity: &[f32],
    query_ids: &[i64],
    gallery_ids: &[i64],
) -> Result<RetrievalMetrics, CoreError> {
    use rayon::prelude::*;
    let (q, g) = (query_ids.len(), gallery_ids.len());
    if q == 0 || g == 0 {
        return Err(CoreError::Invalid(format!(
            "cannot evaluate {q} queries against {g} gallery items"
        )));
    }
    if similarity.len() != q * g {
        return Err(CoreError::Invalid(format!(
            "similarity has {} values, expected {q} queries x {g} gallery = {}",
            similarity.len(),
            q * g
        )));
    }
    if let Some(i) = similarity.iter().position(|v| v.is_nan()) {
        return Err(CoreError::Invalid(format!(
            "similarity of query {} and gallery item {} is NaN",
            i / g,
            i % g
        )));
    }
    let per_query: Vec<Result<[f64; 5], CoreError>> = similarity
        .par_chunks(g)
        .zip(query_ids.par_iter())
        .enumerate()
        .map_init(Vec::new, |order, (qi, (row, &qid))| {
            let ranks = correct_ranks(row, gallery_ids, qid, order);
            let Some(&first) = ranks.first() else {
                return Err(CoreError::Invalid(format!(
                    "query {qi} (id {qid}) has no relevant gallery item, so its AP is undefined"
                )));
            };
            let n = ranks.len() as f64;
            let ap = ranks
                .iter()
                .enumerate()
                .map(|(k, &r)| (k + 1) as f64 / r as f64)
                .sum::<f64>()
                / n;
            let inp = n / *ranks.last().unwrap() as f64;
            let hit = |k: usize| if first <= k { 1.0 } else { 0.0 };
            Ok([hit(1), hit(5), hit(10), ap, inp])
        })
        .collect();
    let mut sums = [0f64; 5];
    for r in per_query {
        for (s, v) in sums.iter_mut().zip(r?) {
            *s += v;
        }
    }
    let m = |i: usize| 100.0 * sums[i] / q as f64;
    Ok(RetrievalMetrics {
        r1: m(0),
        r5: m(1),
        r10: m(2),
        map: m(3),
        minp: m(4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hand_worked_three_queries() {
        // Gallery ids: [1, 2, 1, 3]
        // q0 (id 1): scores [.9 .8 .7 .1] -> ranking g0,g1,g2,g3; correct at ranks 1,3.
        //   AP = (1/1 + 2/3)/2 = 5/6; INP = 2/3; R@1 hit.
        // q1 (id 2): scores [.9 .1 .8 .7] -> ranking g0,g2,g3,g1; correct at rank 4 (last).
        //   AP = 1/4; INP = 1/4; R@1 miss, R@5 hit.
        // q2 (id 3): scores [.5 .5 .5 .5] all tied -> gallery order; correct at rank 4.
        //   AP = 1/4; INP = 1/4.
        let sim = [0.9, 0.8, 0.7, 0.1, 0.9, 0.1, 0.8, 0.7, 0.5, 0.5, 0.5, 0.5];
        let m = evaluate(&sim, &[1, 2, 3], &[1, 2, 1, 3]).unwrap();
        assert!(close(m.r1, 100.0 / 3.0));
        assert!(close(m.r5, 100.0));
        assert!(close(m.r10, 100.0));
        assert!(close(m.map, 100.0 * (5.0 / 6.0 + 0.25 + 0.25) / 3.0));
        assert!(close(m.minp, 100.0 * (2.0 / 3.0 + 0.25 + 0.25) / 3.0));
    }

    #[test]
    fn ties_break_by_gallery_order() {
        // Both items score the same; the correct one is second in gallery order -> rank 2.
        let m = evaluate(&[0.3, 0.3], &[7], &[8, 7]).unwrap();
        assert!(close(m.r1, 0.0));
        assert!(close(m.map, 50.0));
        // ... and first in gallery order -> rank 1.
        let m = evaluate(&[0.3, 0.3], &[7], &[7, 8]).unwrap();
        assert!(close(m.r1, 100.0));
    }

    #[test]
    fn several_relevant_and_r_at_k_boundaries() {
        // 12 gallery items, query id 5 relevant at gallery 6 and 11; scores descend with index,
        // so ranks are 7 and 12: R@5 miss, R@10 hit. AP = (1/7 + 2/12)/2, INP = 2/12.
        let sim: Vec<f32> = (0..12).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut ids = vec![0i64; 12];
        ids[6] = 5;
        ids[11] = 5;
        let m = evaluate(&sim, &[5], &ids).unwrap();
        assert!(close(m.r1, 0.0) && close(m.r5, 0.0) && close(m.r10, 100.0));
        assert!(close(m.map, 100.0 * (1.0 / 7.0 + 2.0 / 12.0) / 2.0));
        assert!(close(m.minp, 100.0 * 2.0 / 12.0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(
            evaluate(&[0.1, 0.2], &[1], &[2, 3])
                .unwrap_err()
                .to_string()
                .contains("query 0 (id 1)")
        );
        assert!(evaluate(&[0.1], &[1], &[1, 2]).is_err());
        assert!(
            evaluate(&[f32::NAN, 0.2], &[1], &[1, 2])
                .unwrap_err()
                .to_string()
                .contains("NaN")
        );
        assert!(evaluate(&[], &[], &[]).is_err());
    }
}
