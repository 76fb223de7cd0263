//! `sen-export`: a SEN checkpoint's image and text encoders as ONNX (opset 17+,
//! standard ops only) in a self-describing, verified deployment bundle (SPEC §9, §10).
//! Reads `model.safetensors` and `config.json` directly; never links libtorch.

pub mod encoders;
pub mod fixtures;
pub mod graph;
pub mod proto;
pub mod weights;

use encoders::{Attention, Fp32Islands, GraphOptions};
use graph::Compute;
use prost::Message;
use proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto};
use sen_core::config::ModelConfig;
use sen_core::manifest::{
    Dim, EncoderIo, IMAGE_ENCODER_FILE, IoSpec, MANIFEST_FORMAT_VERSION, Manifest, Precision,
    TEXT_ENCODER_FILE, TOKENIZER_FILE, TensorSpec, TokenizerSpec,
};
use sen_core::{ClipTokenizer, CoreError, PreprocessSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The ONNX IR version a model of `opset` is written with (ONNX's version table:
/// opsets 17-18 IR 8, 19-20 IR 9, 21-22 IR 10, 23 IR 11).
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => 11,
    }
}

/// The opsets this exporter writes.
pub const OPSETS: std::ops::RangeInclusive<i64> = 17..=23;
/// Protobuf's hard limit on one message; larger models need external data.
pub const PROTOBUF_LIMIT: u64 = 2 * 1024 * 1024 * 1024 - 1;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl ExportError {
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        ExportError::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub fp16: bool,
    pub opset: i64,
    /// In an fp16 export, which parts run in float32.
    pub fp32_islands: Fp32Islands,
    /// Weights of one model above this many bytes go to `<file>.data` (ONNX external data).
    pub external_data_threshold: u64,
    /// Replace an existing bundle directory.
    pub force: bool,
    /// How attention is written (recorded in the manifest's `tools.attention`).
    pub attention: Attention,
    /// Bundle format: 2 (dynamic text sequence, the default) or 1 (fixed context, for
    /// boxes running a sen that predates format 2).
    pub format_version: u32,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            fp16: false,
            opset: 17,
            fp32_islands: DEFAULT_FP16_ISLANDS,
            external_data_threshold: PROTOBUF_LIMIT,
            force: false,
            attention: Attention::Standard,
            format_version: MANIFEST_FORMAT_VERSION,
        }
    }
}

/// What an fp16 export keeps in float32 by default (measured: see docs/decisions.md).
pub const DEFAULT_FP16_ISLANDS: Fp32Islands = Fp32Islands {
    layer_norm: true,
    softmax: false,
};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub bundle: PathBuf,
    pub precision: String,
    pub files: BTreeMap<String, u64>,
    pub total_bytes: u64,
    pub seconds: f64,
}

fn model_proto(graph: proto::GraphProto, opset: i64, doc: &str) -> ModelProto {
    ModelProto {
        ir_version: ir_version(opset),
        producer_name: "sen-export".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        ..Default::default()
    }
}

/// Serialise `model` as `dir/file`; when its weights exceed `threshold` bytes, every
/// initializer of 1 KiB or more moves to `dir/file.data` (64-byte aligned offsets).
/// Returns the files written.
pub fn write_model(
    mut model: ModelProto,
    dir: &Path,
    file: &str,
    threshold: u64,
) -> Result<Vec<String>, ExportError> {
    let graph = model.graph.as_mut().expect("model has a graph");
    let weight_bytes: u64 = graph
        .initializer
        .iter()
        .map(|t| t.raw_data.len() as u64)
        .sum();
    let mut written = Vec::new();
    if weight_bytes > threshold {
        let data_name = format!("{file}.data");
        let mut data: Vec<u8> = Vec::with_capacity(weight_bytes as usize);
        for t in graph
            .initializer
            .iter_mut()
            .filter(|t| t.raw_data.len() >= 1024)
        {
            while !data.len().is_multiple_of(64) {
                data.push(0);
            }
            let offset = data.len();
            data.extend_from_slice(&t.raw_data);
            externalise(t, &data_name, offset, t.raw_data.len());
        }
        sen_core::fsutil::write_atomic(&dir.join(&data_name), &data)?;
        written.push(data_name);
    }
    let bytes = model.encode_to_vec();
    if bytes.len() as u64 > PROTOBUF_LIMIT {
        return Err(ExportError::Input(format!(
            "{file}: {} bytes is over protobuf's 2 GiB limit; lower the external-data threshold",
            bytes.len()
        )));
    }
    sen_core::fsutil::write_atomic(&dir.join(file), &bytes)?;
    written.insert(0, file.to_string());
    Ok(written)
}

