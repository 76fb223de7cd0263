//! Checkpoint directories (SPEC §10): `model.safetensors`, `config.json`,
//! `train.json`, `metrics.json`, `optimizer.safetensors`, written into a temporary
//! sibling folder and renamed into place, so a reader never sees half a checkpoint.

use anyhow::{Context, Result};
use sen_core::ModelConfig;
use std::path::{Path, PathBuf};
use tch::nn;

pub const MODEL_FILE: &str = sen_core::fsutil::CHECKPOINT_MODEL_FILE;
pub const CONFIG_FILE: &str = "config.json";
pub const TRAIN_FILE: &str = sen_core::fsutil::CHECKPOINT_TRAIN_FILE;
pub const METRICS_FILE: &str = "metrics.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// A checkpoint directory, or a run directory meaning its `best/`.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    Ok(sen_core::fsutil::resolve_checkpoint(path)?)
}

/// Write a checkpoint directory atomically. `extra` writes further files (optimizer
/// state) into the temporary folder before the rename.
pub fn save(
    dir: &Path,
    vs: &nn::VarStore,
    cfg: &ModelConfig,
    train: &serde_json::Value,
    metrics: &serde_json::Value,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt");
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(parent)?;
    vs.save(tmp.path().join(MODEL_FILE))
        .with_context(|| format!("writing {}", dir.join(MODEL_FILE).display()))?;
    std::fs::write(tmp.path().join(CONFIG_FILE), cfg.to_json_pretty())?;
    std::fs::write(
        tmp.path().join(TRAIN_FILE),
        serde_json::to_string_pretty(train)?,
    )?;
    std::fs::write(
        tmp.path().join(METRICS_FILE),
        serde_json::to_string_pretty(metrics)?,
    )?;
    extra(tmp.path())?;
    let tmp = tmp.keep();
    let old = parent.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)
            .with_context(|| format!("moving the previous {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Load `model.safetensors` into `vs`: every variable must be present with its shape;
/// tensors in the file that the model does not have are an error too (both listed).
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<()> {
    let file: std::collections::BTreeMap<String, tch::Tensor> = tch::Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect();
    crate::import::copy_named(vs, &file, &[]).with_context(|| path.display().to_string())
}

/// Read `config.json` of a checkpoint directory.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    Ok(ModelConfig::from_json_file(&dir.join(CONFIG_FILE))?)
}
