//! The identity-balanced batch sampler of SPEC §5 (IRRA's `RandomIdentitySampler`):
//! batches of P identities x K samples, so every batch has positives for the SDM
//! and triplet losses.
//!
//! Per epoch: each identity's samples are shuffled and cut into groups of K (an
//! identity with fewer than K samples is topped up by drawing again from its own);
//! then batches repeatedly take P distinct identities at random among those with
//! groups left, one group each, until fewer than P identities have groups left.
//!
//! SEN's `idrannum` variant (`with_random_counts`, its `RandomIdnumSampler`): per
//! epoch each identity draws its group size k uniformly from 1..=K, is cut into
//! groups of k, and the rounds of P identities are concatenated and cut into batches
//! of P x K (full batches only), so a batch holds identities with one sample beside
//! identities with two.
//!
//! Optionally (`with_similar_groups`), the P identities of a batch come in groups of G
//! alike identities: a random identity and its nearest available neighbours by
//! training-caption similarity ([`caption_neighbours`]). Random batches of a large
//! training set rarely hold two people who differ in one detail, so the in-batch
//! negatives of SDM and the triplet loss are easy; these batches make them hard.

use crate::error::CoreError;
use crate::rng::Rng;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct IdentitySampler {
    /// Sample indices per pid.
    by_pid: Vec<Vec<usize>>,
    pub identities_per_batch: usize,
    pub samples_per_identity: usize,
    seed: u64,
    /// G and each pid's neighbours, nearest first (G = 1: no grouping).
    similar: Option<(usize, Vec<Vec<usize>>)>,
    /// `idrannum`: each identity's group size drawn from 1..=K per epoch.
    random_counts: bool,
}

/// Which batch sampler training uses (`sen-train train --sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// IRRA's `RandomIdentitySampler`: P identities x K samples per batch.
    Identity,
    /// SEN's `RandomIdnumSampler`: K drawn from 1..=K per identity and epoch.
    Idrannum,
}

impl SamplerKind {
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Identity => "identity",
            SamplerKind::Idrannum => "idrannum",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s {
            "identity" => Ok(SamplerKind::Identity),
            "idrannum" => Ok(SamplerKind::Idrannum),
            other => Err(CoreError::Invalid(format!(
                "--sampler {other:?}: expected identity (IRRA: P identities x K samples) or idrannum (SEN: K drawn from 1..=K per identity and epoch)"
            ))),
        }
    }
}

/// For every pid, its `m` nearest other pids by the cosine similarity of TF-IDF
/// vectors of its captions' lower-cased words and word pairs ("black jeans"),
/// nearest first (ties by lower pid). Terms used by more than half of the
/// identities carry little weight and are skipped, which also bounds the cost on
/// large sets. `captions` holds (pid, caption) pairs; pids are contiguous from 0.
pub fn caption_neighbours(captions: &[(usize, &str)], m: usize) -> Vec<Vec<usize>> {
    let n = captions.iter().map(|c| c.0 + 1).max().unwrap_or(0);
    let mut term_ids: HashMap<String, usize> = HashMap::new();
    let mut counts: Vec<HashMap<usize, f32>> = vec![HashMap::new(); n];
    for &(pid, text) in captions {
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let pairs = words.windows(2).map(|w| format!("{} {}", w[0], w[1]));
        for term in words.iter().cloned().chain(pairs) {
            let next = term_ids.len();
            let t = *term_ids.entry(term).or_insert(next);
            *counts[pid].entry(t).or_insert(0.0) += 1.0;
        }
    }
    let mut df = vec![0usize; term_ids.len()];
    for c in &counts {
        for &t in c.keys() {
            df[t] += 1;
        }
    }
    // Sparse unit vectors (term, weight) per pid, and postings per kept term.
    let mut postings: Vec<Vec<(usize, f32)>> = vec![Vec::new(); df.len()];
    let mut vectors: Vec<Vec<(usize, f32)>> = Vec::with_capacity(n);
    for (pid, c) in counts.iter().enumerate() {
        let mut v: Vec<(usize, f32)> = c
            .iter()
            .filter(|&(&t, _)| 2 * df[t] <= n)
            .map(|(&t, &tf)| (t, tf * ((n as f32) / df[t] as f32).ln()))
            .collect();
        v.sort_by_key(|e| e.0);
        let norm = v.iter().map(|e| e.1 * e.1).sum::<f32>().sqrt();
        if norm > 0.0 {
            for e in &mut v {
                e.1 /= norm;
                postings[e.0].push((pid, e.1));
            }
        }
        vectors.push(v);
    }
    let mut acc = vec![0f32; n];
    let mut out = Vec::with_capacity(n);
    for (pid, v) in vectors.iter().enumerate() {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for &(t, w) in v {
            for &(other, w2) in &postings[t] {
                acc[other] += w * w2;
            }
        }
        let mut order: Vec<usize> = (0..n).filter(|&o| o != pid).collect();
        let key = |o: &usize| (std::cmp::Reverse(ordered(acc[*o])), *o);
        if order.len() > m {
            order.select_nth_unstable_by_key(m, key);
            order.truncate(m);
        }
        order.sort_by_key(key);
        out.push(order);
    }
    out
}

