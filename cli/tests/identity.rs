//! The encoder identity is the image encoder's sha256 plus the bundle's preprocess
//! block (SPEC §10): a store and an index file made with a bicubic bundle refuse a
//! bilinear export of the same weights (the very same ONNX file), naming both
//! preprocessing blocks, in `sen store add`, `sen store search`, `sen search` and
//! `sen serve`.

use std::process::{Command, Output};

fn sen() -> Command {
    sen_core::process::command(env!("CARGO_BIN_EXE_sen"))
}

fn refused(out: Output, says: &[&str]) {
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "should have been refused: {e}");
    for s in says {
        assert!(e.contains(s), "{s:?} in: {e}");
    }
}

#[test]
fn a_bicubic_store_and_index_refuse_a_bilinear_export_of_the_same_weights() {
    let d = tempfile::tempdir().unwrap();
    let bicubic = sen_testing::tiny_bundle(d.path(), 3);
    let bilinear = sen_testing::tiny_bundle_bilinear(d.path(), 3);
    let (m1, m2) = (
        sen_core::Manifest::load(&bicubic).unwrap(),
        sen_core::Manifest::load(&bilinear).unwrap(),
    );
    assert_eq!(
        m1.encoder_digest(&m1.io.image).unwrap(),
        m2.encoder_digest(&m2.io.image).unwrap(),
        "the same image encoder file"
    );
    assert_eq!(
        (m1.preprocess.resize.as_str(), m2.preprocess.resize.as_str()),
        ("bicubic", "bilinear")
    );
    let (j1, j2) = (
        m1.preprocess.canonical_json(),
        m2.preprocess.canonical_json(),
    );

    let store = d.path().join("store");
    let crops = sen_testing::synth_crops(d.path(), 1, 2);
    let img = d.path().join(&crops[0].0);
    std::fs::write(&img, &crops[0].1).unwrap();
    let out = sen()
        .args(["store", "create"])
        .arg(&store)
        .arg("--bundle")
        .arg(&bicubic)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let add = |bundle: &std::path::Path| {
        sen()
            .args(["store", "add"])
            .arg(&store)
            .arg("--bundle")
            .arg(bundle)
            .arg(&img)
            .output()
            .unwrap()
    };
    assert!(add(&bicubic).status.success());
    refused(add(&bilinear), &[&j1, &j2, "not comparable"]);
    refused(
        sen()
            .args(["store", "search"])
            .arg(&store)
            .arg("--bundle")
            .arg(&bilinear)
            .arg("a person")
            .output()
            .unwrap(),
        &[&j1, &j2],
    );
    refused(
        sen()
            .arg("serve")
            .arg("--bundle")
            .arg(&bilinear)
            .arg("--store")
            .arg(&store)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap(),
        &[&j1, &j2],
    );

    // An index file records the block too; one without it (made before) reads as
    // bicubic.
    let folder = d.path().join("imgs");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join(&crops[1].0), &crops[1].1).unwrap();
    let idx = d.path().join("g.senidx");
    let out = sen()
        .arg("index")
        .arg(&bicubic)
        .arg("--images")
        .arg(&folder)
        .arg("--out")
        .arg(&idx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let search = |bundle: &std::path::Path| {
        sen()
            .arg("search")
            .arg(bundle)
            .arg(&idx)
            .arg("a person")
            .output()
            .unwrap()
    };
    assert!(search(&bicubic).status.success());
    refused(search(&bilinear), &[&j1, &j2, "re-index"]);
}
