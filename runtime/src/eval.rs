//! `sen eval`: a bundle's text-to-image metrics on a dataset split (SPEC §7).
//!
//! Queries are every caption of the split, the gallery every image, similarity the
//! inner product of the bundle's unit embeddings; metrics come from `sen-core`
//! (the one copy training's evaluation also calls), so on the same checkpoint the
//! two differ only by ONNX Runtime's arithmetic against libtorch's.

use crate::encoders::Encoders;
use crate::error::RuntimeError;
use ndarray::Array2;
use sen_core::data::{Dataset, Split};
use sen_core::metrics::RetrievalMetrics;
use std::path::Path;
use std::time::Instant;

#[derive(Debug)]
pub struct EvalOutput {
    pub metrics: RetrievalMetrics,
    pub image_embeds: Array2<f32>,
    pub text_embeds: Array2<f32>,
    pub image_pids: Vec<i64>,
    pub text_pids: Vec<i64>,
    /// Wall time of the gallery pass (decode + preprocess + encode, overlapped).
    pub image_seconds: f64,
    pub image_inference_seconds: f64,
    pub text_seconds: f64,
}

/// Embed and score the `split` of `ds`. Every gallery image must decode (an
/// unreadable one is an error naming it: dropping it would change the metrics).
pub fn evaluate(
    enc: &Encoders,
    ds: &Dataset,
    split: Split,
    progress: impl FnMut(usize),
) -> Result<EvalOutput, RuntimeError> {
    let set = ds.eval_set(split)?;
    let t = Instant::now();
    let files = enc.image.encode_files(&set.images, progress)?;
    if let Some((i, why)) = files.failures.first() {
        return Err(RuntimeError::Input(format!(
            "{} of {} gallery images could not be read, first {}: {why}",
            files.failures.len(),
            set.images.len(),
            set.images[*i].display()
        )));
    }
    let image_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let text = enc.text.encode(&set.captions)?;
    let text_seconds = t.elapsed().as_secs_f64();
    let sim = text.dot(&files.embeds.t());
    let sim = sim.as_standard_layout();
    let metrics = sen_core::metrics::evaluate(
        sim.as_slice().expect("standard layout"),
        &set.caption_pids,
        &set.image_pids,
    )?;
    Ok(EvalOutput {
        metrics,
        image_embeds: files.embeds,
        text_embeds: text,
        image_pids: set.image_pids,
        text_pids: set.caption_pids,
        image_seconds,
        image_inference_seconds: files.inference_seconds,
        text_seconds,
    })
}

/// Write `image_embeds.npy`, `text_embeds.npy`, `image_pids.npy`, `text_pids.npy` into `dir`.
pub fn dump(out: &EvalOutput, dir: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|e| sen_core::CoreError::io(dir, e))?;
    let mat = |name: &str, a: &Array2<f32>| -> Result<(), RuntimeError> {
        let a = a.as_standard_layout();
        sen_core::npy::write_npy(&dir.join(name), a.shape(), a.as_slice().expect("standard"))?;
        Ok(())
    };
    mat("image_embeds.npy", &out.image_embeds)?;
    mat("text_embeds.npy", &out.text_embeds)?;
    sen_core::npy::write_npy(
        &dir.join("image_pids.npy"),
        &[out.image_pids.len()],
        &out.image_pids,
    )?;
    sen_core::npy::write_npy(
        &dir.join("text_pids.npy"),
        &[out.text_pids.len()],
        &out.text_pids,
    )?;
    Ok(())
}
