//! `sen-train import --from sen|irra`: the report of what went where, and the
//! refusals (a damaged file, a file of the other code base, an encoder that does not
//! fit the model), each naming the file and what is wrong. The fixtures are made by
//! the authors' own classes (scripts/reference/authors_checkpoint.py); the
//! embeddings an imported checkpoint gives are checked in tests/tests/authors_import.rs.

use sen_core::ModelConfig;
use sen_train::import::{Authors, IMPORT_REPORT_FILE, import_authors};
use std::path::{Path, PathBuf};

fn fx(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/authors")
        .join(name)
}

fn cfg() -> ModelConfig {
    ModelConfig::from_json_file(&fx("config.json")).unwrap()
}

#[test]
fn every_tensor_is_imported_or_dropped_with_its_reason() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("irra");
    let r = import_authors(Authors::Irra, &fx("irra_fp16.pth"), &cfg(), &out).unwrap();
    assert_eq!(r.format, "torch");
    assert_eq!(r.state_dict, "model");
    assert!(!r.module_prefix && !r.tir);
    assert_eq!(r.imported["classifier.weight"], "id_head.weight");
    assert_eq!(r.imported["base_model.visual.proj"], "visual.proj");
    assert!(r.dropped.keys().any(|k| k.starts_with("mlm_head.")));
    assert!(
        r.dropped
            .keys()
            .any(|k| k.starts_with("cross_modal_transformer."))
    );
    assert_eq!(
        r.imported.len() + r.dropped.len(),
        67,
        "every model key accounted for"
    );
    assert!(r.dtypes.contains_key("Half") && r.dtypes.contains_key("Float"));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(IMPORT_REPORT_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        written["dropped"].as_object().unwrap().len(),
        r.dropped.len()
    );
    let train: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train.json")).unwrap()).unwrap();
    assert_eq!(train["source_format"], "irra");
    assert_eq!(train["preprocess"]["resize"], "bilinear");
    let spec = sen_core::PreprocessSpec::for_checkpoint(&out, &cfg()).unwrap();
    assert_eq!(spec.resize, "bilinear");

    let out = d.path().join("sen");
    let r = import_authors(Authors::Sen, &fx("sen_fp16_module.pth"), &cfg(), &out).unwrap();
    assert!(r.module_prefix && r.tir);
    assert!(
        r.checked.contains_key("decoder_pos_embed"),
        "{:?}",
        r.checked
    );
    assert!(r.imported["cross_attn_Text.in_proj_weight"].contains("q,k,v"));
    assert_eq!(r.imported["norm_1.weight"], "tir.ln_in.weight");
    for unused in ["norm_3.weight", "cross_attn_Image.in_proj_weight"] {
        assert!(r.dropped[unused].contains("unused"), "{unused}");
    }
    assert_eq!(r.imported.len() + r.dropped.len() + r.checked.len(), 83);
}

#[test]
fn damaged_foreign_and_misfitting_files_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let refused = |from, file: &Path, cfg: &ModelConfig, says: &[&str]| {
        let e = format!("{:#}", import_authors(from, file, cfg, &out).unwrap_err());
        assert!(
            e.contains(&file.display().to_string()),
            "names the file: {e}"
        );
        for s in says {
            assert!(e.contains(s), "{s:?} in: {e}");
        }
        assert!(!out.exists(), "nothing written on a refusal");
    };
    let bytes = std::fs::read(fx("irra_fp16.pth")).unwrap();
    let cut = d.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    refused(Authors::Irra, &cut, &cfg(), &["truncated"]);
    let text = d.path().join("notes.pth");
    std::fs::write(&text, "not a checkpoint at all").unwrap();
    refused(
        Authors::Irra,
        &text,
        &cfg(),
        &["neither a zip-format torch.save"],
    );
    refused(
        Authors::Sen,
        &fx("irra_fp16.pth"),
        &cfg(),
        &[
            "keys that sen's code does not write",
            "--from irra",
            "cross_attn.in_proj_weight",
        ],
    );
    let mut wide = cfg();
    wide.vision.width = 128;
    wide.vision.heads = 2;
    refused(
        Authors::Irra,
        &fx("irra_fp32.pth"),
        &wide,
        &[
            "does not fit",
            "wrong shape",
            "visual.conv1.weight: file [64, 3, 16, 16], model [128, 3, 16, 16]",
        ],
    );
}

/// A safetensors file with the authors' names imports to the same weights as their
/// torch.save file.
#[test]
fn a_safetensors_state_dict_with_their_names_is_accepted() {
    let d = tempfile::tempdir().unwrap();
    let sd = sen_train::pth::read_state_dict(&fx("irra_fp32.pth")).unwrap();
    assert_eq!(sd.top_level, ["model", "num_epoch", "iteration", "epoch"]);
    let st = d.path().join("irra.safetensors");
    tch::Tensor::write_safetensors(&sd.tensors, &st).unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    import_authors(Authors::Irra, &fx("irra_fp32.pth"), &cfg(), &a).unwrap();
    let r = import_authors(Authors::Irra, &st, &cfg(), &b).unwrap();
    assert_eq!(r.format, "safetensors");
    let read = |p: &Path| {
        tch::Tensor::read_safetensors(p.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (wa, wb) = (read(&a), read(&b));
    assert_eq!(wa.len(), wb.len());
    for (k, t) in &wa {
        assert!(t.equal(&wb[k]), "{k}");
    }
}