fn externalise(t: &mut TensorProto, location: &str, offset: usize, length: usize) {
    t.raw_data = Vec::new();
    t.data_location = 1;
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: k.into(),
        value: v,
    };
    t.external_data = vec![
        kv("location", location.into()),
        kv("offset", offset.to_string()),
        kv("length", length.to_string()),
    ];
}

fn spec(name: &str, dtype: &str, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: dtype.into(),
        shape,
    }
}

/// The `io` section for a config (the graphs' inputs and outputs); `dynamic`: the
/// text encoder's sequence axis is dynamic (format 2).
pub fn io_spec(cfg: &ModelConfig, image_files: &str, text_file: &str, dynamic: bool) -> IoSpec {
    let batch = || Dim::Symbolic(encoders::BATCH.into());
    let d = cfg.embed_dim as u64;
    IoSpec {
        image: EncoderIo {
            file: image_files.into(),
            inputs: vec![spec(
                encoders::IMAGE_INPUT,
                "float32",
                vec![
                    batch(),
                    Dim::Fixed(3),
                    Dim::Fixed(cfg.vision.image_height as u64),
                    Dim::Fixed(cfg.vision.image_width as u64),
                ],
            )],
            outputs: vec![spec(
                encoders::IMAGE_OUTPUT,
                "float32",
                vec![batch(), Dim::Fixed(d)],
            )],
        },
        text: EncoderIo {
            file: text_file.into(),
            inputs: vec![
                spec(
                    encoders::TEXT_INPUT_IDS,
                    "int64",
                    vec![
                        batch(),
                        if dynamic {
                            Dim::Symbolic(encoders::SEQUENCE.into())
                        } else {
                            Dim::Fixed(cfg.text.context_length as u64)
                        },
                    ],
                ),
                spec(encoders::TEXT_EOT, "int64", vec![batch()]),
            ],
            outputs: vec![spec(
                encoders::TEXT_OUTPUT,
                "float32",
                vec![batch(), Dim::Fixed(d)],
            )],
        },
    }
}

