//! Loader tests on small fixtures written here in each format, broken ones included.

use super::*;
use serde_json::json;

fn write_png(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(8, 16, image::Rgb([9, 99, 199]))
        .save(path)
        .unwrap();
}

/// A dataset in `format` with ids 1..=3 train, 4 val, 5..=6 test, 2 images each, 2 captions each.
fn fixture(format: DatasetFormat, with_val: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let mut recs = Vec::new();
    for id in 1..=6 {
        let split = match id {
            1..=3 => "train",
            4 if with_val => "val",
            4 => continue,
            _ => "test",
        };
        for k in 0..2 {
            let rel = format!("p{id}/{k}.png");
            write_png(&d.path().join("imgs").join(&rel));
            recs.push(json!({
                "split": split, "id": id, format.path_field(): rel,
                "captions": [format!("person {id} view {k} in a red coat"), format!("the person {id} wears jeans")],
                "processed_tokens": [["ignored"]],
            }));
        }
    }
    std::fs::write(
        d.path().join(format.annotation_file()),
        serde_json::to_vec(&recs).unwrap(),
    )
    .unwrap();
    d
}

#[test]
fn all_three_formats_load_with_the_same_structure() {
    for format in DatasetFormat::ALL {
        let d = fixture(format, format != DatasetFormat::IcfgPedes);
        assert_eq!(Dataset::detect(d.path()).unwrap(), format);
        let ds = Dataset::load(d.path(), None).unwrap();
        assert_eq!(
            ds.records.len(),
            if format == DatasetFormat::IcfgPedes {
                10
            } else {
                12
            }
        );
        let train = ds.train_set().unwrap();
        assert_eq!(train.num_pids(), 3);
        assert_eq!(train.images.len(), 6);
        assert_eq!(train.samples.len(), 12, "one sample per caption");
        // ids 1, 2, 3 -> pids 0, 1, 2 (CUHK-PEDES: pid = id - 1).
        assert_eq!(train.pid_map, BTreeMap::from([(1, 0), (2, 1), (3, 2)]));
        assert!(
            train
                .samples
                .iter()
                .all(|s| train.images[s.image].ends_with(format!("{}.png", s.image % 2)))
        );
        let test = ds.eval_set(Split::Test).unwrap();
        assert_eq!(test.images.len(), 4);
        assert_eq!(test.image_pids, vec![5, 5, 6, 6]);
        assert_eq!(test.captions.len(), 8);
        assert_eq!(test.caption_pids, vec![5, 5, 5, 5, 6, 6, 6, 6]);
        let stats = ds.stats();
        assert_eq!(stats[&Split::Train].identities, 3);
        assert_eq!(stats[&Split::Train].captions, 12);
        assert_eq!(
            stats.contains_key(&Split::Val),
            format != DatasetFormat::IcfgPedes
        );
        assert!((stats[&Split::Test].mean_caption_words - 6.5).abs() < 1e-9);
    }
}

#[test]
fn non_contiguous_ids_are_remapped() {
    let d = tempfile::tempdir().unwrap();
    let mut recs = Vec::new();
    for (i, id) in [40, 7, 40, 1000].iter().enumerate() {
        let rel = format!("{i}.png");
        write_png(&d.path().join("imgs").join(&rel));
        recs.push(json!({"split": "train", "id": id, "img_path": rel, "captions": ["a caption"]}));
    }
    std::fs::write(
        d.path().join("data_captions.json"),
        serde_json::to_vec(&recs).unwrap(),
    )
    .unwrap();
    let t = Dataset::load(d.path(), Some(DatasetFormat::Rstpreid))
        .unwrap()
        .train_set()
        .unwrap();
    assert_eq!(t.pid_map, BTreeMap::from([(7, 0), (40, 1), (1000, 2)]));
    assert_eq!(
        t.samples.iter().map(|s| s.pid).collect::<Vec<_>>(),
        vec![1, 0, 1, 2]
    );
}

fn load_err(format: DatasetFormat, doc: serde_json::Value) -> String {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join(format.annotation_file()), doc.to_string()).unwrap();
    Dataset::load(d.path(), Some(format))
        .unwrap_err()
        .to_string()
}

#[test]
fn broken_annotations_name_file_record_and_field() {
    let f = DatasetFormat::CuhkPedes;
    let ok = json!({"split": "train", "id": 1, "file_path": "a.jpg", "captions": ["x"]});
    let cases = [
        (
            json!([ok, {"split": "train", "id": 2, "captions": ["x"]}]),
            "record 1: field `file_path` is missing",
        ),
        (
            json!([{"split": "dev", "id": 1, "file_path": "a.jpg", "captions": ["x"]}]),
            "record 0: field `split`",
        ),
        (
            json!([{"split": "train", "id": "x1", "file_path": "a.jpg", "captions": ["x"]}]),
            "field `id`",
        ),
        (
            json!([{"split": "train", "id": 1, "file_path": "a.jpg", "captions": []}]),
            "field `captions` is an empty list",
        ),
        (
            json!([{"split": "train", "id": 1, "file_path": "a.jpg", "captions": [3]}]),
            "entry 0 is not a string",
        ),
        (
            json!([{"split": "train", "id": 1, "file_path": "../../etc/passwd", "captions": ["x"]}]),
            "relative path",
        ),
        (json!([ok, 5]), "record 1: not an object"),
        (json!({"records": []}), "JSON list"),
        (json!([]), "no records"),
    ];
    for (doc, want) in cases {
        let e = load_err(f, doc);
        assert!(
            e.contains("reid_raw.json") && e.contains(want),
            "{e}\n  wanted {want:?}"
        );
    }
    // RSTPReid uses img_path.
    let e = load_err(DatasetFormat::Rstpreid, json!([ok]));
    assert!(
        e.contains("data_captions.json") && e.contains("`img_path` is missing"),
        "{e}"
    );
    // Truncated JSON.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ICFG-PEDES.json"), "[{\"split\": \"tra").unwrap();
    let e = Dataset::load(d.path(), None).unwrap_err().to_string();
    assert!(
        e.contains("ICFG-PEDES.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn detection_and_missing_files() {
    let d = tempfile::tempdir().unwrap();
    assert!(
        Dataset::detect(d.path())
            .unwrap_err()
            .to_string()
            .contains("--format")
    );
    let d = fixture(DatasetFormat::CuhkPedes, true);
    std::fs::write(d.path().join("data_captions.json"), "[]").unwrap();
    assert!(
        Dataset::detect(d.path())
            .unwrap_err()
            .to_string()
            .contains("several")
    );
    let ds = Dataset::load(d.path(), Some(DatasetFormat::CuhkPedes)).unwrap();
    std::fs::remove_file(d.path().join("imgs/p2/0.png")).unwrap();
    std::fs::remove_file(d.path().join("imgs/p3/1.png")).unwrap();
    assert_eq!(ds.missing_files(None).len(), 2);
    assert_eq!(ds.stats()[&Split::Train].missing_files, 2);
    let e = ds.train_set().unwrap_err().to_string();
    assert!(
        e.contains("2 image file(s)") && e.contains("p2/0.png"),
        "{e}"
    );
    assert!(ds.eval_set(Split::Test).is_ok(), "test split is complete");
}
