//! Random-weight checkpoints for tests and benches of the parts downstream of the
//! exporter (runtime, calibration): a real `model.safetensors` + `config.json` with
//! every encoder tensor of a `ModelConfig`, seeded, so bundles can be exported
//! without libtorch. LayerNorm weights are near 1 and everything else small, so the
//! encoders produce well-conditioned, input-dependent embeddings.

use crate::ExportError;
use sen_core::ModelConfig;
use std::path::Path;

/// Write a checkpoint directory for `cfg` with weights drawn from `seed`.
pub fn random_checkpoint(cfg: &ModelConfig, dir: &Path, seed: u64) -> Result<(), ExportError> {
    random_checkpoint_with(cfg, dir, seed, |_, _, _| {})
}

/// [`random_checkpoint`], with `edit(name, shape, values)` called on every tensor
/// before it is written (tests plant outliers this way).
pub fn random_checkpoint_with(
    cfg: &ModelConfig,
    dir: &Path,
    seed: u64,
    mut edit: impl FnMut(&str, &[usize], &mut [f32]),
) -> Result<(), ExportError> {
    std::fs::create_dir_all(dir).map_err(|e| ExportError::io(dir, e))?;
    let mut rng = sen_core::rng::Rng::new(seed);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = crate::encoders::encoder_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: i64 = shape.iter().product();
            let ln_weight = name.contains("ln_") && name.ends_with(".weight");
            let mut values: Vec<f32> = (0..n)
                .map(|_| {
                    let u = rng.f32() * 2.0 - 1.0;
                    if ln_weight { 1.0 + 0.1 * u } else { 0.05 * u }
                })
                .collect();
            let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            edit(&name, &shape, &mut values);
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ExportError::Input(format!("random checkpoint: {e}")))?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| ExportError::Input(format!("random checkpoint: {e}")))?;
    sen_core::fsutil::write_atomic(&dir.join(sen_core::fsutil::CHECKPOINT_MODEL_FILE), &bytes)?;
    cfg.save(&dir.join("config.json"))?;
    Ok(())
}
