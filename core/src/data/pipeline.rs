//! The training data pipeline (no libtorch): identity-balanced batches, decoded and
//! augmented on worker threads ahead of the trainer, captions pruned with
//! probability `prune_prob` and tokenised. Deterministic under a seed: every random
//! choice for a sample is drawn from a generator keyed by (seed, epoch, batch,
//! position), so the output does not depend on how threads are scheduled.
//!
//! Augmentation (SPEC §3, IRRA's order): resize -> horizontal flip (p = 0.5) ->
//! pad 10 (black) and random crop back -> normalise -> random erasing (p = 0.5,
//! area 0.02-0.4, aspect 0.3-3.3, filled with the mean colour, i.e. 0 after
//! normalisation; IRRA writes the raw mean numbers into the normalised tensor,
//! which is a different grey — see docs/decisions.md).

use super::TrainSet;
use super::sampler::{IdentitySampler, SamplerKind, caption_neighbours};
use crate::error::CoreError;
use crate::preprocess::{PreprocessSpec, Preprocessor, Rgb8, load_rgb8};
use crate::rng::Rng;
use crate::tokenizer::ClipTokenizer;
use ndarray::{Array2, Array4, ArrayViewMut3, Axis};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// P: identities per batch.
    pub identities_per_batch: usize,
    /// K: samples per identity.
    pub samples_per_identity: usize,
    /// Flip, pad-and-crop, random erasing.
    pub augment: bool,
    /// Probability of replacing a caption by its pruned form (SPEC §4: 0.2).
    pub prune_prob: f64,
    /// Decoding/augmentation threads.
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    pub seed: u64,
    /// Keep resized images in memory after their first decode (small datasets).
    pub cache_images: bool,
    /// G > 1: batches from groups of G identities with alike training captions
    /// (hard in-batch negatives, see `sampler`); 1: IRRA's random identities.
    pub similar_ids: usize,
    /// IRRA's identity sampler or SEN's idrannum (see `sampler`).
    pub sampler: SamplerKind,
}

impl Default for PipelineConfig {
    /// SPEC §5's batch: 64 identities x 2 = 128, augmentation on, pruning 0.2, IRRA's
    /// identity sampler (`sen-train`'s reference recipe picks idrannum itself).
    fn default() -> Self {
        PipelineConfig {
            identities_per_batch: 64,
            samples_per_identity: 2,
            augment: true,
            prune_prob: 0.2,
            workers: 2,
            prefetch: 2,
            seed: 42,
            cache_images: false,
            similar_ids: 1,
            sampler: SamplerKind::Identity,
        }
    }
}

/// One training batch.
#[derive(Debug, Clone)]
pub struct Batch {
    pub epoch: u64,
    pub index: usize,
    /// `[B, 3, H, W]` normalised images.
    pub images: Array4<f32>,
    /// `[B, context]` token ids.
    pub input_ids: Array2<i64>,
    pub eot_index: Vec<i64>,
    /// Contiguous training pids.
    pub pids: Vec<i64>,
    /// Indices into `TrainSet::samples`.
    pub samples: Vec<usize>,
    /// Which captions were pruned.
    pub pruned: Vec<bool>,
}

struct Inner {
    set: TrainSet,
    sampler: IdentitySampler,
    pre: Preprocessor,
    tok: ClipTokenizer,
    cfg: PipelineConfig,
    cache: Vec<OnceLock<Arc<Rgb8>>>,
}

/// The pipeline; cheap to clone (shared state).
#[derive(Clone)]
pub struct TrainPipeline {
    inner: Arc<Inner>,
}