/// A total order key for a non-NaN f32 (similarities are finite).
fn ordered(x: f32) -> i64 {
    (x as f64 * 1e9) as i64
}

impl IdentitySampler {
    /// `pids[i]` is the pid of sample `i` (contiguous from 0).
    pub fn new(
        pids: &[usize],
        identities_per_batch: usize,
        samples_per_identity: usize,
        seed: u64,
    ) -> Result<Self, CoreError> {
        if identities_per_batch == 0 || samples_per_identity == 0 {
            return Err(CoreError::Invalid(
                "batch: identities per batch and samples per identity must be > 0".into(),
            ));
        }
        let n = pids.iter().max().map_or(0, |m| m + 1);
        let mut by_pid = vec![Vec::new(); n];
        for (i, &p) in pids.iter().enumerate() {
            by_pid[p].push(i);
        }
        let present = by_pid.iter().filter(|v| !v.is_empty()).count();
        if present < identities_per_batch {
            return Err(CoreError::Invalid(format!(
                "batch: {identities_per_batch} identities per batch, but the training split has only {present}"
            )));
        }
        Ok(IdentitySampler {
            by_pid,
            identities_per_batch,
            samples_per_identity,
            seed,
            similar: None,
            random_counts: false,
        })
    }

    /// SEN's `idrannum`: every identity's group size is drawn from 1..=K each epoch.
    pub fn with_random_counts(mut self) -> Self {
        self.random_counts = true;
        self
    }

    /// Build batches from groups of `group` alike identities (`neighbours[pid]`,
    /// nearest first, e.g. from [`caption_neighbours`]); `group` 1 keeps random batches.
    pub fn with_similar_groups(
        mut self,
        group: usize,
        neighbours: Vec<Vec<usize>>,
    ) -> Result<Self, CoreError> {
        if group == 0 || group > self.identities_per_batch {
            return Err(CoreError::Invalid(format!(
                "batch: similar-identity groups of {group} must be between 1 and the {} identities per batch",
                self.identities_per_batch
            )));
        }
        if neighbours.len() != self.by_pid.len() {
            return Err(CoreError::Invalid(format!(
                "batch: neighbour lists for {} identities, but the training split has {}",
                neighbours.len(),
                self.by_pid.len()
            )));
        }
        self.similar = (group > 1).then_some((group, neighbours));
        Ok(self)
    }

    pub fn batch_size(&self) -> usize {
        self.identities_per_batch * self.samples_per_identity
    }

