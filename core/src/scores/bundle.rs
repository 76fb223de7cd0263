//! The score calibration a bundle carries: `score_calibration.json` (the fits and
//! what they are bound to) and `score_background.npy` (the background embeddings),
//! both pinned in the manifest's `files` and named by its `score_calibration` key.
//!
//! A calibration is bound to both encoders' identity (SPEC §10): the image encoder's
//! digest with the preprocessing, the text encoder's digest with the tokenizer. A
//! bundle whose encoders or preprocessing differ from what the calibration was fitted
//! with refuses it at load, naming what changed; a bundle without one still serves.

use super::{Background, LrFit, Moments, check_prior};
use crate::error::CoreError;
use crate::manifest::{Manifest, TokenizerSpec};
use crate::preprocess::PreprocessSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCORE_CALIBRATION_FILE: &str = "score_calibration.json";
pub const SCORE_BACKGROUND_FILE: &str = "score_background.npy";
/// The layout of `score_calibration.json` this code writes and reads.
pub const SCORE_CALIBRATION_VERSION: u32 = 1;

/// The manifest's `score_calibration` key: the two files (both also in `files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreCalibrationRef {
    pub file: String,
    pub background: String,
}

/// Which kind of query a score comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryKind {
    /// A description against crops (text -> image).
    Text,
    /// A crop against crops (image -> image: "more like this", `like`).
    Image,
}

/// What the calibration was fitted on (for `sen info` and the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fitted {
    pub dataset: String,
    pub split: String,
    pub text_queries: usize,
    pub image_queries: usize,
    /// Where the background crops came from (a split disjoint from `split`).
    pub background_split: String,
}

/// `score_calibration.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreCalibrationFile {
    pub version: u32,
    /// The encoders' identity it is bound to (SPEC §10).
    pub image_encoder_sha256: String,
    pub preprocess: PreprocessSpec,
    pub text_encoder_sha256: String,
    pub tokenizer: TokenizerSpec,
    /// Background embeddings: how many, of how many values.
    pub background_count: usize,
    pub dim: usize,
    pub text: LrFit,
    pub image: LrFit,
    pub fitted: Fitted,
}

/// A loaded, checked calibration: what `p` is computed from.
#[derive(Debug, Clone)]
pub struct ScoreCalibration {
    pub file: ScoreCalibrationFile,
    pub background: Background,
}

impl ScoreCalibration {
    /// The bundle's calibration (`None` when the manifest names none). The files'
    /// bytes were checked by [`Manifest::load`]; here their content and binding are.
    pub fn load(dir: &Path, manifest: &Manifest) -> Result<Option<Self>, CoreError> {
        let Some(r) = &manifest.score_calibration else {
            return Ok(None);
        };
        let path = dir.join(&r.file);
        let text = std::fs::read_to_string(&path).map_err(|e| CoreError::io(&path, e))?;
        let file = ScoreCalibrationFile::parse(&text, &path)?;
        file.check_binding(manifest)
            .map_err(|e| CoreError::format(&path, e))?;
        let bg_path = dir.join(&r.background);
        let (shape, values) = crate::npy::read_npy_f32(&bg_path)?;
        if shape != [file.background_count, file.dim] {
            return Err(CoreError::format(
                &bg_path,
                format!(
                    "shape {shape:?}, but {} says [{}, {}]",
                    r.file, file.background_count, file.dim
                ),
            ));
        }
        if file.dim != manifest.model.embed_dim {
            return Err(CoreError::format(
                &path,
                format!(
                    "embeddings of {} values, but the bundle's are {}",
                    file.dim, manifest.model.embed_dim
                ),
            ));
        }
        let background = Background::new(file.dim, values)
            .map_err(|e| CoreError::format(&bg_path, e.to_string()))?;
        Ok(Some(ScoreCalibration { file, background }))
    }

    /// The fit for one kind of query.
    pub fn fit(&self, kind: QueryKind) -> &LrFit {
        match kind {
            QueryKind::Text => &self.file.text,
            QueryKind::Image => &self.file.image,
        }
    }

    /// A query's moments over the background (once per query; then [`Self::p`] per
    /// score).
    pub fn moments(&self, query: &[f32]) -> Result<Moments, CoreError> {
        self.background.moments(query)
    }

    /// `p` of one score of a query with these moments, at `prior` (the fitting
    /// data's prior when `None`; a given prior must pass [`check_prior`]).
    pub fn p(&self, kind: QueryKind, m: &Moments, score: f64, prior: Option<f64>) -> f64 {
        let fit = self.fit(kind);
        fit.curve.p(m.z(score), prior.unwrap_or(fit.prior))
    }
}