/// Export `checkpoint` (a checkpoint or run directory) into the bundle directory `out`.
/// Everything is written into a temporary sibling first and renamed into place, so a
/// failed export leaves no half bundle (and, with `force`, the old bundle intact).
pub fn export(
    checkpoint: &Path,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let t0 = std::time::Instant::now();
    if !OPSETS.contains(&opts.opset) {
        return Err(ExportError::Input(format!(
            "--opset {}: this exporter writes opsets {} to {} (LayerNormalization needs 17)",
            opts.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    if !sen_core::manifest::MANIFEST_FORMAT_VERSIONS.contains(&opts.format_version) {
        return Err(ExportError::Input(format!(
            "--format-version {}: bundles are format 1 (fixed text context) or 2 (dynamic)",
            opts.format_version
        )));
    }
    if opts.opset < opts.attention.min_opset() {
        return Err(ExportError::Input(format!(
            "--attention {} needs --opset {} or later (got {})",
            opts.attention.name(),
            opts.attention.min_opset(),
            opts.opset
        )));
    }
    if out.exists() && !opts.force {
        return Err(ExportError::Input(format!(
            "{}: already exists; choose another --out or pass --force to replace it",
            out.display()
        )));
    }
    let ckpt = sen_core::fsutil::resolve_checkpoint(checkpoint)?;
    let cfg = ModelConfig::from_json_file(&ckpt.join("config.json"))?;
    let weights_path = ckpt.join(sen_core::fsutil::CHECKPOINT_MODEL_FILE);
    let weights = weights::Weights::load(&weights_path)?;
    let (source_sha, _) = sen_core::hash::sha256_file(&weights_path)?;
    let compute = if opts.fp16 {
        Compute::F16
    } else {
        Compute::F32
    };
    let islands = opts.fp32_islands;
    let graph_opts = GraphOptions {
        compute,
        keep: islands,
        attention: opts.attention,
        dynamic_sequence: opts.format_version >= 2,
    };

    let staged = sen_core::fsutil::StagedDir::new(out, "sen-export")?;
    let dir = staged.path();

    let mut image_graph = encoders::image_encoder(&cfg, &weights, graph_opts)?;
    let mut text_graph = encoders::text_encoder(&cfg, &weights, graph_opts)?;
    if opts.opset >= 18 {
        encoders::reduce_axes_as_inputs(&mut image_graph);
        encoders::reduce_axes_as_inputs(&mut text_graph);
    }
    let precision = if opts.fp16 {
        Precision::Fp16
    } else {
        Precision::Fp32
    };
    let doc = format!("SEN {{}} encoder, {precision}, from {}", ckpt.display());
    let mut files = write_model(
        model_proto(image_graph, opts.opset, &doc.replace("{}", "image")),
        dir,
        IMAGE_ENCODER_FILE,
        opts.external_data_threshold,
    )?;
    files.extend(write_model(
        model_proto(text_graph, opts.opset, &doc.replace("{}", "text")),
        dir,
        TEXT_ENCODER_FILE,
        opts.external_data_threshold,
    )?);
    let tok =
        ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path()?, cfg.text.context_length)?;
    sen_core::fsutil::write_atomic(&dir.join(TOKENIZER_FILE), tok.to_json()?.as_bytes())?;
    files.push(TOKENIZER_FILE.into());

    let mut tools = BTreeMap::new();
    tools.insert("sen-export".into(), env!("CARGO_PKG_VERSION").into());
    tools.insert("onnx-opset".into(), opts.opset.to_string());
    tools.insert("onnx-ir-version".into(), ir_version(opts.opset).to_string());
    tools.insert("attention".into(), opts.attention.name().into());
    if opts.fp16 {
        tools.insert(
            "fp16-float32-islands".into(),
            format!(
                "layer_norm={},softmax={},l2_normalise=true",
                islands.layer_norm, islands.softmax
            ),
        );
    }
    let mut manifest = Manifest {
        format_version: opts.format_version,
        precision,
        model: cfg.clone(),
        preprocess: PreprocessSpec::for_checkpoint(&ckpt, &cfg)?,
        tokenizer: TokenizerSpec {
            file: TOKENIZER_FILE.into(),
            kind: "clip-bpe".into(),
            context_length: cfg.text.context_length,
            sot_id: sen_core::tokenizer::SOT_ID,
            eot_id: sen_core::tokenizer::EOT_ID,
            pad_id: sen_core::tokenizer::PAD_ID,
            clean: "open_clip-lower".into(),
        },
        io: io_spec(
            &cfg,
            IMAGE_ENCODER_FILE,
            TEXT_ENCODER_FILE,
            graph_opts.dynamic_sequence,
        ),
        files: BTreeMap::new(),
        source_checkpoint_sha256: source_sha,
        tools,
        calibration: None,
        score_calibration: None,
    };
    for f in &files {
        manifest.add_file(dir, f)?;
    }
    manifest.save(dir)?;
    // Check what was written before it replaces anything.
    Manifest::load(dir)?;

    staged.commit()?;
    let mut sizes = BTreeMap::new();
    for (name, entry) in &manifest.files {
        sizes.insert(name.clone(), entry.bytes);
    }
    let manifest_bytes = std::fs::metadata(out.join(sen_core::manifest::MANIFEST_FILE))
        .map_err(|e| ExportError::io(out, e))?
        .len();
    sizes.insert(sen_core::manifest::MANIFEST_FILE.into(), manifest_bytes);
    Ok(ExportReport {
        bundle: out.to_path_buf(),
        precision: precision.to_string(),
        total_bytes: sizes.values().sum(),
        files: sizes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
