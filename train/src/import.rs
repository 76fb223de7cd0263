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

/// Whose training code wrote a checkpoint (`sen-train import --from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authors {
    /// Delong-liu-bupt/SEN (built on IRRA's code; adds the TIR decoder).
    Sen,
    /// anosorae/IRRA.
    Irra,
}

impl Authors {
    pub fn parse(s: &str) -> Result<Authors> {
        match s {
            "sen" => Ok(Authors::Sen),
            "irra" => Ok(Authors::Irra),
            _ => anyhow::bail!("--from {s:?}: expected sen or irra"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Authors::Sen => "sen",
            Authors::Irra => "irra",
        }
    }
}

/// Where one tensor of the authors' state dict goes.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    /// Into sen's tensor of this name.
    To(String),
    /// A packed q;k;v projection (`weight` or `bias`) split into sen's three.
    SplitQkv(&'static str),
    /// SEN's `mask_token` [1, 1, W] into `tir.mask_token` [W].
    MaskToken,
    /// SEN's fixed sin-cos decoder table: sen computes the same table; checked.
    DecoderPos,
    /// A head sen does not have: kept out, listed in the report with the reason.
    Drop(&'static str),
}

const MLM: &str = "IRRA's masked-language-modelling head (sen trains no MLM objective)";

/// The written key map (SPEC §10 names on sen's side), or None for a key neither
/// code base writes.
fn route(from: Authors, key: &str) -> Option<Route> {
    if let Some(rest) = key.strip_prefix("base_model.") {
        return Some(Route::To(rest.to_string()));
    }
    if let Some(rest) = key.strip_prefix("classifier.") {
        return Some(Route::To(format!("id_head.{rest}")));
    }
    let drops: &[(&str, &str)] = match from {
        Authors::Irra => &[
            ("cross_attn.", MLM),
            ("cross_modal_transformer.", MLM),
            ("ln_pre_t.", MLM),
            ("ln_pre_i.", MLM),
            ("ln_post.", MLM),
            ("mlm_head.", MLM),
        ],
        Authors::Sen => &[
            ("cross_attn_mlm.", MLM),
            ("cross_modal_transformer_mlm.", MLM),
            ("ln_pre_t.", MLM),
            ("ln_pre_i.", MLM),
            ("ln_post.", MLM),
            ("mlm_head.", MLM),
            (
                "norm_3.",
                "defined by SEN's decoder but unused in its forward",
            ),
            (
                "norm_5.",
                "defined by SEN's decoder but unused in its forward",
            ),
            (
                "cross_attn_TextImage.",
                "defined by SEN's decoder but unused in its forward",
            ),
            (
                "cross_attn_Image.",
                "defined by SEN's decoder but unused in its forward",
            ),
            (
                "fuse_head.",
                "SEN's optional fusion head (not in its reference recipe)",
            ),
            (
                "norm_image.",
                "SEN's optional fusion head (not in its reference recipe)",
            ),
            (
                "norm_text.",
                "SEN's optional fusion head (not in its reference recipe)",
            ),
        ],
    };
    if let Some((_, why)) = drops.iter().find(|(p, _)| key.starts_with(p)) {
        return Some(Route::Drop(why));
    }
    if from != Authors::Sen {
        return None;
    }
    let renames = [
        ("norm_1.", "tir.ln_in."),
        ("decoder_embed.", "tir.embed."),
        ("norm_4.", "tir.ln_q."),
        ("norm_2.", "tir.ln_kv."),
        ("cross_attn_Text.out_proj.", "tir.cross_attn.out_proj."),
        ("norm_6.", "tir.ln_cross."),
        ("cross_modal_transformer_mae.resblocks.", "tir.blocks."),
        ("norm_7.", "tir.ln_out."),
        ("decoder_pred.", "tir.head."),
    ];
    if let Some((p, to)) = renames.iter().find(|(p, _)| key.starts_with(p)) {
        return Some(Route::To(format!("{to}{}", &key[p.len()..])));
    }
    match key {
        "cross_attn_Text.in_proj_weight" => Some(Route::SplitQkv("weight")),
        "cross_attn_Text.in_proj_bias" => Some(Route::SplitQkv("bias")),
        "mask_token" => Some(Route::MaskToken),
        "decoder_pos_embed" => Some(Route::DecoderPos),
        _ => None,
    }
}

/// What an import did, written as `import_report.json` into the checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub source: String,
    pub from: &'static str,
    pub format: &'static str,
    pub state_dict: String,
    pub source_sha256: String,
    /// Tensors per stored element type (`fp16: 200`, ...), before the upcast.
    pub dtypes: BTreeMap<String, usize>,
    /// Whether every key sat behind `module.` (multi-GPU training).
    pub module_prefix: bool,
    /// Source key -> sen key, for every tensor imported.
    pub imported: BTreeMap<String, String>,
    /// Source key -> why it was left out.
    pub dropped: BTreeMap<String, String>,
    /// Entries of the state dict that are not tensors.
    pub not_tensors: BTreeMap<String, String>,
    /// What was checked rather than imported (the decoder's fixed position table).
    pub checked: BTreeMap<String, String>,
    pub id_classes: Option<i64>,
    pub tir: bool,
    pub preprocess: sen_core::PreprocessSpec,
}

pub const IMPORT_REPORT_FILE: &str = "import_report.json";

/// Import a checkpoint written by the SEN or IRRA authors' code (zip `torch.save` with
/// the state dict under `model`, or safetensors with the same names) for `cfg` into a
/// checkpoint directory `out`, with bilinear preprocessing (their `T.Resize` on PIL
/// images). Every tensor is imported, or dropped for a stated reason; a key neither
/// code base writes, or a shape that does not fit `cfg`, is an error.
pub fn import_authors(
    from: Authors,
    ckpt: &Path,
    cfg: &ModelConfig,
    out: &Path,
) -> Result<ImportReport> {
    cfg.validate()?;
    let sd = crate::pth::read_state_dict(ckpt)?;
    if sd.tensors.is_empty() {
        anyhow::bail!("{}: the state dict holds no tensors", ckpt.display());
    }
    let module_prefix = sd.tensors.iter().all(|(k, _)| k.starts_with("module."));
    let mut report = ImportReport {
        source: ckpt.display().to_string(),
        from: from.name(),
        format: sd.format,
        state_dict: sd.container.clone(),
        source_sha256: sen_core::hash::sha256_file(ckpt)?.0,
        dtypes: BTreeMap::new(),
        module_prefix,
        imported: BTreeMap::new(),
        dropped: BTreeMap::new(),
        not_tensors: sd.other.iter().cloned().collect(),
        checked: BTreeMap::new(),
        id_classes: None,
        tir: false,
        preprocess: sen_core::PreprocessSpec::for_model_with(
            cfg,
            sen_core::preprocess::ResizeFilter::Bilinear,
        ),
    };
    let mut source: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut unknown = vec![];
    for (raw, t) in sd.tensors {
        let key = if module_prefix {
            raw["module.".len()..].to_string()
        } else {
            raw.clone()
        };
        *report.dtypes.entry(format!("{:?}", t.kind())).or_default() += 1;
        let t = t.to_kind(Kind::Float);
        match route(from, &key) {
            None => unknown.push(key),
            Some(Route::To(to)) => {
                report.imported.insert(key, to.clone());
                source.insert(to, t);
            }
            Some(Route::Drop(why)) => {
                report.dropped.insert(key, why.to_string());
            }
            Some(Route::SplitQkv(part)) => {
                if t.size()[0] % 3 != 0 {
                    anyhow::bail!(
                        "{}: {key} has shape {:?}: a packed q;k;v projection needs a first \
                         dimension divisible by 3",
                        ckpt.display(),
                        t.size()
                    );
                }
                for (name, piece) in ["q", "k", "v"].iter().zip(t.chunk(3, 0)) {
                    let to = format!("tir.cross_attn.{name}_proj.{part}");
                    source.insert(to, piece.contiguous());
                }
                report.imported.insert(
                    key,
                    format!("tir.cross_attn.{{q,k,v}}_proj.{part} (rows split in three)"),
                );
            }
            Some(Route::MaskToken) => {
                source.insert("tir.mask_token".into(), t.flatten(0, -1));
                report
                    .imported
                    .insert(key, "tir.mask_token (flattened)".into());
            }
            Some(Route::DecoderPos) => {
                let (gh, gw) = cfg.vision.grid();
                let ours = crate::model::tir::sincos_2d(cfg.tir.width as i64, gh as i64, gw as i64);
                if t.numel() != ours.numel() {
                    anyhow::bail!(
                        "{}: {key} has shape {:?}, sen's decoder table for this preset is {:?}",
                        ckpt.display(),
                        t.size(),
                        ours.size()
                    );
                }
                let diff = (t.view_as(&ours) - &ours).abs().max().double_value(&[]);
                if diff > 1e-4 {
                    anyhow::bail!(
                        "{}: {key} differs from the fixed sin-cos table SEN and sen compute \
                         (max |difference| {diff:.2e}): not a SEN decoder sen can continue",
                        ckpt.display()
                    );
                }
                report.checked.insert(
                    key,
                    format!("equals sen's sin-cos table (max |difference| {diff:.1e}); not stored"),
                );
            }
        }
    }
    if !unknown.is_empty() {
        let other = match from {
            Authors::Sen => "irra",
            Authors::Irra => "sen",
        };
        anyhow::bail!(
            "{}: {} keys that {}'s code does not write (is it --from {other}?): {}",
            ckpt.display(),
            unknown.len(),
            from.name(),
            unknown.join(", ")
        );
    }
    report.id_classes = source.get("id_head.weight").map(|w| w.size()[0]);
    report.tir = source.keys().any(|k| k.starts_with("tir."));
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let _model = Sen::new(&vs.root(), cfg, report.id_classes, report.tir);
    copy_named(&mut vs, &source, &[])
        .with_context(|| format!("{} does not fit the model config", ckpt.display()))?;
    let train = serde_json::json!({
        "imported_from": ckpt.display().to_string(),
        "source_format": from.name(),
        "source_sha256": report.source_sha256,
        "preprocess": report.preprocess,
    });
    let json = serde_json::to_string_pretty(&report)?;
    crate::checkpoint::save(out, &vs, cfg, &train, &serde_json::json!({}), |tmp| {
        std::fs::write(tmp.join(IMPORT_REPORT_FILE), &json)?;
        Ok(())
    })?;
    Ok(report)
}
