//! What each queue runs: the text encoder, the image encoder, the store's batched
//! search. Each starts a [`Batcher`] with its run function and reports what it fed
//! the model into the metrics.

use super::{BatchConfig, Batcher};
use crate::metrics::Metrics;
use ndarray::Array3;
use sen_runtime::RuntimeError;
use sen_runtime::encoders::Encoders;
use sen_store::{Found, Query, Store, StoreError};
use std::sync::Arc;

/// Captions -> embeddings.
pub type TextQueue = Batcher<String, Vec<f32>, RuntimeError>;
/// Preprocessed crops `[3, H, W]` -> embeddings.
pub type ImageQueue = Batcher<Array3<f32>, Vec<f32>, RuntimeError>;
/// Queries -> their results (one scan of the gallery for the whole batch); each
/// query fails on its own (a damaged row fails only the query that meets it).
pub type SearchQueue = Batcher<Query, Result<Vec<Found>, StoreError>, StoreError>;

/// The text encoder's queue; counts the token positions and rows it ran.
pub fn text(enc: Arc<Encoders>, cfg: BatchConfig, metrics: Arc<Metrics>) -> TextQueue {
    let m = metrics.clone();
    Batcher::start("text", cfg, metrics, move |texts: Vec<String>| {
        let before = enc.text.fed();
        let e = enc.text.encode(&texts)?;
        let after = enc.text.fed();
        m.text_positions.inc_by(after.positions - before.positions);
        m.text_rows.inc_by(after.rows - before.rows);
        Ok(e.rows().into_iter().map(|r| r.to_vec()).collect())
    })
}

/// The image encoder's queue: the crops are stacked into one batch.
pub fn image(enc: Arc<Encoders>, cfg: BatchConfig, metrics: Arc<Metrics>) -> ImageQueue {
    Batcher::start("image", cfg, metrics, move |imgs: Vec<Array3<f32>>| {
        let views: Vec<_> = imgs.iter().map(|a| a.view()).collect();
        let x = ndarray::stack(ndarray::Axis(0), &views)
            .map_err(|e| RuntimeError::onnx("stacking the image batch", e))?;
        let e = enc.image.encode(x.view())?;
        Ok(e.rows().into_iter().map(|r| r.to_vec()).collect())
    })
}

/// The store's search queue, scanning with `threads` threads.
pub fn search(
    store: Arc<Store>,
    threads: usize,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
) -> SearchQueue {
    Batcher::start("search", cfg, metrics, move |qs: Vec<Query>| {
        store.search_each(&qs, threads)
    })
}
