//! Import from a TorchScript archive shaped like OpenAI's `ViT-B-16.pt` (nested
//! module names, fp16, logit_scale and the three extra entries), made with PyTorch by
//! `scripts/reference/clip_jit_fixture.py`; values checked against what PyTorch
//! recorded next to it.

mod common;

use sen_train::checkpoint;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

#[test]
fn imports_a_torchscript_archive() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.join("clip_micro_expected.json")).unwrap(),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ckpt");
    sen_train::import::import_clip(&fx.join("clip_micro_jit.pt"), &common::micro_384(), &out)
        .unwrap();
    let got: BTreeMap<String, Tensor> = Tensor::read_safetensors(out.join(checkpoint::MODEL_FILE))
        .unwrap()
        .into_iter()
        .collect();
    let tensors = expected["tensors"].as_object().unwrap();
    assert!(tensors.contains_key("input_resolution") && tensors.contains_key("logit_scale"));
    let mut checked = 0;
    for (name, e) in tensors {
        if sen_train::import::IGNORED.contains(&name.as_str()) {
            assert!(!got.contains_key(name), "{name} is ignored");
            continue;
        }
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing after import"));
        let first: Vec<f32> = Vec::try_from(g.flatten(0, -1).narrow(0, 0, 4)).unwrap();
        for (a, b) in first.iter().zip(e["first"].as_array().unwrap()) {
            assert!(
                (*a as f64 - b.as_f64().unwrap()).abs() < 1e-6,
                "{name}: {first:?} vs {}",
                e["first"]
            );
        }
        let shape: Vec<i64> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        if name == "visual.positional_embedding" {
            assert_eq!(shape, vec![197, 8]);
            assert_eq!(g.size(), vec![193, 8], "resized to the 24x8 grid");
        } else {
            assert_eq!(g.size(), shape, "{name}");
        }
        checked += 1;
    }
    assert_eq!(checked, got.len(), "every imported tensor was checked");
}
