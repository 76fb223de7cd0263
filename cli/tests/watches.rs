//! `sen store watch add|list|delete` (SPEC §12) on a small store: a text watch
//! embedded with the bundle's text encoder, a like watch from a stored row, the
//! threshold rules, and deletion.

use sen_testing::{synth_crops, tiny_bundle};
use serde_json::Value;
use std::process::Output;

const SEN: &str = env!("CARGO_BIN_EXE_sen");

fn sen(args: &[&str]) -> Output {
    sen_core::process::command(SEN).args(args).output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn err(o: Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn watches_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(d.path(), 5);
    let b = bundle.to_str().unwrap();
    let store = d.path().join("store");
    let s = store.to_str().unwrap();
    ok(sen(&["store", "create", s, "--bundle", b]));
    let crops = synth_crops(d.path(), 3, 2);
    let mut files = vec![];
    for (name, bytes) in &crops {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        files.push(p.to_str().unwrap().to_string());
    }
    let mut add = vec!["store", "add", s, "--bundle", b];
    add.extend(files.iter().map(String::as_str));
    ok(sen(&add));

    let text = "a child in a yellow raincoat";
    let w: Value = serde_json::from_str(&ok(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "raincoat",
        "--text",
        text,
        "--camera",
        "gate",
        "--min-score",
        "0.3",
        "--json",
    ])))
    .unwrap();
    assert_eq!(w["text"], text);
    assert_eq!(w["cameras"][0], "gate");
    assert_eq!(w["min_score"], 0.3);
    assert_eq!(w["cooldown_s"], 300);
    // --min-p needs a score calibration, which this bundle lacks.
    let e = err(sen(&[
        "store", "watch", "add", s, "--bundle", b, "--name", "x", "--text", text, "--min-p", "0.9",
    ]));
    assert!(
        e.contains("sen calibrate-scores") && e.contains("--min-score"),
        "{e}"
    );
    // One threshold, exactly.
    let e = err(sen(&[
        "store", "watch", "add", s, "--bundle", b, "--name", "x", "--text", text,
    ]));
    assert!(e.contains("--min-p") && e.contains("--min-score"), "{e}");
    // Bad fields are named.
    let e = err(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "x",
        "--text",
        text,
        "--min-score",
        "3",
    ]));
    assert!(e.contains("min_score"), "{e}");
    let like: Value = serde_json::from_str(&ok(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "like 1",
        "--like",
        "1",
        "--min-score",
        "0.5",
        "--cooldown-s",
        "60",
        "--json",
    ])))
    .unwrap();
    assert_eq!(like["like"], 1);
    let e = err(sen(&[
        "store",
        "watch",
        "add",
        s,
        "--bundle",
        b,
        "--name",
        "x",
        "--like",
        "999",
        "--min-score",
        "0.5",
    ]));
    assert!(e.contains("999"), "{e}");

    let list: Value =
        serde_json::from_str(&ok(sen(&["store", "watch", "list", s, "--json"]))).unwrap();
    let ids: Vec<u64> = list["watches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [w["id"].as_u64().unwrap(), like["id"].as_u64().unwrap()]
    );
    let first = ids[0].to_string();
    ok(sen(&["store", "watch", "delete", s, &first]));
    let e = err(sen(&["store", "watch", "delete", s, &first]));
    assert!(e.contains("no watch"), "{e}");
    let list: Value =
        serde_json::from_str(&ok(sen(&["store", "watch", "list", s, "--json"]))).unwrap();
    assert_eq!(list["watches"].as_array().unwrap().len(), 1);
}
