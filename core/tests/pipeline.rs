//! The training data pipeline on a small synthetic benchmark.

use sen_core::data::Dataset;
use sen_core::data::pipeline::{PipelineConfig, TrainPipeline};
use sen_core::synth::{SynthConfig, generate};
use sen_core::{ClipTokenizer, ModelConfig, PreprocessSpec, Preprocessor};

fn pipeline(root: &std::path::Path, cfg: PipelineConfig) -> TrainPipeline {
    let set = Dataset::load(root, None).unwrap().train_set().unwrap();
    let tok =
        ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path().unwrap(), 77).unwrap();
    TrainPipeline::new(
        set,
        PreprocessSpec::for_model(&ModelConfig::tiny()),
        tok,
        cfg,
    )
    .unwrap()
}

#[test]
fn batches_are_deterministic_balanced_and_augmented() {
    let d = tempfile::tempdir().unwrap();
    generate(
        d.path(),
        &SynthConfig {
            ids: 26,
            images_per_id: 2,
            seed: 1,
        },
    )
    .unwrap();
    let cfg = PipelineConfig {
        identities_per_batch: 4,
        samples_per_identity: 2,
        workers: 2,
        seed: 9,
        ..Default::default()
    };
    let p = pipeline(d.path(), cfg.clone());
    let batches: Vec<_> = p.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), p.plan(0).len());
    assert!(
        batches.len() >= 8,
        "20 identities x 4 samples / 8 per batch"
    );
    for (i, b) in batches.iter().enumerate() {
        assert_eq!(b.index, i, "in order");
        assert_eq!(b.images.shape(), &[8, 3, 48, 16]);
        assert_eq!(b.input_ids.shape(), &[8, 77]);
        for (row, &eot) in b.input_ids.rows().into_iter().zip(&b.eot_index) {
            assert_eq!(row[0], 49406);
            assert_eq!(row[eot as usize], 49407);
        }
        for pair in b.pids.chunks(2) {
            assert_eq!(pair[0], pair[1], "K = 2 samples per identity");
        }
    }
    // Same seed, one worker instead of two: identical output.
    let p1 = pipeline(
        d.path(),
        PipelineConfig {
            workers: 1,
            ..cfg.clone()
        },
    );
    for (a, b) in p1.epoch(0).zip(&batches) {
        let a = a.unwrap();
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.images, b.images);
        assert_eq!(a.input_ids, b.input_ids);
    }
    // Another epoch: another order.
    assert_ne!(p.plan(1), p.plan(0));

    // Without augmentation, images are exactly the preprocessing of the file.
    let plain = pipeline(
        d.path(),
        PipelineConfig {
            augment: false,
            prune_prob: 0.0,
            ..cfg.clone()
        },
    );
    let b = plain.epoch(0).next().unwrap().unwrap();
    let pre = Preprocessor::for_model(&ModelConfig::tiny());
    let s = &plain.train_set().samples[b.samples[0]];
    let want = pre.load(&plain.train_set().images[s.image]).unwrap();
    assert_eq!(b.images.index_axis(ndarray::Axis(0), 0), want);
    assert!(b.pruned.iter().all(|&x| !x));
    // With augmentation the same sample differs (flip / crop / erase).
    let aug = pipeline(d.path(), cfg.clone());
    let ba = aug.epoch(0).next().unwrap().unwrap();
    assert_ne!(ba.images, b.images);

    // Pruning rate ~0.2, and pruned captions are shorter.
    let total: usize = batches.iter().map(|b| b.pruned.len()).sum();
    let pruned: usize = batches
        .iter()
        .map(|b| b.pruned.iter().filter(|&&x| x).count())
        .sum();
    let rate = pruned as f64 / total as f64;
    assert!(
        (0.08..0.35).contains(&rate),
        "prune rate {rate} over {total}"
    );
    for b in &batches {
        for (k, &was) in b.pruned.iter().enumerate() {
            if was {
                let full = p.train_set().samples[b.samples[k]]
                    .caption
                    .split_whitespace()
                    .count();
                assert!(
                    (b.eot_index[k] as usize) < full + 2,
                    "pruned caption is shorter"
                );
            }
        }
    }
}

#[test]
fn dropping_an_epoch_early_stops_workers() {
    let d = tempfile::tempdir().unwrap();
    generate(
        d.path(),
        &SynthConfig {
            ids: 26,
            images_per_id: 2,
            seed: 2,
        },
    )
    .unwrap();
    let p = pipeline(
        d.path(),
        PipelineConfig {
            identities_per_batch: 2,
            samples_per_identity: 2,
            prefetch: 1,
            ..Default::default()
        },
    );
    let mut it = p.epoch(0);
    assert!(it.next().unwrap().is_ok());
    drop(it); // must not hang
}

#[test]
fn unreadable_image_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    generate(
        d.path(),
        &SynthConfig {
            ids: 13,
            images_per_id: 2,
            seed: 3,
        },
    )
    .unwrap();
    let p = pipeline(
        d.path(),
        PipelineConfig {
            identities_per_batch: 2,
            samples_per_identity: 2,
            ..Default::default()
        },
    );
    for img in &p.train_set().images {
        std::fs::write(img, b"not a jpeg").unwrap();
    }
    let e = p.epoch(0).next().unwrap().unwrap_err().to_string();
    assert!(e.contains(".jpg"), "{e}");
}

#[test]
fn epoch_from_skips_batches_and_matches() {
    let d = tempfile::tempdir().unwrap();
    generate(
        d.path(),
        &SynthConfig {
            ids: 26,
            images_per_id: 2,
            seed: 1,
        },
    )
    .unwrap();
    let cfg = PipelineConfig {
        identities_per_batch: 4,
        samples_per_identity: 2,
        seed: 9,
        ..Default::default()
    };
    let p = pipeline(d.path(), cfg);
    let all: Vec<_> = p.epoch(0).map(|b| b.unwrap()).collect();
    let tail: Vec<_> = p.epoch_from(0, 2).map(|b| b.unwrap()).collect();
    assert_eq!(tail.len(), all.len() - 2);
    for (a, b) in all[2..].iter().zip(&tail) {
        assert_eq!(a.index, b.index);
        assert_eq!(a.images, b.images);
        assert_eq!(a.input_ids, b.input_ids);
    }
    assert_eq!(p.epoch_from(0, all.len()).count(), 0);
}
