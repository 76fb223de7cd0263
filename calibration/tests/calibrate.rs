//! sen-calibrate on a real (random-weight, tiny-preset) bundle exported by sen-export
//! and a small synthetic dataset: which ops get Q/DQ, the TensorRT caches against the
//! Q/DQ models, the int8 bundle ranking the test split like the fp32 one, and the bad
//! inputs the issue lists.

use prost::Message;
use sen_calibrate::model::{self, Selection};
use sen_calibrate::stats::Method;
use sen_calibrate::{CalibrateOptions, calibrate, trtcache};
use sen_core::Manifest;
use sen_export::proto::{ModelProto, NodeProto, data_type};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn bundle(dir: &Path, seed: u64, fp16: bool) -> PathBuf {
    let ckpt = dir.join(format!("ckpt{seed}"));
    sen_export::fixtures::random_checkpoint(&sen_core::ModelConfig::tiny(), &ckpt, seed).unwrap();
    let out = dir.join(format!("bundle{seed}{}", if fp16 { "-fp16" } else { "" }));
    let opts = sen_export::ExportOptions {
        fp16,
        ..Default::default()
    };
    sen_export::export(&ckpt, &out, &opts).unwrap();
    out
}

/// 26 identities x 2 images: 20/2/4 train/val/test identities.
fn synth(dir: &Path) -> PathBuf {
    let root = dir.join("synth");
    sen_core::synth::generate(
        &root,
        &sen_core::synth::SynthConfig {
            ids: 26,
            images_per_id: 2,
            seed: 3,
        },
    )
    .unwrap();
    root
}

fn options(data: &Path) -> CalibrateOptions {
    let mut o = CalibrateOptions::new(data);
    o.samples = 24;
    o.batch = 8;
    o.time_batch = None;
    // The budget search has its own test (max_drop_keeps_the_planted_layer_in_float).
    o.max_drop = None;
    o
}

fn load(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

struct Graph<'a> {
    producer: HashMap<&'a str, &'a NodeProto>,
    inits: HashMap<&'a str, &'a sen_export::proto::TensorProto>,
}

impl<'a> Graph<'a> {
    fn new(m: &'a ModelProto) -> Self {
        let g = m.graph.as_ref().unwrap();
        Graph {
            producer: g
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
                .collect(),
            inits: g.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
        }
    }

    fn op_of(&self, tensor: &str) -> &str {
        self.producer
            .get(tensor)
            .map(|n| n.op_type.as_str())
            .unwrap_or("")
    }
}

