//! The identity-balanced batch sampler of SPEC §5 (IRRA's `RandomIdentitySampler`):
//! batches of P identities x K samples, so every batch has positives for the SDM
//! and triplet losses.
//!
//! Per epoch: each identity's samples are shuffled and cut into groups of K (an
//! identity with fewer than K samples is topped up by drawing again from its own);
//! then batches repeatedly take P distinct identities at random among those with
//! groups left, one group each, until fewer than P identities have groups left.

use crate::error::CoreError;
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct IdentitySampler {
    /// Sample indices per pid.
    by_pid: Vec<Vec<usize>>,
    pub identities_per_batch: usize,
    pub samples_per_identity: usize,
    seed: u64,
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
        })
    }

    pub fn batch_size(&self) -> usize {
        self.identities_per_batch * self.samples_per_identity
    }

    /// The batches of `epoch` (sample indices), deterministic for (seed, epoch).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let k = self.samples_per_identity;
        let mut rng = Rng::derive(self.seed, &[0x5a4d_9e11, epoch]);
        let mut groups: Vec<Vec<Vec<usize>>> = Vec::with_capacity(self.by_pid.len());
        for idxs in &self.by_pid {
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
        while avail.len() >= self.identities_per_batch {
            let mut chosen = Vec::with_capacity(self.identities_per_batch);
            for _ in 0..self.identities_per_batch {
                let j = rng.below(avail.len() - chosen.len());
                // Partial Fisher-Yates: move the chosen pid to the end region.
                let last = avail.len() - 1 - chosen.len();
                avail.swap(j, last);
                chosen.push(avail[last]);
            }
            let mut batch = Vec::with_capacity(self.batch_size());
            for &p in &chosen {
                batch.extend(groups[p].pop().expect("available pid has a group"));
            }
            batches.push(batch);
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
}
