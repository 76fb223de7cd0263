//! sen on the oldest ONNX Runtime it is tested against and on the pinned one: each
//! library in its own `sen` process (a process loads one), the same embeddings (SPEC
//! §11: cosine >= 1 - 1e-6 for fp32) and the same scores. The oldest library is
//! 1.19.2, the oldest PyPI wheel that ships ONNX Runtime's C library (`make deps`
//! fetches it into $SEN_CACHE/onnxruntime-1.19.2).

use sen_runtime::index::Index;
use serde_json::Value;
use std::path::{Path, PathBuf};

const OLDEST: &str = "1.19.2";

fn sen() -> std::process::Command {
    sen_core::process::command(env!("CARGO_BIN_EXE_sen"))
}

fn run(args: &[&std::ffi::OsStr]) -> String {
    let o = sen().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "sen {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn the_oldest_supported_onnx_runtime_gives_the_same_embeddings() {
    if !cfg!(target_arch = "x86_64") {
        println!("SKIPPED: the {OLDEST} library pinned here is x86-64's");
        return;
    }
    let cache = sen_core::deps::cache_dir();
    let old = cache.join(format!(
        "onnxruntime-{OLDEST}/lib/libonnxruntime.so.{OLDEST}"
    ));
    assert!(
        old.is_file(),
        "{} is missing: run `make deps` (it fetches ONNX Runtime {OLDEST} for this test)",
        old.display()
    );
    let new = sen_core::deps::onnxruntime_path().unwrap();
    let d = tempfile::tempdir().unwrap();
    let ckpt = d.path().join("ckpt");
    sen_export::fixtures::random_checkpoint(&sen_core::ModelConfig::tiny(), &ckpt, 11).unwrap();
    let bundle = d.path().join("bundle");
    sen_export::export(&ckpt, &bundle, &sen_export::ExportOptions::default()).unwrap();
    let root = d.path().join("synth");
    sen_core::synth::generate(
        &root,
        &sen_core::synth::SynthConfig {
            ids: 13,
            images_per_id: 2,
            seed: 5,
        },
    )
    .unwrap();
    let images = root.join("imgs/synth");
    let mut scores: Vec<Vec<f64>> = vec![];
    let mut indexes: Vec<PathBuf> = vec![];
    for (i, lib) in [&new, &old].iter().enumerate() {
        // `sen info` reports the library's own version.
        let info: Value = serde_json::from_str(&run(&[
            "info".as_ref(),
            bundle.as_os_str(),
            "--json".as_ref(),
            "--ort-lib".as_ref(),
            lib.as_os_str(),
        ]))
        .unwrap();
        let want = if i == 0 { "1.31.1" } else { OLDEST };
        assert_eq!(info["onnxruntime"]["version"], want, "{info}");
        let idx = d.path().join(format!("g{i}.senidx"));
        run(&[
            "index".as_ref(),
            bundle.as_os_str(),
            "--images".as_ref(),
            images.as_os_str(),
            "--out".as_ref(),
            idx.as_os_str(),
            "--ort-lib".as_ref(),
            lib.as_os_str(),
        ]);
        let out: Value = serde_json::from_str(&run(&[
            "search".as_ref(),
            bundle.as_os_str(),
            idx.as_os_str(),
            "a woman in a red coat with a black handbag".as_ref(),
            "-k".as_ref(),
            "26".as_ref(),
            "--json".as_ref(),
            "--ort-lib".as_ref(),
            lib.as_os_str(),
        ]))
        .unwrap();
        scores.push(
            out["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["score"].as_f64().unwrap())
                .collect(),
        );
        indexes.push(idx);
    }
    let (a, b) = (open(&indexes[0]), open(&indexes[1]));
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
        let n = |v: &[f32]| v.iter().map(|p| *p as f64 * *p as f64).sum::<f64>().sqrt();
        let cos = dot / (n(x) * n(y));
        assert!(
            cos >= 1.0 - 1e-6,
            "image {i}: cosine {cos} between 1.31.1 and {OLDEST}"
        );
    }
    assert_eq!(scores[0].len(), scores[1].len());
    for (s, t) in scores[0].iter().zip(&scores[1]) {
        assert!((s - t).abs() <= 1e-5, "text scores {s} vs {t}");
    }
}

fn open(p: &Path) -> Vec<Vec<f32>> {
    let idx = Index::open(p).unwrap();
    (0..idx.len()).map(|i| idx.row(i)).collect()
}
