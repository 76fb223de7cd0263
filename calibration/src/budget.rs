//! `--max-drop`: an int8 bundle that keeps its accuracy, or no bundle.
//!
//! The budget is in R@1 points lost against the fp32 bundle on the **val** split
//! (never test, which stays the honest held-out figure in the report). The search:
//! 1. Try the range methods, `--method` first, then the others (the ranges are
//!    collected once; each method only picks other thresholds). The first that meets
//!    the budget wins.
//! 2. Otherwise, from the method that lost least, rank every quantised layer by what
//!    keeping it alone in float gives back: the mean embedding cosine against fp32 on
//!    at most [`RANK_SAMPLES`] calibration images (image layers) or captions (text
//!    layers), as accuracy-aware quantisers such as NNCF's rank their quantizers.
//! 3. Keep the top-ranked layers in float, 1, 2, 4, ... then bisect, until the budget
//!    is met on val, keeping at most half of the quantised layers in float (beyond
//!    that the bundle is mostly fp32 and int8 buys little; `--max-float-layers`). When even that misses,
//!    the calibration fails with the report written beside `--out` and no bundle.

use crate::collect::CalibrationData;
use crate::stats::Method;
use crate::{CalibrateError, CalibrateOptions, Quantized, write_bundle};
use ndarray::Array2;
use prost::Message;
use sen_core::data::{Dataset, Split};
use sen_core::manifest::{CalibrationInfo, Manifest};
use sen_core::metrics::RetrievalMetrics;
use sen_core::{ClipTokenizer, Preprocessor};
use sen_export::proto::ModelProto;
use sen_runtime::encoders::Encoders;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Images (and captions) the layer ranking encodes per candidate.
pub const RANK_SAMPLES: usize = 512;
/// Batch of the speed cost of the layers kept in float.
pub const SPEED_BATCH: usize = 32;

/// Node names kept in float, per encoder (image, text).
pub type FloatSet = [BTreeSet<String>; 2];
const ENCODERS: [&str; 2] = ["image", "text"];

/// One range method tried against the budget.
#[derive(Debug, Clone, Serialize)]
pub struct MethodTrial {
    pub method: String,
    pub r1: f64,
    pub r1_drop: f64,
    pub map_drop: f64,
}

/// What keeping one layer alone in float gives back.
#[derive(Debug, Clone, Serialize)]
pub struct LayerCost {
    pub encoder: String,
    pub node: String,
    /// Mean cosine against fp32 with every layer quantised, and with this one in float.
    pub cosine_int8: f64,
    pub cosine_with_float: f64,
}

/// One mix tried: the top `kept_float` layers of the ranking in float.
#[derive(Debug, Clone, Serialize)]
pub struct MixTrial {
    pub kept_float: usize,
    pub r1: f64,
    pub r1_drop: f64,
}

/// The image encoder at [`SPEED_BATCH`] with every layer quantised and with the kept
/// layers in float.
#[derive(Debug, Clone, Serialize)]
pub struct FloatCost {
    pub batch: usize,
    pub provider: String,
    pub all_int8_ms: f64,
    pub with_float_ms: f64,
    /// with_float_ms / all_int8_ms.
    pub slowdown: f64,
}

/// The search, as written into `calibration_report.json` (`accuracy`).
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    /// `--max-drop`: R@1 points on val.
    pub budget_r1: f64,
    pub split: String,
    pub fp32: RetrievalMetrics,
    pub methods: Vec<MethodTrial>,
    /// The method of the bundle (or of the best try, when the budget was missed).
    pub method: String,
    /// Empty when a method met the budget by itself.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ranking: Vec<LayerCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranked_on: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mixes: Vec<MixTrial>,
    /// "encoder: node" of every layer kept in float.
    pub kept_float: Vec<String>,
    /// Val metrics of the chosen (or best) int8 mix.
    pub int8: RetrievalMetrics,
    pub r1_drop: f64,
    pub met: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<FloatCost>,
}

