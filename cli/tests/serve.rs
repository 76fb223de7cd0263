//! `sen index`, `sen search`, `sen eval`, `sen info` on a real (random-weight,
//! tiny-preset) bundle exported by sen-export, and the bad inputs the issue lists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn sen() -> Command {
    sen_core::process::command(env!("CARGO_BIN_EXE_sen"))
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "sen failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "sen should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A tiny-preset checkpoint with seeded random weights, exported to a bundle.
fn bundle(dir: &Path, seed: u64) -> PathBuf {
    sen_testing::tiny_bundle(dir, seed)
}

fn synth(dir: &Path) -> PathBuf {
    let root = dir.join("synth");
    ok(sen()
        .args([
            "synth",
            "--ids",
            "26",
            "--images-per-id",
            "2",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&root)
        .output()
        .unwrap());
    root
}

fn read_npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    sen_core::npy::read_npy_f32(p).unwrap()
}

#[test]
fn index_search_and_eval_agree_with_each_other() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 1);
    let data = synth(d.path());
    let idx = d.path().join("test.senidx");
    let out = ok(sen()
        .arg("index")
        .arg(&b)
        .arg("--dataset")
        .arg(&data)
        .arg("--out")
        .arg(&idx)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("images indexed"));

    // eval: JSON keys and the embedding dump.
    let dump = d.path().join("dump");
    let out = ok(sen()
        .arg("eval")
        .arg(&b)
        .arg("--dataset")
        .arg(&data)
        .args(["--json", "--dump-embeddings"])
        .arg(&dump)
        .output()
        .unwrap());
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["r1", "r5", "r10", "map", "minp"] {
        let v = m[k].as_f64().unwrap_or_else(|| panic!("no {k} in {m}"));
        assert!((0.0..=100.0).contains(&v), "{k} = {v}");
    }
    let (ishape, img) = read_npy(&dump.join("image_embeds.npy"));
    let (tshape, txt) = read_npy(&dump.join("text_embeds.npy"));
    assert_eq!(ishape[1], 128);
    assert_eq!(tshape[1], 128);
    assert!(dump.join("image_pids.npy").is_file() && dump.join("text_pids.npy").is_file());
    let g = ishape[0];

    // search for the first test caption: the ranking must be the one the dumped
    // embeddings give (inner products computed here, ties by gallery order).
    let ds = sen_core::data::Dataset::load(&data, None).unwrap();
    let set = ds.eval_set(sen_core::data::Split::Test).unwrap();
    let q = &set.captions[0];
    let out = ok(sen()
        .arg("search")
        .arg(&b)
        .arg(&idx)
        .arg(q)
        .args(["-k", "5", "--json"])
        .output()
        .unwrap());
    let ans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ans["query"], q.as_str());
    let mut want: Vec<(f32, usize)> = (0..g)
        .map(|i| {
            let s: f32 = (0..128).map(|j| txt[j] * img[i * 128 + j]).sum();
            (s, i)
        })
        .collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let results = ans["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (r, (s, i)) in results.iter().zip(&want) {
        assert_eq!(r["path"], set.images[*i].display().to_string().as_str());
        assert_eq!(r["pid"], set.image_pids[*i]);
        assert!((r["score"].as_f64().unwrap() - *s as f64).abs() < 1e-5);
    }
    assert_eq!(results[0]["rank"], 1);

    // -k larger than the gallery: every image, with a logged note.
    let out = ok(sen()
        .arg("search")
        .arg(&b)
        .arg(&idx)
        .arg(q)
        .args(["-k", "1000", "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap());
    let ans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ans["results"].as_array().unwrap().len(), g);
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than the gallery"));

    // --queries -: one JSON line per non-empty line, in order.
    let mut child = sen()
        .arg("search")
        .arg(&b)
        .arg(&idx)
        .args(["--queries", "-", "-k", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n\n{}\n", set.captions[0], set.captions[1]).as_bytes())
        .unwrap();
    let out = ok(child.wait_with_output().unwrap());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["query"], set.captions[1].as_str());
    assert_eq!(lines[0]["results"][0], ans["results"][0]);

    // f16 storage ranks the same top hit.
    let idx16 = d.path().join("test16.senidx");
    ok(sen()
        .arg("index")
        .arg(&b)
        .arg("--dataset")
        .arg(&data)
        .arg("--f16")
        .arg("--out")
        .arg(&idx16)
        .output()
        .unwrap());
    assert!(std::fs::metadata(&idx16).unwrap().len() < std::fs::metadata(&idx).unwrap().len());
    let out = ok(sen()
        .arg("search")
        .arg(&b)
        .arg(&idx16)
        .arg(q)
        .args(["-k", "1", "--json"])
        .output()
        .unwrap());
    let a16: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a16["results"][0]["path"], ans["results"][0]["path"]);

    // SEN_SIMD forces a kernel path: the portable one ranks exactly as the default;
    // `sen info` names the path; an unknown or unsupported path is refused.
    let search_with = |simd: &str| {
        sen()
            .env("SEN_SIMD", simd)
            .arg("search")
            .arg(&b)
            .arg(&idx)
            .arg(q)
            .args(["-k", "5", "--json"])
            .output()
            .unwrap()
    };
    let port: serde_json::Value =
        serde_json::from_slice(&ok(search_with("portable")).stdout).unwrap();
    for (x, y) in port["results"].as_array().unwrap().iter().zip(results) {
        assert_eq!(x["path"], y["path"]);
        assert!((x["score"].as_f64().unwrap() - y["score"].as_f64().unwrap()).abs() < 1e-5);
    }
    let e = err(search_with("sse9"));
    assert!(e.contains("SEN_SIMD=sse9") && e.contains("portable"), "{e}");
    let info = ok(sen()
        .env("SEN_SIMD", "portable")
        .arg("info")
        .arg(&b)
        .arg("--json")
        .output()
        .unwrap());
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["search_kernel"]["path"], "portable");
    assert_eq!(info["search_kernel"]["forced"], "portable");
    assert!(
        info["search_kernel"]["available"]
            .as_array()
            .unwrap()
            .contains(&"portable".into())
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 2);
    let other = bundle(d.path(), 5);
    // A folder of images with one unreadable file.
    let imgs = d.path().join("imgs");
    std::fs::create_dir_all(imgs.join("cam1")).unwrap();
    let src = synth(d.path()).join("imgs/synth");
    let mut n = 0;
    for e in std::fs::read_dir(&src).unwrap().take(5) {
        let p = e.unwrap().path();
        std::fs::copy(&p, imgs.join("cam1").join(p.file_name().unwrap())).unwrap();
        n += 1;
    }
    std::fs::write(imgs.join("broken.jpg"), b"not a jpeg").unwrap();
    let idx = d.path().join("g.senidx");
    let index = |extra: &[&str]| {
        sen()
            .arg("index")
            .arg(&b)
            .arg("--images")
            .arg(&imgs)
            .arg("--out")
            .arg(&idx)
            .args(extra)
            .output()
            .unwrap()
    };
    // --strict: fatal, names the file, writes nothing.
    let e = err(index(&["--strict"]));
    assert!(e.contains("broken.jpg"), "{e}");
    assert!(!idx.exists());
    // Default: listed and skipped.
    let out = ok(index(&[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped") && stderr.contains("broken.jpg"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{n} images indexed")));
    // An existing index is not replaced without --force; --append skips known images.
    let e = err(index(&[]));
    assert!(e.contains("--append") && e.contains("--force"), "{e}");
    let out = ok(index(&["--append"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{n} images indexed (0 new")));

    let search = |bundle: &Path, index: &Path, q: &str| {
        sen()
            .arg("search")
            .arg(bundle)
            .arg(index)
            .arg(q)
            .output()
            .unwrap()
    };
    // Another bundle's encoder: refused.
    let e = err(search(&other, &idx, "a woman in a red coat"));
    assert!(e.contains("re-index") && e.contains("g.senidx"), "{e}");
    // Empty query.
    let e = err(search(&b, &idx, "   "));
    assert!(e.contains("empty"), "{e}");
    // Damaged and truncated index files.
    let good = std::fs::read(&idx).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 3;
    bad[last] ^= 1;
    let damaged = d.path().join("damaged.senidx");
    std::fs::write(&damaged, &bad).unwrap();
    let e = err(search(&b, &damaged, "a man"));
    assert!(
        e.contains("checksum mismatch") && e.contains("damaged.senidx"),
        "{e}"
    );
    std::fs::write(&damaged, &good[..good.len() / 2]).unwrap();
    let e = err(search(&b, &damaged, "a man"));
    assert!(e.contains("truncated"), "{e}");
    // A bundle whose file no longer matches its manifest.
    let tampered = d.path().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    for e in std::fs::read_dir(&b).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tampered.join(p.file_name().unwrap())).unwrap();
    }
    let mut tok = std::fs::read(tampered.join("tokenizer.json")).unwrap();
    tok.push(b' ');
    std::fs::write(tampered.join("tokenizer.json"), tok).unwrap();
    let e = err(search(&tampered, &idx, "a man"));
    assert!(
        e.contains("tokenizer.json") && e.contains("does not match"),
        "{e}"
    );
    // -k 0.
    let e = err(sen()
        .arg("search")
        .arg(&b)
        .arg(&idx)
        .arg("a man")
        .args(["-k", "0"])
        .output()
        .unwrap());
    assert!(e.contains("-k"), "{e}");
}

#[test]
fn gpu_providers_fail_fast_naming_what_is_missing() {
    // This machine has the CPU build of ONNX Runtime and no NVIDIA driver; on a
    // GPU box with a GPU build these commands would start, and the test says so.
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 3);
    let out = ok(sen().arg("info").arg(&b).arg("--json").output().unwrap());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["verified"], true);
    assert_eq!(info["providers"]["cpu"]["can_start"], true);
    let data = synth(d.path());
    for (p, lib) in [
        ("cuda", "libonnxruntime_providers_cuda.so"),
        ("tensorrt", "libnvinfer.so.10"),
    ] {
        if info["providers"][p]["can_start"] == true {
            eprintln!("{p} can start on this machine: fail-fast check skipped");
            continue;
        }
        let t = std::time::Instant::now();
        let e = err(sen()
            .arg("eval")
            .arg(&b)
            .arg("--dataset")
            .arg(&data)
            .args(["--provider", p])
            .output()
            .unwrap());
        assert!(t.elapsed().as_secs() < 10, "{p}: took {:?}", t.elapsed());
        assert!(e.contains(&format!("the {p} provider cannot start")), "{e}");
        let missing = info["providers"][p]["missing"].to_string();
        if missing.contains(lib) {
            assert!(e.contains(lib), "{e}");
        }
    }
    // build-engines means TensorRT: here it fails fast like --provider tensorrt.
    let e = err(sen().arg("build-engines").arg(&b).output().unwrap());
    if info["providers"]["tensorrt"]["can_start"] != true {
        assert!(e.contains("the tensorrt provider cannot start"), "{e}");
    }
    let e = err(sen()
        .arg("build-engines")
        .arg(&b)
        .args(["--provider", "cuda"])
        .output()
        .unwrap());
    assert!(e.contains("--provider cuda has none to build"), "{e}");
}

