//! The calibration data and the range-collection pass.
//!
//! Images go through `sen-core`'s [`Preprocessor`] built from the bundle's manifest and
//! captions through the bundle's own `tokenizer.json` — the code serving runs — so
//! the ranges are those of what the encoders will see (SPEC §9's number-one bug).
//! Each encoder runs once over its data in batches, with every tensor to be
//! quantised added as a graph output; each batch is folded into fixed-size
//! statistics and dropped, so memory is bounded by one batch whatever `--samples` is.

use crate::CalibrateError;
use crate::model::Plan;
use crate::stats::TensorStats;
use ndarray::{Array1, Array2, Array4};
use ort::session::Session;
use ort::value::TensorRef;
use rayon::prelude::*;
use sen_core::data::{Dataset, Split};
use sen_core::manifest::EncoderIo;
use sen_core::rng::Rng;
use sen_core::{ClipTokenizer, Preprocessor};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the encoders are calibrated on.
#[derive(Debug, Clone)]
pub struct CalibrationData {
    pub split: Split,
    pub images: Vec<PathBuf>,
    pub captions: Vec<String>,
    /// sha256 over every image's path (relative to the dataset) and content sha256,
    /// and every caption, in order: recorded in the int8 manifest.
    pub sha256: String,
    /// Decisions to report (fewer samples than asked).
    pub notes: Vec<String>,
}

/// Pick `samples` images of `split` (a seeded shuffle, so a rerun picks the same) and
/// `samples` captions of those images. Fewer available than asked: all of them, logged.
pub fn select(
    ds: &Dataset,
    split: Split,
    samples: usize,
    seed: u64,
) -> Result<CalibrationData, CalibrateError> {
    if samples == 0 {
        return Err(CalibrateError::Input("--samples must be at least 1".into()));
    }
    let set = ds.eval_set(split)?; // refuses missing files, listing them
    let records: Vec<_> = ds.split(split).collect();
    let mut order: Vec<usize> = (0..records.len()).collect();
    Rng::new(seed).shuffle(&mut order);
    let mut notes = vec![];
    if records.len() < samples {
        let msg = format!(
            "the {} split has {} images, fewer than --samples {samples}: calibrating on all {}",
            split.name(),
            records.len(),
            records.len()
        );
        tracing::warn!("{msg}");
        notes.push(msg);
    }
    order.truncate(samples);
    let images: Vec<PathBuf> = order.iter().map(|&i| set.images[i].clone()).collect();
    let mut captions: Vec<String> = vec![];
    // Round-robin over the chosen images' captions: every image contributes before any
    // contributes a second one.
    let most = order
        .iter()
        .map(|&i| records[i].captions.len())
        .max()
        .unwrap_or(0);
    'outer: for k in 0..most {
        for &i in &order {
            if let Some(c) = records[i].captions.get(k) {
                captions.push(c.clone());
                if captions.len() == samples {
                    break 'outer;
                }
            }
        }
    }
    if captions.len() < samples {
        let msg = format!(
            "the chosen images have {} captions, fewer than --samples {samples}: calibrating the text encoder on all {}",
            captions.len(),
            captions.len()
        );
        tracing::warn!("{msg}");
        notes.push(msg);
    }
    if captions.is_empty() {
        return Err(CalibrateError::Input(format!(
            "the {} split has no captions to calibrate the text encoder with",
            split.name()
        )));
    }
    let mut h = Sha256::new();
    for &i in &order {
        let path = &set.images[i];
        let (digest, _) = sen_core::hash::sha256_file(path)?;
        h.update(format!("image {} {digest}\n", records[i].image).as_bytes());
    }
    for c in &captions {
        h.update(format!("caption {}\n", c.replace('\n', " ")).as_bytes());
    }
    Ok(CalibrationData {
        split,
        images,
        captions,
        sha256: hex::encode(h.finalize()),
        notes,
    })
}

/// Statistics of every activation of `plan`, by tensor name.
pub type Collected = BTreeMap<String, TensorStats>;

fn fold(
    stats: &mut [TensorStats],
    names: &[String],
    values: Vec<&[f32]>,
    batch_no: usize,
    model: &str,
) -> Result<(), CalibrateError> {
    stats
        .par_iter_mut()
        .zip(values)
        .zip(names)
        .try_for_each(|((s, v), name)| {
            s.add(v).map_err(|why| {
                CalibrateError::Input(format!(
                    "{model}: tensor {name} {why} on calibration batch {batch_no}: the fp32 model overflows on this data"
                ))
            })
        })
}