/// Quantise encoder `i` (0 image, 1 text) with a method, leaving the named nodes in float.
pub(crate) type QuantizeFn<'a> =
    dyn Fn(usize, Method, &BTreeSet<String>) -> Result<Quantized, CalibrateError> + 'a;

pub(crate) struct Search<'a> {
    pub bundle: &'a Path,
    pub manifest: &'a Manifest,
    pub ds: &'a Dataset,
    pub data: &'a CalibrationData,
    pub pre: &'a Preprocessor,
    pub tok: &'a ClipTokenizer,
    pub opts: &'a CalibrateOptions,
    pub budget: f64,
    pub quantize: &'a QuantizeFn<'a>,
    pub info: &'a CalibrationInfo,
    pub quantized_nodes: usize,
}

/// The methods in the order they are tried: `first`, then the others.
pub fn method_order(first: Method) -> Vec<Method> {
    let mut v = vec![first];
    for m in [Method::Entropy, Method::Percentile, Method::MinMax] {
        if m != first {
            v.push(m);
        }
    }
    v
}

/// The largest number of layers kept in float: half of the quantised ones.
pub fn float_cap(quantized_nodes: usize) -> usize {
    (quantized_nodes / 2).max(1)
}

/// The mix sizes to try, given `meets(k)`: 1, 2, 4, ... up to `cap`, then bisection
/// between the last miss and the first hit. Returns the smallest size found that
/// meets, or None when `cap` misses too.
pub fn search_mix(
    cap: usize,
    mut meets: impl FnMut(usize) -> Result<bool, CalibrateError>,
) -> Result<Option<usize>, CalibrateError> {
    let (mut lo, mut k) = (0usize, 1usize);
    let hi = loop {
        if meets(k)? {
            break k;
        }
        lo = k;
        if k >= cap {
            return Ok(None);
        }
        k = (2 * k).min(cap);
    };
    let mut hi = hi;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if meets(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

fn mean_cosine(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    let n = a.nrows().max(1) as f64;
    a.rows()
        .into_iter()
        .zip(b.rows())
        .map(|(x, y)| x.dot(&y) as f64)
        .sum::<f64>()
        / n
}

/// Refuse a `--max-drop` run that cannot work, before any range is collected.
pub(crate) fn check(
    budget: f64,
    opts: &CalibrateOptions,
    ds: &Dataset,
) -> Result<(), CalibrateError> {
    if opts.max_float == Some(0) {
        return Err(CalibrateError::Input(
            "--max-float-layers 0: at least one layer must be allowed in float (or pass --max-drop none)"
                .into(),
        ));
    }
    if !(budget.is_finite() && budget >= 0.0) {
        return Err(CalibrateError::Input(format!(
            "--max-drop {}: must be a number of R@1 points >= 0 (or none)",
            budget
        )));
    }
    if ds.split(Split::Val).next().is_none() {
        return Err(CalibrateError::Input(format!(
            "--max-drop measures the int8 bundle on the val split, which {} does not have \
             (ICFG-PEDES has none); pass --max-drop none to calibrate without the check",
            ds.root.display()
        )));
    }
    Ok(())
}

impl Search<'_> {
    /// Both encoders quantised with `method`, `float` left in float.
    pub(crate) fn both(
        &self,
        method: Method,
        float: &FloatSet,
    ) -> Result<[Quantized; 2], CalibrateError> {
        Ok([
            (self.quantize)(0, method, &float[0])?,
            (self.quantize)(1, method, &float[1])?,
        ])
    }

    pub(crate) fn run(
        &self,
        out: &Path,
    ) -> Result<(Method, FloatSet, AccuracyReport), CalibrateError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let scratch = tempfile::Builder::new()
            .prefix(".sen-calibrate-search-")
            .tempdir_in(&parent)
            .map_err(|e| CalibrateError::io(&parent, e))?;
        let provider = &self.opts.provider;
        let fp32 = {
            let enc = Encoders::load(self.bundle, provider)?;
            sen_runtime::eval::evaluate(&enc, self.ds, Split::Val, |_| {})?.metrics
        };
        let mut seq = 0usize;
        let mut write = |qs: &[Quantized; 2]| -> Result<PathBuf, CalibrateError> {
            seq += 1;
            let dir = scratch.path().join(format!("try{seq}"));
            std::fs::create_dir_all(&dir).map_err(|e| CalibrateError::io(&dir, e))?;
            write_bundle(
                self.bundle,
                self.manifest,
                &dir,
                [&qs[0], &qs[1]],
                false,
                self.info,
                None,
                self.opts,
            )?;
            Ok(dir)
        };
        let val = |dir: &Path| -> Result<RetrievalMetrics, CalibrateError> {
            let enc = Encoders::load(dir, provider)?;
            let m = sen_runtime::eval::evaluate(&enc, self.ds, Split::Val, |_| {})?.metrics;
            drop(enc);
            let _ = std::fs::remove_dir_all(dir);
            Ok(m)
        };
        let none: FloatSet = Default::default();
        let mut report = AccuracyReport {
            budget_r1: self.budget,
            split: "val".into(),
            fp32,
            methods: vec![],
            method: String::new(),
            ranking: vec![],
            ranked_on: None,
            mixes: vec![],
            kept_float: vec![],
            int8: fp32,
            r1_drop: f64::INFINITY,
            met: false,
            speed: None,
        };
        let mut best: Option<(Method, RetrievalMetrics)> = None;
        for method in method_order(self.opts.method) {
            let m = val(&write(&self.both(method, &none)?)?)?;
            let drop = fp32.r1 - m.r1;
            tracing::info!(
                "--max-drop {}: {method} loses {drop:.2} R@1 points on val",
                self.budget
            );
            report.methods.push(MethodTrial {
                method: method.to_string(),
                r1: m.r1,
                r1_drop: drop,
                map_drop: fp32.map - m.map,
            });
            if best.is_none_or(|(_, b)| m.r1 > b.r1) {
                best = Some((method, m));
            }
            if drop <= self.budget {
                report.method = method.to_string();
                report.int8 = m;
                report.r1_drop = drop;
                report.met = true;
                return Ok((method, none, report));
            }
        }
        let (method, base_val) = best.expect("at least one method");
        report.method = method.to_string();
        report.int8 = base_val;
        report.r1_drop = fp32.r1 - base_val.r1;

        // Rank the layers of the best method by what keeping each in float gives back.
        let base = self.both(method, &none)?;
        let (ranking, ranked_on) = self.rank(method, &base)?;
        report.ranked_on = Some(ranked_on);
        report.ranking = ranking;
        let cap = self
            .opts
            .max_float
            .unwrap_or_else(|| float_cap(self.quantized_nodes))
            .min(report.ranking.len());
        let float_of = |k: usize| -> FloatSet {
            let mut f: FloatSet = Default::default();
            for c in &report.ranking[..k] {
                let e = ENCODERS
                    .iter()
                    .position(|&e| e == c.encoder)
                    .expect("encoder");
                f[e].insert(c.node.clone());
            }
            f
        };
        let mut mixes: Vec<(MixTrial, RetrievalMetrics)> = vec![];
        let found = search_mix(cap, |k| {
            let m = val(&write(&self.both(method, &float_of(k))?)?)?;
            let drop = fp32.r1 - m.r1;
            tracing::info!(
                "--max-drop {}: {k} layer(s) in float lose {drop:.2} R@1 points on val",
                self.budget
            );
            mixes.push((
                MixTrial {
                    kept_float: k,
                    r1: m.r1,
                    r1_drop: drop,
                },
                m,
            ));
            Ok(drop <= self.budget)
        })?;
        report.mixes = mixes.iter().map(|(t, _)| t.clone()).collect();
        let chosen = found.unwrap_or(cap);
        let (trial, metrics) = mixes
            .iter()
            .find(|(t, _)| t.kept_float == chosen)
            .cloned()
            .expect("the chosen mix was tried");
        report.int8 = metrics;
        report.r1_drop = trial.r1_drop;
        report.met = found.is_some();
        report.kept_float = report.ranking[..chosen]
            .iter()
            .map(|c| format!("{}: {}", c.encoder, c.node))
            .collect();
        if report.met && self.opts.time_batch.is_some() {
            let all = write(&base)?;
            let mixed = write(&self.both(method, &float_of(chosen))?)?;
            let s = crate::time_image_encoders(&all, &mixed, self.ds, SPEED_BATCH, provider)?;
            report.speed = Some(FloatCost {
                batch: SPEED_BATCH,
                provider: s.provider,
                all_int8_ms: s.fp32_ms,
                with_float_ms: s.int8_ms,
                slowdown: s.int8_ms / s.fp32_ms,
            });
        }
        if !report.met {
            let path = PathBuf::from(format!("{}.calibration_report.json", out.display()));
            let json = serde_json::to_string_pretty(&report).expect("report serialises");
            sen_core::fsutil::write_atomic(&path, json.as_bytes())?;
            return Err(CalibrateError::Input(format!(
                "--max-drop {}: no int8 bundle written. On val (fp32 R@1 {:.2}) every method lost more \
                 ({}), and with the {cap} costliest layers in float (of {} quantised; \
                 --max-float-layers) it still loses {:.2} points. The search is in {}; raise --max-drop, calibrate on more \
                 --samples, or keep the model in fp16",
                self.budget,
                fp32.r1,
                report
                    .methods
                    .iter()
                    .map(|m| format!("{} {:.2}", m.method, m.r1_drop))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.quantized_nodes,
                report.r1_drop,
                path.display()
            )));
        }
        tracing::info!(
            "--max-drop {}: {} with {} layer(s) in float loses {:.2} R@1 points on val",
            self.budget,
            method,
            chosen,
            report.r1_drop
        );
        Ok((method, float_of(chosen), report))
    }

    /// Every quantised layer with the mean embedding cosine against fp32 it gives back
    /// when kept alone in float, most first. Candidates run from memory (one ONNX
    /// Runtime session each, no bundle written), on the calibration samples.
    fn rank(
        &self,
        method: Method,
        base: &[Quantized; 2],
    ) -> Result<(Vec<LayerCost>, String), CalibrateError> {
        let images = &self.data.images[..self.data.images.len().min(RANK_SAMPLES)];
        let captions = &self.data.captions[..self.data.captions.len().min(RANK_SAMPLES)];
        let feeds = Feeds {
            pixels: images
                .chunks(32)
                .map(|c| self.pre.load_batch(c))
                .collect::<Result<_, _>>()?,
            texts: captions
                .chunks(64)
                .map(|c| self.tok.encode_arrays(c))
                .collect::<Result<_, _>>()?,
        };
        let ios = [&self.manifest.io.image, &self.manifest.io.text];
        let embed = |e: usize, model: &ModelProto| feeds.embed(e, ios[e], model, self.opts);
        let mut ranking = vec![];
        for (e, name) in ENCODERS.iter().enumerate() {
            let fp32 = embed(
                e,
                &crate::model::load_model(&self.bundle.join(&ios[e].file))?,
            )?;
            let base_cos = mean_cosine(&fp32, &embed(e, &base[e].model)?);
            for node in &base[e].report.quantized_nodes {
                let float = BTreeSet::from([node.clone()]);
                let q = (self.quantize)(e, method, &float)?;
                ranking.push(LayerCost {
                    encoder: name.to_string(),
                    node: node.clone(),
                    cosine_int8: base_cos,
                    cosine_with_float: mean_cosine(&fp32, &embed(e, &q.model)?),
                });
            }
        }
        let gain = |c: &LayerCost| c.cosine_with_float - c.cosine_int8;
        ranking.sort_by(|a, b| gain(b).total_cmp(&gain(a)));
        let on = format!(
            "mean embedding cosine against fp32 on {} images and {} captions of the {} split",
            images.len(),
            captions.len(),
            self.data.split.name()
        );
        Ok((ranking, on))
    }
}

