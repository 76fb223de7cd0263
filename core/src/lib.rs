//! `sen-core`: what every part of sen shares, with no ML runtime.
//!
//! - [`config`]: `ModelConfig` and its presets (every model size comes from here);
//! - [`manifest`]: the deployment bundle's `manifest.json` (one reader and writer);
//! - [`preprocess`]: image decoding, Pillow-exact bicubic or bilinear resize, CLIP normalisation;
//! - [`tokenizer`]: the CLIP BPE tokenizer with open_clip's text cleaning;
//! - [`metrics`]: R@K, mAP, mINP for text-to-image retrieval;
//! - [`scores`]: score calibration (a score to a probability at a prior, SPEC §12);
//! - [`deps`]: where `make deps` put native libraries and data;
//! - [`torch_pickle`]: the pickle of a zip-format `torch.save` file, read without Python;
//! - [`timing`]: latency sampling and percentiles (`sen bench`, `sen-train bench`);
//! - [`npy`], [`fsutil`], [`hash`]: small shared I/O helpers.

pub mod config;
pub mod data;
pub mod deps;
pub mod error;
pub mod fsutil;
pub mod hash;
pub mod manifest;
pub mod metrics;
pub mod npy;
pub mod preprocess;
pub mod process;
pub mod rng;
pub mod scores;
pub mod synth;
pub mod text;
pub mod timing;
pub mod tokenizer;
pub mod torch_pickle;

pub use config::ModelConfig;
pub use error::CoreError;
pub use manifest::{Manifest, Precision};
pub use preprocess::{PreprocessSpec, Preprocessor};
pub use tokenizer::ClipTokenizer;
