//! `bench-check` on criterion folders written here: a slower bench fails the gate, a
//! faster or equal one passes, and a missing baseline is a usage error.

use std::path::Path;

fn estimates(dir: &Path, which: &str, median_ns: f64, id: &str) {
    // The latest result must be newer than the baseline (mtime) to be compared.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let d = dir.join(which);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("estimates.json"),
        format!(r#"{{"mean":{{"point_estimate":{median_ns}}},"median":{{"point_estimate":{median_ns}}}}}"#),
    )
    .unwrap();
    std::fs::write(d.join("benchmark.json"), format!(r#"{{"full_id":"{id}"}}"#)).unwrap();
}

fn check(root: &Path, args: &[&str]) -> (i32, String) {
    let o = sen_core::process::command(env!("CARGO_BIN_EXE_bench-check"))
        .arg("--dir")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn slower_than_threshold_fails_and_names_the_bench() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("search/100k-x512-f32-2t");
    let b = d.path().join("encoder-image/cpu-fp32-tiny/batch-8");
    estimates(&a, "main", 4.0e6, "search/100k-x512-f32-2t");
    estimates(&b, "main", 2.0e6, "encoder-image/cpu-fp32-tiny/batch-8");
    estimates(&a, "new", 4.2e6, "search/100k-x512-f32-2t"); // +5 %
    estimates(&b, "new", 2.5e6, "encoder-image/cpu-fp32-tiny/batch-8"); // +25 %

    let (code, out) = check(d.path(), &["--baseline", "main"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("encoder-image/cpu-fp32-tiny/batch-8"), "{out}");
    assert!(out.contains("+25.0%  SLOWER"), "{out}");
    assert!(
        out.contains("2 benches against baseline \"main\": 1 slower"),
        "{out}"
    );

    // A looser threshold passes; JSON lists both with their change.
    let (code, out) = check(
        d.path(),
        &["--baseline", "main", "--threshold", "30", "--json"],
    );
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["regressions"], 0);
    let changes: Vec<f64> = v["benches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["change_pct"].as_f64().unwrap())
        .collect();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().any(|c| (c - 25.0).abs() < 1e-9));
    assert!(changes.iter().any(|c| (c - 5.0).abs() < 1e-9));

    // Faster is never a regression.
    estimates(&b, "new", 1.0e6, "encoder-image/cpu-fp32-tiny/batch-8");
    assert_eq!(check(d.path(), &["--baseline", "main"]).0, 0);

    // A bench not rerun since the baseline was saved is not compared.
    estimates(&a, "main", 1.0e6, "search/100k-x512-f32-2t");
    let (code, out) = check(d.path(), &["--baseline", "main"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("search/100k"), "{out}");
    assert!(out.contains("1 more not rerun since the baseline"), "{out}");
}

#[test]
fn missing_baseline_or_folder_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("search/10k-x512-f16-2t");
    estimates(&a, "new", 1.0e6, "search/10k-x512-f16-2t");
    let (code, out) = check(d.path(), &["--baseline", "release-1"]);
    assert_eq!(code, 2);
    assert!(out.contains("make bench-baseline"), "{out}");
    let (code, out) = check(&d.path().join("nope"), &[]);
    assert_eq!(code, 2);
    assert!(out.contains("does not exist"), "{out}");
    let (code, _) = check(d.path(), &["--threshold", "-3"]);
    assert_eq!(code, 2);
}