/// The ranking's inputs, prepared once.
struct Feeds {
    pixels: Vec<ndarray::Array4<f32>>,
    texts: Vec<(Array2<i64>, ndarray::Array1<i64>)>,
}

impl Feeds {
    /// Encoder `e` (0 image, 1 text) as `model` over the feeds: `[N, D]` rows.
    fn embed(
        &self,
        e: usize,
        io: &sen_core::manifest::EncoderIo,
        model: &ModelProto,
        opts: &CalibrateOptions,
    ) -> Result<Array2<f32>, CalibrateError> {
        use ort::value::TensorRef;
        let err = |x: String| CalibrateError::Input(format!("{}: ONNX Runtime: {x}", io.file));
        let mut session = sen_runtime::encoders::session_from_memory(
            &model.encode_to_vec(),
            &format!("{} (--max-drop ranking)", io.file),
            &opts.provider,
        )?;
        let out = io.outputs[0].name.as_str();
        let mut rows: Vec<Array2<f32>> = vec![];
        let batches = if e == 0 {
            self.pixels.len()
        } else {
            self.texts.len()
        };
        for k in 0..batches {
            let outputs = if e == 0 {
                let t = TensorRef::from_array_view(self.pixels[k].view())
                    .map_err(|x| err(x.to_string()))?;
                session.run(ort::inputs![io.inputs[0].name.as_str() => t])
            } else {
                let (ids, eot) = &self.texts[k];
                // A format-2 encoder takes batches cut to their last EOT + 1.
                let ids = if io.has_dynamic_sequence() {
                    let len = eot.iter().copied().max().unwrap_or(0) as usize + 1;
                    ids.slice(ndarray::s![.., ..len]).to_owned()
                } else {
                    ids.clone()
                };
                let a = TensorRef::from_array_view(ids.view()).map_err(|x| err(x.to_string()))?;
                let b = TensorRef::from_array_view(eot.view()).map_err(|x| err(x.to_string()))?;
                session.run(
                    ort::inputs![io.inputs[0].name.as_str() => a, io.inputs[1].name.as_str() => b],
                )
            }
            .map_err(|x| err(x.to_string()))?;
            let v = outputs
                .get(out)
                .ok_or_else(|| err(format!("no output {out}")))?;
            let (shape, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|x| err(x.to_string()))?;
            let (n, d) = (shape[0] as usize, shape[1] as usize);
            rows.push(Array2::from_shape_vec((n, d), data.to_vec()).expect("shape"));
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        Ok(ndarray::concatenate(ndarray::Axis(0), &views).expect("same width"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_start_with_the_chosen_one() {
        assert_eq!(
            method_order(Method::Percentile),
            [Method::Percentile, Method::Entropy, Method::MinMax]
        );
        assert_eq!(method_order(Method::Entropy)[0], Method::Entropy);
        assert_eq!(method_order(Method::MinMax).len(), 3);
    }

    /// Doubling then bisection finds the smallest passing size of a monotone test,
    /// and says None when even the cap fails.
    #[test]
    fn mix_search_finds_the_smallest_size() {
        for need in 1..=20usize {
            let mut tried = vec![];
            let got = search_mix(20, |k| {
                tried.push(k);
                Ok(k >= need)
            })
            .unwrap();
            assert_eq!(got, Some(need), "tried {tried:?}");
            assert!(tried.len() <= 10, "{tried:?}");
        }
        assert_eq!(search_mix(6, |_| Ok(false)).unwrap(), None);
        let mut tried = vec![];
        search_mix(6, |k| {
            tried.push(k);
            Ok(false)
        })
        .unwrap();
        assert_eq!(tried, [1, 2, 4, 6]);
        assert_eq!(float_cap(1), 1);
        assert_eq!(float_cap(51), 25);
    }
}
