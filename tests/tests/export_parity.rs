//! The exported ONNX encoders against the tch model they came from (issues #5, #17):
//! fp32 within 1e-5 per element, fp16 cosine >= 0.9999 per row, at several caption
//! lengths and batch sizes (the text session is fed each batch cut to its longest
//! caption), the attention formulations, format-1 bundles, external data, and clear
//! errors for a damaged checkpoint or bundle.

use ndarray::{Array1, Array2, Array4, Axis, s};
use sen_core::ModelConfig;
use sen_export::{ExportOptions, export};
use sen_runtime::encoders::Encoders;
use sen_train::model::Sen;
mod common;

use common::checkpoint;
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

const CAPTIONS: [&str; 7] = [
    "A man in a grey hoodie with a red backpack.",
    "The woman wears a long navy coat, black jeans and white sneakers.",
    "A thin lady with shoulder-length blonde hair and a beige tee.",
    "young guy, green jacket",
    "This heavyset person is dressed in an orange coat and brown trousers. Her long gray hair is visible and she carries a black handbag over the shoulder.",
    "a",
    "Someone walking away from the camera in a purple striped shirt, khaki shorts and a white cap; he holds a phone.",
];

fn images(cfg: &ModelConfig, n: usize) -> Array4<f32> {
    let (h, w) = (cfg.vision.image_height, cfg.vision.image_width);
    let mut x = 0x9E3779B97F4A7C15u64;
    Array4::from_shape_fn((n, 3, h, w), |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 4001) as f32 / 1000.0 - 2.0
    })
}

fn tokens(ctx: usize) -> (Array2<i64>, Array1<i64>) {
    let tok =
        sen_core::ClipTokenizer::from_vocab_gz(&sen_core::deps::clip_vocab_path().unwrap(), ctx)
            .unwrap();
    tok.encode_arrays(&CAPTIONS).unwrap()
}

fn to_array(t: &Tensor) -> Array2<f32> {
    let (r, c) = t.size2().unwrap();
    let v: Vec<f32> = Vec::try_from(t.contiguous().view([-1])).unwrap();
    Array2::from_shape_vec((r as usize, c as usize), v).unwrap()
}

/// The tch model's L2-normalised embeddings.
fn reference(
    model: &Sen,
    imgs: &Array4<f32>,
    ids: &Array2<i64>,
    eot: &Array1<i64>,
) -> (Array2<f32>, Array2<f32>) {
    tch::no_grad(|| {
        let s: Vec<i64> = imgs.shape().iter().map(|&d| d as i64).collect();
        let x = Tensor::from_slice(imgs.as_slice().unwrap()).view(s.as_slice());
        let i = model.encode_image(&x);
        let i = &i / i.norm_scalaropt_dim(2, [-1], true);
        let ids_t = Tensor::from_slice(ids.as_slice().unwrap())
            .view([ids.nrows() as i64, ids.ncols() as i64]);
        let t = model.encode_text(&ids_t, &Tensor::from_slice(eot.as_slice().unwrap()));
        let t = &t / t.norm_scalaropt_dim(2, [-1], true);
        (
            to_array(&i.to_kind(Kind::Float)),
            to_array(&t.to_kind(Kind::Float)),
        )
    })
}

