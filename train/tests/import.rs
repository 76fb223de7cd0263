//! CLIP import from files shaped like OpenAI's: OpenAI key names, fp16 tensors, the
//! extra entries, a 14x14 position grid resized to 24x8 (checked against bilinear
//! interpolation computed here), and refusal of mismatching files.

mod common;

use sen_core::ModelConfig;
use sen_train::checkpoint;
use sen_train::model::Sen;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor, nn};

/// An OpenAI-style state dict for `cfg`: fp16, 197-row position table, extra entries.
fn openai_like(cfg: &ModelConfig) -> BTreeMap<String, Tensor> {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Sen::new(&vs.root(), cfg, None, false);
    let mut sd: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_kind(Kind::Half)))
        .collect();
    sd.insert(
        "visual.positional_embedding".into(),
        Tensor::randn([197, 8], (Kind::Float, Device::Cpu)).to_kind(Kind::Half),
    );
    sd.insert(
        "logit_scale".into(),
        Tensor::from_slice(&[4.6052f32])
            .view([])
            .to_kind(Kind::Half),
    );
    sd.insert(
        "input_resolution".into(),
        Tensor::from_slice(&[224i64]).view([]),
    );
    sd.insert(
        "context_length".into(),
        Tensor::from_slice(&[77i64]).view([]),
    );
    sd.insert(
        "vocab_size".into(),
        Tensor::from_slice(&[49408i64]).view([]),
    );
    sd
}

fn write(sd: &BTreeMap<String, Tensor>, path: &std::path::Path) {
    let named: Vec<(String, Tensor)> = sd
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&named, path).unwrap();
}

/// PyTorch `F.interpolate(mode="bilinear", align_corners=False)` at one output point.
#[allow(clippy::too_many_arguments)]
fn bilinear(
    grid: &[f32],
    n_in: usize,
    w: usize,
    oy: usize,
    ox: usize,
    out_h: usize,
    out_w: usize,
    ch: usize,
) -> f32 {
    let src = |o: usize, out: usize| {
        let s = (n_in as f64 / out as f64) * (o as f64 + 0.5) - 0.5;
        let s = s.max(0.0);
        let i0 = s.floor() as usize;
        let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
        (i0, i1, s - i0 as f64)
    };
    let (y0, y1, ly) = src(oy, out_h);
    let (x0, x1, lx) = src(ox, out_w);
    let at = |y: usize, x: usize| grid[(y * n_in + x) * w + ch] as f64;
    let v = (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
        + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1));
    v as f32
}

#[test]
fn imports_openai_layout_and_resizes_positions() {
    let cfg = common::micro_384();
    let sd = openai_like(&cfg);
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("clip.safetensors");
    write(&sd, &file);
    let out = d.path().join("ckpt");
    sen_train::import::import_clip(&file, &cfg, &out).unwrap();
    for f in [
        checkpoint::MODEL_FILE,
        checkpoint::CONFIG_FILE,
        checkpoint::TRAIN_FILE,
        checkpoint::METRICS_FILE,
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let got: BTreeMap<String, Tensor> = Tensor::read_safetensors(out.join(checkpoint::MODEL_FILE))
        .unwrap()
        .into_iter()
        .collect();
    assert!(!got.contains_key("logit_scale") && !got.contains_key("input_resolution"));
    for (k, v) in &sd {
        if [
            "logit_scale",
            "input_resolution",
            "context_length",
            "vocab_size",
            "visual.positional_embedding",
        ]
        .contains(&k.as_str())
        {
            continue;
        }
        let g = &got[k];
        assert_eq!(g.kind(), Kind::Float, "{k} upcast to fp32");
        assert!(g.equal(&v.to_kind(Kind::Float)), "{k}");
    }
    // Position table: CLS row kept, 14x14 grid bilinearly resized to 24x8, row-major.
    let pos = &got["visual.positional_embedding"];
    assert_eq!(pos.size(), vec![193, 8]);
    let src: Vec<f32> = Vec::try_from(
        sd["visual.positional_embedding"]
            .to_kind(Kind::Float)
            .flatten(0, -1),
    )
    .unwrap();
    let out_v: Vec<f32> = Vec::try_from(pos.flatten(0, -1)).unwrap();
    assert_eq!(&out_v[..8], &src[..8], "CLS row");
    let grid = &src[8..];
    for (oy, ox) in [(0, 0), (0, 7), (23, 0), (23, 7), (11, 3), (5, 6), (17, 2)] {
        for ch in 0..8 {
            let want = bilinear(grid, 14, 8, oy, ox, 24, 8, ch);
            let have = out_v[(1 + oy * 8 + ox) * 8 + ch];
            assert!(
                (want - have).abs() < 1e-5,
                "({oy},{ox},{ch}): {have} vs {want}"
            );
        }
    }
}

#[test]
fn refuses_mismatching_files_listing_every_key() {
    let cfg = common::micro_384();
    let mut sd = openai_like(&cfg);
    sd.remove("visual.proj");
    sd.remove("ln_final.bias");
    sd.insert(
        "visual.extra_head.weight".into(),
        Tensor::zeros([2], (Kind::Half, Device::Cpu)),
    );
    sd.insert(
        "text_projection".into(),
        Tensor::zeros([8, 4], (Kind::Half, Device::Cpu)),
    );
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("bad.safetensors");
    write(&sd, &file);
    let out = d.path().join("ckpt");
    let e = format!(
        "{:#}",
        sen_train::import::import_clip(&file, &cfg, &out).unwrap_err()
    );
    for want in [
        "missing (2)",
        "visual.proj",
        "ln_final.bias",
        "unexpected (1)",
        "visual.extra_head.weight",
        "wrong shape (1)",
        "text_projection",
    ] {
        assert!(e.contains(want), "{want} not in: {e}");
    }
    assert!(!out.exists(), "nothing written on failure");
    // A preset of another size is refused too.
    let e = format!(
        "{:#}",
        sen_train::import::import_clip(
            &d.path().join("bad.safetensors"),
            &ModelConfig::tiny(),
            &out
        )
        .unwrap_err()
    );
    assert!(e.contains("wrong shape"), "{e}");
    // Not a weights file at all.
    std::fs::write(d.path().join("junk.pt"), b"junk").unwrap();
    let e = format!(
        "{:#}",
        sen_train::import::import_clip(&d.path().join("junk.pt"), &cfg, &out).unwrap_err()
    );
    assert!(e.contains("junk.pt"), "{e}");
}
