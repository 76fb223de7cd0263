//! Score calibration (SPEC §12): `sen calibrate-scores` on a small synthetic
//! benchmark, its report recomputed here from the dumped embeddings, and `p` in the
//! server's results (at the stored prior and at a given one). The model is the tiny
//! random-weight bundle, so the numbers mean nothing about retrieval; what is checked
//! is that they are computed as promised. The targets on a trained model are
//! `make demo`'s step.

use sen_testing::{Serve, client, tiny_bundle};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

const SEN: &str = env!("CARGO_BIN_EXE_sen");

fn sen() -> Command {
    sen_core::process::command(SEN)
}

fn run_json(c: &mut Command) -> Value {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    sen_core::npy::read_npy_f32(p).unwrap()
}

fn npy_i64(p: &Path) -> Vec<i64> {
    // The pids sen eval dumps: int64, one dimension. Parsed here from the format
    // (a 10-byte preamble, a header, then little-endian values).
    let b = std::fs::read(p).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hl..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `ln LR(z)`, written again from the file's knots: flat beyond the ends, linear
/// between.
fn ln_lr(curve: &Value, z: f64) -> f64 {
    let zs: Vec<f64> = serde_json::from_value(curve["z"].clone()).unwrap();
    let ls: Vec<f64> = serde_json::from_value(curve["ln_lr"].clone()).unwrap();
    if z <= zs[0] {
        return ls[0];
    }
    for i in 1..zs.len() {
        if z < zs[i] {
            let t = (z - zs[i - 1]) / (zs[i] - zs[i - 1]);
            return ls[i - 1] + t * (ls[i] - ls[i - 1]);
        }
    }
    *ls.last().unwrap()
}

fn p_at(ln_lr: f64, prior: f64) -> f64 {
    let odds = ln_lr.exp() * prior / (1.0 - prior);
    odds / (1.0 + odds)
}

#[test]
fn calibrate_scores_reports_what_the_data_says_and_serve_gives_p() {
    let d = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(d.path(), 7);
    let data = d.path().join("synth");
    let out = sen()
        .args(["synth", "--ids", "40", "--images-per-id", "3", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused before any work: the fit and the report on one split; train.
    for bad in [["--report-split", "val"], ["--split", "train"]] {
        let out = sen()
            .arg("calibrate-scores")
            .arg(&bundle)
            .arg("--dataset")
            .arg(&data)
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("--split") && e.contains("--report-split"), "{e}");
    }

    let calibrated = d.path().join("calibrated");
    let r = run_json(
        sen()
            .arg("calibrate-scores")
            .arg(&bundle)
            .arg("--dataset")
            .arg(&data)
            .arg("--out")
            .arg(&calibrated)
            .args(["--background", "64", "--json"]),
    );
    // --out leaves the bundle as it was.
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    assert!(m.get("score_calibration").is_none());
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(calibrated.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["score_calibration"]["file"], "score_calibration.json");
    assert!(m["files"]["score_calibration.json"]["sha256"].is_string());
    assert!(m["files"]["score_background.npy"]["sha256"].is_string());
    let cal: Value = serde_json::from_str(
        &std::fs::read_to_string(calibrated.join("score_calibration.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cal["background_count"], 64);
    assert_eq!(cal["fitted"]["split"], "val");

    // The text report, recomputed from the test split's embeddings.
    let dump = d.path().join("dump");
    run_json(
        sen()
            .arg("eval")
            .arg(&calibrated)
            .arg("--dataset")
            .arg(&data)
            .args(["--split", "test", "--json", "--dump-embeddings"])
            .arg(&dump),
    );
    let (ishape, images) = npy(&dump.join("image_embeds.npy"));
    let (_, texts) = npy(&dump.join("text_embeds.npy"));
    let ipids = npy_i64(&dump.join("image_pids.npy"));
    let tpids = npy_i64(&dump.join("text_pids.npy"));
    let dim = ishape[1];
    let (bshape, bg) = npy(&calibrated.join("score_background.npy"));
    assert_eq!(bshape, [64, dim]);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
    let (mut pairs, mut matches) = (0u64, 0u64);
    let mut per_query: Vec<Vec<(f64, bool)>> = vec![];
    for (qi, q) in texts.chunks_exact(dim).enumerate() {
        let s: Vec<f64> = bg.chunks_exact(dim).map(|b| dot(q, b)).collect();
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        let std = (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (s.len() - 1) as f64).sqrt();
        let mut zs: Vec<(f64, bool)> = images
            .chunks_exact(dim)
            .zip(&ipids)
            .map(|(g, &pid)| ((dot(q, g) - mean) / std, pid == tpids[qi]))
            .collect();
        pairs += zs.len() as u64;
        matches += zs.iter().filter(|z| z.1).count() as u64;
        zs.sort_by(|a, b| b.0.total_cmp(&a.0));
        zs.truncate(20);
        per_query.push(zs);
    }
    let prior = matches as f64 / pairs as f64;
    let rep = &r["text"]["report"];
    assert_eq!(rep["pairs"], pairs);
    assert_eq!(rep["matches"], matches);
    assert!((rep["prior"].as_f64().unwrap() - prior).abs() < 1e-12);
    let curve = &cal["text"]["curve"];
    let mut bins = [(0u64, 0u64); 10];
    let (mut high, mut high_match) = (0u64, 0u64);
    for (z, m) in per_query.iter().flatten() {
        let p = p_at(ln_lr(curve, *z), prior);
        let b = ((p * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += *m as u64;
        if p >= 0.9 {
            high += 1;
            high_match += *m as u64;
        }
    }
    for (i, (n, k)) in bins.iter().enumerate() {
        let got = &rep["reliability"][i];
        assert_eq!(
            (
                got["pairs"].as_u64().unwrap(),
                got["matches"].as_u64().unwrap()
            ),
            (*n, *k),
            "bin {i}"
        );
    }
    assert_eq!(rep["p90"]["pairs"], high);
    assert_eq!(rep["p90"]["matches"], high_match);

    // A store of the test images, served with and without the calibration.
    let store = d.path().join("store");
    let mut files: Vec<_> = std::fs::read_dir(data.join("imgs/synth"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(24);
    for args in [vec!["create"], vec!["add"]] {
        let out = sen()
            .arg("store")
            .args(&args)
            .arg(&store)
            .arg("--bundle")
            .arg(&calibrated)
            .args(if args[0] == "add" { &files[..] } else { &[] })
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let c = client();
    let s = Serve::launch(SEN, &calibrated).store(&store).start();
    let search = |body: Value| -> (u16, Value) {
        let r = c.post(s.at("/v1/search")).json(&body).send().unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    let text = "a man in a grey hoodie with a red backpack";
    let (st, v) = search(json!({"text": text, "k": 24}));
    assert_eq!(st, 200);
    let stored = cal["text"]["prior"].as_f64().unwrap();
    assert_eq!(v["prior"].as_f64().unwrap(), stored);
    let ps: Vec<f64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["p"].as_f64().unwrap())
        .collect();
    assert_eq!(ps.len(), 24);
    assert!(ps.iter().all(|p| (0.0..=1.0).contains(p)));
    // Ranked by score, so p never rises down the list (z and LR are monotone).
    assert!(ps.windows(2).all(|w| w[0] >= w[1] - 1e-12), "{ps:?}");
    // At another prior, each p's odds move by the ratio of the priors' odds.
    let (_, v2) = search(json!({"text": text, "k": 24, "prior": 0.5}));
    for (a, b) in v["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(v2["results"].as_array().unwrap())
    {
        let (pa, pb) = (a["p"].as_f64().unwrap(), b["p"].as_f64().unwrap());
        let want = (pa / (1.0 - pa)) * (0.5 / 0.5) / (stored / (1.0 - stored));
        assert!(((pb / (1.0 - pb)) / want - 1.0).abs() < 1e-6, "{pa} {pb}");
    }
    // "More like this" has p from the image fit.
    let first = v["results"][0]["id"].as_u64().unwrap();
    let (st, lk) = search(json!({"like": first, "k": 5}));
    assert_eq!(st, 200);
    assert_eq!(
        lk["prior"].as_f64().unwrap(),
        cal["image"]["prior"].as_f64().unwrap()
    );
    assert!(lk["results"][0]["p"].is_number());
    for bad in [json!(0.0), json!(1.0), json!(-0.2), json!("0.1")] {
        let (st, e) = search(json!({"text": text, "prior": bad}));
        assert_eq!(st, 422, "{bad}: {e}");
    }
    let stats: Value = c.get(s.at("/v1/stats")).send().unwrap().json().unwrap();
    assert_eq!(
        stats["bundle"]["score_calibration"]["prior"]["text"]
            .as_f64()
            .unwrap(),
        stored
    );
    drop(s);

    // The uncalibrated bundle serves the same store (same encoders) without p.
    let s = Serve::launch(SEN, &bundle).store(&store).start();
    let r = c
        .post(s.at("/v1/search"))
        .json(&json!({"text": text}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert!(
        v["results"][0].get("p").is_none() && v.get("prior").is_none(),
        "{v}"
    );
    let r = c
        .post(s.at("/v1/search"))
        .json(&json!({"text": text, "prior": 0.01}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().unwrap().contains("sen calibrate-scores"));
    let stats: Value = c.get(s.at("/v1/stats")).send().unwrap().json().unwrap();
    assert!(stats["bundle"]["score_calibration"]["unavailable"].is_string());
    drop(s);

    // Another bundle (other weights) carrying this calibration is refused at start,
    // naming the encoder.
    let other = tiny_bundle(d.path(), 8);
    for f in ["score_calibration.json", "score_background.npy"] {
        std::fs::copy(calibrated.join(f), other.join(f)).unwrap();
    }
    let mp = other.join("manifest.json");
    let mut om: Value = serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    om["score_calibration"] = m["score_calibration"].clone();
    for f in ["score_calibration.json", "score_background.npy"] {
        om["files"][f] = m["files"][f].clone();
    }
    std::fs::write(&mp, om.to_string()).unwrap();
    let e = Serve::launch(SEN, &other)
        .store(&d.path().join("store2"))
        .try_start()
        .err()
        .expect("a calibration of other encoders is refused");
    assert!(
        e.contains("image encoder") && e.contains("sen calibrate-scores"),
        "{e}"
    );
}