fn attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Check the Q/DQ placement of `q` (quantised from `f`); returns (weights, activations).
fn check_placement(f: &ModelProto, q: &ModelProto) -> (usize, usize) {
    let (fg, qg) = (Graph::new(f), Graph::new(q));
    let fnodes: HashMap<&str, &NodeProto> = f
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect();
    let (mut weights, mut acts) = (0, 0);
    for n in &q.graph.as_ref().unwrap().node {
        match n.op_type.as_str() {
            "MatMul" | "Conv" | "Gemm" => {
                let orig = fnodes[n.name.as_str()];
                let has_weight = orig.input[..2]
                    .iter()
                    .any(|i| fg.inits.contains_key(i.as_str()));
                if !has_weight {
                    // Attention's two-activation MatMuls stay float by default.
                    assert_eq!(n.input, orig.input, "{} should be untouched", n.name);
                    continue;
                }
                for (slot, x) in n.input.iter().enumerate().take(2) {
                    let dq = qg.producer[x.as_str()];
                    assert_eq!(dq.op_type, "DequantizeLinear", "{} input {slot}", n.name);
                    let src = &orig.input[slot];
                    if let Some(w) = fg.inits.get(src.as_str()) {
                        // int8 weight of the same shape, one scale per output channel.
                        let qi = qg.inits[dq.input[0].as_str()];
                        assert_eq!(qi.data_type, data_type::INT8);
                        assert_eq!(qi.dims, w.dims);
                        let axis = attr(dq, "axis").unwrap() as usize;
                        let want_axis = if n.op_type == "Conv" {
                            0
                        } else {
                            w.dims.len() - 1
                        };
                        assert_eq!(axis, want_axis, "{}", n.name);
                        let scale = qg.inits[dq.input[1].as_str()];
                        assert_eq!(scale.dims, vec![w.dims[axis]], "{}", n.name);
                        let zp = qg.inits[dq.input[2].as_str()];
                        assert_eq!(zp.data_type, data_type::INT8);
                        assert!(
                            zp.raw_data.iter().all(|&b| b == 0),
                            "symmetric: zero point 0"
                        );
                        // The float weight is gone.
                        assert!(!qg.inits.contains_key(src.as_str()), "{src} still float");
                        weights += 1;
                    } else {
                        // Activation: per-tensor Q of the original tensor, then DQ.
                        let qn = qg.producer[dq.input[0].as_str()];
                        assert_eq!(qn.op_type, "QuantizeLinear");
                        assert_eq!(&qn.input[0], src, "{}", n.name);
                        assert_eq!(qn.input[1], dq.input[1], "Q and DQ share the scale");
                        assert!(qg.inits[qn.input[1].as_str()].dims.is_empty(), "per tensor");
                        acts += 1;
                    }
                }
            }
            "LayerNormalization" | "Softmax" | "Sigmoid" | "Add" | "Mul" | "ReduceL2"
            | "Gather" | "GatherElements" => {
                for x in &n.input {
                    assert_ne!(
                        qg.op_of(x),
                        "DequantizeLinear",
                        "{} ({}) must stay float",
                        n.name,
                        n.op_type
                    );
                }
            }
            _ => {}
        }
    }
    (weights, acts)
}