impl ScoreCalibrationFile {
    /// `score_calibration.json`'s text (read from `path`, named in errors): its
    /// fields, version, curves and priors checked; not yet its binding.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CoreError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let file: ScoreCalibrationFile = serde_path_to_error::deserialize(de)
            .map_err(|e| CoreError::format(path, format!("field `{}`: {}", e.path(), e.inner())))?;
        if file.version != SCORE_CALIBRATION_VERSION {
            return Err(CoreError::format(
                path,
                format!(
                    "version {} is not supported (this sen reads {SCORE_CALIBRATION_VERSION}); run `sen calibrate-scores` again",
                    file.version
                ),
            ));
        }
        for (kind, fit) in [("text", &file.text), ("image", &file.image)] {
            fit.curve
                .check()
                .map_err(|e| CoreError::format(path, format!("`{kind}`: {e}")))?;
            check_prior(fit.prior)
                .map_err(|e| CoreError::format(path, format!("`{kind}.prior`: {e}")))?;
        }
        Ok(file)
    }

    /// Whether this calibration belongs to `manifest`'s encoders; the error says what
    /// differs and what to do.
    pub fn check_binding(&self, manifest: &Manifest) -> Result<(), String> {
        let again = "it was fitted for other encoders; run `sen calibrate-scores` on this bundle";
        let image = manifest
            .encoder_digest(&manifest.io.image)
            .map_err(|e| e.to_string())?;
        if image != self.image_encoder_sha256 {
            return Err(format!(
                "bound to image encoder {}, but the bundle's is {image}: {again}",
                self.image_encoder_sha256
            ));
        }
        if manifest.preprocess != self.preprocess {
            return Err(format!(
                "bound to preprocessing {}, but the bundle's is {}: {again}",
                serde_json::to_string(&self.preprocess).unwrap_or_default(),
                serde_json::to_string(&manifest.preprocess).unwrap_or_default()
            ));
        }
        let text = manifest
            .encoder_digest(&manifest.io.text)
            .map_err(|e| e.to_string())?;
        if text != self.text_encoder_sha256 {
            return Err(format!(
                "bound to text encoder {}, but the bundle's is {text}: {again}",
                self.text_encoder_sha256
            ));
        }
        if manifest.tokenizer != self.tokenizer {
            return Err(format!(
                "bound to tokenizer {}, but the bundle's is {}: {again}",
                serde_json::to_string(&self.tokenizer).unwrap_or_default(),
                serde_json::to_string(&manifest.tokenizer).unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// Write a calibration into the bundle at `dir` (whose manifest is `manifest`): the
/// two files (each written to a temporary file, synced and renamed), then the
/// manifest naming and pinning them, last. A bundle read meanwhile is the old one or
/// the new one; an interrupted write leaves the old manifest, which does not name
/// the new files.
pub fn write(
    dir: &Path,
    manifest: &mut Manifest,
    file: &ScoreCalibrationFile,
    background: &Background,
) -> Result<(), CoreError> {
    file.check_binding(manifest)
        .map_err(|e| CoreError::Invalid(format!("{}: {e}", dir.display())))?;
    let bytes = crate::npy::to_npy_bytes(&[background.len(), background.dim], &background.vectors)?;
    crate::fsutil::write_atomic(&dir.join(SCORE_BACKGROUND_FILE), &bytes)?;
    let mut json = serde_json::to_vec_pretty(file)
        .map_err(|e| CoreError::Invalid(format!("serialising the score calibration: {e}")))?;
    json.push(b'\n');
    crate::fsutil::write_atomic(&dir.join(SCORE_CALIBRATION_FILE), &json)?;
    manifest.add_file(dir, SCORE_BACKGROUND_FILE)?;
    manifest.add_file(dir, SCORE_CALIBRATION_FILE)?;
    manifest.score_calibration = Some(ScoreCalibrationRef {
        file: SCORE_CALIBRATION_FILE.into(),
        background: SCORE_BACKGROUND_FILE.into(),
    });
    manifest.save(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scores::LrCurve;

    fn fit(prior: f64) -> LrFit {
        LrFit {
            curve: LrCurve {
                z: vec![0.0, 4.0],
                ln_lr: vec![-2.0, 6.0],
            },
            matches: 10,
            non_matches: 990,
            prior,
        }
    }

    /// A bundle (placeholder encoders) with a calibration written into it.
    fn calibrated(dir: &Path) -> (Manifest, ScoreCalibrationFile) {
        let mut m = Manifest::example(dir);
        m.save(dir).unwrap();
        let dim = m.model.embed_dim;
        let file = ScoreCalibrationFile {
            version: SCORE_CALIBRATION_VERSION,
            image_encoder_sha256: m.encoder_digest(&m.io.image).unwrap(),
            preprocess: m.preprocess.clone(),
            text_encoder_sha256: m.encoder_digest(&m.io.text).unwrap(),
            tokenizer: m.tokenizer.clone(),
            background_count: 4,
            dim,
            text: fit(0.01),
            image: fit(0.02),
            fitted: Fitted {
                dataset: "synth".into(),
                split: "val".into(),
                text_queries: 1,
                image_queries: 1,
                background_split: "train".into(),
            },
        };
        let mut v = vec![0.0f32; 4 * dim];
        for i in 0..4 {
            v[i * dim + i] = 1.0;
        }
        write(dir, &mut m, &file, &Background::new(dim, v).unwrap()).unwrap();
        (m, file)
    }

    #[test]
    fn a_written_calibration_loads_and_gives_p() {
        let d = tempfile::tempdir().unwrap();
        let (_, file) = calibrated(d.path());
        let m = Manifest::load(d.path()).unwrap();
        assert!(m.files.contains_key(SCORE_CALIBRATION_FILE));
        assert!(m.files.contains_key(SCORE_BACKGROUND_FILE));
        let c = ScoreCalibration::load(d.path(), &m).unwrap().unwrap();
        assert_eq!(c.file, file);
        // Query e0 against the background e0..e3: scores 1, 0, 0, 0: mean 1/4,
        // sample std sqrt(((3/4)^2 + 3 (1/4)^2) / 3) = 1/2.
        let mut q = vec![0.0f32; m.model.embed_dim];
        q[0] = 1.0;
        let mo = c.moments(&q).unwrap();
        assert!((mo.mean - 0.25).abs() < 1e-9 && (mo.std - 0.5).abs() < 1e-9);
        // Score 1.25: z = 2, ln LR = 2 (halfway between the knots).
        // At the text fit's prior 0.01: odds e^2 * 0.01/0.99.
        let odds = 2f64.exp() * 0.01 / 0.99;
        let p = c.p(QueryKind::Text, &mo, 1.25, None);
        assert!((p - odds / (1.0 + odds)).abs() < 1e-9, "{p}");
        // A given prior replaces the stored one; the image fit has its own.
        let odds = 2f64.exp();
        assert!((c.p(QueryKind::Text, &mo, 1.25, Some(0.5)) - odds / (1.0 + odds)).abs() < 1e-9);
        let odds = 2f64.exp() * 0.02 / 0.98;
        assert!((c.p(QueryKind::Image, &mo, 1.25, None) - odds / (1.0 + odds)).abs() < 1e-9);
    }

    #[test]
    fn a_bundle_without_one_has_none() {
        let d = tempfile::tempdir().unwrap();
        let m = Manifest::example(d.path());
        assert!(ScoreCalibration::load(d.path(), &m).unwrap().is_none());
    }

    #[test]
    fn other_encoders_or_preprocessing_invalidate_it() {
        let d = tempfile::tempdir().unwrap();
        let (m, _) = calibrated(d.path());
        let refused = |m: &Manifest, what: &str| {
            let e = ScoreCalibration::load(d.path(), m).unwrap_err().to_string();
            assert!(
                e.contains(what)
                    && e.contains("sen calibrate-scores")
                    && e.contains(SCORE_CALIBRATION_FILE),
                "{e}"
            );
        };
        // Another resize filter: same ONNX files, other embeddings.
        let mut other = m.clone();
        other.preprocess.resize = "bilinear".into();
        refused(&other, "preprocessing");
        let mut other = m.clone();
        other.preprocess.mean[0] += 0.01;
        refused(&other, "preprocessing");
        // Another image or text encoder (its file's digest).
        let mut other = m.clone();
        other.files.get_mut(&m.io.image.file).unwrap().sha256 = "ab".repeat(32);
        refused(&other, "image encoder");
        let mut other = m.clone();
        other.files.get_mut(&m.io.text.file).unwrap().sha256 = "cd".repeat(32);
        refused(&other, "text encoder");
        let mut other = m.clone();
        other.tokenizer.context_length -= 1;
        refused(&other, "tokenizer");
        // Writing one for other encoders is refused before anything is written.
        let mut other = m.clone();
        let mut file: ScoreCalibrationFile =
            serde_json::from_slice(&std::fs::read(d.path().join(SCORE_CALIBRATION_FILE)).unwrap())
                .unwrap();
        file.image_encoder_sha256 = "ef".repeat(32);
        let bg = Background::new(m.model.embed_dim, vec![0.5; 2 * m.model.embed_dim]).unwrap();
        assert!(write(d.path(), &mut other, &file, &bg).is_err());
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let (m, _) = calibrated(d.path());
        // A tampered calibration fails the manifest's pin.
        let p = d.path().join(SCORE_CALIBRATION_FILE);
        let s = std::fs::read_to_string(&p).unwrap().replace("0.01", "0.02");
        std::fs::write(&p, s).unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains(SCORE_CALIBRATION_FILE), "{e}");
        // A curve that decreases is refused by content (re-pinned so only it is wrong).
        let mut m2 = m.clone();
        let mut f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f["text"]["curve"]["ln_lr"] = serde_json::json!([6.0, -2.0]);
        std::fs::write(&p, f.to_string()).unwrap();
        m2.add_file(d.path(), SCORE_CALIBRATION_FILE).unwrap();
        let e = ScoreCalibration::load(d.path(), &m2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`text`") && e.contains("must not decrease"),
            "{e}"
        );
        // A manifest naming a file it does not pin.
        let mut m3 = m.clone();
        m3.files.remove(SCORE_BACKGROUND_FILE);
        let e = m3.verify_files(d.path()).unwrap_err().to_string();
        assert!(e.contains(SCORE_BACKGROUND_FILE), "{e}");
    }
}