#[test]
fn concurrent_callers_get_the_same_embeddings() {
    // Encoders take &self: threads share one (sessions = 1: callers queue) or a
    // pool of two sessions; every thread must get what a lone caller gets.
    use sen_runtime::encoders::ImageEncoder;
    use sen_runtime::providers::ProviderOptions;
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 4);
    let data = synth(d.path());
    let files: Vec<PathBuf> = std::fs::read_dir(data.join("imgs/synth"))
        .unwrap()
        .take(20)
        .map(|e| e.unwrap().path())
        .collect();
    for sessions in [1, 2] {
        let mut opts = ProviderOptions::cpu();
        opts.sessions = sessions;
        opts.threads = Some(1);
        let enc = ImageEncoder::load(&b, &opts).unwrap();
        let alone = enc.encode_files(&files, |_| {}).unwrap().embeds;
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| enc.encode_files(&files, |_| {}).unwrap().embeds))
                .collect();
            for h in hs {
                let got = h.join().unwrap();
                let diff = (&got - &alone).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
                assert!(diff < 1e-6, "{sessions} sessions: max diff {diff}");
            }
        });
    }
}

#[test]
fn bench_reports_percentiles_per_encoder_and_batch_with_the_machine() {
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 6);
    let out = ok(sen()
        .arg("bench")
        .arg(&b)
        .args(["--batch", "1,3", "--seconds", "0.05", "--json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precision"], "fp32");
    assert_eq!(v["machine"]["provider"], "cpu");
    assert_eq!(v["machine"]["onnxruntime"], "1.31.1");
    assert!(v["machine"]["logical_cores"].as_u64().unwrap() >= 1);
    let kernel = v["machine"]["search_kernel"].as_str().unwrap();
    assert!(
        ["portable", "avx", "avx2", "avx512", "neon"].contains(&kernel),
        "{kernel}"
    );
    let rows = v["results"].as_array().unwrap();
    let got: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["encoder"].as_str().unwrap().to_string(),
                r["batch"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("image", 1), ("image", 3), ("text", 1), ("text", 3)].map(|(e, b)| (e.to_string(), b))
    );
    for r in rows {
        let (p50, p90, p99) = (
            r["p50_ms"].as_f64().unwrap(),
            r["p90_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{r}");
        assert!(r["runs"].as_u64().unwrap() >= 5);
        let rate = if r["encoder"] == "image" {
            r["images_per_s"].as_f64().unwrap()
        } else {
            assert!(r.get("images_per_s").is_none());
            r["texts_per_s"].as_f64().unwrap()
        };
        // Throughput is batch / mean latency.
        let want = r["batch"].as_f64().unwrap() * 1e3 / r["mean_ms"].as_f64().unwrap();
        assert!((rate - want).abs() < 1e-6 * want, "{r}");
    }
    // Bad flags are errors naming the flag.
    for (args, want) in [
        (vec!["--batch", "0"], "--batch"),
        (vec!["--seconds", "0"], "--seconds"),
        (
            vec!["--precision", "fp16"],
            "--precision fp16 is TensorRT's",
        ),
    ] {
        let e = err(sen().arg("bench").arg(&b).args(&args).output().unwrap());
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // Text rows say how many tokens the captions had and how many the session got:
    // a format-2 bundle is fed the caption's length, never the whole context.
    let text = |tokens: &str| {
        let out = ok(sen()
            .arg("bench")
            .arg(&b)
            .args([
                "--encoders",
                "text",
                "--batch",
                "2",
                "--seconds",
                "0.05",
                "--json",
            ])
            .args(["--text-tokens", tokens])
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = &v["results"][0];
        (
            r["tokens"].as_u64().unwrap(),
            r["sequence_fed"].as_u64().unwrap(),
        )
    };
    assert_eq!(text("20"), (20, 20));
    assert_eq!(text("56"), (56, 56), "the tiny preset's whole context");
    let e = err(sen()
        .arg("bench")
        .arg(&b)
        .args(["--encoders", "text", "--text-tokens", "57"])
        .output()
        .unwrap());
    assert!(e.contains("--text-tokens 57") && e.contains("56"), "{e}");
}

/// `sen bench --search` times the batched exact search on random rows, no bundle.
#[test]
fn bench_times_the_search_without_a_bundle() {
    let out = ok(sen()
        .args([
            "bench",
            "--search",
            "3000x24",
            "--queries",
            "1,5",
            "-k",
            "3",
        ])
        .args(["--seconds", "0.05", "--search-threads", "2", "--json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["rows"].as_u64(), v["dim"].as_u64()),
        (Some(3000), Some(24))
    );
    assert_eq!(
        (v["dtype"].as_str(), v["threads"].as_u64()),
        (Some("f32"), Some(2))
    );
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0]["queries"].as_u64(), r[0]["batched"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(
        (r[1]["queries"].as_u64(), r[1]["batched"].as_bool()),
        (Some(5), Some(true))
    );
    for e in r {
        let q = e["queries"].as_f64().unwrap();
        let want = q * 1e3 / e["mean_ms"].as_f64().unwrap();
        assert!(
            (e["queries_per_s"].as_f64().unwrap() - want).abs() < 1e-6 * want,
            "{e}"
        );
    }
    let out = ok(sen()
        .env("SEN_SIMD", "portable")
        .args(["bench", "--search", "1kx8", "--f16", "--seconds", "0.02"])
        .output()
        .unwrap());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("1000 x 8 f16") && s.contains("portable kernels"),
        "{s}"
    );
    for (shape, want) in [
        ("10x", "ROWSxDIM"),
        ("0x8", "ROWSxDIM"),
        ("axb", "ROWSxDIM"),
    ] {
        let e = err(sen().args(["bench", "--search", shape]).output().unwrap());
        assert!(e.contains(want) && e.contains(shape), "{shape}: {e}");
    }
}

/// I/O binding (reused buffers; pinned memory on a GPU) gives the same rows as plain
/// runs, allocating its buffers once per input shape, not once per call.
#[test]
fn io_binding_gives_the_same_rows_and_reuses_its_buffers() {
    use sen_runtime::encoders::Encoders;
    use sen_runtime::providers::ProviderOptions;
    let d = tempfile::tempdir().unwrap();
    let b = bundle(d.path(), 8);
    let plain = Encoders::load_cpu(&b).unwrap();
    let mut opts = ProviderOptions::cpu();
    opts.io_binding = true;
    let bound = Encoders::load(&b, &opts).unwrap();
    let (h, w) = (
        plain.image.manifest.preprocess.height,
        plain.image.manifest.preprocess.width,
    );
    let mut rng = sen_core::rng::Rng::new(3);
    let x = ndarray::Array4::from_shape_fn((3, 3, h, w), |_| rng.normal() as f32);
    let texts = [
        "a man in a red coat",
        "a woman with a black bag and white shoes",
    ];
    for round in 0..3 {
        let (a, b) = (
            plain.image.encode(x.view()).unwrap(),
            bound.image.encode(x.view()).unwrap(),
        );
        assert_eq!(a, b, "round {round}: image rows");
        let (a, b) = (
            plain.text.encode(&texts).unwrap(),
            bound.text.encode(&texts).unwrap(),
        );
        assert_eq!(a, b, "round {round}: text rows");
    }
    assert_eq!(plain.image.bound_allocations(), 0);
    assert_eq!(
        bound.image.bound_allocations(),
        1,
        "one shape, one allocation"
    );
    assert_eq!(bound.text.bound_allocations(), 1);
    // A new shape allocates once more, then is reused.
    for _ in 0..2 {
        bound
            .image
            .encode(x.slice(ndarray::s![..1, .., .., ..]))
            .unwrap();
    }
    assert_eq!(bound.image.bound_allocations(), 2);
}
