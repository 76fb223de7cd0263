//! The synthetic benchmark: deterministic, loadable by the CUHK-PEDES loader, with
//! the stated structure.

use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_core::synth::{SynthConfig, attribute_differences, generate};
use std::collections::BTreeMap;
use std::path::Path;

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn byte_for_byte_deterministic_and_loadable() {
    let cfg = SynthConfig {
        ids: 26,
        images_per_id: 2,
        seed: 5,
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let r = generate(a.path(), &cfg).unwrap();
    generate(b.path(), &cfg).unwrap();
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert_eq!(fa.len(), 26 * 2 + 1);
    assert!(fa == fb, "same seed, same bytes");
    let c = tempfile::tempdir().unwrap();
    generate(
        c.path(),
        &SynthConfig {
            seed: 6,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(
        files(c.path())["reid_raw.json"],
        fa["reid_raw.json"],
        "another seed, another dataset"
    );

    assert_eq!(r.identities, [20, 2, 4]);
    let ds = Dataset::load(a.path(), None).unwrap();
    assert_eq!(ds.format, DatasetFormat::CuhkPedes);
    let stats = ds.stats();
    assert_eq!(stats[&Split::Train].identities, 20);
    assert_eq!(stats[&Split::Train].images, 40);
    assert_eq!(stats[&Split::Test].captions, 4 * 2 * 2);
    assert!(stats.values().all(|s| s.missing_files == 0));
    let words = stats[&Split::Train].mean_caption_words;
    assert!((15.0..=30.0).contains(&words), "mean caption words {words}");
    let train = ds.train_set().unwrap();
    assert_eq!(train.num_pids(), 20);
    assert_eq!(train.samples.len(), 80);

    // Every record carries its identity's attributes; images decode and are person-crop sized.
    let raw: Vec<serde_json::Value> = serde_json::from_slice(&fa["reid_raw.json"]).unwrap();
    let attrs: Vec<BTreeMap<String, String>> = raw
        .iter()
        .map(|r| serde_json::from_value(r["attributes"].clone()).unwrap())
        .collect();
    assert!(attrs.iter().all(|a| a.len() == 13));
    for r in raw.iter().take(4) {
        let img = sen_core::preprocess::load_rgb8(
            &a.path().join("imgs").join(r["file_path"].as_str().unwrap()),
        )
        .unwrap();
        assert!(
            img.height >= 300 && img.width * 2 < img.height,
            "{}x{}",
            img.width,
            img.height
        );
    }
    // Images of one identity share attributes; different identities differ in at least one.
    for (i, x) in raw.iter().enumerate() {
        for (j, y) in raw.iter().enumerate().skip(i + 1) {
            let d = attribute_differences(&attrs[i], &attrs[j]);
            assert_eq!(d == 0, x["id"] == y["id"], "records {i} and {j}");
        }
    }
}
