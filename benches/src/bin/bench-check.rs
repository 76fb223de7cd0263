//! `bench-check`: compare the latest criterion results with a saved baseline and exit
//! non-zero when any bench got slower by more than a threshold (the latency-regression
//! gate `make bench-check` runs; see the README's Measuring section).
//!
//! Reads `<dir>/**/new/estimates.json` (the latest run) and
//! `<dir>/**/<baseline>/estimates.json` (saved with `--save-baseline <baseline>`) and
//! compares their median estimates.
//!
//! `bench-check [--baseline main] [--threshold 10] [--dir target/criterion] [--json]`
//! Exit status: 0 no regression, 1 at least one, 2 bad usage or no baseline found.

use std::path::{Path, PathBuf};

struct Row {
    id: String,
    base_ns: f64,
    new_ns: f64,
}

impl Row {
    fn change_pct(&self) -> f64 {
        (self.new_ns / self.base_ns - 1.0) * 100.0
    }
}

fn median_ns(path: &Path) -> Result<f64, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&s).map_err(|e| format!("{}: {e}", path.display()))?;
    v["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no median.point_estimate", path.display()))
}

fn bench_id(dir: &Path, root: &Path) -> String {
    // criterion's own id when recorded, else the folder path.
    std::fs::read_to_string(dir.join("new").join("benchmark.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["full_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| dir.strip_prefix(root).unwrap_or(dir).display().to_string())
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Benches whose latest result is not newer than the baseline were not rerun since it
/// was saved (a filtered run): they are counted, not compared.
fn walk(
    dir: &Path,
    root: &Path,
    baseline: &str,
    rows: &mut Vec<Row>,
    stale: &mut usize,
    errors: &mut Vec<String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let new = dir.join("new").join("estimates.json");
    let base = dir.join(baseline).join("estimates.json");
    if new.is_file() && base.is_file() && modified(&new) <= modified(&base) {
        *stale += 1;
    } else if new.is_file() && base.is_file() {
        match (median_ns(&base), median_ns(&new)) {
            (Ok(b), Ok(n)) => rows.push(Row {
                id: bench_id(dir, root),
                base_ns: b,
                new_ns: n,
            }),
            (Err(e), _) | (_, Err(e)) => errors.push(e),
        }
    }
    let mut subdirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for d in subdirs {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name == "new" || name == "base" || name == "report" || name == baseline {
            continue;
        }
        walk(&d, root, baseline, rows, stale, errors);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-check [--baseline NAME] [--threshold PERCENT] [--dir CRITERION_DIR] [--json]"
    );
    std::process::exit(2)
}

fn main() {
    let mut baseline = "main".to_string();
    let mut threshold = 10.0f64;
    let mut dir = PathBuf::from("target/criterion");
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--baseline" => baseline = args.next().unwrap_or_else(|| usage()),
            "--threshold" => {
                threshold = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|t: &f64| *t >= 0.0)
                    .unwrap_or_else(|| {
                        eprintln!("--threshold: give a percentage such as 10");
                        std::process::exit(2)
                    })
            }
            "--dir" => dir = PathBuf::from(args.next().unwrap_or_else(|| usage())),
            "--json" => json = true,
            "--bench" => {} // cargo passes it to harness = false targets
            _ => usage(),
        }
    }
    if !dir.is_dir() {
        eprintln!(
            "bench-check: {} does not exist: run the benches first (make bench-baseline, then make bench-check)",
            dir.display()
        );
        std::process::exit(2);
    }
    let (mut rows, mut errors, mut stale) = (vec![], vec![], 0);
    walk(&dir, &dir, &baseline, &mut rows, &mut stale, &mut errors);
    for e in &errors {
        eprintln!("bench-check: skipped {e}");
    }
    if rows.is_empty() {
        eprintln!(
            "bench-check: no bench in {} has a result newer than its baseline named {baseline:?} \
             ({stale} not rerun since the baseline was saved); save a baseline with `make bench-baseline` \
             (cargo bench -p sen-benches -- --save-baseline {baseline}), then rerun the benches",
            dir.display()
        );
        std::process::exit(2);
    }
    let slower: Vec<&Row> = rows.iter().filter(|r| r.change_pct() > threshold).collect();
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "baseline_ms": r.base_ns / 1e6, "new_ms": r.new_ns / 1e6,
                    "change_pct": r.change_pct(), "regression": r.change_pct() > threshold,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "baseline": baseline, "threshold_pct": threshold, "benches": v,
                "regressions": slower.len(), "not_rerun": stale,
            }))
            .expect("serialises")
        );
    } else {
        let w = rows.iter().map(|r| r.id.len()).max().unwrap_or(10).max(10);
        println!(
            "{:<w$}  {:>12}  {:>12}  {:>8}",
            "bench", "baseline ms", "latest ms", "change"
        );
        for r in &rows {
            let flag = if r.change_pct() > threshold {
                "  SLOWER"
            } else {
                ""
            };
            println!(
                "{:<w$}  {:>12.4}  {:>12.4}  {:>+7.1}%{flag}",
                r.id,
                r.base_ns / 1e6,
                r.new_ns / 1e6,
                r.change_pct()
            );
        }
        println!(
            "{} benches against baseline {baseline:?}: {} slower by more than {threshold}%{}",
            rows.len(),
            slower.len(),
            if stale > 0 {
                format!(" ({stale} more not rerun since the baseline)")
            } else {
                String::new()
            }
        );
    }
    std::process::exit(if slower.is_empty() { 0 } else { 1 });
}