#[test]
fn calibrated_bundle_places_qdq_ranks_like_fp32_and_carries_tensorrt_caches() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 5, false);
    let data = synth(d.path());
    let out = d.path().join("int8");
    let r = calibrate(&b, &out, &options(&data)).unwrap();

    // The manifest: int8, with the calibration recorded and every file verified.
    let m = Manifest::load(&out).unwrap();
    let src = Manifest::load(&b).unwrap();
    assert_eq!(m.precision, sen_core::Precision::Int8);
    let c = m.calibration.as_ref().unwrap();
    assert_eq!((c.method.as_str(), c.samples), ("entropy", 24));
    assert_eq!(c.data_sha256, r.data_sha256);
    assert_eq!(m.io, src.io);
    assert_eq!(m.preprocess, src.preprocess);
    for f in [
        "image_encoder.onnx",
        "text_encoder.onnx",
        "tokenizer.json",
        "implicit/image_encoder.onnx",
        "implicit/text_encoder.onnx",
        "implicit/image_encoder.calib",
        "implicit/text_encoder.calib",
        "calibration_report.json",
    ] {
        assert!(m.files.contains_key(f), "{f} missing from the manifest");
    }
    // The implicit models are the fp32 ones, byte for byte.
    assert_eq!(
        m.files["implicit/image_encoder.onnx"].sha256,
        src.files["image_encoder.onnx"].sha256
    );

    // Q/DQ placement, both encoders: 4 blocks x (q, k, v, out, fc, proj) + conv/proj.
    let cfg = sen_core::ModelConfig::tiny();
    for (file, extra) in [("image_encoder.onnx", 2), ("text_encoder.onnx", 1)] {
        let f = load(&b.join(file));
        let q = load(&out.join(file));
        let (w, a) = check_placement(&f, &q);
        let per_block = 6;
        let layers = cfg.vision.layers; // == text layers in the tiny preset
        assert_eq!(w, per_block * layers + extra, "{file} weights");
        assert_eq!(
            a, w,
            "{file}: every quantised node has one activation input"
        );

        // The TensorRT cache holds exactly the activation scales of the Q/DQ model.
        let cache = trtcache::read(
            &std::fs::read_to_string(
                out.join("implicit")
                    .join(sen_calibrate::calibration_cache_name(file)),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(cache.calibrator, "EntropyCalibration2");
        assert_eq!(cache.version, 101303);
        let g = Graph::new(&q);
        let mut in_model: BTreeMap<String, f32> = BTreeMap::new();
        for n in &q.graph.as_ref().unwrap().node {
            if n.op_type == "QuantizeLinear" {
                let s = g.inits[n.input[1].as_str()];
                let v = f32::from_le_bytes(s.raw_data[..4].try_into().unwrap());
                in_model.insert(n.input[0].clone(), v);
            }
        }
        let cached: BTreeMap<String, f32> = cache.scales.into_iter().collect();
        assert_eq!(cached, in_model, "{file}");
    }

    // The int8 bundle ranks the held-out split like the fp32 one.
    let e = r.evaluation.as_ref().unwrap();
    assert_eq!(e.split, "test");
    assert!(e.image_cosine.mean >= 0.99, "{:?}", e.image_cosine);
    assert!(e.text_cosine.mean >= 0.99, "{:?}", e.text_cosine);
    assert!(
        (e.fp32.r1 - e.int8.r1).abs() <= 12.5 + 1e-9,
        "at most one of the 8 test queries changes its top 1: {} vs {}",
        e.fp32.r1,
        e.int8.r1
    );
    assert!((e.fp32.map - e.int8.map).abs() < 5.0);
    // sen eval runs the int8 bundle and reports its precision.
    let enc = sen_runtime::encoders::Encoders::load_cpu(&out).unwrap();
    let ds = sen_core::data::Dataset::load(&data, None).unwrap();
    let ev = sen_runtime::eval::evaluate(&enc, &ds, sen_core::data::Split::Test, |_| {}).unwrap();
    assert_eq!(ev.metrics, e.int8);

    // Report: every activation with a positive scale and its range.
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("calibration_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rep["method"], "entropy");
    let acts = rep["image"]["activations"].as_array().unwrap();
    assert_eq!(acts[0]["name"], "pixel_values");
    for a in acts {
        let (amax, mx) = (a["amax"].as_f64().unwrap(), a["max"].as_f64().unwrap());
        let mn = a["min"].as_f64().unwrap();
        assert!(amax > 0.0 && amax <= mx.abs().max(mn.abs()) + 1e-6, "{a}");
        assert!((a["scale"].as_f64().unwrap() - amax / 127.0).abs() < 1e-6 * amax.max(1.0));
    }

    // The bundle is refused as a calibration source.
    let e = calibrate(&out, &d.path().join("again"), &options(&data)).unwrap_err();
    assert!(e.to_string().contains("already int8"), "{e}");

    // The weight precision follows this CPU (7 bits where ONNX Runtime's u8 x s8
    // sums saturate, x86-64 without VNNI; 8 elsewhere) and is recorded.
    let here = sen_calibrate::CpuInt8::detect();
    assert_eq!(c.weight_bits, here.weight_bits().bits());
    assert!(
        c.weight_bits_why
            .as_deref()
            .unwrap()
            .contains(here.describe())
    );
    assert_eq!(r.weight_bits, c.weight_bits);
}

/// Both weight precisions forced on whatever CPU runs the test: each is recorded,
/// its weights stay inside its range, and the int8 bundle still ranks like fp32.
/// (On this project's AVX2 machines without VNNI, 8-bit weights lost accuracy to
/// ONNX Runtime's saturating 16-bit sums: image cosine 0.9898.)
#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "x86-64's int8 kernels are the point; under qemu-aarch64 it costs minutes of make test-aarch64"
)]
fn seven_and_eight_bit_weights_both_keep_the_embeddings() {
    use sen_calibrate::WeightBits;
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 5, false);
    let data = synth(d.path());
    let saturates = sen_calibrate::CpuInt8::detect().saturates();
    for bits in [WeightBits::Seven, WeightBits::Eight] {
        let out = d.path().join(format!("int8-{}", bits.bits()));
        let mut o = options(&data);
        o.weight_bits = Some(bits);
        let r = calibrate(&b, &out, &o).unwrap();
        let c = Manifest::load(&out).unwrap().calibration.unwrap();
        assert_eq!(c.weight_bits, bits.bits());
        assert_eq!(
            c.weight_bits_why.as_deref(),
            Some(format!("--weight-bits {}", bits.bits()).as_str())
        );
        let q = load(&out.join("image_encoder.onnx"));
        let widest = q
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .filter(|t| t.data_type == data_type::INT8 && !t.dims.is_empty())
            .flat_map(|t| t.raw_data.iter().map(|&v| (v as i8).unsigned_abs() as i32))
            .max()
            .unwrap();
        assert_eq!(
            widest,
            bits.qmax(),
            "{bits:?}: per-channel scales reach the range's end"
        );
        let e = r.evaluation.unwrap();
        println!(
            "{bits:?} weights: image cosine {:?}, text cosine {:?}",
            e.image_cosine, e.text_cosine
        );
        if bits == WeightBits::Eight && saturates {
            // Measured, not required: this is the case the automatic choice avoids.
            continue;
        }
        assert!(
            e.image_cosine.mean >= 0.99,
            "{bits:?}: {:?}",
            e.image_cosine
        );
        assert!(e.text_cosine.mean >= 0.99, "{bits:?}: {:?}", e.text_cosine);
    }
}

