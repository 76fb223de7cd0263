//! A bundle's image and text encoders on ONNX Runtime's CPU execution provider.
//! The bundle is loaded only after every file matches its manifest; inputs are checked
//! against the manifest's shapes before they reach ONNX Runtime.

use crate::error::RuntimeError;
use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView4, Ix2};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use sen_core::Manifest;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Intra-op threads (None: ONNX Runtime's default, one per core).
    pub threads: Option<usize>,
    /// Write ONNX Runtime's optimised graphs here as `<encoder>.optimized.onnx`.
    pub optimized_model_dir: Option<PathBuf>,
}

pub struct BundleEncoders {
    pub dir: PathBuf,
    pub manifest: Manifest,
    image: Session,
    text: Session,
}

fn session(model: &Path, opts: &SessionOptions, name: &str) -> Result<Session, RuntimeError> {
    let lib = crate::onnxruntime::init()?;
    let ctx = || model.display().to_string();
    let mut b = Session::builder(&lib.env)
        .map_err(|e| RuntimeError::onnx(ctx(), e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| RuntimeError::onnx(ctx(), ort::Error::<()>::from(e)))?;
    if let Some(t) = opts.threads {
        b = b
            .with_intra_threads(t)
            .map_err(|e| RuntimeError::onnx(ctx(), ort::Error::<()>::from(e)))?;
    }
    if let Some(dir) = &opts.optimized_model_dir {
        b = b
            .with_optimized_model_path(dir.join(format!("{name}.optimized.onnx")))
            .map_err(|e| RuntimeError::onnx(ctx(), ort::Error::<()>::from(e)))?;
    }
    b.commit_from_file(model)
        .map_err(|e| RuntimeError::onnx(ctx(), e))
}

impl BundleEncoders {
    /// Load `dir` (verified against its manifest) on the CPU execution provider.
    pub fn load_cpu(dir: &Path, opts: &SessionOptions) -> Result<Self, RuntimeError> {
        let manifest = Manifest::load(dir)?;
        let image = session(&dir.join(&manifest.io.image.file), opts, "image_encoder")?;
        let text = session(&dir.join(&manifest.io.text.file), opts, "text_encoder")?;
        Ok(BundleEncoders {
            dir: dir.to_path_buf(),
            manifest,
            image,
            text,
        })
    }

    /// `[B, 3, H, W]` preprocessed images -> `[B, D]` unit rows.
    pub fn encode_images(&mut self, pixels: ArrayView4<f32>) -> Result<Array2<f32>, RuntimeError> {
        let p = &self.manifest.preprocess;
        let s = pixels.shape();
        if s[1] != 3 || s[2] != p.height || s[3] != p.width || s[0] == 0 {
            return Err(RuntimeError::Input(format!(
                "pixel_values: shape {s:?}, but the bundle takes [batch >= 1, 3, {}, {}]; preprocess with the bundle's manifest",
                p.height, p.width
            )));
        }
        let io = &self.manifest.io.image;
        let ctx = self.dir.join(&io.file).display().to_string();
        let pixels = pixels.as_standard_layout();
        let input =
            TensorRef::from_array_view(pixels.view()).map_err(|e| RuntimeError::onnx(&ctx, e))?;
        let out = self
            .image
            .run(ort::inputs![io.inputs[0].name.as_str() => input])
            .map_err(|e| RuntimeError::onnx(&ctx, e))?;
        extract(&out[io.outputs[0].name.as_str()], &ctx)
    }

    /// Token ids `[B, context]` and EOT positions `[B]` -> `[B, D]` unit rows.
    pub fn encode_texts(
        &mut self,
        ids: ArrayView2<i64>,
        eot: ArrayView1<i64>,
    ) -> Result<Array2<f32>, RuntimeError> {
        let t = &self.manifest.tokenizer;
        let (b, l) = ids.dim();
        if l != t.context_length || b == 0 || eot.len() != b {
            return Err(RuntimeError::Input(format!(
                "input_ids: shape [{b}, {l}] with {} eot_index values, but the bundle takes [batch >= 1, {}] and one eot_index per row",
                eot.len(),
                t.context_length
            )));
        }
        let vocab = self.manifest.model.text.vocab_size as i64;
        if let Some(bad) = ids.iter().position(|&v| v < 0 || v >= vocab) {
            return Err(RuntimeError::Input(format!(
                "input_ids: element {bad} is {}, outside the vocabulary [0, {vocab})",
                ids.iter().nth(bad).copied().unwrap_or_default()
            )));
        }
        if let Some(bad) = eot.iter().position(|&v| v < 0 || v >= l as i64) {
            return Err(RuntimeError::Input(format!(
                "eot_index: row {bad} is {}, outside [0, {l})",
                eot[bad]
            )));
        }
        let io = &self.manifest.io.text;
        let ctx = self.dir.join(&io.file).display().to_string();
        let ids = ids.as_standard_layout();
        let eot = eot.as_standard_layout();
        let a = TensorRef::from_array_view(ids.view()).map_err(|e| RuntimeError::onnx(&ctx, e))?;
        let e = TensorRef::from_array_view(eot.view()).map_err(|e| RuntimeError::onnx(&ctx, e))?;
        let out = self
            .text
            .run(ort::inputs![io.inputs[0].name.as_str() => a, io.inputs[1].name.as_str() => e])
            .map_err(|e| RuntimeError::onnx(&ctx, e))?;
        extract(&out[io.outputs[0].name.as_str()], &ctx)
    }
}

fn extract(v: &ort::value::DynValue, ctx: &str) -> Result<Array2<f32>, RuntimeError> {
    let a = v
        .try_extract_array::<f32>()
        .map_err(|e| RuntimeError::onnx(ctx, e))?;
    a.into_dimensionality::<Ix2>()
        .map(|a| a.to_owned())
        .map_err(|e| RuntimeError::onnx(ctx, e))
}