/// Run `session` (the augmented model) over batches and fold each activation's values.
/// `feed` makes batch `k`'s inputs; `input_values` picks the activations that are
/// graph inputs out of the fed arrays.
fn run_batches(
    session: &mut Session,
    model: &str,
    plan: &Plan,
    bins: usize,
    batches: usize,
    mut feed: impl FnMut(usize) -> Result<Feed, CalibrateError>,
    mut progress: impl FnMut(usize),
) -> Result<Collected, CalibrateError> {
    let names = plan.activations();
    let mut stats: Vec<TensorStats> = names.iter().map(|_| TensorStats::new(bins)).collect();
    for k in 0..batches {
        let f = feed(k)?;
        let n = f.rows;
        let outputs = match &f.kind {
            FeedKind::Image(px) => {
                let t = TensorRef::from_array_view(px.view()).map_err(|e| ort_err(model, e))?;
                session.run(ort::inputs![f.names[0].as_str() => t])
            }
            FeedKind::Text(ids, eot) => {
                let a = TensorRef::from_array_view(ids.view()).map_err(|e| ort_err(model, e))?;
                let b = TensorRef::from_array_view(eot.view()).map_err(|e| ort_err(model, e))?;
                session.run(ort::inputs![f.names[0].as_str() => a, f.names[1].as_str() => b])
            }
        }
        .map_err(|e| ort_err(model, e))?;
        let mut values: Vec<&[f32]> = Vec::with_capacity(names.len());
        for name in &names {
            if let (FeedKind::Image(px), true) = (&f.kind, name == &f.names[0]) {
                values.push(px.as_slice().expect("standard layout"));
                continue;
            }
            let v = outputs.get(name.as_str()).ok_or_else(|| {
                CalibrateError::Input(format!(
                    "{model}: tensor {name} is neither an output nor a float input of the graph"
                ))
            })?;
            let (_, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| ort_err(model, format!("tensor {name}: {e}")))?;
            values.push(data);
        }
        fold(&mut stats, &names, values, k, model)?;
        progress(n);
    }
    Ok(names.into_iter().zip(stats).collect())
}

fn ort_err(model: &str, e: impl std::fmt::Display) -> CalibrateError {
    CalibrateError::Input(format!("{model}: ONNX Runtime: {e}"))
}

enum FeedKind {
    Image(Array4<f32>),
    Text(Array2<i64>, Array1<i64>),
}

struct Feed {
    names: Vec<String>,
    rows: usize,
    kind: FeedKind,
}

/// Collect the image encoder's activations over `images`.
#[allow(clippy::too_many_arguments)]
pub fn collect_image(
    session: &mut Session,
    io: &EncoderIo,
    plan: &Plan,
    pre: &Preprocessor,
    images: &[PathBuf],
    batch: usize,
    bins: usize,
    progress: impl FnMut(usize),
) -> Result<Collected, CalibrateError> {
    let chunks: Vec<&[PathBuf]> = images.chunks(batch.max(1)).collect();
    let input = io.inputs[0].name.clone();
    run_batches(
        session,
        &io.file,
        plan,
        bins,
        chunks.len(),
        |k| {
            let px = pre.load_batch(chunks[k]).map_err(|e| {
                CalibrateError::Input(format!(
                    "calibration image unreadable: {e} (fix or remove it from the dataset)"
                ))
            })?;
            Ok(Feed {
                names: vec![input.clone()],
                rows: chunks[k].len(),
                kind: FeedKind::Image(px),
            })
        },
        progress,
    )
}

/// Collect the text encoder's activations over `captions`.
#[allow(clippy::too_many_arguments)]
pub fn collect_text(
    session: &mut Session,
    io: &EncoderIo,
    plan: &Plan,
    tok: &ClipTokenizer,
    captions: &[String],
    batch: usize,
    bins: usize,
    progress: impl FnMut(usize),
) -> Result<Collected, CalibrateError> {
    let chunks: Vec<&[String]> = captions.chunks(batch.max(1)).collect();
    let names = vec![io.inputs[0].name.clone(), io.inputs[1].name.clone()];
    // A format-2 encoder is served batches cut to their last EOT + 1: collect over
    // those lengths, so padding that serving never computes does not set ranges.
    let dynamic = io.has_dynamic_sequence();
    run_batches(
        session,
        &io.file,
        plan,
        bins,
        chunks.len(),
        |k| {
            let (mut ids, eot) = tok.encode_arrays(chunks[k])?;
            if dynamic {
                let len = eot.iter().copied().max().unwrap_or(0) as usize + 1;
                ids = ids.slice(ndarray::s![.., ..len]).to_owned();
            }
            Ok(Feed {
                names: names.clone(),
                rows: eot.len(),
                kind: FeedKind::Text(ids, eot),
            })
        },
        progress,
    )
}
