//! `sen-train` as a user runs it: Ctrl-C leaves a resumable checkpoint, and bad
//! input is a clear error.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sen-train"))
}

/// A small synthetic benchmark in `dir` (seed 1).
fn synth(dir: &std::path::Path, ids: usize, images_per_id: usize) {
    let cfg = sen_core::synth::SynthConfig {
        ids,
        images_per_id,
        seed: 1,
    };
    sen_core::synth::generate(dir, &cfg).unwrap();
}

#[test]
fn ctrl_c_writes_a_resumable_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    synth(&d.path().join("data"), 26, 2);
    let run = d.path().join("run");
    let child = bin()
        .args([
            "train",
            "--preset",
            "tiny",
            "--epochs",
            "50",
            "--batch",
            "8",
            "--batch-k",
            "2",
            "--log-every",
            "1",
            "--resize",
            "bilinear",
        ])
        .arg("--data")
        .arg(d.path().join("data"))
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first logged step, then interrupt.
    let t0 = Instant::now();
    while !run.join("log.jsonl").is_file() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no training step within a minute"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("--resume"), "{stdout}");
    let train: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("last/train.json")).unwrap())
            .unwrap();
    let p = &train["progress"];
    assert!(p["global_step"].as_u64().unwrap() >= 1);
    assert_eq!(p["finished"], false);
    assert!(run.join("last/optimizer.safetensors").is_file());
    assert_eq!(
        train["pid_map"].as_array().unwrap().len(),
        20,
        "pid map recorded"
    );
    // Without data flags: SPEC's augmentation and pruning, the tiny-scratch recipe.
    let o = &train["options"];
    assert_eq!(o["recipe"]["name"], "tiny-scratch");
    assert_eq!(
        (&o["augment"], &o["prune_prob"]),
        (&true.into(), &0.2.into())
    );
    // Every effective setting with its source: flags, the recipe, the machine.
    let st = &o["settings"];
    let setting = |k: &str| {
        (
            st[k]["value"].clone(),
            st[k]["source"].as_str().unwrap_or(""),
        )
    };
    assert_eq!(setting("batch"), (8.into(), "flag"));
    assert_eq!(setting("epochs"), (50.into(), "flag"));
    assert_eq!(setting("eval_every"), (5.into(), "recipe"));
    assert_eq!(setting("lr"), (5e-4.into(), "recipe"));
    assert_eq!(setting("seed"), (42.into(), "default"));
    assert_eq!(o["eval_every"], 5, "the recipe's cadence is the run's");
    // The resize filter is the model's: recorded where export and eval read it.
    assert_eq!(setting("resize"), ("bilinear".into(), "flag"));
    assert_eq!(train["preprocess"]["resize"], "bilinear");
    let cfg = sen_core::ModelConfig::tiny();
    let spec = sen_core::PreprocessSpec::for_checkpoint(&run.join("last"), &cfg).unwrap();
    assert_eq!(
        (spec.resize.as_str(), spec.height, spec.width),
        ("bilinear", 48, 16)
    );
    // 20 training images of 48x16 fit any machine's budget: caching turned itself on.
    assert_eq!(setting("cache_images"), (true.into(), "machine"));
    assert!(
        st["cache_images"]["why"]
            .as_str()
            .unwrap()
            .contains("available")
    );
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let native_bf16 = cpuinfo.contains("avx512_bf16") || cpuinfo.contains("amx_bf16");
    assert_eq!(setting("amp"), (native_bf16.into(), "machine"));
    // A resumed run keeps its settings: a flag that would change one is refused.
    let out = bin()
        .args(["train", "--batch", "16", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--batch cannot"), "{e}");
    let out = bin()
        .args(["train", "--resize", "bicubic", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("--resize cannot"),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["train", "--data"])
        .arg(d.path())
        .arg("--out")
        .arg(d.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("no annotation file") && !e.contains("panicked"),
        "{e}"
    );
    let out = bin()
        .args(["eval", "--checkpoint"])
        .arg(d.path())
        .arg("--data")
        .arg(d.path())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("neither a checkpoint directory"), "{e}");
    let out = bin()
        .args(["train", "--resume"])
        .arg(d.path())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("train.json"), "{e}");
    let out = bin().args(["info", "--json"]).output().unwrap();
    assert!(out.status.success());
    let out = bin()
        .args(["train", "--data", "x", "--out", "y", "--device", "cuda:7"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("cuda:7"), "{e}");
    synth(&d.path().join("data"), 13, 1);
    let train = |extra: &[&str]| {
        let out = bin()
            .args(["train", "--batch", "8", "--data"])
            .arg(d.path().join("data"))
            .arg("--out")
            .arg(d.path().join("never"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!d.path().join("never").exists());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = train(&["--prune-prob", "1.5"]);
    assert!(e.contains("--prune-prob 1.5"), "{e}");
    let cfg = d.path().join("model.json");
    std::fs::write(&cfg, r#"{"embed_dim": 128}"#).unwrap();
    let e = train(&["--model-config", cfg.to_str().unwrap()]);
    assert!(e.contains("model.json") && e.contains("vision"), "{e}");
    let e = train(&["--preset", "tiny", "--model-config", cfg.to_str().unwrap()]);
    assert!(
        e.contains("--preset") && e.contains("--model-config"),
        "{e}"
    );
}

#[test]
fn bench_times_both_encoders_in_eager_mode() {
    let out = bin()
        .args([
            "bench",
            "--preset",
            "tiny",
            "--batch",
            "1,2",
            "--seconds",
            "0.05",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["engine"], "libtorch eager (tch)");
    assert_eq!(v["model"], "random tiny weights");
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for r in rows {
        let p50 = r["p50_ms"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= r["p99_ms"].as_f64().unwrap(), "{r}");
        assert!(
            r["images_per_s"]
                .as_f64()
                .or(r["texts_per_s"].as_f64())
                .unwrap()
                > 0.0
        );
    }
    let out = bin().args(["bench", "--batch", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch"));
}