    /// The batches of `epoch` (sample indices), deterministic for (seed, epoch).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let rounds = self.rounds(epoch);
        if !self.random_counts {
            return rounds.into_iter().map(|r| r.concat()).collect();
        }
        // idrannum: the rounds' samples in order, cut into full batches of P x K.
        let flat: Vec<usize> = rounds.into_iter().flatten().flatten().collect();
        flat.chunks_exact(self.batch_size())
            .map(|c| c.to_vec())
            .collect()
    }

    /// The rounds of `epoch`: each round P distinct identities, one group each.
    pub fn rounds(&self, epoch: u64) -> Vec<Vec<Vec<usize>>> {
        let mut rng = Rng::derive(self.seed, &[0x5a4d_9e11, epoch]);
        let mut groups: Vec<Vec<Vec<usize>>> = Vec::with_capacity(self.by_pid.len());
        // idrannum's sizes come from their own stream, so the identity sampler's
        // batches stay what they were.
        let mut k_rng = Rng::derive(self.seed, &[0x1d2a_7a11, epoch]);
        for idxs in &self.by_pid {
            let k = if self.random_counts && !idxs.is_empty() {
                1 + k_rng.below(self.samples_per_identity)
            } else {
                self.samples_per_identity
            };
            let mut v = idxs.clone();
            if !v.is_empty() && v.len() < k {
                while v.len() < k {
                    let extra = idxs[rng.below(idxs.len())];
                    v.push(extra);
                }
            }
            rng.shuffle(&mut v);
            // Whole groups of K only (IRRA drops the remainder).
            groups.push(v.chunks_exact(k).map(|c| c.to_vec()).rev().collect());
        }
        let mut avail: Vec<usize> = (0..groups.len())
            .filter(|&p| !groups[p].is_empty())
            .collect();
        let mut batches = Vec::new();
        // pos[pid]: index of pid in `avail` (usize::MAX when it has no groups left).
        let mut pos = vec![usize::MAX; groups.len()];
        while avail.len() >= self.identities_per_batch {
            for (i, &p) in avail.iter().enumerate() {
                pos[p] = i;
            }
            let mut chosen: Vec<usize> = Vec::with_capacity(self.identities_per_batch);
            // Partial Fisher-Yates: chosen pids move to the end region of `avail`.
            fn take(p: usize, chosen: &mut Vec<usize>, avail: &mut [usize], pos: &mut [usize]) {
                let last = avail.len() - 1 - chosen.len();
                let j = pos[p];
                avail.swap(j, last);
                pos[avail[j]] = j;
                pos[p] = last;
                chosen.push(p);
            }
            while chosen.len() < self.identities_per_batch {
                let seed_pid = avail[rng.below(avail.len() - chosen.len())];
                take(seed_pid, &mut chosen, &mut avail, &mut pos);
                if let Some((g, neighbours)) = &self.similar {
                    let mut in_group = 1;
                    for &nb in &neighbours[seed_pid] {
                        if in_group == *g || chosen.len() == self.identities_per_batch {
                            break;
                        }
                        // Available and not yet in this batch.
                        if pos[nb] < avail.len() - chosen.len() {
                            take(nb, &mut chosen, &mut avail, &mut pos);
                            in_group += 1;
                        }
                    }
                }
            }
            let round: Vec<Vec<usize>> = chosen
                .iter()
                .map(|&p| groups[p].pop().expect("available pid has a group"))
                .collect();
            batches.push(round);
            for &p in &chosen {
                pos[p] = usize::MAX;
            }
            avail.retain(|&p| !groups[p].is_empty());
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_p_by_k_and_deterministic() {
        // 10 identities with 2..=6 samples each.
        let mut pids = Vec::new();
        for p in 0..10 {
            pids.extend(std::iter::repeat_n(p, 2 + p % 5));
        }
        let s = IdentitySampler::new(&pids, 4, 2, 7).unwrap();
        let e0 = s.epoch(0);
        assert!(!e0.is_empty());
        for b in &e0 {
            assert_eq!(b.len(), 8);
            let mut ids: Vec<usize> = b.iter().map(|&i| pids[i]).collect();
            // K consecutive samples share an identity; P distinct identities.
            for g in ids.chunks(2) {
                assert_eq!(g[0], g[1]);
            }
            ids.dedup();
            let mut uniq = ids.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), 4);
        }
        assert_eq!(e0, s.epoch(0));
        assert_ne!(e0, s.epoch(1));
        // No sample is used twice in an epoch when every identity has >= K samples.
        let mut all: Vec<usize> = e0.concat();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn caption_neighbours_rank_by_shared_rare_terms() {
        // pid 0 and 2 share "red coat"; 1 and 3 share "green skirt"; "a person" is in
        // all five and "in a" in four (skipped as too common).
        let caps = [
            (0, "A person in a red coat."),
            (1, "A person in a green skirt."),
            (2, "A person in a red coat with a hat."),
            (3, "A person in a green skirt with boots."),
            (4, "A person with a bag."),
        ];
        let nb = caption_neighbours(&caps, 2);
        assert_eq!(nb.len(), 5);
        assert_eq!(nb[0][0], 2);
        assert_eq!(nb[2][0], 0);
        assert_eq!(nb[1][0], 3);
        assert_eq!(nb[3][0], 1);
        assert!(
            nb.iter()
                .enumerate()
                .all(|(p, v)| v.len() == 2 && !v.contains(&p))
        );
    }

    #[test]
    fn similar_groups_put_neighbours_together() {
        // 12 identities x 2 samples; neighbours pair 2i with 2i+1.
        let pids: Vec<usize> = (0..12).flat_map(|p| [p, p]).collect();
        let neighbours: Vec<Vec<usize>> = (0..12).map(|p| vec![p ^ 1]).collect();
        let s = IdentitySampler::new(&pids, 4, 2, 3)
            .unwrap()
            .with_similar_groups(2, neighbours.clone())
            .unwrap();
        let e = s.epoch(0);
        assert_eq!(e.len(), 3);
        for b in &e {
            let mut ids: Vec<usize> = b.iter().map(|&i| pids[i]).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 4, "{b:?}");
            for &p in &ids {
                assert!(
                    ids.contains(&(p ^ 1)),
                    "{p} without its neighbour in {ids:?}"
                );
            }
        }
        let mut all = e.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 24);
        // G = 1 is exactly the random sampler.
        let plain = IdentitySampler::new(&pids, 4, 2, 3).unwrap();
        let g1 = plain
            .clone()
            .with_similar_groups(1, neighbours.clone())
            .unwrap();
        assert_eq!(plain.epoch(5), g1.epoch(5));
        assert!(plain.clone().with_similar_groups(5, neighbours).is_err());
    }

    #[test]
    fn identity_with_one_sample_is_topped_up_and_too_few_identities_refused() {
        let pids = [0, 1, 1, 2, 2];
        let s = IdentitySampler::new(&pids, 3, 2, 1).unwrap();
        let b = &s.epoch(0)[0];
        assert_eq!(b.len(), 6);
        assert!(b.iter().filter(|&&i| i == 0).count() == 2, "{b:?}");
        assert!(
            IdentitySampler::new(&pids, 4, 2, 1)
                .unwrap_err()
                .to_string()
                .contains("only 3")
        );
    }

    /// SEN's `idrannum`: within an epoch every identity gives groups of one size,
    /// 1 or 2; both sizes occur; every batch is full; epochs differ; the identity
    /// sampler is unchanged by the option's existence.
    #[test]
    fn idrannum_draws_one_or_two_per_identity_and_fills_batches() {
        // 40 identities with 2..=5 samples each.
        let mut pids = Vec::new();
        for p in 0..40 {
            pids.extend(std::iter::repeat_n(p, 2 + p % 4));
        }
        let s = IdentitySampler::new(&pids, 8, 2, 11)
            .unwrap()
            .with_random_counts();
        for epoch in 0..3 {
            let rounds = s.rounds(epoch);
            let mut size_of: HashMap<usize, usize> = HashMap::new();
            let mut sizes_seen = [false; 3];
            for round in &rounds {
                let mut ids: Vec<usize> = round.iter().map(|g| pids[g[0]]).collect();
                ids.sort();
                ids.dedup();
                assert_eq!(ids.len(), 8, "a round takes 8 distinct identities");
                for g in round {
                    let p = pids[g[0]];
                    assert!(g.iter().all(|&i| pids[i] == p), "a group mixes identities");
                    assert!(g.len() == 1 || g.len() == 2, "group of {}", g.len());
                    sizes_seen[g.len()] = true;
                    assert_eq!(
                        *size_of.entry(p).or_insert(g.len()),
                        g.len(),
                        "identity {p} gave groups of two sizes in epoch {epoch}"
                    );
                }
            }
            assert!(
                sizes_seen[1] && sizes_seen[2],
                "epoch {epoch}: {sizes_seen:?}"
            );
            let batches = s.epoch(epoch);
            assert!(!batches.is_empty());
            assert!(batches.iter().all(|b| b.len() == 16), "batches are full");
            // The batches are the rounds' samples in order, cut at 16.
            let flat: Vec<usize> = rounds.into_iter().flatten().flatten().collect();
            assert_eq!(batches.concat(), flat[..batches.len() * 16]);
            assert!(flat.len() - batches.len() * 16 < 16);
        }
        assert_ne!(s.epoch(0), s.epoch(1));
        assert_eq!(s.epoch(2), s.epoch(2));
        let plain = IdentitySampler::new(&pids, 8, 2, 11).unwrap();
        assert!(plain.epoch(0).iter().flatten().count().is_multiple_of(16));
        assert_ne!(plain.epoch(0), s.epoch(0));
    }
}
