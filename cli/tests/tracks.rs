//! Tracks from the command line (SPEC §12): `sen store add --list` with `track` and
//! `bbox`, `sen store search --group track` and `--like-track`, on a small store.

use sen_testing::{synth_crops, tiny_bundle};
use serde_json::{Value, json};
use std::process::Command;

const SEN: &str = env!("CARGO_BIN_EXE_sen");

fn sen() -> Command {
    sen_core::process::command(SEN)
}

fn json_of(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tracks_from_a_list_and_grouped_search_on_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(d.path(), 5);
    let crops = synth_crops(d.path(), 3, 9);
    let mut list = String::new();
    for (i, (name, bytes)) in crops.iter().enumerate() {
        std::fs::write(d.path().join(name), bytes).unwrap();
        // Rows 0-3 are track "walk" on gate, 4-6 track "walk" on door (another
        // track: a track is camera and id), 7-8 no track.
        let mut l = json!({"path": name, "camera": if !(4..=6).contains(&i) { "gate" } else { "door" },
            "time": 1_795_961_002_000i64 + i as i64 * 1000});
        if i < 7 {
            l["track"] = "walk".into();
            l["bbox"] = json!([i, 2 * i, 100 + i, 300 + i]);
        }
        list.push_str(&format!("{l}\n"));
    }
    let listf = d.path().join("list.jsonl");
    std::fs::write(&listf, &list).unwrap();
    let store = d.path().join("store");
    let add = |extra: &[&str]| {
        sen()
            .args(["store", "add"])
            .arg(&store)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--list")
            .arg(&listf)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = sen()
        .args(["store", "create"])
        .arg(&store)
        .arg("--bundle")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = add(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let search = |extra: &[&str]| {
        json_of(
            sen()
                .args(["store", "search"])
                .arg(&store)
                .arg("--bundle")
                .arg(&bundle)
                .args(extra)
                .args(["-k", "50", "--json"])
                .output()
                .unwrap(),
        )
    };
    let all = search(&["a person"]);
    let rows = all["results"].as_array().unwrap();
    assert_eq!(rows.len(), 9);
    for r in rows {
        let i = crops
            .iter()
            .position(|(n, _)| r["path"] == n.as_str())
            .unwrap();
        assert_eq!(r["source"], "cli", "{r}");
        if i < 7 {
            assert_eq!(r["track"], "walk");
            assert_eq!(
                r["bbox"],
                json!([i as f64, 2.0 * i as f64, 100.0 + i as f64, 300.0 + i as f64])
            );
        } else {
            assert!(r.get("track").is_none() && r.get("bbox").is_none(), "{r}");
        }
    }
    let g = search(&["a person", "--group", "track"]);
    let items = g["results"].as_array().unwrap();
    // Two tracks and two single rows, each track led by its best-ranked crop.
    assert_eq!(items.len(), 4, "{g}");
    let mut spans: Vec<(String, u64, String, String)> = items
        .iter()
        .filter(|r| r.get("crops").is_some())
        .map(|r| {
            (
                r["camera"].as_str().unwrap().to_string(),
                r["crops"].as_u64().unwrap(),
                r["first"].as_str().unwrap().to_string(),
                r["last"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    let t = |s: i64| sen_store::time::format(1_795_961_002_000 + s * 1000);
    assert_eq!(
        spans,
        vec![
            ("door".into(), 3, t(4), t(6)),
            ("gate".into(), 4, t(0), t(3)),
        ]
    );
    let best_gate = rows
        .iter()
        .find(|r| r["camera"] == "gate" && r["track"] == "walk")
        .unwrap();
    assert!(
        items.iter().any(|r| r["id"] == best_gate["id"]),
        "a track's item is its best crop"
    );
    // More like the gate track: none of its rows come back; the door track does.
    let like = search(&["--like-track", "walk", "--like-camera", "gate"]);
    let ids: Vec<&Value> = like["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids.len(), 5);
    for r in rows
        .iter()
        .filter(|r| r["camera"] == "gate" && r["track"] == "walk")
    {
        assert!(!ids.contains(&&r["id"]));
    }
    // An unknown track and a bad box are named.
    let out = sen()
        .args(["store", "search"])
        .arg(&store)
        .arg("--bundle")
        .arg(&bundle)
        .args(["--like-track", "nobody", "--like-camera", "gate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
    std::fs::write(
        &listf,
        format!(
            "{{\"path\": \"{}\", \"track\": \"t\", \"bbox\": [5, 5, 1, 1]}}\n",
            crops[0].0
        ),
    )
    .unwrap();
    let out = add(&[]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bbox"), "{e}");
}