fn max_abs(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn min_row_cosine(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    a.axis_iter(Axis(0))
        .zip(b.axis_iter(Axis(0)))
        .map(|(x, y)| x.dot(&y) / (x.dot(&x).sqrt() * y.dot(&y).sqrt()))
        .fold(1.0, f32::min)
}

fn run_bundle(
    dir: &Path,
    imgs: &Array4<f32>,
    ids: &Array2<i64>,
    eot: &Array1<i64>,
) -> (Array2<f32>, Array2<f32>, Encoders) {
    let enc = Encoders::load_cpu(dir).unwrap_or_else(|e| panic!("{e}"));
    let i = enc.image.encode(imgs.view()).unwrap();
    let t = enc.text.encode_ids(ids.view(), eot.view()).unwrap();
    (i, t, enc)
}

/// Every sub-batch `lo..hi` of the bundle's rows equals the reference rows, and the
/// text session was fed each sub-batch cut to its last EOT + 1 (format 2) or the
/// whole context (format 1).
fn check_sub_batches(
    enc: &Encoders,
    imgs: &Array4<f32>,
    ids: &Array2<i64>,
    eot: &Array1<i64>,
    ri: &Array2<f32>,
    rt: &Array2<f32>,
    tol: f32,
) {
    let dynamic = enc.text.manifest.text_sequence_is_dynamic();
    for (lo, hi) in [(0, 1), (5, 6), (3, 5), (1, 4), (0, 7), (4, 7)] {
        let t = enc
            .text
            .encode_ids(ids.slice(s![lo..hi, ..]), eot.slice(s![lo..hi]))
            .unwrap();
        let fed = enc.text.fed();
        let longest = eot.slice(s![lo..hi]).iter().copied().max().unwrap() as u64 + 1;
        let want_len = if dynamic { longest } else { ids.ncols() as u64 };
        assert_eq!(fed.last_length, want_len, "rows {lo}..{hi}: sequence fed");
        let dt = max_abs(&t, &rt.slice(s![lo..hi, ..]).to_owned());
        let i = enc
            .image
            .encode(imgs.slice(s![lo..hi, .., .., ..]))
            .unwrap();
        let di = max_abs(&i, &ri.slice(s![lo..hi, ..]).to_owned());
        assert!(
            di <= tol && dt <= tol,
            "rows {lo}..{hi} (sequence {want_len}): image {di}, text {dt}"
        );
    }
}

#[test]
fn tiny_fp32_and_fp16_match_the_tch_model() {
    let cfg = ModelConfig::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let (_vs, model) = checkpoint(&cfg, &ckpt, 3);
    let imgs = images(&cfg, 7);
    let (ids, eot) = tokens(cfg.text.context_length);
    let (ri, rt) = reference(&model, &imgs, &ids, &eot);

    let b32 = tmp.path().join("fp32");
    export(&ckpt, &b32, &ExportOptions::default()).unwrap();
    let (i32_, t32, enc) = run_bundle(&b32, &imgs, &ids, &eot);
    let (di, dt) = (max_abs(&ri, &i32_), max_abs(&rt, &t32));
    eprintln!("fp32 max |diff|: image {di:.2e}, text {dt:.2e}");
    assert!(
        di <= 1e-5 && dt <= 1e-5,
        "fp32 parity: image {di}, text {dt}"
    );
    assert_eq!(enc.text.manifest.format_version, 2);
    // The whole batch was cut to its longest caption, not fed 56 positions.
    let longest = eot.iter().copied().max().unwrap() as u64 + 1;
    assert!(longest < cfg.text.context_length as u64);
    let fed = enc.text.fed();
    assert_eq!((fed.calls, fed.rows, fed.last_length), (1, 7, longest));
    assert_eq!(fed.positions, 7 * longest);
    // Rows are unit length.
    for r in i32_.axis_iter(Axis(0)).chain(t32.axis_iter(Axis(0))) {
        assert!((r.dot(&r) - 1.0).abs() < 1e-5);
    }
    // Batches of 1 to 7 captions of different lengths give the same rows.
    check_sub_batches(&enc, &imgs, &ids, &eot, &ri, &rt, 1e-5);

    let b16 = tmp.path().join("fp16");
    export(
        &ckpt,
        &b16,
        &ExportOptions {
            fp16: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (i16_, t16, _) = run_bundle(&b16, &imgs, &ids, &eot);
    let (ci, ct) = (min_row_cosine(&ri, &i16_), min_row_cosine(&rt, &t16));
    eprintln!(
        "fp16 min row cosine: image 1 - {:.2e}, text 1 - {:.2e}; max |diff| image {:.2e}, text {:.2e}",
        1.0 - ci,
        1.0 - ct,
        max_abs(&ri, &i16_),
        max_abs(&rt, &t16)
    );
    assert!(
        ci >= 0.9999 && ct >= 0.9999,
        "fp16 parity: image {ci}, text {ct}"
    );
    let m = sen_core::Manifest::load(&b16).unwrap();
    assert_eq!(m.precision, sen_core::Precision::Fp16);
    assert_eq!(m.model, cfg);
}

/// The other graph formulation (ONNX `Attention` at opset 23) and
/// format 1 (fixed context, fed whole) give the tch model's rows too, at every
/// sub-batch; the manifest records each.
#[test]
fn graph_variants_and_format_1_match_the_tch_model() {
    use sen_export::encoders::Attention;
    let cfg = ModelConfig::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let (_vs, model) = checkpoint(&cfg, &ckpt, 4);
    let imgs = images(&cfg, 7);
    let (ids, eot) = tokens(cfg.text.context_length);
    let (ri, rt) = reference(&model, &imgs, &ids, &eot);
    for (name, opts) in [
        (
            "onnx-attention-23",
            ExportOptions {
                attention: Attention::Onnx23,
                opset: 23,
                ..Default::default()
            },
        ),
        (
            "format-1",
            ExportOptions {
                format_version: 1,
                ..Default::default()
            },
        ),
    ] {
        let dir = tmp.path().join(name);
        export(&ckpt, &dir, &opts).unwrap();
        let (i, t, enc) = run_bundle(&dir, &imgs, &ids, &eot);
        let (di, dt) = (max_abs(&ri, &i), max_abs(&rt, &t));
        eprintln!("{name}: fp32 max |diff| image {di:.2e}, text {dt:.2e}");
        assert!(di <= 1e-5 && dt <= 1e-5, "{name}: image {di}, text {dt}");
        check_sub_batches(&enc, &imgs, &ids, &eot, &ri, &rt, 1e-5);
        let m = &enc.text.manifest;
        assert_eq!(m.tools["attention"], opts.attention.name(), "{name}");
        assert_eq!(m.format_version, opts.format_version, "{name}");
        assert_eq!(m.text_sequence_is_dynamic(), opts.format_version == 2);
    }
    // ONNX `Attention` needs opset 23, said plainly.
    let e = export(
        &ckpt,
        &tmp.path().join("bad"),
        &ExportOptions {
            attention: Attention::Onnx23,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--opset 23"), "{e}");
}

#[test]
fn external_data_below_a_lowered_threshold_gives_the_same_outputs() {
    let cfg = ModelConfig::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let (_vs, _model) = checkpoint(&cfg, &ckpt, 5);
    let imgs = images(&cfg, 2);
    let (ids, eot) = tokens(cfg.text.context_length);
    let inline = tmp.path().join("inline");
    export(&ckpt, &inline, &ExportOptions::default()).unwrap();
    let ext = tmp.path().join("external");
    let report = export(
        &ckpt,
        &ext,
        &ExportOptions {
            external_data_threshold: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    // The text encoder (6.3M-entry embedding) goes external; its .onnx is small.
    assert!(
        report.files.contains_key("text_encoder.onnx.data"),
        "{:?}",
        report.files
    );
    assert!(
        report.files["text_encoder.onnx"] < 1 << 20,
        "{:?}",
        report.files
    );
    let m = sen_core::Manifest::load(&ext).unwrap();
    assert!(m.files.contains_key("text_encoder.onnx.data"));
    let (a_i, a_t, _) = run_bundle(&inline, &imgs, &ids, &eot);
    let (b_i, b_t, _) = run_bundle(&ext, &imgs, &ids, &eot);
    assert_eq!(a_i, b_i);
    assert_eq!(a_t, b_t);
    // A damaged data file is caught by the manifest, naming it.
    let data = ext.join("text_encoder.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let err = Encoders::load_cpu(&ext)
        .err()
        .expect("damaged bundle refused")
        .to_string();
    assert!(
        err.contains("text_encoder.onnx.data") && err.contains("does not match"),
        "{err}"
    );
}

#[test]
fn checkpoint_problems_are_named() {
    let cfg = ModelConfig::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    checkpoint(&cfg, &ckpt, 1);
    // A config that does not match the weights names the tensor and both shapes.
    let mut wrong = cfg.clone();
    wrong.embed_dim = 64;
    wrong.save(&ckpt.join("config.json")).unwrap();
    let err = export(&ckpt, &tmp.path().join("b"), &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("visual.proj") && err.contains("[128, 64]"),
        "{err}"
    );
    assert!(!tmp.path().join("b").exists(), "no half bundle is left");
    // An existing bundle is not overwritten without --force.
    cfg.save(&ckpt.join("config.json")).unwrap();
    let out = tmp.path().join("b");
    export(&ckpt, &out, &ExportOptions::default()).unwrap();
    let err = export(&ckpt, &out, &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--force"), "{err}");
    export(
        &ckpt,
        &out,
        &ExportOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    let err = export(
        &ckpt,
        &out,
        &ExportOptions {
            opset: 16,
            force: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--opset 16"), "{err}");
    // Opset 18 (ReduceL2 axes as an input) loads and runs too.
    let o18 = tmp.path().join("o18");
    export(
        &ckpt,
        &o18,
        &ExportOptions {
            opset: 18,
            ..Default::default()
        },
    )
    .unwrap();
    let imgs = images(&cfg, 1);
    let (ids, eot) = tokens(cfg.text.context_length);
    let (a, b, _) = run_bundle(&o18, &imgs, &ids, &eot);
    let (c, d, _) = run_bundle(&out, &imgs, &ids, &eot);
    assert!(max_abs(&a, &c) < 1e-6 && max_abs(&b, &d) < 1e-6);
}

/// vit-b16 (random weights) exports and runs on ONNX Runtime's CPU provider.
#[test]
fn vit_b16_exports_and_runs() {
    let cfg = ModelConfig::vit_b16();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let t0 = std::time::Instant::now();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Sen::new(&vs.root(), &cfg, None, false);
    sen_train::checkpoint::save(
        &ckpt,
        &vs,
        &cfg,
        &serde_json::json!({}),
        &serde_json::json!({}),
        |_| Ok(()),
    )
    .unwrap();
    let out = tmp.path().join("bundle");
    export(&ckpt, &out, &ExportOptions::default()).unwrap();
    let imgs = images(&cfg, 2);
    let (ids, eot) = tokens(cfg.text.context_length);
    let (ri, rt) = reference(&model, &imgs, &ids, &eot);
    let (oi, ot, enc) = run_bundle(&out, &imgs, &ids, &eot);
    let (di, dt) = (max_abs(&ri, &oi), max_abs(&rt, &ot));
    eprintln!(
        "vit-b16 fp32 max |diff|: image {di:.2e}, text {dt:.2e} ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        di <= 1e-5 && dt <= 1e-5,
        "vit-b16 parity: image {di}, text {dt}"
    );
    // Captions of different lengths in batches of 1, 2 and 3: each fed cut.
    for (lo, hi) in [(5, 6), (0, 2), (2, 5)] {
        let t = enc
            .text
            .encode_ids(ids.slice(s![lo..hi, ..]), eot.slice(s![lo..hi]))
            .unwrap();
        let longest = eot.slice(s![lo..hi]).iter().copied().max().unwrap() as u64 + 1;
        assert_eq!(enc.text.fed().last_length, longest);
        let d = max_abs(&t, &rt.slice(s![lo..hi, ..]).to_owned());
        assert!(d <= 1e-5, "vit-b16 rows {lo}..{hi}: text {d}");
    }
}

/// The exporter's list of encoder tensors is exactly the tch model's (minus TIR and
/// the ID head), names and shapes, for both presets.
#[test]
fn exporter_reads_every_encoder_tensor_of_the_model() {
    for cfg in [ModelConfig::tiny(), ModelConfig::vit_b16()] {
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = Sen::new(&vs.root(), &cfg, Some(3), true);
        let mut model: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("tir.") && !n.starts_with("id_head."))
            .map(|(n, t)| (n, t.size()))
            .collect();
        model.sort();
        assert_eq!(model, sen_export::encoders::encoder_tensors(&cfg));
    }
}
