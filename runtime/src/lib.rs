//! `sen-runtime`: the library a program links to run a bundle's encoders (no libtorch).
//!
//! - [`onnxruntime`]: loading the ONNX Runtime library (`make deps`, `ORT_DYLIB_PATH`, `--ort-lib`);
//! - [`providers`]: TensorRT / CUDA / CPU: preflight checks, engine-cache keys, profiles;
//! - [`session`]: building an ONNX Runtime session on the chosen provider (one home);
//! - [`encoders`]: a verified bundle's [`ImageEncoder`](encoders::ImageEncoder) and
//!   [`TextEncoder`](encoders::TextEncoder), batched and safe for concurrent callers;
//! - [`index`], [`search`]: `sen-store`'s index file and exact top-k kernels, re-exported;
//! - [`eval`]: SPEC §7 metrics of a bundle on a dataset split;
//! - [`bench`]: latency percentiles and throughput of a bundle on this machine;
//! - [`elf`]: the libraries and glibc versions a binary needs (GPU preflight, release checks).
//!
//! No async runtime, no HTTP, no Milvus client: `sen serve` is `sen-serve`'s, the `sen`
//! command `sen-cli`'s (SPEC §11).
//!
//! Tokenizer, preprocessing, datasets and metrics are `sen-core`'s (the only copy).

pub mod bench;
pub mod elf;
pub mod encoders;
pub mod error;
pub mod eval;
pub mod int8cpu;
pub mod onnxruntime;
pub mod providers;
pub mod session;

pub use sen_store::{index, search};

pub use error::RuntimeError;

use sen_core::{ClipTokenizer, CoreError, Manifest, ModelConfig, PreprocessSpec};
use std::path::Path;

/// The tokenizer of a bundle (its `tokenizer.json`), or the CLIP vocabulary from `make deps`.
pub fn load_tokenizer(bundle: Option<&Path>) -> Result<ClipTokenizer, CoreError> {
    match bundle {
        Some(dir) => {
            let m = Manifest::load(dir)?;
            ClipTokenizer::from_file(&dir.join(&m.tokenizer.file), m.tokenizer.context_length)
        }
        None => ClipTokenizer::from_vocab_gz(
            &sen_core::deps::clip_vocab_path()?,
            ModelConfig::vit_b16().text.context_length,
        ),
    }
}

/// The preprocessing of a bundle (from its verified manifest), or of a preset with
/// a resize filter (SPEC §3: the filter is the model's; a preset alone does not say it).
pub fn preprocess_spec(
    bundle: Option<&Path>,
    preset: &str,
    filter: sen_core::preprocess::ResizeFilter,
) -> Result<PreprocessSpec, CoreError> {
    match bundle {
        Some(dir) => Ok(Manifest::load(dir)?.preprocess),
        None => Ok(PreprocessSpec::for_model_with(
            &ModelConfig::preset(preset)?,
            filter,
        )),
    }
}

/// Log to stderr at `RUST_LOG`'s level (default `warn`): the command-line tools' setup.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
