//! Importing OpenAI CLIP weights (`sen-train import-clip`): the TorchScript archive
//! OpenAI publishes (`ViT-B-16.pt`, read through tch's `CModule`) or a safetensors
//! file with OpenAI key names. fp16 is upcast to fp32; `logit_scale`,
//! `input_resolution`, `context_length` and `vocab_size` are ignored; the 14x14
//! position grid is resized to the configured grid once, here (SPEC §1).

use crate::model::{Sen, vision::resize_position_table};
use anyhow::{Context, Result};
use sen_core::ModelConfig;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor, nn};

/// Entries of OpenAI's files that are not parameters of the encoders.
pub const IGNORED: [&str; 4] = [
    "logit_scale",
    "input_resolution",
    "context_length",
    "vocab_size",
];

/// Read every named tensor of a CLIP weights file (TorchScript archive or safetensors).
pub fn read_weights(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let is_safetensors = std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))
        .map(|b| b.len() > 8 && b.get(8) == Some(&b'{'))?;
    let named: Vec<(String, Tensor)> = if is_safetensors {
        Tensor::read_safetensors(path)
            .with_context(|| format!("{}: not a readable safetensors file", path.display()))?
    } else {
        let m = tch::CModule::load(path).with_context(|| {
            format!(
                "{}: neither safetensors nor a TorchScript archive that libtorch can load",
                path.display()
            )
        })?;
        m.named_parameters()
            .with_context(|| format!("{}: cannot list its parameters", path.display()))?
    };
    Ok(named
        .into_iter()
        .map(|(k, v)| (k, v.to_kind(Kind::Float)))
        .collect())
}

/// Copy `source` into the variables of `vs` by name. Every variable must be in
/// `source` with the same shape, and every source entry must be a variable or in
/// `ignore`; otherwise the error lists every missing, unexpected and mis-shaped key.
/// Variables whose name starts with a prefix in `optional` may be absent (they keep
/// their initialisation); this is used for the training-only heads only.
pub fn copy_named_partial(
    vs: &mut nn::VarStore,
    source: &BTreeMap<String, Tensor>,
    ignore: &[&str],
    optional: &[&str],
) -> Result<Vec<String>> {
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut shape = Vec::new();
    let mut fresh = Vec::new();
    for (name, var) in &vars {
        match source.get(name) {
            Some(t) if t.size() != var.size() => shape.push(format!(
                "{name}: file {:?}, model {:?}",
                t.size(),
                var.size()
            )),
            Some(_) => {}
            None if optional.iter().any(|p| name.starts_with(p)) => fresh.push(name.clone()),
            None => missing.push(name.clone()),
        }
    }
    let unexpected: Vec<&String> = source
        .keys()
        .filter(|k| !vars.contains_key(*k) && !ignore.contains(&k.as_str()))
        .collect();
    if !missing.is_empty() || !shape.is_empty() || !unexpected.is_empty() {
        missing.sort();
        shape.sort();
        let mut msg = String::from("weights do not match the model:");
        if !missing.is_empty() {
            msg += &format!("\n  missing ({}): {}", missing.len(), missing.join(", "));
        }
        if !unexpected.is_empty() {
            msg += &format!(
                "\n  unexpected ({}): {}",
                unexpected.len(),
                unexpected
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !shape.is_empty() {
            msg += &format!("\n  wrong shape ({}): {}", shape.len(), shape.join("; "));
        }
        anyhow::bail!(msg);
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            if let Some(t) = source.get(&name) {
                var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
            }
        }
    });
    fresh.sort();
    Ok(fresh)
}

/// [`copy_named_partial`] with nothing optional.
pub fn copy_named(
    vs: &mut nn::VarStore,
    source: &BTreeMap<String, Tensor>,
    ignore: &[&str],
) -> Result<()> {
    copy_named_partial(vs, source, ignore, &[]).map(|_| ())
}

/// Import OpenAI CLIP weights for `cfg` into a checkpoint directory `out`.
pub fn import_clip(weights: &Path, cfg: &ModelConfig, out: &Path) -> Result<()> {
    cfg.validate()?;
    let mut source = read_weights(weights)?;
    let key = "visual.positional_embedding";
    if let Some(pos) = source.get(key) {
        let want = cfg.vision.num_tokens() as i64;
        if pos.size()[0] != want {
            let (gh, gw) = cfg.vision.grid();
            let resized = resize_position_table(pos, gh as i64, gw as i64);
            source.insert(key.to_string(), resized);
        }
    }
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let _model = Sen::new(&vs.root(), cfg, None, false);
    copy_named(&mut vs, &source, &IGNORED)
        .with_context(|| format!("{} against preset {:?}", weights.display(), cfg.vision))?;
    let (sha, bytes) = sen_core::hash::sha256_file(weights)?;
    let train = serde_json::json!({
        "imported_from": weights.display().to_string(),
        "source_sha256": sha,
        "source_bytes": bytes,
        "position_grid": cfg.vision.grid(),
    });
    crate::checkpoint::save(out, &vs, cfg, &train, &serde_json::json!({}), |_| Ok(()))
}