#[test]
fn exclusions_and_activation_matmuls_change_the_plan() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 6, false);
    let f = model::load_model(&b.join("image_encoder.onnx")).unwrap();
    let g = f.graph.as_ref().unwrap();
    let names = |p: &model::Plan| -> Vec<String> {
        p.nodes.keys().map(|&i| g.node[i].name.clone()).collect()
    };
    let all = model::plan(g, &Selection::default()).unwrap();
    assert!(names(&all).iter().any(|n| n.starts_with("visual.conv1")));
    assert_eq!(all.skipped.len(), 8, "{:?}", all.skipped); // 2 attention MatMuls x 4 blocks

    let fc0 = g
        .node
        .iter()
        .find(|n| {
            n.name
                .starts_with("visual.transformer.resblocks.0.mlp.c_fc/MatMul")
        })
        .unwrap()
        .name
        .clone();
    let p = model::plan(
        g,
        &Selection {
            exclude_ops: vec!["Conv".into()],
            exclude_nodes: vec!["visual.proj/*".into(), fc0.clone()],
            activation_matmuls: false,
        },
    )
    .unwrap();
    let n = names(&p);
    assert!(!n.iter().any(|x| x.starts_with("visual.conv1")));
    assert!(!n.iter().any(|x| x.starts_with("visual.proj/")));
    assert!(!n.contains(&fc0));
    assert_eq!(n.len(), names(&all).len() - 3);
    assert!(p.skipped.iter().any(|(_, why)| why == "--exclude-op Conv"));

    let with_attention = model::plan(
        g,
        &Selection {
            activation_matmuls: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(with_attention.nodes.len(), all.nodes.len() + 8);
    assert!(with_attention.skipped.is_empty());

    let e = model::plan(
        g,
        &Selection {
            exclude_ops: vec!["Softmax".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("--exclude-op Softmax"), "{e}");
}

#[test]
fn bad_inputs_are_refused_or_logged() {
    let d = tempfile::tempdir().unwrap();
    let data = synth(d.path());
    let b = bundle(d.path(), 7, false);

    // fp16 bundle: calibrate the fp32 export instead.
    let b16 = bundle(d.path(), 8, true);
    let e = calibrate(&b16, &d.path().join("x"), &options(&data)).unwrap_err();
    assert!(e.to_string().contains("fp16 bundle"), "{e}");

    // More samples than the split has: all of them, noted in the report.
    let mut o = options(&data);
    o.samples = 1000;
    o.eval_split = None;
    o.method = Method::MinMax;
    let r = calibrate(&b, &d.path().join("all"), &o).unwrap();
    assert_eq!(r.images, 40);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("fewer than --samples 1000")),
        "{:?}",
        r.notes
    );
    // Existing output without --force.
    let e = calibrate(&b, &d.path().join("all"), &o).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");

    // A manifest whose preprocessing does not match the model.
    let bad = d.path().join("badpre");
    copy_dir(&b, &bad);
    let mut m = Manifest::load(&bad).unwrap();
    m.preprocess.height = 160;
    m.save(&bad).unwrap();
    let e = calibrate(&bad, &d.path().join("y"), &options(&data)).unwrap_err();
    assert!(e.to_string().contains("preprocess"), "{e}");

    // An unreadable calibration image: an error naming it, and nothing written.
    let ds = sen_core::data::Dataset::load(&data, None).unwrap();
    let victim = ds.image_path(ds.split(sen_core::data::Split::Train).next().unwrap());
    std::fs::write(&victim, b"not a jpeg").unwrap();
    let mut o = options(&data);
    o.samples = 1000;
    let out = d.path().join("z");
    let e = calibrate(&b, &out, &o).unwrap_err().to_string();
    assert!(
        e.contains(&*victim.file_name().unwrap().to_string_lossy()),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn command_line_runs_and_refuses_bad_flags() {
    let d = tempfile::tempdir().unwrap();
    let data = synth(d.path());
    let b = bundle(d.path(), 9, false);
    let out = d.path().join("int8");
    let run = |args: &[&str]| {
        sen_core::process::command(env!("CARGO_BIN_EXE_sen-calibrate"))
            .arg("--bundle")
            .arg(&b)
            .arg("--dataset")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "--method",
        "percentile",
        "--percentile",
        "99.9",
        "--samples",
        "16",
        "--eval-split",
        "none",
        "--time-batch",
        "2",
        "--max-drop",
        "none",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["method"], "percentile");
    assert_eq!(r["percentile"], 99.9);
    assert!(r["speed"]["int8_ms"].as_f64().unwrap() > 0.0);
    assert!(r.get("evaluation").is_none());
    for (args, want) in [
        (vec!["--method", "kl"], "unknown method"),
        (vec!["--percentile", "0", "--force"], "--percentile 0"),
        (vec!["--bins", "1000", "--force"], "--bins 1000"),
        (
            vec!["--provider", "tensorrt", "--force"],
            "calibration runs the fp32 encoders on cpu or cuda",
        ),
        (
            vec!["--exclude-op", "LayerNormalization", "--force"],
            "--exclude-op LayerNormalization",
        ),
        (vec!["--max-drop=-1", "--force"], "--max-drop -1"),
        (vec!["--max-drop", "lots", "--force"], "--max-drop lots"),
        (vec!["--weight-bits", "4", "--force"], "--weight-bits 4"),
    ] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A synthetic set of `ids` identities x 2 images.
fn synth_ids(dir: &Path, ids: usize, seed: u64) -> PathBuf {
    let root = dir.join(format!("synth{ids}-{seed}"));
    sen_core::synth::generate(
        &root,
        &sen_core::synth::SynthConfig {
            ids,
            images_per_id: 2,
            seed,
        },
    )
    .unwrap();
    root
}

/// Solve (AᵀA + λI) X = AᵀB for X by Gaussian elimination with partial pivoting
/// (A: n x p, B: n x q; the test's closed-form last layer).
fn ridge(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>, lambda: f64) -> ndarray::Array2<f32> {
    let a64 = a.mapv(|v| v as f64);
    let b64 = b.mapv(|v| v as f64);
    let p = a.ncols();
    let mut m = a64.t().dot(&a64) + ndarray::Array2::<f64>::eye(p) * lambda;
    let mut r = a64.t().dot(&b64);
    for c in 0..p {
        let piv = (c..p)
            .max_by(|&i, &j| m[[i, c]].abs().total_cmp(&m[[j, c]].abs()))
            .unwrap();
        for k in 0..p {
            m.swap([c, k], [piv, k]);
        }
        for k in 0..r.ncols() {
            r.swap([c, k], [piv, k]);
        }
        for i in 0..p {
            if i != c {
                let f = m[[i, c]] / m[[c, c]];
                if f != 0.0 {
                    for k in c..p {
                        m[[i, k]] -= f * m[[c, k]];
                    }
                    for k in 0..r.ncols() {
                        r[[i, k]] -= f * r[[c, k]];
                    }
                }
            }
        }
    }
    for i in 0..p {
        let d = m[[i, i]];
        r.row_mut(i).mapv_inplace(|v| v / d);
    }
    r.mapv(|v| v as f32)
}

/// Input dimension `k` of a projection made inert in fp32 and ruinous in int8: the
/// LayerNorm before it outputs exactly 0 there (weight and bias 0), and the
/// projection's row `k` is 300 in every output column, so every per-channel int8
/// scale is 300/127 and the real weights (about 1) round to zero.
const PLANT_K: usize = 5;
const PLANT: f32 = 300.0;

/// A tiny bundle whose val split retrieves well in fp32, with the planted outlier in
/// the image projection (`visual.proj`), and with `plant_text` in the text projection
/// too. Random encoders up to the projections; `visual.proj` is the identity; the
/// text projection is solved in closed form (ridge least squares) so that every val
/// caption lands on its identity's mean val image embedding: no training, yet R@1
/// far above chance, so a quantisation that ruins a layer shows in R@1.
fn aligned_planted_bundle(dir: &Path, data: &Path, plant_text: bool) -> PathBuf {
    let cfg = sen_core::ModelConfig::tiny();
    let (w, dim) = (cfg.vision.width, cfg.embed_dim);
    assert_eq!((w, cfg.text.width), (dim, dim), "square projections");
    let write = |name: &str, text_proj: Option<&ndarray::Array2<f32>>| -> PathBuf {
        let ckpt = dir.join(format!("{name}-ckpt"));
        sen_export::fixtures::random_checkpoint_with(&cfg, &ckpt, 11, |n, shape, v| {
            let plant_ln = |v: &mut [f32]| v[PLANT_K] = 0.0;
            let identity = |v: &mut [f32]| {
                v.iter_mut().for_each(|x| *x = 0.0);
                for i in 0..dim {
                    v[i * dim + i] = 1.0;
                }
            };
            match n {
                "visual.ln_post.weight" | "visual.ln_post.bias" => plant_ln(v),
                "ln_final.weight" | "ln_final.bias" if plant_text => plant_ln(v),
                "visual.proj" => {
                    assert_eq!(shape, [w, dim]);
                    identity(v);
                    v[PLANT_K * dim..(PLANT_K + 1) * dim].fill(PLANT);
                }
                "text_projection" => {
                    match text_proj {
                        Some(t) => v.copy_from_slice(t.as_slice().unwrap()),
                        None => identity(v),
                    }
                    if plant_text && text_proj.is_some() {
                        v[PLANT_K * dim..(PLANT_K + 1) * dim].fill(PLANT);
                    }
                }
                _ => {}
            }
        })
        .unwrap();
        let out = dir.join(name);
        sen_export::export(&ckpt, &out, &Default::default()).unwrap();
        out
    };
    // Pass 1: identity projections, to read the encoders' features on val.
    let probe = write("probe", None);
    let enc = sen_runtime::encoders::Encoders::load_cpu(&probe).unwrap();
    let ds = sen_core::data::Dataset::load(data, None).unwrap();
    let val = ds.eval_set(sen_core::data::Split::Val).unwrap();
    let img = enc.image.encode_files(&val.images, |_| {}).unwrap().embeds;
    let txt = enc.text.encode(&val.captions).unwrap();
    // Each caption's target: its identity's mean val image embedding.
    let mut target = ndarray::Array2::<f32>::zeros(txt.raw_dim());
    for (q, pid) in val.caption_pids.iter().enumerate() {
        let rows: Vec<usize> = (0..val.images.len())
            .filter(|&i| val.image_pids[i] == *pid)
            .collect();
        for &i in &rows {
            let mut t = target.row_mut(q);
            t += &img.row(i);
        }
    }
    let t = ridge(&txt, &target, 1e-3);
    write("aligned", Some(&t))
}

fn matmul_reading(model: &ModelProto, weight: &str) -> String {
    model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.op_type == "MatMul" && n.input.iter().any(|i| i == weight))
        .unwrap_or_else(|| panic!("no MatMul reads {weight}"))
        .name
        .clone()
}

/// `--max-drop`: every range method misses the budget because one planted layer ruins
/// the image embeddings in int8; the ranking finds that layer first; keeping it (and
/// at most two more) in float meets the budget on val; the report says so, with the
/// speed cost. With the layers allowed in float capped below what is needed, nothing
/// is written but the report beside --out. (About 40 s in a debug build: two searches
/// that each rank 51 layers and evaluate val several times.)
#[test]
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "the search is platform-neutral and runs natively; under qemu-aarch64 it costs ten minutes"
)]
fn max_drop_keeps_the_planted_layer_in_float() {
    let d = tempfile::tempdir().unwrap();
    let data = synth_ids(d.path(), 120, 3);
    let b = aligned_planted_bundle(d.path(), &data, false);
    let planted = matmul_reading(&load(&b.join("image_encoder.onnx")), "visual.proj");
    let mut o = options(&data);
    o.samples = 32;
    o.max_drop = Some(1.0);
    o.eval_split = Some(sen_core::data::Split::Test);
    o.time_batch = Some(8);
    let out = d.path().join("int8");
    let r = calibrate(&b, &out, &o).unwrap();
    let a = r.accuracy.as_ref().unwrap();
    println!("{}", serde_json::to_string_pretty(a).unwrap());
    // 9 val identities: chance is about 11%.
    assert!(
        a.fp32.r1 >= 40.0,
        "the aligned model retrieves its val split: {:?}",
        a.fp32
    );
    assert_eq!(a.methods.len(), 3);
    assert!(
        a.methods.iter().all(|m| m.r1_drop > 1.0),
        "every method misses: {:?}",
        a.methods
    );
    assert_eq!(
        (a.ranking[0].encoder.as_str(), a.ranking[0].node.as_str()),
        ("image", planted.as_str()),
        "the planted layer costs most"
    );
    assert!(
        a.kept_float.contains(&format!("image: {planted}")),
        "{:?}",
        a.kept_float
    );
    assert!(
        a.kept_float.len() <= 3,
        "only a few layers in float: {:?}",
        a.kept_float
    );
    assert!(a.met && a.r1_drop <= 1.0, "met on val: {}", a.r1_drop);
    let s = a
        .speed
        .as_ref()
        .expect("the speed cost of the float layers");
    assert_eq!(s.batch, 32);
    assert!(s.all_int8_ms > 0.0 && s.with_float_ms > 0.0);
    // The bundle: the planted layer has no Q/DQ and is reported as kept in float.
    assert!(
        r.image
            .float_nodes
            .iter()
            .any(|(n, why)| *n == planted && why.contains("--max-drop")),
        "{:?}",
        r.image.float_nodes
    );
    let q = load(&out.join("image_encoder.onnx"));
    let node = q
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.name == planted)
        .unwrap();
    assert!(
        node.input.iter().all(|i| !i.contains("dequantized")),
        "{:?}",
        node.input
    );
    // The test split's drop is reported beside val's.
    assert!(r.evaluation.is_some());
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("calibration_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rep["accuracy"]["met"], true);

    // Both projections planted, at most one layer in float: the budget cannot be met.
    let b2 = aligned_planted_bundle(&d.path().join("two"), &data, true);
    let out2 = d.path().join("int8-two");
    o.max_float = Some(1);
    o.time_batch = None;
    let e = calibrate(&b2, &out2, &o).unwrap_err().to_string();
    assert!(
        e.contains("no int8 bundle written") && e.contains("--max-drop 1"),
        "{e}"
    );
    assert!(!out2.exists(), "no bundle when the budget is missed");
    let failed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("int8-two.calibration_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(failed["met"], false);
    assert_eq!(failed["kept_float"].as_array().unwrap().len(), 1);
    assert!(failed["r1_drop"].as_f64().unwrap() > 1.0);
}