impl TrainPipeline {
    pub fn new(
        set: TrainSet,
        spec: PreprocessSpec,
        tok: ClipTokenizer,
        cfg: PipelineConfig,
    ) -> Result<Self, CoreError> {
        if cfg.workers == 0 || cfg.prefetch == 0 {
            return Err(CoreError::Invalid(
                "pipeline: workers and prefetch must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&cfg.prune_prob) {
            return Err(CoreError::Invalid(format!(
                "pipeline: prune probability {} is not in [0, 1]",
                cfg.prune_prob
            )));
        }
        let pids: Vec<usize> = set.samples.iter().map(|s| s.pid).collect();
        let mut sampler = IdentitySampler::new(
            &pids,
            cfg.identities_per_batch,
            cfg.samples_per_identity,
            cfg.seed,
        )?;
        if cfg.sampler == SamplerKind::Idrannum {
            if cfg.similar_ids > 1 {
                return Err(CoreError::Invalid(
                    "pipeline: similar-identity groups need the identity sampler (idrannum cuts batches across its rounds)".into(),
                ));
            }
            sampler = sampler.with_random_counts();
        }
        if cfg.similar_ids > 1 {
            let captions: Vec<(usize, &str)> = set
                .samples
                .iter()
                .map(|s| (s.pid, s.caption.as_str()))
                .collect();
            // A few spare neighbours per identity: some are used up late in an epoch.
            let neighbours = caption_neighbours(&captions, 4 * cfg.similar_ids);
            sampler = sampler.with_similar_groups(cfg.similar_ids, neighbours)?;
        } else if cfg.similar_ids == 0 {
            return Err(CoreError::Invalid(
                "pipeline: similar-identity groups must be at least 1 (1 = random identities)"
                    .into(),
            ));
        }
        let cache = (0..set.images.len()).map(|_| OnceLock::new()).collect();
        Ok(TrainPipeline {
            inner: Arc::new(Inner {
                set,
                sampler,
                pre: Preprocessor::new(spec)?,
                tok,
                cfg,
                cache,
            }),
        })
    }

    pub fn train_set(&self) -> &TrainSet {
        &self.inner.set
    }

    pub fn batch_size(&self) -> usize {
        self.inner.sampler.batch_size()
    }

    /// With `cache_images`, decode and resize every training image into the cache
    /// now, in parallel (otherwise the first epoch fills it as it goes).
    pub fn fill_cache(&self) -> Result<(), CoreError> {
        use rayon::prelude::*;
        if !self.inner.cfg.cache_images {
            return Ok(());
        }
        (0..self.inner.set.images.len())
            .into_par_iter()
            .try_for_each(|i| self.inner.image(i).map(|_| ()))
    }

    /// Bytes the image cache holds once full: every training image resized to the
    /// model's input, 3 bytes a pixel.
    pub fn cache_bytes(set: &TrainSet, spec: &PreprocessSpec) -> u64 {
        set.images.len() as u64 * spec.height as u64 * spec.width as u64 * 3
    }

    /// The sample indices of every batch of `epoch`.
    pub fn plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        self.inner.sampler.epoch(epoch)
    }

    /// Build one batch on the calling thread.
    pub fn make_batch(
        &self,
        epoch: u64,
        index: usize,
        samples: &[usize],
    ) -> Result<Batch, CoreError> {
        self.inner.make_batch(epoch, index, samples)
    }

    /// The batches of `epoch`, prepared by worker threads, in order.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch index `first` on (resuming mid-epoch);
    /// batch `i` is identical to what [`TrainPipeline::epoch`] yields at index `i`.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> EpochIter {
        let plan = Arc::new(self.plan(epoch));
        let total = plan.len();
        let (tx, rx) = sync_channel(self.inner.cfg.prefetch);
        let first = first.min(total);
        let next = Arc::new(AtomicUsize::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..self.inner.cfg.workers.min(total.max(1)))
            .map(|w| {
                let (inner, plan, next, stop, tx): (Arc<Inner>, _, _, _, SyncSender<_>) = (
                    self.inner.clone(),
                    plan.clone(),
                    next.clone(),
                    stop.clone(),
                    tx.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("sen-data-{w}"))
                    .spawn(move || {
                        loop {
                            let b = next.fetch_add(1, Ordering::Relaxed);
                            if b >= total || stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let res = inner.make_batch(epoch, b, &plan[b]);
                            if tx.send((b, res)).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawn data worker")
            })
            .collect();
        EpochIter {
            rx,
            pending: BTreeMap::new(),
            next: first,
            total,
            stop,
            workers,
        }
    }
}

impl Inner {
    fn image(&self, idx: usize) -> Result<Arc<Rgb8>, CoreError> {
        let load = || -> Result<Arc<Rgb8>, CoreError> {
            Ok(Arc::new(
                self.pre.resize(&load_rgb8(&self.set.images[idx])?),
            ))
        };
        if !self.cfg.cache_images {
            return load();
        }
        if let Some(img) = self.cache[idx].get() {
            return Ok(img.clone());
        }
        let img = load()?;
        Ok(self.cache[idx].get_or_init(|| img).clone())
    }

    fn make_batch(&self, epoch: u64, index: usize, samples: &[usize]) -> Result<Batch, CoreError> {
        let spec = self.pre.spec();
        let (h, w, n) = (spec.height, spec.width, samples.len());
        let ctx = self.tok.context_length();
        let mut images = Array4::<f32>::zeros((n, 3, h, w));
        let mut input_ids = Array2::<i64>::zeros((n, ctx));
        let mut eot_index = Vec::with_capacity(n);
        let mut pruned = Vec::with_capacity(n);
        for (pos, (&si, mut slot)) in samples
            .iter()
            .zip(images.axis_iter_mut(Axis(0)))
            .enumerate()
        {
            let s = &self.set.samples[si];
            let mut rng = Rng::derive(self.cfg.seed, &[epoch, index as u64, pos as u64]);
            let img = self.image(s.image)?;
            if self.cfg.augment {
                let aug = pad_crop(&flip_maybe(&img, &mut rng), crop_pad(w), &mut rng);
                self.pre.normalize_into(&aug, slot.view_mut());
                random_erase(slot.view_mut(), &mut rng);
            } else {
                self.pre.normalize_into(&img, slot.view_mut());
            }
            let prune = rng.chance(self.cfg.prune_prob);
            let caption = if prune {
                crate::text::prune(&s.caption)
            } else {
                s.caption.clone()
            };
            let enc = self.tok.encode(&caption)?;
            input_ids
                .row_mut(pos)
                .assign(&ndarray::ArrayView1::from(&enc.ids[..]));
            eot_index.push(enc.eot_index as i64);
            pruned.push(prune);
        }
        Ok(Batch {
            epoch,
            index,
            images,
            input_ids,
            eot_index,
            pids: samples
                .iter()
                .map(|&i| self.set.samples[i].pid as i64)
                .collect(),
            samples: samples.to_vec(),
            pruned,
        })
    }
}

/// Iterator over one epoch's batches; dropping it stops the workers.
pub struct EpochIter {
    rx: Receiver<(usize, Result<Batch, CoreError>)>,
    pending: BTreeMap<usize, Result<Batch, CoreError>>,
    next: usize,
    total: usize,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl EpochIter {
    pub fn len(&self) -> usize {
        self.total
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch, CoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                return Some(b);
            }
            match self.rx.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => {
                    self.next = self.total;
                    return Some(Err(CoreError::Invalid(
                        "data workers stopped unexpectedly".into(),
                    )));
                }
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock workers waiting on a full channel, then join them.
        while self.rx.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            while !w.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = w.join();
        }
    }
}

/// Horizontal flip with probability 0.5.
pub fn flip_maybe(img: &Rgb8, rng: &mut Rng) -> Rgb8 {
    if !rng.chance(0.5) {
        return img.clone();
    }
    let mut out = img.clone();
    for (orow, irow) in out
        .data
        .chunks_exact_mut(img.width * 3)
        .zip(img.data.chunks_exact(img.width * 3))
    {
        for x in 0..img.width {
            orow[x * 3..x * 3 + 3]
                .copy_from_slice(&irow[(img.width - 1 - x) * 3..(img.width - x) * 3]);
        }
    }
    out
}

/// SPEC §3 pads by 10 pixels at vit-b16's width of 128; other input sizes (the tiny
/// preset's 16) pad by the same fraction of the width, at least one pixel.
pub fn crop_pad(width: usize) -> usize {
    ((10 * width) as f64 / 128.0).round().max(1.0) as usize
}

/// Pad by `pad` black pixels on every side, then crop a random window of the original size.
pub fn pad_crop(img: &Rgb8, pad: usize, rng: &mut Rng) -> Rgb8 {
    let (w, h) = (img.width, img.height);
    let ox = rng.below(2 * pad + 1) as isize - pad as isize;
    let oy = rng.below(2 * pad + 1) as isize - pad as isize;
    let mut out = Rgb8 {
        width: w,
        height: h,
        data: vec![0; w * h * 3],
    };
    for y in 0..h {
        let sy = y as isize + oy;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        let x0 = (-ox).max(0) as usize;
        let x1 = (w as isize - ox).min(w as isize).max(0) as usize;
        if x0 >= x1 {
            continue;
        }
        let src = &img.data[(sy as usize * w + (x0 as isize + ox) as usize) * 3
            ..(sy as usize * w + (x1 as isize + ox) as usize) * 3];
        out.data[(y * w + x0) * 3..(y * w + x1) * 3].copy_from_slice(src);
    }
    out
}

/// torchvision's `RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3))` on a
/// normalised `[3, H, W]` image, filling with 0 (the mean colour).
pub fn random_erase(mut img: ArrayViewMut3<f32>, rng: &mut Rng) -> bool {
    if !rng.chance(0.5) {
        return false;
    }
    let (h, w) = (img.shape()[1], img.shape()[2]);
    let area = (h * w) as f64;
    let (lo, hi) = (0.3f64.ln(), 3.3f64.ln());
    for _ in 0..10 {
        let target = area * rng.range(0.02, 0.4);
        let aspect = rng.range(lo, hi).exp();
        let eh = (target * aspect).sqrt().round() as usize;
        let ew = (target / aspect).sqrt().round() as usize;
        if eh == 0 || ew == 0 || eh >= h || ew >= w {
            continue;
        }
        let y = rng.below(h - eh + 1);
        let x = rng.below(w - ew + 1);
        img.slice_mut(ndarray::s![.., y..y + eh, x..x + ew])
            .fill(0.0);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize) -> Rgb8 {
        let data = (0..w * h)
            .flat_map(|i| [(i % 251) as u8, (i / w) as u8, 7])
            .collect();
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn crop_pad_is_spec_at_128_and_scales_with_the_width() {
        // SPEC §3: 10 pixels at 384x128; 64 wide -> 5; 16 wide -> 1.25 -> 1; never 0.
        assert_eq!(crop_pad(128), 10);
        assert_eq!(crop_pad(64), 5);
        assert_eq!(crop_pad(16), 1);
        assert_eq!(crop_pad(4), 1);
    }

    #[test]
    fn flip_mirrors_rows() {
        let a = img(5, 3);
        let mut rng = Rng::new(0);
        let f = (0..20)
            .map(|_| flip_maybe(&a, &mut rng))
            .find(|f| *f != a)
            .unwrap();
        for y in 0..3 {
            for x in 0..5 {
                assert_eq!(f.data[(y * 5 + x) * 3], a.data[(y * 5 + 4 - x) * 3]);
            }
        }
    }

    #[test]
    fn pad_crop_shifts_with_black_border() {
        let a = img(20, 30);
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let c = pad_crop(&a, 10, &mut rng);
            assert_eq!((c.width, c.height), (20, 30));
            // Every pixel is either black padding or a pixel of the source shifted by one offset.
            let first_src = c.data.chunks_exact(3).position(|p| p != [0, 0, 0]);
            assert!(first_src.is_some());
        }
        // Offsets cover the whole [-10, 10] range.
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = Rng::new(9);
        for _ in 0..2000 {
            seen.insert(rng.below(21));
        }
        assert_eq!(seen.len(), 21);
    }

    #[test]
    fn erasing_area_within_bounds() {
        let mut rng = Rng::new(5);
        let mut erased = 0;
        for _ in 0..200 {
            let mut t = ndarray::Array3::<f32>::ones((3, 96, 32));
            if random_erase(t.view_mut(), &mut rng) {
                erased += 1;
                let zeros = t.iter().filter(|&&v| v == 0.0).count() as f64 / 3.0;
                let frac = zeros / (96.0 * 32.0);
                assert!((0.015..0.45).contains(&frac), "{frac}");
            }
        }
        assert!((60..140).contains(&erased), "p = 0.5: {erased}/200");
    }
}
