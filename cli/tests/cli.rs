//! The `sen` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sen() -> Command {
    sen_core::process::command(env!("CARGO_BIN_EXE_sen"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures")
}

#[test]
fn tokenize_json_matches_open_clip_ids() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer_open_clip.json")).unwrap(),
    )
    .unwrap();
    let cases: Vec<&serde_json::Value> = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .take(6)
        .collect();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let out = sen()
        .arg("tokenize")
        .arg("--json")
        .args(&texts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), texts.len());
    for (row, case) in rows.iter().zip(&cases) {
        assert_eq!(row["text"], case["text"]);
        assert_eq!(row["ids"], case["ids"], "{}", case["text"]);
        let ids = row["ids"].as_array().unwrap();
        assert_eq!(ids.len(), 77);
        let eot = row["eot_index"].as_u64().unwrap() as usize;
        assert_eq!(ids[eot], 49407);
        assert_eq!(
            row.as_object().unwrap().len(),
            3,
            "exactly text, ids, eot_index"
        );
    }
}

#[test]
fn tokenize_text_output_and_truncation_warning() {
    let long = ["word"; 100].join(" ");
    let out = sen()
        .args(["tokenize", "a red backpack", &long])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("eot_index: 4"), "{stdout}");
    assert!(stdout.contains("49406 320 736 14894 49407"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("was cut"));
}

#[test]
fn preprocess_writes_the_encoder_tensor() {
    let d = tempfile::tempdir().unwrap();
    let img = fixtures().join("images/astronaut.jpg");
    for (preset, h, w) in [("vit-b16", 384, 128), ("tiny", 48, 16)] {
        let npy = d.path().join(format!("{preset}.npy"));
        let out = sen()
            .arg("preprocess")
            .arg(&img)
            .arg("--out")
            .arg(&npy)
            .args(["--preset", preset])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (shape, data) = sen_core::npy::read_npy_f32(&npy).unwrap();
        assert_eq!(shape, vec![1, 3, h, w]);
        let want =
            sen_core::Preprocessor::for_model(&sen_core::ModelConfig::preset(preset).unwrap())
                .load(&img)
                .unwrap();
        assert!(data.iter().zip(want.iter()).all(|(a, b)| a == b));
    }
    // Default preset is vit-b16.
    let npy = d.path().join("default.npy");
    assert!(
        sen()
            .arg("preprocess")
            .arg(&img)
            .arg("--out")
            .arg(&npy)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        sen_core::npy::read_npy_f32(&npy).unwrap().0,
        vec![1, 3, 384, 128]
    );
}

#[test]
fn preprocess_errors_name_the_file_and_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 truncated").unwrap();
    let npy = d.path().join("out.npy");
    let out = sen()
        .arg("preprocess")
        .arg(&bad)
        .arg("--out")
        .arg(&npy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        1,
        "only the input remains"
    );

    let out = sen()
        .args([
            "preprocess",
            "x.jpg",
            "--out",
            "y.npy",
            "--preset",
            "vit-l14",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vit-l14"));
}

#[test]
fn missing_vocabulary_says_run_make_deps() {
    let out = sen()
        .args(["tokenize", "hello"])
        .env("SEN_CLIP_VOCAB", "")
        .env("SEN_CACHE", "/nonexistent-sen-cache")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("make deps") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn synth_then_dataset_stats_json() {
    let d = tempfile::tempdir().unwrap();
    let out = sen()
        .args([
            "synth",
            "--ids",
            "13",
            "--images-per-id",
            "2",
            "--seed",
            "4",
            "--json",
            "--out",
        ])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 26);
    let out = sen()
        .args(["dataset", "stats", "--json"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "cuhk-pedes");
    let train = &v["splits"]["train"];
    assert_eq!(train["identities"], 10);
    assert_eq!(train["images"], 20);
    assert_eq!(train["captions"], 40);
    assert_eq!(train["missing_files"], 0);
    assert!(train["mean_caption_words"].as_f64().unwrap() > 10.0);
    for split in ["val", "test"] {
        assert_eq!(v["splits"][split].as_object().unwrap().len(), 5);
    }
    // A missing image is counted, and a wrong --format is a clear error.
    let first = std::fs::read_dir(d.path().join("imgs/synth"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(first).unwrap();
    let v: serde_json::Value = serde_json::from_slice(
        &sen()
            .args(["dataset", "stats", "--json"])
            .arg(d.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let missing: u64 = ["train", "val", "test"]
        .iter()
        .map(|s| v["splits"][s]["missing_files"].as_u64().unwrap())
        .sum();
    assert_eq!(missing, 1);
    let out = sen()
        .args(["dataset", "stats", "--format", "rstpreid"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_captions.json"));
    let out = sen()
        .args(["dataset", "stats", "--format", "market1501"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dataset format"));
}

#[test]
fn prune_prints_nouns_adjectives_pronouns() {
    let out = sen()
        .args([
            "prune",
            "The woman is wearing a light blue shirt and she carries her black bag.",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "woman light blue shirt she her black bag"
    );
}
